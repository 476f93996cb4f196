//! LoRA adapters per request: one server with two adapters loaded serves
//! requests for the base, for each adapter (by the `adapter` field or the
//! model name `base+adapter`, on both API families) and for both at
//! once, all in flight together, each giving the greedy text the library
//! gives for that choice alone.

use kiln::loaders::lora::LoraModule;
use kiln::loaders::EncodeOptions;
use kiln::{AdapterSet, Device, GenerateOptions, SamplerConfig};
use kiln_server::{Config, SchedulerOptions};
use serde_json::{json, Value};

use crate::common::{self, get, post, Server};

const TOKENS: usize = 10;
const PROMPT: &str = "The capital of France is";

/// Greedy text of `PROMPT` with `set` applied, by the library alone.
fn alone(model: &mut kiln::Model, set: &AdapterSet) -> String {
    let ids = model
        .tokenizer()
        .encode(PROMPT, EncodeOptions::default())
        .expect("tokenizes");
    let options = GenerateOptions {
        max_tokens: TOKENS,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
        adapters: Some(set.clone()),
        ..GenerateOptions::default()
    };
    let mut text = String::new();
    model
        .generate_with(&ids, options, |t| text.push_str(&t.text))
        .expect("generates");
    text
}

/// Two adapters strong enough to change the greedy text.
fn with_adapters(mut model: kiln::Model) -> kiln::Model {
    let config = model.config().clone();
    let strong = |name: &str, modules: &[LoraModule], seed| {
        let mut a = kiln::synth::random_adapter(&config, name, 8, modules, seed).expect("adapter");
        for t in &mut a.targets {
            t.scale = 30.0;
        }
        a
    };
    model
        .add_adapter(strong("math", &[LoraModule::Q, LoraModule::V], 1))
        .expect("math");
    model
        .add_adapter(strong("poet", &LoraModule::ALL, 2))
        .expect("poet");
    model
}

#[tokio::test]
async fn requests_choose_adapters_in_one_batch() {
    let test = "lora";
    let Some(path) = common::model_path(test) else {
        return;
    };
    let mut model = with_adapters(common::load(&path, &Device::Cpu, 1));
    let sets = [
        AdapterSet::new(),
        AdapterSet::one("math", 1.0),
        AdapterSet::one("poet", 0.5),
        AdapterSet::one("math", 1.0).with("poet", 0.5),
    ];
    let want: Vec<String> = sets.iter().map(|s| alone(&mut model, s)).collect();
    assert_ne!(want[0], want[1], "the adapter changes nothing");
    assert_ne!(want[0], want[2], "the adapter changes nothing");
    drop(model);

    let config = Config {
        scheduler: SchedulerOptions {
            parallel: 8,
            queue: 8,
        },
        ..common::config()
    };
    let server = Server::start(config, with_adapters(common::load(&path, &Device::Cpu, 8)));
    let id = common::model_id(&server).await;
    let request = |extra: Value| {
        let mut b = json!({
            "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": true,
        });
        b.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        b
    };
    let completions = server.url("/v1/completions");
    // (request, which expected text): several of each in flight at once.
    let requests = [
        (request(json!({})), 0),
        (request(json!({ "adapter": "math" })), 1),
        (request(json!({ "model": format!("{id}+math") })), 1),
        (
            request(json!({ "adapter": [{ "name": "poet", "scale": 0.5 }] })),
            2,
        ),
        (
            request(json!({ "adapter": ["math", { "name": "poet", "scale": 0.5 }] })),
            3,
        ),
        (
            request(
                json!({ "model": format!("{id}+math"), "adapter": [{ "name": "poet", "scale": 0.5 }] }),
            ),
            3,
        ),
        (request(json!({ "model": id.clone() })), 0),
    ];
    let answers =
        futures_util::future::join_all(requests.iter().map(|(b, _)| post(&completions, b))).await;
    for ((sent, want_i), (status, body)) in requests.iter().zip(&answers) {
        assert_eq!(*status, 200, "{sent}: {body}");
        let got = body["choices"][0]["text"].as_str().unwrap_or_default();
        assert_eq!(got, want[*want_i], "{sent}");
    }

    // ollama: the same choice by field.
    let (status, body) = post(
        &server.url("/api/generate"),
        &json!({
            "prompt": PROMPT, "raw": true, "stream": false, "adapter": "math",
            "options": { "temperature": 0, "num_predict": TOKENS },
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["response"].as_str().unwrap_or_default().is_empty(),
        "{body}"
    );

    // The adapters are listed as models of their own.
    let (_, models) = get(&server.url("/v1/models")).await;
    assert!(models.contains(&format!("\"{id}+math\"")), "{models}");
    let (status, _) = get(&server.url(&format!("/v1/models/{id}+poet"))).await;
    assert_eq!(status, 200);

    // Unknown adapters are 400 (by field) or 404 (as a model), and say
    // what is loaded.
    let (status, body) = post(&completions, &request(json!({ "adapter": "nope" }))).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("nope") && msg.contains("math, poet"), "{msg}");
    let (status, body) = post(
        &completions,
        &request(json!({ "model": format!("{id}+nope") })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = get(&server.url(&format!("/v1/models/{id}+nope"))).await;
    assert_eq!(status, 404);
    let (status, body) = post(
        &completions,
        &request(json!({ "adapter": [{ "name": "math", "scale": 1e39 }] })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}
