//! OpenAI's API: `POST /v1/chat/completions`, `POST /v1/completions`
//! (whole responses, or SSE `data: {chunk}` lines ending `data: [DONE]`)
//! and `GET /v1/models`. Shapes follow OpenAI's reference; the official
//! Python client reads them unchanged.
//!
//! Usage comes with the last chunk that carries a `finish_reason`; with
//! `stream_options.include_usage` it comes, as OpenAI sends it, in one
//! more chunk with no choices (and only there, so clients that add usage
//! up count it once).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, StreamExt};
use kiln::loaders::{DecodeOptions, Message, Tokenizer};
use kiln::FinishReason;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::models::{unix_now, ServedModel};
use crate::request::{
    new_id, parse_json, prepare, requested_adapters, AdapterField, Plan, Sampling,
};
use crate::scheduler::{Collected, Event, Generation, Token};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// LoRA adapters to apply (`request::AdapterField`).
    pub adapter: Option<AdapterField>,
    pub messages: Vec<ChatMessage>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<usize>,
    pub n: Option<u32>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<usize>,
    pub tools: Option<Vec<Value>>,
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content: a string, or parts of which only text is read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl ChatMessage {
    fn into_message(self) -> Result<Message, ApiError> {
        let content = match self.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::unsupported(&format!(
                                "a `{kind}` content part (only text is)"
                            )))
                        }
                    }
                }
                text
            }
        };
        // OpenAI's newer name for the system role.
        let role = match self.role.as_str() {
            "developer" => "system".to_string(),
            _ => self.role,
        };
        Ok(Message::new(role, content))
    }
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    /// LoRA adapters to apply (`request::AdapterField`).
    pub adapter: Option<AdapterField>,
    pub prompt: Prompt,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<usize>,
    pub n: Option<u32>,
    pub best_of: Option<u32>,
    /// Alternatives per token to report; 0 reports the chosen token only.
    pub logprobs: Option<usize>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt`: text, token ids, or a batch of one of either.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

fn one_choice(n: Option<u32>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(ApiError::unsupported(&format!("n = {n} (only n = 1 is)"))),
    }
}

pub async fn chat(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_json(body, &state)?;
    let (model, named) = state.target(request.model.as_deref())?;
    let adapters = requested_adapters(named, request.adapter.clone());
    one_choice(request.n)?;
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::unsupported("tool calling"));
    }
    if let Some(format) = &request.response_format {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::unsupported("a response_format other than text"));
        }
    }
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty"));
    }
    let logprobs = request.logprobs.unwrap_or(false);
    let top_logprobs = request.top_logprobs.unwrap_or(0);
    if !logprobs && top_logprobs > 0 {
        return Err(ApiError::bad_request("top_logprobs needs logprobs: true"));
    }
    let messages = request
        .messages
        .into_iter()
        .map(ChatMessage::into_message)
        .collect::<Result<Vec<_>, _>>()?;
    let prompt = prepare(&model, move |m| m.chat_prompt(&messages)).await?;
    let responder = Responder::new(Kind::Chat, &model, logprobs);
    let plan = Plan {
        model,
        prompt,
        max_tokens: request.max_completion_tokens.or(request.max_tokens),
        sampling: request.sampling,
        top_logprobs,
        adapters,
    };
    answer(
        &state,
        plan,
        responder,
        request.stream,
        request.stream_options,
    )
    .await
}

pub async fn completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_json(body, &state)?;
    let (model, named) = state.target(request.model.as_deref())?;
    let adapters = requested_adapters(named, request.adapter.clone());
    one_choice(request.n)?;
    one_choice(request.best_of)?;
    if request.echo.unwrap_or(false) {
        return Err(ApiError::unsupported("echo"));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix"));
    }
    let one = |n: usize| {
        (n == 1)
            .then_some(())
            .ok_or_else(|| ApiError::unsupported(&format!("a batch of {n} prompts (one is)")))
    };
    let prompt = match request.prompt {
        Prompt::Text(text) => prepare(&model, move |m| m.text_prompt(&text)).await?,
        Prompt::Texts(mut texts) => {
            one(texts.len())?;
            let text = texts.remove(0);
            prepare(&model, move |m| m.text_prompt(&text)).await?
        }
        Prompt::Ids(ids) => ids,
        Prompt::IdLists(mut lists) => {
            one(lists.len())?;
            lists.remove(0)
        }
    };
    model.check_ids(&prompt)?;
    let responder = Responder::new(Kind::Text, &model, request.logprobs.is_some());
    let plan = Plan {
        model,
        prompt,
        max_tokens: request.max_tokens,
        sampling: request.sampling,
        top_logprobs: request.logprobs.unwrap_or(0),
        adapters,
    };
    answer(
        &state,
        plan,
        responder,
        request.stream,
        request.stream_options,
    )
    .await
}

/// Submits the request and answers: SSE while `stream`, else one object.
async fn answer(
    state: &AppState,
    plan: Plan,
    responder: Responder,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
) -> Result<Response, ApiError> {
    let model = plan.model.clone();
    let job = plan.job(state, &responder.id)?;
    let mut generation = model.submit(job)?;
    let first = generation.first().await?;
    if stream.unwrap_or(false) {
        let usage_chunk = stream_options.is_some_and(|o| o.include_usage);
        Ok(responder.stream(first, generation, usage_chunk))
    } else {
        let done = generation.collect(first).await?;
        Ok(Json(responder.whole(&done)).into_response())
    }
}

pub async fn models(State(state): State<AppState>) -> Json<Value> {
    // Each model, then each of its adapters as `base+adapter`.
    let data: Vec<Value> = state
        .models
        .iter()
        .flat_map(|m| {
            let adapters = m.info.adapters.iter().map(|a| format!("{}+{a}", m.name));
            std::iter::once(m.name.clone())
                .chain(adapters)
                .map(|id| model_object(m, &id))
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (model, adapters) = state.target(Some(&id))?;
    if let Some(a) = adapters.iter().find(|a| !model.info.adapters.contains(a)) {
        return Err(ApiError::model_not_found(&format!("{}+{a}", model.name)));
    }
    let id = std::iter::once(model.name.clone())
        .chain(adapters)
        .collect::<Vec<_>>()
        .join("+");
    Ok(Json(model_object(&model, &id)))
}

fn model_object(m: &ServedModel, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": m.info.modified,
        "owned_by": "kiln",
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `chat.completion`: messages and deltas.
    Chat,
    /// `text_completion`: text.
    Text,
}

/// Writes one request's response objects.
struct Responder {
    id: String,
    created: u64,
    model: String,
    tokenizer: Arc<Tokenizer>,
    logprobs: bool,
    kind: Kind,
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eog | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(stats: &kiln::GenerationStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.gen_tokens,
        "total_tokens": stats.prompt_tokens + stats.gen_tokens,
    })
}

impl Responder {
    fn new(kind: Kind, model: &ServedModel, logprobs: bool) -> Responder {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        };
        Responder {
            id: new_id(prefix),
            created: unix_now(),
            model: model.name.clone(),
            tokenizer: model.tokenizer().clone(),
            logprobs,
            kind,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": concat!("kiln-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    }

    /// The non-streaming response.
    fn whole(&self, done: &Collected) -> Value {
        let logprobs = self.logprobs_of(&done.tokens, 0);
        let reason = finish_reason(done.reason);
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": done.text },
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
            Kind::Text => json!({
                "index": 0,
                "text": done.text,
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
        };
        let mut body = self.envelope(false, json!([choice]));
        body["usage"] = usage(&done.stats);
        body
    }

    /// The SSE response: a chunk per token (chat opens with the role), the
    /// finish, usage, `[DONE]`. An error after the first token arrives as
    /// a `data: {"error": ...}` line before `[DONE]`.
    fn stream(self, first: Event, generation: Generation, usage_chunk: bool) -> Response {
        let head = match self.kind {
            Kind::Chat => {
                let role = json!({ "role": "assistant", "content": "" });
                vec![self.choice_chunk(role, Value::Null, None).to_string()]
            }
            Kind::Text => Vec::new(),
        };
        let this = Arc::new(self);
        let mut offset = 0;
        let body = stream::once(async { first })
            .chain(generation.into_stream())
            .flat_map(move |event| {
                let frames = this.frames(event, usage_chunk, &mut offset);
                stream::iter(frames)
            });
        let frames = stream::iter(head)
            .chain(body)
            .chain(stream::once(async { "[DONE]".to_string() }));
        Sse::new(frames.map(|data| Ok::<_, Infallible>(SseEvent::default().data(data))))
            .into_response()
    }

    /// The SSE data lines for one event; `offset` counts the characters
    /// sent so far (legacy logprobs' `text_offset`).
    fn frames(&self, event: Event, usage_chunk: bool, offset: &mut usize) -> Vec<String> {
        match event {
            Event::Token(token) => {
                if token.text.is_empty() && !self.logprobs {
                    return Vec::new();
                }
                let logprobs = self.logprobs_of(std::slice::from_ref(&token), *offset);
                *offset += token.text.chars().count();
                let content = match self.kind {
                    Kind::Chat => json!({ "content": token.text }),
                    Kind::Text => Value::String(token.text),
                };
                vec![self.choice_chunk(content, logprobs, None).to_string()]
            }
            Event::Done { reason, stats } => {
                let content = match self.kind {
                    Kind::Chat => json!({}),
                    Kind::Text => Value::String(String::new()),
                };
                let mut last = self.choice_chunk(content, Value::Null, Some(reason));
                if usage_chunk {
                    let mut usage_only = self.envelope(true, json!([]));
                    usage_only["usage"] = usage(&stats);
                    vec![last.to_string(), usage_only.to_string()]
                } else {
                    last["usage"] = usage(&stats);
                    vec![last.to_string()]
                }
            }
            Event::Failed(error) => vec![error.openai_body().to_string()],
        }
    }

    /// One chunk with one choice: a chat delta or a piece of text.
    fn choice_chunk(&self, content: Value, logprobs: Value, reason: Option<FinishReason>) -> Value {
        let mut choice = json!({
            "index": 0,
            "logprobs": logprobs,
            "finish_reason": reason.map(finish_reason),
        });
        match self.kind {
            Kind::Chat => choice["delta"] = content,
            Kind::Text => choice["text"] = content,
        }
        self.envelope(true, json!([choice]))
    }

    /// The `logprobs` of `tokens` in the kind's shape, or null when the
    /// request did not ask; `offset` is where the first token's text starts.
    fn logprobs_of(&self, tokens: &[Token], offset: usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut entry = self.token_entry(t.id, t.logprob);
                        entry["top_logprobs"] = t
                            .top
                            .iter()
                            .map(|&(id, lp)| self.token_entry(id, lp))
                            .collect();
                        entry
                    })
                    .collect();
                json!({ "content": content })
            }
            Kind::Text => {
                let mut at = offset;
                let mut offsets = Vec::new();
                for t in tokens {
                    offsets.push(at);
                    at += t.text.chars().count();
                }
                let top: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let map: serde_json::Map<String, Value> = t
                            .top
                            .iter()
                            .map(|&(id, lp)| (self.piece(id).0, json!(lp)))
                            .collect();
                        Value::Object(map)
                    })
                    .collect();
                json!({
                    "tokens": tokens.iter().map(|t| self.piece(t.id).0).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    fn token_entry(&self, id: u32, logprob: f32) -> Value {
        let (text, bytes) = self.piece(id);
        json!({ "token": text, "logprob": logprob, "bytes": bytes })
    }

    /// A token's text (lossy where it is part of a character) and bytes.
    fn piece(&self, id: u32) -> (String, Vec<u8>) {
        let bytes = self
            .tokenizer
            .piece(
                id,
                DecodeOptions {
                    skip_special: false,
                },
            )
            .map(|b| b.into_owned())
            .unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }
}
