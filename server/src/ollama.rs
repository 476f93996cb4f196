//! ollama's API: `POST /api/generate` and `POST /api/chat` (NDJSON lines
//! while `stream`, the default; one object otherwise), `GET /api/tags`,
//! `POST /api/show`, `DELETE /api/delete`, `GET /api/version`. Errors are
//! ollama's `{"error": "..."}`. Durations are nanoseconds, as ollama's are.

use std::convert::Infallible;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, StreamExt};
use kiln::loaders::Message;
use kiln::{FinishReason, GenerationStats};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, OllamaError};
use crate::models::ModelInfo;
use crate::request::{
    new_id, parse_json, prepare, requested_adapters, AdapterField, Plan, Sampling, Stop,
};
use crate::scheduler::{Event, Generation};
use crate::AppState;

/// ollama's `options`: the sampling ones kiln has (others, such as
/// `num_ctx` or `num_gpu`, are server settings here and ignored).
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    /// Tokens to generate; -1 (no limit) and -2 (fill the context) leave
    /// it to the context and the server's cap.
    pub num_predict: Option<i64>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

impl Options {
    fn split(self) -> (Option<usize>, Sampling) {
        let max_tokens = self
            .num_predict
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0);
        let sampling = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            stop: self.stop.map(Stop::Many),
            ignore_eos: None,
        };
        (max_tokens, sampling)
    }
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub model: Option<String>,
    /// LoRA adapters to apply (`request::AdapterField`).
    pub adapter: Option<AdapterField>,
    pub prompt: Option<String>,
    pub system: Option<String>,
    /// The prompt as is, not through the chat template.
    pub raw: Option<bool>,
    pub stream: Option<bool>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    pub images: Option<Vec<Value>>,
    pub template: Option<String>,
    pub suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// LoRA adapters to apply (`request::AdapterField`).
    pub adapter: Option<AdapterField>,
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    pub stream: Option<bool>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    pub images: Option<Vec<Value>>,
}

/// `{"model": ...}` (or the older `{"name": ...}`).
#[derive(Debug, Deserialize)]
pub struct ModelRequest {
    pub model: Option<String>,
    pub name: Option<String>,
}

impl ModelRequest {
    fn name(&self) -> Result<&str, ApiError> {
        self.model
            .as_deref()
            .or(self.name.as_deref())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("model is required"))
    }
}

fn refuse_extras(
    format: Option<&Value>,
    images: bool,
    template: Option<&str>,
) -> Result<(), ApiError> {
    let format_set = match format {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    };
    if format_set {
        return Err(ApiError::unsupported("format (structured output)"));
    }
    if images {
        return Err(ApiError::unsupported("images"));
    }
    if template.is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::unsupported("a per-request template"));
    }
    Ok(())
}

pub async fn generate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let start = Instant::now();
    let request: GenerateRequest = parse_json(body, &state)?;
    let (model, named) = state.target(request.model.as_deref())?;
    let adapters = requested_adapters(named, request.adapter.clone());
    let images = request.images.as_ref().is_some_and(|i| !i.is_empty());
    refuse_extras(request.format.as_ref(), images, request.template.as_deref())?;
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix").into());
    }
    let reply = Reply {
        model: model.name.clone(),
        chat: false,
        start,
    };
    let prompt = request.prompt.unwrap_or_default();
    if prompt.is_empty() {
        // ollama's way to load a model: nothing to generate.
        return Ok(Json(reply.loaded()).into_response());
    }
    let ids = if request.raw.unwrap_or(false) {
        prepare(&model, move |m| m.text_prompt(&prompt)).await?
    } else {
        let mut messages = Vec::new();
        if let Some(system) = request.system.filter(|s| !s.is_empty()) {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", prompt));
        prepare(&model, move |m| m.chat_prompt(&messages)).await?
    };
    let (max_tokens, sampling) = request.options.unwrap_or_default().split();
    let plan = Plan {
        model,
        prompt: ids,
        max_tokens,
        sampling,
        top_logprobs: 0,
        adapters,
    };
    run(&state, plan, reply, request.stream).await
}

pub async fn chat(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let start = Instant::now();
    let request: ChatRequest = parse_json(body, &state)?;
    let (model, named) = state.target(request.model.as_deref())?;
    let adapters = requested_adapters(named, request.adapter.clone());
    let images = request
        .messages
        .iter()
        .any(|m| m.images.as_ref().is_some_and(|i| !i.is_empty()));
    refuse_extras(request.format.as_ref(), images, None)?;
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::unsupported("tool calling").into());
    }
    let reply = Reply {
        model: model.name.clone(),
        chat: true,
        start,
    };
    if request.messages.is_empty() {
        return Ok(Json(reply.loaded()).into_response());
    }
    let messages: Vec<Message> = request
        .messages
        .into_iter()
        .map(|m| Message::new(m.role, m.content))
        .collect();
    let ids = prepare(&model, move |m| m.chat_prompt(&messages)).await?;
    let (max_tokens, sampling) = request.options.unwrap_or_default().split();
    let plan = Plan {
        model,
        prompt: ids,
        max_tokens,
        sampling,
        top_logprobs: 0,
        adapters,
    };
    run(&state, plan, reply, request.stream).await
}

