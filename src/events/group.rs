//! Subscription groups: each receives every event of its topic; within a
//! group, events are spread over its workers by key, so that one key's
//! events are handled one after another, in publish order.

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::dead_letter::{DeadLetter, DeadLetterSink, DeadLetters, ReplayReport};
use super::event::{Event, EventKey};
use super::handler::{attempt, Attempt, Handler};
use super::log::Log;
use super::stats::{GroupStats, WorkerCounters};
use super::topic::Topic;
use super::worker;
use crate::{Error, Result};

const COMPONENT: &str = "subscription group";

/// What a group does when a worker falls its whole buffer behind the
/// topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// The publisher waits for room: nothing is lost, the slowest group
    /// sets the pace.
    Block,
    /// The worker skips to the newest events; the skipped ones are counted in
    /// [`GroupStats::dropped`]: the publisher never waits for this group
    /// (tokio broadcast's behaviour, made visible).
    DropOldest,
}

/// Where a new group starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// With the next event published.
    Latest,
    /// With the oldest event the topic retains, then everything after.
    Earliest,
}

/// How a failing event is retried before it is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first (0: dead-letter on the first failure).
    pub max_retries: u32,
    /// The wait before the first retry; it doubles per retry.
    pub base_backoff: Duration,
    /// The longest wait between retries.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three retries, 10 ms, 20 ms, 40 ms apart (at most one second).
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1-based).
    pub(super) fn backoff(&self, retry: u32) -> Duration {
        let doubled = self
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20));
        doubled.min(self.max_backoff)
    }
}

/// Where one worker is in the topic's log, on a cache line of its own.
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct Cursor {
    /// The next offset the worker reads: it has taken every event below
    /// (the publisher's room check reads this).
    pub(super) next: AtomicU64,
    /// Every event of the worker's below this offset is finished:
    /// handled, dead-lettered or dropped.
    pub(super) done: AtomicU64,
}

impl Cursor {
    fn at(offset: u64) -> Self {
        Cursor {
            next: AtomicU64::new(offset),
            done: AtomicU64::new(offset),
        }
    }
}

/// Where a broker bridge keeps the group's dead letters (instead of the
/// in-process queue).
pub(super) type DeadLetterHook<E> = Arc<dyn DeadLetterSink<E>>;

/// Replays one dead letter through the group's handler.
type Replayer<E> =
    Box<dyn Fn(Event<E>) -> Pin<Box<dyn Future<Output = Attempt> + Send>> + Send + Sync>;

/// What a group's publishers, workers and handle share.
pub(super) struct Group<E> {
    pub(super) name: String,
    /// The topic's log, which the workers read.
    pub(super) log: Arc<Log<E>>,
    /// One per worker.
    pub(super) cursors: Box<[Cursor]>,
    /// The offset the group started from.
    pub(super) start: u64,
    /// How far (in the topic's events) a worker may fall behind before
    /// the backpressure policy acts.
    pub(super) capacity: u64,
    pub(super) backpressure: Backpressure,
    pub(super) retry: RetryPolicy,
    /// Wakes [`Subscription::caught_up`] when the group has caught up.
    idle: Notify,
    pub(super) counters: WorkerCounters,
    pub(super) dead: DeadLetters<E>,
    replayer: Replayer<E>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl<E> fmt::Debug for Group<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("workers", &self.cursors.len())
            .field("capacity", &self.capacity)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

/// Which worker handles an event: by key, so a key stays on one worker;
/// events without a key go round by offset.
pub(super) fn partition_of(key: Option<&EventKey>, offset: u64, workers: usize) -> usize {
    let spread = match key {
        Some(key) => foldhash::fast::FixedState::with_seed(0x5ca1_ab1e).hash_one(key.as_bytes()),
        None => offset,
    };
    (spread % workers as u64) as usize
}

impl<E> Group<E> {
    /// The workers' handles, to wait on once the log is closed.
    pub(super) fn take_workers(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<E: Clone + Send + Sync + 'static> Group<E> {
    /// The offset below which every worker has room for `events` more
    /// (the publisher appends while the tail stays below it); `None` when
    /// a worker has none now. A worker that has taken everything takes a
    /// batch larger than its buffer too.
    pub(super) fn room_until(&self, tail: u64, events: u64) -> Option<u64> {
        if self.backpressure == Backpressure::DropOldest {
            return Some(u64::MAX);
        }
        let mut until = u64::MAX;
        for cursor in self.cursors.iter() {
            let next = cursor.next.load(Ordering::SeqCst);
            let room = next + self.capacity;
            if tail + events > room && next != tail {
                return None;
            }
            until = until.min(room.max(tail + events));
        }
        Some(until)
    }

    /// Whether every worker has finished every event below the tail.
    fn is_caught_up(&self) -> bool {
        let tail = self.log.tail();
        self.cursors
            .iter()
            .all(|cursor| cursor.done.load(Ordering::SeqCst) >= tail)
    }

    /// Worker `index` has finished `n` events, and everything of its
    /// below `done`.
    pub(super) fn finished(&self, index: usize, n: u64, done: u64) {
        self.counters.finished.fetch_add(n, Ordering::Relaxed);
        // Sequentially consistent, with the load of `watchers` that
        // follows: a task about to wait in `caught_up` sees this, or is
        // seen waiting and woken.
        self.cursors[index].done.store(done, Ordering::SeqCst);
        if self.counters.watchers.load(Ordering::SeqCst) > 0 && self.is_caught_up() {
            self.idle.notify_waiters();
        }
    }

    /// Events a dropping worker is more than its buffer behind: it drops
    /// them when it next reads (counted in the stats already).
    fn about_to_drop(&self, tail: u64) -> u64 {
        if self.backpressure == Backpressure::Block {
            return 0;
        }
        let workers = self.cursors.len() as u64;
        self.cursors
            .iter()
            .map(|cursor| {
                let behind = tail.saturating_sub(cursor.next.load(Ordering::Relaxed));
                // A worker's share of the topic's events.
                behind.saturating_sub(self.capacity).div_ceil(workers)
            })
            .sum()
    }

    fn stats(&self) -> GroupStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let tail = self.log.tail();
        let received = tail - self.start;
        let dropped = load(&self.counters.dropped) + self.about_to_drop(tail);
        let finished = load(&self.counters.finished);
        GroupStats {
            received,
            delivered: load(&self.counters.delivered),
            retried: load(&self.counters.retried),
            panicked: load(&self.counters.panicked),
            dead_lettered: load(&self.counters.dead_lettered),
            dropped,
            lag: if self.is_caught_up() {
                0
            } else {
                received.saturating_sub(finished + dropped)
            },
            in_flight: load(&self.counters.in_flight),
        }
    }
}

/// Configures a subscription group of a topic; made by
/// [`Topic::group`].
#[must_use = "a group receives nothing until `subscribe` is called"]
pub struct GroupBuilder<E> {
    topic: Topic<E>,
    name: String,
    workers: usize,
    /// `None`: the topic's buffer.
    capacity: Option<usize>,
    backpressure: Backpressure,
    retry: RetryPolicy,
    start: StartFrom,
    dead_letter_sink: Option<DeadLetterHook<E>>,
    max_dead_letters: usize,
}

impl<E> fmt::Debug for GroupBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupBuilder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("capacity", &self.capacity)
            .field("backpressure", &self.backpressure)
            .field("retry", &self.retry)
            .field("start", &self.start)
            .finish()
    }
}

