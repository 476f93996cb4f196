//! Perplexity over a token stream, llama.cpp's way (`tools/perplexity`,
//! `perplexity()`), so the numbers compare with its `PPL = x +/- y`:
//!
//! - the tokens are cut into non-overlapping chunks of `ctx`; the remainder
//!   that does not fill a chunk is dropped;
//! - each chunk runs alone from position 0 (its keys and values overwrite
//!   the cache; attention is causal from `pos`, so nothing of the previous
//!   chunk is seen);
//! - only the second half is scored: the logits at positions
//!   `ctx/2 ..= ctx-2` predict the tokens at `ctx/2+1 ..= ctx-1`, so every
//!   scored token has at least `ctx/2` tokens of context;
//! - NLL = -ln softmax(logits)[next] in f64, PPL = exp(mean NLL), and the
//!   `±` is the standard error of the mean NLL carried through the exp
//!   (`PPL * stderr`), as llama.cpp prints it.
//!
//! When the tokenizer adds a BOS, llama.cpp overwrites the first token of
//! every chunk with it; [`PerplexityOptions::bos`] does the same. SmolLM2
//! adds none.

use crate::model::{Error, Model};

/// What perplexity needs from a model: the logits of every position.
/// [`Model`] is the real one; tests bring a stand-in.
pub trait ScoringModel {
    fn vocab_size(&self) -> usize;
    /// Positions the KV cache holds.
    fn context_length(&self) -> usize;
    /// Runs `tokens` at positions `pos..` and returns the logits of every
    /// position, `tokens.len() * vocab_size` values, row by row.
    fn logits_all(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error>;
}

impl ScoringModel for Model {
    fn vocab_size(&self) -> usize {
        Model::vocab_size(self)
    }

    fn context_length(&self) -> usize {
        Model::context_length(self)
    }

    fn logits_all(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        Model::logits_all(self, tokens, pos)
    }
}

/// The smallest chunk with a scored token: `ctx/2 ..= ctx-2` must hold one
/// position, and halves of 1 are not worth a number.
pub const MIN_CTX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("perplexity context {ctx} is too small: at least {MIN_CTX} tokens per chunk")]
    ContextTooSmall { ctx: usize },
    #[error("perplexity context {ctx} is larger than the model's context {model_ctx}; load the model with a larger context")]
    ContextTooLarge { ctx: usize, model_ctx: usize },
    #[error("{tokens} tokens do not fill one chunk of {ctx}; give more text or a smaller context")]
    TooFewTokens { tokens: usize, ctx: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("chunk {chunk}: the model returned {got} logits, expected {expected}")]
    BadLogits {
        chunk: usize,
        got: usize,
        expected: usize,
    },
    #[error(
        "chunk {chunk}, position {pos}: the negative log-likelihood is {nll} (non-finite logits)"
    )]
    NonFinite { chunk: usize, pos: usize, nll: f64 },
    #[error("chunk {chunk}: {source}")]
    Model {
        chunk: usize,
        #[source]
        source: Box<Error>,
    },
}

/// How to cut and score the token stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerplexityOptions {
    /// Tokens per chunk (llama.cpp's `-c`).
    pub ctx: usize,
    /// Written over the first token of every chunk, as llama.cpp does when
    /// the tokenizer adds a BOS (`add_bos_token`); `None` leaves the
    /// tokens as they are.
    pub bos: Option<u32>,
}

impl PerplexityOptions {
    /// Chunks of `ctx`, no BOS.
    pub fn new(ctx: usize) -> PerplexityOptions {
        PerplexityOptions { ctx, bos: None }
    }
}

/// One chunk's score, handed to the progress callback.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkScore {
    /// 0-based.
    pub index: usize,
    /// How many chunks the run has.
    pub chunks: usize,
    /// Sum of the NLLs of this chunk's scored tokens.
    pub nll_sum: f64,
    /// Tokens scored in this chunk (`ctx - 1 - ctx/2`).
    pub scored: usize,
    /// The perplexity over all chunks so far (llama.cpp's `[i]x` line).
    pub running_ppl: f64,
}

