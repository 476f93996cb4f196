//! An async [`Stream`] of tokens (feature `async`). Generation runs on its
//! own thread, holding the model's lock, and hands tokens over a bounded
//! channel: a slow consumer pauses the model after `BUFFER` tokens instead
//! of piling them up, and dropping the stream cancels the generation at
//! the next token boundary.
//!
//! ```no_run
//! # async fn demo(model: kiln::Model, prompt: Vec<u32>) -> Result<(), kiln::Error> {
//! use std::sync::{Arc, Mutex};
//! use futures_core::Stream;
//!
//! let tokenizer = model.tokenizer().clone();
//! let model = Arc::new(Mutex::new(model));
//! let options = kiln::GenerateOptions::default();
//! let mut stream = kiln::stream::generate(&model, tokenizer, &prompt, options)?;
//! while let Some(token) = std::future::poll_fn(|cx| {
//!     std::pin::Pin::new(&mut stream).poll_next(cx)
//! })
//! .await
//! {
//!     print!("{}", token?.text);
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;

pub use futures_core::Stream;
use kiln_loaders::Tokenizer;
use tokio::sync::mpsc;

use crate::generate::{FinishReason, GenerateOptions, GenerationStats, Generator, StreamToken};
#[cfg(doc)]
use crate::model::Model;
use crate::model::{Error, LanguageModel};

/// Tokens the worker may run ahead of the consumer.
const BUFFER: usize = 16;

/// How a generation ended: what the stream leaves behind once drained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Finished {
    pub stats: GenerationStats,
    /// `None` when it ended on an error or was cancelled.
    pub reason: Option<FinishReason>,
}

/// The tokens of one generation as an async stream of
/// `Result<StreamToken, Error>`; after an error it ends.
pub struct TokenStream {
    rx: mpsc::Receiver<Result<StreamToken, Error>>,
    finished: Arc<Mutex<Option<Finished>>>,
    worker: Option<JoinHandle<()>>,
}

impl TokenStream {
    /// Stats and finish reason, once the stream has yielded its last item.
    pub fn finished(&self) -> Option<Finished> {
        *self.finished.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Stream for TokenStream {
    type Item = Result<StreamToken, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = item {
            // The worker has stored its stats and dropped the sender.
            if let Some(worker) = self.worker.take() {
                let _ = worker.join();
            }
        }
        item
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        // Closing the channel makes the worker's next send fail: it stops
        // after the token in flight. Not joined here: that would block an
        // async task for up to one forward pass.
        self.rx.close();
    }
}

/// Streams a generation over `model` (tokens of `prompt` from position 0;
/// `tokenizer` is the model's, e.g. [`Model::tokenizer`] cloned before the
/// model went into its mutex).
/// The worker waits for the model's lock (another generation may hold
/// it), so a bad request (empty prompt, context overflow, bad sampler
/// settings) arrives as the stream's one item, an error.
pub fn generate<M>(
    model: &Arc<Mutex<M>>,
    tokenizer: Arc<Tokenizer>,
    prompt: &[u32],
    options: GenerateOptions,
) -> Result<TokenStream, Error>
where
    M: LanguageModel + Send + 'static,
{
    let (tx, rx) = mpsc::channel(BUFFER);
    let finished = Arc::new(Mutex::new(None));
    let worker = {
        let model = model.clone();
        let finished = finished.clone();
        let prompt = prompt.to_vec();
        std::thread::Builder::new()
            .name("kiln-generate".into())
            .spawn(move || {
                let mut guard = model.lock().unwrap_or_else(PoisonError::into_inner);
                let result = run(&mut *guard, tokenizer, &prompt, options, &tx);
                *finished.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                drop(tx);
            })
            .map_err(|e| Error::Worker(e.to_string()))?
    };
    Ok(TokenStream {
        rx,
        finished,
        worker: Some(worker),
    })
}

/// The worker's loop: every token through the channel until the end, an
/// error, or a consumer that went away.
fn run<M: LanguageModel>(
    model: &mut M,
    tokenizer: Arc<Tokenizer>,
    prompt: &[u32],
    options: GenerateOptions,
    tx: &mpsc::Sender<Result<StreamToken, Error>>,
) -> Finished {
    let mut generator = match Generator::new(model, tokenizer, prompt, options) {
        Ok(g) => g,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return Finished {
                stats: GenerationStats::default(),
                reason: None,
            };
        }
    };
    while let Some(item) = generator.next() {
        let failed = item.is_err();
        if tx.blocking_send(item).is_err() || failed {
            return Finished {
                stats: generator.stats(),
                reason: None,
            };
        }
    }
    Finished {
        stats: generator.stats(),
        reason: generator.finish_reason(),
    }
}
