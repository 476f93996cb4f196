//! LoRA adapters: PEFT and llama.cpp GGUF round trips, scale rules, the two
//! formats agreeing, and every malformed adapter as a typed error.

mod common;

use std::path::{Path, PathBuf};

use common::raw::{safetensors_file, Raw};
use common::temp_dir;
use kiln_kernels::{quant, CpuTensor, DType};
use kiln_loaders::lora::{write_gguf, write_peft, LoraHalf, TargetModules};
use kiln_loaders::{
    BaseShapes, GgufFile, GgufWriter, LoraAdapter, LoraError, LoraErrorKind, LoraFormat,
    LoraModule, LoraTarget, PeftConfig, SafetensorsFile, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

// A small LLaMA-shaped base: hidden 64, 4 query heads and 2 KV heads of 16,
// FFN 96. (out, in) per module, kiln's [out, in] weight order.
const HIDDEN: usize = 64;
const KV: usize = 32;
const FFN: usize = 96;
const N_LAYER: usize = 2;

fn out_in(module: LoraModule) -> (usize, usize) {
    match module {
        LoraModule::Q | LoraModule::O => (HIDDEN, HIDDEN),
        LoraModule::K | LoraModule::V => (KV, HIDDEN),
        LoraModule::Gate | LoraModule::Up => (FFN, HIDDEN),
        LoraModule::Down => (HIDDEN, FFN),
    }
}

fn base() -> BaseShapes {
    let shapes: Vec<_> = LoraModule::ALL.iter().map(|&m| (m, out_in(m))).collect();
    BaseShapes::uniform(N_LAYER, &shapes)
}

fn random(rng: &mut StdRng, shape: [usize; 2]) -> CpuTensor {
    let values = (0..shape[0] * shape[1])
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    CpuTensor::from_f32(shape, values).unwrap()
}

fn target(
    rng: &mut StdRng,
    layer: usize,
    module: LoraModule,
    rank: usize,
    scale: f32,
) -> LoraTarget {
    let (out, n_in) = out_in(module);
    let a = random(rng, [rank, n_in]);
    let b = random(rng, [out, rank]);
    LoraTarget::new(layer, module, a, b, scale).unwrap()
}

/// Every module of every layer at one rank, scale alpha / rank.
fn adapter(rank: usize, alpha: f32, seed: u64) -> LoraAdapter {
    let mut rng = StdRng::seed_from_u64(seed);
    let scale = alpha / rank as f32;
    let targets = (0..N_LAYER)
        .flat_map(|l| LoraModule::ALL.map(|m| (l, m)))
        .map(|(l, m)| target(&mut rng, l, m, rank, scale))
        .collect();
    LoraAdapter::new(format!("r{rank}"), LoraFormat::Peft, alpha, targets).unwrap()
}

/// What storing in `dtype` does to the values.
fn stored(t: &CpuTensor, dtype: DType) -> Vec<f32> {
    let values = t.as_f32().unwrap();
    let bytes = quant::quantize(dtype, values).unwrap();
    quant::dequantize_to_vec(dtype, &bytes).unwrap()
}

fn assert_same_targets(got: &LoraAdapter, want: &LoraAdapter, dtype: DType) {
    assert_eq!(got.targets.len(), want.targets.len());
    for (g, w) in got.targets.iter().zip(&want.targets) {
        assert_eq!((g.layer, g.module), (w.layer, w.module));
        assert_eq!(g.a.dtype(), DType::F32);
        assert_eq!(g.a.shape(), w.a.shape(), "{:?} a", (g.layer, g.module));
        assert_eq!(g.b.shape(), w.b.shape(), "{:?} b", (g.layer, g.module));
        assert_eq!(g.a.as_f32().unwrap(), &stored(&w.a, dtype)[..]);
        assert_eq!(g.b.as_f32().unwrap(), &stored(&w.b, dtype)[..]);
        assert_eq!(g.scale, w.scale, "{:?} scale", (g.layer, g.module));
    }
}

fn err_of(result: Result<LoraAdapter, LoraError>) -> LoraError {
    match result {
        Ok(a) => panic!("expected an error, loaded {} targets", a.targets.len()),
        Err(e) => e,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn zeros(shape: &[usize]) -> Vec<u8> {
    vec![0; 4 * shape.iter().product::<usize>()]
}

/// A PEFT directory written by hand: config JSON and raw safetensors
/// entries `(name, dtype, shape)` (zero data).
fn peft_dir(name: &str, config: serde_json::Value, tensors: &[(&str, &str, &[usize])]) -> PathBuf {
    let dir = temp_dir(name);
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let entries: Vec<(&str, &str, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|&(n, d, s)| {
            let size = if d == "F16" || d == "BF16" { 2 } else { 4 };
            (n, d, s, vec![0; size * s.iter().product::<usize>()])
        })
        .collect();
    std::fs::write(
        dir.join("adapter_model.safetensors"),
        safetensors_file(&entries, &[("format", "pt")]),
    )
    .unwrap();
    dir
}

fn peft_name(layer: usize, module: LoraModule, half: LoraHalf) -> String {
    LoraFormat::Peft.tensor_name(layer, module, half)
}

fn config(r: usize, alpha: f64) -> serde_json::Value {
    json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"]})
}

/// One q_proj pair of rank `r` in layer 0, with the given config.
fn q_only(name: &str, config: serde_json::Value, r: usize) -> PathBuf {
    let a = peft_name(0, LoraModule::Q, LoraHalf::A);
    let b = peft_name(0, LoraModule::Q, LoraHalf::B);
    peft_dir(
        name,
        config,
        &[(&a, "F32", &[r, HIDDEN]), (&b, "F32", &[HIDDEN, r])],
    )
}

fn lora_meta() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.type", Value::String("adapter".into())),
        ("adapter.type", Value::String("lora".into())),
        ("adapter.lora.alpha", Value::F32(16.0)),
    ]
}

/// A GGUF written by hand with GgufWriter (which checks nothing LoRA).
fn gguf_path(
    name: &str,
    meta: &[(&str, Value)],
    tensors: &[(&str, DType, &[usize], Vec<u8>)],
) -> PathBuf {
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add(*k, v.clone()).unwrap();
    }
    for (n, d, s, bytes) in tensors {
        w.add_tensor(*n, *d, s, bytes.clone()).unwrap();
    }
    let path = temp_dir(name).join(format!("{name}.gguf"));
    w.write(&path).unwrap();
    path
}

