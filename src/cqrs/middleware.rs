//! One middleware pipeline for commands and queries: layers that run
//! around the handler, in the order added (the first added is the
//! outermost), each free to look at the message, time it, refuse it or
//! run the rest again.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::projection::Stale;
use crate::Error;

/// Whether a message is a command or a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A command (changes the write model).
    Command,
    /// A query (reads a read model).
    Query,
}

/// What a middleware sees of a message.
pub struct Envelope<'a> {
    /// Command or query.
    pub kind: MessageKind,
    /// The message's type name.
    pub name: &'static str,
    /// The message itself, to downcast to the types a middleware knows.
    pub message: &'a (dyn Any + Send + Sync),
    /// Whether running the message again is safe after a failure whose
    /// effect is unknown: every query, and a command with an
    /// [`idempotency_key`](super::Command::idempotency_key) (a re-run finds
    /// the first commit and writes nothing). [`Retry`] re-runs only these.
    pub idempotent: bool,
}

impl fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why the rest of a pipeline did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The message was refused (a validation failure): retrying will not
    /// help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A query's read model was not recent enough in time.
    #[error(transparent)]
    Stale(#[from] Stale),
    /// The infrastructure failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// What the rest of a pipeline produced: the handler's result, boxed.
pub type Outcome = Result<Box<dyn Any + Send>, Failure>;

/// A boxed future of an [`Outcome`].
pub type BoxedOutcome<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// A layer of the pipeline.
pub trait Middleware: Send + Sync + 'static {
    /// Runs around the rest of the pipeline: call `next.run()` (once, not
    /// at all to refuse, or again to retry).
    fn call<'a>(&'a self, envelope: &'a Envelope<'a>, next: Next<'a>) -> BoxedOutcome<'a>;
}

/// The rest of the pipeline after a layer.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    rest: &'a [Arc<dyn Middleware>],
    envelope: &'a Envelope<'a>,
    handler: &'a (dyn Fn() -> BoxedOutcome<'a> + Send + Sync),
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("layers_left", &self.rest.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Next<'a> {
    /// Runs the rest of the pipeline and the handler.
    pub fn run(self) -> BoxedOutcome<'a> {
        match self.rest.split_first() {
            Some((layer, rest)) => layer.call(self.envelope, Next { rest, ..self }),
            None => (self.handler)(),
        }
    }
}

/// The layers a bus runs its messages through.
#[derive(Clone, Default)]
pub struct Pipeline {
    layers: Vec<Arc<dyn Middleware>>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl Pipeline {
    /// Adds a layer inside the ones added before.
    pub fn layer(mut self, layer: impl Middleware) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    pub(super) fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Runs `handler` (which may be called more than once) through the
    /// layers.
    pub(super) async fn run<'a>(
        &'a self,
        envelope: &'a Envelope<'a>,
        handler: &'a (dyn Fn() -> BoxedOutcome<'a> + Send + Sync),
    ) -> Outcome {
        Next {
            rest: &self.layers,
            envelope,
            handler,
        }
        .run()
        .await
    }
}

/// Refuses messages of type `M` that a check finds invalid, before their
/// handler runs; other messages pass.
pub struct Validate<M, F> {
    check: F,
    message: std::marker::PhantomData<fn(&M)>,
}

impl<M, F> fmt::Debug for Validate<M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validate")
            .field("message", &std::any::type_name::<M>())
            .finish()
    }
}

impl<M, F> Validate<M, F>
where
    M: 'static,
    F: Fn(&M) -> Result<(), String> + Send + Sync + 'static,
{
    /// Checks every `M` with `check`; an `Err` refuses it with that reason.
    pub fn new(check: F) -> Self {
        Validate {
            check,
            message: std::marker::PhantomData,
        }
    }
}

impl<M, F> Middleware for Validate<M, F>
where
    M: 'static,
    F: Fn(&M) -> Result<(), String> + Send + Sync + 'static,
{
    fn call<'a>(&'a self, envelope: &'a Envelope<'a>, next: Next<'a>) -> BoxedOutcome<'a> {
        if let Some(message) = envelope.message.downcast_ref::<M>() {
            if let Err(reason) = (self.check)(message) {
                return Box::pin(std::future::ready(Err(Failure::Rejected(reason))));
            }
        }
        next.run()
    }
}

/// Retries messages that failed for an infrastructure reason that may
/// pass ([`Error::is_transient`]), with a doubling pause.
///
/// Only messages that are safe to run again are retried
/// ([`Envelope::idempotent`]): queries, and commands with an idempotency
/// key. A store error may mean the write was committed (the `Store`
/// contract), so re-running a command without a key could write it twice;
/// such a command runs once and its failure is returned as it is. Give
/// commands a key to have them retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts after the first.
    pub retries: u32,
    /// The pause before the first retry; it doubles per retry.
    pub backoff: Duration,
}

impl Middleware for Retry {
    fn call<'a>(&'a self, envelope: &'a Envelope<'a>, next: Next<'a>) -> BoxedOutcome<'a> {
        if !envelope.idempotent {
            return next.run();
        }
        Box::pin(async move {
            let mut attempt = 0;
            loop {
                match next.run().await {
                    Err(Failure::Failed(error))
                        if error.is_transient() && attempt < self.retries =>
                    {
                        attempt += 1;
                        tokio::time::sleep(self.backoff * (1 << (attempt - 1).min(16))).await;
                    }
                    outcome => return outcome,
                }
            }
        })
    }
}

/// Per message type: how many ran, how many failed, and their total time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Messages handled.
    pub count: u64,
    /// Of them, refused or failed.
    pub failed: u64,
    /// Their total time.
    pub total: Duration,
}

/// Times every message (and logs it at debug level with `tracing`).
#[derive(Debug, Clone, Default)]
pub struct Timing {
    timings: Arc<Mutex<HashMap<&'static str, Timings>>>,
}

impl Timing {
    /// A new timer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The timings so far, by message type name.
    pub fn timings(&self) -> HashMap<&'static str, Timings> {
        self.timings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Middleware for Timing {
    fn call<'a>(&'a self, envelope: &'a Envelope<'a>, next: Next<'a>) -> BoxedOutcome<'a> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = next.run().await;
            let took = started.elapsed();
            tracing::debug!(message = envelope.name, kind = ?envelope.kind, ?took, ok = outcome.is_ok(), "handled");
            let mut timings = self.timings.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = timings.entry(envelope.name).or_default();
            entry.count += 1;
            entry.failed += u64::from(outcome.is_err());
            entry.total += took;
            outcome
        })
    }
}
