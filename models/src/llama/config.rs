//! Hyperparameters of a LLaMA-family model, from GGUF metadata (the keys
//! llama.cpp's `llama-arch.cpp` reads) or from an HF `config.json`.

use kiln_kernels::rope::RopeMode;
use kiln_loaders::{Metadata, ModelConfig, Value};

use crate::error::ModelError;

/// Architectures this definition runs, as `general.architecture` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// LLaMA 2/3, SmolLM, TinyLlama, Mistral: normal rope, no biases.
    Llama,
    /// Qwen2: neox rope, biases on q, k and v.
    Qwen2,
}

const SUPPORTED: &str = "llama, qwen2";

impl Arch {
    pub fn from_name(name: &str) -> Result<Arch, ModelError> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(ModelError::UnsupportedArchitecture {
                arch: other.to_string(),
                supported: SUPPORTED,
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Rotary embedding settings (see `kiln_kernels::rope`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    pub mode: RopeMode,
    /// Rotated dimensions per head (`rope.dimension_count`, else head_dim).
    pub n_dims: usize,
    pub freq_base: f32,
    /// 1 / linear scaling factor; 1 = none.
    pub freq_scale: f32,
}

/// Everything the graph and the weight table need to know.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub n_layer: usize,
    /// d_model.
    pub n_embd: usize,
    /// FFN hidden size.
    pub n_ff: usize,
    pub n_head: usize,
    /// Key/value heads (grouped-query attention); equals n_head without GQA.
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope: RopeConfig,
    /// The context the model was trained for.
    pub n_ctx_train: usize,
    /// Sliding attention window in positions (Mistral); 0 = off.
    pub sliding_window: u32,
    /// Biases on the q, k, v projections (Qwen2).
    pub qkv_bias: bool,
    /// Vocabulary size when the metadata states it; the weights decide otherwise.
    pub vocab_size: Option<usize>,
}

impl LlamaConfig {
    /// Reads `{arch}.*` keys from GGUF metadata.
    pub fn from_metadata(meta: &Metadata) -> Result<LlamaConfig, ModelError> {
        let arch_name = meta.architecture().ok_or(ModelError::NoArchitecture)?;
        let arch = Arch::from_name(arch_name)?;
        let keys = Keys {
            meta,
            arch: arch_name,
        };
        // Zero sizes would divide by zero below or build empty tensors.
        let n_embd = keys.positive("embedding_length")?;
        let n_head = keys.positive("attention.head_count")?;
        let n_head_kv = keys.opt_count("attention.head_count_kv")?.unwrap_or(n_head);
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(keys.bad(
                "attention.head_count_kv",
                format!("{n_head} query heads are not a multiple of {n_head_kv} kv heads"),
            ));
        }
        let head_dim = match keys.opt_count("attention.key_length")? {
            Some(0) => return Err(keys.bad("attention.key_length", "must be positive".into())),
            Some(d) => d,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(keys.bad(
                    "embedding_length",
                    format!("{n_embd} is not a multiple of {n_head} heads"),
                ))
            }
        };
        if n_head.checked_mul(head_dim).is_none() {
            return Err(keys.bad(
                "attention.key_length",
                format!("{n_head} heads of {head_dim} overflow"),
            ));
        }
        let n_dims = keys.opt_count("rope.dimension_count")?.unwrap_or(head_dim);
        if n_dims == 0 || n_dims % 2 != 0 || n_dims > head_dim {
            return Err(keys.bad(
                "rope.dimension_count",
                format!("{n_dims} must be even, positive and at most {head_dim}"),
            ));
        }
        let rope = RopeConfig {
            mode: match arch {
                Arch::Llama => RopeMode::Normal,
                Arch::Qwen2 => RopeMode::Neox,
            },
            n_dims,
            freq_base: keys
                .opt_float("rope.freq_base")?
                .unwrap_or(DEFAULT_ROPE_BASE),
            freq_scale: keys.rope_scale()?,
        };
        let rms_eps = keys
            .opt_float("attention.layer_norm_rms_epsilon")?
            .unwrap_or(DEFAULT_RMS_EPS);
        let sliding_window = keys.opt_count("attention.sliding_window")?.unwrap_or(0);
        let config = LlamaConfig {
            arch,
            n_layer: keys.positive("block_count")?,
            n_embd,
            n_ff: keys.positive("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps,
            rope,
            n_ctx_train: keys.count("context_length")?,
            sliding_window: u32::try_from(sliding_window).map_err(|_| {
                keys.bad(
                    "attention.sliding_window",
                    format!("{sliding_window} is too large"),
                )
            })?,
            qkv_bias: arch == Arch::Qwen2,
            vocab_size: match keys.opt_count("vocab_size")? {
                Some(0) => return Err(keys.bad("vocab_size", "must be positive".into())),
                Some(n) => Some(n),
                None => meta
                    .get_array("tokenizer.ggml.tokens")
                    .map(<[Value]>::len)
                    .filter(|&n| n > 0),
            },
        };
        Ok(config)
    }

    /// From an HF `config.json`, through the GGUF keys llama.cpp's converter
    /// would write. HF checkpoints keep q and k in the order HF's
    /// `rotate_half` expects (the converter permutes them for GGUF), so
    /// LLaMA weights read from safetensors need the neox pairing.
    pub fn from_model_config(config: &ModelConfig) -> Result<LlamaConfig, ModelError> {
        let mut c = LlamaConfig::from_metadata(&config.to_metadata())?;
        c.rope.mode = RopeMode::Neox;
        Ok(c)
    }

    /// Width of the q projection: n_head × head_dim.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the k and v projections: n_head_kv × head_dim.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// `rope.freq_base` when absent: LLaMA's 10000.
const DEFAULT_ROPE_BASE: f32 = 10_000.0;
/// `layer_norm_rms_epsilon` when absent: LLaMA's 1e-5 (llama.cpp's default).
const DEFAULT_RMS_EPS: f32 = 1e-5;

/// Typed reads of `{arch}.{suffix}` keys, with errors naming the key.
struct Keys<'a> {
    meta: &'a Metadata,
    arch: &'a str,
}

impl Keys<'_> {
    fn key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch)
    }

    fn bad(&self, suffix: &str, why: String) -> ModelError {
        ModelError::BadValue {
            key: self.key(suffix),
            why,
        }
    }

    fn get(&self, suffix: &str) -> Option<&Value> {
        self.meta.get(&self.key(suffix))
    }

    fn opt_count(&self, suffix: &str) -> Result<Option<usize>, ModelError> {
        match self.get(suffix) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.bad(
                        suffix,
                        format!("expected a non-negative integer, found {v:?}"),
                    )
                }),
        }
    }

    fn count(&self, suffix: &str) -> Result<usize, ModelError> {
        self.opt_count(suffix)?
            .ok_or_else(|| ModelError::MissingKey {
                key: self.key(suffix),
            })
    }

    /// A count that must be present and non-zero.
    fn positive(&self, suffix: &str) -> Result<usize, ModelError> {
        match self.count(suffix)? {
            0 => Err(self.bad(suffix, "must be positive".into())),
            n => Ok(n),
        }
    }

    fn opt_float(&self, suffix: &str) -> Result<Option<f32>, ModelError> {
        match self.get(suffix) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x as f32)),
                _ => Err(self.bad(suffix, format!("expected a positive number, found {v:?}"))),
            },
        }
    }

    /// `rope.scaling.type` (`none` or `linear` with `rope.scaling.factor`),
    /// or the older `rope.scale_linear`. YaRN and others are not built yet:
    /// running them unscaled would silently give wrong logits.
    fn rope_scale(&self) -> Result<f32, ModelError> {
        let factor = match self.get("rope.scaling.type").map(|v| v.as_str()) {
            None | Some(Some("none")) => self.opt_float("rope.scale_linear")?,
            Some(Some("linear")) => self.opt_float("rope.scaling.factor")?,
            Some(other) => {
                return Err(self.bad(
                    "rope.scaling.type",
                    format!("{other:?} is not supported (none, linear)"),
                ))
            }
        };
        Ok(factor.map_or(1.0, |f| 1.0 / f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smol() -> Metadata {
        let mut m = Metadata::new();
        m.insert("general.architecture", Value::String("llama".into()));
        for (k, v) in [
            ("block_count", 30),
            ("embedding_length", 576),
            ("feed_forward_length", 1536),
            ("attention.head_count", 9),
            ("attention.head_count_kv", 3),
            ("rope.dimension_count", 64),
            ("context_length", 8192),
        ] {
            m.insert(format!("llama.{k}"), Value::U32(v));
        }
        m.insert("llama.rope.freq_base", Value::F32(100_000.0));
        m.insert("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        m
    }

    #[test]
    fn reads_smollm2_hyperparameters() {
        let c = LlamaConfig::from_metadata(&smol()).expect("valid");
        assert_eq!(
            (
                c.n_layer,
                c.n_embd,
                c.n_ff,
                c.n_head,
                c.n_head_kv,
                c.head_dim
            ),
            (30, 576, 1536, 9, 3, 64)
        );
        assert_eq!(
            c.rope,
            RopeConfig {
                mode: RopeMode::Normal,
                n_dims: 64,
                freq_base: 100_000.0,
                freq_scale: 1.0
            }
        );
        assert_eq!(
            (c.q_dim(), c.kv_dim(), c.sliding_window, c.qkv_bias),
            (576, 192, 0, false)
        );
    }

    #[test]
    fn qwen2_uses_neox_and_biases() {
        let mut m = Metadata::new();
        for (k, v) in smol().iter() {
            m.insert(k.replace("llama.", "qwen2."), v.clone());
        }
        m.insert("general.architecture", Value::String("qwen2".into()));
        let c = LlamaConfig::from_metadata(&m).expect("valid");
        assert_eq!(
            (c.arch, c.rope.mode, c.qkv_bias),
            (Arch::Qwen2, RopeMode::Neox, true)
        );
    }

    fn hf(extra: &str) -> Result<LlamaConfig, ModelError> {
        let json = format!(
            r#"{{"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
            "vocab_size": 100, "max_position_embeddings": 256{extra}}}"#
        );
        LlamaConfig::from_model_config(&ModelConfig::from_json(json.as_bytes()).expect("json"))
    }

    #[test]
    fn hf_configs() {
        let c = hf("").expect("valid");
        assert_eq!(
            (c.arch, c.rope.mode, c.qkv_bias),
            (Arch::Qwen2, RopeMode::Neox, true)
        );
        // Qwen2 states a window it does not use.
        let c = hf(r#", "sliding_window": 32, "use_sliding_window": false"#).expect("valid");
        assert_eq!(c.sliding_window, 0);
        let c = hf(r#", "sliding_window": 32, "use_sliding_window": true"#).expect("valid");
        assert_eq!(c.sliding_window, 32);
        let c = hf(r#", "rope_scaling": {"type": "linear", "factor": 2.0}"#).expect("valid");
        assert_eq!(c.rope.freq_scale, 0.5);
        let c = hf(r#", "rope_scaling": {"rope_type": "default"}"#).expect("valid");
        assert_eq!(c.rope.freq_scale, 1.0);
        // Llama 3.1's scaling changes every frequency: refused, not ignored.
        let err = hf(r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#)
            .expect_err("llama3 scaling");
        assert!(err.to_string().contains("llama3"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut m = smol();
        m.insert("general.architecture", Value::String("gemma".into()));
        assert!(matches!(
            LlamaConfig::from_metadata(&m),
            Err(ModelError::UnsupportedArchitecture { arch, .. }) if arch == "gemma"
        ));
        let mut m = smol();
        m.insert("llama.attention.head_count_kv", Value::U32(4));
        let err = LlamaConfig::from_metadata(&m).expect_err("9 heads over 4 kv heads");
        assert!(
            err.to_string().contains("llama.attention.head_count_kv"),
            "{err}"
        );
        let mut m = Metadata::new();
        m.insert("general.architecture", Value::String("llama".into()));
        assert!(matches!(
            LlamaConfig::from_metadata(&m),
            Err(ModelError::MissingKey { .. })
        ));
        // Zero sizes are errors naming the key, never a division by zero.
        for key in [
            "block_count",
            "embedding_length",
            "feed_forward_length",
            "attention.head_count",
            "attention.head_count_kv",
            "attention.key_length",
            "rope.dimension_count",
            "vocab_size",
        ] {
            let mut m = smol();
            m.insert(format!("llama.{key}"), Value::U32(0));
            let err = LlamaConfig::from_metadata(&m).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let mut m = smol();
        m.insert("llama.attention.head_count", Value::U64(1 << 40));
        m.insert("llama.attention.head_count_kv", Value::U64(1 << 40));
        m.insert("llama.attention.key_length", Value::U64(1 << 40));
        assert!(LlamaConfig::from_metadata(&m).is_err());
        let mut m = smol();
        m.insert("llama.rope.scaling.type", Value::String("yarn".into()));
        assert!(LlamaConfig::from_metadata(&m).is_err());
        m.insert("llama.rope.scaling.type", Value::String("linear".into()));
        m.insert("llama.rope.scaling.factor", Value::F32(4.0));
        assert_eq!(
            LlamaConfig::from_metadata(&m)
                .expect("valid")
                .rope
                .freq_scale,
            0.25
        );
    }
}