impl ChunkScore {
    /// This chunk's mean NLL.
    pub fn nll(&self) -> f64 {
        self.nll_sum / self.scored as f64
    }
}

/// The result over the whole stream.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    /// exp(mean NLL).
    pub ppl: f64,
    /// Mean NLL (nats per token).
    pub nll: f64,
    /// Standard error of the mean NLL (sample standard deviation over
    /// `sqrt(scored)`); 0 when one token was scored.
    pub stderr: f64,
    /// Chunks run.
    pub chunks: usize,
    /// Tokens scored.
    pub scored: usize,
}

impl Perplexity {
    /// The `±` llama.cpp prints after the PPL: the NLL's standard error
    /// through d exp(x) = exp(x) dx.
    pub fn ppl_stderr(&self) -> f64 {
        self.ppl * self.stderr
    }
}

/// Running sums of NLL and NLL², in f64.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NllSums {
    pub sum: f64,
    pub sum_sq: f64,
    pub count: usize,
}

impl NllSums {
    pub fn add(&mut self, nll: f64) {
        self.sum += nll;
        self.sum_sq += nll * nll;
        self.count += 1;
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Standard error of the mean: llama.cpp's
    /// `sqrt((E[x²] - E[x]²) / (n - 1))`.
    pub fn stderr(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum_sq / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt()
        } else {
            0.0
        }
    }
}

/// -ln softmax(row)[target], computed in f64 with the maximum subtracted
/// first, so large logits neither overflow nor lose the target's digits.
/// `target` must index `row`.
pub fn nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let max = f64::from(max);
    let sum: f64 = row.iter().map(|&l| (f64::from(l) - max).exp()).sum();
    max + sum.ln() - f64::from(row[target])
}

/// The first position whose logits are scored in a chunk of `ctx`.
pub fn first_scored(ctx: usize) -> usize {
    ctx / 2
}

/// Scores one chunk's logits (`[ctx, vocab]`, row by row) against its
/// tokens: rows `ctx/2 ..= ctx-2` predict tokens `ctx/2+1 ..= ctx-1`.
/// `chunk` only labels errors.
pub fn score_chunk(
    logits: &[f32],
    tokens: &[u32],
    vocab: usize,
    chunk: usize,
) -> Result<NllSums, PerplexityError> {
    let ctx = tokens.len();
    let expected = ctx * vocab;
    if logits.len() != expected || vocab == 0 {
        return Err(PerplexityError::BadLogits {
            chunk,
            got: logits.len(),
            expected,
        });
    }
    let mut sums = NllSums::default();
    for pos in first_scored(ctx)..ctx.saturating_sub(1) {
        let next = tokens[pos + 1];
        let target = next as usize;
        if target >= vocab {
            return Err(PerplexityError::BadToken { id: next, vocab });
        }
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        let value = nll(row, target);
        if !value.is_finite() {
            return Err(PerplexityError::NonFinite {
                chunk,
                pos,
                nll: value,
            });
        }
        sums.add(value);
    }
    Ok(sums)
}

