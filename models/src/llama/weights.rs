//! The LLaMA weight table: GGUF tensor names (llama.cpp's `llama-arch.cpp`
//! `LLM_TENSOR_NAMES`) and their HF transformers twins, their expected
//! shapes (kiln order `[N, K]`: out features, in features), and the upload
//! of each to the device, once, in a dtype the kernels read (the file's
//! own, but for BF16 matrices and non-F32 norms: [`Kind::converted`]).

use std::collections::HashSet;

use kiln_engine::{Device, DeviceTensor};
use kiln_kernels::{get_rows, qmatmul, qmatvec, quant, CpuTensor, DType, TensorDesc};
use kiln_loaders::{Weight, WeightMap};

use crate::error::ModelError;
use crate::llama::config::LlamaConfig;

/// Tensor names: GGUF's, and the table mapping them to HF's.
pub mod names {
    pub const TOKEN_EMBD: &str = "token_embd.weight";
    pub const OUTPUT_NORM: &str = "output_norm.weight";
    /// Absent when the output projection is tied to the embedding.
    pub const OUTPUT: &str = "output.weight";

    /// `blk.{i}.{what}`, e.g. `blk(3, "attn_q.weight")`.
    pub fn blk(i: usize, what: &str) -> String {
        format!("blk.{i}.{what}")
    }

    /// GGUF → HF (`LlamaForCausalLM`, `Qwen2ForCausalLM`, ...) names of the
    /// tensors outside the blocks, as llama.cpp's `convert_hf_to_gguf.py`
    /// (gguf-py `tensor_mapping.py`) maps them.
    const HF_GLOBAL: [(&str, &str); 3] = [
        (TOKEN_EMBD, "model.embed_tokens.weight"),
        (OUTPUT_NORM, "model.norm.weight"),
        (OUTPUT, "lm_head.weight"),
    ];

    /// The same inside block `i`: `blk.{i}.{gguf}` ↔ `model.layers.{i}.{hf}`.
    const HF_BLOCK: [(&str, &str); 12] = [
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];

    /// The HF name of a GGUF name, e.g. `blk.3.attn_q.weight` →
    /// `model.layers.3.self_attn.q_proj.weight`; `None` for names not in
    /// the table.
    pub fn hf(gguf: &str) -> Option<String> {
        if let Some((_, hf)) = HF_GLOBAL.iter().find(|(g, _)| *g == gguf) {
            return Some((*hf).to_string());
        }
        let (i, what) = gguf.strip_prefix("blk.")?.split_once('.')?;
        let i: usize = i.parse().ok()?;
        let (_, hf) = HF_BLOCK.iter().find(|(g, _)| *g == what)?;
        Some(format!("model.layers.{i}.{hf}"))
    }

    /// Tensors a file may hold that the forward rightly ignores: rope
    /// frequencies recomputed from the metadata (old GGUF conversions and
    /// HF checkpoints saved them). Anything else unused is an error.
    pub fn ignorable(name: &str) -> bool {
        name.ends_with(".attn_rot_embd") || name.ends_with(".rotary_emb.inv_freq")
    }
}

/// Which naming a weight map uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorNames {
    /// llama.cpp's GGUF names (`blk.3.attn_q.weight`).
    Gguf,
    /// HF transformers' state-dict names
    /// (`model.layers.3.self_attn.q_proj.weight`), as in safetensors.
    HuggingFace,
}

