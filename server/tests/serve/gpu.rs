//! One request on the GPU (lavapipe in CI), so the worker thread is known
//! to drive a wgpu device as well as the CPU executor.

use serde_json::json;

use crate::common::{self, post, Server};

#[tokio::test]
async fn serves_on_the_gpu() {
    let Some(device) = kiln::engine::testing::gpu_or_skip("serves_on_the_gpu") else {
        return;
    };
    let Some(server) = Server::with("serves_on_the_gpu", common::config(), &device) else {
        return;
    };
    let request = json!({ "prompt": "Hello", "max_tokens": 2, "temperature": 0 });
    let (status, body) = post(&server.url("/v1/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    assert!(body["choices"][0]["text"].is_string());
}
