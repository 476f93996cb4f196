//! SmolLM2-135M-Instruct (Q4_1) end to end against the exact float64
//! references in `../shared/refs/smollm2-q4_1/` (see its README): last
//! position logits within 0.05 RMS over the whole vocabulary with the same
//! argmax, CPU and GPU executors within 1e-3 RMS of each other, and greedy
//! tokens equal up to the first step where the reference's top two logits
//! are within 0.05 (there any tiny difference may flip the choice).
//!
//! Needs the model (scripts/fetch-model.sh); without it the tests skip,
//! unless `KILN_REQUIRE_MODEL=1`.

use std::path::PathBuf;

use kiln::engine::testing::devices;
use kiln::loaders::EncodeOptions;
use kiln::{Device, GenerateOptions, Model, ModelOptions, SamplerConfig};
use serde_json::Value;

const RMS_VS_EXACT: f64 = 0.05;
const RMS_CPU_VS_GPU: f64 = 1e-3;
const GAP: f64 = 0.05;

fn model_path(test: &str) -> Option<PathBuf> {
    kiln::loaders::paths::test_model(test)
}

fn refs(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/refs/smollm2-q4_1")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn rms(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    (a.iter()
        .zip(b)
        .map(|(&x, y)| (f64::from(x) - y).powi(2))
        .sum::<f64>()
        / a.len() as f64)
        .sqrt()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

fn load(path: &PathBuf, device: &Device) -> Model {
    Model::load(
        path,
        device,
        ModelOptions {
            ctx: 64,
            ..Default::default()
        },
    )
    .expect("model loads")
}

#[test]
fn last_logits_match_exact_reference_on_every_device() {
    let Some(path) = model_path("logits") else {
        return;
    };
    let cases = refs("logits_exact.jsonl");
    let mut per_device: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for device in devices("llama logits") {
        let mut model = load(&path, &device);
        let name = model.device_name();
        let mut all = Vec::new();
        for case in &cases {
            let prompt = case["prompt"].as_str().expect("prompt");
            let tokens = model
                .tokenizer()
                .encode(prompt, EncodeOptions::default())
                .expect("tokenizes");
            let logits = model.logits(&tokens, 0).expect("forward");
            let exact = floats(&case["logits_4dp"]);
            let err = rms(&logits, &exact);
            eprintln!(
                "{name}: {prompt:?}: RMS vs exact {err:.5}, argmax {}",
                argmax(&logits)
            );
            assert!(
                err <= RMS_VS_EXACT,
                "{name}: {prompt:?}: RMS {err} > {RMS_VS_EXACT}"
            );
            assert_eq!(
                argmax(&logits) as u64,
                case["argmax"].as_u64().expect("argmax"),
                "{name}: {prompt:?}"
            );
            all.push(logits);
        }
        per_device.push((name, all));
    }
    let (cpu_name, cpu) = &per_device[0];
    for (name, got) in &per_device[1..] {
        for (a, b) in cpu.iter().zip(got) {
            let b: Vec<f64> = b.iter().map(|&x| f64::from(x)).collect();
            let err = rms(a, &b);
            eprintln!("{cpu_name} vs {name}: RMS {err:.2e}");
            assert!(
                err <= RMS_CPU_VS_GPU,
                "{cpu_name} vs {name}: RMS {err} > {RMS_CPU_VS_GPU}"
            );
        }
    }
}

#[test]
fn greedy_tokens_match_exact_reference_on_every_device() {
    let Some(path) = model_path("greedy") else {
        return;
    };
    let cases = refs("greedy_exact.jsonl");
    for device in devices("llama greedy") {
        let mut model = load(&path, &device);
        let name = model.device_name();
        for case in &cases {
            let prompt = ids(&case["prompt_ids"]);
            let want = ids(&case["gen_ids"]);
            let gaps = floats(&case["top2_gap"]);
            // Steps before the first near-tie must match exactly.
            let sure = gaps.iter().position(|&g| g < GAP).unwrap_or(gaps.len());
            let options = GenerateOptions {
                max_tokens: want.len(),
                sampler: SamplerConfig::greedy(),
                stop: Vec::new(),
                ignore_eos: true,
                ..GenerateOptions::default()
            };
            let got: Vec<u32> = model
                .generate(&prompt, options)
                .expect("generator")
                .map(|t| t.expect("step").id)
                .collect();
            eprintln!("{name}: {:?}: {got:?} (sure up to {sure})", case["prompt"]);
            assert_eq!(got[..sure], want[..sure], "{name}: {:?}", case["prompt"]);
        }
    }
}

#[test]
fn requests_past_the_context_are_errors() {
    let Some(path) = model_path("context") else {
        return;
    };
    let mut model = Model::load(
        &path,
        &Device::Cpu,
        ModelOptions {
            ctx: 8,
            ..Default::default()
        },
    )
    .expect("model loads");
    let options = GenerateOptions {
        max_tokens: 5,
        ..GenerateOptions::default()
    };
    assert!(matches!(
        model.generate(&[1, 2, 3, 4], options),
        Err(kiln::Error::ContextOverflow { .. })
    ));
    assert!(matches!(
        model.logits(&[0; 9], 0),
        Err(kiln::Error::ContextOverflow { .. })
    ));
    assert!(matches!(
        model.logits(&[49_152], 0),
        Err(kiln::Error::BadToken { .. })
    ));
    assert!(matches!(model.logits(&[], 0), Err(kiln::Error::Empty)));
}
