//! A tiny random LLaMA (and Qwen2) written with the GGUF writer: the
//! weight table's errors, and the forward graph's invariants on every
//! device — a prefill then a decode step equals one longer prefill (the KV
//! cache carries the past), all-position logits end with the last-position
//! ones, and the CPU and GPU executors agree.

use kiln_engine::testing::devices;
use kiln_engine::Device;
use kiln_kernels::{quant, DType};
use kiln_loaders::{GgufFile, GgufWriter, Value};

use crate::error::ModelError;
use crate::llama::{Caches, ForwardGraph, ForwardInputs, LlamaConfig, LlamaWeights, LogitsMode};

const D: usize = 64;
const HEADS: usize = 2;
const KV_HEADS: usize = 1;
const HD: usize = 32;
const FF: usize = 96;
const VOCAB: usize = 64;
const LAYERS: usize = 2;
const CTX: usize = 16;

/// Deterministic values in [-scale, scale): no rand dependency needed.
fn values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Which tensor to break, and how.
#[derive(Clone, Copy, PartialEq)]
enum Break {
    None,
    Omit(&'static str),
    Shape(&'static str),
    DType(&'static str, DType),
}

fn tiny(arch: &str, brk: Break) -> GgufFile {
    let w = tiny_writer(arch, brk);
    GgufFile::from_bytes(w.to_bytes().expect("writes"), format!("tiny-{arch}.gguf"))
        .expect("parses")
}

fn tiny_writer(arch: &str, brk: Break) -> GgufWriter {
    let mut w = GgufWriter::new();
    let a = |k: &str| format!("{arch}.{k}");
    w.add("general.architecture", Value::String(arch.into()))
        .expect("key");
    for (k, v) in [
        ("block_count", LAYERS),
        ("embedding_length", D),
        ("feed_forward_length", FF),
        ("attention.head_count", HEADS),
        ("attention.head_count_kv", KV_HEADS),
        ("context_length", 128),
    ] {
        w.add(a(k), Value::U32(v as u32)).expect("key");
    }
    w.add(a("rope.freq_base"), Value::F32(10_000.0))
        .expect("key");
    w.add(a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))
        .expect("key");
    let mut seed = 0;
    let mut add = |name: String, dtype: DType, shape: Vec<usize>, scale: f32, offset: f32| {
        seed += 1;
        let (dtype, shape) = match brk {
            Break::Omit(n) if n == name => return,
            Break::Shape(n) if n == name => (dtype, vec![shape[0] * 2, shape[1]]),
            Break::DType(n, dtype) if n == name => (dtype, shape),
            _ => (dtype, shape),
        };
        let v: Vec<f32> = values(seed, shape.iter().product(), scale)
            .iter()
            .map(|x| x + offset)
            .collect();
        let bytes = match dtype {
            DType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            _ => quant::quantize(dtype, &v).expect("quantizes"),
        };
        w.add_tensor(name, dtype, &shape, bytes).expect("tensor");
    };
    add(
        "token_embd.weight".into(),
        DType::Q8_0,
        vec![VOCAB, D],
        1.0,
        0.0,
    );
    add("output_norm.weight".into(), DType::F32, vec![D], 0.2, 1.0);
    for i in 0..LAYERS {
        let b = |what: &str| format!("blk.{i}.{what}");
        add(b("attn_norm.weight"), DType::F32, vec![D], 0.2, 1.0);
        add(
            b("attn_q.weight"),
            DType::Q4_1,
            vec![HEADS * HD, D],
            0.3,
            0.0,
        );
        add(
            b("attn_k.weight"),
            DType::Q8_0,
            vec![KV_HEADS * HD, D],
            0.3,
            0.0,
        );
        add(
            b("attn_v.weight"),
            DType::F16,
            vec![KV_HEADS * HD, D],
            0.3,
            0.0,
        );
        if arch == "qwen2" {
            add(b("attn_q.bias"), DType::F32, vec![HEADS * HD], 0.5, 0.0);
            add(b("attn_k.bias"), DType::F32, vec![KV_HEADS * HD], 0.5, 0.0);
            add(b("attn_v.bias"), DType::F32, vec![KV_HEADS * HD], 0.5, 0.0);
        }
        add(
            b("attn_output.weight"),
            DType::Q4_0,
            vec![D, HEADS * HD],
            0.3,
            0.0,
        );
        add(b("ffn_norm.weight"), DType::F32, vec![D], 0.2, 1.0);
        add(b("ffn_gate.weight"), DType::Q5_0, vec![FF, D], 0.3, 0.0);
        add(b("ffn_up.weight"), DType::Q5_1, vec![FF, D], 0.3, 0.0);
        add(b("ffn_down.weight"), DType::Q8_0, vec![D, FF], 0.3, 0.0);
    }
    w
}

fn load(file: &GgufFile, device: &Device) -> Result<(LlamaConfig, LlamaWeights), ModelError> {
    let config = LlamaConfig::from_metadata(file.metadata())?;
    let weights = LlamaWeights::load(&file.weights(), &config, device)?;
    Ok((config, weights))
}

/// Logits of `tokens` at `pos`, through a fresh plan on the shared caches.
fn run(
    device: &Device,
    m: &(LlamaConfig, LlamaWeights),
    caches: &Caches,
    tokens: &[u32],
    pos: usize,
    mode: LogitsMode,
) -> Vec<f32> {
    let fwd = ForwardGraph::build(&m.0, &m.1, caches, tokens.len(), mode).expect("builds");
    let mut plan = device.executor().compile(&fwd.graph).expect("compiles");
    let inputs = ForwardInputs::new(tokens, 0, pos).expect("inputs");
    let out = plan.run(&fwd.feeds(&inputs)).expect("runs");
    out[0].as_f32().expect("f32").to_vec()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn weight_table_errors_name_the_tensor() {
    let device = Device::Cpu;
    let err =
        load(&tiny("llama", Break::Omit("blk.1.ffn_up.weight")), &device).expect_err("missing");
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if name == "blk.1.ffn_up.weight"),
        "{err}"
    );
    let err =
        load(&tiny("llama", Break::Shape("blk.0.attn_k.weight")), &device).expect_err("shape");
    assert!(
        matches!(&err, ModelError::TensorShape { name, .. } if name == "blk.0.attn_k.weight"),
        "{err}"
    );
    let q = "blk.0.attn_q.weight";
    let err = load(&tiny("llama", Break::DType(q, DType::Q8_1)), &device).expect_err("dtype");
    assert!(
        matches!(&err, ModelError::TensorDType { name, dtype: DType::Q8_1, .. } if name == q),
        "{err}"
    );
    // F32 matrices stay F32, BF16 ones are stored as F16, F16 norms as F32.
    let norm = "blk.1.ffn_norm.weight";
    for (dtype, stored) in [(DType::F32, DType::F32), (DType::BF16, DType::F16)] {
        let file = tiny("llama", Break::DType(q, dtype));
        let (_, w) = load(&file, &device).expect("converted");
        assert_eq!(w.layers[0].wq.desc().dtype, stored);
        if dtype == DType::F32 {
            // Bit for bit: these values use all 24 bits, F16 holds 11.
            let map = file.weights();
            let got = w.layers[0].wq.download().expect("downloads");
            assert_eq!(&*got.bytes(), map.get(q).expect("wq").bytes());
        }
    }
    let (_, w) = load(&tiny("llama", Break::DType(norm, DType::F16)), &device).expect("converted");
    assert_eq!(w.layers[1].ffn_norm.desc().dtype, DType::F32);
    let err = load(&tiny("qwen2", Break::Omit("blk.0.attn_v.bias")), &device).expect_err("bias");
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if name == "blk.0.attn_v.bias"),
        "{err}"
    );
    let (_, w) = load(&tiny("llama", Break::None), &device).expect("loads");
    assert!(w.tied);
    // A tensor the forward does not use means a feature kiln lacks.
    let mut file = tiny_writer("llama", Break::None);
    file.add_tensor("rope_freqs.weight", DType::F32, &[HD / 2], vec![0; HD * 2])
        .expect("tensor");
    let file =
        GgufFile::from_bytes(file.to_bytes().expect("writes"), "rope_freqs.gguf").expect("parses");
    let err = load(&file, &device).expect_err("unused");
    assert!(
        matches!(&err, ModelError::UnusedTensor { name, .. } if name == "rope_freqs.weight"),
        "{err}"
    );
}

