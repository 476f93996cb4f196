//! The scheduler: one worker thread owns a model and serves the requests a
//! bounded queue hands it, one at a time, streaming each token back over
//! the request's own channel.
//!
//! Admission is a semaphore of `parallel + queue` slots taken before a job
//! is queued and given back when the worker is done with it, so a full
//! server answers 429 at once rather than letting waiters pile up. The
//! request side ([`Generation`]) owns the receiving end: dropping it (the
//! client went away) makes the worker's next send fail, and the worker
//! stops at that token boundary; a job whose client left while it waited
//! is skipped without running.
//!
//! This is the seam continuous batching will replace: [`Scheduler::submit`]
//! and the [`Event`] stream stay, the worker's one-job loop becomes a step
//! loop over every admitted sequence.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self as std_mpsc, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use kiln::{
    Error, FinishReason, GenerateOptions, GenerationStats, Generator, LanguageModel, Model,
};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

/// How many requests a model takes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Sequences served together. Until continuous batching lands they run
    /// one after another, so this only adds queue slots.
    pub parallel: usize,
    /// Requests that may wait beyond those; one more is refused with 429.
    /// `parallel + queue` is capped at [`MAX_ADMITTED`].
    pub queue: usize,
}

/// Most requests one model admits at once, whatever the options say.
pub const MAX_ADMITTED: usize = 4096;

impl Default for SchedulerOptions {
    fn default() -> SchedulerOptions {
        SchedulerOptions {
            parallel: 1,
            queue: 16,
        }
    }
}

/// What a request asks of the model.
#[derive(Clone, Debug)]
pub struct Job {
    /// The request's id, for the logs.
    pub id: String,
    /// Token ids, already checked to fit the context with `max_tokens`.
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    /// Most likely alternatives to report with each token (0: none).
    pub top_logprobs: usize,
    /// Queue wait plus generation; past it the request ends with 504.
    pub timeout: Duration,
}

/// One generated token, with what logprobs asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub id: u32,
    /// Text released with this token (may be empty, see `StreamToken`).
    pub text: String,
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens at this step, most likely
    /// first, under the model's raw distribution.
    pub top: Vec<(u32, f32)>,
}

/// What the worker sends back: tokens, then `Done` or `Failed`.
#[derive(Clone, Debug)]
pub enum Event {
    Token(Token),
    Done {
        reason: FinishReason,
        stats: GenerationStats,
    },
    Failed(ApiError),
}

/// A whole generation, for the non-streaming responses.
#[derive(Clone, Debug)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<Token>,
    pub reason: FinishReason,
    pub stats: GenerationStats,
}

/// Tokens the worker may run ahead of a slow client.
const EVENT_BUFFER: usize = 32;

struct Queued {
    job: Job,
    deadline: Instant,
    events: mpsc::Sender<Event>,
    /// Held until the worker is done with the job.
    _slot: OwnedSemaphorePermit,
}

/// A model and the worker thread that runs it.
pub struct Scheduler {
    jobs: SyncSender<Queued>,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// The model's name, for the logs.
    name: String,
}

impl Scheduler {
    /// Moves `model` onto a new worker thread.
    pub fn start(
        model: Model,
        name: impl Into<String>,
        options: SchedulerOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Scheduler> {
        let name = name.into();
        let capacity = options
            .parallel
            .saturating_add(options.queue)
            .clamp(1, MAX_ADMITTED);
        let (jobs, queue) = std_mpsc::sync_channel(capacity);
        // The worker's own timer, for sends that wait on a slow client.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let worker = Worker {
            model,
            metrics: metrics.clone(),
            rt,
            name: name.clone(),
        };
        std::thread::Builder::new()
            .name(format!("kiln-worker {name}"))
            .spawn(move || worker.run(queue))?;
        Ok(Scheduler {
            jobs,
            slots: Arc::new(Semaphore::new(capacity)),
            metrics,
            name,
        })
    }

