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
use super::group::{Group, GroupBuilder, StartFrom};
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

fn closed(name: &str) -> Error {
    Error::unavailable("EventBus", format!("topic `{name}`: the bus is shut down"))
}

impl<E: Send + Sync + 'static> Topic<E> {
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
        self.publish_batch([(None, payload)])
            .await
            .map(|range| range.start)
    }

    /// Publishes an event with a key: within each group, events of one key
    /// are handled one after another, in publish order. Returns its
    /// offset.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_keyed(&self, key: impl Into<EventKey>, payload: E) -> Result<u64> {
        self.publish_batch([(Some(key.into()), payload)])
            .await
            .map(|range| range.start)
    }

    /// Publishes several events at once (one lock, one wake-up per worker
    /// at most per event): their offsets are consecutive and returned as a
    /// range. All of them are published, or none (on error).
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_batch(
        &self,
        events: impl IntoIterator<Item = (Option<EventKey>, E)>,
    ) -> Result<Range<u64>> {
        let events: Vec<(Option<EventKey>, E)> = events.into_iter().collect();
        loop {
            let waiting_on = {
                let mut state = self.lock();
                if state.closed {
                    return Err(closed(&self.inner.name));
                }
                let first = state.next_offset;
                let placed: Vec<(Option<&EventKey>, u64)> = events
                    .iter()
                    .zip(first..)
                    .map(|((key, _), offset)| (key.as_ref(), offset))
                    .collect();
                match state.groups.iter().find(|group| !group.has_room(&placed)) {
                    Some(full) => Arc::clone(full),
                    None => {
                        drop(placed);
                        return Ok(self.append(&mut state, events));
                    }
                }
            };
            // Wait for the full group's workers to take events, then look
            // again. The wake-up is registered before the lock is retaken.
            let mut room = pin!(waiting_on.room.notified());
            room.as_mut().enable();
            let still_full = {
                let state = self.lock();
                if state.closed {
                    return Err(closed(&self.inner.name));
                }
                let first = state.next_offset;
                let placed: Vec<(Option<&EventKey>, u64)> = events
                    .iter()
                    .zip(first..)
                    .map(|((key, _), offset)| (key.as_ref(), offset))
                    .collect();
                !waiting_on.has_room(&placed)
            };
            if still_full {
                room.await;
            }
        }
    }

    /// Assigns offsets, retains and hands the events to every group; the
    /// caller checked for room under the same lock.
    fn append(&self, state: &mut State<E>, events: Vec<(Option<EventKey>, E)>) -> Range<u64> {
        let first = state.next_offset;
        let now = SystemTime::now();
        let events: Vec<Event<E>> = events
            .into_iter()
            .zip(first..)
            .map(|((key, payload), offset)| Event::new(payload, key, offset, now))
            .collect();
        state.next_offset += events.len() as u64;
        let retain = self.inner.options.retain;
        if retain > 0 {
            let skip = events.len().saturating_sub(retain);
            state.retained.extend(events[skip..].iter().cloned());
            let excess = state.retained.len().saturating_sub(retain);
            state.retained.drain(..excess);
        }
        for group in &state.groups {
            group.push(&events);
        }
        first..state.next_offset
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
