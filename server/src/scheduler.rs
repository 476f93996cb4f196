//! The scheduler: one worker thread owns a model and runs every admitted
//! request through it by continuous batching, streaming each token back
//! over the request's own channel.
//!
//! The worker loops over steps. At each step it admits queued requests
//! into free KV-cache slots (up to `parallel` sequences), runs the prompt
//! of each newcomer, then one batched decode forward for every sequence
//! that has a token to run: requests join and leave the batch at token
//! boundaries, each with its own slot, sampler and stop strings.
//!
//! Admission is a semaphore of `parallel + queue` permits taken before a
//! job is queued and given back when the worker is done with it, so a full
//! server answers 429 at once rather than letting waiters pile up. The
//! request side ([`Generation`]) owns the receiving end: dropping it (the
//! client went away) closes the channel, and the worker frees that
//! sequence's slot at the next step. A slow client does not hold the
//! batch up: when its channel is full its sequence sits out steps until
//! the client catches up (or its deadline passes).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use kiln::{BatchRow, FinishReason, GenerateOptions, GenerationStats, Model, Sequence};
use rayon::prelude::*;
use tokio::sync::mpsc::{self, error::TrySendError as EventSendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::metrics::{Metrics, Outcome};

/// How many requests a model takes at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerOptions {
    /// Sequences decoded together in one batch, each in its own KV-cache
    /// slot (capped by the slots the model was loaded with).
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
    queued_at: Instant,
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
        let parallel = options
            .parallel
            .clamp(1, model.slots().min(kiln::MAX_BATCH));
        let capacity = parallel
            .saturating_add(options.queue)
            .clamp(1, MAX_ADMITTED);
        let (jobs, queue) = std_mpsc::sync_channel(capacity);
        let worker = Worker {
            model,
            metrics: metrics.clone(),
            name: name.clone(),
            free: (0..parallel).rev().collect(),
            active: Vec::new(),
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
            queued_at: now,
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

/// The worker: owns the model and every admitted sequence.
struct Worker {
    model: Model,
    metrics: Arc<Metrics>,
    /// The model's name, for the logs.
    name: String,
    /// KV-cache slots no sequence holds.
    free: Vec<usize>,
    active: Vec<Active>,
}

/// An admitted request: its sequence, its cache slot and its channel.
struct Active {
    id: String,
    slot: usize,
    seq: Sequence,
    events: mpsc::Sender<Event>,
    deadline: Instant,
    timeout: Duration,
    /// When the request was queued (time to first token counts from here).
    queued_at: Instant,
    /// When the worker took it up (its wall time counts from here).
    started: Instant,
    /// Events the client's channel had no room for yet, oldest first. The
    /// sequence runs no step while any wait.
    outbox: VecDeque<Event>,
    /// Set once the sequence has ended; it leaves when its outbox is
    /// delivered (at once when the client is gone or too late).
    ended: Option<Outcome>,
    /// Held until the sequence leaves.
    _permit: OwnedSemaphorePermit,
}

impl Active {
    /// Whether it has a token for the next forward.
    fn ready(&self) -> bool {
        self.ended.is_none() && self.outbox.is_empty() && self.seq.pending().is_some()
    }

    /// Queues the outcome of a forward for this sequence: its token, and
    /// the end when that was the last one.
    fn take(&mut self, token: Result<kiln::StreamToken, kiln::Error>) {
        match token {
            Ok(t) => {
                self.outbox.push_back(Event::Token(Token {
                    id: t.id,
                    text: t.text,
                    logprob: t.logprob,
                    top: t.top,
                }));
                if let Some(reason) = self.seq.finish_reason() {
                    self.end_with(reason);
                }
            }
            Err(e) => self.fail(Outcome::Error, e.into()),
        }
    }

    /// Ends normally: `Done` after the tokens still in the outbox.
    fn end_with(&mut self, reason: FinishReason) {
        let stats = self.seq.stats();
        self.outbox.push_back(Event::Done { reason, stats });
        self.ended = Some(match reason {
            FinishReason::Length => Outcome::Length,
            FinishReason::Eog | FinishReason::Stop => Outcome::Stop,
        });
    }

    /// Ends with an error after the tokens already sent (a timeout drops
    /// those still waiting: the client is out of time anyway).
    fn fail(&mut self, outcome: Outcome, error: ApiError) {
        if outcome == Outcome::Timeout {
            self.outbox.clear();
            let _ = self.events.try_send(Event::Failed(error));
        } else {
            self.outbox.push_back(Event::Failed(error));
        }
        self.ended = Some(outcome);
    }

    /// Sends what the channel has room for. A closed channel (the client
    /// left) ends the sequence as cancelled.
    fn deliver(&mut self) {
        while let Some(event) = self.outbox.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(EventSendError::Full(event)) => {
                    self.outbox.push_front(event);
                    return;
                }
                Err(EventSendError::Closed(_)) => {
                    self.outbox.clear();
                    self.ended.get_or_insert(Outcome::Cancelled);
                    return;
                }
            }
        }
        if self.ended.is_none() && self.events.is_closed() {
            self.ended = Some(Outcome::Cancelled);
        }
    }
}