    /// Queues `job`, or refuses it with 429 when every slot is taken.
    pub fn submit(&self, job: Job) -> Result<Generation, ApiError> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.rejected();
            return Err(ApiError::busy(self.metrics.retry_after_secs()));
        };
        let (events, rx) = mpsc::channel(EVENT_BUFFER);
        let now = Instant::now();
        let deadline = now
            .checked_add(job.timeout)
            .unwrap_or(now + Duration::from_secs(1 << 30));
        let timeout = job.timeout;
        tracing::debug!(model = %self.name, request = %job.id, prompt_tokens = job.prompt.len(), "queued");
        self.metrics.queued();
        let queued = Queued {
            job,
            deadline,
            events,
            _slot: slot,
        };
        match self.jobs.try_send(queued) {
            Ok(()) => Ok(Generation {
                rx,
                deadline: deadline.into(),
                timeout,
                ended: false,
            }),
            Err(e) => {
                self.metrics.dequeued();
                Err(match e {
                    // Slots bound the queue, so this is only a safety net.
                    TrySendError::Full(_) => ApiError::busy(1),
                    TrySendError::Disconnected(_) => {
                        ApiError::internal(format!("the worker of model {} has stopped", self.name))
                    }
                })
            }
        }
    }
}

/// The request's end of one job: its events in order, ending after
/// `Done` or `Failed` (a deadline that passes is a `Failed` 504).
/// Dropping it cancels the job at the next token.
pub struct Generation {
    rx: mpsc::Receiver<Event>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    ended: bool,
}

impl Generation {
    pub async fn next(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let event = match tokio::time::timeout_at(self.deadline, self.rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => Event::Failed(ApiError::internal(
                "the model worker stopped before the generation ended",
            )),
            Err(_) => Event::Failed(ApiError::timeout(self.timeout)),
        };
        if !matches!(event, Event::Token(_)) {
            self.ended = true;
            // A timed-out worker sees the closed channel at its next send.
            self.rx.close();
        }
        Some(event)
    }

    /// The first event, or the error it is: a request fails with a proper
    /// status while nothing has been sent yet.
    pub async fn first(&mut self) -> Result<Event, ApiError> {
        match self.next().await {
            Some(Event::Failed(e)) => Err(e),
            Some(event) => Ok(event),
            None => Err(ApiError::internal("the generation had already ended")),
        }
    }

    /// Waits for the end, gathering every token (`first` is the event
    /// [`Generation::first`] returned).
    pub async fn collect(mut self, first: Event) -> Result<Collected, ApiError> {
        let mut tokens = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                Event::Token(t) => tokens.push(t),
                Event::Done { reason, stats } => {
                    return Ok(Collected {
                        text: tokens.iter().map(|t| t.text.as_str()).collect(),
                        tokens,
                        reason,
                        stats,
                    })
                }
                Event::Failed(e) => return Err(e),
            }
            next = self.next().await;
        }
        Err(ApiError::internal("the generation ended without finishing"))
    }

    pub fn into_stream(self) -> impl Stream<Item = Event> + Send {
        futures_util::stream::unfold(self, |mut generation| async move {
            let event = generation.next().await?;
            Some((event, generation))
        })
    }
}

struct Worker {
    model: Model,
    metrics: Arc<Metrics>,
    rt: Runtime,
    name: String,
}

