//! Adapter writers, for tests and tools: a PEFT directory or a llama.cpp
//! LoRA GGUF holding a [`LoraAdapter`], such that opening what was written
//! gives back the same targets (tensors rounded to the chosen dtype,
//! scales exactly).
//!
//! Neither format stores a scale per tensor: PEFT derives it from `r`,
//! `lora_alpha` and the patterns, llama.cpp from one `alpha` and each
//! pair's rank. So the writers derive those from the targets' scales, and
//! refuse an adapter the format cannot express.

use std::path::Path;

use kiln_kernels::{quant, DType};
use serde_json::{json, Map, Value as Json};

use crate::error::LoadError;
use crate::gguf::GgufWriter;
use crate::lora::config::{peft_scale, PeftConfig, TargetModules};
use crate::lora::error::{LoraError, LoraErrorKind};
use crate::lora::gguf::{gguf_scale, ALPHA_KEY};
use crate::lora::{
    LoraAdapter, LoraFormat, LoraHalf, LoraTarget, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE,
};
use crate::metadata::Value;
use crate::safetensors::SafeDtype;

fn unwritable(reason: String) -> LoraError {
    LoraError::new(LoraErrorKind::Unwritable { reason })
}

/// Writes `adapter` as a PEFT directory `dir` (created if needed):
/// `adapter_config.json` and `adapter_model.safetensors` with the matrices
/// in `dtype` (F32, F16 or BF16).
///
/// The config has `r` = the adapter's rank and `lora_alpha` = its alpha;
/// `rank_pattern` / `alpha_pattern` entries (exact module paths) cover the
/// targets those leave wrong, and `use_rslora` is set when that needs fewer
/// entries. For tests and tools: PEFT reads the result too.
pub fn write_peft(
    dir: impl AsRef<Path>,
    adapter: &LoraAdapter,
    dtype: DType,
) -> Result<(), LoraError> {
    let dir = dir.as_ref();
    let safe_dtype = match dtype {
        DType::F32 => SafeDtype::F32,
        DType::F16 => SafeDtype::F16,
        DType::BF16 => SafeDtype::BF16,
        other => {
            return Err(unwritable(format!(
                "PEFT matrices are F32, F16 or BF16, not {other}"
            )))
        }
    };
    let config = peft_config(adapter)?;
    let mut tensors = Vec::with_capacity(2 * adapter.targets.len());
    for t in &adapter.targets {
        for (half, m) in [(LoraHalf::A, &t.a), (LoraHalf::B, &t.b)] {
            let name = LoraFormat::Peft.tensor_name(t.layer, t.module, half);
            let bytes = encode(
                &name,
                m.to_f32().map_err(|e| unwritable(e.to_string()))?.as_ref(),
                dtype,
            )?;
            tensors.push((name, m.shape().to_vec(), bytes));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| LoadError::io(dir, e))?;
    let config_path = dir.join(PEFT_CONFIG_FILE);
    std::fs::write(&config_path, config.to_json()).map_err(|e| LoadError::io(&config_path, e))?;
    let weights_path = dir.join(PEFT_WEIGHTS_FILE);
    std::fs::write(&weights_path, safetensors_bytes(&tensors, safe_dtype))
        .map_err(|e| LoadError::io(&weights_path, e))?;
    Ok(())
}

/// The config that gives every target its scale back.
fn peft_config(adapter: &LoraAdapter) -> Result<PeftConfig, LoraError> {
    let first = adapter
        .targets
        .first()
        .ok_or_else(|| LoraError::new(LoraErrorKind::NoTargets))?;
    if !adapter.alpha.is_finite() {
        return Err(unwritable(format!("alpha {} is not finite", adapter.alpha)));
    }
    let r = adapter
        .targets
        .iter()
        .map(LoraTarget::rank)
        .max()
        .unwrap_or(first.rank());
    let alpha = f64::from(adapter.alpha);
    let build = |rslora: bool| {
        let mut config = PeftConfig::new(r, alpha);
        config.use_rslora = rslora;
        config.base_model_name_or_path = adapter.base_model.clone();
        let mut names: Vec<String> = adapter
            .targets
            .iter()
            .map(|t| t.module.hf_name().to_string())
            .collect();
        names.sort();
        names.dedup();
        config.target_modules = Some(TargetModules::Names(names));
        for t in &adapter.targets {
            let key = t.module.hf_key(t.layer);
            if t.rank() != r {
                config.rank_pattern.push((key.clone(), t.rank()));
            }
            if peft_scale(alpha, t.rank(), rslora) != t.scale {
                let root = if rslora {
                    (t.rank() as f64).sqrt()
                } else {
                    t.rank() as f64
                };
                config.alpha_pattern.push((key, f64::from(t.scale) * root));
            }
        }
        config
    };
    let (plain, rs) = (build(false), build(true));
    let config = if rs.alpha_pattern.len() < plain.alpha_pattern.len() {
        rs
    } else {
        plain
    };
    // The derivation is exact in f64, but say so rather than trust it.
    for t in &adapter.targets {
        let scale = config.scale_for(&t.module.hf_key(t.layer))?;
        if scale != t.scale {
            return Err(unwritable(format!(
                "the scale {} of {} does not survive adapter_config.json (reads back as {scale})",
                t.scale,
                t.module.hf_key(t.layer)
            )));
        }
    }
    Ok(config)
}

/// Writes `adapter` as a llama.cpp LoRA GGUF at `path`, matrices in `dtype`
/// (F32, F16, BF16 or Q8_0; Q8_0 needs `in` and the rank to be multiples
/// of 32).
///
/// GGUF holds one `adapter.lora.alpha` and llama.cpp scales each pair by
/// `alpha / rank`, so the targets' scales must all fit one alpha (true of
/// any PEFT adapter without `alpha_pattern`, and of rsLoRA with one rank);
/// otherwise this is an `Unwritable` error. `general.architecture` is the
/// adapter's, else `llama`. For tests and tools: llama.cpp reads the result.
pub fn write_gguf(
    path: impl AsRef<Path>,
    adapter: &LoraAdapter,
    dtype: DType,
) -> Result<(), LoraError> {
    let path = path.as_ref();
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0) {
        return Err(unwritable(format!(
            "llama.cpp LoRA matrices are F32, F16, BF16 or Q8_0, not {dtype}"
        )));
    }
    let alpha = gguf_alpha(adapter)?;
    let mut w = GgufWriter::new();
    let arch = adapter
        .architecture
        .clone()
        .unwrap_or_else(|| "llama".into());
    w.add("general.architecture", Value::String(arch))?;
    w.add("general.type", Value::String("adapter".into()))?;
    w.add("general.name", Value::String(adapter.name.clone()))?;
    if let Some(base) = &adapter.base_model {
        w.add("general.base_model.count", Value::U32(1))?;
        w.add("general.base_model.0.name", Value::String(base.clone()))?;
    }
    w.add("adapter.type", Value::String("lora".into()))?;
    w.add(ALPHA_KEY, Value::F32(alpha))?;
    for t in &adapter.targets {
        for (half, m) in [(LoraHalf::A, &t.a), (LoraHalf::B, &t.b)] {
            let name = LoraFormat::Gguf.tensor_name(t.layer, t.module, half);
            let cols = m.shape().last().copied().unwrap_or(0);
            if !cols.is_multiple_of(dtype.block_size()) {
                return Err(unwritable(format!(
                    "'{name}' {:?}: rows of {cols} are not whole {dtype} blocks of {}",
                    m.shape(),
                    dtype.block_size()
                )));
            }
            let bytes = encode(
                &name,
                m.to_f32().map_err(|e| unwritable(e.to_string()))?.as_ref(),
                dtype,
            )?;
            w.add_tensor(name, dtype, m.shape(), bytes)?;
        }
    }
    w.write(path)?;
    Ok(())
}

