//! Configuring a [`WriteBehind`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::buffer::Buffer;
use super::dead_letter::{DeadLetter, DeadLetterSink};
use super::stats::Counters;
use super::{flusher, Config, Shared, WriteBehind, COMPONENT};
use crate::store::Store;
use crate::{Error, Result};

/// What a write does when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait until the flusher makes room (backpressure on the writer).
    #[default]
    Wait,
    /// Fail at once with [`Error::Unavailable`].
    Fail,
}

/// Configures a [`WriteBehind`]; see [`WriteBehind::builder`].
pub struct WriteBehindBuilder<S: Store> {
    store: S,
    config: Config,
    sink: Option<DeadLetterSink<S::Key, S::Value>>,
}

impl<S: Store> fmt::Debug for WriteBehindBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindBuilder")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("dead_letter_sink", &self.sink.is_some())
            .finish()
    }
}

impl<S: Store> WriteBehindBuilder<S> {
    pub(super) fn new(store: S) -> Self {
        WriteBehindBuilder {
            store,
            config: Config {
                batch_size: 256,
                max_delay: Duration::from_millis(100),
                max_buffered: 100_000,
                when_full: WhenFull::Wait,
                max_retries: 5,
                base_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(5),
            },
            sink: None,
        }
    }

    /// Writes per store batch, and the pending count that sends one
    /// (default 256).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.config.batch_size = batch_size;
        self
    }

    /// The longest a write waits in the buffer before its batch goes
    /// (default 100 ms).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.config.max_delay = max_delay;
        self
    }

    /// The most keys held (pending plus in flight), and what a write that
    /// needs another one does when that many are held (default 100,000,
    /// wait).
    pub fn max_buffered(mut self, max_buffered: usize, when_full: WhenFull) -> Self {
        self.config.max_buffered = max_buffered;
        self.config.when_full = when_full;
        self
    }

    /// How often a failed batch is tried again (transient errors only),
    /// and the back-off before the first retry, doubling up to `max`
    /// with jitter (default 5 retries, 50 ms, 5 s).
    pub fn retries(mut self, max_retries: u32, base: Duration, max: Duration) -> Self {
        self.config.max_retries = max_retries;
        self.config.base_backoff = base;
        self.config.max_backoff = max;
        self
    }

    /// Hands batches that failed every attempt to `sink` instead of keeping
    /// them for [`WriteBehind::take_dead_letters`]. The sink runs on the
    /// flusher task: keep it short (send to a channel, write a file).
    pub fn dead_letter_sink(
        mut self,
        sink: impl Fn(DeadLetter<S::Key, S::Value>) + Send + Sync + 'static,
    ) -> Self {
        self.sink = Some(Box::new(sink));
        self
    }

    /// Validates the configuration and starts the flusher task.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `batch_size` or `max_buffered` is 0, the
    /// delay or the back-off is zero, the back-off cap is below its base,
    /// or there is no tokio runtime to run the flusher on.
    pub fn build(self) -> Result<WriteBehind<S>> {
        let c = &self.config;
        let problem = if c.batch_size == 0 {
            Some("batch_size must be at least 1")
        } else if c.max_buffered == 0 {
            Some("max_buffered must be at least 1")
        } else if c.max_delay.is_zero() {
            Some("max_delay must be longer than zero")
        } else if c.base_backoff.is_zero() {
            Some("the retry back-off must be longer than zero")
        } else if c.max_backoff < c.base_backoff {
            Some("the retry back-off cap must not be below its base")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::config(COMPONENT, problem));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                COMPONENT,
                "build it inside a tokio runtime: it runs a flusher task",
            )
        })?;
        let shared = Arc::new(Shared {
            store: self.store,
            config: self.config,
            buffer: Mutex::new(Buffer::new()),
            wake: Notify::new(),
            room: Notify::new(),
            done: watch::Sender::new(0),
            stopped: watch::Sender::new(false),
            counters: Counters::default(),
            sink: self.sink,
            kept: Mutex::new(Vec::new()),
        });
        runtime.spawn(flusher::run(Arc::clone(&shared)));
        Ok(WriteBehind { shared })
    }
}
