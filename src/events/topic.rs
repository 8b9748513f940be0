//! A typed topic: publishers append events, each subscription group
//! receives all of them, and the last few are retained for groups that
//! start later.

use std::fmt;
use std::ops::Range;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::task::JoinHandle;

use super::event::{Event, EventKey};
use super::group::{Group, GroupBuilder, StartFrom, Watching};
use super::log::Log;
use super::stats::TopicStats;
use crate::{Error, Result};

/// How a topic is made; see [`EventBus::topic_with`](super::EventBus::topic_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicOptions {
    retain: usize,
    buffer: usize,
}

impl Default for TopicOptions {
    /// No retention, a buffer of 1,024 events.
    fn default() -> Self {
        TopicOptions {
            retain: 0,
            buffer: 1024,
        }
    }
}

impl TopicOptions {
    /// Keeps the last `events` events for groups that start from the
    /// earliest offset (default 0: none).
    pub fn retain_last(mut self, events: usize) -> Self {
        self.retain = events;
        self
    }

    /// How many recent events the topic holds for its groups' workers to
    /// take (default 1,024): the most any group's
    /// [buffer](super::GroupBuilder::buffer) may be, and the largest
    /// batch one [`Topic::publish_batch`] takes. The topic holds
    /// `max(buffer, retain_last)` events, rounded up to a power of two;
    /// an event's payload is dropped when a later event takes its place.
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events;
        self
    }
}

struct State<E> {
    groups: Vec<Arc<Group<E>>>,
    /// The publisher appends without looking at the cursors while the
    /// tail stays below this: every blocking group had room up to here
    /// when last looked at (cursors only move forward).
    room_until: u64,
}

pub(super) struct Inner<E> {
    name: String,
    options: TopicOptions,
    log: Arc<Log<E>>,
    state: Mutex<State<E>>,
}

