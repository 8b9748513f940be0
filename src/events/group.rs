//! Subscription groups: each receives every event of its topic; within a
//! group, events are spread over its workers by key, so that one key's
//! events are handled one after another, in publish order.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::dead_letter::{DeadLetter, DeadLetterFn, DeadLetters, ReplayReport};
use super::event::{Event, EventKey};
use super::handler::{attempt, Attempt, Handler};
use super::stats::{GroupCounters, GroupStats};
use super::topic::Topic;
use super::worker;
use crate::{Error, Result};

const COMPONENT: &str = "subscription group";

/// What a group does when a worker's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backpressure {
    /// The publisher waits for room: nothing is lost, the slowest group
    /// sets the pace.
    Block,
    /// The oldest buffered event is dropped to make room and counted in
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

/// One worker's buffer.
#[derive(Debug)]
pub(super) struct Partition<E> {
    queue: Mutex<VecDeque<Event<E>>>,
    /// The queue's length, readable without its lock: only publishers
    /// (under the topic's lock) make it grow, so a check for room stays
    /// true until they push.
    len: AtomicUsize,
    /// Wakes the worker: events arrived, or the group is closing.
    pub(super) wake: Notify,
}

impl<E> Partition<E> {
    fn new() -> Self {
        Partition {
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Event<E>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Swaps every queued event into `batch`, which must be empty (the
    /// worker's side): the lock is held for a swap of two deques, not for
    /// a copy of the events.
    pub(super) fn take_all(&self, batch: &mut VecDeque<Event<E>>) {
        if self.len() == 0 {
            return; // no lock taken: an idle worker leaves the publisher's lock alone
        }
        let mut queue = self.lock();
        std::mem::swap(&mut *queue, batch);
        // Sequentially consistent, with the load of `room_waiters` that
        // follows: a publisher about to wait for room sees the room, or is
        // seen waiting.
        self.len.store(0, Ordering::SeqCst);
    }
}

/// Told of each event the group dead-letters (a broker bridge settles the
/// broker's copy of it there).
pub(super) type DeadLetterHook<E> = Arc<DeadLetterFn<E>>;

/// Replays one dead letter through the group's handler.
type Replayer<E> =
    Box<dyn Fn(Event<E>) -> Pin<Box<dyn Future<Output = Attempt> + Send>> + Send + Sync>;

/// What a group's publishers, workers and handle share.
pub(super) struct Group<E> {
    pub(super) name: String,
    pub(super) partitions: Box<[Partition<E>]>,
    /// Events a worker's buffer holds before the backpressure policy acts.
    pub(super) capacity: usize,
    pub(super) backpressure: Backpressure,
    pub(super) retry: RetryPolicy,
    /// Wakes publishers waiting for room, and counts them (workers wake
    /// them only when there are some).
    pub(super) room: Notify,
    pub(super) room_waiters: AtomicU64,
    /// Wakes [`Subscription::caught_up`] when nothing is pending.
    idle: Notify,
    pub(super) closed: AtomicBool,
    pub(super) counters: GroupCounters,
    pub(super) dead: DeadLetters<E>,
    replayer: Replayer<E>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl<E> fmt::Debug for Group<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .field("workers", &self.partitions.len())
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

impl<E: Clone + Send + Sync + 'static> Group<E> {
    /// Whether the events to come (`(key, offset)`) fit the buffers: a
    /// worker's buffer takes them if they fit its capacity, or if it is
    /// empty (a batch larger than a buffer goes in alone). Always true
    /// for a group that drops instead.
    pub(super) fn has_room<'k>(
        &self,
        events: impl ExactSizeIterator<Item = (Option<&'k EventKey>, u64)>,
    ) -> bool {
        if self.backpressure == Backpressure::DropOldest {
            return true;
        }
        let fits = |partition: &Partition<E>, need: usize| {
            let len = partition.len();
            need == 0 || len == 0 || len + need <= self.capacity
        };
        if let [partition] = &self.partitions[..] {
            return fits(partition, events.len());
        }
        let workers = self.partitions.len();
        let mut events = events;
        if events.len() == 1 {
            // A single publish: one worker to look at, nothing to allocate.
            return events.next().is_none_or(|(key, offset)| {
                fits(&self.partitions[partition_of(key, offset, workers)], 1)
            });
        }
        let mut need = vec![0usize; workers];
        for (key, offset) in events {
            need[partition_of(key, offset, workers)] += 1;
        }
        need.iter()
            .zip(self.partitions.iter())
            .all(|(&need, partition)| fits(partition, need))
    }

    /// Hands events to their workers (the topic checked for room).
    pub(super) fn push(&self, events: &[Event<E>]) {
        let workers = self.partitions.len();
        let count = events.len() as u64;
        GroupCounters::add_locked(&self.counters.publisher.received, count);
        let mut dropped = 0;
        let mut run_start = 0;
        // Consecutive events for one worker go in under one lock.
        while run_start < events.len() {
            let index = partition_of(events[run_start].key(), events[run_start].offset(), workers);
            let mut run_end = run_start + 1;
            while run_end < events.len()
                && partition_of(events[run_end].key(), events[run_end].offset(), workers) == index
            {
                run_end += 1;
            }
            let partition = &self.partitions[index];
            let was_empty = {
                let mut queue = partition.lock();
                let was_empty = queue.is_empty();
                for event in &events[run_start..run_end] {
                    if self.backpressure == Backpressure::DropOldest && queue.len() >= self.capacity
                    {
                        queue.pop_front();
                        dropped += 1;
                    }
                    queue.push_back(event.clone());
                }
                partition.len.store(queue.len(), Ordering::Release);
                was_empty
            };
            // A worker parks only after finding its buffer empty, so only
            // the push that ends the emptiness needs to wake it; events
            // pushed behind others are taken with them.
            if was_empty {
                partition.wake.notify_one();
            }
            run_start = run_end;
        }
        if dropped > 0 {
            // Never the last pending events: the one pushed is pending.
            GroupCounters::add_locked(&self.counters.publisher.dropped, dropped);
        }
    }

    /// `n` events are finished: handled, dead-lettered or dropped.
    pub(super) fn finished(&self, n: u64) {
        self.counters.worker.finished.fetch_add(n, Ordering::SeqCst);
        if self.counters.worker.watchers.load(Ordering::SeqCst) > 0 && self.counters.pending() == 0
        {
            self.idle.notify_waiters();
        }
    }

    /// Stops the workers once their buffers are empty; wakes publishers
    /// waiting for room so they see the bus is closed.
    pub(super) fn close(&self) -> Vec<JoinHandle<()>> {
        self.closed.store(true, Ordering::Release);
        for partition in self.partitions.iter() {
            partition.wake.notify_one();
        }
        self.room.notify_waiters();
        std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn stats(&self) -> GroupStats {
        self.counters.snapshot()
    }
}

/// Configures a subscription group of a topic; made by
/// [`Topic::group`].
#[must_use = "a group receives nothing until `subscribe` is called"]
pub struct GroupBuilder<E> {
    topic: Topic<E>,
    name: String,
    workers: usize,
    capacity: usize,
    backpressure: Backpressure,
    retry: RetryPolicy,
    start: StartFrom,
    on_dead_letter: Option<DeadLetterHook<E>>,
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
            capacity: 1024,
            backpressure: Backpressure::Block,
            retry: RetryPolicy::default(),
            start: StartFrom::Latest,
            on_dead_letter: None,
        }
    }

    #[cfg(feature = "nats")]
    pub(super) fn on_dead_letter(mut self, hook: DeadLetterHook<E>) -> Self {
        self.on_dead_letter = Some(hook);
        self
    }

    /// Workers that handle the group's events concurrently (default 1).
    /// One key's events always go to one worker.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Events each worker's buffer holds, and what happens when it is full
    /// (default 1,024, [`Backpressure::Block`]).
    pub fn buffer(mut self, capacity: usize, when_full: Backpressure) -> Self {
        self.capacity = capacity;
        self.backpressure = when_full;
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
    /// zero buffer, a retry back-off cap below its base, a group name
    /// already used on this topic, or a call outside a tokio runtime;
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) once the
    /// bus is shut down.
    pub fn subscribe<H: Handler<E>>(self, handler: H) -> Result<Subscription<E>> {
        let problem = if self.workers == 0 {
            Some("a group needs at least one worker")
        } else if self.capacity == 0 {
            Some("a group's buffer must hold at least one event")
        } else if self.retry.max_backoff < self.retry.base_backoff {
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
                "subscribe inside a tokio runtime: it runs worker tasks",
            )
        })?;
        let handler = Arc::new(handler);
        let replay_handler = Arc::clone(&handler);
        let replayer: Replayer<E> = Box::new(move |event| {
            let handler = Arc::clone(&replay_handler);
            Box::pin(async move { attempt(&*handler, event).await })
        });
        let group = Arc::new(Group {
            name: self.name,
            partitions: (0..self.workers).map(|_| Partition::new()).collect(),
            capacity: self.capacity,
            backpressure: self.backpressure,
            retry: self.retry,
            room: Notify::new(),
            room_waiters: AtomicU64::new(0),
            idle: Notify::new(),
            closed: AtomicBool::new(false),
            counters: GroupCounters::default(),
            dead: DeadLetters::new(self.on_dead_letter),
            replayer,
            workers: Mutex::new(Vec::new()),
        });
        // Registered (and handed the retained events) before any worker
        // runs, under the topic's lock: no event is missed or doubled.
        self.topic.add_group(Arc::clone(&group), self.start)?;
        let handles = (0..self.workers)
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
        let counters = &self.group.counters;
        // Counted while waiting (a drop guard, so a cancelled wait is
        // uncounted too); a worker that finishes events after the count
        // went up sees it, and wakes this task if nothing is pending.
        let _watching = Watching::new(&counters.worker.watchers);
        loop {
            let mut idle = std::pin::pin!(self.group.idle.notified());
            idle.as_mut().enable();
            if counters.pending() == 0 {
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
                    GroupCounters::add(&self.group.counters.worker.delivered, 1);
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
