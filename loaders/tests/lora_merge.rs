//! `lora::merge_gguf`: merged weights against an f64 reference and against
//! `dequant(W) + Σ m · delta_weight()`, each output type, untouched tensors
//! byte for byte, metadata kept and the merge recorded, several adapters
//! summing, and every bad input as a typed error that leaves no file.
//!
//! Tolerances: f32 output is the f64 result rounded once (at most 1 ulp
//! from it: double rounding); against the f32 spec form `W + m·delta` (two
//! roundings there, plus f32 adds) within `4·2⁻²⁴·(|W| + Σ|m·delta|)`. F16
//! and requantized outputs are exactly the f32 result encoded by kiln's
//! reference quantizers.

mod common;

use std::path::{Path, PathBuf};

use common::temp_dir;
use kiln_kernels::{quant, CpuTensor, DType};
use kiln_loaders::lora::{
    merge_gguf, merge_gguf_to, write_gguf, write_peft, MergeOptions, MergeOutType, MergeReport,
    MergeSource, MERGED_COUNT_KEY,
};
use kiln_loaders::{
    GgufFile, GgufWriter, LoraAdapter, LoraError, LoraErrorKind, LoraFormat, LoraModule,
    LoraTarget, Value, ValueType,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// A small LLaMA-shaped base: hidden 64, KV 32, FFN 96 (rows of whole
// Q8_0 / Q4_0 / IQ4_NL blocks), two layers, a 40-token vocabulary.
const HIDDEN: usize = 64;
const KV: usize = 32;
const FFN: usize = 96;
const VOCAB: usize = 40;
const N_LAYER: usize = 2;
const ALIGNMENT: u32 = 64;

fn out_in(module: LoraModule) -> (usize, usize) {
    match module {
        LoraModule::Q | LoraModule::O => (HIDDEN, HIDDEN),
        LoraModule::K | LoraModule::V => (KV, HIDDEN),
        LoraModule::Gate | LoraModule::Up => (FFN, HIDDEN),
        LoraModule::Down => (HIDDEN, FFN),
    }
}

fn random_values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Blocks of a type kiln only decodes (IQ4_NL): an f16 scale of 1/64,
/// then random quants.
fn random_blocks(rng: &mut StdRng, dtype: DType, n: usize) -> Vec<u8> {
    assert_eq!(dtype, DType::IQ4NL, "no block builder for {dtype}");
    let mut out = Vec::new();
    for _ in 0..n / dtype.block_size() {
        out.extend_from_slice(&half::f16::from_f32(1.0 / 64.0).to_le_bytes());
        out.extend((0..dtype.block_bytes() - 2).map(|_| rng.random::<u8>()));
    }
    out
}

/// Writes a base GGUF whose matrices are `matrix` (norms F32), with
/// metadata of several types; `skip` leaves a module out of every block.
fn write_base(path: &Path, matrix: DType, seed: u64, skip: Option<LoraModule>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = GgufWriter::new();
    w.alignment(ALIGNMENT).unwrap();
    for (k, v) in [
        // Not LLaMA, whose GGUFs hold q/k rows permuted (so PEFT adapters
        // are permuted to merge: `QkOrder`, tested end to end in kiln's
        // tests/lora.rs): here adapters merge as they are.
        ("general.architecture", Value::String("qwen2".into())),
        ("general.name", Value::String("tiny merge base".into())),
        ("general.file_type", Value::U32(7)),
        ("qwen2.block_count", Value::U32(N_LAYER as u32)),
        ("qwen2.embedding_length", Value::U32(HIDDEN as u32)),
        ("qwen2.rope.freq_base", Value::F32(10000.0)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                (0..VOCAB).map(|i| Value::String(format!("t{i}"))).collect(),
            ),
        ),
    ] {
        w.add(k, v).unwrap();
    }
    let mut tensor = |w: &mut GgufWriter, name: String, dtype: DType, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let bytes = if quant::can_quantize(dtype) {
            quant::quantize(dtype, &random_values(&mut rng, n)).unwrap()
        } else {
            random_blocks(&mut rng, dtype, n)
        };
        w.add_tensor(name, dtype, shape, bytes).unwrap();
    };
    tensor(&mut w, "token_embd.weight".into(), matrix, &[VOCAB, HIDDEN]);
    for layer in 0..N_LAYER {
        tensor(
            &mut w,
            format!("blk.{layer}.attn_norm.weight"),
            DType::F32,
            &[HIDDEN],
        );
        for m in LoraModule::ALL {
            if Some(m) == skip {
                continue;
            }
            let (out, n_in) = out_in(m);
            tensor(&mut w, m.gguf_weight(layer), matrix, &[out, n_in]);
        }
        tensor(
            &mut w,
            format!("blk.{layer}.ffn_norm.weight"),
            DType::F32,
            &[HIDDEN],
        );
    }
    tensor(&mut w, "output_norm.weight".into(), DType::F32, &[HIDDEN]);
    tensor(&mut w, "output.weight".into(), matrix, &[VOCAB, HIDDEN]);
    w.write(path).unwrap();
}

