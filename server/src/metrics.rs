//! Counters and gauges for `GET /metrics`, in Prometheus' text format
//! (version 0.0.4): plain atomics and two small labelled maps, no registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kiln::GenerationStats;

/// How one generation ended, as the `reason` label counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// An end-of-generation token or a stop string.
    Stop,
    Length,
    /// The client went away (or its deadline passed) before the end.
    Cancelled,
    Timeout,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Stop => "stop",
            Outcome::Length => "length",
            Outcome::Cancelled => "cancelled",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }
}

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Requests queued for a model, not yet picked up by its worker.
    waiting: AtomicI64,
    /// Requests a worker is generating for.
    running: AtomicI64,
    /// Requests turned away with 429.
    rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    prefill_us: AtomicU64,
    decode_us: AtomicU64,
    /// Batched decode forwards, and the sequences they carried.
    decode_steps: AtomicU64,
    decode_rows: AtomicU64,
    /// Wall time of finished generations, for `Retry-After`.
    generation_us: AtomicU64,
    generations: Mutex<BTreeMap<Outcome, u64>>,
    /// Time to first token: a count per [`TTFT_BUCKETS`] bound (not
    /// cumulative), then the count and sum of every observation.
    ttft: Mutex<([u64; TTFT_BUCKETS.len()], u64, f64)>,
    /// (route, status) → (count, seconds to the response head).
    http: Mutex<BTreeMap<(String, u16), (u64, f64)>>,
}

impl Metrics {
    pub fn queued(&self) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker took a queued request (to run it, or to drop it).
    pub fn dequeued(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// A generation ended (`stats` is what it got through).
    pub fn finished(&self, outcome: Outcome, stats: &GenerationStats, wall: Duration) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.ended(outcome);
        let add = |counter: &AtomicU64, n: u64| counter.fetch_add(n, Ordering::Relaxed);
        add(&self.prompt_tokens, stats.prompt_tokens as u64);
        add(&self.completion_tokens, stats.gen_tokens as u64);
        add(&self.prefill_us, (stats.prefill_s * 1e6) as u64);
        add(&self.decode_us, (stats.decode_s * 1e6) as u64);
        add(&self.generation_us, wall.as_micros() as u64);
    }

