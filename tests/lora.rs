//! LoRA adapters applied unmerged, against the same adapters merged into
//! the weights: a tiny F32 model written by the test, random adapters of
//! ranks 4 to 64 over every module, written as PEFT directories and as
//! llama.cpp GGUFs. On the CPU executor and the GPU:
//!
//! - unmerged logits equal those of a model whose weights are
//!   `W + s·B·A` (prompts through the fused matvecs and through the tiled
//!   products, then decode steps), at any multiplier;
//! - two adapters at once equal both merged;
//! - removing an adapter gives the base logits bit for bit;
//! - a PEFT adapter (HF row order) and its llama.cpp GGUF (q/k rows
//!   permuted for normal rope) agree, on a GGUF base and on an HF one;
//! - rows of one batched step may use different adapters;
//! - bad adapters and requests are typed errors.

use std::path::{Path, PathBuf};

use kiln::kernels::{CpuTensor, DType};
use kiln::loaders::lora::{
    write_gguf, write_peft, LoraAdapter, LoraErrorKind, LoraFormat, LoraModule, LoraTarget,
};
use kiln::models::testing::{permute_for_normal_rope, TinyDtypes, TinySpec, TinyTensor};
use kiln::models::Arch;
use kiln::{AdapterSet, BatchRow, Device, Error, Model, ModelOptions};

const CTX: usize = 128;
/// Relative to the largest base logit: both sides sum in f32, in
/// different orders.
const TOLERANCE: f32 = 2e-4;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("kiln-lora-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn spec(arch: Arch) -> TinySpec {
    TinySpec {
        dtypes: TinyDtypes::all(DType::F32),
        ..TinySpec::new(arch)
    }
}