fn base(dir: &Path, matrix: DType, seed: u64) -> PathBuf {
    let path = dir.join(format!("base-{}.gguf", matrix.name()));
    write_base(&path, matrix, seed, None);
    path
}

/// An adapter on `modules` of every layer at `rank`, scale `alpha / rank`.
fn adapter(name: &str, rank: usize, alpha: f32, modules: &[LoraModule], seed: u64) -> LoraAdapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut targets = Vec::new();
    for layer in 0..N_LAYER {
        for &m in modules {
            let (out, n_in) = out_in(m);
            let a = CpuTensor::from_f32([rank, n_in], random_values(&mut rng, rank * n_in));
            let b = CpuTensor::from_f32([out, rank], random_values(&mut rng, out * rank));
            targets.push(
                LoraTarget::new(layer, m, a.unwrap(), b.unwrap(), alpha / rank as f32).unwrap(),
            );
        }
    }
    let mut adapter = LoraAdapter::new(name, LoraFormat::Peft, alpha, targets).unwrap();
    adapter.architecture = Some("qwen2".into());
    adapter
}

/// Writes `a` as a PEFT directory (F32) and opens it again.
fn via_peft(dir: &Path, a: &LoraAdapter) -> LoraAdapter {
    let path = dir.join(&a.name);
    write_peft(&path, a, DType::F32).unwrap();
    LoraAdapter::open(&path).unwrap()
}

/// Writes `a` as a llama.cpp LoRA GGUF in `dtype` and opens it again.
fn via_gguf(dir: &Path, a: &LoraAdapter, dtype: DType) -> LoraAdapter {
    let path = dir.join(format!("{}.gguf", a.name));
    write_gguf(&path, a, dtype).unwrap();
    LoraAdapter::open(&path).unwrap()
}

fn merge(
    base: &Path,
    sources: &[MergeSource],
    out: &Path,
    outtype: MergeOutType,
) -> Result<MergeReport, LoraError> {
    let options = MergeOptions {
        outtype,
        overwrite: false,
    };
    merge_gguf(base, sources, out, &options)
}

fn values(file: &GgufFile, name: &str) -> Vec<f32> {
    let info = file.tensor(name).unwrap();
    quant::dequantize_to_vec(info.dtype, file.tensor_data(name).unwrap()).unwrap()
}

/// `W + Σ m · s · B A` in f64, from the base's stored weight.
fn exact(base: &GgufFile, name: &str, updates: &[(&LoraTarget, f32)]) -> Vec<f64> {
    let mut w: Vec<f64> = values(base, name).into_iter().map(f64::from).collect();
    let n_in = base.tensor(name).unwrap().shape[1];
    for &(t, m) in updates {
        let (a, b, r) = (t.a.as_f32().unwrap(), t.b.as_f32().unwrap(), t.rank());
        let c = f64::from(m) * f64::from(t.scale);
        for (j, x) in w.iter_mut().enumerate() {
            let (o, i) = (j / n_in, j % n_in);
            let sum: f64 = (0..r)
                .map(|k| f64::from(b[o * r + k]) * f64::from(a[k * n_in + i]))
                .sum();
            *x += c * sum;
        }
    }
    w
}