impl<E: Clone + Send + Sync + 'static> GroupBuilder<E> {
    pub(super) fn new(topic: Topic<E>, name: String) -> Self {
        GroupBuilder {
            topic,
            name,
            workers: 1,
            capacity: None,
            backpressure: Backpressure::Block,
            retry: RetryPolicy::default(),
            start: StartFrom::Latest,
            dead_letter_sink: None,
            max_dead_letters: 100_000,
        }
    }

    /// Sends the group's dead letters to `sink` instead of its queue.
    #[cfg(feature = "nats")]
    pub(super) fn dead_letter_sink(mut self, sink: DeadLetterHook<E>) -> Self {
        self.dead_letter_sink = Some(sink);
        self
    }

    /// Workers that handle the group's events concurrently (default 1).
    /// One key's events always go to one worker.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How far each worker may fall behind the topic, in events, and what
    /// happens when one is that far behind (default: the topic's
    /// [buffer](super::TopicOptions::buffer), [`Backpressure::Block`]).
    /// At most the topic's buffer, which holds the events not yet taken.
    ///
    /// A group of several workers counts the topic's events, its other
    /// workers' included: a worker of four may fall about `capacity / 4`
    /// of its own events behind.
    pub fn buffer(mut self, capacity: usize, when_full: Backpressure) -> Self {
        self.capacity = Some(capacity);
        self.backpressure = when_full;
        self
    }

    /// The most events the group's dead-letter queue holds, parked events
    /// included (default 100,000). When it is full, a worker with another
    /// event to set aside waits until letters are replayed, and the
    /// group's [backpressure](Self::buffer) reaches the publisher: the
    /// queue never grows without bound, and nothing is dropped that the
    /// group did not say it may drop.
    pub fn max_dead_letters(mut self, events: usize) -> Self {
        self.max_dead_letters = events;
        self
    }

    /// How failing events are retried before they are dead-lettered
    /// (default [`RetryPolicy::default`]).
    pub fn retries(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Where the group starts reading (default [`StartFrom::Latest`]).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// Starts the group's workers, each running `handler` on its events.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero workers, a
    /// zero buffer or one larger than the topic's, a retry back-off cap
    /// below its base, a group name already used on this topic, or a call
    /// outside a tokio runtime;
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) once the
    /// bus is shut down.
    pub fn subscribe<H: Handler<E>>(self, handler: H) -> Result<Subscription<E>> {
        let topic_buffer = self.topic.buffer();
        let capacity = self.capacity.unwrap_or(topic_buffer);
        let problem = if self.workers == 0 {
            Some("a group needs at least one worker".to_string())
        } else if capacity == 0 {
            Some("a group's buffer must hold at least one event".to_string())
        } else if capacity > topic_buffer {
            Some(format!(
                "a group's buffer ({capacity}) cannot exceed its topic's ({topic_buffer}): \
                 raise TopicOptions::buffer"
            ))
        } else if self.max_dead_letters == 0 {
            Some("max_dead_letters must be at least 1".to_string())
        } else if self.retry.max_backoff < self.retry.base_backoff {
            Some("the retry back-off cap must not be below its base".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::config(COMPONENT, problem));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                COMPONENT,
                "subscribe inside a tokio runtime: it runs worker tasks",
            )
        })?;
        let handler = Arc::new(handler);
        let replay_handler = Arc::clone(&handler);
        let replayer: Replayer<E> = Box::new(move |event| {
            let handler = Arc::clone(&replay_handler);
            Box::pin(async move { attempt(&*handler, event).await })
        });
        let workers = self.workers;
        // Registered, and its start offset chosen, under the topic's lock:
        // no event is missed or doubled.
        let group = self.topic.add_group(&self.name, self.start, |log, start| {
            Arc::new(Group {
                name: self.name.clone(),
                log: Arc::clone(log),
                cursors: (0..workers).map(|_| Cursor::at(start)).collect(),
                start,
                capacity: capacity as u64,
                backpressure: self.backpressure,
                retry: self.retry,
                idle: Notify::new(),
                counters: WorkerCounters::default(),
                dead: DeadLetters::new(self.dead_letter_sink, self.max_dead_letters),
                replayer,
                workers: Mutex::new(Vec::new()),
            })
        })?;
        let handles = (0..workers)
            .map(|index| {
                runtime.spawn(worker::run(Arc::clone(&group), index, Arc::clone(&handler)))
            })
            .collect();
        *group.workers.lock().unwrap_or_else(PoisonError::into_inner) = handles;
        Ok(Subscription { group })
    }
}

