//! `kiln lora merge` and `kiln lora info` end to end on a tiny base and
//! adapters the test writes: the CLI's output equals the library's merge
//! byte for byte, `:SCALE` reaches the multiplier, `-o` refuses an existing
//! file without `--force`, failures name the file and leave no `.part`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_kernels::{CpuTensor, DType};
use kiln_loaders::lora::{merge_gguf_to, write_gguf, write_peft, MergeOutType, MergeSource};
use kiln_loaders::{GgufFile, GgufWriter, LoraAdapter, LoraFormat, LoraModule, LoraTarget, Value};

const HIDDEN: usize = 32;
const FFN: usize = 64;
const N_LAYER: usize = 2;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-cli-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic values in [-1, 1) (a 64-bit LCG; no rand in this crate).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn out_in(m: LoraModule) -> (usize, usize) {
    match m {
        LoraModule::Gate | LoraModule::Up => (FFN, HIDDEN),
        LoraModule::Down => (HIDDEN, FFN),
        _ => (HIDDEN, HIDDEN),
    }
}

/// A Q8_0 base: every projection of two blocks, plus F32 norms.
fn write_base(path: &Path) {
    let mut w = GgufWriter::new();
    // Not LLaMA, so adapters merge without the q/k row permutation.
    w.add("general.architecture", Value::String("qwen2".into()))
        .unwrap();
    w.add("general.name", Value::String("cli merge base".into()))
        .unwrap();
    let mut seed = 0;
    for layer in 0..N_LAYER {
        let norm = values(seed, HIDDEN);
        let bytes = kiln_kernels::quant::quantize(DType::F32, &norm).unwrap();
        w.add_tensor(
            format!("blk.{layer}.attn_norm.weight"),
            DType::F32,
            &[HIDDEN],
            bytes,
        )
        .unwrap();
        for m in LoraModule::ALL {
            seed += 1;
            let (out, n_in) = out_in(m);
            let bytes =
                kiln_kernels::quant::quantize(DType::Q8_0, &values(seed, out * n_in)).unwrap();
            w.add_tensor(m.gguf_weight(layer), DType::Q8_0, &[out, n_in], bytes)
                .unwrap();
        }
    }
    w.write(path).unwrap();
}

fn adapter(name: &str, rank: usize, modules: &[LoraModule], seed: u64) -> LoraAdapter {
    let alpha = 2.0 * rank as f32;
    let mut targets = Vec::new();
    for layer in 0..N_LAYER {
        for (i, &m) in modules.iter().enumerate() {
            let (out, n_in) = out_in(m);
            let s = seed * 100 + (layer * 10 + i) as u64;
            let a = CpuTensor::from_f32([rank, n_in], values(s, rank * n_in)).unwrap();
            let b = CpuTensor::from_f32([out, rank], values(s + 50, out * rank)).unwrap();
            targets.push(LoraTarget::new(layer, m, a, b, alpha / rank as f32).unwrap());
        }
    }
    let mut adapter = LoraAdapter::new(name, LoraFormat::Peft, alpha, targets).unwrap();
    adapter.architecture = Some("qwen2".into());
    adapter
}

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("kiln runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn no_part_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part"), "left behind: {name}");
    }
}