impl Worker {
    /// Serves jobs until every sender (the [`Scheduler`]) is gone.
    fn run(mut self, queue: std_mpsc::Receiver<Queued>) {
        for queued in queue {
            self.metrics.dequeued();
            let Queued {
                job,
                deadline,
                events,
                _slot,
            } = queued;
            if events.is_closed() {
                tracing::info!(model = %self.name, request = %job.id, "client left while queued");
                self.metrics.ended(Outcome::Cancelled);
                continue;
            }
            if Instant::now() >= deadline {
                let _ = events.try_send(Event::Failed(ApiError::timeout(job.timeout)));
                self.metrics.ended(Outcome::Timeout);
                continue;
            }
            self.metrics.started();
            let start = Instant::now();
            // A panic in the engine fails this request, not the server.
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.generate(&job, deadline, &events)
            }));
            let (outcome, stats) = ran.unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(model = %self.name, request = %job.id, panic = %why, "generation panicked");
                let error = ApiError::internal(format!("the engine panicked: {why}"));
                let _ = events.try_send(Event::Failed(error));
                (Outcome::Error, GenerationStats::default())
            });
            let wall = start.elapsed();
            self.metrics.finished(outcome, &stats, wall);
            tracing::info!(
                model = %self.name,
                request = %job.id,
                outcome = ?outcome,
                prompt_tokens = stats.prompt_tokens,
                completion_tokens = stats.gen_tokens,
                prefill_tok_s = stats.prefill_tok_s(),
                decode_tok_s = stats.decode_tok_s(),
                seconds = wall.as_secs_f64(),
                "generation ended"
            );
        }
    }

    /// Runs one job to its end; how it ended and how far it got.
    fn generate(
        &mut self,
        job: &Job,
        deadline: Instant,
        events: &mpsc::Sender<Event>,
    ) -> (Outcome, GenerationStats) {
        let rt = &self.rt;
        // Waits while the client is slow, but never past the deadline.
        let send = |event: Event| -> Result<(), Outcome> {
            let sent = rt.block_on(async {
                tokio::time::timeout_at(deadline.into(), events.send(event)).await
            });
            match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_closed)) => Err(Outcome::Cancelled),
                Err(_elapsed) => Err(Outcome::Timeout),
            }
        };
        let tokenizer = self.model.tokenizer().clone();
        let top = RefCell::new(Vec::new());
        let mut tap = Tap {
            model: &mut self.model,
            top_n: job.top_logprobs,
            top: &top,
        };
        let mut generator =
            match Generator::new(&mut tap, tokenizer, &job.prompt, job.options.clone()) {
                Ok(g) => g,
                Err(e) => {
                    let _ = send(Event::Failed(e.into()));
                    return (Outcome::Error, GenerationStats::default());
                }
            };
        loop {
            if Instant::now() >= deadline {
                let _ = events.try_send(Event::Failed(ApiError::timeout(job.timeout)));
                return (Outcome::Timeout, generator.stats());
            }
            let Some(item) = generator.next() else { break };
            let event = match item {
                Ok(t) => {
                    // The sampler's own value for the chosen token, which
                    // this computation matches only to ~1e-6, so a client
                    // sees one number for it.
                    let mut top = top.take();
                    for entry in top.iter_mut().filter(|e| e.0 == t.id) {
                        entry.1 = t.logprob;
                    }
                    Event::Token(Token {
                        id: t.id,
                        text: t.text,
                        logprob: t.logprob,
                        top,
                    })
                }
                Err(e) => {
                    tracing::error!(model = %self.name, request = %job.id, error = %e, "generation failed");
                    let _ = send(Event::Failed(e.into()));
                    return (Outcome::Error, generator.stats());
                }
            };
            if let Err(outcome) = send(event) {
                return (outcome, generator.stats());
            }
        }
        let stats = generator.stats();
        let reason = generator.finish_reason().unwrap_or(FinishReason::Length);
        let outcome = match reason {
            FinishReason::Length => Outcome::Length,
            FinishReason::Eog | FinishReason::Stop => Outcome::Stop,
        };
        match send(Event::Done { reason, stats }) {
            Ok(()) => (outcome, stats),
            Err(cancelled) => (cancelled, stats),
        }
    }
}

/// The model as the generator sees it, noting the most likely tokens of
/// each step when logprobs ask for them (the generator keeps the logits to
/// itself).
struct Tap<'a> {
    model: &'a mut Model,
    top_n: usize,
    top: &'a RefCell<Vec<(u32, f32)>>,
}

impl LanguageModel for Tap<'_> {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn context_length(&self) -> usize {
        self.model.context_length()
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, Error> {
        let logits = self.model.logits(tokens, pos)?;
        if self.top_n > 0 {
            *self.top.borrow_mut() = top_logprobs(&logits, self.top_n);
        }
        Ok(logits)
    }
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
