//! PEFT's `adapter_config.json`: rank, alpha, which modules, and per-module
//! overrides, read into [`PeftConfig`] (and written back by the test
//! writer).
//!
//! Semantics follow PEFT's `LoraConfig` and `LoraLayer.update_layer`: a
//! module's rank is `rank_pattern[key]` else `r`, its alpha
//! `alpha_pattern[key]` else `lora_alpha`, its scale `alpha / rank` or, with
//! `use_rslora`, `alpha / sqrt(rank)`. Keys are module paths such as
//! `model.layers.3.self_attn.q_proj`.

use std::path::Path;

use serde_json::{json, Map, Value as Json};

use crate::lora::error::{LoraError, LoraErrorKind};

/// PEFT's `target_modules`.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    /// Module names or dotted suffixes of module paths (`q_proj`,
    /// `self_attn.q_proj`); a module is targeted when its path equals one or
    /// ends with `.` + one (PEFT's rule for lists). Names kiln cannot adapt
    /// are allowed here, as in PEFT, where a list may name modules the
    /// architecture lacks; the tensors decide what is adapted.
    Names(Vec<String>),
    /// One string: to PEFT a regular expression over the whole module path,
    /// or `all-linear`. kiln does not evaluate it; the tensors present say
    /// which modules were targeted.
    Pattern(String),
}

/// A parsed `adapter_config.json` (the fields that change the math;
/// training-only fields such as `lora_dropout` are ignored).
#[derive(Clone, Debug, PartialEq)]
pub struct PeftConfig {
    /// Default rank (PEFT's default 8 when absent).
    pub r: usize,
    /// Default alpha (PEFT's default 8 when absent).
    pub lora_alpha: f64,
    /// rsLoRA: scale `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub use_rslora: bool,
    /// `None` when absent (PEFT then uses its per-architecture default).
    pub target_modules: Option<TargetModules>,
    /// Says the base layer stores `[in, out]` (GPT-2's `Conv1D`). It does
    /// not change `lora_A`/`lora_B`, which are `nn.Linear` weights either
    /// way, and PEFT resets it to false on `nn.Linear` bases such as
    /// LLaMA's, so kiln reads it and changes nothing.
    pub fan_in_fan_out: bool,
    pub base_model_name_or_path: Option<String>,
    /// Per-module rank overrides, key → rank, in file order.
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alpha overrides, key → alpha, in file order.
    pub alpha_pattern: Vec<(String, f64)>,
}

impl PeftConfig {
    /// A config with rank `r` and `lora_alpha`, everything else default.
    pub fn new(r: usize, lora_alpha: f64) -> PeftConfig {
        PeftConfig {
            r,
            lora_alpha,
            use_rslora: false,
            target_modules: None,
            fan_in_fan_out: false,
            base_model_name_or_path: None,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
        }
    }