/// Submits the prompt and answers: NDJSON lines while `stream` (ollama's
/// default), else one object.
async fn run(
    state: &AppState,
    plan: Plan,
    reply: Reply,
    stream: Option<bool>,
) -> Result<Response, OllamaError> {
    let model = plan.model.clone();
    let job = plan.job(state, &new_id("ollama"))?;
    let mut generation = model.submit(job)?;
    let first = generation.first().await?;
    if stream.unwrap_or(true) {
        return Ok(reply.stream(first, generation));
    }
    let done = generation.collect(first).await?;
    Ok(Json(reply.done(&done.text, done.reason, &done.stats)).into_response())
}

/// Writes one request's response objects.
struct Reply {
    model: String,
    /// `/api/chat` (a `message`) rather than `/api/generate` (a `response`).
    chat: bool,
    start: Instant,
}

impl Reply {
    fn object(&self, text: &str, done: bool) -> Value {
        let mut object = json!({
            "model": self.model,
            "created_at": rfc3339(SystemTime::now()),
            "done": done,
        });
        if self.chat {
            object["message"] = json!({ "role": "assistant", "content": text });
        } else {
            object["response"] = json!(text);
        }
        object
    }

    fn done(&self, text: &str, reason: FinishReason, stats: &GenerationStats) -> Value {
        let ns = |s: f64| (s * 1e9) as u64;
        let mut object = self.object(text, true);
        object["done_reason"] = json!(match reason {
            FinishReason::Eog | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        });
        object["total_duration"] = json!(self.start.elapsed().as_nanos() as u64);
        object["load_duration"] = json!(0);
        object["prompt_eval_count"] = json!(stats.prompt_tokens);
        object["prompt_eval_duration"] = json!(ns(stats.prefill_s));
        object["eval_count"] = json!(stats.gen_tokens);
        object["eval_duration"] = json!(ns(stats.decode_s));
        object
    }

    /// The answer to a request with nothing to generate.
    fn loaded(&self) -> Value {
        let mut object = self.object("", true);
        object["done_reason"] = json!("load");
        object
    }

    fn stream(self, first: Event, generation: Generation) -> Response {
        let lines = stream::once(async { first })
            .chain(generation.into_stream())
            .filter_map(move |event| {
                let line = match event {
                    Event::Token(t) if t.text.is_empty() => None,
                    Event::Token(t) => Some(self.object(&t.text, false)),
                    Event::Done { reason, stats } => Some(self.done("", reason, &stats)),
                    Event::Failed(e) => Some(json!({ "error": e.message })),
                };
                std::future::ready(line.map(|l| Ok::<_, Infallible>(Bytes::from(format!("{l}\n")))))
            });
        let mut response = Body::from_stream(lines).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }
}

pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "model": m.name,
                "modified_at": rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(m.info.modified)),
                "size": m.info.file_size,
                "digest": m.info.digest.as_deref().map_or("", |d| d.trim_start_matches("sha256:")),
                "details": details(&m.info),
            })
        })
        .collect();
    Json(json!({ "models": models }))
}

fn details(info: &ModelInfo) -> Value {
    json!({
        "parent_model": "",
        "format": if info.parameters.is_some() { "gguf" } else { "safetensors" },
        "family": info.arch,
        "families": [info.arch],
        "parameter_size": info.parameter_size(),
        "quantization_level": info.quantization.as_deref().unwrap_or("unknown"),
    })
}

pub async fn show(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, OllamaError> {
    let request: ModelRequest = parse_json(body, &state)?;
    let model = state.model(Some(request.name()?))?;
    let info = &model.info;
    let arch = info.arch;
    let model_info = json!({
        "general.architecture": arch,
        "general.parameter_count": info.parameters,
        format!("{arch}.context_length"): info.n_ctx_train,
        format!("{arch}.embedding_length"): info.n_embd,
        format!("{arch}.block_count"): info.n_layer,
        format!("{arch}.attention.head_count"): info.n_head,
        format!("{arch}.attention.head_count_kv"): info.n_head_kv,
        format!("{arch}.feed_forward_length"): info.n_ff,
        format!("{arch}.vocab_size"): info.vocab_size,
    });
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": info.chat_template.as_deref().unwrap_or(""),
        "details": details(info),
        "model_info": model_info,
        "capabilities": ["completion"],
        "modified_at": rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(info.modified)),
        // kiln's own: how this server runs it.
        "kiln": { "context_length": info.context_length, "device": info.device },
    })))
}

/// Deletes a model from the hub's folder, as `kiln rm` does; a model this
/// server has loaded is refused (409).
pub async fn delete(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OllamaError> {
    let request: ModelRequest = parse_json(body, &state)?;
    let name = request.name()?.to_string();
    kiln::loaders::hub::validate_name(&name).map_err(ApiError::from)?;
    let hub = &state.config.hub;
    let target = match hub.find(&name) {
        Ok(entry) => hub.path_of(entry),
        Err(_) => hub.models_dir().join(&name),
    };
    if let Some(m) = state
        .models
        .iter()
        .find(|m| same_file(&m.info.path, &target))
    {
        return Err(ApiError::conflict(format!(
            "model `{}` is loaded by this server; stop the server to delete it",
            m.name
        ))
        .into());
    }
    let path = hub.rm(&name).map_err(ApiError::from)?;
    tracing::info!(model = %name, path = %path.display(), "deleted");
    Ok(StatusCode::OK.into_response())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// `2024-05-01T12:34:56.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_714_566_896), "2024-05-01T12:34:56.000Z");
    }
}
