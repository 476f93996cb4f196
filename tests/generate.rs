//! The generator loop over a scripted model: prompt then one token per
//! step at the right positions, stop at EOG, at stop strings and at
//! max_tokens, text streamed whole, context overflow refused. Uses the real
//! model's tokenizer (skips without the model, unless KILN_REQUIRE_MODEL=1).

use std::sync::Arc;

use kiln::loaders::{EncodeOptions, GgufFile, Tokenizer};
use kiln::{
    Error, FinishReason, GenerateOptions, Generator, LanguageModel, SamplerConfig, StreamToken,
};

/// Emits `script` one token per step, recording each forward's (len, pos).
struct Scripted {
    script: Vec<u32>,
    calls: Vec<(usize, usize)>,
    vocab: usize,
    ctx: usize,
}

impl LanguageModel for Scripted {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn context_length(&self) -> usize {
        self.ctx
    }
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        let step = self.calls.len();
        self.calls.push((tokens.len(), pos));
        let mut logits = vec![0.0; self.vocab];
        logits[self.script[step.min(self.script.len() - 1)] as usize] = 30.0;
        Ok(logits)
    }
}

fn tokenizer() -> Option<Arc<Tokenizer>> {
    let path = kiln::loaders::paths::test_model("generator tests")?;
    let file = GgufFile::open(&path).expect("opens");
    Some(Arc::new(
        Tokenizer::from_gguf(file.metadata()).expect("tokenizer"),
    ))
}

fn options(max_tokens: usize, stop: &[&str], ignore_eos: bool) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop: stop.iter().map(|s| s.to_string()).collect(),
        ignore_eos,
        ..GenerateOptions::default()
    }
}

fn generate(
    tok: &Arc<Tokenizer>,
    script: &[u32],
    opts: GenerateOptions,
) -> (Vec<StreamToken>, Option<FinishReason>, Vec<(usize, usize)>) {
    let mut model = Scripted {
        script: script.to_vec(),
        calls: Vec::new(),
        vocab: tok.vocab_size(),
        ctx: 32,
    };
    let mut g = Generator::new(&mut model, tok.clone(), &[1, 2, 3], opts).expect("generator");
    let out: Vec<StreamToken> = g.by_ref().map(|t| t.expect("step")).collect();
    let finish = g.finish_reason();
    drop(g);
    (out, finish, model.calls)
}

#[test]
fn generator_streams_and_stops() {
    let Some(tok) = tokenizer() else { return };
    let mut script = tok
        .encode(" Hello wörld, again", EncodeOptions::default())
        .expect("encodes");
    let eog = 2; // <|im_end|>
    assert!(tok.is_eog(eog));
    script.push(eog);
    script.push(script[0]);

    // Ends at EOG, which is yielded with no text; positions advance by one.
    let (out, finish, calls) = generate(&tok, &script, options(20, &[], false));
    let text: String = out.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(text, " Hello wörld, again");
    assert_eq!(finish, Some(FinishReason::Eog));
    assert_eq!(out.last().map(|t| t.id), Some(eog));
    assert_eq!(calls[0], (3, 0));
    assert!(calls[1..].iter().enumerate().all(|(i, &c)| c == (1, 3 + i)));
    assert!(out.iter().all(|t| t.logprob <= 0.0 && t.logprob > -1e-3));

    // ignore_eos runs through it to max_tokens.
    let (out, finish, _) = generate(&tok, &script, options(script.len(), &[], true));
    assert_eq!(
        (out.len(), finish),
        (script.len(), Some(FinishReason::Length))
    );

    // A stop string is not emitted; what precedes it is.
    let (out, finish, _) = generate(&tok, &script, options(20, &["rld,"], false));
    let text: String = out.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        (text.as_str(), finish),
        (" Hello wö", Some(FinishReason::Stop))
    );

    // max_tokens cuts it short and releases held-back text.
    let (out, finish, _) = generate(&tok, &script, options(2, &["Hello!"], false));
    let text: String = out.iter().map(|t| t.text.as_str()).collect();
    assert_eq!((out.len(), finish), (2, Some(FinishReason::Length)));
    assert_eq!(text, tok.decode(&script[..2]).expect("decodes"));

    // The callback form sees the same tokens and reports stats.
    let mut model = Scripted {
        script: script.clone(),
        calls: Vec::new(),
        vocab: tok.vocab_size(),
        ctx: 32,
    };
    let mut seen = Vec::new();
    let stats = Generator::new(&mut model, tok.clone(), &[1, 2, 3], options(20, &[], false))
        .expect("generator")
        .for_each_token(|t| seen.push(t.id))
        .expect("runs");
    assert_eq!(seen, script[..script.len() - 1]);
    assert_eq!(
        (stats.prompt_tokens, stats.gen_tokens),
        (3, script.len() - 1)
    );
}

#[test]
fn generator_refuses_requests_past_the_context() {
    let Some(tok) = tokenizer() else { return };
    let mut model = Scripted {
        script: vec![5],
        calls: Vec::new(),
        vocab: tok.vocab_size(),
        ctx: 10,
    };
    let err = Generator::new(&mut model, tok.clone(), &[1, 2, 3], options(8, &[], false)).err();
    assert!(
        matches!(
            err,
            Some(Error::ContextOverflow {
                needed: 11,
                ctx: 10,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(matches!(
        Generator::new(&mut model, tok, &[], options(1, &[], false)).err(),
        Some(Error::Empty)
    ));
}
