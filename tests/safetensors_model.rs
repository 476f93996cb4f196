//! HF checkpoints through `Model::load`: a tiny model written both as GGUF
//! (LLaMA's q and k rows permuted for normal rope, as llama.cpp's converter
//! does) and as an HF directory (HF names and row order, `config.json`,
//! `tokenizer.json`) from the same values, in F32, F16 and BF16, in one
//! file or sharded. Every position's logits agree with the GGUF model's on
//! every device; a GGUF that skipped the permutation does not, so the test
//! tells the rope orders apart.

use std::path::{Path, PathBuf};

use kiln::engine::testing::devices;
use kiln::kernels::rope::RopeMode;
use kiln::kernels::DType;
use kiln::loaders::{EncodeOptions, Message};
use kiln::models::testing::{TinyDtypes, TinySpec};
use kiln::models::Arch;
use kiln::{Device, Model, ModelOptions};

const TOKENS: usize = 16;

/// Budget relative to the largest logit. The models hold the same values
/// (on a grid exact in BF16, F16 and F32; F32 matrices stay F32 on the
/// device, the others are stored as F16), so logits differ only where sums
/// run in a different order (the two rope orders' q·k, F32's 4-value
/// chunks against F16's 8): ~1e-7 relative. A wrong permutation moves them
/// by about their own scale.
const TOLERANCE: f32 = 1e-4;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("kiln-safetensors-{}", std::process::id()))
        .join(name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn logits(path: &Path, device: &Device) -> (Model, Vec<f32>) {
    let mut model = Model::load(
        path,
        device,
        ModelOptions {
            ctx: 32,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tokens: Vec<u32> = (0..TOKENS as u32).map(|i| (i * 37 + 5) % 300).collect();
    let logits = model.logits_all(&tokens, 0).expect("runs");
    (model, logits)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(arch: Arch, tied: bool) {
    let name = arch.name();
    let dir = temp_dir(name);
    let spec = TinySpec {
        tied,
        dtypes: TinyDtypes::all(DType::F16),
        ..TinySpec::new(arch)
    };
    let gguf = dir.join("model.gguf");
    std::fs::write(&gguf, spec.gguf().expect("writes")).expect("write");
    // Each dtype in its own layout, each opened by a different path form.
    let mut checkpoints = Vec::new();
    for (dtype, shards, file) in [
        (DType::F32, 1, Some("model.safetensors")),
        (DType::F16, 2, None),
        (DType::BF16, 3, Some("config.json")),
    ] {
        let hf = dir.join(format!("hf-{dtype}"));
        spec.write_hf(&hf, dtype, shards).expect("writes");
        checkpoints.push(file.map_or(hf.clone(), |f| hf.join(f)));
    }
    let unpermuted = dir.join("unpermuted.gguf");
    let wrong = TinySpec {
        permute_qk: false,
        ..spec.clone()
    };
    std::fs::write(&unpermuted, wrong.gguf().expect("writes")).expect("write");

    for device in devices(name) {
        let (gguf_model, want) = logits(&gguf, &device);
        let tol = TOLERANCE * want.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        for path in &checkpoints {
            let (model, got) = logits(path, &device);
            let d = max_diff(&got, &want);
            eprintln!(
                "{name} {} on {}: max |hf - gguf| = {d:.2e} (budget {tol:.2e})",
                path.display(),
                device.name()
            );
            assert!(d <= tol, "{}: {d} > {tol}", path.display());
            assert_eq!(model.config().rope.mode, RopeMode::Neox);

            // The tokenizer and chat template come from tokenizer.json and
            // tokenizer_config.json, and agree with the GGUF's tokenizer.
            let opts = EncodeOptions::default();
            let text = "the quick brown fox<|endoftext|>";
            assert_eq!(
                model.tokenizer().encode(text, opts).expect("encodes"),
                gguf_model.tokenizer().encode(text, opts).expect("encodes")
            );
            assert!(model.tokenizer().is_eog(0));
            let chat = model
                .render_chat(&[Message::new("user", "hi")], true)
                .expect("renders");
            assert_eq!(chat, "<user>hi<assistant>");
        }
        if arch == Arch::Llama {
            let (_, got) = logits(&unpermuted, &device);
            let d = max_diff(&got, &want);
            assert!(
                d > 100.0 * tol,
                "HF row order under normal rope should be wrong, yet differs by only {d}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn llama_safetensors_match_the_gguf() {
    check(Arch::Llama, false);
}

#[test]
fn qwen2_safetensors_match_the_gguf() {
    check(Arch::Qwen2, true);
}