/// How long the worker waits for a new request while every sequence waits
/// on its client.
const IDLE_WAIT: Duration = Duration::from_millis(2);

impl Worker {
    /// Steps until every sender (the [`Scheduler`]) is gone and every
    /// sequence has ended.
    fn run(mut self, queue: std_mpsc::Receiver<Queued>) {
        let start = Instant::now();
        let batch = self.free.len();
        match self.model.warm_up(batch) {
            Ok(()) => {
                tracing::info!(model = %self.name, batch, seconds = start.elapsed().as_secs_f64(), "decode plans compiled")
            }
            // Not fatal: the plans compile on first use instead.
            Err(e) => {
                tracing::warn!(model = %self.name, error = %e, "compiling the decode plans ahead failed")
            }
        }
        let mut wait = None;
        loop {
            if !self.admit(&queue, wait) {
                return;
            }
            self.expire();
            // A panic in the engine fails the sequences in flight, not the
            // server.
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| self.step()));
            let stepped = stepped.unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(model = %self.name, panic = %why, "step panicked");
                for a in self.active.iter_mut().filter(|a| a.ended.is_none()) {
                    let error = ApiError::internal(format!("the engine panicked: {why}"));
                    a.fail(Outcome::Error, error);
                }
                true
            });
            self.retire();
            wait = (!stepped).then_some(IDLE_WAIT);
        }
    }

    /// Takes queued jobs into free slots: blocks while nothing is active,
    /// waits up to `wait` for the first one otherwise. False once the
    /// scheduler is gone and nothing is left to do.
    fn admit(&mut self, queue: &std_mpsc::Receiver<Queued>, mut wait: Option<Duration>) -> bool {
        while !self.free.is_empty() {
            let next = if self.active.is_empty() {
                queue.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else if let Some(w) = wait.take() {
                queue.recv_timeout(w)
            } else {
                queue.try_recv().map_err(|e| match e {
                    std_mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    std_mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            };
            match next {
                Ok(queued) => self.start(queued),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return !self.active.is_empty(),
            }
        }
        if let Some(w) = wait {
            // Every slot is taken and every sequence waits on its client.
            std::thread::sleep(w);
        }
        true
    }

    /// Admits one job into a free slot, or ends it at once when its
    /// client left, its deadline passed or the request is invalid.
    fn start(&mut self, queued: Queued) {
        self.metrics.dequeued();
        let Queued {
            job,
            deadline,
            queued_at,
            events,
            _slot: permit,
        } = queued;
        if events.is_closed() {
            tracing::info!(model = %self.name, request = %job.id, "client left while queued");
            self.metrics.ended(Outcome::Cancelled);
            return;
        }
        if Instant::now() >= deadline {
            let _ = events.try_send(Event::Failed(ApiError::timeout(job.timeout)));
            self.metrics.ended(Outcome::Timeout);
            return;
        }
        let tokenizer = self.model.tokenizer().clone();
        let ctx = self.model.context_length();
        let seq = match Sequence::new(tokenizer, &job.prompt, job.options, ctx) {
            Ok(seq) => seq,
            Err(e) => {
                let _ = events.try_send(Event::Failed(e.into()));
                self.metrics.ended(Outcome::Error);
                return;
            }
        };
        let Some(slot) = self.free.pop() else {
            // `admit` only starts jobs while a slot is free.
            let _ = events.try_send(Event::Failed(ApiError::internal("no free slot")));
            self.metrics.ended(Outcome::Error);
            return;
        };
        // The slot's adapters are the request's (none: the base), whatever
        // its last holder used.
        let none = kiln::AdapterSet::new();
        if let Err(e) = self
            .model
            .set_adapters_in(slot, seq.adapters().unwrap_or(&none))
        {
            self.free.push(slot);
            let _ = events.try_send(Event::Failed(e.into()));
            self.metrics.ended(Outcome::Error);
            return;
        }
        self.metrics.started();
        tracing::debug!(model = %self.name, request = %job.id, slot, "admitted");
        self.active.push(Active {
            id: job.id,
            slot,
            seq,
            events,
            deadline,
            timeout: job.timeout,
            queued_at,
            started: Instant::now(),
            outbox: VecDeque::new(),
            ended: None,
            _permit: permit,
        });
    }

    /// Fails the sequences whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        for a in self.active.iter_mut() {
            a.deliver();
            if a.ended.is_none() && now >= a.deadline {
                let error = ApiError::timeout(a.timeout);
                a.fail(Outcome::Timeout, error);
            }
        }
    }

    /// Runs the prompts of the sequences just admitted, then one batched
    /// decode forward over every sequence with a token to run. False when
    /// no sequence could run (all wait on their clients).
    fn step(&mut self) -> bool {
        let mut ran = false;
        let vocab = self.model.vocab_size();
        // Newcomers' prompts, one forward each.
        for a in self.active.iter_mut() {
            if a.seq.prefilled() || !a.ready() {
                continue;
            }
            let Some((prompt, pos)) = a.seq.pending() else {
                continue;
            };
            let start = Instant::now();
            let token = match self.model.logits_in(a.slot, prompt, pos) {
                Ok(logits) => a.seq.accept(&logits, start.elapsed().as_secs_f64()),
                Err(e) => Err(e),
            };
            self.metrics.first_token(a.queued_at.elapsed());
            a.take(token);
            a.deliver();
            ran = true;
        }

        // One decode step for every sequence past its prompt.
        let mut rows = Vec::new();
        let mut row_of = vec![None; self.active.len()];
        for (i, a) in self.active.iter().enumerate() {
            if !a.seq.prefilled() || !a.ready() {
                continue;
            }
            if let Some((&[token], pos)) = a.seq.pending() {
                row_of[i] = Some(rows.len());
                rows.push(BatchRow {
                    slot: a.slot,
                    token,
                    pos,
                });
            }
        }
        if rows.is_empty() {
            return ran;
        }
        let start = Instant::now();
        self.metrics.decode_step(rows.len());
        match self.model.decode_batch(&rows) {
            Ok(logits) => {
                let forward_s = start.elapsed().as_secs_f64();
                // Sampling (a softmax over the vocabulary each) in parallel.
                self.active
                    .par_iter_mut()
                    .zip(row_of.par_iter())
                    .for_each(|(a, row)| {
                        if let Some(r) = *row {
                            let logits = &logits[r * vocab..(r + 1) * vocab];
                            let token = a.seq.accept(logits, forward_s);
                            a.take(token);
                        }
                    });
            }
            Err(e) => {
                tracing::error!(model = %self.name, error = %e, rows = rows.len(), "decode step failed");
                for (a, row) in self.active.iter_mut().zip(&row_of) {
                    if row.is_some() {
                        a.fail(Outcome::Error, ApiError::internal(e.to_string()));
                    }
                }
            }
        }
        for a in self.active.iter_mut() {
            a.deliver();
        }
        true
    }

    /// Lets the ended sequences go: their slots are free for the next step.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let a = &mut self.active[i];
            a.deliver();
            let done = match a.ended {
                Some(Outcome::Cancelled | Outcome::Timeout) => true,
                Some(_) => a.outbox.is_empty(),
                None => false,
            };
            if !done {
                i += 1;
                continue;
            }
            let a = self.active.swap_remove(i);
            let outcome = a.ended.unwrap_or(Outcome::Error);
            let stats = a.seq.stats();
            let wall = a.started.elapsed();
            self.free.push(a.slot);
            self.metrics.finished(outcome, &stats, wall);
            tracing::info!(
                model = %self.name,
                request = %a.id,
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
}
