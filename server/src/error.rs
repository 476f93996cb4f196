//! Errors as HTTP responses: OpenAI's `{"error": {"message", "type",
//! "code", "param"}}` on the OpenAI routes, ollama's `{"error": "..."}` on
//! `/api/*`, each with the status a client can act on.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// One failed request: what to tell the client and with which status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// OpenAI's `code`, machine-readable.
    pub code: Option<&'static str>,
    pub message: String,
    /// Seconds, for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

const INVALID: &str = "invalid_request_error";

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Self {
        ApiError {
            status,
            kind,
            code,
            message,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, INVALID, None, message.into())
    }

    /// A request that asks for something this server does not do yet.
    pub fn unsupported(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            INVALID,
            Some("unsupported"),
            format!("{what} is not supported by kiln"),
        )
    }

    pub fn context_overflow(prompt: usize, max_tokens: usize, ctx: usize) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            INVALID,
            Some("context_length_exceeded"),
            format!(
                "this model's context holds {ctx} tokens, but {} were requested \
                 ({prompt} in the prompt, up to {max_tokens} to generate); \
                 shorten the prompt, lower max_tokens, or restart the server with a larger --ctx",
                prompt.saturating_add(max_tokens)
            ),
        )
    }

    pub fn model_not_found(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            INVALID,
            Some("model_not_found"),
            format!("model `{name}` is not served here (GET /v1/models lists the ones that are)"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            INVALID,
            Some("not_found"),
            message.into(),
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
            "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
        )
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            INVALID,
            Some("request_too_large"),
            format!("the request body is larger than this server's limit of {limit} bytes"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            INVALID,
            Some("conflict"),
            message.into(),
        )
    }

    /// The queue is full: come back in `retry_after` seconds.
    pub fn busy(retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                Some("queue_full"),
                "the server's request queue is full; retry later".into(),
            )
        }
    }

    pub fn timeout(after: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("timeout"),
            format!("the request did not finish within the server's timeout of {after:?}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            message.into(),
        )
    }

    /// The OpenAI body: `{"error": {...}}`.
    pub fn openai_body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": null,
            }
        })
    }

    /// The same error in ollama's shape, for `/api/*` routes.
    pub fn ollama(self) -> OllamaError {
        OllamaError(self)
    }

    /// The shape that suits the route: ollama's under `/api/`, OpenAI's
    /// elsewhere (middleware and fallbacks that serve both).
    pub fn for_path(self, path: &str) -> Response {
        if path.starts_with("/api/") {
            self.ollama().into_response()
        } else {
            self.into_response()
        }
    }

    fn respond(&self, body: serde_json::Value) -> Response {
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(self.openai_body())
    }
}

/// An [`ApiError`] rendered as ollama renders errors: `{"error": "..."}`.
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> OllamaError {
        OllamaError(e)
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        self.0.respond(json!({ "error": self.0.message }))
    }
}

impl From<kiln::Error> for ApiError {
    /// Errors a request can cause are 400s; the rest are the engine's.
    fn from(e: kiln::Error) -> ApiError {
        use kiln::Error as E;
        match e {
            E::ContextOverflow { .. }
            | E::Sampler(_)
            | E::Empty
            | E::BadToken { .. }
            | E::Tokenizer(_)
            | E::Chat(_)
            | E::NoChatTemplate(_) => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<kiln::loaders::HubError> for ApiError {
    fn from(e: kiln::loaders::HubError) -> ApiError {
        use kiln::loaders::HubError as H;
        match e {
            H::BadName { .. } => ApiError::bad_request(e.to_string()),
            H::UnknownModel { name, .. } => {
                ApiError::not_found(format!("model `{name}` not found"))
            }
            H::NotInstalled { .. } => ApiError::not_found(e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}