/// Distance in f32 units in the last place.
fn ulps(got: f32, want: f32) -> u32 {
    let key = |x: f32| {
        let b = x.to_bits() as i32;
        if b < 0 {
            i32::MIN - b
        } else {
            b
        }
    };
    key(got).abs_diff(key(want))
}

fn assert_within_ulp(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(ulps(g, w as f32) <= 1, "{what}[{i}]: {g} vs exact {w}");
    }
}

/// The targets of every source that adapt `(layer, module)`.
fn updates(sources: &[MergeSource], layer: usize, module: LoraModule) -> Vec<(&LoraTarget, f32)> {
    sources
        .iter()
        .filter_map(|s| Some((s.adapter.target(layer, module)?, s.multiplier)))
        .collect()
}

fn err_of(result: Result<MergeReport, LoraError>) -> LoraError {
    match result {
        Ok(r) => panic!("expected an error, merged {} tensors", r.merged.len()),
        Err(e) => e,
    }
}

fn no_part_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part"), "left behind: {name}");
    }
}

#[test]
fn f32_base_merges_exactly_up_to_f32_rounding() {
    let dir = temp_dir("merge-f32");
    let base_path = base(&dir, DType::F32, 1);
    for (rank, seed) in [(4, 10), (16, 11), (64, 12)] {
        let a = via_peft(
            &dir,
            &adapter(&format!("r{rank}"), rank, 16.0, &LoraModule::ALL, seed),
        );
        let sources = [MergeSource::new(a, 1.0)];
        let out = dir.join(format!("merged-r{rank}.gguf"));
        // The default (llama.cpp's rule): F32 bases stay F32.
        let report = merge(&base_path, &sources, &out, MergeOutType::default()).unwrap();
        assert_eq!(report.merged.len(), N_LAYER * LoraModule::ALL.len());
        assert!(report.merged.iter().all(|t| t.to == DType::F32));
        assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());

        let base = GgufFile::open(&base_path).unwrap();
        let merged = GgufFile::open(&out).unwrap();
        for layer in 0..N_LAYER {
            for m in LoraModule::ALL {
                let name = m.gguf_weight(layer);
                let ups = updates(&sources, layer, m);
                let got = values(&merged, &name);
                assert_within_ulp(&got, &exact(&base, &name, &ups), &name);

                // The spec form: dequant(W) + m · delta_weight(), in f32.
                let w = values(&base, &name);
                let delta = ups[0].0.delta_weight().unwrap();
                let delta = delta.as_f32().unwrap();
                for ((&g, &w), &d) in got.iter().zip(&w).zip(delta) {
                    let tol = 4.0 * f32::EPSILON / 2.0 * (w.abs() + d.abs());
                    assert!((g - (w + d)).abs() <= tol, "{name}: {g} vs {}", w + d);
                }
            }
        }
    }
    no_part_files(&dir);
}

