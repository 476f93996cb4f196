//! The OpenAI routes on the shared CPU server: shapes, streams, greedy
//! output against the library's `Generator`, and error answers.

use kiln::loaders::{EncodeOptions, Message};
use kiln::{Device, GenerateOptions, SamplerConfig};
use serde_json::{json, Value};

use crate::common::{self, get, post, post_text, sse_chunks, sse_data};

/// What `Generator` makes of `ids` greedily: the reference the server's
/// temperature-0 output must equal.
fn reference(ids: &[u32], max_tokens: usize) -> (String, usize) {
    let path = common::model_path("reference").expect("checked by the caller");
    let mut model = common::load(&path, &Device::Cpu, 1);
    let options = GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        ..GenerateOptions::default()
    };
    let mut text = String::new();
    let stats = model
        .generate_with(ids, options, |t| text.push_str(&t.text))
        .expect("generates");
    (text, stats.gen_tokens)
}

#[tokio::test]
async fn chat_matches_the_generator_whole_and_streamed() {
    let Some(server) = common::shared("chat_matches_the_generator") else {
        return;
    };
    let path = common::model_path("reference").unwrap();
    let model = common::load(&path, &Device::Cpu, 1);
    let question = "Name a colour.";
    let text = model
        .render_chat(&[Message::new("user", question)], true)
        .unwrap();
    let encode = EncodeOptions {
        add_special: false,
        parse_special: true,
    };
    let ids = model.tokenizer().encode(&text, encode).unwrap();
    drop(model);
    let (want, want_tokens) = reference(&ids, 4);

    let request = json!({
        "messages": [{ "role": "user", "content": question }],
        "max_tokens": 4,
        "temperature": 0,
    });
    let (status, body) = post(&server.url("/v1/chat/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], common::model_id(server).await);
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], want.as_str());
    let reason = if want_tokens == 4 { "length" } else { "stop" };
    assert_eq!(choice["finish_reason"], reason);
    assert_eq!(body["usage"]["prompt_tokens"], ids.len());
    assert_eq!(body["usage"]["completion_tokens"], want_tokens);
    assert_eq!(body["usage"]["total_tokens"], ids.len() + want_tokens);

    let mut request = request;
    request["stream"] = json!(true);
    let (status, body, content_type) =
        post_text(&server.url("/v1/chat/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type.as_deref(), Some("text/event-stream"));
    let chunks = sse_chunks(&body);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"], "one id for every chunk");
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(piece);
        }
    }
    assert_eq!(streamed, want);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], reason);
    assert_eq!(last["usage"]["completion_tokens"], want_tokens);
    assert_eq!(last["usage"]["prompt_tokens"], ids.len());
    let with_usage = chunks.iter().filter(|c| !c["usage"].is_null()).count();
    assert_eq!(with_usage, 1, "usage once, in the last chunk");
}

