//! Synthetic models: `PRESET:QUANT` parsing, the tensor types ANCHORS.md
//! describes, and a written file that kiln loads, tokenizes with and runs
//! (a tiny preset, so the test stays fast; the real presets only differ in
//! sizes).

use kiln::loaders::{EncodeOptions, GgufFile};
use kiln::synth::{self, Preset, SynthSpec, PRESETS, QUANTS, VOCAB};
use kiln::{DType, Device, Model, ModelOptions};

const TINY: Preset = Preset {
    name: "tiny",
    n_embd: 256,
    n_layer: 2,
    n_head: 4,
    n_head_kv: 2,
    n_ff: 512,
    n_ctx: 128,
    rope_base: 10_000.0,
    tied: false,
};

#[test]
fn specs_parse_and_bad_ones_say_why() {
    let spec: SynthSpec = "llama-7b:q4_0".parse().expect("parses");
    assert_eq!((spec.preset.n_embd, spec.quant), (4096, DType::Q4_0));
    let spec: SynthSpec = "LLAMA-8B:Q4_K".parse().expect("case-insensitive");
    assert_eq!((spec.preset.n_ff, spec.quant), (14336, DType::Q4K));
    assert_eq!(spec.to_string(), "llama-8b:q4_k");
    assert_eq!(PRESETS.len(), 5);
    for bad in ["llama-7b", "llama-9b:q4_0", "llama-7b:q3_k", ""] {
        let err = bad.parse::<SynthSpec>().expect_err(bad).to_string();
        assert!(err.contains('`'), "{bad}: {err}");
    }
}

#[test]
fn every_quant_writes_a_model_kiln_runs() {
    let dir = std::env::temp_dir().join(format!("kiln-synth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for quant in QUANTS {
        let spec = SynthSpec {
            preset: TINY,
            quant,
        };
        let path = dir.join(format!("{}.gguf", quant.name()));
        synth::write(spec, 1, &path).expect("writes");
        let file = GgufFile::open(&path).expect("opens");
        let dtype = |name: &str| file.tensor(name).map(|t| t.desc().dtype);
        assert_eq!(dtype("token_embd.weight"), Some(DType::Q8_0));
        assert_eq!(dtype("output.weight"), Some(DType::Q6K));
        assert_eq!(dtype("blk.1.ffn_down.weight"), Some(quant));
        assert_eq!(dtype("blk.0.attn_norm.weight"), Some(DType::F32));

        let mut model = Model::load(
            &path,
            &Device::Cpu,
            ModelOptions {
                ctx: 16,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(model.vocab_size(), VOCAB);
        let ids = model
            .tokenizer()
            .encode("synthetic words", EncodeOptions::default())
            .expect("encodes");
        assert_eq!(
            model.tokenizer().decode(&ids).expect("decodes"),
            "synthetic words"
        );
        let logits = model.logits(&ids, 0).expect("runs");
        assert!(logits.iter().all(|v| v.is_finite()), "{spec}");
        std::fs::remove_file(&path).ok();
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn k_quants_fall_back_where_rows_are_not_whole_blocks() {
    assert_eq!(synth::fit(DType::Q4K, 576), DType::Q5_0);
    assert_eq!(synth::fit(DType::Q6K, 576), DType::Q8_0);
    assert_eq!(synth::fit(DType::Q4K, 1536), DType::Q4K);
    assert_eq!(synth::fit(DType::Q4_0, 576), DType::Q4_0);
}

/// `with_file` hands over a written model and leaves no file behind, also
/// when what it ran failed.
#[test]
fn with_file_loads_and_removes_the_file_whatever_happens() {
    let spec = SynthSpec {
        preset: TINY,
        quant: DType::Q4_1,
    };
    let mut seen = None;
    let layers = synth::with_file(
        spec,
        3,
        |path| -> Result<usize, Box<dyn std::error::Error>> {
            seen = Some(path.to_path_buf());
            let model = Model::load(path, &Device::Cpu, ModelOptions::default())?;
            Ok(model.config().n_layer)
        },
    )
    .expect("builds and loads");
    assert_eq!(layers, TINY.n_layer);
    let path = seen.take().expect("a path was handed over");
    assert!(!path.exists(), "{path:?} left behind");
    let failed = synth::with_file(spec, 3, |path| -> Result<(), Box<dyn std::error::Error>> {
        seen = Some(path.to_path_buf());
        Err("the caller's own failure".into())
    });
    assert_eq!(
        failed
            .expect_err("the closure's error comes back")
            .to_string(),
        "the caller's own failure"
    );
    assert!(!seen.expect("a path").exists());
}
