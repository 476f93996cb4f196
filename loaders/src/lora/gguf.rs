//! The llama.cpp LoRA reader: a GGUF with `general.type = adapter`.
//!
//! What llama.cpp's `convert_lora_to_gguf.py` writes and `llama-adapter.cpp`
//! reads: `adapter.type = "lora"`, `adapter.lora.alpha` (f32), and for each
//! adapted weight `W` (`blk.3.attn_q.weight`) the pair `W.lora_a`
//! (`ne = [in, r]`, kiln shape `[r, in]`) and `W.lora_b` (`ne = [r, out]`,
//! kiln `[out, r]`), PEFT's matrices byte for byte. The scale is
//! `alpha / r` per pair, with `r` that pair's rank; llama.cpp reads a
//! missing or zero alpha as scale 1, and so does kiln.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use kiln_kernels::DType;

use crate::error::{ErrorKind, LoadError};
use crate::gguf::{GgufFile, TensorInfo, MAGIC};
use crate::lora::error::{LoraError, LoraErrorKind};
use crate::lora::{check_pair, decode, LoraAdapter, LoraFormat, LoraHalf, LoraModule, LoraTarget};
use crate::metadata::Value;

pub(super) const ALPHA_KEY: &str = "adapter.lora.alpha";

/// Whether `path` starts with the GGUF magic (a short file does not).
pub(super) fn has_magic(path: &Path) -> Result<bool, LoraError> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(LoadError::io(path, e).into()),
    }
}

/// Opens a llama.cpp LoRA GGUF.
pub(super) fn open(path: &Path) -> Result<LoraAdapter, LoraError> {
    let file = GgufFile::open(path)?;
    let name = path.file_stem().map_or_else(
        || file.name().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    read(&file, name).map_err(|e| e.in_file(path.display().to_string()))
}

/// llama.cpp's `get_scale`: `alpha / rank`, or 1 when alpha is 0.
pub(super) fn gguf_scale(alpha: f32, rank: usize) -> f32 {
    if alpha == 0.0 {
        1.0
    } else {
        (f64::from(alpha) / rank as f64) as f32
    }
}

fn read(file: &GgufFile, name: String) -> Result<LoraAdapter, LoraError> {
    let md = file.metadata();
    let not_adapter = |reason: String| LoraError::new(LoraErrorKind::NotAnAdapter { reason });
    match md.get("general.type") {
        Some(Value::String(t)) if t == "adapter" => {}
        Some(Value::String(t)) => {
            return Err(not_adapter(format!("general.type is '{t}', not 'adapter'")))
        }
        Some(_) => return Err(not_adapter("general.type is not a string".into())),
        None => {
            return Err(not_adapter(
                "general.type is missing (a model rather than an adapter?)".into(),
            ))
        }
    }
    match md.get_str("adapter.type") {
        Some("lora") => {}
        Some(t) => {
            return Err(not_adapter(format!(
                "adapter.type is '{t}'; kiln reads 'lora' adapters"
            )))
        }
        None => {
            return Err(not_adapter(
                "adapter.type is missing or not a string".into(),
            ))
        }
    }
    if md.iter().any(|(k, _)| k.starts_with("adapter.alora.")) {
        return Err(LoraErrorKind::Unsupported {
            what: "activated LoRA (adapter.alora.*)".into(),
        }
        .into());
    }
    let alpha = match md.get(ALPHA_KEY) {
        None => 0.0,
        Some(v) => v.as_f64().ok_or_else(|| {
            LoadError::new(ErrorKind::BadMetadata {
                key: ALPHA_KEY.into(),
                expected: "a number",
            })
        })?,
    };
    if !(alpha as f32).is_finite() {
        return Err(LoraErrorKind::NonFiniteAlpha {
            what: ALPHA_KEY.into(),
            value: alpha,
        }
        .into());
    }
    let alpha = alpha as f32;

    let mut pairs: BTreeMap<(usize, LoraModule), [Option<&TensorInfo>; 2]> = BTreeMap::new();
    for t in file.tensors() {
        let (layer, module, half) = parse_name(&t.name)?;
        // GGUF names are unique and parse_name accepts one spelling each.
        pairs.entry((layer, module)).or_default()[half as usize] = Some(t);
    }
    let mut targets = Vec::with_capacity(pairs.len());
    for ((layer, module), halves) in pairs {
        let (a, b) = match halves {
            [Some(a), Some(b)] => (a, b),
            [Some(t), None] | [None, Some(t)] => {
                let missing = if halves[0].is_some() {
                    LoraHalf::B
                } else {
                    LoraHalf::A
                };
                return Err(LoraErrorKind::MissingHalf {
                    present: t.name.clone(),
                    missing: LoraFormat::Gguf.tensor_name(layer, module, missing),
                }
                .into());
            }
            [None, None] => continue,
        };
        for t in [a, b] {
            check_dtype(t)?;
        }
        check_pair((&a.name, &a.shape), (&b.name, &b.shape))?;
        let tensor =
            |t: &TensorInfo| decode(&t.name, t.dtype, &t.shape, file.tensor_data(&t.name)?);
        let rank = a.shape[0];
        targets.push(LoraTarget {
            layer,
            module,
            a: tensor(a)?,
            b: tensor(b)?,
            scale: gguf_scale(alpha, rank),
        });
    }
    let mut adapter = LoraAdapter {
        name,
        format: LoraFormat::Gguf,
        alpha,
        rank: 0,
        scale: 0.0,
        base_model: md.get_str("general.base_model.0.name").map(str::to_string),
        architecture: md.architecture().map(str::to_string),
        targets,
    };
    adapter.finish()?;
    adapter.scale = gguf_scale(alpha, adapter.rank);
    Ok(adapter)
}

/// What llama.cpp's converter writes (`--outtype f32/f16/bf16/q8_0`).
fn check_dtype(t: &TensorInfo) -> Result<(), LoraError> {
    match t.dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 => Ok(()),
        other => Err(LoraErrorKind::UnsupportedDtype {
            tensor: t.name.clone(),
            dtype: other.to_string(),
            expected: "F32, F16, BF16 or Q8_0",
        }
        .into()),
    }
}