/// Deterministic values in [-1, 1).
fn noise(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn out_in(spec: &TinySpec, module: LoraModule) -> (usize, usize) {
    let (d, ff) = (spec.n_embd, spec.n_ff);
    let (q, kv) = (
        spec.n_head * spec.head_dim(),
        spec.n_head_kv * spec.head_dim(),
    );
    match module {
        LoraModule::Q => (q, d),
        LoraModule::K | LoraModule::V => (kv, d),
        LoraModule::O => (d, q),
        LoraModule::Gate | LoraModule::Up => (ff, d),
        LoraModule::Down => (d, ff),
    }
}

/// A random adapter of `rank` (HF row order) over `modules` of every
/// layer; alpha = 2·rank, so each scale is 2. Sized so the update moves
/// the logits well past the tolerance.
fn adapter(
    spec: &TinySpec,
    name: &str,
    rank: usize,
    modules: &[LoraModule],
    seed: u64,
) -> LoraAdapter {
    let mut targets = Vec::new();
    for layer in 0..spec.n_layer {
        for (j, &module) in modules.iter().enumerate() {
            let (out, n_in) = out_in(spec, module);
            let s = seed * 1000 + layer as u64 * 10 + j as u64;
            let amp_a = 1.0 / (n_in as f32).sqrt();
            let amp_b = 0.5 / (rank as f32).sqrt();
            let a: Vec<f32> = noise(s, rank * n_in).iter().map(|v| v * amp_a).collect();
            let b: Vec<f32> = noise(s + 7, out * rank).iter().map(|v| v * amp_b).collect();
            let a = CpuTensor::from_f32([rank, n_in], a).expect("a");
            let b = CpuTensor::from_f32([out, rank], b).expect("b");
            targets.push(LoraTarget::new(layer, module, a, b, 2.0).expect("target"));
        }
    }
    LoraAdapter::new(name, LoraFormat::Peft, 2.0 * rank as f32, targets).expect("adapter")
}

/// The same adapter as llama.cpp's `convert_lora_to_gguf.py` writes it for
/// a LLaMA: q and k `lora_b` rows permuted like the base's.
fn as_gguf(spec: &TinySpec, adapter: &LoraAdapter) -> LoraAdapter {
    let mut g = adapter.clone();
    g.format = LoraFormat::Gguf;
    for t in &mut g.targets {
        let heads = match t.module {
            LoraModule::Q => spec.n_head,
            LoraModule::K => spec.n_head_kv,
            _ => continue,
        };
        let b = t.b.as_f32().expect("f32").to_vec();
        let permuted = permute_for_normal_rope(&b, heads, t.rank());
        t.b = CpuTensor::from_f32(t.b.shape().to_vec(), permuted).expect("b");
    }
    g
}

/// The tiny model's GGUF with `Σ mult·scale·B·A` added to its weights (in
/// HF order, before the writer permutes q and k).
fn merged(spec: &TinySpec, dir: &Path, name: &str, adapters: &[(&LoraAdapter, f32)]) -> PathBuf {
    let bytes = spec
        .gguf_with(|tensors: &mut Vec<TinyTensor>, _| {
            for (adapter, mult) in adapters {
                for t in &adapter.targets {
                    let delta = t.delta_weight().expect("delta");
                    let delta = delta.as_f32().expect("f32");
                    let w_name = t.module.gguf_weight(t.layer);
                    let w = tensors
                        .iter_mut()
                        .find(|w| w.name == w_name)
                        .expect("base weight");
                    for (v, d) in w.values.iter_mut().zip(delta) {
                        *v += mult * d;
                    }
                }
            }
        })
        .expect("writes");
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn base_gguf(spec: &TinySpec, dir: &Path) -> PathBuf {
    let path = dir.join("base.gguf");
    std::fs::write(&path, spec.gguf().expect("writes")).expect("write");
    path
}

fn load(path: &Path, device: &Device, slots: usize) -> Model {
    Model::load(
        path,
        device,
        ModelOptions {
            ctx: CTX,
            slots,
            ..Default::default()
        },
    )
    .expect("loads")
}

/// A prompt, its last-position logits, then `steps` decode steps' logits
/// (feeding back fixed tokens): every forward the generator runs.
fn trace(model: &mut Model, prompt_len: usize, steps: usize) -> Vec<Vec<f32>> {
    let vocab = model.vocab_size() as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32)
        .map(|i| (i * 37 + 5) % vocab)
        .collect();
    let mut out = vec![model.logits(&prompt, 0).expect("prompt")];
    for s in 0..steps {
        let token = (s as u32 * 11 + 3) % vocab;
        out.push(model.logits(&[token], prompt_len + s).expect("step"));
    }
    out
}

fn max_abs(v: &[Vec<f32>]) -> f32 {
    v.iter().flatten().fold(0.0, |m, x| m.max(x.abs()))
}

fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    let tol = TOLERANCE * max_abs(want);
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        let err = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err <= tol, "{what}, forward {step}: {err} > {tol}");
    }
}

/// How far apart two traces are, relative to `want`'s scale.
fn distance(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    let err = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    err / max_abs(want)
}

/// Prompt lengths through the fused matvecs (5) and the tiled products
/// (70: past `FUSED_ROWS`).
const PROMPTS: [usize; 2] = [5, 70];

fn unmerged_equals_merged_on(device: &Device, test: &str) {
    let dir = temp_dir(test);
    let spec = spec(Arch::Llama);
    let base = base_gguf(&spec, &dir);
    for (rank, modules) in [
        (4, &LoraModule::ALL[..]),
        (16, &[LoraModule::Q, LoraModule::V][..]),
        (64, &LoraModule::ALL[..]),
    ] {
        let a = adapter(&spec, "a", rank, modules, rank as u64);
        let peft = dir.join(format!("peft-r{rank}"));
        write_peft(&peft, &a, DType::F32).expect("writes peft");
        let mut model = load(&base, device, 1);
        model.load_adapter(&peft, Some("a")).expect("loads adapter");
        for mult in [1.0, 0.5] {
            let want_path = merged(&spec, &dir, &format!("m-{rank}-{mult}.gguf"), &[(&a, mult)]);
            let mut want_model = load(&want_path, device, 1);
            model
                .set_adapters(&AdapterSet::one("a", mult))
                .expect("applies");
            for len in PROMPTS {
                let want = trace(&mut want_model, len, 3);
                let got = trace(&mut model, len, 3);
                let what = format!("{test}: rank {rank}, x{mult}, prompt {len}");
                assert_close(&what, &got, &want);
            }
        }
        // The update is not negligible: without it the logits are far off.
        model.set_adapters(&AdapterSet::new()).expect("removes");
        let base_trace = trace(&mut model, 5, 1);
        model.apply_adapter("a", 1.0).expect("applies");
        let adapted = trace(&mut model, 5, 1);
        let d = distance(&adapted, &base_trace);
        assert!(
            d > 50.0 * TOLERANCE,
            "{test}: rank {rank} moves logits by only {d}"
        );
    }
}