    /// Reads `adapter_config.json`.
    pub fn open(path: impl AsRef<Path>) -> Result<PeftConfig, LoraError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoraError::new(LoraErrorKind::MissingFile {
                    what: "adapter_config.json",
                })
                .in_file(shown))
            }
            Err(e) => return Err(crate::error::LoadError::io(path, e).into()),
        };
        PeftConfig::from_json(&text).map_err(|e| e.in_file(shown))
    }

    /// Parses the JSON text. Features kiln cannot honour (DoRA,
    /// `modules_to_save`, LoRA biases, layer replication, regex patterns)
    /// are errors, never silently dropped.
    pub fn from_json(text: &[u8]) -> Result<PeftConfig, LoraError> {
        let json: Json = serde_json::from_slice(text).map_err(|e| LoraErrorKind::ConfigJson {
            message: e.to_string(),
        })?;
        let Json::Object(obj) = json else {
            return Err(LoraErrorKind::ConfigJson {
                message: "the top level is not an object".into(),
            }
            .into());
        };
        refuse_unsupported(&obj)?;

        let r = match obj.get("r") {
            None | Some(Json::Null) => 8,
            Some(v) => rank_value(v, "r")?,
        };
        let lora_alpha = match obj.get("lora_alpha") {
            None | Some(Json::Null) => 8.0,
            Some(v) => alpha_value(v, "lora_alpha")?,
        };
        let target_modules = match obj.get("target_modules") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(TargetModules::Pattern(s.clone())),
            Some(Json::Array(items)) => Some(TargetModules::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad_field("target_modules", "a string or a list of strings"))?,
            )),
            Some(_) => return Err(bad_field("target_modules", "a string or a list of strings")),
        };
        let base_model_name_or_path = match obj.get("base_model_name_or_path") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(bad_field("base_model_name_or_path", "a string")),
        };
        let rank_pattern = patterns(&obj, "rank_pattern", |v, key| {
            rank_value(v, &format!("rank_pattern['{key}']"))
        })?;
        let alpha_pattern = patterns(&obj, "alpha_pattern", |v, key| {
            alpha_value(v, &format!("alpha_pattern['{key}']"))
        })?;
        Ok(PeftConfig {
            r,
            lora_alpha,
            use_rslora: flag(&obj, "use_rslora")?,
            target_modules,
            fan_in_fan_out: flag(&obj, "fan_in_fan_out")?,
            base_model_name_or_path,
            rank_pattern,
            alpha_pattern,
        })
    }

    /// The config as PEFT writes it (plus the fields PEFT needs to load it).
    pub fn to_json(&self) -> String {
        let target_modules = match &self.target_modules {
            None => Json::Null,
            Some(TargetModules::Names(names)) => json!(names),
            Some(TargetModules::Pattern(p)) => json!(p),
        };
        let rank_pattern: Map<String, Json> = self
            .rank_pattern
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let alpha_pattern: Map<String, Json> = self
            .alpha_pattern
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let config = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "use_rslora": self.use_rslora,
            "target_modules": target_modules,
            "fan_in_fan_out": self.fan_in_fan_out,
            "base_model_name_or_path": self.base_model_name_or_path,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "bias": "none",
            "lora_dropout": 0.0,
            "inference_mode": true,
        });
        // A json! value always serializes.
        serde_json::to_string_pretty(&config).unwrap_or_default()
    }

    /// The rank of module `key` (`model.layers.3.self_attn.q_proj`), and
    /// the rule that gave it (`r`, or `rank_pattern['q_proj']`) for errors.
    pub fn rank_for(&self, key: &str) -> Result<(usize, String), LoraError> {
        Ok(match lookup("rank_pattern", &self.rank_pattern, key)? {
            Some((pattern, rank)) => (rank, format!("rank_pattern['{pattern}']")),
            None => (self.r, format!("r = {}", self.r)),
        })
    }

    /// The alpha of module `key`.
    pub fn alpha_for(&self, key: &str) -> Result<f64, LoraError> {
        Ok(lookup("alpha_pattern", &self.alpha_pattern, key)?
            .map_or(self.lora_alpha, |(_, alpha)| alpha))
    }

    /// The scale PEFT gives module `key`: its alpha over its rank (or the
    /// rank's square root, rsLoRA), computed in f64 and rounded once.
    pub fn scale_for(&self, key: &str) -> Result<f32, LoraError> {
        let (rank, _) = self.rank_for(key)?;
        Ok(peft_scale(self.alpha_for(key)?, rank, self.use_rslora))
    }

    /// Whether `target_modules` covers module `key` (always, when it is
    /// absent or a pattern kiln does not evaluate).
    pub fn targets(&self, key: &str) -> bool {
        match &self.target_modules {
            Some(TargetModules::Names(names)) => names.iter().any(|n| pattern_matches(n, key)),
            None | Some(TargetModules::Pattern(_)) => true,
        }
    }
}

/// PEFT's scaling: `alpha / r`, or `alpha / sqrt(r)` for rsLoRA.
pub(super) fn peft_scale(alpha: f64, rank: usize, rslora: bool) -> f32 {
    let r = rank as f64;
    (if rslora { alpha / r.sqrt() } else { alpha / r }) as f32
}

/// PEFT (`get_pattern_key`) matches a key `k` against module path `key`
/// as the regex `(.*\.)?(k)$`: the whole path, or a suffix after a dot.
/// kiln takes `k` literally, which agrees for the plain keys it accepts.
fn pattern_matches(pattern: &str, key: &str) -> bool {
    key == pattern
        || key
            .strip_suffix(pattern)
            .is_some_and(|head| head.ends_with('.'))
}

/// Which override applies to `key`: an exact key first (as PEFT does), else
/// the suffix keys that match; several with different values are refused,
/// since PEFT would pick by dict order, which JSON does not promise.
fn lookup<'a, T: Copy + PartialEq>(
    field: &'static str,
    patterns: &'a [(String, T)],
    key: &str,
) -> Result<Option<(&'a str, T)>, LoraError> {
    if let Some((p, v)) = patterns.iter().find(|(p, _)| p == key) {
        return Ok(Some((p, *v)));
    }
    let matching: Vec<&(String, T)> = patterns
        .iter()
        .filter(|(p, _)| pattern_matches(p, key))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [(p, v), rest @ ..] if rest.iter().all(|(_, w)| w == v) => Ok(Some((p, *v))),
        _ => Err(LoraErrorKind::AmbiguousPattern {
            field,
            module: key.to_string(),
            patterns: matching.iter().map(|(p, _)| p.clone()).collect(),
        }
        .into()),
    }
}