/// `blk.{i}.{module}.weight.lora_{a|b}` → `(i, module, half)`.
fn parse_name(name: &str) -> Result<(usize, LoraModule, LoraHalf), LoraError> {
    let unexpected = |reason: &str| {
        LoraError::new(LoraErrorKind::UnexpectedTensor {
            tensor: name.to_string(),
            reason: reason.to_string(),
        })
    };
    let (base, half) = if let Some(base) = name.strip_suffix(".lora_a") {
        (base, LoraHalf::A)
    } else if let Some(base) = name.strip_suffix(".lora_b") {
        (base, LoraHalf::B)
    } else {
        return Err(unexpected(
            "not a LoRA matrix: llama.cpp LoRA tensors are '<weight>.lora_a' / '<weight>.lora_b'",
        ));
    };
    let stem = base
        .strip_suffix(".weight")
        .ok_or_else(|| unexpected("expected '<name>.weight.lora_a' / '.lora_b'"))?;
    let unsupported = |module: &str| {
        LoraError::new(LoraErrorKind::UnsupportedModule {
            module: module.to_string(),
            found_in: format!("tensor '{name}'"),
        })
    };
    // token_embd, output, ...: not in a block.
    let (index, module_name) = stem
        .strip_prefix("blk.")
        .and_then(|rest| rest.split_once('.'))
        .ok_or_else(|| unsupported(stem))?;
    let module = LoraModule::from_gguf_name(module_name).ok_or_else(|| unsupported(module_name))?;
    let layer: usize = index
        .parse()
        .map_err(|_| unexpected("expected 'blk.<i>.<module>.weight.lora_a'"))?;
    if LoraFormat::Gguf.tensor_name(layer, module, half) != name {
        return Err(unexpected("expected 'blk.<i>.<module>.weight.lora_a'"));
    }
    Ok((layer, module, half))
}