/// A valid GGUF q pair of rank `r` in layer 0.
fn gguf_q(r: usize) -> Vec<(&'static str, DType, Vec<usize>, Vec<u8>)> {
    vec![
        (
            "blk.0.attn_q.weight.lora_a",
            DType::F32,
            vec![r, HIDDEN],
            zeros(&[r, HIDDEN]),
        ),
        (
            "blk.0.attn_q.weight.lora_b",
            DType::F32,
            vec![HIDDEN, r],
            zeros(&[HIDDEN, r]),
        ),
    ]
}

fn gguf_with(
    name: &str,
    meta: &[(&str, Value)],
    tensors: &[(&str, DType, Vec<usize>, Vec<u8>)],
) -> PathBuf {
    let t: Vec<(&str, DType, &[usize], Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, *d, s.as_slice(), b.clone()))
        .collect();
    gguf_path(name, meta, &t)
}

// ---- round trips ----

#[test]
fn peft_round_trips_at_ranks_4_16_64_in_f32_and_f16() {
    for rank in [4, 16, 64] {
        let want = adapter(rank, 32.0, rank as u64);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let dir = temp_dir(&format!("peft-rt-{rank}-{dtype}"));
            write_peft(&dir, &want, dtype).unwrap();
            let got = LoraAdapter::open(&dir).unwrap();
            assert_eq!(got.format, LoraFormat::Peft);
            assert_eq!((got.rank, got.alpha), (rank, 32.0));
            assert_eq!(got.scale, 32.0 / rank as f32);
            assert_eq!(got.name, dir.file_name().unwrap().to_string_lossy());
            assert_same_targets(&got, &want, dtype);
            got.validate(&base()).unwrap();

            // PEFT's own view of what was written.
            let config = PeftConfig::open(dir.join("adapter_config.json")).unwrap();
            assert_eq!((config.r, config.lora_alpha), (rank, 32.0));
            assert!(config.rank_pattern.is_empty() && config.alpha_pattern.is_empty());
            let file = SafetensorsFile::open(dir.join("adapter_model.safetensors")).unwrap();
            let a = file
                .tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight")
                .unwrap();
            assert_eq!(a.shape, vec![rank, FFN]);
        }
    }
}

#[test]
fn gguf_round_trips_at_ranks_4_16_64_in_f32_f16_and_q8_0() {
    for rank in [4, 16, 64] {
        let want = adapter(rank, 8.0, 100 + rank as u64);
        let mut dtypes = vec![DType::F32, DType::F16, DType::BF16];
        if rank % 32 == 0 {
            dtypes.push(DType::Q8_0);
        }
        for dtype in dtypes {
            let path = temp_dir(&format!("gguf-rt-{rank}-{dtype}")).join("my-adapter.gguf");
            write_gguf(&path, &want, dtype).unwrap();
            let got = LoraAdapter::open(&path).unwrap();
            assert_eq!(got.format, LoraFormat::Gguf);
            assert_eq!(got.name, "my-adapter");
            assert_eq!(got.architecture.as_deref(), Some("llama"));
            assert_eq!(
                (got.rank, got.alpha, got.scale),
                (rank, 8.0, 8.0 / rank as f32)
            );
            assert_same_targets(&got, &want, dtype);
            got.validate(&base()).unwrap();

            let file = GgufFile::open(&path).unwrap();
            let a = file.tensor("blk.1.ffn_down.weight.lora_a").unwrap();
            assert_eq!((a.dtype, a.shape.clone()), (dtype, vec![rank, FFN]));
        }
    }
}

#[test]
fn peft_and_gguf_of_the_same_adapter_load_identically() {
    for (rank, dtype) in [(4, DType::F32), (16, DType::F16), (64, DType::F16)] {
        let want = adapter(rank, 16.0, 7 * rank as u64);
        let dir = temp_dir(&format!("same-{rank}"));
        write_peft(dir.join("peft"), &want, dtype).unwrap();
        write_gguf(dir.join("a.gguf"), &want, dtype).unwrap();
        let peft = LoraAdapter::open(dir.join("peft")).unwrap();
        let gguf = LoraAdapter::open(dir.join("a.gguf")).unwrap();
        assert_eq!(peft.targets, gguf.targets);
        assert_eq!(
            (peft.rank, peft.scale, peft.alpha),
            (gguf.rank, gguf.scale, gguf.alpha)
        );
        let t = peft.target(1, LoraModule::V).unwrap();
        assert_eq!(
            t.delta_weight().unwrap(),
            gguf.target(1, LoraModule::V)
                .unwrap()
                .delta_weight()
                .unwrap()
        );
    }
}

