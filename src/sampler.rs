//! The sampler chain: from a step's logits to one token id.
//!
//! Order follows llama.cpp's default chain: repetition/frequency/presence
//! penalties over the last `penalty_last_n` tokens, then top-k, top-p,
//! min-p, temperature, and a seeded draw. `temperature <= 0` is greedy
//! (argmax after penalties). The reported logprob is the chosen token's log
//! probability under the model's raw distribution (softmax of the logits
//! before any sampler touched them), as OpenAI-style APIs report it.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings. `Default` is llama.cpp's: temperature 0.8, top-k 40,
/// top-p 0.95, min-p 0.05, no penalties.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 (or below) picks the most likely token.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p; 1 keeps all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of recent tokens; 1 is off.
    pub repeat_penalty: f32,
    /// Subtracted once per occurrence of a recent token.
    pub frequency_penalty: f32,
    /// Subtracted once from any recent token.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Same seed, same logits → same tokens. `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Argmax, no penalties.
    pub fn greedy() -> SamplerConfig {
        SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        }
    }

    /// Checks ranges so an absurd request is an error, not a NaN.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let bad = |what: &'static str, value: f32| Err(SamplerError::Invalid { what, value });
        if !self.temperature.is_finite() {
            return bad("temperature", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p);
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty", self.repeat_penalty);
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty);
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum SamplerError {
    #[error("sampler setting {what} = {value} is out of range")]
    Invalid { what: &'static str, value: f32 },
    #[error("no logits to sample from")]
    Empty,
}

/// One sampled token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub id: u32,
    /// ln p(id) under the model's raw distribution.
    pub logprob: f32,
}

pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Sampler, SamplerError> {
        config.validate()?;
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(Sampler {
            config,
            rng,
            recent: VecDeque::new(),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records tokens the penalties should see (the prompt, then each
    /// generated token).
    pub fn accept(&mut self, ids: &[u32]) {
        let n = self.config.penalty_last_n;
        for &id in ids {
            self.recent.push_back(id);
            while self.recent.len() > n {
                self.recent.pop_front();
            }
        }
    }

    /// Chooses the next token from `logits` (one per vocabulary entry) and
    /// records it as accepted.
    pub fn sample(&mut self, logits: &[f32]) -> Result<Sampled, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::Empty);
        }
        // A copy of the vocabulary's logits only when penalties change them.
        let scores = if self.penalties_active() {
            let mut scores = logits.to_vec();
            self.apply_penalties(&mut scores);
            std::borrow::Cow::Owned(scores)
        } else {
            std::borrow::Cow::Borrowed(logits)
        };
        // One pass over the vocabulary for the max serves the log-softmax
        // and, without penalties, the greedy pick.
        let max = max_of(logits);
        let id = match (&scores, self.config.temperature <= 0.0) {
            (std::borrow::Cow::Borrowed(_), true) => first_index_of(logits, max),
            (_, true) => argmax(&scores),
            (_, false) => self.draw(&scores),
        };
        let logprob = log_softmax_with_max(logits, id as usize, max);
        self.accept(&[id]);
        Ok(Sampled { id, logprob })
    }

    /// Whether the pick is the plain argmax of the raw logits (greedy, no
    /// penalty configured): the device can then choose the token itself
    /// and hand back only its id and log-probability.
    pub fn plain_greedy(&self) -> bool {
        let c = &self.config;
        c.temperature <= 0.0
            && c.repeat_penalty == 1.0
            && c.frequency_penalty == 0.0
            && c.presence_penalty == 0.0
    }

    fn penalties_active(&self) -> bool {
        let c = &self.config;
        !self.recent.is_empty()
            && (c.repeat_penalty != 1.0 || c.frequency_penalty != 0.0 || c.presence_penalty != 0.0)
    }

    fn apply_penalties(&self, scores: &mut [f32]) {
        let c = &self.config;
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &id in &self.recent {
            *counts.entry(id).or_default() += 1;
        }
        for (&id, &count) in &counts {
            let Some(s) = scores.get_mut(id as usize) else {
                continue;
            };
            // llama.cpp: divide positive logits, multiply negative ones.
            *s = if *s > 0.0 {
                *s / c.repeat_penalty
            } else {
                *s * c.repeat_penalty
            };
            *s -= count as f32 * c.frequency_penalty + c.presence_penalty;
        }
    }

    /// top-k → top-p → min-p → temperature → weighted draw.
    fn draw(&mut self, scores: &[f32]) -> u32 {
        let c = &self.config;
        let mut cand: Vec<(u32, f32)> = scores
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_nan())
            .map(|(i, &s)| (i as u32, s))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if c.top_k > 0 && c.top_k < cand.len() {
            // Only the k best need an order: partition them out in linear
            // time, then sort k instead of the whole vocabulary.
            cand.select_nth_unstable_by(c.top_k - 1, by_score);
            cand.truncate(c.top_k);
        }
        cand.sort_by(by_score);
        if c.top_p < 1.0 {
            let probs = softmax(&cand, 1.0);
            let mut total = 0.0;
            let mut keep = cand.len();
            for (i, p) in probs.iter().enumerate() {
                total += p;
                if total >= f64::from(c.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if c.min_p > 0.0 {
            let probs = softmax(&cand, 1.0);
            let floor = f64::from(c.min_p) * probs[0];
            let keep = probs.iter().take_while(|&&p| p >= floor).count();
            cand.truncate(keep.max(1));
        }
        let probs = softmax(&cand, c.temperature);
        let mut r: f64 = self.rng.random::<f64>();
        for (&(id, _), &p) in cand.iter().zip(&probs) {
            r -= p;
            if r <= 0.0 {
                return id;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Index of the largest value; the lowest index wins ties (NaNs are
/// skipped; all NaN gives 0). Two passes that vectorise: the max over 8
/// lanes, then the first index holding it.
pub fn argmax(values: &[f32]) -> u32 {
    first_index_of(values, max_of(values))
}

/// The first index holding `max` (0 if none: all NaN).
fn first_index_of(values: &[f32], max: f32) -> u32 {
    values.iter().position(|&v| v == max).unwrap_or(0) as u32
}

/// The largest non-NaN value (-inf if none), over 8 lanes.
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane = lane.max(v);
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Probabilities of sorted candidates at temperature `t`, in f64.
fn softmax(cand: &[(u32, f32)], t: f32) -> Vec<f64> {
    let max = cand.first().map_or(0.0, |c| f64::from(c.1));
    let t = f64::from(t);
    let exps: Vec<f64> = cand
        .iter()
        .map(|&(_, s)| ((f64::from(s) - max) / t).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// ln softmax(logits)[i]. The normaliser sums e^(l - max) over the whole
/// vocabulary on every step, so it runs [`exp_nonpos`] over 8 lanes (the
/// loop vectorises) in blocks of 1024 added in f64: a relative error of
/// ~1e-6, against ~250 µs per token for f64 `exp` at 49,152 entries.
pub fn log_softmax_at(logits: &[f32], i: usize) -> f32 {
    log_softmax_with_max(logits, i, max_of(logits))
}

/// [`log_softmax_at`] with the logits' max already known.
fn log_softmax_with_max(logits: &[f32], i: usize, max: f32) -> f32 {
    if !max.is_finite() {
        return f32::NAN;
    }
    let mut sum = 0f64;
    for block in logits.chunks(1024) {
        let mut lanes = [0f32; 8];
        let mut chunks = block.chunks_exact(8);
        for c in &mut chunks {
            for (lane, &l) in lanes.iter_mut().zip(c) {
                *lane += exp_nonpos(l - max);
            }
        }
        let tail: f32 = chunks
            .remainder()
            .iter()
            .map(|&l| exp_nonpos(l - max))
            .sum();
        sum += lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail);
    }
    (f64::from(logits[i] - max) - sum.ln()) as f32
}

/// e^x for x <= 0, branch-free and without `floor` (a libm call on
/// x86-64's baseline SSE2), so loops over it vectorise: x = (n + f) ln 2
/// with n = round(x log2 e) by the 1.5 * 2^23 trick and f in [-1/2, 1/2],
/// 2^f from the degree-7 Taylor series of e^(f ln 2) (truncation < 4e-9
/// relative), 2^n through the exponent bits. Below -87 it gives about
/// e^-87 ~ 1.6e-38, nothing next to the max's 1.
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let t = x.max(-87.0) * std::f32::consts::LOG2_E;
    let n = (t + ROUND) - ROUND;
    let y = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + y * (1.0
            + y * (1.0 / 2.0
                + y * (1.0 / 6.0
                    + y * (1.0 / 24.0
                        + y * (1.0 / 120.0 + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// The `n` most likely tokens with their log-probabilities (log-softmax of
/// the raw logits), most likely first; ties go to the lower id.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let n = n.min(logits.len());
    if n == 0 {
        return Vec::new();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits
        .iter()
        .map(|&l| f64::from(l - max).exp())
        .sum::<f64>()
        .ln();
    let order = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.select_nth_unstable_by(n - 1, order);
    ids.truncate(n);
    ids.sort_by(order);
    ids.into_iter()
        .map(|id| (id, (f64::from(logits[id as usize] - max) - log_sum) as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut SamplerConfig)) -> SamplerConfig {
        let mut c = SamplerConfig {
            seed: Some(7),
            ..SamplerConfig::default()
        };
        f(&mut c);
        c
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_its_logprob() {
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        let out = s.sample(&[0.0, 2.0, 1.0]).unwrap();
        assert_eq!(out.id, 1);
        let want = (2.0f64 - (1.0f64 + 2f64.exp() + 1f64.exp()).ln()) as f32;
        assert!((out.logprob - want).abs() < 1e-6);
    }

    #[test]
    fn fast_log_softmax_matches_f64() {
        let logits: Vec<f32> = (0..49_152)
            .map(|i| ((i as u64 * 2_654_435_761) % 10_007) as f32 * 3e-3 - 12.0)
            .collect();
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        for i in [0, 17, 40_000] {
            let want = f64::from(logits[i] - max) - sum.ln();
            let got = f64::from(log_softmax_at(&logits, i));
            assert!((got - want).abs() < 1e-5, "{i}: {got} vs {want}");
        }
        for x in [0.0f32, -1e-3, -0.5, -1.0, -10.0, -86.0] {
            let rel = (exp_nonpos(x) / x.exp() - 1.0).abs();
            assert!(rel < 5e-6, "e^{x}: {rel}");
        }
        assert!(exp_nonpos(-1000.0) < 2e-38);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(cfg(|c| c.seed = Some(seed))).unwrap();
            (0..20)
                .map(|_| s.sample(&logits).unwrap().id)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(cfg(|c| c.top_k = 1)).unwrap();
        for _ in 0..10 {
            assert_eq!(s.sample(&[0.5, 0.1, 3.0, 2.9]).unwrap().id, 2);
        }
    }

    #[test]
    fn min_p_and_top_p_cut_the_tail() {
        // p ≈ [0.88, 0.12, ~0]: min_p 0.2 keeps only token 0.
        let logits = [2.0, 0.0, -20.0];
        let mut s = Sampler::new(cfg(|c| {
            c.min_p = 0.2;
            c.top_p = 1.0;
            c.top_k = 0
        }))
        .unwrap();
        assert!((0..50).all(|_| s.sample(&logits).unwrap().id == 0));
        let mut s = Sampler::new(cfg(|c| {
            c.top_p = 0.5;
            c.min_p = 0.0;
            c.top_k = 0
        }))
        .unwrap();
        assert!((0..50).all(|_| s.sample(&logits).unwrap().id == 0));
    }

    #[test]
    fn repeat_penalty_steers_away_from_recent_tokens() {
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 4.0,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        s.accept(&[0]);
        // 2.0 / 4 = 0.5 < 1.0: token 1 wins now.
        assert_eq!(s.sample(&[2.0, 1.0]).unwrap().id, 1);
        let mut s = Sampler::new(SamplerConfig {
            presence_penalty: 5.0,
            ..SamplerConfig::greedy()
        })
        .unwrap();
        s.accept(&[0]);
        assert_eq!(s.sample(&[2.0, 1.0]).unwrap().id, 1);
    }

    #[test]
    fn absurd_settings_are_errors() {
        assert!(Sampler::new(cfg(|c| c.top_p = 2.0)).is_err());
        assert!(Sampler::new(cfg(|c| c.temperature = f32::NAN)).is_err());
        assert!(Sampler::new(cfg(|c| c.repeat_penalty = 0.0)).is_err());
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&[]), Err(SamplerError::Empty));
    }

    #[test]
    fn top_logprobs_are_sorted_normalised_log_probabilities() {
        let logits = [1.0, 3.0, 2.0, 3.0, -1.0];
        let top = top_logprobs(&logits, 3);
        let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
        assert_eq!(ids, [1, 3, 2]);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        for (id, lp) in top {
            let want = (f64::from(logits[id as usize]).exp() / z).ln();
            assert!((f64::from(lp) - want).abs() < 1e-6, "{id}: {lp} vs {want}");
        }
        assert_eq!(top_logprobs(&logits, 0), []);
        assert_eq!(top_logprobs(&logits, 9).len(), 5);
    }
}