#[test]
fn unmerged_equals_merged_on_the_cpu() {
    unmerged_equals_merged_on(&Device::Cpu, "merged-cpu");
}

#[test]
fn unmerged_equals_merged_on_the_gpu() {
    let test = "merged-gpu";
    let Some(device) = kiln::engine::testing::gpu_or_skip(test) else {
        return;
    };
    unmerged_equals_merged_on(&device, test);
}

fn removing_and_summing_on(device: &Device, test: &str) {
    let dir = temp_dir(test);
    let spec = spec(Arch::Llama);
    let base = base_gguf(&spec, &dir);
    let a = adapter(&spec, "a", 8, &LoraModule::ALL, 1);
    let b = adapter(
        &spec,
        "b",
        16,
        &[LoraModule::Q, LoraModule::K, LoraModule::Down],
        2,
    );
    let mut model = load(&base, device, 1);
    let base_traces: Vec<_> = PROMPTS.iter().map(|&l| trace(&mut model, l, 2)).collect();
    model.add_adapter(a.clone()).expect("a");
    model.add_adapter(b.clone()).expect("b");
    // Loaded but not applied: the base, bit for bit.
    for (&len, want) in PROMPTS.iter().zip(&base_traces) {
        assert_eq!(
            &trace(&mut model, len, 2),
            want,
            "{test}: loaded, unapplied"
        );
    }
    model.apply_adapter("a", 1.0).expect("a");
    model.apply_adapter("b", 0.75).expect("b");
    let both = merged(&spec, &dir, "both.gguf", &[(&a, 1.0), (&b, 0.75)]);
    let mut want_model = load(&both, device, 1);
    for len in PROMPTS {
        let want = trace(&mut want_model, len, 2);
        assert_close(
            &format!("{test}: a + b, prompt {len}"),
            &trace(&mut model, len, 2),
            &want,
        );
    }
    // Swap b for a: only a, at b's multiplier, is left beside... a itself
    // is already applied, so swap b out for nothing by removing it.
    assert!(model.remove_adapter("b").expect("removes"));
    let only_a = merged(&spec, &dir, "a.gguf", &[(&a, 1.0)]);
    let mut want_model = load(&only_a, device, 1);
    for len in PROMPTS {
        let want = trace(&mut want_model, len, 2);
        assert_close(
            &format!("{test}: a alone, prompt {len}"),
            &trace(&mut model, len, 2),
            &want,
        );
    }
    // Swapping a for b keeps a's multiplier.
    model.swap_adapter("a", "b").expect("swaps");
    assert_eq!(model.active_adapters(), AdapterSet::one("b", 1.0));
    let only_b = merged(&spec, &dir, "b.gguf", &[(&b, 1.0)]);
    let mut want_model = load(&only_b, device, 1);
    let want = trace(&mut want_model, 5, 2);
    assert_close(
        &format!("{test}: swapped to b"),
        &trace(&mut model, 5, 2),
        &want,
    );
    // Removing every adapter restores the base exactly, and so does
    // unloading them.
    assert!(model.remove_adapter("b").expect("removes"));
    for (&len, want) in PROMPTS.iter().zip(&base_traces) {
        assert_eq!(&trace(&mut model, len, 2), want, "{test}: removed");
    }
    model.unload_adapter("a").expect("unloads");
    model.unload_adapter("b").expect("unloads");
    assert!(model.adapters().is_empty());
    assert_eq!(
        &trace(&mut model, 5, 2),
        &base_traces[0],
        "{test}: unloaded"
    );
}

