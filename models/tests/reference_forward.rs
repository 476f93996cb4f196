//! The forward graph against the naive f64 reference forward
//! (`kiln_models::testing::naive`) on tiny random models written here as
//! GGUF: LLaMA with a mix of quant types, Mistral-style with a sliding
//! window shorter than the prompt, and Qwen2 (q/k/v biases, neox rope).
//! Each runs a 20-token prefill (every position's logits), then a 2-token
//! chunk and two single tokens continuing from the KV cache, on the CPU
//! executor and on the GPU; every logit is compared with the reference,
//! and the devices with each other.

use kiln_engine::testing::devices;
use kiln_engine::Device;
use kiln_kernels::DType;
use kiln_loaders::GgufFile;
use kiln_models::testing::{NaiveModel, TinyDtypes, TinySpec};
use kiln_models::{
    Arch, Caches, ForwardGraph, ForwardInputs, LlamaConfig, LlamaWeights, LogitsMode,
};

/// Tokens per forward: a short prompt (the fused matvecs, per-query
/// attention), a chunk past `FUSED_ROWS` (tiled matmuls, flash attention
/// at pos > 0), then single tokens (the decode attention kernel).
const STEPS: [usize; 4] = [20, 70, 1, 1];
const CTX: usize = 96;

/// Error budget relative to the largest reference logit. Both sides use the
/// same weights (the reference dequantizes the file's blocks; F32 matrices
/// stay F32 on the device), so all that differs is f32 arithmetic against
/// f64: dot products of at most 256 terms, a few dozen in series.
/// Measured: at most 1.5e-6 relative, CPU and lavapipe alike; 1e-4 leaves
/// ~70x for other GPUs' reduction orders.
/// A wrong window, rope pairing, bias, head mapping or cache position moves
/// logits by a good fraction of their scale (swapping the rope pairing:
/// ~1.0 relative; ignoring the window: ~0.4, checked below).
const TOLERANCE: f64 = 1e-4;

fn tokens(vocab: usize, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 97 + 13) % vocab as u32)
        .collect()
}

/// Every position's logits from kiln, run in `STEPS` through the cache.
fn kiln_logits(file: &GgufFile, device: &Device, tokens: &[u32]) -> (LlamaConfig, Vec<Vec<f32>>) {
    let config = LlamaConfig::from_metadata(file.metadata()).expect("config");
    let weights = LlamaWeights::load(&file.weights(), &config, device).expect("weights");
    let caches = Caches::new(&config, CTX, 1, device).expect("caches");
    let executor = device.executor();
    let mut rows = Vec::new();
    let mut pos = 0;
    for n in STEPS {
        let fwd =
            ForwardGraph::build(&config, &weights, &caches, n, LogitsMode::All).expect("builds");
        let mut plan = executor.compile(&fwd.graph).expect("compiles");
        let inputs = ForwardInputs::new(&tokens[pos..pos + n], 0, pos).expect("inputs");
        let out = plan.run(&fwd.feeds(&inputs)).expect("runs");
        let logits = out[0].to_f32().expect("f32");
        rows.extend(logits.chunks(weights.vocab_size()).map(<[f32]>::to_vec));
        pos += n;
    }
    (config, rows)
}

fn max_err(got: &[Vec<f32>], want: &[Vec<f64>]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(&g, w)| (f64::from(g) - w).abs())
        })
        .fold(0.0, f64::max)
}

