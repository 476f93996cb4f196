//! Bad models and absurd requests give clear, typed errors, never panics:
//! broken GGUF and HF checkpoints (a missing tensor, a wrong shape, an
//! architecture or quant type kiln does not run, a tensor it would have to
//! ignore), requests past the context (10^9 new tokens, prompt + max tokens
//! over it, a cache too big to allocate), an empty prompt, a token outside
//! the vocabulary, and a device that does not exist. Each message names the
//! culprit. Models are tiny ones written here (`kiln_models::testing`).

use std::path::{Path, PathBuf};

use kiln::kernels::DType;
use kiln::loaders::{ErrorKind, Metadata, Value};
use kiln::models::testing::{TinySpec, TinyTensor};
use kiln::models::{Arch, ModelError};
use kiln::{Device, EngineError, Error, GenerateOptions, Model, ModelOptions};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("kiln-errors-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn load(path: &Path, ctx: usize) -> Result<Model, Error> {
    Model::load(
        path,
        &Device::Cpu,
        ModelOptions {
            ctx,
            ..Default::default()
        },
    )
}

/// The model error inside `err`, after checking its message names the
/// file and `needle`.
fn model_error(err: Error, path: &Path, needle: &str) -> ModelError {
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    match err {
        Error::Model { source, .. } => *source,
        other => panic!("not a model error: {other:?}"),
    }
}