#[test]
fn llama_cpp_lora_a_has_ne_in_then_rank() {
    // Built field by field as llama.cpp's converter lays it out: lora_a
    // ne = [in, r], lora_b ne = [r, out], row-major data.
    let (r, n_in, out) = (2usize, 3usize, 4usize);
    let a: Vec<f32> = (0..r * n_in).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..out * r).map(|i| -(i as f32)).collect();
    let mut raw = Raw::gguf(3, 2, 4);
    raw.kv_str("general.architecture", "llama")
        .kv_str("general.type", "adapter")
        .kv_str("adapter.type", "lora");
    raw.str("adapter.lora.alpha")
        .u32(6)
        .bytes(&4.0f32.to_le_bytes());
    raw.tensor("blk.0.attn_k.weight.lora_a", &[n_in as u64, r as u64], 0, 0)
        .tensor("blk.0.attn_k.weight.lora_b", &[r as u64, out as u64], 0, 32)
        .pad(32)
        .bytes(&f32_bytes(&a))
        .pad(32)
        .bytes(&f32_bytes(&b))
        .pad(32);
    let path = temp_dir("llama-cpp-layout").join("k.gguf");
    std::fs::write(&path, raw.build()).unwrap();
    let got = LoraAdapter::open(&path).unwrap();
    let t = got.target(0, LoraModule::K).unwrap();
    assert_eq!((t.a.shape(), t.b.shape()), (&[r, n_in][..], &[out, r][..]));
    assert_eq!(t.a.as_f32().unwrap(), &a[..]);
    assert_eq!(t.b.as_f32().unwrap(), &b[..]);
    assert_eq!(t.scale, 2.0);
    assert_eq!(
        (t.in_features(), t.out_features(), t.rank()),
        (n_in, out, r)
    );
}

#[test]
fn opens_from_a_file_inside_the_peft_directory() {
    let want = adapter(4, 8.0, 3);
    let dir = temp_dir("peft-file-inside");
    write_peft(&dir, &want, DType::F32).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let got = LoraAdapter::open(dir.join(file)).unwrap();
        assert_eq!(got.targets, want.targets);
    }
}

#[test]
fn delta_weight_is_scale_b_a() {
    let a = CpuTensor::from_f32([1, 2], vec![1.0, 2.0]).unwrap(); // [r 1, in 2]
    let b = CpuTensor::from_f32([3, 1], vec![1.0, -1.0, 0.5]).unwrap(); // [out 3, r 1]
    let t = LoraTarget::new(0, LoraModule::Q, a, b, 2.0).unwrap();
    let delta = t.delta_weight().unwrap();
    assert_eq!(delta.shape(), &[3, 2]);
    assert_eq!(delta.as_f32().unwrap(), &[2.0, 4.0, -2.0, -4.0, 1.0, 2.0]);
}

#[test]
fn module_names_match_llama_cpp_and_hf() {
    let names: Vec<_> = LoraModule::ALL
        .iter()
        .map(|m| (m.gguf_name(), m.hf_name(), m.hf_parent()))
        .collect();
    assert_eq!(
        names,
        [
            ("attn_q", "q_proj", "self_attn"),
            ("attn_k", "k_proj", "self_attn"),
            ("attn_v", "v_proj", "self_attn"),
            ("attn_output", "o_proj", "self_attn"),
            ("ffn_gate", "gate_proj", "mlp"),
            ("ffn_up", "up_proj", "mlp"),
            ("ffn_down", "down_proj", "mlp"),
        ]
    );
    for m in LoraModule::ALL {
        assert_eq!(LoraModule::from_gguf_name(m.gguf_name()), Some(m));
        assert_eq!(LoraModule::from_hf_name(m.hf_name()), Some(m));
    }
    assert_eq!(
        LoraFormat::Peft.tensor_name(3, LoraModule::Q, LoraHalf::A),
        "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(
        LoraFormat::Gguf.tensor_name(3, LoraModule::Down, LoraHalf::B),
        "blk.3.ffn_down.weight.lora_b"
    );
}

#[test]
fn base_shapes_come_from_gguf_or_hf_weights() {
    let mut w = GgufWriter::new();
    w.add_tensor(
        "blk.0.attn_q.weight",
        DType::Q8_0,
        &[HIDDEN, HIDDEN],
        vec![0; 64 * 2 * 34],
    )
    .unwrap();
    w.add_tensor(
        "blk.2.ffn_down.weight",
        DType::F16,
        &[HIDDEN, FFN],
        vec![0; HIDDEN * FFN * 2],
    )
    .unwrap();
    w.add_tensor(
        "blk.2.attn_norm.weight",
        DType::F32,
        &[HIDDEN],
        vec![0; HIDDEN * 4],
    )
    .unwrap();
    let file = GgufFile::from_bytes(w.to_bytes().unwrap(), "base.gguf").unwrap();
    let shapes = BaseShapes::from_weights(&file.weights());
    assert_eq!(shapes.n_layer, 3);
    assert_eq!(shapes.get(0, LoraModule::Q), Some((HIDDEN, HIDDEN)));
    assert_eq!(shapes.get(2, LoraModule::Down), Some((HIDDEN, FFN)));
    assert_eq!(shapes.get(1, LoraModule::Q), None);

    let bytes = safetensors_file(
        &[
            (
                "model.layers.1.self_attn.k_proj.weight",
                "F32",
                &[KV, HIDDEN],
                zeros(&[KV, HIDDEN]),
            ),
            (
                "model.embed_tokens.weight",
                "F32",
                &[8, HIDDEN],
                zeros(&[8, HIDDEN]),
            ),
        ],
        &[],
    );
    let file = SafetensorsFile::from_bytes(bytes, "m.safetensors").unwrap();
    let shapes = BaseShapes::from_weights(&file.weights().unwrap());
    assert_eq!(shapes.n_layer, 2);
    assert_eq!(shapes.get(1, LoraModule::K), Some((KV, HIDDEN)));
}

