//! HF `config.json` → [`ModelConfig`] → GGUF-style [`Metadata`].
//!
//! Models read hyperparameters from GGUF keys (`llama.block_count`, ...).
//! A safetensors checkpoint carries them in `config.json` instead, so we
//! translate to the keys llama.cpp's converter (`convert_hf_to_gguf.py`)
//! would write, with the same value types, and models see one shape.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::{ErrorKind, LoadError};
use crate::metadata::{Metadata, Value};

/// A decoder-only transformer's hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// GGUF architecture name (`llama`, `qwen2`, ...), see [`gguf_arch`].
    pub architecture: String,
    /// `architectures[0]` as written (`LlamaForCausalLM`), when present.
    pub hf_class: Option<String>,
    pub hidden_size: u64,
    pub num_hidden_layers: u64,
    pub num_attention_heads: u64,
    /// Equals `num_attention_heads` when absent (no GQA).
    pub num_key_value_heads: u64,
    pub intermediate_size: u64,
    /// Explicit head size; else `hidden_size / num_attention_heads`.
    pub head_dim: Option<u64>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: u64,
    pub max_position_embeddings: u64,
    pub tie_word_embeddings: bool,
    /// The attention window, unless `use_sliding_window` is false (Qwen2
    /// configs state a window they do not use).
    pub sliding_window: Option<u64>,
    /// `rope_scaling`: its `rope_type` (or older `type`) and `factor`, when
    /// set to anything but the default rope.
    pub rope_scaling: Option<RopeScaling>,
    pub bos_token_id: Option<u64>,
    /// Some configs list several end-of-sequence ids.
    pub eos_token_ids: Vec<u64>,
}

/// HF's `rope_scaling` object.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    /// `linear`, `dynamic`, `yarn`, `llama3`, ...
    pub kind: String,
    pub factor: Option<f64>,
}

/// The raw JSON fields we read; everything optional so a missing one is a
/// typed error naming it rather than a serde message.
#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: Option<u64>,
    num_hidden_layers: Option<u64>,
    num_attention_heads: Option<u64>,
    num_key_value_heads: Option<u64>,
    intermediate_size: Option<u64>,
    head_dim: Option<u64>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    vocab_size: Option<u64>,
    max_position_embeddings: Option<u64>,
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<Json>,
    use_sliding_window: Option<bool>,
    rope_scaling: Option<Json>,
    bos_token_id: Option<Json>,
    eos_token_id: Option<Json>,
}

/// llama.cpp's architecture name for an HF `model_type`: Mistral and
/// Mixtral run as `llama` there; the rest keep their name.
pub fn gguf_arch(model_type: &str) -> &str {
    match model_type {
        "mistral" | "mixtral" => "llama",
        other => other,
    }
}

/// Defaults HF's `LlamaConfig` uses when the key is absent.
const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl ModelConfig {
    /// Reads and parses a `config.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<ModelConfig, LoadError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
        ModelConfig::from_json(&text).map_err(|e| e.in_file(path.display().to_string()))
    }

    pub fn from_json(text: &[u8]) -> Result<ModelConfig, LoadError> {
        let raw: RawConfig = serde_json::from_slice(text)
            .map_err(|e| LoadError::new(ErrorKind::ConfigJson(e.to_string())))?;
        let need = |v: Option<u64>, key| v.ok_or(LoadError::new(ErrorKind::MissingConfig(key)));
        let hf_class = raw.architectures.and_then(|a| a.into_iter().next());
        let model_type = match (&raw.model_type, &hf_class) {
            (Some(t), _) => t.clone(),
            // `LlamaForCausalLM` → `llama`: the class name minus its head.
            (None, Some(c)) => c.split("For").next().unwrap_or(c).to_ascii_lowercase(),
            (None, None) => return Err(LoadError::new(ErrorKind::MissingConfig("model_type"))),
        };
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let sliding_window = raw
            .sliding_window
            .as_ref()
            .and_then(Json::as_u64)
            .filter(|_| raw.use_sliding_window != Some(false));
        let rope_scaling = match &raw.rope_scaling {
            None | Some(Json::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("unknown");
                (kind != "default").then(|| RopeScaling {
                    kind: kind.to_string(),
                    factor: v.get("factor").and_then(Json::as_f64),
                })
            }
        };
        Ok(ModelConfig {
            architecture: gguf_arch(&model_type).to_string(),
            hf_class,
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            head_dim: raw.head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(DEFAULT_RMS_NORM_EPS),
            rope_theta: raw.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            sliding_window,
            rope_scaling,
            bos_token_id: raw.bos_token_id.as_ref().and_then(Json::as_u64),
            eos_token_ids: match raw.eos_token_id {
                Some(Json::Array(ids)) => ids.iter().filter_map(Json::as_u64).collect(),
                Some(id) => id.as_u64().into_iter().collect(),
                None => Vec::new(),
            },
        })
    }

    /// Head size: explicit, else hidden / heads (0 heads gives 0).
    pub fn head_dim(&self) -> u64 {
        self.head_dim.unwrap_or_else(|| {
            self.hidden_size
                .checked_div(self.num_attention_heads)
                .unwrap_or(0)
        })
    }

    /// The GGUF keys llama.cpp's converter writes for this config, typed as
    /// it types them (u32 counts, f32 floats). Tied embeddings have no key:
    /// in GGUF they are the absence of `output.weight`.
    pub fn to_metadata(&self) -> Metadata {
        let arch = &self.architecture;
        let mut md = Metadata::new();
        // The counts are u32 in GGUF; a config past that is nonsense anyway.
        let u32_of = |v: u64| Value::U32(u32::try_from(v).unwrap_or(u32::MAX));
        md.insert("general.architecture", Value::String(arch.clone()));
        md.insert(
            format!("{arch}.context_length"),
            u32_of(self.max_position_embeddings),
        );
        md.insert(format!("{arch}.embedding_length"), u32_of(self.hidden_size));
        md.insert(
            format!("{arch}.block_count"),
            u32_of(self.num_hidden_layers),
        );
        md.insert(
            format!("{arch}.feed_forward_length"),
            u32_of(self.intermediate_size),
        );
        md.insert(
            format!("{arch}.attention.head_count"),
            u32_of(self.num_attention_heads),
        );
        md.insert(
            format!("{arch}.attention.head_count_kv"),
            u32_of(self.num_key_value_heads),
        );
        md.insert(
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(self.rms_norm_eps as f32),
        );
        md.insert(
            format!("{arch}.rope.freq_base"),
            Value::F32(self.rope_theta as f32),
        );
        md.insert(format!("{arch}.vocab_size"), u32_of(self.vocab_size));
        if let Some(d) = self.head_dim {
            md.insert(format!("{arch}.attention.key_length"), u32_of(d));
            md.insert(format!("{arch}.attention.value_length"), u32_of(d));
        }
        if let Some(w) = self.sliding_window {
            md.insert(format!("{arch}.attention.sliding_window"), u32_of(w));
        }
        if let Some(r) = &self.rope_scaling {
            md.insert(
                format!("{arch}.rope.scaling.type"),
                Value::String(r.kind.clone()),
            );
            if let Some(f) = r.factor {
                md.insert(format!("{arch}.rope.scaling.factor"), Value::F32(f as f32));
            }
        }
        if let Some(id) = self.bos_token_id {
            md.insert("tokenizer.ggml.bos_token_id", u32_of(id));
        }
        if let Some(&id) = self.eos_token_ids.first() {
            md.insert("tokenizer.ggml.eos_token_id", u32_of(id));
        }
        md
    }
}