#[test]
fn untouched_tensors_are_byte_identical_and_metadata_is_kept() {
    let dir = temp_dir("merge-copy");
    let base_path = base(&dir, DType::Q4_0, 2);
    // Only q and v: every other tensor must come through unchanged.
    let a = via_peft(
        &dir,
        &adapter("qv", 8, 16.0, &[LoraModule::Q, LoraModule::V], 20),
    );
    let out = dir.join("merged.gguf");
    let report = merge(
        &base_path,
        &[MergeSource::new(a, 0.75)],
        &out,
        MergeOutType::F16,
    )
    .unwrap();

    let base = GgufFile::open(&base_path).unwrap();
    let merged = GgufFile::open(&out).unwrap();
    assert_eq!(report.copied + report.merged.len(), base.tensors().len());
    assert_eq!(report.merged.len(), 2 * N_LAYER);
    assert_eq!(merged.alignment(), u64::from(ALIGNMENT));
    let names: Vec<_> = merged.tensors().iter().map(|t| &t.name).collect();
    let base_names: Vec<_> = base.tensors().iter().map(|t| &t.name).collect();
    assert_eq!(names, base_names, "tensor order is the base's");
    for t in base.tensors() {
        let m = merged.tensor(&t.name).unwrap();
        assert_eq!(m.shape, t.shape, "{}", t.name);
        let adapted = t.name.contains("attn_q.") || t.name.contains("attn_v.");
        if adapted {
            assert_eq!(m.dtype, DType::F16, "{}", t.name);
        } else {
            assert_eq!(m.dtype, t.dtype, "{}", t.name);
            assert_eq!(
                merged.tensor_data(&t.name).unwrap(),
                base.tensor_data(&t.name).unwrap(),
                "{} is not byte-identical",
                t.name
            );
        }
    }

    // Every base key is kept; file_type says MOSTLY_F16, as llama.cpp's
    // export-lora writes; the merge is recorded.
    let md = merged.metadata();
    for (k, v) in base.metadata().iter() {
        if k != "general.file_type" {
            assert_eq!(md.get(k), Some(v), "{k}");
        }
    }
    assert_eq!(md.get_u64("general.file_type"), Some(1));
    assert_eq!(md.get_u64(MERGED_COUNT_KEY), Some(1));
    assert_eq!(md.get_str("general.lora.merged.0.name"), Some("qv"));
    assert_eq!(md.get_str("general.lora.merged.0.format"), Some("peft"));
    assert_eq!(md.get_u64("general.lora.merged.0.rank"), Some(8));
    assert_eq!(md.get_f64("general.lora.merged.0.alpha"), Some(16.0));
    assert_eq!(md.get_f64("general.lora.merged.0.multiplier"), Some(0.75));
    let extra = md.iter().filter(|(k, _)| base.metadata().get(k).is_none());
    assert_eq!(extra.count(), 6, "count + five fields per adapter");

    // The merged file loads as a weight map.
    let weights = merged.weights();
    assert_eq!(weights.len(), base.tensors().len());
    assert_eq!(
        weights.get("blk.1.attn_q.weight").unwrap().shape(),
        &[HIDDEN, HIDDEN]
    );
}

#[test]
fn quantized_bases_merge_from_their_dequantized_weights() {
    let dir = temp_dir("merge-quant");
    for (matrix, seed) in [(DType::Q8_0, 3), (DType::Q4_0, 4), (DType::Q4_1, 5)] {
        let base_path = base(&dir, matrix, seed);
        let a = via_gguf(
            &dir,
            &adapter("g", 32, 8.0, &LoraModule::ALL, 30),
            DType::F16,
        );
        let sources = [MergeSource::new(a, 1.5)];
        let run = |outtype: MergeOutType| {
            let out = dir.join(format!("m-{}-{outtype}.gguf", matrix.name()));
            merge(&base_path, &sources, &out, outtype).unwrap();
            GgufFile::open(&out).unwrap()
        };
        let f32_out = run(MergeOutType::F32);
        let f16_out = run(MergeOutType::F16);
        let same_out = run(MergeOutType::Same);
        let base = GgufFile::open(&base_path).unwrap();
        for layer in 0..N_LAYER {
            for m in LoraModule::ALL {
                let name = m.gguf_weight(layer);
                let full = values(&f32_out, &name);
                let ups = updates(&sources, layer, m);
                assert_within_ulp(&full, &exact(&base, &name, &ups), &name);
                // F16 and requantized outputs: the f32 result, encoded.
                assert_eq!(f16_out.tensor(&name).unwrap().dtype, DType::F16);
                assert_eq!(
                    f16_out.tensor_data(&name).unwrap(),
                    &quant::quantize(DType::F16, &full).unwrap()[..],
                    "{name} f16"
                );
                assert_eq!(same_out.tensor(&name).unwrap().dtype, matrix);
                assert_eq!(
                    same_out.tensor_data(&name).unwrap(),
                    &quant::quantize_rows(matrix, &full, out_in(m).1).unwrap()[..],
                    "{name} {matrix}"
                );
            }
        }
        // `same` changes no tensor's type, so file_type is the base's.
        assert_eq!(same_out.metadata().get_u64("general.file_type"), Some(7));
        assert_eq!(f32_out.metadata().get_u64("general.file_type"), Some(0));
    }
}