// ---- scale rules ----

#[test]
fn peft_scale_is_alpha_over_r() {
    let dir = q_only("scale-plain", config(8, 16.0), 8);
    let got = LoraAdapter::open(&dir).unwrap();
    assert_eq!((got.scale, got.targets[0].scale, got.rank), (2.0, 2.0, 8));
    assert_eq!(got.base_model, None);

    // fan_in_fan_out describes the base layer's storage, not A and B; PEFT
    // turns it off for nn.Linear, so the same tensors load.
    let mut c = config(8, 16.0);
    c["fan_in_fan_out"] = json!(true);
    let again = LoraAdapter::open(q_only("scale-fan-in-fan-out", c, 8)).unwrap();
    assert_eq!(again.targets, got.targets);
}

#[test]
fn rslora_scale_is_alpha_over_sqrt_r() {
    let mut c = config(16, 8.0);
    c["use_rslora"] = json!(true);
    c["base_model_name_or_path"] = json!("HuggingFaceTB/SmolLM2-135M");
    let got = LoraAdapter::open(q_only("scale-rslora", c, 16)).unwrap();
    assert_eq!((got.scale, got.targets[0].scale), (2.0, 2.0));
    assert_eq!(
        got.base_model.as_deref(),
        Some("HuggingFaceTB/SmolLM2-135M")
    );
}

#[test]
fn rank_and_alpha_patterns_override_per_module() {
    // r 8, alpha 16; v_proj rank 4; layer 1's q_proj alpha 32; down_proj alpha 4.
    let mut rng = StdRng::seed_from_u64(9);
    let spec = LoraAdapter::new(
        "patterns",
        LoraFormat::Peft,
        16.0,
        vec![
            target(&mut rng, 0, LoraModule::Q, 8, 1.0),
            target(&mut rng, 1, LoraModule::Q, 8, 1.0),
            target(&mut rng, 0, LoraModule::V, 4, 1.0),
            target(&mut rng, 1, LoraModule::Down, 8, 1.0),
        ],
    )
    .unwrap();
    let dir = temp_dir("patterns");
    write_peft(&dir, &spec, DType::F32).unwrap();
    let c = json!({
        "r": 8, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"v_proj": 4},
        "alpha_pattern": {"layers.1.self_attn.q_proj": 32, "down_proj": 4.0},
        "fan_in_fan_out": false,
    });
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    let got = LoraAdapter::open(&dir).unwrap();
    let scale = |l, m| got.target(l, m).unwrap().scale;
    assert_eq!(scale(0, LoraModule::Q), 2.0);
    assert_eq!(scale(1, LoraModule::Q), 4.0);
    assert_eq!(scale(0, LoraModule::V), 4.0);
    assert_eq!(scale(1, LoraModule::Down), 0.5);
    assert_eq!((got.rank, got.scale), (8, 2.0));

    // rsLoRA applies to the overridden values too.
    let mut c = c;
    c["use_rslora"] = json!(true);
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
    let got = LoraAdapter::open(&dir).unwrap();
    assert_eq!(got.target(0, LoraModule::V).unwrap().scale, 8.0); // 16 / sqrt 4
}

#[test]
fn writers_keep_per_target_ranks_and_scales() {
    let mut rng = StdRng::seed_from_u64(11);
    let want = LoraAdapter::new(
        "mixed",
        LoraFormat::Gguf,
        16.0,
        vec![
            target(&mut rng, 0, LoraModule::Q, 16, 1.0),
            target(&mut rng, 0, LoraModule::K, 4, 4.0),
            target(&mut rng, 1, LoraModule::Up, 8, 0.3),
        ],
    )
    .unwrap();
    let dir = temp_dir("mixed");
    write_peft(dir.join("peft"), &want, DType::F32).unwrap();
    let got = LoraAdapter::open(dir.join("peft")).unwrap();
    assert_same_targets(&got, &want, DType::F32);
    let config = PeftConfig::open(dir.join("peft/adapter_config.json")).unwrap();
    assert_eq!(config.rank_pattern.len(), 2);
    assert_eq!(
        config.target_modules,
        Some(TargetModules::Names(vec![
            "k_proj".into(),
            "q_proj".into(),
            "up_proj".into()
        ]))
    );

    // llama.cpp's scale is alpha / rank: these three fit alpha 16 but 0.3 does not.
    let err = write_gguf(dir.join("a.gguf"), &want, DType::F32).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::Unwritable { .. }),
        "{err}"
    );
    let mut fits = want.clone();
    fits.targets[2].scale = 2.0;
    write_gguf(dir.join("a.gguf"), &fits, DType::F32).unwrap();
    let got = LoraAdapter::open(dir.join("a.gguf")).unwrap();
    assert_same_targets(&got, &fits, DType::F32);
    assert_eq!((got.alpha, got.rank, got.scale), (16.0, 16, 1.0));
}

