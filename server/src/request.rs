//! What both APIs share on the way in: the JSON body, the sampling fields
//! (by their OpenAI names; ollama's `options` map onto them), and turning a
//! prompt plus those fields into a [`Job`] that fits the model's context.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use kiln::{AdapterSet, GenerateOptions, SamplerConfig};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ApiError;
use crate::models::ServedModel;
use crate::scheduler::Job;
use crate::AppState;

/// Most stop strings one request may give.
const MAX_STOPS: usize = 16;
/// Most alternatives per token logprobs may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most LoRA adapters one request may combine.
const MAX_ADAPTERS: usize = 8;

/// `adapter`: a LoRA adapter loaded on the model (`kiln serve --lora`),
/// or a list of them, each a name or `{"name", "scale"}`; their updates
/// add. The model name may also carry them: `base+adapter[+adapter]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum AdapterField {
    One(String),
    Many(Vec<AdapterEntry>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum AdapterEntry {
    Name(String),
    Scaled {
        name: String,
        #[serde(default = "unit_scale")]
        scale: f32,
    },
}

fn unit_scale() -> f32 {
    1.0
}

/// The adapters a request asks for: those its model name carries (at
/// scale 1), then its `adapter` field.
pub fn requested_adapters(named: Vec<String>, field: Option<AdapterField>) -> Vec<(String, f32)> {
    let mut all: Vec<(String, f32)> = named.into_iter().map(|n| (n, 1.0)).collect();
    match field {
        None => {}
        Some(AdapterField::One(name)) => all.push((name, 1.0)),
        Some(AdapterField::Many(list)) => all.extend(list.into_iter().map(|e| match e {
            AdapterEntry::Name(name) => (name, 1.0),
            AdapterEntry::Scaled { name, scale } => (name, scale),
        })),
    }
    all
}

/// The body as JSON: a body over the limit is 413, anything unreadable 400
/// with serde's message (which says where).
pub fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    state: &AppState,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.config.body_limit),
        _ => ApiError::bad_request(e.body_text()),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// One stop string or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Sampling fields; anything missing keeps kiln's default (llama.cpp's:
/// temperature 0.8, top-k 40, top-p 0.95, min-p 0.05), as llama-server does.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    /// Tokens the penalties look back over; -1 is the whole context.
    pub repeat_last_n: Option<i64>,
    /// A negative seed means a random one (llama.cpp's -1).
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    /// Keep generating through end-of-generation tokens (llama-server's
    /// extension; benchmarks and load tests).
    pub ignore_eos: Option<bool>,
}

impl Sampling {
    fn sampler(&self, ctx: usize) -> Result<SamplerConfig, ApiError> {
        let d = SamplerConfig::default();
        let config = SamplerConfig {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            penalty_last_n: match self.repeat_last_n {
                None => d.penalty_last_n,
                Some(n) if n < 0 => ctx,
                Some(n) => n as usize,
            },
            seed: self.seed.and_then(|s| u64::try_from(s).ok()),
        };
        if config.temperature < 0.0 {
            return Err(ApiError::bad_request(format!(
                "temperature {} is negative (0 is greedy)",
                config.temperature
            )));
        }
        config
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(config)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = self.stop.clone().map(Stop::into_vec).unwrap_or_default();
        if stops.len() > MAX_STOPS {
            return Err(ApiError::bad_request(format!(
                "{} stop strings given; at most {MAX_STOPS} are allowed",
                stops.len()
            )));
        }
        Ok(stops)
    }
}

/// A request made ready for the scheduler.
pub struct Plan {
    pub model: Arc<ServedModel>,
    pub prompt: Vec<u32>,
    /// The request's `max_tokens`, if it gave one (0 is refused).
    pub max_tokens: Option<usize>,
    pub sampling: Sampling,
    pub top_logprobs: usize,
    /// LoRA adapters by name and multiplier ([`requested_adapters`]).
    pub adapters: Vec<(String, f32)>,
}

impl Plan {
    /// The job: `max_tokens` capped by the server's limit and defaulting to
    /// what the context has room for; a prompt that leaves no room, or a
    /// `max_tokens` that does not fit, is 400 `context_length_exceeded`.
    pub fn job(self, state: &AppState, id: &str) -> Result<Job, ApiError> {
        let ctx = self.model.info.context_length;
        let prompt = self.prompt.len();
        if prompt == 0 {
            return Err(ApiError::bad_request("the prompt is empty"));
        }
        let cap = state.config.max_tokens.max(1);
        let max_tokens = match self.max_tokens {
            Some(0) => return Err(ApiError::bad_request("max_tokens must be at least 1")),
            Some(n) => n.min(cap),
            None => cap.min(ctx.saturating_sub(prompt)).max(1),
        };
        if prompt.saturating_add(max_tokens) > ctx {
            return Err(ApiError::context_overflow(prompt, max_tokens, ctx));
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(ApiError::bad_request(format!(
                "top_logprobs is {}; at most {MAX_TOP_LOGPROBS} are allowed",
                self.top_logprobs
            )));
        }
        let adapters = self.adapter_set()?;
        Ok(Job {
            id: id.to_string(),
            options: GenerateOptions {
                max_tokens,
                sampler: self.sampling.sampler(ctx)?,
                stop: self.sampling.stops()?,
                ignore_eos: self.sampling.ignore_eos.unwrap_or(false),
                top_logprobs: self.top_logprobs,
                // Always a set, empty for the base: the slot this request
                // gets may hold an earlier request's adapters.
                adapters: Some(adapters),
            },
            prompt: self.prompt,
            timeout: state.config.request_timeout,
        })
    }
}

impl Plan {
    /// The adapters asked for, each loaded on the model, at most
    /// [`MAX_ADAPTERS`], scales finite.
    fn adapter_set(&self) -> Result<AdapterSet, ApiError> {
        if self.adapters.len() > MAX_ADAPTERS {
            return Err(ApiError::bad_request(format!(
                "{} adapters asked for; at most {MAX_ADAPTERS} combine in one request",
                self.adapters.len()
            )));
        }
        let loaded = &self.model.info.adapters;
        let mut set = AdapterSet::new();
        for (name, scale) in &self.adapters {
            if !loaded.iter().any(|l| l == name) {
                let have = match loaded.is_empty() {
                    true => "none is loaded (kiln serve --lora NAME=PATH)".to_string(),
                    false => format!("loaded: {}", loaded.join(", ")),
                };
                return Err(ApiError::bad_request(format!(
                    "adapter '{name}' is not loaded on model '{}'; {have}",
                    self.model.name
                )));
            }
            if !scale.is_finite() {
                return Err(ApiError::bad_request(format!(
                    "adapter '{name}': scale {scale} is not a finite number"
                )));
            }
            set.insert(name.clone(), *scale);
        }
        Ok(set)
    }
}

/// Runs prompt preparation (template rendering, tokenizing: up to the body
/// limit of text) off the async threads.
pub async fn prepare<T: Send + 'static>(
    model: &Arc<ServedModel>,
    f: impl FnOnce(&ServedModel) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let model = model.clone();
    tokio::task::spawn_blocking(move || f(&model))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the prompt: {e}")))?
}

/// A fresh id for a response: `prefix-` and 24 hex digits, unique within
/// the process and unlikely to repeat across restarts.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos:016x}{:08x}", n as u32)
}
