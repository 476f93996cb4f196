//! The PEFT reader: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! PEFT's `save_pretrained` names each matrix after the module path it
//! adapts, with the adapter name removed:
//! `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (`[r, in]`)
//! and `...lora_B.weight` (`[out, r]`). kiln reads exactly that layout; any
//! other tensor (embedding LoRA, DoRA vectors, `modules_to_save` copies,
//! vision towers) is an error naming it, because leaving it out would make
//! the output differ from PEFT's without a word.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_kernels::DType;

use crate::lora::config::{peft_scale, PeftConfig, TargetModules};
use crate::lora::error::{LoraError, LoraErrorKind};
use crate::lora::{
    check_pair, decode, LoraAdapter, LoraFormat, LoraHalf, LoraModule, LoraTarget,
    PEFT_CONFIG_FILE, PEFT_PICKLE_FILE, PEFT_WEIGHTS_FILE,
};
use crate::safetensors::{SafeDtype, SafeTensorInfo, SafetensorsFile};

/// Opens the PEFT adapter in `dir`.
pub(super) fn open(dir: &Path) -> Result<LoraAdapter, LoraError> {
    let config = PeftConfig::open(dir.join(PEFT_CONFIG_FILE))?;
    let weights = dir.join(PEFT_WEIGHTS_FILE);
    if !weights.is_file() {
        let pickle = dir.join(PEFT_PICKLE_FILE);
        if pickle.is_file() {
            return Err(LoraError::new(LoraErrorKind::PickleNotSupported)
                .in_file(pickle.display().to_string()));
        }
        return Err(LoraError::new(LoraErrorKind::MissingFile {
            what: "adapter_model.safetensors",
        })
        .in_file(weights.display().to_string()));
    }
    let file = SafetensorsFile::open(&weights)?;
    let shown = weights.display().to_string();
    let targets = read_targets(&file, &config).map_err(|e| e.in_file(&shown))?;
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let mut adapter = LoraAdapter {
        name,
        format: LoraFormat::Peft,
        alpha: config.lora_alpha as f32,
        rank: 0,
        scale: peft_scale(config.lora_alpha, config.r, config.use_rslora),
        base_model: config.base_model_name_or_path.clone(),
        architecture: None,
        targets,
    };
    adapter.finish().map_err(|e| e.in_file(shown))?;
    Ok(adapter)
}

fn read_targets(file: &SafetensorsFile, config: &PeftConfig) -> Result<Vec<LoraTarget>, LoraError> {
    let mut pairs: BTreeMap<(usize, LoraModule), [Option<&SafeTensorInfo>; 2]> = BTreeMap::new();
    for t in file.tensors() {
        let (layer, module, half) = parse_name(&t.name)?;
        let slot = &mut pairs.entry((layer, module)).or_default()[half as usize];
        if slot.replace(t).is_some() {
            return Err(LoraErrorKind::DuplicateTarget {
                tensor: t.name.clone(),
            }
            .into());
        }
    }
    let mut targets = Vec::with_capacity(pairs.len());
    for ((layer, module), [a, b]) in pairs {
        let name = |half| LoraFormat::Peft.tensor_name(layer, module, half);
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (Some(t), None) | (None, Some(t)) => {
                let missing = if a.is_some() {
                    LoraHalf::B
                } else {
                    LoraHalf::A
                };
                return Err(LoraErrorKind::MissingHalf {
                    present: t.name.clone(),
                    missing: name(missing),
                }
                .into());
            }
            (None, None) => continue,
        };
        let key = module.hf_key(layer);
        if !config.targets(&key) {
            let listed = match &config.target_modules {
                Some(TargetModules::Names(names)) => names.join(", "),
                _ => String::new(),
            };
            return Err(LoraErrorKind::UnexpectedTensor {
                tensor: a.name.clone(),
                reason: format!(
                    "module '{key}' is not in adapter_config.json's target_modules [{listed}]"
                ),
            }
            .into());
        }
        for t in [a, b] {
            dtype_of(t)?;
        }
        check_pair((&a.name, &a.shape), (&b.name, &b.shape))?;
        let (expected, rule) = config.rank_for(&key)?;
        if a.shape[0] != expected {
            return Err(LoraErrorKind::ConfigRankMismatch {
                tensor: a.name.clone(),
                shape: a.shape.clone(),
                found: a.shape[0],
                expected,
                rule,
            }
            .into());
        }
        let tensor = |t: &SafeTensorInfo| {
            decode(&t.name, dtype_of(t)?, &t.shape, file.tensor_data(&t.name)?)
        };
        targets.push(LoraTarget {
            layer,
            module,
            a: tensor(a)?,
            b: tensor(b)?,
            scale: config.scale_for(&key)?,
        });
    }
    Ok(targets)
}