#[test]
fn gguf_scale_is_alpha_over_each_pairs_rank_and_zero_alpha_means_one() {
    let mut tensors = gguf_q(4);
    tensors.push((
        "blk.1.attn_v.weight.lora_a",
        DType::F32,
        vec![8, HIDDEN],
        zeros(&[8, HIDDEN]),
    ));
    tensors.push((
        "blk.1.attn_v.weight.lora_b",
        DType::F32,
        vec![KV, 8],
        zeros(&[KV, 8]),
    ));
    let got = LoraAdapter::open(gguf_with("gguf-scale", &lora_meta(), &tensors)).unwrap();
    assert_eq!(got.target(0, LoraModule::Q).unwrap().scale, 4.0);
    assert_eq!(got.target(1, LoraModule::V).unwrap().scale, 2.0);
    assert_eq!((got.rank, got.scale), (8, 2.0));

    let mut meta = lora_meta();
    meta[3].1 = Value::F32(0.0);
    let got = LoraAdapter::open(gguf_with("gguf-alpha0", &meta, &tensors)).unwrap();
    assert!(got.targets.iter().all(|t| t.scale == 1.0));
    meta.pop();
    let got = LoraAdapter::open(gguf_with("gguf-no-alpha", &meta, &tensors)).unwrap();
    assert_eq!((got.alpha, got.scale), (0.0, 1.0));
}

// ---- errors: validation against the base ----

#[test]
fn layer_out_of_range_names_the_tensor() {
    let want = adapter(4, 8.0, 1);
    let mut shapes = base();
    shapes.n_layer = 1;
    let err = want.validate(&shapes).unwrap_err();
    match err.kind() {
        LoraErrorKind::LayerOutOfRange {
            tensor,
            layer,
            n_layer,
        } => {
            assert_eq!((*layer, *n_layer), (1, 1));
            assert_eq!(tensor, &peft_name(1, LoraModule::Q, LoraHalf::A));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn module_missing_from_base_is_named() {
    let want = adapter(4, 8.0, 1);
    let mut shapes = BaseShapes::new(N_LAYER);
    shapes.set(0, LoraModule::Q, (HIDDEN, HIDDEN));
    let err = want.validate(&shapes).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::ModuleNotInBase { base, .. } if base == "model.layers.0.self_attn.k_proj.weight"),
        "{err}"
    );
}

#[test]
fn in_out_mismatch_with_base_names_both_shapes() {
    let want = adapter(4, 8.0, 1);
    let mut shapes = base();
    shapes.set(1, LoraModule::Up, (FFN + 1, HIDDEN));
    let err = want.validate(&shapes).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::BaseShapeMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("layers.1.mlp.up_proj.lora_A.weight' [4, 64]"),
        "{msg}"
    );
    assert!(msg.contains("lora_B.weight' [96, 4]"), "{msg}");
    assert!(msg.contains("[out 97, in 64]"), "{msg}");

    // The closure form, and the in side.
    let err = want
        .validate_with(N_LAYER, |_, m| {
            Some(if m == LoraModule::Down {
                (HIDDEN, 128)
            } else {
                out_in(m)
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("down_proj"), "{err}");
}

#[test]
fn validation_rechecks_hand_edited_targets() {
    let mut want = adapter(4, 8.0, 1);
    want.targets[0].b = CpuTensor::from_f32([HIDDEN, 5], vec![0.0; HIDDEN * 5]).unwrap();
    let err = want.validate(&base()).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::RankMismatch { .. }),
        "{err}"
    );
    let mut want = adapter(4, 8.0, 1);
    let dup = want.targets[0].clone();
    want.targets.push(dup);
    let err = want.validate(&base()).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::DuplicateTarget { .. }),
        "{err}"
    );
}

// ---- errors: PEFT ----