    /// A batched decode forward over `rows` sequences.
    pub fn decode_step(&self, rows: usize) {
        self.decode_steps.fetch_add(1, Ordering::Relaxed);
        self.decode_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// A request's first token, `wait` after it was queued.
    pub fn first_token(&self, wait: Duration) {
        let s = wait.as_secs_f64();
        let mut h = lock(&self.ttft);
        if let Some(i) = TTFT_BUCKETS.iter().position(|&b| s <= b) {
            h.0[i] += 1;
        }
        h.1 += 1;
        h.2 += s;
    }

    /// Counts an ending without a generation (dropped while queued).
    pub fn ended(&self, outcome: Outcome) {
        *lock(&self.generations).entry(outcome).or_default() += 1;
    }

    pub fn http(&self, route: &str, status: u16, elapsed: Duration) {
        let mut map = lock(&self.http);
        let entry = map.entry((route.to_string(), status)).or_default();
        entry.0 += 1;
        entry.1 += elapsed.as_secs_f64();
    }

    /// The mean wall time of a generation so far, rounded up to whole
    /// seconds (at least 1): how long a rejected client should wait.
    pub fn retry_after_secs(&self) -> u64 {
        let n: u64 = lock(&self.generations).values().sum();
        let us = self.generation_us.load(Ordering::Relaxed);
        match n {
            0 => 1,
            n => (us / n).div_ceil(1_000_000).clamp(1, 60),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load_i = |a: &AtomicI64| a.load(Ordering::Relaxed);
        let load_u = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
        gauge(
            &mut out,
            "kiln_requests_waiting",
            "Requests queued for a model.",
            load_i(&self.waiting),
        );
        gauge(
            &mut out,
            "kiln_requests_running",
            "Requests being generated.",
            load_i(&self.running),
        );
        counter(
            &mut out,
            "kiln_requests_rejected_total",
            "Requests refused with 429 (queue full).",
            load_u(&self.rejected),
        );
        counter(
            &mut out,
            "kiln_prompt_tokens_total",
            "Prompt tokens processed.",
            load_u(&self.prompt_tokens),
        );
        counter(
            &mut out,
            "kiln_completion_tokens_total",
            "Tokens generated.",
            load_u(&self.completion_tokens),
        );
        counter(
            &mut out,
            "kiln_prefill_seconds_total",
            "Seconds spent on prompts.",
            secs(&self.prefill_us),
        );
        counter(
            &mut out,
            "kiln_decode_seconds_total",
            "Seconds spent on decode steps.",
            secs(&self.decode_us),
        );

        counter(
            &mut out,
            "kiln_decode_steps_total",
            "Batched decode forwards run.",
            load_u(&self.decode_steps),
        );
        counter(
            &mut out,
            "kiln_decode_rows_total",
            "Sequence-steps those forwards carried (rows / steps = mean batch).",
            load_u(&self.decode_rows),
        );
        header(
            &mut out,
            "kiln_generations_total",
            "counter",
            "Generations by how they ended.",
        );
        for (outcome, n) in lock(&self.generations).iter() {
            let _ = writeln!(
                out,
                "kiln_generations_total{{reason=\"{}\"}} {n}",
                outcome.label()
            );
        }
        header(
            &mut out,
            "kiln_time_to_first_token_seconds",
            "histogram",
            "Seconds from a request's arrival (queue wait included) to its first token.",
        );
        let (buckets, n, sum) = *lock(&self.ttft);
        let mut cumulative = 0;
        for (bound, count) in TTFT_BUCKETS.iter().zip(buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "kiln_time_to_first_token_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "kiln_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {n}"
        );
        let _ = writeln!(out, "kiln_time_to_first_token_seconds_sum {sum}");
        let _ = writeln!(out, "kiln_time_to_first_token_seconds_count {n}");
        let http = lock(&self.http);
        header(
            &mut out,
            "kiln_http_requests_total",
            "counter",
            "HTTP requests by route and status.",
        );
        for ((route, status), (n, _)) in http.iter() {
            let _ = writeln!(
                out,
                "kiln_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        header(
            &mut out,
            "kiln_http_response_seconds_total",
            "counter",
            "Seconds from request to response head (streams keep going after it).",
        );
        for ((route, status), (_, s)) in http.iter() {
            let _ = writeln!(
                out,
                "kiln_http_response_seconds_total{{route=\"{}\",status=\"{status}\"}} {s}",
                escape(route)
            );
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_labels() {
        let m = Metrics::default();
        m.queued();
        m.dequeued();
        m.started();
        let stats = GenerationStats {
            prompt_tokens: 5,
            gen_tokens: 3,
            prefill_s: 0.5,
            decode_s: 0.25,
        };
        m.finished(Outcome::Length, &stats, Duration::from_millis(2500));
        m.http("/v1/chat/completions", 200, Duration::from_millis(10));
        m.http("/v1/\"x\"", 404, Duration::ZERO);
        let text = m.render();
        assert!(text.contains("kiln_requests_waiting 0\n"), "{text}");
        assert!(text.contains("kiln_requests_running 0\n"), "{text}");
        assert!(text.contains("kiln_prompt_tokens_total 5\n"), "{text}");
        assert!(text.contains("kiln_completion_tokens_total 3\n"), "{text}");
        assert!(
            text.contains("kiln_generations_total{reason=\"length\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "kiln_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1\n"
        ));
        assert!(text.contains("route=\"/v1/\\\"x\\\"\""), "{text}");
        assert_eq!(m.retry_after_secs(), 3);
    }
}
