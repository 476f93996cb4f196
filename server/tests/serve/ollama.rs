//! The ollama routes: NDJSON streams, whole answers, model listing and
//! deletion, and the small informational routes.

use std::time::Duration;

use kiln::loaders::hub::Hub;
use kiln::Device;
use serde_json::{json, Value};

use crate::common::{self, get, ndjson, post, post_text, Server};

#[tokio::test]
async fn generate_streams_ndjson_and_answers_whole() {
    let Some(server) = common::shared("ollama generate") else {
        return;
    };
    let url = server.url("/api/generate");
    let request = json!({
        "model": common::model_id(server).await,
        "prompt": "The capital of France is",
        "raw": true,
        "options": { "num_predict": 3, "temperature": 0 },
    });
    let (status, body, content_type) = post_text(&url, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some("application/x-ndjson"));
    let lines = ndjson(&body);
    let (last, pieces) = lines.split_last().unwrap();
    assert!(pieces
        .iter()
        .all(|l| l["done"] == false && l["response"].is_string()));
    assert!(pieces
        .iter()
        .all(|l| l["created_at"].as_str().unwrap().ends_with('Z')));
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 3);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    assert!(last["total_duration"].as_u64().unwrap() > 0);
    let streamed: String = lines
        .iter()
        .filter_map(|l| l["response"].as_str())
        .collect();

    let mut request = request;
    request["stream"] = json!(false);
    let (status, body) = post(&url, &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done"], true);
    assert_eq!(body["response"], streamed.as_str());

    // No prompt: ollama's "load the model", nothing generated.
    let (status, body) = post(&url, &json!({ "model": request["model"] })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["done_reason"], "load");
}

#[tokio::test]
async fn chat_streams_ndjson() {
    let Some(server) = common::shared("ollama chat") else {
        return;
    };
    let request = json!({
        "model": "smollm2",
        "messages": [{ "role": "user", "content": "Hi" }],
        "options": { "num_predict": 2, "temperature": 0, "seed": 7 },
    });
    let (status, body, _) = post_text(&server.url("/api/chat"), &request).await;
    if common::model_id(server).await != "smollm2-135m-instruct:q4_1" {
        // KILN_TEST_MODEL names another model: the alias is not its.
        assert_eq!(status, 404, "{body}");
        return;
    }
    assert_eq!(status, 200, "{body}");
    let lines = ndjson(&body);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert!(last["eval_count"].as_u64().unwrap() >= 1);
    for line in &lines {
        assert_eq!(line["message"]["role"], "assistant");
        assert!(line["message"]["content"].is_string());
    }
}

#[tokio::test]
async fn tags_show_version_health_and_metrics() {
    let Some(server) = common::shared("ollama info routes") else {
        return;
    };
    let id = common::model_id(server).await;
    let (status, text) = get(&server.url("/api/tags")).await;
    assert_eq!(status, 200);
    let tags: Value = serde_json::from_str(&text).unwrap();
    let model = &tags["models"][0];
    assert_eq!(model["name"], id.as_str());
    assert!(model["size"].as_u64().unwrap() > 0);
    assert_eq!(model["details"]["format"], "gguf");
    assert_eq!(model["details"]["family"], "llama");
    let quantization = model["details"]["quantization_level"].as_str().unwrap();
    assert_eq!(quantization, quantization.to_uppercase());

    let (status, body) = post(&server.url("/api/show"), &json!({ "model": id })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_info"]["general.architecture"], "llama");
    assert!(
        body["model_info"]["general.parameter_count"]
            .as_u64()
            .unwrap()
            > 100_000_000
    );
    assert_eq!(body["kiln"]["context_length"], common::CTX);
    let (status, body) = post(&server.url("/api/show"), &json!({ "name": "nope" })).await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "ollama's error shape: {body}");

    let (status, text) = get(&server.url("/api/version")).await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        get(&server.url("/")).await,
        (200, "kiln is running".to_string())
    );
    let (status, text) = get(&server.url("/api/health")).await;
    assert_eq!((status, text.as_str()), (200, "{\"status\":\"ok\"}"));

    let response = common::client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    for name in [
        "kiln_requests_waiting",
        "kiln_requests_running",
        "kiln_prompt_tokens_total",
        "kiln_completion_tokens_total",
        "kiln_http_requests_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} in\n{text}"
        );
    }
    assert!(text.contains("kiln_http_requests_total{route=\"/api/tags\",status=\"200\"}"));
}

#[cfg(unix)]
#[tokio::test]
async fn delete_removes_models_and_refuses_bad_names_and_served_ones() {
    let Some(path) = common::model_path("ollama delete") else {
        return;
    };
    let home = std::env::temp_dir().join(format!("kiln-server-delete-{}", std::process::id()));
    let models = home.join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(models.join("junk.gguf"), b"not a model").unwrap();
    // The served model, seen through the hub's folder: refused, not deleted.
    let served = models.join(path.file_name().unwrap());
    let _ = std::fs::remove_file(&served);
    std::os::unix::fs::symlink(&path, &served).unwrap();
    let config = kiln_server::Config {
        hub: Hub::new(&home),
        ..common::config()
    };
    let server = Server::start(config, common::load(&path, &Device::Cpu, 1));
    let delete = |name: &str| {
        let url = server.url("/api/delete");
        let body = json!({ "model": name });
        async move {
            let response = common::client()
                .delete(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (status, text)
        }
    };
    assert_eq!(delete("junk.gguf").await.0, 200);
    assert!(!models.join("junk.gguf").exists());
    let (status, text) = delete("junk.gguf").await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = delete("../models/x.gguf").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"error\":"), "{text}");
    let name = served.file_name().unwrap().to_str().unwrap().to_string();
    let (status, text) = delete(&name).await;
    assert_eq!(status, 409, "{text}");
    assert!(served.exists() && path.exists());
    drop(server);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let _ = std::fs::remove_dir_all(&home);
}