impl TensorNames {
    /// The name in the file of the tensor GGUF calls `gguf`.
    pub fn file_name(self, gguf: &str) -> String {
        match self {
            TensorNames::Gguf => gguf.to_string(),
            TensorNames::HuggingFace => names::hf(gguf).unwrap_or_else(|| gguf.to_string()),
        }
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
    /// [`LlamaWeights::load_named`] for a GGUF file's map.
    pub fn load(
        map: &WeightMap,
        config: &LlamaConfig,
        device: &Device,
    ) -> Result<LlamaWeights, ModelError> {
        LlamaWeights::load_named(map, config, TensorNames::Gguf, device)
    }

    /// Checks each tensor's presence, dtype and shape against `config` and
    /// uploads it, once; the first bad tensor is the error, named as the
    /// file names it. A tensor the forward would not use is an error too
    /// (as in llama.cpp): it means a feature kiln lacks, e.g. Llama 3.1's
    /// `rope_freqs.weight`, and ignoring it would give wrong logits.
    pub fn load_named(
        map: &WeightMap,
        config: &LlamaConfig,
        naming: TensorNames,
        device: &Device,
    ) -> Result<LlamaWeights, ModelError> {
        let table = Table {
            map,
            device,
            naming,
            used: Default::default(),
        };
        let embd_name = naming.file_name(names::TOKEN_EMBD);
        let embd = map
            .get(&embd_name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: embd_name.clone(),
            })?;
        let vocab = match (embd.shape(), config.vocab_size) {
            ([v, _], None) if *v > 0 => *v,
            (_, Some(v)) => v,
            (got, None) => {
                return Err(ModelError::TensorShape {
                    name: embd_name,
                    expected: vec![0, config.n_embd],
                    got: got.to_vec(),
                })
            }
        };
        let (d, q, kv, ff) = (config.n_embd, config.q_dim(), config.kv_dim(), config.n_ff);
        let token_embd = table.get(names::TOKEN_EMBD, &[vocab, d], Kind::Embedding)?;
        let output_norm = table.get(names::OUTPUT_NORM, &[d], Kind::Norm)?;
        let tied = !map.contains(&naming.file_name(names::OUTPUT));
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
        table.check_all_used(config)?;
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
    /// A `qmatmul` and `qmatvec` weight: the quantized types, F16 and F32.
    Matmul,
    /// The embedding table: types `get_rows` and the matmuls both read (it
    /// is the output projection when tied; the lists agree today).
    Embedding,
    /// RMS-norm weights and biases: F32.
    Norm,
    Bias,
}

/// The largest finite F16 is 65504; from 65520 on, f32 → f16 rounds to ∞.
const F16_OVERFLOW: f32 = 65520.0;

impl Kind {
    /// What the kernels read as stored: F32 matrices (an `--outtype f32`
    /// GGUF, an F32 safetensors checkpoint) stay F32, all 24 bits of them.
    fn native(self, dtype: DType) -> bool {
        let matmul =
            qmatmul::WEIGHT_DTYPES.contains(&dtype) && qmatvec::WEIGHT_DTYPES.contains(&dtype);
        match self {
            Kind::Matmul => matmul,
            Kind::Embedding => matmul && get_rows::TABLE_DTYPES.contains(&dtype),
            Kind::Norm | Kind::Bias => dtype == DType::F32,
        }
    }

    /// The dtype a float tensor the kernels cannot read as stored is
    /// converted to at upload, if any.
    ///
    /// BF16 matrices (most HF checkpoints, `--outtype bf16` GGUFs) become
    /// F16: half the bytes of F32, which bounds decode speed, and the same
    /// numbers, since F16's 11 significant bits hold BF16's 8 exactly from
    /// 2^-17 to 65504. Smaller magnitudes round to F16's subnormal grid
    /// (an absolute error of at most 2^-25, far below BF16's own rounding of
    /// a typical weight of ~1e-2, 2^-15); a matrix holding a value beyond
    /// F16's range, which BF16's F32-sized exponent allows, becomes F32
    /// instead ([`convert`]): exact, at twice the bytes, rather than
    /// refusing the model or turning the value into ∞.
    ///
    /// F16 and BF16 norms and biases become F32, exactly.
    fn converted(self, dtype: DType) -> Option<DType> {
        match (self, dtype) {
            (Kind::Matmul | Kind::Embedding, DType::BF16) => Some(DType::F16),
            (Kind::Norm | Kind::Bias, DType::F16 | DType::BF16) => Some(DType::F32),
            _ => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Matmul => "a matmul weight (kiln reads Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, F32, and BF16 as F16)",
            Kind::Embedding => "the token embedding (kiln reads Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, F32, and BF16 as F16)",
            Kind::Norm => "a norm weight (F32, F16, BF16)",
            Kind::Bias => "a bias (F32, F16, BF16)",
        }
    }
}

struct Table<'a> {
    map: &'a WeightMap,
    device: &'a Device,
    naming: TensorNames,
    /// File names of the tensors taken so far.
    used: std::cell::RefCell<HashSet<String>>,
}

