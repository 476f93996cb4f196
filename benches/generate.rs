//! Host overhead of generation per token, the model's forward excluded: a
//! scripted model returns a fixed logits vector of SmolLM2's vocabulary
//! size (49,152), and each way of consuming tokens is timed per token:
//! the bare loop (forward + argmax, what `kiln bench` times), the
//! `Generator` iterator (sampler chain with logprob, UTF-8 and stop-string
//! handling), its callback form, and the async stream (worker thread and
//! channel; polled with pollster). The overhead is the difference from the
//! bare loop; docs/BENCHMARKS.md puts it beside a real decode step.
//!
//! `cargo bench --bench generate` (needs the default model's tokenizer:
//! scripts/fetch-model.sh).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use kiln::loaders::{GgufFile, Tokenizer};
use kiln::{Error, GenerateOptions, Generator, LanguageModel, SamplerConfig};

const VOCAB: usize = 49_152;
const TOKENS: usize = 256;

/// Fixed logits whose argmax walks through ordinary word tokens.
struct Scripted {
    logits: Vec<f32>,
    step: usize,
}

impl LanguageModel for Scripted {
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn context_length(&self) -> usize {
        1 << 20
    }
    fn forward(&mut self, _tokens: &[u32], _pos: usize) -> Result<Vec<f32>, Error> {
        let mut l = self.logits.clone();
        self.step += 1;
        l[1000 + self.step % 500] = 40.0;
        Ok(l)
    }
}

/// The scripted model picking greedy tokens itself, as a GPU model does
/// (`Model::greedy_in`): no logits cross to the host.
struct PicksItself(Scripted);

impl LanguageModel for PicksItself {
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn context_length(&self) -> usize {
        1 << 20
    }
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        self.0.forward(tokens, pos)
    }
    fn forward_greedy(
        &mut self,
        _tokens: &[u32],
        _pos: usize,
    ) -> Result<Option<(u32, f32)>, Error> {
        self.0.step += 1;
        Ok(Some((1000 + (self.0.step % 500) as u32, -0.25)))
    }
}

fn scripted() -> Scripted {
    let logits = (0..VOCAB)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as f32 / 1e6)
        .collect();
    Scripted { logits, step: 0 }
}

fn options(sampler: SamplerConfig) -> GenerateOptions {
    GenerateOptions {
        max_tokens: TOKENS,
        sampler,
        stop: vec!["</s>".into()],
        ignore_eos: true,
        ..GenerateOptions::default()
    }
}

/// Seconds per token of `f`, which generates TOKENS tokens, best of 5.
fn per_token(mut f: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() / TOKENS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn generate(c: &mut Criterion) {
    let Some(path) = kiln::loaders::paths::test_model("generate bench") else {
        return;
    };
    let file = GgufFile::open(&path).expect("opens");
    let tok = Arc::new(Tokenizer::from_gguf(file.metadata()).expect("tokenizer"));
    if !std::env::args().any(|a| a == "--bench") {
        println!("generate bench: not timed under cargo test; run `cargo bench --bench generate`");
        return;
    }

    let bare = per_token(|| {
        let mut m = scripted();
        for pos in 0..TOKENS {
            let l = m.forward(&[1], pos).expect("forward");
            let best = l
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i);
            criterion::black_box(best);
        }
    });
    let mut rows = vec![("bare loop (forward + argmax)", bare)];
    let sampler_only = per_token(|| {
        let mut m = scripted();
        let mut sampler = kiln::Sampler::new(SamplerConfig::greedy()).expect("sampler");
        for pos in 0..TOKENS {
            let l = m.forward(&[1], pos).expect("forward");
            criterion::black_box(sampler.sample(&l).expect("sample"));
        }
    });
    rows.push(("forward + Sampler::sample, greedy", sampler_only));
    for (name, sampler) in [
        ("Generator, greedy", SamplerConfig::greedy()),
        (
            "Generator, temperature 0.8 top-k 40 top-p 0.95",
            SamplerConfig {
                temperature: 0.8,
                top_k: 40,
                top_p: 0.95,
                ..SamplerConfig::default()
            },
        ),
    ] {
        let t = per_token(|| {
            let mut m = scripted();
            let g = Generator::new(&mut m, tok.clone(), &[1], options(sampler.clone()))
                .expect("generator");
            for t in g {
                criterion::black_box(t.expect("token"));
            }
        });
        rows.push((name, t));
    }
    let callback = per_token(|| {
        let mut m = scripted();
        Generator::new(&mut m, tok.clone(), &[1], options(SamplerConfig::greedy()))
            .expect("generator")
            .for_each_token(|t| {
                criterion::black_box(t);
            })
            .expect("runs");
    });
    rows.push(("callback, greedy", callback));
    let stream = per_token(|| {
        let model = Arc::new(Mutex::new(scripted()));
        let mut s =
            kiln::stream::generate(&model, tok.clone(), &[1], options(SamplerConfig::greedy()))
                .expect("stream");
        pollster::block_on(async {
            use kiln::stream::Stream;
            while let Some(t) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut s).poll_next(cx)).await
            {
                criterion::black_box(t.expect("token"));
            }
        });
    });
    rows.push(("async stream, greedy", stream));

    // The device-side greedy pick: the bare loop is then the model's call
    // alone, and the generator's overhead is its own bookkeeping.
    let bare_device = per_token(|| {
        let mut m = PicksItself(scripted());
        for pos in 0..TOKENS {
            criterion::black_box(m.forward_greedy(&[1], pos).expect("forward"));
        }
    });
    let device = per_token(|| {
        let mut m = PicksItself(scripted());
        let g = Generator::new(&mut m, tok.clone(), &[1], options(SamplerConfig::greedy()))
            .expect("generator");
        for t in g {
            criterion::black_box(t.expect("token"));
        }
    });
    let device_stream = per_token(|| {
        let model = Arc::new(Mutex::new(PicksItself(scripted())));
        let mut s =
            kiln::stream::generate(&model, tok.clone(), &[1], options(SamplerConfig::greedy()))
                .expect("stream");
        pollster::block_on(async {
            use kiln::stream::Stream;
            while let Some(t) =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut s).poll_next(cx)).await
            {
                criterion::black_box(t.expect("token"));
            }
        });
    });
    println!("host time per token, {VOCAB}-token vocabulary ({TOKENS} tokens, best of 5):");
    for (name, t) in &rows {
        println!(
            "  {name:<50} {:>8.1} µs  (+{:.1} µs over the bare loop)",
            t * 1e6,
            (t - bare) * 1e6
        );
    }
    println!("with the greedy pick on the device (no logits to the host):");
    for (name, t) in [
        ("bare loop (forward_greedy)", bare_device),
        ("Generator, greedy", device),
        ("async stream, greedy", device_stream),
    ] {
        println!(
            "  {name:<50} {:>8.1} µs  (+{:.1} µs over the bare loop)",
            t * 1e6,
            (t - bare_device) * 1e6
        );
    }

    let mut group = c.benchmark_group("generate");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    group.bench_function("generator greedy, 256 tokens", |b| {
        b.iter(|| {
            let mut m = scripted();
            let g = Generator::new(&mut m, tok.clone(), &[1], options(SamplerConfig::greedy()))
                .expect("generator");
            g.count()
        })
    });
    group.finish();
}

criterion_group!(benches, generate);
criterion_main!(benches);