#[test]
fn two_adapters_merge_to_the_sum_of_their_updates() {
    let dir = temp_dir("merge-two");
    let base_path = base(&dir, DType::Q8_0, 6);
    // Different ranks, formats and target sets; one negative multiplier.
    let x = via_peft(
        &dir,
        &adapter("x", 4, 4.0, &[LoraModule::Q, LoraModule::V], 40),
    );
    let y = via_gguf(
        &dir,
        &adapter("y", 64, 32.0, &LoraModule::ALL, 41),
        DType::Q8_0,
    );
    let sources = [MergeSource::new(x, 0.5), MergeSource::new(y, -1.25)];
    let out = dir.join("xy.gguf");
    let report = merge(&base_path, &sources, &out, MergeOutType::F32).unwrap();
    let two = report.merged.iter().filter(|t| t.adapters == 2).count();
    assert_eq!(two, 2 * N_LAYER);

    let base = GgufFile::open(&base_path).unwrap();
    let merged = GgufFile::open(&out).unwrap();
    for layer in 0..N_LAYER {
        for m in LoraModule::ALL {
            let name = m.gguf_weight(layer);
            let ups = updates(&sources, layer, m);
            assert_eq!(
                ups.len(),
                if matches!(m, LoraModule::Q | LoraModule::V) {
                    2
                } else {
                    1
                }
            );
            assert_within_ulp(&values(&merged, &name), &exact(&base, &name, &ups), &name);
        }
    }
    let md = merged.metadata();
    assert_eq!(md.get_u64(MERGED_COUNT_KEY), Some(2));
    assert_eq!(md.get_str("general.lora.merged.1.name"), Some("y"));
    assert_eq!(md.get_str("general.lora.merged.1.format"), Some("gguf"));
    assert_eq!(md.get_f64("general.lora.merged.1.multiplier"), Some(-1.25));

    // Merging one after the other gives the same weights (an f32 rounding
    // in between), and the record grows to the same two entries.
    let step1 = dir.join("x.gguf.merged");
    merge(&base_path, &sources[..1], &step1, MergeOutType::F32).unwrap();
    let step2 = dir.join("x-then-y.gguf");
    merge(&step1, &sources[1..], &step2, MergeOutType::F32).unwrap();
    let chained = GgufFile::open(&step2).unwrap();
    for t in merged.tensors() {
        let (a, b) = (values(&merged, &t.name), values(&chained, &t.name));
        for (&p, &q) in a.iter().zip(&b) {
            assert!(
                ulps(p, q) <= 2 || (p - q).abs() <= 1e-5,
                "{}: {p} vs {q}",
                t.name
            );
        }
    }
    let cmd = chained.metadata();
    assert_eq!(cmd.get_u64(MERGED_COUNT_KEY), Some(2));
    assert_eq!(cmd.get_str("general.lora.merged.0.name"), Some("x"));
    assert_eq!(cmd.get_str("general.lora.merged.1.name"), Some("y"));
}

#[test]
fn merging_to_a_writer_gives_the_file_bytes() {
    let dir = temp_dir("merge-writer");
    let base_path = base(&dir, DType::Q4_0, 7);
    let sources = [MergeSource::new(
        adapter("w", 8, 8.0, &LoraModule::ALL, 50),
        1.0,
    )];
    let out = dir.join("w.gguf");
    merge(&base_path, &sources, &out, MergeOutType::Same).unwrap();
    let base = GgufFile::open(&base_path).unwrap();
    let mut bytes = Vec::new();
    let report = merge_gguf_to(&base, &sources, MergeOutType::Same, &mut bytes).unwrap();
    assert_eq!(bytes, std::fs::read(&out).unwrap());
    assert_eq!(report.bytes, bytes.len() as u64);
}

