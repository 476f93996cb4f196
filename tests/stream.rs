//! The async token stream (feature `async`): the same tokens as the
//! iterator, bad requests as one error item, and a dropped stream stops the
//! worker and releases the model. Polled with pollster, no runtime needed.
#![cfg(feature = "async")]

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::loaders::{EncodeOptions, GgufFile, Tokenizer};
use kiln::stream::{Stream, TokenStream};
use kiln::{Error, FinishReason, GenerateOptions, Generator, LanguageModel, SamplerConfig};

/// Emits `script` one token per step and counts forwards.
struct Scripted {
    script: Vec<u32>,
    forwards: usize,
    vocab: usize,
}

impl LanguageModel for Scripted {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn context_length(&self) -> usize {
        4096
    }
    fn forward(&mut self, _tokens: &[u32], _pos: usize) -> Result<Vec<f32>, Error> {
        let step = self.forwards;
        self.forwards += 1;
        let mut logits = vec![0.0; self.vocab];
        logits[self.script[step % self.script.len()] as usize] = 30.0;
        Ok(logits)
    }
}

fn tokenizer() -> Option<Arc<Tokenizer>> {
    let path = kiln::loaders::paths::test_model("stream tests")?;
    let file = GgufFile::open(&path).expect("opens");
    Some(Arc::new(
        Tokenizer::from_gguf(file.metadata()).expect("tokenizer"),
    ))
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: Vec::new(),
        ignore_eos: true,
        ..GenerateOptions::default()
    }
}

async fn next(stream: &mut TokenStream) -> Option<Result<kiln::StreamToken, Error>> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

#[test]
fn stream_yields_what_the_iterator_yields() {
    let Some(tok) = tokenizer() else { return };
    let script = tok
        .encode(" Streams of wörds", EncodeOptions::default())
        .expect("encodes");
    let n = script.len() + 3;
    let scripted = || Scripted {
        script: script.clone(),
        forwards: 0,
        vocab: tok.vocab_size(),
    };

    let mut model = scripted();
    let want: Vec<_> = Generator::new(&mut model, tok.clone(), &[1, 2], greedy(n))
        .expect("generator")
        .map(|t| t.expect("step"))
        .collect();

    let model = Arc::new(Mutex::new(scripted()));
    let mut stream =
        kiln::stream::generate(&model, tok.clone(), &[1, 2], greedy(n)).expect("starts");
    let got = pollster::block_on(async {
        let mut got = Vec::new();
        while let Some(t) = next(&mut stream).await {
            got.push(t.expect("step"));
        }
        got
    });
    assert_eq!(got, want);
    let finished = stream.finished().expect("finished");
    assert_eq!(finished.reason, Some(FinishReason::Length));
    assert_eq!(finished.stats.gen_tokens, n);
    assert_eq!(model.lock().expect("lock").forwards, n);
}

#[test]
fn bad_request_is_one_error_item() {
    let Some(tok) = tokenizer() else { return };
    let model = Arc::new(Mutex::new(Scripted {
        script: vec![5],
        forwards: 0,
        vocab: tok.vocab_size(),
    }));
    let mut stream = kiln::stream::generate(&model, tok, &[], greedy(4)).expect("starts");
    let items = pollster::block_on(async {
        let mut items = Vec::new();
        while let Some(t) = next(&mut stream).await {
            items.push(t);
        }
        items
    });
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(Error::Empty)), "{:?}", items[0]);
    assert_eq!(stream.finished().map(|f| f.reason), Some(None));
}

#[test]
fn dropping_the_stream_cancels_the_generation() {
    let Some(tok) = tokenizer() else { return };
    let model = Arc::new(Mutex::new(Scripted {
        script: vec![5, 6, 7],
        forwards: 0,
        vocab: tok.vocab_size(),
    }));
    let mut stream = kiln::stream::generate(&model, tok, &[1], greedy(4000)).expect("starts");
    let first = pollster::block_on(next(&mut stream));
    assert!(matches!(first, Some(Ok(_))));
    drop(stream);
    // The worker notices at its next send and lets go of the model; far
    // fewer than 4000 forwards ran (it may run ahead by the channel's
    // buffer).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(m) = model.try_lock() {
            assert!(m.forwards < 100, "{} forwards ran", m.forwards);
            break;
        }
        assert!(Instant::now() < deadline, "the worker kept the model");
        std::thread::sleep(Duration::from_millis(5));
    }
}