#[test]
fn removing_restores_the_base_and_two_adapters_sum_on_the_cpu() {
    removing_and_summing_on(&Device::Cpu, "sum-cpu");
}

#[test]
fn removing_restores_the_base_and_two_adapters_sum_on_the_gpu() {
    let test = "sum-gpu";
    let Some(device) = kiln::engine::testing::gpu_or_skip(test) else {
        return;
    };
    removing_and_summing_on(&device, test);
}

/// A PEFT directory and the GGUF llama.cpp would convert it to give the
/// same logits, on a GGUF base (normal rope, q/k permuted) and on an HF
/// checkpoint of the same weights (neox rope, HF order).
#[test]
fn peft_and_gguf_adapters_agree_on_gguf_and_hf_bases() {
    let dir = temp_dir("formats");
    let spec = spec(Arch::Llama);
    let a = adapter(&spec, "a", 8, &LoraModule::ALL, 3);
    let peft = dir.join("peft");
    write_peft(&peft, &a, DType::F32).expect("peft");
    let gguf = dir.join("a.gguf");
    write_gguf(&gguf, &as_gguf(&spec, &a), DType::F32).expect("gguf");
    let hf = dir.join("hf");
    spec.write_hf(&hf, DType::F32, 1).expect("hf");
    let want_path = merged(&spec, &dir, "merged.gguf", &[(&a, 1.0)]);
    let want = trace(&mut load(&want_path, &Device::Cpu, 1), 5, 2);
    for base in [base_gguf(&spec, &dir), hf] {
        for adapter in [&peft, &gguf] {
            let mut model = load(&base, &Device::Cpu, 1);
            model.load_adapter(adapter, Some("a")).expect("loads");
            model.apply_adapter("a", 1.0).expect("applies");
            let what = format!("{} on {}", adapter.display(), base.display());
            assert_close(&what, &trace(&mut model, 5, 2), &want);
        }
    }
}

/// Qwen2 (neox rope, no permutation anywhere, q/k/v biases).
#[test]
fn qwen2_adapters_equal_merged() {
    let dir = temp_dir("qwen2");
    let spec = spec(Arch::Qwen2);
    let mut a = adapter(&spec, "a", 8, &LoraModule::ALL, 4);
    a.architecture = Some("qwen2".into());
    let gguf = dir.join("a.gguf");
    write_gguf(&gguf, &a, DType::F32).expect("gguf");
    let want_path = merged(&spec, &dir, "merged.gguf", &[(&a, 1.0)]);
    let want = trace(&mut load(&want_path, &Device::Cpu, 1), 5, 2);
    let mut model = load(&base_gguf(&spec, &dir), &Device::Cpu, 1);
    model.load_adapter(&gguf, Some("a")).expect("loads");
    model.apply_adapter("a", 1.0).expect("applies");
    assert_close("qwen2", &trace(&mut model, 5, 2), &want);
}