/// Perplexity of `tokens` under `model` (see the module docs for the
/// method). `on_chunk` is called after each chunk, for progress.
pub fn perplexity<M: ScoringModel + ?Sized>(
    model: &mut M,
    tokens: &[u32],
    options: PerplexityOptions,
    mut on_chunk: impl FnMut(&ChunkScore),
) -> Result<Perplexity, PerplexityError> {
    let ctx = options.ctx;
    if ctx < MIN_CTX {
        return Err(PerplexityError::ContextTooSmall { ctx });
    }
    let model_ctx = model.context_length();
    if ctx > model_ctx {
        return Err(PerplexityError::ContextTooLarge { ctx, model_ctx });
    }
    let chunks = tokens.len() / ctx;
    if chunks == 0 {
        return Err(PerplexityError::TooFewTokens {
            tokens: tokens.len(),
            ctx,
        });
    }
    let vocab = model.vocab_size();
    let mut total = NllSums::default();
    let mut chunk_tokens = Vec::with_capacity(ctx);
    for (index, chunk) in tokens.chunks_exact(ctx).enumerate() {
        chunk_tokens.clear();
        chunk_tokens.extend_from_slice(chunk);
        if let (Some(bos), Some(first)) = (options.bos, chunk_tokens.first_mut()) {
            *first = bos;
        }
        let logits =
            model
                .logits_all(&chunk_tokens, 0)
                .map_err(|source| PerplexityError::Model {
                    chunk: index,
                    source: Box::new(source),
                })?;
        let sums = score_chunk(&logits, &chunk_tokens, vocab, index)?;
        total.sum += sums.sum;
        total.sum_sq += sums.sum_sq;
        total.count += sums.count;
        on_chunk(&ChunkScore {
            index,
            chunks,
            nll_sum: sums.sum,
            scored: sums.count,
            running_ppl: total.mean().exp(),
        });
    }
    let nll = total.mean();
    Ok(Perplexity {
        ppl: nll.exp(),
        nll,
        stderr: total.stderr(),
        chunks,
        scored: total.count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that bets on `token + 1`: logit `-d` for a vocabulary entry
    /// at circular distance d from it; it records every call so the test can see
    /// the chunking, and its NLLs are easy to compute by hand.
    struct Fake {
        vocab: usize,
        ctx: usize,
        calls: Vec<(Vec<u32>, usize)>,
    }

    impl Fake {
        fn row(&self, token: u32) -> Vec<f32> {
            // Circular distance, so every row is a rotation of the others.
            let guess = (token as usize + 1) % self.vocab;
            (0..self.vocab)
                .map(|v| {
                    let d = v.abs_diff(guess);
                    -(d.min(self.vocab - d) as f32)
                })
                .collect()
        }
    }

    impl ScoringModel for Fake {
        fn vocab_size(&self) -> usize {
            self.vocab
        }
        fn context_length(&self) -> usize {
            self.ctx
        }
        fn logits_all(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
            self.calls.push((tokens.to_vec(), pos));
            Ok(tokens.iter().flat_map(|&t| self.row(t)).collect())
        }
    }

    fn fake() -> Fake {
        Fake {
            vocab: 7,
            ctx: 16,
            calls: Vec::new(),
        }
    }

    #[test]
    fn nll_is_a_stable_log_softmax() {
        // Uniform: ln(n).
        assert!((nll(&[0.0; 4], 2) - 4f64.ln()).abs() < 1e-12);
        // Shifting every logit changes nothing, even far out of exp's range.
        let a = nll(&[1.0, 2.0, 3.0], 0);
        let b = nll(&[1001.0, 1002.0, 1003.0], 0);
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        let want = -(1f64.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp())).ln();
        assert!((a - want).abs() < 1e-12);
        assert!(nll(&[-1e30, 0.0], 1).abs() < 1e-12);
    }

    #[test]
    fn stderr_is_that_of_the_mean() {
        let mut sums = NllSums::default();
        for x in [1.0, 2.0, 3.0, 4.0] {
            sums.add(x);
        }
        // Sample standard deviation sqrt(5/3), over sqrt(4).
        let want = (5.0f64 / 3.0).sqrt() / 2.0;
        assert!((sums.stderr() - want).abs() < 1e-12);
        assert!((sums.mean() - 2.5).abs() < 1e-12);
    }

    #[test]
    fn chunks_drop_the_remainder_and_score_the_second_half() {
        let mut model = fake();
        // 3 chunks of 8 and a remainder of 5 that is dropped.
        let tokens: Vec<u32> = (0..29u32).map(|i| i * i % 7).collect();
        let mut seen = Vec::new();
        let got = perplexity(&mut model, &tokens, PerplexityOptions::new(8), |c| {
            seen.push(*c)
        })
        .expect("perplexity");
        assert_eq!(got.chunks, 3);
        // Positions 4, 5, 6 of each chunk predict 5, 6, 7.
        assert_eq!(got.scored, 9);
        let calls: Vec<_> = model.calls.iter().map(|(t, p)| (t.len(), *p)).collect();
        assert_eq!(calls, vec![(8, 0); 3], "every chunk runs alone from 0");
        assert_eq!(model.calls[2].0, tokens[16..24]);

        // The same by hand.
        let mut sums = NllSums::default();
        for chunk in tokens.chunks_exact(8) {
            for pos in 4..7 {
                sums.add(nll(&model.row(chunk[pos]), chunk[pos + 1] as usize));
            }
        }
        assert!((got.nll - sums.mean()).abs() < 1e-12);
        assert!((got.ppl - sums.mean().exp()).abs() < 1e-9);
        assert!(got.stderr > 0.0);
        assert!((got.stderr - sums.stderr()).abs() < 1e-12);

        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2].index, 2);
        assert_eq!(seen[2].chunks, 3);
        assert_eq!(seen[1].scored, 3);
        assert!((seen[2].running_ppl - got.ppl).abs() < 1e-9);
        let chunk_sum: f64 = seen.iter().map(|c| c.nll_sum).sum();
        assert!((chunk_sum - sums.sum).abs() < 1e-9);
    }

    #[test]
    fn a_perfect_model_has_perplexity_near_one() {
        let mut model = fake();
        // The fake predicts token + 1, so a counting sequence is easy.
        let tokens: Vec<u32> = (0..32).map(|i| (i % 7) as u32).collect();
        let got = perplexity(&mut model, &tokens, PerplexityOptions::new(16), |_| {})
            .expect("perplexity");
        // Softmax of [.., -2, -1, 0, -1, -2, ..] puts about 0.4 on the target.
        assert!(got.ppl > 1.0 && got.ppl < 2.5, "{}", got.ppl);
        assert!(got.stderr < 1e-6, "every scored token has the same NLL");
        assert_eq!((got.chunks, got.scored), (2, 14));
    }

    #[test]
    fn bos_overwrites_the_first_token_of_each_chunk() {
        let mut model = fake();
        let tokens: Vec<u32> = (1..=12u32).map(|t| t % 7).collect();
        let options = PerplexityOptions {
            ctx: 6,
            bos: Some(0),
        };
        perplexity(&mut model, &tokens, options, |_| {}).expect("perplexity");
        assert_eq!(model.calls[0].0[0], 0);
        assert_eq!(model.calls[1].0[0], 0);
        assert_eq!(model.calls[1].0[1..], tokens[7..12]);
    }

    #[test]
    fn bad_requests_are_typed_errors() {
        let mut model = fake();
        let tokens = [1u32; 20];
        let run = |model: &mut Fake, tokens: &[u32], ctx| {
            perplexity(model, tokens, PerplexityOptions::new(ctx), |_| {})
        };
        assert!(matches!(
            run(&mut model, &tokens, 3),
            Err(PerplexityError::ContextTooSmall { ctx: 3 })
        ));
        assert!(matches!(
            run(&mut model, &tokens, 17),
            Err(PerplexityError::ContextTooLarge {
                ctx: 17,
                model_ctx: 16
            })
        ));
        assert!(matches!(
            run(&mut model, &tokens[..7], 8),
            Err(PerplexityError::TooFewTokens { tokens: 7, ctx: 8 })
        ));
        assert!(matches!(
            run(&mut model, &[1, 2, 3, 4, 5, 6, 6, 99], 8),
            Err(PerplexityError::BadToken { id: 99, vocab: 7 })
        ));
        assert!(matches!(
            score_chunk(&[0.0; 5], &[1, 2], 3, 4),
            Err(PerplexityError::BadLogits {
                chunk: 4,
                got: 5,
                expected: 6
            })
        ));
        let mut nan = vec![0.0f32; 4 * 3];
        nan[2 * 3] = f32::NAN;
        assert!(matches!(
            score_chunk(&nan, &[0, 1, 2, 0], 3, 0),
            Err(PerplexityError::NonFinite { pos: 2, .. })
        ));
    }
}