fn scale(logits: &[Vec<f64>]) -> f64 {
    logits.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Checks kiln against the reference on every device and the devices
/// against each other; returns the reference, its input and its logits.
fn check(name: &str, spec: &TinySpec) -> (NaiveModel, Vec<u32>, Vec<Vec<f64>>) {
    let bytes = spec.gguf().expect("writes");
    let file = GgufFile::from_bytes(bytes, format!("{name}.gguf")).expect("parses");
    let naive = NaiveModel::from_gguf(&file.weights(), spec.naive_config()).expect("reference");
    let tokens = tokens(spec.vocab, STEPS.iter().sum());
    let want = naive.forward(&tokens);
    let scale = scale(&want);
    assert!(scale > 1.0, "{name}: degenerate logits (max {scale})");
    let tol = TOLERANCE * scale;
    let mut per_device: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for device in devices(name) {
        let (config, got) = kiln_logits(&file, &device, &tokens);
        assert_eq!(config.sliding_window, spec.sliding_window, "{name}");
        let err = max_err(&got, &want);
        eprintln!(
            "{name} on {}: max |kiln - reference| = {err:.2e} (logits up to {scale:.2}, budget {tol:.2e})",
            device.name()
        );
        assert!(err <= tol, "{name} on {}: {err} > {tol}", device.name());
        per_device.push((device.name(), got));
    }
    for (dev, got) in &per_device[1..] {
        let (cpu, ref_rows) = &per_device[0];
        let as_f64: Vec<Vec<f64>> = ref_rows
            .iter()
            .map(|r| r.iter().map(|&x| f64::from(x)).collect())
            .collect();
        let err = max_err(got, &as_f64);
        assert!(err <= tol, "{name}: {cpu} vs {dev}: {err} > {tol}");
    }
    (naive, tokens, want)
}

#[test]
fn llama_matches_the_reference() {
    let spec = TinySpec {
        n_layer: 3,
        dtypes: TinyDtypes {
            token_embd: DType::Q8_0,
            attn_q: DType::Q4_1,
            attn_k: DType::Q8_0,
            attn_v: DType::F32,
            attn_output: DType::F16,
            ffn_gate: DType::Q4_1,
            ffn_up: DType::Q8_0,
            ffn_down: DType::Q4K,
            output: DType::Q8_0,
        },
        ..TinySpec::new(Arch::Llama)
    };
    check("llama", &spec);
}

#[test]
fn mistral_sliding_window_matches_the_reference() {
    let window = 6;
    let spec = TinySpec {
        sliding_window: window as u32,
        tied: true,
        seed: 2,
        dtypes: TinyDtypes {
            token_embd: DType::Q8_0,
            ffn_down: DType::Q4K,
            ..TinyDtypes::all(DType::F16)
        },
        ..TinySpec::new(Arch::Llama)
    };
    assert!(window < STEPS[0]);
    let (mut naive, tokens, windowed) = check("mistral", &spec);
    // The window must matter, or this test would pass with it ignored:
    // positions it cuts differ by far more than the budget, the others not
    // at all.
    naive.config.window = None;
    let full = naive.forward(&tokens);
    let diff = |range: std::ops::Range<usize>| {
        let w: Vec<Vec<f32>> = windowed[range.clone()]
            .iter()
            .map(|r| r.iter().map(|&x| x as f32).collect())
            .collect();
        max_err(&w, &full[range])
    };
    let tol = TOLERANCE * scale(&windowed);
    assert!(
        diff(0..window) < 1e-6,
        "the window cuts nothing before {window}"
    );
    let cut = diff(window..tokens.len());
    eprintln!("mistral: the window moves logits by up to {cut:.2} (budget {tol:.2e})");
    assert!(
        cut > 100.0 * tol,
        "the window changes logits by only {cut} (budget {tol})"
    );
}

#[test]
fn qwen2_matches_the_reference() {
    let spec = TinySpec {
        seed: 3,
        dtypes: TinyDtypes {
            token_embd: DType::F16,
            attn_q: DType::Q8_0,
            attn_k: DType::F16,
            attn_v: DType::Q4_1,
            attn_output: DType::Q8_0,
            ffn_gate: DType::F16,
            ffn_up: DType::Q4_1,
            ffn_down: DType::Q4K,
            output: DType::F32,
        },
        ..TinySpec::new(Arch::Qwen2)
    };
    check("qwen2", &spec);
}