#[test]
fn peft_unsupported_modules_are_named() {
    for (name, module) in [
        ("base_model.model.lm_head.lora_A.weight", "lm_head"),
        (
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "embed_tokens",
        ),
        (
            "base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight",
            "qkv_proj",
        ),
    ] {
        let dir = peft_dir(
            "peft-unsupported",
            config(4, 8.0),
            &[(name, "F32", &[4, HIDDEN])],
        );
        let err = err_of(LoraAdapter::open(&dir));
        match err.kind() {
            LoraErrorKind::UnsupportedModule {
                module: m,
                found_in,
            } => {
                assert_eq!(m, module);
                assert!(found_in.contains(name));
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            err.to_string().contains("adapter_model.safetensors"),
            "{err}"
        );
    }
}

#[test]
fn peft_tensors_that_are_not_pairs_are_refused() {
    for name in [
        "base_model.model.model.layers.0.self_attn.q_proj.bias",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
        "base_model.model.model.layers.00.self_attn.q_proj.lora_A.weight",
        "base_model.model.vision.layers.0.self_attn.q_proj.lora_A.weight",
    ] {
        let dir = peft_dir(
            "peft-unexpected",
            config(4, 8.0),
            &[(name, "F32", &[4, HIDDEN])],
        );
        let err = err_of(LoraAdapter::open(&dir));
        assert!(
            matches!(err.kind(), LoraErrorKind::UnexpectedTensor { tensor, .. } if tensor == name),
            "{name}: {err}"
        );
    }
    let dora = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    let dir = peft_dir(
        "peft-dora-tensor",
        config(4, 8.0),
        &[(dora, "F32", &[HIDDEN])],
    );
    let err = err_of(LoraAdapter::open(&dir));
    assert!(
        matches!(err.kind(), LoraErrorKind::Unsupported { .. }),
        "{err}"
    );
}

#[test]
fn peft_ab_rank_mismatch_names_both() {
    let a = peft_name(0, LoraModule::Q, LoraHalf::A);
    let b = peft_name(0, LoraModule::Q, LoraHalf::B);
    let dir = peft_dir(
        "peft-ab",
        config(4, 8.0),
        &[(&a, "F32", &[4, HIDDEN]), (&b, "F32", &[HIDDEN, 8])],
    );
    let err = err_of(LoraAdapter::open(&dir));
    assert!(
        matches!(err.kind(), LoraErrorKind::RankMismatch { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("'{a}' is [4, 64]")) && msg.contains(&format!("'{b}' is [64, 8]")),
        "{msg}"
    );
}

#[test]
fn peft_rank_must_match_config_r_or_rank_pattern() {
    let err = err_of(LoraAdapter::open(q_only("peft-r", config(8, 8.0), 4)));
    match err.kind() {
        LoraErrorKind::ConfigRankMismatch {
            found,
            expected,
            rule,
            shape,
            ..
        } => {
            assert_eq!(
                (*found, *expected, shape.as_slice()),
                (4, 8, &[4, HIDDEN][..])
            );
            assert_eq!(rule, "r = 8");
        }
        other => panic!("{other:?}"),
    }
    let mut c = config(4, 8.0);
    c["rank_pattern"] = json!({"q_proj": 16});
    let err = err_of(LoraAdapter::open(q_only("peft-rank-pattern", c, 4)));
    assert!(
        err.to_string()
            .contains("rank_pattern['q_proj'] gives rank 16"),
        "{err}"
    );
}

#[test]
fn peft_missing_half_names_the_partner() {
    let a = peft_name(1, LoraModule::Gate, LoraHalf::A);
    let mut c = config(4, 8.0);
    c["target_modules"] = json!(["gate_proj"]);
    let dir = peft_dir("peft-half", c.clone(), &[(&a, "F32", &[4, HIDDEN])]);
    let err = err_of(LoraAdapter::open(&dir));
    assert!(
        matches!(err.kind(), LoraErrorKind::MissingHalf { present, missing } if *present == a && *missing == peft_name(1, LoraModule::Gate, LoraHalf::B)),
        "{err}"
    );
    let b = peft_name(1, LoraModule::Gate, LoraHalf::B);
    let dir = peft_dir("peft-half-b", c, &[(&b, "F32", &[FFN, 4])]);
    let err = err_of(LoraAdapter::open(&dir));
    assert!(
        matches!(err.kind(), LoraErrorKind::MissingHalf { missing, .. } if *missing == a),
        "{err}"
    );
}

#[test]
fn peft_missing_files_and_pickles() {
    let err = err_of(LoraAdapter::open("/nonexistent/kiln/adapter"));
    assert!(
        matches!(err.kind(), LoraErrorKind::MissingFile { .. }),
        "{err}"
    );

    let empty = temp_dir("peft-empty");
    let err = err_of(LoraAdapter::open(&empty));
    assert!(
        matches!(
            err.kind(),
            LoraErrorKind::MissingFile {
                what: "adapter_config.json"
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("adapter_config.json"), "{err}");

    let no_weights = temp_dir("peft-no-weights");
    std::fs::write(
        no_weights.join("adapter_config.json"),
        config(4, 8.0).to_string(),
    )
    .unwrap();
    let err = err_of(LoraAdapter::open(&no_weights));
    assert!(
        matches!(
            err.kind(),
            LoraErrorKind::MissingFile {
                what: "adapter_model.safetensors"
            }
        ),
        "{err}"
    );

    std::fs::write(no_weights.join("adapter_model.bin"), b"PK\x03\x04").unwrap();
    let err = err_of(LoraAdapter::open(&no_weights));
    assert!(
        matches!(err.kind(), LoraErrorKind::PickleNotSupported),
        "{err}"
    );
    assert!(err.to_string().contains("only"), "{err}");
    let err = err_of(LoraAdapter::open(no_weights.join("adapter_model.bin")));
    assert!(
        matches!(err.kind(), LoraErrorKind::PickleNotSupported),
        "{err}"
    );

    let stray = temp_dir("not-an-adapter").join("notes.txt");
    std::fs::write(&stray, "hello").unwrap();
    let err = err_of(LoraAdapter::open(&stray));
    assert!(
        matches!(err.kind(), LoraErrorKind::NotAnAdapter { .. }),
        "{err}"
    );
}

#[test]
fn peft_bad_json_and_bad_fields() {
    let dir = q_only("peft-bad-json", config(4, 8.0), 4);
    std::fs::write(dir.join("adapter_config.json"), "{\"r\": 4,").unwrap();
    let err = err_of(LoraAdapter::open(&dir));
    assert!(
        matches!(err.kind(), LoraErrorKind::ConfigJson { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("adapter_config.json"), "{err}");

    for (field, value) in [
        ("r", json!("four")),
        ("r", json!(-1)),
        ("lora_alpha", json!("big")),
        ("target_modules", json!(3)),
        ("use_rslora", json!("yes")),
        ("rank_pattern", json!(["q_proj"])),
    ] {
        let mut c = config(4, 8.0);
        c[field] = value;
        std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
        let err = err_of(LoraAdapter::open(&dir));
        assert!(
            matches!(err.kind(), LoraErrorKind::BadConfigField { .. }),
            "{field}: {err}"
        );
    }
}

#[test]
fn peft_features_kiln_cannot_honour_are_refused() {
    for (field, value) in [
        ("use_dora", json!(true)),
        ("modules_to_save", json!(["lm_head"])),
        ("lora_bias", json!(true)),
        ("peft_type", json!("IA3")),
        ("layer_replication", json!([[0, 2]])),
    ] {
        let mut c = config(4, 8.0);
        c[field] = value;
        let err = err_of(LoraAdapter::open(q_only("peft-unsupported-feature", c, 4)));
        assert!(
            matches!(err.kind(), LoraErrorKind::Unsupported { .. }),
            "{field}: {err}"
        );
    }
    let mut c = config(4, 8.0);
    c["alpha_pattern"] = json!({"^model\\.layers\\.[0-3]\\..*q_proj": 16});
    let err = err_of(LoraAdapter::open(q_only("peft-regex", c, 4)));
    assert!(
        matches!(
            err.kind(),
            LoraErrorKind::UnsupportedPattern {
                field: "alpha_pattern",
                ..
            }
        ),
        "{err}"
    );

    let mut c = config(4, 8.0);
    c["alpha_pattern"] = json!({"q_proj": 16, "self_attn.q_proj": 32});
    let err = err_of(LoraAdapter::open(q_only("peft-ambiguous", c.clone(), 4)));
    assert!(
        matches!(err.kind(), LoraErrorKind::AmbiguousPattern { .. }),
        "{err}"
    );
    // An exact path wins over suffixes, as in PEFT.
    c["alpha_pattern"]["model.layers.0.self_attn.q_proj"] = json!(4);
    let got = LoraAdapter::open(q_only("peft-exact", c, 4)).unwrap();
    assert_eq!(got.targets[0].scale, 1.0);
}

#[test]
fn peft_module_outside_target_modules_is_refused() {
    let mut c = config(4, 8.0);
    c["target_modules"] = json!(["v_proj"]);
    let err = err_of(LoraAdapter::open(q_only("peft-not-targeted", c.clone(), 4)));
    assert!(
        matches!(err.kind(), LoraErrorKind::UnexpectedTensor { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("target_modules"), "{err}");
    // A string is a regex to PEFT: kiln lets the tensors decide.
    c["target_modules"] = json!("all-linear");
    LoraAdapter::open(q_only("peft-all-linear", c, 4)).unwrap();
}

#[test]
fn rank_zero_is_refused() {
    let err = err_of(LoraAdapter::open(q_only("peft-r0", config(0, 8.0), 4)));
    assert!(
        matches!(err.kind(), LoraErrorKind::RankZero { .. }),
        "{err}"
    );
    let err = err_of(LoraAdapter::open(q_only("peft-t0", config(4, 8.0), 0)));
    assert!(
        matches!(err.kind(), LoraErrorKind::RankZero { .. }),
        "{err}"
    );
    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-r0",
        &lora_meta(),
        &gguf_q(0),
    )));
    assert!(
        matches!(err.kind(), LoraErrorKind::RankZero { .. }),
        "{err}"
    );
}

#[test]
fn non_finite_alpha_is_refused() {
    // JSON has no NaN; a number past f32's range is the way to get one.
    let err = err_of(LoraAdapter::open(q_only(
        "peft-alpha-inf",
        config(4, 1e39),
        4,
    )));
    assert!(
        matches!(err.kind(), LoraErrorKind::NonFiniteAlpha { .. }),
        "{err}"
    );
    for alpha in [f32::NAN, f32::INFINITY] {
        let mut meta = lora_meta();
        meta[3].1 = Value::F32(alpha);
        let err = err_of(LoraAdapter::open(gguf_with(
            "gguf-alpha-nan",
            &meta,
            &gguf_q(4),
        )));
        assert!(
            matches!(err.kind(), LoraErrorKind::NonFiniteAlpha { .. }),
            "{err}"
        );
    }
}

#[test]
fn peft_unsupported_dtype_is_named() {
    let a = peft_name(0, LoraModule::Q, LoraHalf::A);
    let b = peft_name(0, LoraModule::Q, LoraHalf::B);
    let dir = peft_dir(
        "peft-dtype",
        config(4, 8.0),
        &[(&a, "F32", &[4, HIDDEN]), (&b, "I32", &[HIDDEN, 4])],
    );
    let err = err_of(LoraAdapter::open(&dir));
    assert!(
        matches!(err.kind(), LoraErrorKind::UnsupportedDtype { tensor, .. } if *tensor == b),
        "{err}"
    );
}

#[test]
fn peft_f16_and_bf16_files_decode() {
    let a = peft_name(0, LoraModule::Q, LoraHalf::A);
    let b = peft_name(0, LoraModule::Q, LoraHalf::B);
    let dir = peft_dir(
        "peft-halfs",
        config(4, 8.0),
        &[(&a, "F16", &[4, HIDDEN]), (&b, "BF16", &[HIDDEN, 4])],
    );
    let got = LoraAdapter::open(&dir).unwrap();
    assert!(got.targets[0].b.as_f32().unwrap().iter().all(|&v| v == 0.0));
}

// ---- errors: GGUF ----

#[test]
fn gguf_that_is_not_a_lora_adapter_is_refused() {
    let mut meta = lora_meta();
    meta[1].1 = Value::String("model".into());
    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-model",
        &meta,
        &gguf_q(4),
    )));
    assert!(
        matches!(err.kind(), LoraErrorKind::NotAnAdapter { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("general.type is 'model'"), "{err}");

    meta.remove(1);
    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-no-type",
        &meta,
        &gguf_q(4),
    )));
    assert!(
        matches!(err.kind(), LoraErrorKind::NotAnAdapter { .. }),
        "{err}"
    );

    let mut meta = lora_meta();
    meta[2].1 = Value::String("control_vector".into());
    let err = err_of(LoraAdapter::open(gguf_with("gguf-cvec", &meta, &gguf_q(4))));
    assert!(
        err.to_string().contains("adapter.type is 'control_vector'"),
        "{err}"
    );

    let mut meta = lora_meta();
    meta.push((
        "adapter.alora.invocation_tokens",
        Value::Array(kiln_loaders::ValueType::U32, vec![Value::U32(1)]),
    ));
    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-alora",
        &meta,
        &gguf_q(4),
    )));
    assert!(
        matches!(err.kind(), LoraErrorKind::Unsupported { .. }),
        "{err}"
    );

    let mut meta = lora_meta();
    meta[3].1 = Value::String("16".into());
    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-alpha-str",
        &meta,
        &gguf_q(4),
    )));
    assert!(matches!(err.kind(), LoraErrorKind::Load(_)), "{err}");
}

