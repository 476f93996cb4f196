//! Token generation: prefill the prompt, then one decode step per token
//! through the sampler chain, streaming each token's text as soon as it is
//! whole UTF-8 and cannot be the start of a stop string.

use std::sync::Arc;
use std::time::Instant;

use kiln_loaders::{DecodeOptions, StreamDecoder, Tokenizer};

use crate::adapters::AdapterSet;
use crate::model::{Error, LanguageModel, Model};
use crate::sampler::{top_logprobs, Sampled, Sampler, SamplerConfig};
use crate::stop::StopMatcher;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (the end-of-generation token included).
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation ends where the text contains one of these; it is not emitted.
    pub stop: Vec<String>,
    /// Keep going through end-of-generation tokens (benchmarks, references).
    pub ignore_eos: bool,
    /// Most likely alternatives reported with each token
    /// ([`StreamToken::top`]); 0: none.
    pub top_logprobs: usize,
    /// LoRA adapters (loaded on the model) this generation uses: `Some`
    /// makes them the model's active set before the prompt runs (and it
    /// stays so afterwards); `None` keeps whatever the model has applied.
    pub adapters: Option<AdapterSet>,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            top_logprobs: 0,
            adapters: None,
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamToken {
    pub id: u32,
    /// Text released with this token: may be empty (a partial character, a
    /// possible stop-string prefix, a control token) or include text held
    /// back from earlier tokens.
    pub text: String,
    /// ln p(id) under the model's distribution.
    pub logprob: f32,
    /// The [`GenerateOptions::top_logprobs`] most likely tokens at this
    /// step with their ln p under the raw logits, most likely first (ties
    /// to the lower id); empty unless asked for.
    pub top: Vec<(u32, f32)>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token (it is the last token yielded).
    Eog,
    /// A stop string matched.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// Counts and timings of one generation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Seconds in the prompt's forward pass (first token's sampling included).
    pub prefill_s: f64,
    /// Seconds in the decode steps after it.
    pub decode_s: f64,
}

impl GenerationStats {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_s)
    }

    /// Decode steps per second: every generated token after the first.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.gen_tokens.saturating_sub(1), self.decode_s)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// One sequence's generation, stepped by whoever runs the model: the
/// [`Generator`] for a single sequence, or a scheduler that runs many
/// sequences' steps through one batched forward. [`Sequence::pending`]
/// says which tokens to run next and where; [`Sequence::accept`] takes that
/// forward's last-position logits, samples and returns the token.
pub struct Sequence {
    tokenizer: Arc<Tokenizer>,
    sampler: Sampler,
    stop: StopMatcher,
    /// Holds back bytes until they form whole characters (byte-level BPE
    /// splits characters across tokens).
    utf8: StreamDecoder<Arc<Tokenizer>>,
    options: GenerateOptions,
    prompt: Vec<u32>,
    /// The last token sampled, not yet run through the model.
    last: [u32; 1],
    /// Position of the next token the model runs.
    pos: usize,
    stats: GenerationStats,
    finish: Option<FinishReason>,
    failed: bool,
}