/// PEFT saves floats in the training dtype: F32, F16 or BF16.
fn dtype_of(t: &SafeTensorInfo) -> Result<DType, LoraError> {
    match t.dtype {
        SafeDtype::F32 => Ok(DType::F32),
        SafeDtype::F16 => Ok(DType::F16),
        SafeDtype::BF16 => Ok(DType::BF16),
        other => Err(LoraErrorKind::UnsupportedDtype {
            tensor: t.name.clone(),
            dtype: other.name().to_string(),
            expected: "F32, F16 or BF16",
        }
        .into()),
    }
}

/// `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`
/// → `(i, module, half)`.
fn parse_name(name: &str) -> Result<(usize, LoraModule, LoraHalf), LoraError> {
    let (path, half) = if let Some(path) = name.strip_suffix(".lora_A.weight") {
        (path, LoraHalf::A)
    } else if let Some(path) = name.strip_suffix(".lora_B.weight") {
        (path, LoraHalf::B)
    } else {
        return Err(not_a_pair(name));
    };
    let module_name = path.rsplit('.').next().unwrap_or(path);
    let Some(module) = LoraModule::from_hf_name(module_name) else {
        return Err(LoraErrorKind::UnsupportedModule {
            module: module_name.to_string(),
            found_in: format!("tensor '{name}'"),
        }
        .into());
    };
    let layout = || {
        LoraError::new(LoraErrorKind::UnexpectedTensor {
            tensor: name.to_string(),
            reason: format!(
                "expected the layout {}",
                LoraFormat::Peft
                    .tensor_name(0, module, half)
                    .replace("layers.0.", "layers.<i>.")
            ),
        })
    };
    let layer: usize = path
        .strip_prefix("base_model.model.model.layers.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(index, _)| index.parse().ok())
        .ok_or_else(layout)?;
    // Also refuses `layers.03` and a wrong parent (`mlp.q_proj`).
    if LoraFormat::Peft.tensor_name(layer, module, half) != name {
        return Err(layout());
    }
    Ok((layer, module, half))
}

/// Why a tensor that is not `lora_A`/`lora_B` of a linear layer is refused.
fn not_a_pair(name: &str) -> LoraError {
    let parts: Vec<&str> = name.split('.').collect();
    let before = |marker: &str| {
        let i = parts.iter().position(|p| p.starts_with(marker))?;
        i.checked_sub(1).and_then(|j| parts.get(j)).copied()
    };
    if let Some(module) = before("lora_embedding_") {
        return LoraErrorKind::UnsupportedModule {
            module: module.to_string(),
            found_in: format!("tensor '{name}'"),
        }
        .into();
    }
    if name.contains("lora_magnitude_vector") {
        return LoraErrorKind::Unsupported {
            what: format!("DoRA (tensor '{name}')"),
        }
        .into();
    }
    let reason = if parts.iter().any(|p| *p == "lora_A" || *p == "lora_B") {
        "LoRA matrices must be named '<module>.lora_A.weight' / '.lora_B.weight' (as PEFT saves \
         them, without the adapter name)"
    } else {
        "not a LoRA matrix (lora_A / lora_B): fully trained weights (modules_to_save) and biases \
         cannot be applied as a low-rank update"
    };
    LoraErrorKind::UnexpectedTensor {
        tensor: name.to_string(),
        reason: reason.to_string(),
    }
    .into()
}
