//! `Model::decode_batch` on a tiny model written here: rows in their own
//! cache slots give the logits each sequence gets alone through
//! `Model::logits`, and bad batches are typed errors.

use kiln::models::testing::TinySpec;
use kiln::models::Arch;
use kiln::{BatchRow, Device, Error, Model, ModelOptions, MAX_BATCH};

fn model(slots: usize) -> Model {
    let dir = std::env::temp_dir().join(format!("kiln-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tiny.gguf");
    if !path.exists() {
        // Written aside and renamed: tests run in parallel.
        let bytes = TinySpec::new(Arch::Llama).gguf().expect("writes");
        let part = dir.join(format!("tiny.{:?}.part", std::thread::current().id()));
        std::fs::write(&part, bytes).expect("write");
        std::fs::rename(&part, &path).expect("rename");
    }
    let options = ModelOptions {
        ctx: 16,
        slots,
        ..ModelOptions::default()
    };
    Model::load(&path, &Device::Cpu, options).expect("loads")
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(err < 1e-4, "max difference {err}");
}

#[test]
fn each_row_gets_its_own_sequences_logits() {
    let prompts: [&[u32]; 3] = [&[5, 6, 7], &[40, 41], &[9, 8, 7, 6, 5]];
    let next = [11u32, 12, 13];
    let mut batched = model(3);
    let mut alone: Vec<Vec<f32>> = Vec::new();
    for (slot, prompt) in prompts.iter().enumerate() {
        let mut m = model(1);
        let first = m.logits(prompt, 0).expect("prompt");
        close(&batched.logits_in(slot, prompt, 0).expect("prompt"), &first);
        alone.push(m.logits(&[next[slot]], prompt.len()).expect("step"));
    }
    // Rows out of slot order; three rows run padded to four.
    let order = [2, 0, 1];
    let rows: Vec<BatchRow> = order
        .iter()
        .map(|&slot| BatchRow {
            slot,
            token: next[slot],
            pos: prompts[slot].len(),
        })
        .collect();
    let logits = batched.decode_batch(&rows).expect("batch");
    let vocab = batched.vocab_size();
    assert_eq!(logits.len(), 3 * vocab);
    for (row, &slot) in order.iter().enumerate() {
        close(&logits[row * vocab..(row + 1) * vocab], &alone[slot]);
    }
}

#[test]
fn bad_batches_are_typed_errors() {
    let mut m = model(2);
    let row = |slot, token, pos| BatchRow { slot, token, pos };
    let err = |r: Result<Vec<f32>, Error>| r.expect_err("an error");
    assert!(matches!(err(m.decode_batch(&[])), Error::Empty));
    let e = err(m.decode_batch(&[row(0, 1, 0), row(0, 2, 1)]));
    assert!(
        matches!(&e, Error::BadBatch(msg) if msg.contains("twice")),
        "{e}"
    );
    let e = err(m.decode_batch(&[row(2, 1, 0)]));
    assert!(
        matches!(&e, Error::BadBatch(msg) if msg.contains("slot 2")),
        "{e}"
    );
    let e = err(m.decode_batch(&[row(1, 1, 16)]));
    assert!(matches!(e, Error::ContextOverflow { .. }), "{e}");
    let e = err(m.decode_batch(&[row(1, 100_000, 0)]));
    assert!(matches!(e, Error::BadToken { id: 100_000, .. }), "{e}");
    let many: Vec<BatchRow> = (0..=MAX_BATCH).map(|i| row(i, 1, 0)).collect();
    assert!(matches!(err(m.decode_batch(&many)), Error::BadBatch(_)));
    let e = m.logits_in(5, &[1], 0).expect_err("no slot 5");
    assert!(matches!(e, Error::BadBatch(_)), "{e}");
}

/// The greedy pick made on the device (argmax id and its log-probability,
/// no logits read back) is the host sampler's pick from the logits, on
/// every device.
#[test]
fn the_device_greedy_pick_is_the_samplers() {
    let dir = std::env::temp_dir().join(format!("kiln-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("greedy.gguf");
    let spec = TinySpec {
        seed: 9,
        ..TinySpec::new(Arch::Llama)
    };
    std::fs::write(&path, spec.gguf().expect("writes")).expect("write");
    for device in kiln::engine::testing::devices("device greedy") {
        let options = ModelOptions {
            ctx: 16,
            ..ModelOptions::default()
        };
        let mut m = Model::load(&path, &device, options).expect("loads");
        let mut sampler = kiln::Sampler::new(kiln::SamplerConfig::greedy()).expect("sampler");
        for (tokens, pos) in [(&[3u32, 4, 5][..], 0), (&[6][..], 3), (&[7][..], 4)] {
            let logits = m.logits(tokens, pos).expect("logits");
            let want = sampler.sample(&logits).expect("samples");
            let (id, logprob) = m.greedy_in(0, tokens, pos).expect("greedy");
            assert_eq!(id, want.id, "{}", device.name());
            assert!(
                (logprob - want.logprob).abs() < 1e-4,
                "{}: {logprob} vs {}",
                device.name(),
                want.logprob
            );
        }
    }
}