/// The one alpha that gives every target its scale under llama.cpp's rule:
/// the adapter's own, else the one the first target implies.
fn gguf_alpha(adapter: &LoraAdapter) -> Result<f32, LoraError> {
    let first = adapter
        .targets
        .first()
        .ok_or_else(|| LoraError::new(LoraErrorKind::NoTargets))?;
    let implied = (f64::from(first.scale) * first.rank() as f64) as f32;
    let fits = |alpha: f32| {
        alpha.is_finite()
            && adapter
                .targets
                .iter()
                .all(|t| gguf_scale(alpha, t.rank()) == t.scale)
    };
    [adapter.alpha, implied]
        .into_iter()
        .find(|&a| fits(a))
        .ok_or_else(|| {
            let odd = adapter
                .targets
                .iter()
                .find(|t| gguf_scale(implied, t.rank()) != t.scale)
                .unwrap_or(first);
            unwritable(format!(
                "GGUF holds one alpha (scale = alpha / rank for every pair), but {} has scale {} \
                 at rank {} and {} has scale {} at rank {}",
                first.module.gguf_weight(first.layer),
                first.scale,
                first.rank(),
                odd.module.gguf_weight(odd.layer),
                odd.scale,
                odd.rank()
            ))
        })
}

/// `values` in `dtype`'s layout (ggml's reference rounding).
fn encode(name: &str, values: &[f32], dtype: DType) -> Result<Vec<u8>, LoraError> {
    quant::quantize(dtype, values).map_err(|e| unwritable(format!("'{name}': {e}")))
}

/// A safetensors file (see `crate::safetensors`): u64 header length, the
/// JSON header padded with spaces to 8 bytes as the reference writer does,
/// then the tensors back to back in the order given.
fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<u8>)], dtype: SafeDtype) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for (name, shape, bytes) in tensors {
        let end = offset + bytes.len();
        header.insert(
            name.clone(),
            json!({ "dtype": dtype.name(), "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    // A map of json! values always serializes.
    let mut header = serde_json::to_string(&Json::Object(header)).unwrap_or_default();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    out
}