impl Sequence {
    /// Checks the request against a context of `ctx` positions.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        prompt: &[u32],
        options: GenerateOptions,
        ctx: usize,
    ) -> Result<Sequence, Error> {
        if prompt.is_empty() {
            return Err(Error::Empty);
        }
        let needed = prompt.len().saturating_add(options.max_tokens);
        if needed > ctx {
            return Err(Error::ContextOverflow {
                needed,
                ctx,
                what: format!(
                    "a prompt of {} tokens and up to {} new ones",
                    prompt.len(),
                    options.max_tokens
                ),
            });
        }
        let mut sampler = Sampler::new(options.sampler.clone())?;
        sampler.accept(prompt);
        let utf8 = StreamDecoder::new(tokenizer.clone(), DecodeOptions { skip_special: true });
        Ok(Sequence {
            tokenizer,
            sampler,
            stop: StopMatcher::new(options.stop.iter().cloned()),
            utf8,
            stats: GenerationStats {
                prompt_tokens: prompt.len(),
                ..GenerationStats::default()
            },
            options,
            prompt: prompt.to_vec(),
            last: [0],
            pos: 0,
            finish: None,
            failed: false,
        })
    }

    pub fn stats(&self) -> GenerationStats {
        self.stats
    }

    /// The adapters the request asked for ([`GenerateOptions::adapters`]).
    pub fn adapters(&self) -> Option<&AdapterSet> {
        self.options.adapters.as_ref()
    }

    /// Why it ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Whether the prompt has run (what remains are one-token steps).
    pub fn prefilled(&self) -> bool {
        self.pos > 0
    }

    /// The tokens the model runs next and the position of the first: the
    /// prompt at 0, then the last sampled token. `None` once ended (or
    /// after an error).
    pub fn pending(&self) -> Option<(&[u32], usize)> {
        if self.failed || self.finish.is_some() || self.stats.gen_tokens >= self.options.max_tokens
        {
            return None;
        }
        Some(if self.pos == 0 {
            (&self.prompt, 0)
        } else {
            (&self.last, self.pos)
        })
    }

    /// Takes the logits of the [`Sequence::pending`] forward (which took
    /// `forward_s` seconds, counted in the stats with the sampling),
    /// samples the next token and returns it with its text.
    pub fn accept(&mut self, logits: &[f32], forward_s: f64) -> Result<StreamToken, Error> {
        let r = self.sample(Step::Logits(logits), forward_s);
        self.failed = r.is_err();
        r
    }

    /// Whether the model may pick the token itself (a greedy pick with no
    /// penalty and no alternatives asked for): then
    /// [`Sequence::accept_chosen`] takes its id and log-probability, and
    /// no logits leave the device.
    pub fn device_greedy(&self) -> bool {
        self.sampler.plain_greedy() && self.options.top_logprobs == 0
    }

    /// [`Sequence::accept`] for a token the model chose: `id` with
    /// ln p(id) `logprob`.
    pub fn accept_chosen(
        &mut self,
        id: u32,
        logprob: f32,
        forward_s: f64,
    ) -> Result<StreamToken, Error> {
        let r = self.sample(Step::Chosen(Sampled { id, logprob }), forward_s);
        self.failed = r.is_err();
        r
    }

    fn sample(&mut self, step: Step, forward_s: f64) -> Result<StreamToken, Error> {
        let start = Instant::now();
        let Some((tokens, _)) = self.pending() else {
            return Err(Error::Empty);
        };
        let first = self.pos == 0;
        self.pos += tokens.len();
        let (sampled, logits) = match step {
            Step::Logits(logits) => (self.sampler.sample(logits)?, Some(logits)),
            Step::Chosen(sampled) => {
                self.sampler.accept(&[sampled.id]);
                (sampled, None)
            }
        };
        let mut top = Vec::new();
        if let (Some(logits), true) = (logits, self.options.top_logprobs > 0) {
            top = top_logprobs(logits, self.options.top_logprobs);
            // The sampler's own value for the chosen token, which this
            // computation matches only to ~1e-6, so a client sees one
            // number for it.
            for entry in top.iter_mut().filter(|e| e.0 == sampled.id) {
                entry.1 = sampled.logprob;
            }
        }
        self.last = [sampled.id];
        self.stats.gen_tokens += 1;

        let whole = self.utf8.push(sampled.id)?.unwrap_or_default();
        let out = self.stop.push(&whole);
        let mut text = out.text;
        let eog = !self.options.ignore_eos && self.tokenizer.is_eog(sampled.id);
        self.finish = if out.stopped {
            Some(FinishReason::Stop)
        } else if eog {
            Some(FinishReason::Eog)
        } else if self.stats.gen_tokens >= self.options.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        // At the end, release what was held back for a stop string or a
        // character still incomplete.
        if matches!(self.finish, Some(FinishReason::Eog | FinishReason::Length)) {
            let tail = self.utf8.flush().unwrap_or_default();
            text.push_str(&self.stop.push(&tail).text);
            text.push_str(&self.stop.flush());
        }
        let elapsed = forward_s + start.elapsed().as_secs_f64();
        if first {
            self.stats.prefill_s += elapsed;
        } else {
            self.stats.decode_s += elapsed;
        }
        Ok(StreamToken {
            id: sampled.id,
            text,
            logprob: sampled.logprob,
            top,
        })
    }
}

/// What a forward gave a sequence: logits to sample from, or the token the
/// device already chose.
enum Step<'a> {
    Logits(&'a [f32]),
    Chosen(Sampled),
}

/// Streams tokens: an iterator of `Result<StreamToken, Error>`. After an
/// error or the end, it yields `None`.
pub struct Generator<'m, M: LanguageModel + ?Sized = Model> {
    model: &'m mut M,
    seq: Sequence,
}

impl<'m, M: LanguageModel + ?Sized> Generator<'m, M> {
    /// Checks the request; the prompt runs on the first `next`.
    pub fn new(
        model: &'m mut M,
        tokenizer: Arc<Tokenizer>,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Generator<'m, M>, Error> {
        let seq = Sequence::new(tokenizer, prompt, options, model.context_length())?;
        if let Some(set) = seq.adapters() {
            model.set_adapters(set)?;
        }
        Ok(Generator { model, seq })
    }

    pub fn stats(&self) -> GenerationStats {
        self.seq.stats()
    }

    /// Why it ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.seq.finish_reason()
    }

    /// Runs to the end, calling `f` with each token; returns the stats.
    pub fn for_each_token(
        mut self,
        mut f: impl FnMut(&StreamToken),
    ) -> Result<GenerationStats, Error> {
        for token in self.by_ref() {
            f(&token?);
        }
        Ok(self.stats())
    }
}

impl<M: LanguageModel + ?Sized> Iterator for Generator<'_, M> {
    type Item = Result<StreamToken, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let (tokens, pos) = self.seq.pending()?;
        let start = Instant::now();
        if self.seq.device_greedy() {
            match self.model.forward_greedy(tokens, pos) {
                Ok(Some((id, logprob))) => {
                    let forward_s = start.elapsed().as_secs_f64();
                    return Some(self.seq.accept_chosen(id, logprob, forward_s));
                }
                Ok(None) => {}
                Err(e) => {
                    self.seq.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let logits = match self.model.forward(tokens, pos) {
            Ok(logits) => logits,
            Err(e) => {
                self.seq.failed = true;
                return Some(Err(e));
            }
        };
        Some(self.seq.accept(&logits, start.elapsed().as_secs_f64()))
    }
}

impl Model {
    /// A generator over this model: the prompt (token ids) starts at
    /// position 0, overwriting whatever the cache held.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Generator<'_>, Error> {
        let tokenizer = self.tokenizer().clone();
        Generator::new(self, tokenizer, prompt, options)
    }

    /// Generates to the end, calling `f` with each token as it comes.
    pub fn generate_with(
        &mut self,
        prompt: &[u32],
        options: GenerateOptions,
        f: impl FnMut(&StreamToken),
    ) -> Result<GenerationStats, Error> {
        self.generate(prompt, options)?.for_each_token(f)
    }
}