/// One batched decode step whose rows use no adapter, adapter a, adapter
/// b, and both: each row's logits equal its sequence run alone with its
/// own adapters.
fn batch_rows_choose_adapters_on(device: &Device, test: &str) {
    let dir = temp_dir(test);
    let spec = spec(Arch::Llama);
    let base = base_gguf(&spec, &dir);
    let a = adapter(&spec, "a", 8, &LoraModule::ALL, 5);
    let b = adapter(&spec, "b", 4, &[LoraModule::V, LoraModule::Up], 6);
    let sets = [
        AdapterSet::new(),
        AdapterSet::one("a", 1.0),
        AdapterSet::one("b", 1.0),
        AdapterSet::one("a", 0.5).with("b", 2.0),
    ];
    let prompt = |s: usize| -> Vec<u32> {
        (0..4 + s as u32)
            .map(|i| (i * 29 + s as u32) % 300)
            .collect()
    };
    // Alone: slot 0, one sequence at a time.
    let mut alone = load(&base, device, 1);
    alone.add_adapter(a.clone()).expect("a");
    alone.add_adapter(b.clone()).expect("b");
    let want: Vec<Vec<f32>> = sets
        .iter()
        .enumerate()
        .map(|(s, set)| {
            alone.set_adapters(set).expect("set");
            let p = prompt(s);
            alone.logits(&p, 0).expect("prompt");
            alone.logits(&[7], p.len()).expect("step")
        })
        .collect();
    let mut model = load(&base, device, sets.len());
    model.add_adapter(a).expect("a");
    model.add_adapter(b).expect("b");
    for (s, set) in sets.iter().enumerate() {
        model.set_adapters_in(s, set).expect("set");
        model.logits_in(s, &prompt(s), 0).expect("prompt");
    }
    // Rows in another order than the slots.
    let rows: Vec<BatchRow> = [2, 0, 3, 1]
        .into_iter()
        .map(|s| BatchRow {
            slot: s,
            token: 7,
            pos: prompt(s).len(),
        })
        .collect();
    let got = model.decode_batch(&rows).expect("batch");
    let vocab = model.vocab_size();
    for (i, row) in rows.iter().enumerate() {
        let g = vec![got[i * vocab..(i + 1) * vocab].to_vec()];
        let w = vec![want[row.slot].clone()];
        assert_close(&format!("{test}: slot {} in a batch", row.slot), &g, &w);
    }
}

#[test]
fn batch_rows_choose_their_adapters_on_the_cpu() {
    batch_rows_choose_adapters_on(&Device::Cpu, "batch-cpu");
}

#[test]
fn batch_rows_choose_their_adapters_on_the_gpu() {
    let test = "batch-gpu";
    let Some(device) = kiln::engine::testing::gpu_or_skip(test) else {
        return;
    };
    batch_rows_choose_adapters_on(&device, test);
}

fn lora_kind(err: Error) -> LoraErrorKind {
    eprintln!("{err}");
    match err {
        Error::Lora(e) => *e.kind,
        other => panic!("not a LoRA error: {other:?}"),
    }
}