#[test]
fn gguf_unsupported_modules_are_named() {
    for (name, module) in [
        ("token_embd.weight.lora_a", "token_embd"),
        ("output.weight.lora_b", "output"),
        ("blk.0.attn_qkv.weight.lora_a", "attn_qkv"),
    ] {
        let t = [(name, DType::F32, vec![4, HIDDEN], zeros(&[4, HIDDEN]))];
        let err = err_of(LoraAdapter::open(gguf_with(
            "gguf-unsupported",
            &lora_meta(),
            &t,
        )));
        assert!(
            matches!(err.kind(), LoraErrorKind::UnsupportedModule { module: m, .. } if m == module),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
    let t = [(
        "blk.0.attn_norm.weight",
        DType::F32,
        vec![HIDDEN],
        zeros(&[HIDDEN]),
    )];
    let err = err_of(LoraAdapter::open(gguf_with("gguf-norm", &lora_meta(), &t)));
    assert!(
        matches!(err.kind(), LoraErrorKind::UnexpectedTensor { .. }),
        "{err}"
    );
}

#[test]
fn gguf_pair_errors_name_the_tensors() {
    let mut t = gguf_q(4);
    t[1].2 = vec![HIDDEN, 8];
    t[1].3 = zeros(&[HIDDEN, 8]);
    let err = err_of(LoraAdapter::open(gguf_with("gguf-ab", &lora_meta(), &t)));
    assert!(
        matches!(err.kind(), LoraErrorKind::RankMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("'blk.0.attn_q.weight.lora_b' is [64, 8]"),
        "{err}"
    );

    let t = gguf_q(4);
    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-half",
        &lora_meta(),
        &t[..1],
    )));
    assert!(
        matches!(err.kind(), LoraErrorKind::MissingHalf { missing, .. } if missing == "blk.0.attn_q.weight.lora_b"),
        "{err}"
    );

    let mut t = gguf_q(32);
    t[0].1 = DType::Q4_0;
    t[0].3 = vec![0; 32 * 2 * 18];
    let err = err_of(LoraAdapter::open(gguf_with("gguf-q4", &lora_meta(), &t)));
    assert!(
        matches!(err.kind(), LoraErrorKind::UnsupportedDtype { .. }),
        "{err}"
    );

    let err = err_of(LoraAdapter::open(gguf_with(
        "gguf-empty",
        &lora_meta(),
        &[],
    )));
    assert!(matches!(err.kind(), LoraErrorKind::NoTargets), "{err}");
}

#[test]
fn truncated_gguf_is_a_load_error() {
    let path = gguf_with("gguf-trunc", &lora_meta(), &gguf_q(4));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = err_of(LoraAdapter::open(&path));
    assert!(matches!(err.kind(), LoraErrorKind::Load(_)), "{err}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
}

#[test]
fn writers_refuse_what_the_format_cannot_hold() {
    let want = adapter(4, 8.0, 5);
    let dir = temp_dir("write-refuse");
    let err = write_peft(dir.join("p"), &want, DType::Q8_0).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::Unwritable { .. }),
        "{err}"
    );
    // Q8_0 needs rank-long rows of lora_b to be whole 32-blocks.
    let err = write_gguf(dir.join("a.gguf"), &want, DType::Q8_0).unwrap_err();
    assert!(
        matches!(err.kind(), LoraErrorKind::Unwritable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("lora_b"), "{err}");
    assert!(!Path::new(&dir.join("a.gguf")).exists());
}