#[test]
fn an_existing_output_is_refused_unless_overwriting() {
    let dir = temp_dir("merge-exists");
    let base_path = base(&dir, DType::F32, 8);
    let sources = [MergeSource::new(
        adapter("e", 4, 4.0, &[LoraModule::Q], 60),
        1.0,
    )];
    let out = dir.join("out.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let err = err_of(merge(&base_path, &sources, &out, MergeOutType::F16));
    assert!(matches!(err.kind(), LoraErrorKind::OutputExists), "{err}");
    assert!(err.to_string().contains("out.gguf"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");

    let options = MergeOptions {
        overwrite: true,
        ..MergeOptions::default()
    };
    merge_gguf(&base_path, &sources, &out, &options).unwrap();
    assert!(GgufFile::open(&out).is_ok());
    no_part_files(&dir);
}

#[test]
fn adapters_that_do_not_fit_the_base_are_refused_before_writing() {
    let dir = temp_dir("merge-fit");
    let base_path = base(&dir, DType::Q8_0, 9);
    let out = dir.join("never.gguf");
    let check = |sources: &[MergeSource], what: &str| -> LoraError {
        let err = err_of(merge(&base_path, sources, &out, MergeOutType::F16));
        assert!(!out.exists(), "{what}: output written");
        no_part_files(&dir);
        err
    };

    // Wrong in/out: an adapter for a 48-wide model.
    let mut rng = StdRng::seed_from_u64(70);
    let a = CpuTensor::from_f32([4, 48], random_values(&mut rng, 4 * 48)).unwrap();
    let b = CpuTensor::from_f32([48, 4], random_values(&mut rng, 48 * 4)).unwrap();
    let t = LoraTarget::new(0, LoraModule::Q, a, b, 1.0).unwrap();
    let narrow = LoraAdapter::new("narrow", LoraFormat::Peft, 4.0, vec![t]).unwrap();
    let err = check(&[MergeSource::new(narrow, 1.0)], "shape");
    match err.kind() {
        LoraErrorKind::BaseShapeMismatch {
            base, base_shape, ..
        } => {
            assert_eq!(base, "model.layers.0.self_attn.q_proj.weight");
            assert_eq!(*base_shape, (HIDDEN, HIDDEN));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("adapter 'narrow'"), "{err}");

    // Wrong rank: B edited to rank 5 while A has rank 4.
    let mut bad = adapter("rank", 4, 4.0, &[LoraModule::Q], 71);
    bad.targets[0].b = CpuTensor::from_f32([HIDDEN, 5], vec![0.0; HIDDEN * 5]).unwrap();
    let err = check(&[MergeSource::new(bad, 1.0)], "rank");
    assert!(
        matches!(err.kind(), LoraErrorKind::RankMismatch { .. }),
        "{err}"
    );

    // A layer the base does not have.
    let mut deep = adapter("deep", 4, 4.0, &[LoraModule::Q], 72);
    deep.targets[1].layer = N_LAYER + 3;
    let err = check(&[MergeSource::new(deep, 1.0)], "layer");
    assert!(
        matches!(err.kind(), LoraErrorKind::LayerOutOfRange { layer, n_layer: N_LAYER, .. } if *layer == N_LAYER + 3),
        "{err}"
    );

    // A module the base lacks (a base written without ffn_gate).
    let gateless = dir.join("gateless.gguf");
    write_base(&gateless, DType::Q8_0, 9, Some(LoraModule::Gate));
    let gate = adapter("gate", 4, 4.0, &[LoraModule::Gate], 73);
    let err = err_of(merge(
        &gateless,
        &[MergeSource::new(gate, 1.0)],
        &out,
        MergeOutType::F16,
    ));
    match err.kind() {
        LoraErrorKind::ModuleNotInBase { base, .. } => {
            assert_eq!(base, "model.layers.0.mlp.gate_proj.weight")
        }
        other => panic!("{other:?}"),
    }
    assert!(!out.exists());

    // An architecture other than the base's (llama.cpp refuses it too).
    let mut qwen = adapter("qwen", 4, 4.0, &[LoraModule::Q], 74);
    qwen.architecture = Some("gemma".into());
    let qwen = via_gguf(&dir, &qwen, DType::F32);
    let err = check(&[MergeSource::new(qwen, 1.0)], "arch");
    match err.kind() {
        LoraErrorKind::ArchitectureMismatch { adapter, base } => {
            assert_eq!(adapter, "gemma");
            assert_eq!(base.as_deref(), Some("qwen2"));
        }
        other => panic!("{other:?}"),
    }

    // No adapters; a multiplier that is not a number.
    let err = check(&[], "none");
    assert!(matches!(err.kind(), LoraErrorKind::NoAdapters), "{err}");
    let nan = MergeSource::new(adapter("nan", 4, 4.0, &[LoraModule::Q], 75), f32::NAN);
    let err = check(&[nan], "nan");
    assert!(
        matches!(err.kind(), LoraErrorKind::BadMultiplier { .. }),
        "{err}"
    );
}

#[test]
fn types_without_a_quantizer_are_named_and_other_outputs_work() {
    let dir = temp_dir("merge-iq4");
    let base_path = base(&dir, DType::IQ4NL, 10);
    let sources = [MergeSource::new(
        adapter("iq", 4, 4.0, &[LoraModule::K], 80),
        1.0,
    )];
    let out = dir.join("iq.gguf");
    let err = err_of(merge(&base_path, &sources, &out, MergeOutType::Same));
    match err.kind() {
        LoraErrorKind::NoQuantizer { tensor, dtype } => {
            assert_eq!(tensor, "blk.0.attn_k.weight");
            assert_eq!(dtype, "iq4_nl");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("f16 or f32"), "{err}");
    assert!(!out.exists());
    // Decoding IQ4_NL is fine: f16 output merges, untouched IQ4_NL copies.
    merge(&base_path, &sources, &out, MergeOutType::F16).unwrap();
    let merged = GgufFile::open(&out).unwrap();
    assert_eq!(
        merged.tensor("blk.0.attn_k.weight").unwrap().dtype,
        DType::F16
    );
    assert_eq!(
        merged.tensor("blk.0.attn_q.weight").unwrap().dtype,
        DType::IQ4NL
    );
}

#[test]
fn missing_files_and_bad_bases_are_typed_errors() {
    let dir = temp_dir("merge-missing");
    let sources = [MergeSource::new(
        adapter("m", 4, 4.0, &[LoraModule::Q], 90),
        1.0,
    )];
    let out = dir.join("out.gguf");

    let err = err_of(merge(
        &dir.join("nope.gguf"),
        &sources,
        &out,
        MergeOutType::F16,
    ));
    match err.kind() {
        LoraErrorKind::Load(e) => assert!(matches!(e.kind(), kiln_loaders::ErrorKind::Io(_))),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("nope.gguf"), "{err}");
    let err = LoraAdapter::open(dir.join("no-adapter")).err().unwrap();
    assert!(
        matches!(err.kind(), LoraErrorKind::MissingFile { .. }),
        "{err}"
    );

    // An adapter as the base, and one shard of a split model.
    let adapter_file = dir.join("as-base.gguf");
    write_gguf(&adapter_file, &sources[0].adapter, DType::F32).unwrap();
    let err = err_of(merge(&adapter_file, &sources, &out, MergeOutType::F16));
    assert!(
        matches!(err.kind(), LoraErrorKind::Unsupported { .. }),
        "{err}"
    );

    let mut w = GgufWriter::new();
    w.add("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.add("split.count", Value::U16(3)).unwrap();
    let shard = dir.join("shard-00001-of-00003.gguf");
    w.write(&shard).unwrap();
    let err = err_of(merge(&shard, &sources, &out, MergeOutType::F16));
    assert!(err.to_string().contains("split.count = 3"), "{err}");
    assert!(!out.exists());
    no_part_files(&dir);
}

#[test]
fn outtype_names_parse() {
    assert_eq!("f16".parse::<MergeOutType>().unwrap(), MergeOutType::F16);
    assert_eq!("F32".parse::<MergeOutType>().unwrap(), MergeOutType::F32);
    assert_eq!("same".parse::<MergeOutType>().unwrap(), MergeOutType::Same);
    let err = "q4_0".parse::<MergeOutType>().err().unwrap();
    assert!(
        matches!(err.kind(), LoraErrorKind::UnknownOutType { .. }),
        "{err}"
    );
    assert_eq!(MergeOutType::default(), MergeOutType::F16);
    assert_eq!(MergeOutType::F16.dtype_for(DType::F32), DType::F32);
    assert_eq!(MergeOutType::F16.dtype_for(DType::Q4K), DType::F16);
    assert_eq!(MergeOutType::Same.dtype_for(DType::Q4K), DType::Q4K);
}