#[test]
fn merge_writes_what_the_library_writes() {
    let dir = temp_dir("merge");
    let base = dir.join("base.gguf");
    write_base(&base);
    let peft = dir.join("peft-qv");
    write_peft(
        &peft,
        &adapter("qv", 4, &[LoraModule::Q, LoraModule::V], 1),
        DType::F32,
    )
    .unwrap();
    let gguf = dir.join("all.gguf");
    write_gguf(&gguf, &adapter("all", 8, &LoraModule::ALL, 2), DType::F16).unwrap();
    let out = dir.join("merged.gguf");

    let spec = format!("{}:0.5", s(&gguf));
    let o = kiln(&["lora", "merge", s(&base), s(&peft), &spec, "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("merged 14 tensors"), "{stderr}");
    assert!(stderr.contains("14 x q8_0 -> f16"), "{stderr}");

    // The same merge through the library, to memory.
    let sources = [
        MergeSource::new(LoraAdapter::open(&peft).unwrap(), 1.0),
        MergeSource::new(LoraAdapter::open(&gguf).unwrap(), 0.5),
    ];
    let mut want = Vec::new();
    let base_file = GgufFile::open(&base).unwrap();
    merge_gguf_to(&base_file, &sources, MergeOutType::F16, &mut want).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), want);
    let merged = GgufFile::open(&out).unwrap();
    assert_eq!(merged.weights().len(), base_file.tensors().len());
    assert_eq!(
        merged
            .metadata()
            .get_f64("general.lora.merged.1.multiplier"),
        Some(0.5)
    );

    // --outtype same keeps Q8_0.
    let same = dir.join("same.gguf");
    let o = kiln(&[
        "lora",
        "merge",
        s(&base),
        &spec,
        "-o",
        s(&same),
        "--outtype",
        "same",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = GgufFile::open(&same).unwrap();
    assert_eq!(
        f.tensor("blk.1.ffn_down.weight").unwrap().dtype,
        DType::Q8_0
    );
    no_part_files(&dir);
}

#[test]
fn an_existing_output_needs_force() {
    let dir = temp_dir("force");
    let base = dir.join("base.gguf");
    write_base(&base);
    let a = dir.join("a.gguf");
    write_gguf(&a, &adapter("a", 4, &[LoraModule::K], 3), DType::F32).unwrap();
    let out = dir.join("out.gguf");
    std::fs::write(&out, b"keep me").unwrap();

    let o = kiln(&["lora", "merge", s(&base), s(&a), "-o", s(&out)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("out.gguf")
            && stderr.contains("already exists")
            && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");

    let o = kiln(&["lora", "merge", s(&base), s(&a), "-o", s(&out), "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(GgufFile::open(&out).is_ok());
    no_part_files(&dir);
}

#[test]
fn bad_inputs_are_named() {
    let dir = temp_dir("bad");
    let base = dir.join("base.gguf");
    write_base(&base);
    let out = dir.join("out.gguf");
    let fails = |args: &[&str], needles: &[&str]| {
        let o = kiln(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: no '{n}' in {stderr}");
        }
        assert!(!out.exists());
        no_part_files(&dir);
    };

    let missing = dir.join("missing-adapter");
    fails(
        &["lora", "merge", s(&base), s(&missing), "-o", s(&out)],
        &["missing-adapter", "not found"],
    );
    let a = dir.join("a.gguf");
    write_gguf(&a, &adapter("a", 4, &[LoraModule::Q], 4), DType::F32).unwrap();
    fails(
        &[
            "lora",
            "merge",
            s(&dir.join("nobase.gguf")),
            s(&a),
            "-o",
            s(&out),
        ],
        &["nobase.gguf"],
    );
    fails(
        &[
            "lora",
            "merge",
            s(&base),
            s(&a),
            "-o",
            s(&out),
            "--outtype",
            "q4_0",
        ],
        &["q4_0", "f16, f32 or same"],
    );
    fails(
        &[
            "lora",
            "merge",
            s(&base),
            &format!("{}:nan", s(&a)),
            "-o",
            s(&out),
        ],
        &["not a finite number"],
    );
    // An adapter for a wider model: both shapes and the base weight named.
    let wide = dir.join("wide.gguf");
    let t = LoraTarget::new(
        0,
        LoraModule::Q,
        CpuTensor::from_f32([4, 64], values(9, 256)).unwrap(),
        CpuTensor::from_f32([64, 4], values(10, 256)).unwrap(),
        1.0,
    )
    .unwrap();
    let mut w = LoraAdapter::new("wide", LoraFormat::Gguf, 4.0, vec![t]).unwrap();
    w.architecture = Some("qwen2".into());
    write_gguf(&wide, &w, DType::F32).unwrap();
    fails(
        &["lora", "merge", s(&base), s(&wide), "-o", s(&out)],
        &["shape mismatch", "blk.0.attn_q.weight", "[4, 64]"],
    );
}

#[test]
fn info_describes_an_adapter() {
    let dir = temp_dir("info");
    let peft = dir.join("my-lora");
    let mut a = adapter("my-lora", 8, &[LoraModule::Q, LoraModule::Down], 5);
    a.base_model = Some("tiny/base".into());
    write_peft(&peft, &a, DType::F32).unwrap();

    let o = kiln(&["lora", "info", s(&peft)]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for needle in [
        "PEFT",
        "tiny/base",
        "rank          8",
        "alpha         16",
        "scale         2",
        "targets       4 in 2 layers",
        "attn_q",
        "ffn_down",
        "layers 0-1",
    ] {
        assert!(stdout.contains(needle), "no '{needle}' in\n{stdout}");
    }

    let o = kiln(&["lora", "info", "--json", s(&peft)]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["format"], "peft");
    assert_eq!(j["rank"], 8);
    assert_eq!(j["modules"][0]["module"], "attn_q");
    assert_eq!(j["modules"][1]["layers"], serde_json::json!([0, 1]));

    let o = kiln(&["lora", "info", s(&dir.join("nothing"))]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing"));
}

/// `kiln run --lora` and `kiln bench --lora-rank` on a synthetic model of
/// SmolLM2-135M's shapes: an adapter at scale 0 leaves greedy text as the
/// base's, one that does not fit the base is refused naming its file, and
/// bench labels its rows with the adapter it stacked.
#[test]
fn run_and_bench_take_adapters() {
    let dir = temp_dir("run");
    let base = dir.join("base.gguf");
    let o = kiln(&["synth", "smollm2-135m:q4_1", "-o", s(&base)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A rank-4 adapter on layer 0's q product (576 x 576).
    let rank = 4;
    let a = CpuTensor::from_f32([rank, 576], values(1, rank * 576)).unwrap();
    let b = CpuTensor::from_f32([576, rank], values(2, 576 * rank)).unwrap();
    let target = LoraTarget::new(0, LoraModule::Q, a, b, 2.0).unwrap();
    let mut fits = LoraAdapter::new("fits", LoraFormat::Peft, 8.0, vec![target]).unwrap();
    fits.architecture = Some("llama".into());
    let fits_path = dir.join("fits.gguf");
    write_gguf(&fits_path, &fits, DType::F32).unwrap();

    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "-m",
            s(&base),
            "--device",
            "cpu",
            "--temp",
            "0",
            "-n",
            "4",
        ];
        args.extend_from_slice(extra);
        args.push("Hello");
        let o = kiln(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let plain = run(&[]);
    let off = format!("{}:0", s(&fits_path));
    let zero = run(&["--lora", &off]);
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        String::from_utf8_lossy(&zero.stdout)
    );
    assert!(
        String::from_utf8_lossy(&zero.stderr).contains("fits"),
        "the adapter is reported: {}",
        String::from_utf8_lossy(&zero.stderr)
    );

    // The tiny tests' adapter has 32-wide products: refused, file named.
    let wrong = dir.join("wrong.gguf");
    write_gguf(
        &wrong,
        &adapter("wrong", 4, &[LoraModule::Q], 3),
        DType::F32,
    )
    .unwrap();
    let o = kiln(&[
        "run",
        "-m",
        s(&base),
        "--device",
        "cpu",
        "-n",
        "1",
        "--lora",
        s(&wrong),
        "Hi",
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("wrong.gguf"), "{stderr}");

    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "-m",
            s(&base),
            "--device",
            "cpu",
            "-p",
            "0",
            "-n",
            "2",
        ];
        args.extend_from_slice(extra);
        kiln(&args)
    };
    let o = bench(&["-r", "1", "--lora-rank", "4", "--lora-modules", "q,v"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("tg2 +lora r4"), "{stdout}");
    let o = bench(&["--lora-rank", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lora-rank"));
    let _ = std::fs::remove_dir_all(&dir);
}
