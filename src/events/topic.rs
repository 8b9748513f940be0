//! A typed topic: publishers append events, each subscription group
//! receives all of them, and the last few are retained for groups that
//! start later.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Range;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::task::JoinHandle;

use super::event::{Event, EventKey};
use super::group::{Group, GroupBuilder, StartFrom, Watching};
use super::stats::TopicStats;
use crate::{Error, Result};

/// How a topic is made; see [`EventBus::topic_with`](super::EventBus::topic_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicOptions {
    retain: usize,
}

impl TopicOptions {
    /// Keeps the last `events` events for groups that start from the
    /// earliest offset (default 0: none).
    pub fn retain_last(mut self, events: usize) -> Self {
        self.retain = events;
        self
    }
}

struct State<E> {
    next_offset: u64,
    retained: VecDeque<Event<E>>,
    groups: Vec<Arc<Group<E>>>,
    closed: bool,
}

pub(super) struct Inner<E> {
    name: String,
    options: TopicOptions,
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

/// The keys and offsets events will have, publishing from `first`.
fn placed(
    keys: &[Option<EventKey>],
    first: u64,
) -> impl ExactSizeIterator<Item = (Option<&EventKey>, u64)> {
    keys.iter()
        .map(Option::as_ref)
        .zip((0..keys.len()).map(move |i| first + i as u64))
}

fn closed(name: &str) -> Error {
    Error::unavailable("EventBus", format!("topic `{name}`: the bus is shut down"))
}

impl<E: Clone + Send + Sync + 'static> Topic<E> {
    pub(super) fn new(name: String, options: TopicOptions) -> Self {
        Topic {
            inner: Arc::new(Inner {
                name,
                options,
                state: Mutex::new(State {
                    next_offset: 0,
                    retained: VecDeque::new(),
                    groups: Vec::new(),
                    closed: false,
                }),
            }),
        }
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
    /// As [`publish`](Self::publish).
    pub async fn publish_batch(
        &self,
        events: impl IntoIterator<Item = (Option<EventKey>, E)>,
    ) -> Result<Range<u64>> {
        let (keys, payloads): (Vec<Option<EventKey>>, Vec<E>) = events.into_iter().unzip();
        self.when_room(&keys, |topic, state| {
            let first = state.next_offset;
            let now = SystemTime::now();
            let events: Vec<Event<E>> = keys
                .iter()
                .cloned()
                .zip(payloads)
                .zip(first..)
                .map(|((key, payload), offset)| Event::new(payload, key, offset, now))
                .collect();
            topic.append(state, &events);
            first..state.next_offset
        })
        .await
    }

    async fn publish_one(&self, key: Option<EventKey>, payload: E) -> Result<u64> {
        self.when_room(std::slice::from_ref(&key), |topic, state| {
            let offset = state.next_offset;
            let event = Event::new(payload, key.clone(), offset, SystemTime::now());
            topic.append(state, std::slice::from_ref(&event));
            offset
        })
        .await
    }

    /// Runs `append` under the topic's lock once every blocking group has
    /// room for events with these `keys`, waiting for room as long as one
    /// has none.
    async fn when_room<T, F>(&self, keys: &[Option<EventKey>], append: F) -> Result<T>
    where
        F: FnOnce(&Self, &mut State<E>) -> T,
    {
        let mut append = append;
        loop {
            let full = match self.try_append(keys, append)? {
                Ok(appended) => return Ok(appended),
                Err((full, give_back)) => {
                    append = give_back;
                    full
                }
            };
            // Wait for the full group's workers to take events, then look
            // again. The wake-up is registered before the check, so a
            // worker that makes room in between is not missed.
            let _waiting = Watching::new(&full.room_waiters);
            let mut room = pin!(full.room.notified());
            room.as_mut().enable();
            let still_full = {
                let state = self.lock();
                if state.closed {
                    return Err(closed(&self.inner.name));
                }
                !full.has_room(placed(keys, state.next_offset))
            };
            if still_full {
                room.await;
            }
        }
    }

    /// Appends if every group has room; otherwise gives `append` back with
    /// a group that is full.
    #[allow(clippy::type_complexity)]
    fn try_append<T, F>(
        &self,
        keys: &[Option<EventKey>],
        append: F,
    ) -> Result<Result<T, (Arc<Group<E>>, F)>>
    where
        F: FnOnce(&Self, &mut State<E>) -> T,
    {
        let mut state = self.lock();
        if state.closed {
            return Err(closed(&self.inner.name));
        }
        let first = state.next_offset;
        Ok(
            match state
                .groups
                .iter()
                .find(|group| !group.has_room(placed(keys, first)))
            {
                Some(full) => Err((Arc::clone(full), append)),
                None => Ok(append(self, &mut state)),
            },
        )
    }

    /// Retains the events and hands them to every group; their offsets
    /// were assigned from `next_offset`, under the same lock.
    fn append(&self, state: &mut State<E>, events: &[Event<E>]) {
        state.next_offset += events.len() as u64;
        let retain = self.inner.options.retain;
        if retain > 0 {
            let skip = events.len().saturating_sub(retain);
            state.retained.extend(events[skip..].iter().cloned());
            let excess = state.retained.len().saturating_sub(retain);
            state.retained.drain(..excess);
        }
        for group in &state.groups {
            group.push(events);
        }
    }

    /// Starts configuring a subscription group named `name`: every group
    /// receives every event.
    pub fn group(&self, name: impl Into<String>) -> GroupBuilder<E> {
        GroupBuilder::new(self.clone(), name.into())
    }

    pub(super) fn add_group(&self, group: Arc<Group<E>>, start: StartFrom) -> Result<()> {
        let mut state = self.lock();
        if state.closed {
            return Err(closed(&self.inner.name));
        }
        if state.groups.iter().any(|g| g.name == group.name) {
            return Err(Error::config(
                "subscription group",
                format!(
                    "topic `{}` already has a group named `{}`",
                    self.inner.name, group.name
                ),
            ));
        }
        if start == StartFrom::Earliest && !state.retained.is_empty() {
            let retained: Vec<Event<E>> = state.retained.iter().cloned().collect();
            group.push(&retained);
        }
        state.groups.push(group);
        Ok(())
    }

    /// The topic's counters.
    pub fn stats(&self) -> TopicStats {
        let state = self.lock();
        TopicStats {
            published: state.next_offset,
            retained: state.retained.len() as u64,
            groups: state.groups.len() as u64,
        }
    }

    /// Refuses further events and stops the groups once drained; the
    /// workers' handles, to wait on.
    pub(super) fn close(&self) -> Vec<JoinHandle<()>> {
        let mut state = self.lock();
        state.closed = true;
        state
            .groups
            .iter()
            .flat_map(|group| group.close())
            .collect()
    }
}
