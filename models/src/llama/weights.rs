//! The LLaMA weight table: GGUF tensor names (llama.cpp's `llama-arch.cpp`
//! `LLM_TENSOR_NAMES`), their expected shapes (kiln order `[N, K]`: out
//! features, in features), and the upload of each to the device, once.

use kiln_engine::{Device, DeviceTensor};
use kiln_kernels::qmatmul::WEIGHT_DTYPES;
use kiln_kernels::{DType, TensorDesc};
use kiln_loaders::WeightMap;

use crate::error::ModelError;
use crate::llama::config::LlamaConfig;

/// GGUF tensor names.
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    /// Absent when the output projection is tied to the embedding.
    pub const OUTPUT: &str = "output.weight";

    /// `blk.{i}.{what}`, e.g. `blk(3, "attn_q.weight")`.
    pub fn blk(i: usize, what: &str) -> String {
        format!("blk.{i}.{what}")
    }
}

/// One decoder block's tensors.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// [n_embd] F32.
    pub attn_norm: DeviceTensor,
    /// [q_dim, n_embd], [kv_dim, n_embd], [kv_dim, n_embd].
    pub wq: DeviceTensor,
    pub wk: DeviceTensor,
    pub wv: DeviceTensor,
    /// [q_dim], [kv_dim], [kv_dim] F32 (Qwen2).
    pub bias: Option<[DeviceTensor; 3]>,
    /// [n_embd, q_dim].
    pub wo: DeviceTensor,
    /// [n_embd] F32.
    pub ffn_norm: DeviceTensor,
    /// [n_ff, n_embd], [n_ff, n_embd], [n_embd, n_ff].
    pub gate: DeviceTensor,
    pub up: DeviceTensor,
    pub down: DeviceTensor,
}

/// Every tensor of the model, resident on one device.
#[derive(Clone, Debug)]
pub struct LlamaWeights {
    /// [vocab, n_embd], any dtype `get_rows` reads.
    pub token_embd: DeviceTensor,
    pub layers: Vec<LayerWeights>,
    /// [n_embd] F32.
    pub output_norm: DeviceTensor,
    /// [vocab, n_embd]; the same storage as `token_embd` when tied.
    pub output: DeviceTensor,
    /// Whether `output` is `token_embd` (no `output.weight` in the file).
    pub tied: bool,
}

impl LlamaWeights {
    /// Checks each tensor's presence, dtype and shape against `config` and
    /// uploads it, once; the first bad tensor is the error.
    pub fn load(
        map: &WeightMap,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<LlamaWeights, ModelError> {
        let embd = map
            .get(names::TOKEN_EMBD)
            .ok_or_else(|| ModelError::MissingTensor {
                name: names::TOKEN_EMBD.into(),
            })?;
        let vocab = match (embd.shape(), config.vocab_size) {
            ([v, _], None) => *v,
            (_, Some(v)) => v,
            (got, None) => {
                return Err(ModelError::TensorShape {
                    name: names::TOKEN_EMBD.into(),
                    expected: vec![0, config.n_embd],
                    got: got.to_vec(),
                })
            }
        };
        let table = Table { map, device };
        let (d, q, kv, ff) = (config.n_embd, config.q_dim(), config.kv_dim(), config.n_ff);
        let token_embd = table.get(names::TOKEN_EMBD, &[vocab, d], Kind::Embedding)?;
        let output_norm = table.get(names::OUTPUT_NORM, &[d], Kind::Norm)?;
        let tied = !map.contains(names::OUTPUT);
        let output = if tied {
            token_embd.clone()
        } else {
            table.get(names::OUTPUT, &[vocab, d], Kind::Matmul)?
        };
        let layers = (0..config.n_layer)
            .map(|i| {
                let get = |what: &str, shape: &[usize], kind| {
                    table.get(&names::blk(i, what), shape, kind)
                };
                let bias = if config.qkv_bias {
                    Some([
                        get("attn_q.bias", &[q], Kind::Bias)?,
                        get("attn_k.bias", &[kv], Kind::Bias)?,
                        get("attn_v.bias", &[kv], Kind::Bias)?,
                    ])
                } else {
                    None
                };
                Ok(LayerWeights {
                    attn_norm: get("attn_norm.weight", &[d], Kind::Norm)?,
                    wq: get("attn_q.weight", &[q, d], Kind::Matmul)?,
                    wk: get("attn_k.weight", &[kv, d], Kind::Matmul)?,
                    wv: get("attn_v.weight", &[kv, d], Kind::Matmul)?,
                    bias,
                    wo: get("attn_output.weight", &[d, q], Kind::Matmul)?,
                    ffn_norm: get("ffn_norm.weight", &[d], Kind::Norm)?,
                    gate: get("ffn_gate.weight", &[ff, d], Kind::Matmul)?,
                    up: get("ffn_up.weight", &[ff, d], Kind::Matmul)?,
                    down: get("ffn_down.weight", &[d, ff], Kind::Matmul)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(LlamaWeights {
            token_embd,
            layers,
            output_norm,
            output,
            tied,
        })
    }

    /// Rows of the embedding table (and of the logits).
    pub fn vocab_size(&self) -> usize {
        self.token_embd.desc().shape[0]
    }
}

/// What a tensor is used for, which decides the dtypes allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A `qmatmul` weight: the quantized types and F16.
    Matmul,
    /// The embedding table: `get_rows` types, and `qmatmul` types too when tied.
    Embedding,
    /// RMS-norm weights and biases: F32.
    Norm,
    Bias,
}

impl Kind {
    fn allows(self, dtype: DType) -> bool {
        match self {
            Kind::Matmul | Kind::Embedding => WEIGHT_DTYPES.contains(&dtype),
            Kind::Norm | Kind::Bias => dtype == DType::F32,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Matmul => "a matmul weight (kiln reads Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16)",
            Kind::Embedding => "the token embedding (kiln reads Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16)",
            Kind::Norm => "a norm weight (F32)",
            Kind::Bias => "a bias (F32)",
        }
    }
}

struct Table<'a> {
    map: &'a WeightMap,
    device: &'a Device,
}

impl Table<'_> {
    /// The tensor `name`, checked and uploaded.
    fn get(&self, name: &str, shape: &[usize], kind: Kind) -> Result<DeviceTensor, ModelError> {
        let w = self
            .map
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        if w.shape() != shape {
            return Err(ModelError::TensorShape {
                name: name.into(),
                expected: shape.to_vec(),
                got: w.shape().to_vec(),
            });
        }
        if !kind.allows(w.dtype()) {
            return Err(ModelError::TensorDType {
                name: name.into(),
                dtype: w.dtype(),
                what: kind.what(),
            });
        }
        let host = w.to_cpu().map_err(|source| ModelError::TensorData {
            name: name.into(),
            desc: TensorDesc::new(w.dtype(), shape),
            source,
        })?;
        self.device
            .upload(&host)
            .map_err(|source| ModelError::Upload {
                name: name.into(),
                source,
            })
    }
}
