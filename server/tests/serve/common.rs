//! Starting servers over the real test model on loopback, and reading
//! what they answer.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln::loaders::hub::Hub;
use kiln::{Device, Model, ModelOptions};
use kiln_server::Config;
use serde_json::Value;

/// Small, so a test can overflow it cheaply; big enough for chat prompts.
pub const CTX: usize = 256;

pub fn model_path(test: &str) -> Option<PathBuf> {
    kiln::loaders::paths::test_model(test)
}

/// The defaults, with a hub on an empty folder (nothing to delete).
pub fn config() -> Config {
    Config {
        hub: Hub::new(std::env::temp_dir().join("kiln-server-tests-empty-home")),
        ..Config::default()
    }
}

/// The test model with `slots` cache slots of [`CTX`] positions.
pub fn load(path: &std::path::Path, device: &Device, slots: usize) -> Model {
    let options = ModelOptions {
        ctx: CTX,
        slots,
        ..ModelOptions::default()
    };
    Model::load(path, device, options).expect("the test model loads")
}

/// A server on 127.0.0.1:0 with its own thread and runtime, so it
/// outlives any one test's runtime; dropping it shuts it down.
pub struct Server {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    pub fn start(config: Config, model: Model) -> Server {
        let app = kiln_server::router(config, vec![model]).expect("router builds");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send");
                let shutdown = async {
                    let _ = stopped.await;
                };
                kiln_server::serve(listener, app, shutdown)
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("the server thread starts");
        Server {
            base: format!("http://{addr}"),
            stop: Some(stop),
        }
    }

    /// The test model on `device` behind `config`; `None` (skipped) when
    /// the model is missing.
    pub fn with(test: &str, config: Config, device: &Device) -> Option<Server> {
        let path = model_path(test)?;
        let slots = config.scheduler.parallel;
        Some(Server::start(config, load(&path, device, slots)))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The server most tests share: default settings, the CPU executor.
pub fn shared(test: &str) -> Option<&'static Server> {
    static SHARED: OnceLock<Option<Server>> = OnceLock::new();
    let server = SHARED.get_or_init(|| Server::with("kiln-server tests", config(), &Device::Cpu));
    if server.is_none() {
        eprintln!("{test}: skipped: no test model");
    }
    server.as_ref()
}

/// A client that gives up on a server silent for five minutes, not on a
/// long request: on CI's two cores, with lavapipe busy beside it, a queued
/// request can rightly wait minutes for its headers and a stream longer in
/// all, while a hang still fails instead of stalling the run.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// POSTs JSON; the status and the body as JSON (`Value::Null` if it is not).
pub async fn post(url: &str, body: &Value) -> (u16, Value) {
    let response = client().post(url).json(body).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn get(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// POSTs and returns the status and raw body text (streams).
pub async fn post_text(url: &str, body: &Value) -> (u16, String, Option<String>) {
    let response = client().post(url).json(body).send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, response.text().await.expect("body"), content_type)
}

/// The payloads of an SSE body's `data:` lines, checking that every event
/// is exactly one `data:` line and the body ends with `[DONE]`.
pub fn sse_data(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "SSE body ends with a blank line: {body:?}"
    );
    let events: Vec<&str> = body.trim_end().split("\n\n").collect();
    let data: Vec<String> = events
        .iter()
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is a data line: {event:?}"));
            assert!(!payload.contains('\n'), "one line per event: {event:?}");
            payload.to_string()
        })
        .collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    data
}

/// The JSON chunks of an SSE body, `[DONE]` left out.
pub fn sse_chunks(body: &str) -> Vec<Value> {
    let data = sse_data(body);
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk is JSON ({e}): {d}")))
        .collect()
}

pub fn ndjson(body: &str) -> Vec<Value> {
    assert!(body.ends_with('\n'), "NDJSON ends with a newline: {body:?}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line is JSON ({e}): {l}")))
        .collect()
}

/// Polls `/metrics` until `line` appears.
pub async fn wait_for_metric(server: &Server, line: &str, within: Duration) {
    let start = Instant::now();
    loop {
        let (_, text) = get(&server.url("/metrics")).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(start.elapsed() < within, "no `{line}` in /metrics:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id `/v1/models` gives the (first) model.
pub async fn model_id(server: &Server) -> String {
    let (_, text) = get(&server.url("/v1/models")).await;
    let models: Value = serde_json::from_str(&text).expect("JSON");
    models["data"][0]["id"].as_str().expect("an id").to_string()
}
