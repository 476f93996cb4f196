//! `kiln serve`: OpenAI- and ollama-compatible HTTP APIs over kiln models.
//!
//! [`router`] builds the whole service from a [`Config`] and loaded
//! [`Model`]s (each gets a [`scheduler::Scheduler`]: a worker thread and a
//! bounded queue); [`serve`] runs it on a listener until a shutdown future
//! resolves. Tests start it on `127.0.0.1:0`.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models[/{id}]` (OpenAI; SSE when `stream`), `POST /api/generate`,
//! `POST /api/chat` (NDJSON), `GET /api/tags`, `POST /api/show`,
//! `DELETE /api/delete`, `GET /api/version` (ollama), `GET /`,
//! `GET /health`, `GET /api/health`, `GET /metrics` (Prometheus).

pub mod error;
pub mod metrics;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod request;
pub mod scheduler;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kiln::loaders::hub::Hub;
use kiln::Model;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};

pub use error::ApiError;
pub use metrics::Metrics;
pub use models::ServedModel;
pub use scheduler::SchedulerOptions;

/// The server's settings (`kiln serve`'s flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Requests must send `Authorization: Bearer KEY` (all but `/`,
    /// `/health`, `/api/health` and `/api/version`).
    pub api_key: Option<String>,
    pub scheduler: SchedulerOptions,
    /// Most tokens one request may generate; larger `max_tokens` are cut
    /// to it.
    pub max_tokens: usize,
    /// Largest request body in bytes (413 beyond).
    pub body_limit: usize,
    /// Queue wait plus generation, per request (504 beyond).
    pub request_timeout: Duration,
    /// Origins allowed cross-origin requests; empty (the default) sends no
    /// CORS headers, `*` allows any.
    pub cors_origins: Vec<String>,
    /// Where `/api/delete` deletes from, and the catalog that names models.
    pub hub: Hub,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            api_key: None,
            scheduler: SchedulerOptions::default(),
            max_tokens: 4096,
            body_limit: 4 << 20,
            request_timeout: Duration::from_secs(600),
            cors_origins: Vec::new(),
            hub: Hub::from_env(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no model to serve")]
    NoModels,
    #[error("two models are both named `{0}`")]
    DuplicateName(String),
    #[error("bad --cors origin `{0}`")]
    BadOrigin(String),
    #[error("starting a model worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub models: Arc<[Arc<ServedModel>]>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// The model a request names; the first one when it names none.
    /// Names are checked like file names (no separators, no `..`) before
    /// anything looks at them.
    pub fn model(&self, name: Option<&str>) -> Result<Arc<ServedModel>, ApiError> {
        let name = match name {
            None | Some("") => return Ok(self.models[0].clone()),
            Some(name) => name,
        };
        kiln::loaders::hub::validate_name(name)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.models
            .iter()
            .find(|m| m.matches(name))
            .cloned()
            .ok_or_else(|| ApiError::model_not_found(name))
    }

    /// [`AppState::model`] for generation requests, whose model name may
    /// carry LoRA adapters: `base+adapter[+adapter]` (an empty base is the
    /// default model). Returns the model and the adapter names.
    pub fn target(&self, name: Option<&str>) -> Result<(Arc<ServedModel>, Vec<String>), ApiError> {
        let Some((base, adapters)) = name.and_then(|n| n.split_once('+')) else {
            return Ok((self.model(name)?, Vec::new()));
        };
        let model = self.model(Some(base))?;
        let adapters = adapters.split('+').map(str::to_string).collect();
        Ok((model, adapters))
    }
}

/// The whole service over `models` (the first is the default for requests
/// that name none). Each model moves onto its own worker thread.
pub fn router(config: Config, models: Vec<Model>) -> Result<Router, ServerError> {
    if models.is_empty() {
        return Err(ServerError::NoModels);
    }
    let metrics = Arc::new(Metrics::default());
    let mut served: Vec<Arc<ServedModel>> = Vec::new();
    for model in models {
        let m = ServedModel::start(model, &config.hub, config.scheduler, metrics.clone())?;
        if let Some(other) = served.iter().find(|o| o.matches(&m.name)) {
            return Err(ServerError::DuplicateName(other.name.clone()));
        }
        served.push(Arc::new(m));
    }
    let cors = cors(&config.cors_origins)?;
    let state = AppState {
        config: Arc::new(config),
        models: served.into(),
        metrics,
    };
    Ok(routes(state, cors))
}

fn routes(state: AppState, cors: Option<CorsLayer>) -> Router {
    let limit = state.config.body_limit;
    let router = Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/delete", delete(ollama::delete))
        .route("/api/version", get(ollama::version))
        .route("/api/health", get(health))
        .route("/health", get(health))
        .route("/", get(root))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Innermost first. The key is checked before a handler reads the
        // body; the limit refuses a too-large Content-Length before that,
        // and `count_and_shape` gives its plain-text 413 the JSON shape.
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_and_shape,
        ));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(tracing::Level::INFO))
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .with_state(state)
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| ServerError::BadOrigin(o.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    ))
}

/// Runs `app` on `listener` until `shutdown` resolves, then lets requests
/// in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

/// Paths anyone may reach: liveness checks and the version.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/health" | "/api/health" | "/api/version")
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(key) = state.config.api_key.as_deref() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if request.method() == Method::OPTIONS || is_public(path) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(given) if same(given.as_bytes(), key.as_bytes()) => next.run(request).await,
        _ => {
            let path = path.to_string();
            ApiError::unauthorized().for_path(&path)
        }
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guessed key was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts each request by route and status for `/metrics`, and gives a
/// 413 from the body limit the API's JSON error shape.
async fn count_and_shape(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = request.uri().path().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let mut response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        response = ApiError::too_large(state.config.body_limit).for_path(&path);
    }
    state
        .metrics
        .http(&route, response.status().as_u16(), start.elapsed());
    response
}

async fn root() -> &'static str {
    "kiln is running"
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    let message = format!("no route for {} {}", request.method(), path);
    ApiError::not_found(message).for_path(path)
}

async fn method_not_allowed(request: Request) -> Response {
    let path = request.uri().path();
    let mut error = ApiError::not_found(format!("{} is not allowed on {}", request.method(), path));
    error.status = StatusCode::METHOD_NOT_ALLOWED;
    error.code = Some("method_not_allowed");
    error.for_path(path)
}