#[test]
fn bad_adapters_and_requests_are_typed_errors() {
    let dir = temp_dir("errors");
    let spec = spec(Arch::Llama);
    let mut model = load(&base_gguf(&spec, &dir), &Device::Cpu, 2);

    // An adapter for a wider model.
    let wide = TinySpec {
        n_embd: 128,
        ..spec.clone()
    };
    let err = model
        .add_adapter(adapter(&wide, "wide", 4, &[LoraModule::Q], 1))
        .expect_err("wrong shape");
    let msg = err.to_string();
    assert!(
        matches!(lora_kind(err), LoraErrorKind::BaseShapeMismatch { .. }),
        "{msg}"
    );
    // More layers than the model.
    let deep = TinySpec {
        n_layer: 3,
        ..spec.clone()
    };
    let err = model
        .add_adapter(adapter(&deep, "deep", 4, &[LoraModule::V], 1))
        .expect_err("too deep");
    assert!(matches!(
        lora_kind(err),
        LoraErrorKind::LayerOutOfRange { .. }
    ));
    // Another architecture.
    let mut other = adapter(&spec, "other", 4, &[LoraModule::V], 1);
    other.architecture = Some("gemma".into());
    let err = model.add_adapter(other).expect_err("architecture");
    assert!(matches!(
        lora_kind(err),
        LoraErrorKind::ArchitectureMismatch { .. }
    ));
    // Missing files, and a directory that is no adapter.
    let err = model
        .load_adapter(dir.join("nowhere"), None)
        .expect_err("missing");
    assert!(matches!(lora_kind(err), LoraErrorKind::MissingFile { .. }));
    let err = model.load_adapter(&dir, None).expect_err("no config");
    assert!(matches!(lora_kind(err), LoraErrorKind::MissingFile { .. }));
    // An unknown module name in a PEFT config.
    let peft = dir.join("unknown-module");
    write_peft(
        &peft,
        &adapter(&spec, "u", 4, &[LoraModule::Q], 1),
        DType::F32,
    )
    .expect("peft");
    let config = std::fs::read_to_string(peft.join("adapter_config.json")).expect("config");
    let config = config.replace("q_proj", "qkv_proj");
    std::fs::write(peft.join("adapter_config.json"), config).expect("config");
    let err = model.load_adapter(&peft, None).expect_err("unknown module");
    assert!(matches!(
        lora_kind(err),
        LoraErrorKind::UnsupportedModule { .. } | LoraErrorKind::UnexpectedTensor { .. }
    ));

    // Names and requests.
    let a = adapter(&spec, "a", 4, &[LoraModule::Q], 1);
    model.add_adapter(a.clone()).expect("loads");
    assert!(matches!(
        model.add_adapter(a.clone()),
        Err(Error::AdapterExists { .. })
    ));
    let mut bad_name = a.clone();
    bad_name.name = "base+a".into();
    assert!(matches!(
        model.add_adapter(bad_name),
        Err(Error::BadAdapterName { .. })
    ));
    assert!(matches!(
        model.apply_adapter("nope", 1.0),
        Err(Error::UnknownAdapter { .. })
    ));
    assert!(matches!(
        model.apply_adapter("a", f32::NAN),
        Err(Error::BadAdapterScale { .. })
    ));
    assert!(matches!(
        model.swap_adapter("a", "a"),
        Err(Error::UnknownAdapter { .. })
    ));
    model
        .set_adapters_in(1, &AdapterSet::one("a", 1.0))
        .expect("slot 1");
    assert!(matches!(
        model.unload_adapter("a"),
        Err(Error::AdapterInUse { slot: 1, .. })
    ));
    assert!(matches!(
        model.set_adapters_in(5, &AdapterSet::new()),
        Err(Error::BadBatch(_))
    ));
    model
        .set_adapters_in(1, &AdapterSet::new())
        .expect("clears");
    model.unload_adapter("a").expect("unloads");
    assert!(matches!(
        model.unload_adapter("a"),
        Err(Error::UnknownAdapter { .. })
    ));
}

/// `kiln lora merge`'s library call agrees with applying unmerged: a PEFT
/// adapter and its llama.cpp GGUF, merged into a LLaMA GGUF (q/k rows
/// permuted) as f32, give the logits of the adapter applied at run time.
#[test]
fn merge_gguf_equals_unmerged() {
    use kiln::loaders::lora::{merge_gguf, MergeOptions, MergeOutType, MergeSource};
    let dir = temp_dir("merge");
    let spec = spec(Arch::Llama);
    let base = base_gguf(&spec, &dir);
    let a = adapter(&spec, "a", 16, &LoraModule::ALL, 9);
    let peft = dir.join("peft");
    write_peft(&peft, &a, DType::F32).expect("peft");
    let gguf = dir.join("a.gguf");
    write_gguf(&gguf, &as_gguf(&spec, &a), DType::F32).expect("gguf");
    let mut model = load(&base, &Device::Cpu, 1);
    model.load_adapter(&peft, Some("a")).expect("loads");
    model.apply_adapter("a", 0.5).expect("applies");
    let want = trace(&mut model, 5, 2);
    for (i, path) in [&peft, &gguf].into_iter().enumerate() {
        let adapter = LoraAdapter::open(path).expect("opens");
        let out = dir.join(format!("merged-{i}.gguf"));
        let options = MergeOptions {
            outtype: MergeOutType::F32,
            ..MergeOptions::default()
        };
        merge_gguf(&base, &[MergeSource::new(adapter, 0.5)], &out, &options).expect("merges");
        let got = trace(&mut load(&out, &Device::Cpu, 1), 5, 2);
        assert_close(&format!("merged {}", path.display()), &got, &want);
    }
}
