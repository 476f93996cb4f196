//! Token generation: prefill the prompt, then one decode step per token
//! through the sampler chain, streaming each token's text as soon as it is
//! whole UTF-8 and cannot be the start of a stop string.

use std::sync::Arc;
use std::time::Instant;

use kiln_loaders::{DecodeOptions, StreamDecoder, Tokenizer};

use crate::model::{Error, LanguageModel, Model};
use crate::sampler::{Sampler, SamplerConfig};
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
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
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

/// Streams tokens: an iterator of `Result<StreamToken, Error>`. After an
/// error or the end, it yields `None`.
pub struct Generator<'m, M: LanguageModel + ?Sized = Model> {
    model: &'m mut M,
    tokenizer: Arc<Tokenizer>,
    sampler: Sampler,
    stop: StopMatcher,
    /// Holds back bytes until they form whole characters (byte-level BPE
    /// splits characters across tokens).
    utf8: StreamDecoder<Arc<Tokenizer>>,
    options: GenerateOptions,
    prompt: Vec<u32>,
    /// The last token sampled, not yet run through the model.
    last: Option<u32>,
    /// Position of the next token the model runs.
    pos: usize,
    stats: GenerationStats,
    finish: Option<FinishReason>,
    failed: bool,
}

impl<'m, M: LanguageModel + ?Sized> Generator<'m, M> {
    /// Checks the request; the prompt runs on the first `next`.
    pub fn new(
        model: &'m mut M,
        tokenizer: Arc<Tokenizer>,
        prompt: &[u32],
        options: GenerateOptions,
    ) -> Result<Generator<'m, M>, Error> {
        if prompt.is_empty() {
            return Err(Error::Empty);
        }
        let ctx = model.context_length();
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
        Ok(Generator {
            model,
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
            last: None,
            pos: 0,
            finish: None,
            failed: false,
        })
    }

    pub fn stats(&self) -> GenerationStats {
        self.stats
    }

    /// Why it ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Runs to the end, calling `f` with each token; returns the stats.
    pub fn for_each_token(
        mut self,
        mut f: impl FnMut(&StreamToken),
    ) -> Result<GenerationStats, Error> {
        for token in self.by_ref() {
            f(&token?);
        }
        Ok(self.stats)
    }

    fn step(&mut self) -> Result<StreamToken, Error> {
        let start = Instant::now();
        let logits = match self.last {
            None => self.model.forward(&self.prompt, 0)?,
            Some(id) => self.model.forward(&[id], self.pos)?,
        };
        self.pos += if self.last.is_none() {
            self.prompt.len()
        } else {
            1
        };
        let sampled = self.sampler.sample(&logits)?;
        self.last = Some(sampled.id);
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
        let elapsed = start.elapsed().as_secs_f64();
        if self.stats.gen_tokens == 1 {
            self.stats.prefill_s += elapsed;
        } else {
            self.stats.decode_s += elapsed;
        }
        Ok(StreamToken {
            id: sampled.id,
            text,
            logprob: sampled.logprob,
        })
    }
}

impl<M: LanguageModel + ?Sized> Iterator for Generator<'_, M> {
    type Item = Result<StreamToken, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.finish.is_some() || self.stats.gen_tokens >= self.options.max_tokens
        {
            return None;
        }
        let r = self.step();
        self.failed = r.is_err();
        Some(r)
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
