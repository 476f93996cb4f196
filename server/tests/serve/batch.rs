//! Continuous batching: requests decoded together in one forward give the
//! same greedy tokens as alone, and a load of 64 streaming clients, a
//! quarter of them leaving midway, ends with every surviving stream whole
//! and the server still answering.

use std::time::{Duration, Instant};

use kiln::loaders::EncodeOptions;
use kiln::{Device, GenerateOptions, SamplerConfig};
use kiln_server::{Config, SchedulerOptions};
use serde_json::{json, Value};

use crate::common::{self, get, post, sse_chunks, Server};

/// Greedy text of `prompt` by the library's `Generator` on one sequence:
/// what `kiln run --temp 0` prints.
fn alone(model: &mut kiln::Model, prompt: &str, max_tokens: usize) -> String {
    let ids = model
        .tokenizer()
        .encode(prompt, EncodeOptions::default())
        .expect("tokenizes");
    let options = GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let mut text = String::new();
    model
        .generate_with(&ids, options, |t| text.push_str(&t.text))
        .expect("generates");
    text
}

/// A metric's value in `/metrics` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colors are",
    "My favourite food is",
    "In 1969, the first",
    "Water boils at",
    "The quick brown fox",
];

/// `prompts` alone and then together in one server of as many slots give
/// the same greedy text, and decode steps carried several rows at once.
async fn greedy_in_a_batch(device: Device, test: &str, prompts: &[&str], tokens: usize) {
    let Some(path) = common::model_path(test) else {
        return;
    };
    let mut model = common::load(&path, &device, 1);
    let want: Vec<String> = prompts
        .iter()
        .map(|p| alone(&mut model, p, tokens))
        .collect();
    drop(model);

    let config = Config {
        scheduler: SchedulerOptions {
            parallel: prompts.len(),
            queue: prompts.len(),
        },
        ..common::config()
    };
    let server = Server::start(config, common::load(&path, &device, prompts.len()));
    let url = server.url("/v1/completions");
    let requests = prompts.iter().map(|prompt| {
        let body = json!({
            "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": true,
        });
        let url = url.clone();
        async move { post(&url, &body).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for ((prompt, want), (status, body)) in prompts.iter().zip(&want).zip(&answers) {
        assert_eq!(*status, 200, "{body}");
        let got = body["choices"][0]["text"].as_str().unwrap_or_default();
        assert_eq!(got, want, "{test}: {prompt:?} in a batch");
    }
    // They ran together: decode steps carried several rows on average.
    let (_, text) = get(&server.url("/metrics")).await;
    let steps = metric(&text, "kiln_decode_steps_total");
    let rows = metric(&text, "kiln_decode_rows_total");
    eprintln!("{test}: {rows} rows in {steps} decode steps");
    assert!(
        steps > 0.0 && rows / steps > 2.0,
        "{test}: no batching\n{text}"
    );
}

#[tokio::test]
async fn greedy_is_the_same_alone_and_in_a_batch_of_8() {
    greedy_in_a_batch(Device::Cpu, "batch of 8 (cpu)", &PROMPTS, 12).await;
}

/// Fewer rows and tokens than on the CPU: a decode step takes about a
/// second on lavapipe in CI, and the batched kernels are the same code for
/// every row count (the op tests run the fused matvecs on 1 to 11 rows).
#[tokio::test]
async fn greedy_is_the_same_alone_and_in_a_batch_of_4_on_the_gpu() {
    let test = "batch of 4 (gpu)";
    let Some(device) = kiln::engine::testing::gpu_or_skip(test) else {
        return;
    };
    greedy_in_a_batch(device, test, &PROMPTS[..4], 6).await;
}

/// What one client of the load test saw.
enum Seen {
    /// A whole stream: its text and the usage of its last chunk.
    Whole(String, Value),
    /// It hung up midway.
    Left,
}

async fn client(url: String, i: usize, tokens: usize) -> Seen {
    // Leavers ask for far more than they wait for, so they surely leave
    // midway.
    let leaves = i % 4 == 3;
    let tokens = if leaves { 200 } else { tokens };
    let body = json!({
        "prompt": format!("Story number {i}:"), "max_tokens": tokens, "stream": true,
        "stream_options": { "include_usage": true }, "temperature": 0.7, "seed": i,
        "ignore_eos": true,
    });
    let mut response = common::client()
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "client {i}");
    let mut raw = Vec::new();
    let mut chunks = 0;
    while let Some(bytes) = response.chunk().await.expect("stream") {
        raw.extend_from_slice(&bytes);
        chunks += 1;
        if leaves && chunks >= 3 {
            return Seen::Left;
        }
    }
    let text = String::from_utf8(raw).expect("UTF-8");
    let events = sse_chunks(&text);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    let usage = events.last().expect("a chunk")["usage"].clone();
    Seen::Whole(content, usage)
}

/// 64 streaming clients at once against 16 slots, every fourth hanging up
/// after its first chunks: the others get whole, well-formed streams, the
/// leavers' slots go to queued requests, nothing panics, and the server
/// answers afterwards.
#[tokio::test]
async fn sixty_four_streaming_clients_some_leaving() {
    let test = "64 clients";
    let Some(path) = common::model_path(test) else {
        return;
    };
    const CLIENTS: usize = 64;
    const TOKENS: usize = 4;
    let config = Config {
        scheduler: SchedulerOptions {
            parallel: 16,
            queue: CLIENTS,
        },
        ..common::config()
    };
    let server = Server::start(config, common::load(&path, &Device::Cpu, 16));
    let url = server.url("/v1/completions");
    let start = Instant::now();
    let clients = (0..CLIENTS).map(|i| tokio::spawn(client(url.clone(), i, TOKENS)));
    let seen = futures_util::future::join_all(clients).await;
    let (mut whole, mut left) = (0, 0);
    for (i, seen) in seen.into_iter().enumerate() {
        match seen.unwrap_or_else(|e| panic!("client {i} failed: {e}")) {
            Seen::Whole(text, usage) => {
                assert_eq!(usage["completion_tokens"], TOKENS, "client {i}: {usage}");
                assert!(!text.is_empty(), "client {i}");
                whole += 1;
            }
            Seen::Left => left += 1,
        }
    }
    assert_eq!((whole, left), (48, 16));
    eprintln!("{test}: {whole} whole, {left} left, {:?}", start.elapsed());

    // The leavers were cancelled, everything else finished; the slots are
    // free again and the server answers.
    common::wait_for_metric(&server, "kiln_requests_running 0", Duration::from_secs(60)).await;
    let (_, text) = get(&server.url("/metrics")).await;
    let ended = |reason: &str| {
        metric(
            &text,
            &format!("kiln_generations_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(ended("length"), 48.0, "{text}");
    assert_eq!(ended("cancelled"), 16.0, "{text}");
    assert_eq!(ended("error"), 0.0, "{text}");
    let (status, body) = post(&url, &json!({ "prompt": "Hello", "max_tokens": 2 })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}