#[tokio::test]
async fn completions_whole_streamed_and_with_logprobs() {
    let Some(server) = common::shared("completions") else {
        return;
    };
    let prompt = "The capital of France is";
    let path = common::model_path("reference").unwrap();
    let ids = {
        let model = common::load(&path, &Device::Cpu, 1);
        model
            .tokenizer()
            .encode(prompt, EncodeOptions::default())
            .unwrap()
    };
    let (want, want_tokens) = reference(&ids, 3);

    let request = json!({ "prompt": prompt, "max_tokens": 3, "temperature": 0.0, "logprobs": 2 });
    let (status, body) = post(&server.url("/v1/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], want.as_str());
    assert_eq!(body["usage"]["prompt_tokens"], ids.len());
    assert_eq!(body["usage"]["completion_tokens"], want_tokens);
    let logprobs = &choice["logprobs"];
    let chosen = logprobs["token_logprobs"].as_array().unwrap();
    let top = logprobs["top_logprobs"].as_array().unwrap();
    assert_eq!(chosen.len(), want_tokens);
    assert_eq!(logprobs["tokens"].as_array().unwrap().len(), want_tokens);
    assert_eq!(logprobs["text_offset"][0], 0);
    for (lp, alternatives) in chosen.iter().zip(top) {
        let lp = lp.as_f64().unwrap();
        assert!(lp <= 0.0);
        // Greedy: the chosen token is the most likely alternative.
        let best = alternatives
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(lp, best, "{alternatives}");
    }

    let request = json!({
        "prompt": [prompt],
        "max_tokens": 3,
        "temperature": 0,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    let (status, body, _) = post_text(&server.url("/v1/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    let chunks = sse_chunks(&body);
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, want);
    // include_usage: usage in a last chunk of its own, with no choices.
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], ids.len() + want_tokens);
    let finish = &chunks[chunks.len() - 2];
    assert!(finish["usage"].is_null(), "{finish}");
    assert!(finish["choices"][0]["finish_reason"].is_string());

    // Token ids as the prompt give the same completion.
    let request = json!({ "prompt": ids, "max_tokens": 3, "temperature": 0 });
    let (status, body) = post(&server.url("/v1/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], want.as_str());
}

#[tokio::test]
async fn chat_logprobs_list_the_top_alternatives() {
    let Some(server) = common::shared("chat logprobs") else {
        return;
    };
    let request = json!({
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": "Hi" }] }],
        "max_completion_tokens": 2,
        "temperature": 0,
        "logprobs": true,
        "top_logprobs": 3,
    });
    let (status, body) = post(&server.url("/v1/chat/completions"), &request).await;
    assert_eq!(status, 200, "{body}");
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert_eq!(content.len(), 2);
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0]["token"], entry["token"],
            "greedy picks the top token"
        );
        assert_eq!(top[0]["logprob"], entry["logprob"]);
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            entry["token"].as_str().unwrap()
        );
    }
}

#[tokio::test]
async fn models_are_listed() {
    let Some(server) = common::shared("models") else {
        return;
    };
    let (status, text) = get(&server.url("/v1/models")).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["object"], "list");
    let model = &body["data"][0];
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "kiln");
    let id = model["id"].as_str().unwrap();
    let (status, text) = get(&server.url(&format!("/v1/models/{id}"))).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = get(&server.url("/v1/models/nope")).await;
    assert_eq!(status, 404, "{text}");
}

/// Error answers: the status, and OpenAI's `{"error": {...}}` shape.
#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let Some(server) = common::shared("bad requests") else {
        return;
    };
    let chat = server.url("/v1/chat/completions");
    let error = |body: &Value| {
        let e = &body["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{body}");
        e.clone()
    };
    let hi = json!([{ "role": "user", "content": "hi" }]);

    let response = common::client()
        .post(&chat)
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(error(&body)["message"].as_str().unwrap().contains("JSON"));

    let (status, body) = post(&chat, &json!({ "model": "no-such-model", "messages": hi })).await;
    assert_eq!(status, 404);
    assert_eq!(error(&body)["code"], "model_not_found");

    let (status, body) = post(
        &chat,
        &json!({ "model": "../../etc/passwd", "messages": hi }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error(&body)["message"]
        .as_str()
        .unwrap()
        .contains("path separator"));

    let (status, body) = post(&chat, &json!({ "messages": hi, "n": 2 })).await;
    assert_eq!(status, 400);
    error(&body);
    let (status, body) = post(&chat, &json!({ "messages": [] })).await;
    assert_eq!(status, 400);
    error(&body);
    let (status, body) = post(&chat, &json!({ "messages": hi, "temperature": "hot" })).await;
    assert_eq!(status, 400);
    error(&body);
    let (status, body) = post(&chat, &json!({ "messages": hi, "top_p": 7.0 })).await;
    assert_eq!(status, 400, "{body}");

    // Context overflow, by max_tokens and by the prompt alone.
    let (status, body) = post(&chat, &json!({ "messages": hi, "max_tokens": 1000 })).await;
    assert_eq!(status, 400);
    let e = error(&body);
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains(&common::CTX.to_string()),
        "{e}"
    );
    let long = "word ".repeat(2 * common::CTX);
    let (status, body) = post(&server.url("/v1/completions"), &json!({ "prompt": long })).await;
    assert_eq!(status, 400);
    assert_eq!(error(&body)["code"], "context_length_exceeded");
    let (status, body) = post(
        &server.url("/v1/completions"),
        &json!({ "prompt": [1, 2, 999999] }),
    )
    .await;
    assert_eq!(status, 400);
    error(&body);

    let (status, text) = get(&server.url("/v1/nothing-here")).await;
    assert_eq!(status, 404);
    error(&serde_json::from_str(&text).unwrap());
    let (status, text) = get(&chat).await;
    assert_eq!(status, 405);
    error(&serde_json::from_str(&text).unwrap());
}

#[test]
fn sse_helper_rejects_a_stream_without_done() {
    let ok = "data: {}\n\ndata: [DONE]\n\n";
    assert_eq!(sse_data(ok).len(), 2);
    assert!(std::panic::catch_unwind(|| sse_data("data: {}\n\n")).is_err());
}
