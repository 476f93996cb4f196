//! The server's guards, each on a server of its own: the API key, the body
//! limit, the request timeout, a full queue, and clients that leave.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kiln::Device;
use kiln_server::{Config, SchedulerOptions};
use serde_json::{json, Value};

use crate::common::{self, post, wait_for_metric, Server};

#[tokio::test]
async fn api_key_body_limit_and_timeout() {
    let config = Config {
        api_key: Some("sekrit".into()),
        body_limit: 2048,
        request_timeout: Duration::from_secs(1),
        cors_origins: vec!["http://app.example".into()],
        ..common::config()
    };
    let Some(server) = Server::with("limits", config, &Device::Cpu) else {
        return;
    };
    let client = common::client();
    let models = server.url("/v1/models");

    let response = client.get(&models).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let response = client
        .get(&models)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .get(server.url("/api/tags"))
        .bearer_auth("sekri")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "ollama's shape on /api: {body}");
    let response = client
        .get(&models)
        .bearer_auth("sekrit")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client
        .get(&models)
        .header("authorization", "bearer sekrit")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the scheme is case-insensitive");
    for open in ["/", "/health", "/api/health", "/api/version"] {
        let response = client.get(server.url(open)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{open} needs no key");
    }

    // CORS for the configured origin only; preflights need no key.
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/v1/chat/completions"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let allowed = &preflight.headers()["access-control-allow-origin"];
    assert_eq!(allowed, "http://app.example");
    let other = client
        .get(&models)
        .bearer_auth("sekrit")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // Too large by Content-Length: refused before the body is read.
    let big = json!({ "prompt": "x".repeat(4096), "max_tokens": 1 });
    let response = client
        .post(server.url("/v1/completions"))
        .bearer_auth("sekrit")
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");
    // Too large as it streams in (chunked, no length up front).
    let addr = server.base.trim_start_matches("http://").to_string();
    let status = tokio::task::spawn_blocking(move || chunked_post(&addr, 4096))
        .await
        .unwrap();
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");

    // A request that outlives the timeout ends with 504.
    let request = json!({ "prompt": "Once upon a time", "max_tokens": 240, "temperature": 0 });
    let start = Instant::now();
    let response = client
        .post(server.url("/v1/completions"))
        .bearer_auth("sekrit")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "timeout");
}

/// POSTs `n` bytes in one chunk with `Transfer-Encoding: chunked` and the
/// right key; the response's status line.
fn chunked_post(addr: &str, n: usize) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer sekrit\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let body = format!("{{\"prompt\": \"{}\"}}", "x".repeat(n));
    let chunk = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before taking it all.
    let _ = stream.write_all(chunk.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.contains("request_too_large"), "{text}");
    text.lines().next().unwrap_or_default().to_string()
}

/// With one request running and one queued, a third gets 429 and
/// Retry-After; the running one's client leaving frees the worker for the
/// queued one, long before its 240 tokens would have been generated.
#[tokio::test]
async fn full_queue_is_429_and_a_dropped_stream_frees_the_worker() {
    let config = Config {
        scheduler: SchedulerOptions {
            parallel: 1,
            queue: 1,
        },
        ..common::config()
    };
    let Some(server) = Server::with("queue full", config, &Device::Cpu) else {
        return;
    };
    let url = server.url("/v1/completions");
    let long = json!({ "prompt": "Once upon a time", "max_tokens": 240, "stream": true });
    let mut running = common::client()
        .post(&url)
        .json(&long)
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), 200);
    let first = running.chunk().await.unwrap().expect("a first chunk");
    assert!(first.starts_with(b"data: "));

    let queued = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &json!({ "prompt": "Hello", "max_tokens": 1 })).await }
    });
    wait_for_metric(&server, "kiln_requests_waiting 1", Duration::from_secs(20)).await;

    let response = common::client()
        .post(&url)
        .json(&json!({ "prompt": "Hello", "max_tokens": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");

    let left = Instant::now();
    drop(running);
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), queued)
        .await
        .expect("the queued request ends soon after the stream is dropped")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 1);
    eprintln!(
        "queued request done {:?} after the stream was dropped",
        left.elapsed()
    );
    wait_for_metric(
        &server,
        "kiln_generations_total{reason=\"cancelled\"} 1",
        Duration::from_secs(5),
    )
    .await;
    wait_for_metric(
        &server,
        "kiln_requests_rejected_total 1",
        Duration::from_secs(1),
    )
    .await;
}

/// A client waiting for a whole (non-streamed) response that gives up
/// frees the worker too: the handler is dropped with its connection.
#[tokio::test]
async fn a_client_that_gives_up_frees_the_worker() {
    let Some(server) = Server::with("client gives up", common::config(), &Device::Cpu) else {
        return;
    };
    let url = server.url("/v1/completions");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let long = json!({ "prompt": "Once upon a time", "max_tokens": 240 });
    let gave_up = impatient.post(&url).json(&long).send().await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));

    let start = Instant::now();
    let (status, body) = post(&url, &json!({ "prompt": "Hello", "max_tokens": 1 })).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the abandoned generation kept the worker for {:?}",
        start.elapsed()
    );
    wait_for_metric(
        &server,
        "kiln_generations_total{reason=\"cancelled\"} 1",
        Duration::from_secs(5),
    )
    .await;
}