/// A typed topic of an [`EventBus`](super::EventBus). Cloning it is
/// cheap; every clone publishes to the same topic.
pub struct Topic<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Topic<E> {
    fn clone(&self) -> Self {
        Topic {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<E> fmt::Debug for Topic<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.inner.name)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

fn closed(name: &str) -> Error {
    Error::unavailable("EventBus", format!("topic `{name}`: the bus is shut down"))
}

impl<E: Clone + Send + Sync + 'static> Topic<E> {
    pub(super) fn new(name: String, options: TopicOptions) -> Result<Self> {
        if options.buffer == 0 {
            return Err(Error::config(
                "EventBus",
                format!("topic `{name}`: the buffer must hold at least one event"),
            ));
        }
        Ok(Topic {
            inner: Arc::new(Inner {
                name,
                options,
                log: Arc::new(Log::new(options.buffer.max(options.retain))),
                state: Mutex::new(State {
                    groups: Vec::new(),
                    room_until: u64::MAX,
                }),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<E>> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(super) fn options(&self) -> TopicOptions {
        self.inner.options
    }

    /// The most events a group's buffer, or a batch, may hold.
    pub(super) fn buffer(&self) -> usize {
        self.inner.options.buffer
    }

    /// Publishes an event without a key; returns its offset. Waits while a
    /// blocking group's buffer is full.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) once the
    /// bus is shut down (the event is not published).
    pub async fn publish(&self, payload: E) -> Result<u64> {
        self.publish_one(None, payload).await
    }

    /// Publishes an event with a key: within each group, events of one key
    /// are handled one after another, in publish order. Returns its
    /// offset.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_keyed(&self, key: impl Into<EventKey>, payload: E) -> Result<u64> {
        self.publish_one(Some(key.into()), payload).await
    }

    /// Publishes several events at once, under one lock: their offsets are
    /// consecutive and returned as a range. All of them are published, or
    /// none (on error).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish);
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a batch larger
    /// than the topic's [buffer](TopicOptions::buffer) (nothing is
    /// published).
    pub async fn publish_batch(
        &self,
        events: impl IntoIterator<Item = (Option<EventKey>, E)>,
    ) -> Result<Range<u64>> {
        let events: Vec<(Option<EventKey>, E)> = events.into_iter().collect();
        if events.len() > self.buffer() {
            return Err(Error::config(
                "EventBus",
                format!(
                    "topic `{}`: a batch of {} events is larger than the topic's buffer of {}",
                    self.inner.name,
                    events.len(),
                    self.buffer()
                ),
            ));
        }
        let count = events.len() as u64;
        let log = &self.inner.log;
        loop {
            {
                let mut state = self.lock();
                self.check_open()?;
                if has_room(&mut state, log, count) {
                    let first = log.tail();
                    let now = SystemTime::now();
                    log.append(
                        events
                            .into_iter()
                            .zip(first..)
                            .map(|((key, payload), offset)| Event::new(payload, key, offset, now)),
                    );
                    drop(state);
                    log.wake_readers();
                    return Ok(first..first + count);
                }
            }
            self.wait_for_room(count).await?;
        }
    }

    async fn publish_one(&self, key: Option<EventKey>, payload: E) -> Result<u64> {
        let log = &self.inner.log;
        loop {
            {
                let mut state = self.lock();
                self.check_open()?;
                if has_room(&mut state, log, 1) {
                    let offset = log.append_one(payload, key, SystemTime::now());
                    drop(state);
                    log.wake_readers();
                    return Ok(offset);
                }
            }
            self.wait_for_room(1).await?;
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.log.is_closed() {
            return Err(closed(&self.inner.name));
        }
        Ok(())
    }

    /// Waits until every blocking group may have room for `count` more
    /// events (the caller looks again, under the lock).
    async fn wait_for_room(&self, count: u64) -> Result<()> {
        let log = &self.inner.log;
        // The wake-up is registered before the check, so a worker that
        // makes room in between is not missed.
        let _waiting = Watching::new(&log.room_waiters);
        let mut room = pin!(log.room.notified());
        room.as_mut().enable();
        let still_full = {
            let mut state = self.lock();
            self.check_open()?;
            log.room_wanted
                .store(log.tail() + count, std::sync::atomic::Ordering::SeqCst);
            !has_room(&mut state, log, count)
        };
        if still_full {
            room.await;
        }
        Ok(())
    }

    /// Starts configuring a subscription group named `name`: every group
    /// receives every event.
    pub fn group(&self, name: impl Into<String>) -> GroupBuilder<E> {
        GroupBuilder::new(self.clone(), name.into())
    }

    /// Registers the group `make` makes from the log and the offset it
    /// starts from.
    pub(super) fn add_group(
        &self,
        name: &str,
        start: StartFrom,
        make: impl FnOnce(&Arc<Log<E>>, u64) -> Arc<Group<E>>,
    ) -> Result<Arc<Group<E>>> {
        let mut state = self.lock();
        let log = &self.inner.log;
        if log.is_closed() {
            return Err(closed(&self.inner.name));
        }
        if state.groups.iter().any(|g| g.name == name) {
            return Err(Error::config(
                "subscription group",
                format!(
                    "topic `{}` already has a group named `{name}`",
                    self.inner.name
                ),
            ));
        }
        let tail = log.tail();
        let first = match start {
            StartFrom::Latest => tail,
            StartFrom::Earliest => tail - self.retained(tail),
        };
        let group = make(log, first);
        // Its workers start behind the tail: look at the cursors again.
        state.room_until = 0;
        state.groups.push(Arc::clone(&group));
        Ok(group)
    }

    /// Events retained for late groups, with the tail at `tail`.
    fn retained(&self, tail: u64) -> u64 {
        tail.min(self.inner.options.retain as u64)
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        let state = self.lock();
        let published = self.inner.log.tail();
        TopicStats {
            published,
            retained: self.retained(published),
            groups: state.groups.len() as u64,
        }
    }

    /// Refuses further events and stops the groups once drained; the
    /// workers' handles, to wait on.
    pub(super) fn close(&self) -> Vec<JoinHandle<()>> {
        let state = self.lock();
        self.inner.log.close();
        state
            .groups
            .iter()
            .flat_map(|group| group.take_workers())
            .collect()
    }
}

/// Whether every blocking group has room for `count` more events, looking
/// at the workers' cursors only when the cached bound says no.
fn has_room<E: Clone + Send + Sync + 'static>(
    state: &mut State<E>,
    log: &Log<E>,
    count: u64,
) -> bool {
    let tail = log.tail();
    if tail + count <= state.room_until {
        return true;
    }
    let mut until = u64::MAX;
    for group in &state.groups {
        match group.room_until(tail, count) {
            Some(room) => until = until.min(room),
            None => return false,
        }
    }
    state.room_until = until;
    true
}
