//! Configuring a [`WriteBehind`].

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::buffer::Buffer;
use super::dead_letter::{DeadLetter, DeadLetterSink, DeadLetters};
use super::journal::{self, DecodeFn, EncodeFn, Journal, SyncPolicy};
use super::stats::Counters;
use super::{flusher, Config, Shared, WriteBehind, COMPONENT};
use crate::codec::Codec;
use crate::store::Store;
use crate::{Error, Result};

/// What a write does when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait until the flusher makes room (backpressure on the writer).
    #[default]
    Wait,
    /// Fail at once with [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable).
    Fail,
}

/// Configures a [`WriteBehind`]; see [`WriteBehind::builder`].
pub struct WriteBehindBuilder<S: Store> {
    store: S,
    config: Config,
    sink: Option<DeadLetterSink<S::Key, S::Value>>,
    journal: Option<JournalConfig<S::Key, S::Value>>,
    max_dead_letters: usize,
}

struct JournalConfig<K, V> {
    dir: PathBuf,
    policy: SyncPolicy,
    encode: EncodeFn<K, V>,
    decode: DecodeFn<K, V>,
}

impl<S: Store> fmt::Debug for WriteBehindBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBehindBuilder")
            .field("store", &self.store)
            .field("config", &self.config)
            .field("dead_letter_sink", &self.sink.is_some())
            .field("max_dead_letters", &self.max_dead_letters)
            .field(
                "journal",
                &self.journal.as_ref().map(|j| (&j.dir, j.policy)),
            )
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
            journal: None,
            max_dead_letters: 100_000,
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

    /// The most dead letters' writes kept at once (default 100,000). Past
    /// that, a write that would become a dead letter is held and retried
    /// until there is room (taken or replayed letters make room), so
    /// memory and the durable log stay bounded and nothing is dropped.
    pub fn max_dead_letters(mut self, writes: usize) -> Self {
        self.max_dead_letters = writes;
        self
    }

    /// Tells `sink` of every dead letter. Without a journal the sink takes
    /// them instead of the layer (they are not kept for
    /// [`WriteBehind::take_dead_letters`], and it is the sink's job to keep
    /// them); with a journal the letters are in the durable log first, and
    /// the sink is a notification. The sink runs on the flusher task: keep
    /// it short (send to a channel, write a file).
    pub fn dead_letter_sink(
        mut self,
        sink: impl Fn(DeadLetter<S::Key, S::Value>) + Send + Sync + 'static,
    ) -> Self {
        self.sink = Some(Box::new(sink));
        self
    }

    /// Validates the configuration, replays the journal (if any) and
    /// starts the flusher task.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when another layer holds the journal
    /// directory's lock;
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `batch_size`, `max_buffered` or `max_dead_letters` is 0, the
    /// delay, the back-off or the sync interval is zero, the back-off cap
    /// is below its base, or there is no tokio runtime to run the flusher
    /// on; [`ErrorKind::Backend`](crate::ErrorKind::Backend) when the journal directory cannot be read or
    /// written.
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
        } else if self.max_dead_letters == 0 {
            Some("max_dead_letters must be at least 1")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::config(COMPONENT, problem));
        }
        if let Some(SyncPolicy::Interval(interval)) = self.journal.as_ref().map(|j| j.policy) {
            if interval.is_zero() {
                return Err(Error::config(
                    COMPONENT,
                    "the journal's sync interval must be longer than zero",
                ));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                COMPONENT,
                "build it inside a tokio runtime: it runs a flusher task",
            )
        })?;
        let mut buffer = Buffer::new();
        let mut replay_stats = (0, 0);
        let mut damage = Vec::new();
        let (journal, letters) = match self.journal {
            Some(config) => {
                let (journal, log, replay) =
                    Journal::open(&config.dir, config.policy, config.decode)?;
                let (letters, bad_letters) = DeadLetters::durable(
                    &config.dir,
                    self.max_dead_letters,
                    self.sink,
                    config.encode,
                    config.decode,
                )?;
                buffer.log = Some(log);
                replay_stats = (replay.writes.len() as u64, replay.bad_records + bad_letters);
                damage = replay.damage;
                let now = tokio::time::Instant::now();
                for write in replay.writes {
                    buffer.push(write, now);
                }
                buffer.flush_target = buffer.last_seq();
                (Some((journal, config.encode)), letters)
            }
            None => (
                None,
                DeadLetters::in_memory(self.max_dead_letters, self.sink),
            ),
        };
        let shared = Arc::new(Shared {
            store: self.store,
            config: self.config,
            buffer: Mutex::new(buffer),
            wake: Notify::new(),
            room: Notify::new(),
            done: watch::Sender::new(0),
            stopped: watch::Sender::new(false),
            counters: Counters::default(),
            letters,
            journal,
            damage,
            held: AtomicBool::new(false),
        });
        Counters::add(&shared.counters.replayed, replay_stats.0);
        Counters::add(&shared.counters.bad_journal_records, replay_stats.1);
        if let Some((journal, _)) = &shared.journal {
            if let SyncPolicy::Interval(interval) = journal.policy() {
                runtime.spawn(flusher::sync_every(Arc::downgrade(&shared), interval));
            }
        }
        runtime.spawn(flusher::run(Arc::clone(&shared)));
        Ok(WriteBehind { shared })
    }
}

impl<S> WriteBehindBuilder<S>
where
    S: Store,
    S::Key: Codec,
    S::Value: Codec,
{
    /// Logs every write to a journal in `dir` before acknowledging it, so
    /// that a crash loses no acknowledged write: on the next `build` with
    /// the same directory, the writes the store had not confirmed are
    /// replayed into it before new writes are accepted. `policy` says when
    /// the log is forced to the disk (a crash of the process loses nothing
    /// under any policy; a power loss, see [`SyncPolicy`]).
    ///
    /// The journal is a series of 4 MiB segment files, each written out in
    /// full when it is created (so a full disk is an error then, not later)
    /// and memory-mapped while it is appended to. One journal directory
    /// belongs to one `WriteBehind` at a time (`build` locks it), and other
    /// programs must not modify or truncate its files. Dead letters are
    /// kept durably in the same directory (see [`WriteBehind`]).
    pub fn journal(mut self, dir: impl Into<PathBuf>, policy: SyncPolicy) -> Self {
        self.journal = Some(JournalConfig {
            dir: dir.into(),
            policy,
            encode: journal::encode::<S::Key, S::Value>,
            decode: journal::decode::<S::Key, S::Value>,
        });
        self
    }
}