#[test]
fn prefill_then_decode_equals_one_prefill_on_every_device() {
    let tokens: Vec<u32> = vec![3, 17, 60, 1, 42, 9];
    for arch in ["llama", "qwen2"] {
        let file = tiny(arch, Break::None);
        let mut per_device = Vec::new();
        for device in devices("tiny llama forward") {
            let m = load(&file, &device).expect("loads");
            let caches = Caches::new(&m.0, CTX, 1, &device).expect("caches");
            let whole = run(&device, &m, &caches, &tokens, 0, LogitsMode::Last);
            let all = run(&device, &m, &caches, &tokens, 0, LogitsMode::All);
            assert_eq!(all.len(), tokens.len() * VOCAB);
            assert!(
                max_diff(&all[(tokens.len() - 1) * VOCAB..], &whole) < 1e-4,
                "{arch}: All's last row"
            );
            // Prefill 5 tokens, then decode the 6th at position 5.
            run(&device, &m, &caches, &tokens[..5], 0, LogitsMode::Last);
            let step = run(&device, &m, &caches, &tokens[5..], 5, LogitsMode::Last);
            let d = max_diff(&step, &whole);
            assert!(
                d < 1e-3,
                "{arch} on {device:?}: decode after prefill differs by {d}",
                device = device.name()
            );
            assert!(whole.iter().all(|x| x.is_finite()));
            per_device.push((device.name(), whole));
        }
        for (name, logits) in &per_device[1..] {
            let d = max_diff(&per_device[0].1, logits);
            assert!(d < 1e-3, "{arch}: {} vs {name}: {d}", per_device[0].0);
        }
    }
}