impl Table<'_> {
    /// The tensor GGUF calls `gguf`, checked, converted if need be, and
    /// uploaded. Errors name it as the file does.
    fn get(&self, gguf: &str, shape: &[usize], kind: Kind) -> Result<DeviceTensor, ModelError> {
        let name = self.naming.file_name(gguf);
        let w = self
            .map
            .get(&name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        if w.shape() != shape {
            return Err(ModelError::TensorShape {
                name,
                expected: shape.to_vec(),
                got: w.shape().to_vec(),
            });
        }
        let host = if kind.native(w.dtype()) {
            w.to_cpu().map_err(|source| ModelError::TensorData {
                name: name.clone(),
                desc: w.desc(),
                source,
            })?
        } else if let Some(to) = kind.converted(w.dtype()) {
            convert(&name, w, to)?
        } else {
            return Err(ModelError::TensorDType {
                name,
                dtype: w.dtype(),
                what: kind.what(),
            });
        };
        let t = self
            .device
            .upload(&host)
            .map_err(|source| ModelError::Upload {
                name: name.clone(),
                source,
            })?;
        self.used.borrow_mut().insert(name);
        Ok(t)
    }

    /// Every tensor of the file was taken, or is one the forward may ignore.
    fn check_all_used(&self, config: &LlamaConfig) -> Result<(), ModelError> {
        let used = self.used.borrow();
        match self
            .map
            .names()
            .find(|n| !used.contains(*n) && !names::ignorable(n))
        {
            Some(name) => Err(ModelError::UnusedTensor {
                name: name.to_string(),
                arch: config.arch.name(),
            }),
            None => Ok(()),
        }
    }
}

/// A float tensor as F16 or F32 (see [`Kind::converted`]); F16 widens to
/// F32 when a finite value would round to ∞ in F16.
fn convert(name: &str, w: &Weight, to: DType) -> Result<CpuTensor, ModelError> {
    let values =
        quant::dequantize_to_vec(w.dtype(), w.bytes()).map_err(|e| ModelError::Convert {
            name: name.into(),
            to,
            why: e.to_string(),
        })?;
    let shape = w.shape().to_vec();
    let fits_f16 = || {
        values
            .iter()
            .all(|v| !v.is_finite() || v.abs() < F16_OVERFLOW)
    };
    let to = if to == DType::F16 && !fits_f16() {
        DType::F32
    } else {
        to
    };
    let host = if to == DType::F16 {
        CpuTensor::from_f32_as_f16(shape, &values)
    } else {
        CpuTensor::from_f32(shape, values)
    };
    host.map_err(|source| ModelError::TensorData {
        name: name.into(),
        desc: TensorDesc::new(to, w.shape()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_loaders::{GgufFile, GgufWriter};

    /// A BF16 `[1, n]` tensor holding `values` (exact in BF16), converted
    /// as a matmul weight.
    fn convert_bf16(values: &[f32]) -> CpuTensor {
        let mut w = GgufWriter::new();
        let bytes = quant::quantize(DType::BF16, values).expect("quantizes");
        w.add_tensor("m", DType::BF16, &[1, values.len()], bytes)
            .expect("tensor");
        let file =
            GgufFile::from_bytes(w.to_bytes().expect("writes"), "bf16.gguf").expect("parses");
        let map = file.weights();
        let weight = map.get("m").expect("tensor");
        let to = Kind::Matmul.converted(DType::BF16).expect("converts");
        convert("m", weight, to).expect("converted")
    }

    #[test]
    fn bf16_matrices_become_f16_or_f32_when_beyond_f16_range() {
        let small = [1.5, -0.013671875, 3.0 * 2f32.powi(-17), 65280.0];
        let t = convert_bf16(&small);
        assert_eq!(t.dtype(), DType::F16);
        assert_eq!(t.to_f32().expect("f32").as_ref(), &small);
        let big = [1.5, 1.0e5, -0.013671875, f32::INFINITY];
        let t = convert_bf16(&big);
        assert_eq!(t.dtype(), DType::F32);
        // 1e5 is not a BF16 value: compare with what the file holds.
        let held =
            quant::dequantize_to_vec(DType::BF16, &quant::quantize(DType::BF16, &big).unwrap())
                .unwrap();
        assert_eq!(t.to_f32().expect("f32").as_ref(), held.as_slice());
    }

    #[test]
    fn f32_matrices_and_embeddings_are_read_as_stored() {
        for kind in [Kind::Matmul, Kind::Embedding] {
            assert!(kind.native(DType::F32), "{kind:?}");
            assert!(!kind.native(DType::BF16), "{kind:?}");
        }
    }
}