#[test]
fn broken_ggufs_name_what_is_wrong() {
    let dir = temp_dir("gguf");
    let spec = TinySpec::new(Arch::Llama);
    let gguf = |name: &str, edit: &dyn Fn(&mut Vec<TinyTensor>, &mut Metadata)| {
        let bytes = spec.gguf_with(|t, m| edit(t, m)).expect("writes");
        write(&dir, name, bytes)
    };

    let path = gguf("missing.gguf", &|t, _| {
        t.retain(|t| t.name != "blk.1.ffn_up.weight")
    });
    let err = load(&path, 0).err().expect("missing tensor");
    assert!(matches!(
        model_error(err, &path, "blk.1.ffn_up.weight"),
        ModelError::MissingTensor { .. }
    ));

    // [kv_dim, d] written as [d, kv_dim]: same size, wrong shape.
    let path = gguf("shape.gguf", &|t, _| {
        let k = t
            .iter_mut()
            .find(|t| t.name == "blk.0.attn_k.weight")
            .expect("k");
        k.shape.reverse();
    });
    let err = load(&path, 0).err().expect("wrong shape");
    assert!(matches!(
        model_error(err, &path, "blk.0.attn_k.weight"),
        ModelError::TensorShape { expected, got, .. } if expected == [32, 64] && got == [64, 32]
    ));

    let path = gguf("mamba.gguf", &|_, m| {
        m.insert("general.architecture", Value::String("mamba".into()));
    });
    let err = load(&path, 0).err().expect("mamba");
    assert!(matches!(
        model_error(err, &path, "mamba"),
        ModelError::UnsupportedArchitecture { arch, .. } if arch == "mamba"
    ));

    // IQ2_XXS has no kiln matmul kernel (its rows are 256 = n_ff long).
    let path = gguf("iq2.gguf", &|t, _| {
        for t in t.iter_mut().filter(|t| t.name.ends_with("ffn_down.weight")) {
            t.dtype = DType::IQ2XXS;
        }
    });
    let err = load(&path, 0).err().expect("IQ2_XXS");
    assert!(matches!(
        model_error(err, &path, "blk.0.ffn_down.weight"),
        ModelError::TensorDType {
            dtype: DType::IQ2XXS,
            ..
        }
    ));

    let path = gguf("no-layers.gguf", &|_, m| {
        m.insert("llama.block_count", Value::U32(0));
    });
    let err = load(&path, 0).err().expect("zero layers");
    model_error(err, &path, "llama.block_count");

    // Llama 3.1's rope scaling lives in a tensor: refused, not ignored.
    let path = gguf("rope-freqs.gguf", &|t, _| {
        let mut extra = t[1].clone();
        extra.name = "rope_freqs.weight".into();
        t.push(extra);
    });
    let err = load(&path, 0).err().expect("rope_freqs");
    assert!(matches!(
        model_error(err, &path, "rope_freqs.weight"),
        ModelError::UnusedTensor { .. }
    ));

    let path = write(&dir, "text.gguf", b"not a model at all".to_vec());
    let err = load(&path, 0).err().expect("not GGUF");
    eprintln!("{err}");
    assert!(matches!(&err, Error::Load(e) if matches!(e.kind, ErrorKind::BadMagic { .. })));
    let err = load(&dir.join("absent.gguf"), 0).err().expect("absent");
    assert!(err.to_string().contains("absent.gguf"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_hf_checkpoints_name_what_is_wrong() {
    let spec = TinySpec::new(Arch::Qwen2);
    let hf = |name: &str| {
        let dir = temp_dir(name);
        spec.write_hf(&dir, DType::F16, 1).expect("writes");
        dir
    };

    let dir = hf("hf-mamba");
    let config = spec.config_json().replace("\"qwen2\"", "\"mamba\"");
    std::fs::write(dir.join("config.json"), config).expect("write");
    let err = load(&dir, 0).err().expect("mamba");
    assert!(matches!(
        model_error(err, &dir, "mamba"),
        ModelError::UnsupportedArchitecture { .. }
    ));

    // Untied, yet no lm_head: named by its HF name.
    let dir = hf("hf-no-head");
    let mut small = spec.clone();
    small.tied = true;
    small.write_hf(&dir, DType::F16, 1).expect("writes");
    std::fs::write(dir.join("config.json"), spec.config_json()).expect("write");
    let err = load(&dir, 0).err().expect("no lm_head");
    assert!(matches!(
        model_error(err, &dir, "lm_head.weight"),
        ModelError::MissingTensor { .. }
    ));

    // A config a size off from the tensors: the shape error names the HF tensor.
    let dir = hf("hf-shape");
    let config = spec
        .config_json()
        .replace("\"intermediate_size\": 256", "\"intermediate_size\": 128");
    std::fs::write(dir.join("config.json"), config).expect("write");
    let err = load(&dir, 0).err().expect("shape");
    assert!(matches!(
        model_error(err, &dir, "model.layers.0.mlp.gate_proj.weight"),
        ModelError::TensorShape { .. }
    ));

    let dir = hf("hf-no-tokenizer");
    std::fs::remove_file(dir.join("tokenizer.json")).expect("remove");
    let err = load(&dir, 0).err().expect("no tokenizer");
    eprintln!("{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let dir = temp_dir("hf-empty");
    let err = load(&dir, 0).err().expect("empty dir");
    eprintln!("{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
    for name in [
        "hf-mamba",
        "hf-no-head",
        "hf-shape",
        "hf-no-tokenizer",
        "hf-empty",
    ] {
        let _ = std::fs::remove_dir_all(temp_dir(name));
    }
}

#[test]
fn absurd_requests_are_refused_upfront() {
    let dir = temp_dir("requests");
    let spec = TinySpec::new(Arch::Llama);
    let path = write(&dir, "tiny.gguf", spec.gguf().expect("writes"));
    let mut model = load(&path, 64).expect("loads");
    let prompt = [1, 2, 3];
    let opts = |max_tokens| GenerateOptions {
        max_tokens,
        ..GenerateOptions::default()
    };

    let err = model.generate(&prompt, opts(1_000_000_000)).err();
    assert!(
        matches!(
            err,
            Some(Error::ContextOverflow {
                needed: 1_000_000_003,
                ctx: 64,
                ..
            })
        ),
        "{err:?}"
    );
    eprintln!("{}", err.expect("error"));
    let long: Vec<u32> = (0..60).collect();
    let err = model.generate(&long, opts(10)).err();
    assert!(
        matches!(err, Some(Error::ContextOverflow { needed: 70, .. })),
        "{err:?}"
    );
    assert!(matches!(
        model.generate(&[], opts(8)).err(),
        Some(Error::Empty)
    ));
    assert!(matches!(model.logits(&[], 0), Err(Error::Empty)));
    assert!(matches!(
        model.logits(&[1, 300], 0),
        Err(Error::BadToken {
            id: 300,
            vocab: 300
        })
    ));
    assert!(matches!(
        model.logits(&[1, 2], 63),
        Err(Error::ContextOverflow { needed: 65, .. })
    ));
    assert!(matches!(
        model.logits(&[1], usize::MAX),
        Err(Error::ContextOverflow { .. })
    ));
    // The model still works after all that.
    assert_eq!(model.logits(&prompt, 0).expect("runs").len(), 300);

    assert!(matches!(
        load(&path, usize::MAX).err(),
        Some(Error::BadContext { .. })
    ));
    // 2^31 - 1 positions of 8 heads × 64: a 4 TiB cache per layer, refused
    // by the allocator (not an abort). Needs the default overcommit policy,
    // which refuses requests beyond RAM + swap.
    let big = TinySpec {
        n_embd: 512,
        n_head: 8,
        n_head_kv: 8,
        ..TinySpec::new(Arch::Llama)
    };
    let path = write(&dir, "big-heads.gguf", big.gguf().expect("writes"));
    let err = load(&path, i32::MAX as usize).err().expect("too big");
    eprintln!("{err}");
    assert!(
        matches!(&err, Error::Model { source, .. } if matches!(**source, ModelError::Alloc { .. })),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_device_is_a_typed_error() {
    for spec in ["99", "no such adapter, surely"] {
        match Device::open(spec) {
            Err(EngineError::NoAdapter { spec: s, .. }) => assert_eq!(s, spec),
            Err(other) => panic!("{spec}: {other}"),
            Ok(d) => panic!("{spec} opened {}", d.name()),
        }
    }
}