/// Counts a waiting task while it lives (a drop guard, so a cancelled
/// wait is uncounted too).
pub(super) struct Watching<'a>(&'a AtomicU64);

impl<'a> Watching<'a> {
    pub(super) fn new(watchers: &'a AtomicU64) -> Self {
        watchers.fetch_add(1, Ordering::SeqCst);
        Watching(watchers)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running subscription group: its stats, its dead-letter queue, and a
/// way to wait until it has caught up. Dropping the handle does not stop
/// the group; [`EventBus::shutdown`](super::EventBus::shutdown) does.
pub struct Subscription<E> {
    group: Arc<Group<E>>,
}

impl<E> fmt::Debug for Subscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("group", &self.group.name)
            .finish()
    }
}

#[cfg(feature = "nats")]
impl<E> Subscription<E> {
    /// Stops the group's workers at once, as a crash would: the events
    /// they hold are dropped unfinished (a broker bridge's copies of them
    /// stay unsettled at the broker).
    pub(super) fn abort(&self) {
        for worker in self.group.take_workers() {
            worker.abort();
        }
    }
}

impl<E: Clone + Send + Sync + 'static> Subscription<E> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.group.name
    }

    /// The group's counters.
    pub fn stats(&self) -> GroupStats {
        self.group.stats()
    }

    /// Returns once every event the group has received is finished
    /// (handled, dead-lettered or dropped).
    pub async fn caught_up(&self) {
        // Counted while waiting (a drop guard, so a cancelled wait is
        // uncounted too); a worker that finishes events after the count
        // went up sees it, and wakes this task once all have caught up.
        let _watching = Watching::new(&self.group.counters.watchers);
        loop {
            let mut idle = std::pin::pin!(self.group.idle.notified());
            idle.as_mut().enable();
            if self.group.is_caught_up() {
                return;
            }
            idle.await;
        }
    }

    /// The dead letters, oldest first (a copy; they stay queued).
    pub fn dead_letters(&self) -> Vec<DeadLetter<E>> {
        self.group.dead.snapshot()
    }

    /// Hands every dead letter to the handler once more, oldest first and
    /// one key's letters in order. A letter whose handler fails again
    /// stays, and the later letters of its key stay behind it; a key whose
    /// letters are all handled is no longer parked, so its new events go
    /// to the workers again.
    pub async fn replay_dead_letters(&self) -> ReplayReport {
        let mut report = ReplayReport::default();
        let mut failed_keys: Vec<EventKey> = Vec::new();
        let mut budget = self.group.dead.len();
        while budget > 0 {
            let Some(letter) = self.group.dead.take_next(&failed_keys) else {
                break;
            };
            budget -= 1;
            match (self.group.replayer)(letter.event.clone()).await {
                Attempt::Handled => {
                    report.handled += 1;
                    WorkerCounters::add(&self.group.counters.delivered, 1);
                    self.group.dead.handled(&letter);
                }
                Attempt::Failed(error) | Attempt::Panicked(error) => {
                    report.failed += 1;
                    if let Some(key) = letter.event.key() {
                        failed_keys.push(key.clone());
                    }
                    self.group.dead.put_back(DeadLetter {
                        attempts: letter.attempts + 1,
                        error,
                        event: letter.event,
                    });
                }
            }
        }
        report
    }
}