/// Plain keys only: dotted names of letters, digits, `_` and `-`. Anything
/// else is a regular expression kiln would get wrong.
fn is_plain_pattern(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

fn patterns<T>(
    obj: &Map<String, Json>,
    field: &'static str,
    value: impl Fn(&Json, &str) -> Result<T, LoraError>,
) -> Result<Vec<(String, T)>, LoraError> {
    let map = match obj.get(field) {
        None | Some(Json::Null) => return Ok(Vec::new()),
        Some(Json::Object(map)) => map,
        Some(_) => return Err(bad_field(field, "an object of module pattern → value")),
    };
    map.iter()
        .map(|(key, v)| {
            if !is_plain_pattern(key) {
                return Err(LoraErrorKind::UnsupportedPattern {
                    field,
                    pattern: key.clone(),
                }
                .into());
            }
            Ok((key.clone(), value(v, key)?))
        })
        .collect()
}

/// The features that would make kiln's output differ from PEFT's if
/// ignored.
fn refuse_unsupported(obj: &Map<String, Json>) -> Result<(), LoraError> {
    let unsupported = |what: String| Err(LoraErrorKind::Unsupported { what }.into());
    match obj.get("peft_type") {
        None | Some(Json::Null) => {}
        Some(Json::String(t)) if t == "LORA" => {}
        Some(t) => return unsupported(format!("peft_type {t} (kiln reads LoRA adapters)")),
    }
    if flag(obj, "use_dora")? {
        return unsupported("DoRA (use_dora: true)".into());
    }
    if flag(obj, "lora_bias")? {
        return unsupported("LoRA biases (lora_bias: true)".into());
    }
    match obj.get("modules_to_save") {
        None | Some(Json::Null) => {}
        Some(Json::Array(a)) if a.is_empty() => {}
        Some(m) => {
            return unsupported(format!(
                "modules_to_save {m} (fully retrained modules, not low-rank updates)"
            ))
        }
    }
    match obj.get("layer_replication") {
        None | Some(Json::Null) => {}
        Some(Json::Array(a)) if a.is_empty() => {}
        Some(_) => return unsupported("layer_replication".into()),
    }
    Ok(())
}

fn bad_field(field: &str, expected: &'static str) -> LoraError {
    LoraErrorKind::BadConfigField {
        field: field.to_string(),
        expected,
    }
    .into()
}

/// A boolean that may be absent or null (false).
fn flag(obj: &Map<String, Json>, field: &'static str) -> Result<bool, LoraError> {
    match obj.get(field) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_field(field, "true or false")),
    }
}

fn rank_value(v: &Json, field: &str) -> Result<usize, LoraError> {
    let rank = v
        .as_u64()
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| bad_field(field, "a positive integer"))?;
    if rank == 0 {
        return Err(LoraErrorKind::RankZero {
            what: format!("adapter_config.json '{field}'"),
        }
        .into());
    }
    Ok(rank)
}

/// A number that is still finite as an f32 (kiln applies scales in f32).
fn alpha_value(v: &Json, field: &str) -> Result<f64, LoraError> {
    let alpha = v.as_f64().ok_or_else(|| bad_field(field, "a number"))?;
    if !alpha.is_finite() || !(alpha as f32).is_finite() {
        return Err(LoraErrorKind::NonFiniteAlpha {
            what: format!("adapter_config.json '{field}'"),
            value: alpha,
        }
        .into());
    }
    Ok(alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_whole_path_or_a_dotted_suffix() {
        let key = "model.layers.12.self_attn.q_proj";
        for p in [
            "q_proj",
            "self_attn.q_proj",
            "layers.12.self_attn.q_proj",
            key,
        ] {
            assert!(pattern_matches(p, key), "{p}");
        }
        for p in [
            "proj",
            "_proj",
            "2.self_attn.q_proj",
            "k_proj",
            "model.layers.1.self_attn.q_proj",
        ] {
            assert!(!pattern_matches(p, key), "{p}");
        }
    }

    #[test]
    fn only_plain_dotted_names_are_accepted_as_patterns() {
        for p in ["q_proj", "layers.3.mlp.down_proj", "gate-up"] {
            assert!(is_plain_pattern(p), "{p}");
        }
        for p in [
            "",
            ".q_proj",
            "q_proj.",
            "a..b",
            ".*q_proj",
            "layers\\.0",
            "(q|k)_proj",
            "^q",
        ] {
            assert!(!is_plain_pattern(p), "{p}");
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let mut c = PeftConfig::new(16, 32.0);
        c.use_rslora = true;
        c.fan_in_fan_out = true;
        c.target_modules = Some(TargetModules::Pattern("all-linear".into()));
        c.base_model_name_or_path = Some("base".into());
        c.rank_pattern = vec![("v_proj".into(), 4)];
        c.alpha_pattern = vec![("layers.0.mlp.up_proj".into(), 0.1)];
        let back = PeftConfig::from_json(c.to_json().as_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.scale_for("model.layers.3.self_attn.v_proj").unwrap(),
            16.0
        );
    }
}
