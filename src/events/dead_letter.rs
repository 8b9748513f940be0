//! A subscription group's dead-letter queue, sequenced per key: once an
//! event of a key is dead-lettered, later events of that key are parked
//! behind it instead of handled, so that handling the queue again keeps
//! the key's order (Axon's sequenced dead letters).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::event::{Event, EventKey};
use crate::BoxError;

/// An event its group could not handle.
pub struct DeadLetter<E> {
    /// The event.
    pub event: Event<E>,
    /// The last error its handler returned (or the panic, as an error);
    /// for a parked event, why it was parked.
    pub error: BoxError,
    /// Handler attempts made (0 for a parked event).
    pub attempts: u32,
}

impl<E: Clone> Clone for DeadLetter<E> {
    fn clone(&self) -> Self {
        DeadLetter {
            event: self.event.clone(),
            error: self.error.clone(),
            attempts: self.attempts,
        }
    }
}

impl<E> fmt::Debug for DeadLetter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("offset", &self.event.offset())
            .field("key", &self.event.key())
            .field("error", &self.error.to_string())
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// Where a broker bridge keeps a group's dead letters instead of the
/// in-process queue (the NATS bridge: a dead-letter stream). The sink
/// decides which events are set aside before their handler runs (those
/// parked behind a letter of their key, and those it cannot hand to the
/// handler), and takes every event whose handler failed all its attempts.
pub(super) trait DeadLetterSink<E>: Send + Sync {
    /// Called before `event` is handled: `true` if the sink took it (it
    /// must not be handled now).
    fn set_aside(&self, event: &Event<E>) -> bool;

    /// Takes an event whose handler failed every attempt.
    fn dead_letter(&self, letter: DeadLetter<E>);
}

/// What [`Subscription::replay_dead_letters`](super::Subscription::replay_dead_letters) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Dead letters handled this time, and gone from the queue.
    pub handled: u64,
    /// Dead letters whose handler failed again: they stay, with the later
    /// letters of their key behind them.
    pub failed: u64,
}

struct Letters<E> {
    queue: VecDeque<DeadLetter<E>>,
    /// Keys with letters in the queue, and how many.
    parked: HashMap<EventKey, usize>,
}

pub(super) struct DeadLetters<E> {
    letters: Mutex<Letters<E>>,
    /// Where the letters go instead of the queue, if anywhere (a broker
    /// bridge's durable dead letters).
    sink: Option<std::sync::Arc<dyn DeadLetterSink<E>>>,
    /// Keys parked: zero lets a worker skip the lock.
    parked_keys: AtomicUsize,
    /// The most letters the queue holds (parked events included).
    limit: usize,
    /// Woken when letters leave the queue.
    room: tokio::sync::Notify,
}

/// What [`DeadLetters::park_if_behind`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parking {
    /// Not behind a letter: handle it.
    Go,
    /// Parked behind a letter of its key (or set aside by the sink).
    Parked,
    /// Behind a letter, but the queue is full: wait for room.
    Full,
}

impl<E> fmt::Debug for DeadLetters<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("len", &self.lock().queue.len())
            .finish()
    }
}

impl<E> DeadLetters<E> {
    pub(super) fn new(sink: Option<std::sync::Arc<dyn DeadLetterSink<E>>>, limit: usize) -> Self {
        DeadLetters {
            sink,
            limit,
            room: tokio::sync::Notify::new(),
            letters: Mutex::new(Letters {
                queue: VecDeque::new(),
                parked: HashMap::new(),
            }),
            parked_keys: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Letters<E>> {
        self.letters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a letter; its key (if any) is parked until its letters are
    /// gone. Given back when the queue is full.
    pub(super) fn push(&self, letter: DeadLetter<E>) -> Result<(), DeadLetter<E>> {
        if let Some(sink) = &self.sink {
            sink.dead_letter(letter);
            return Ok(());
        }
        let mut letters = self.lock();
        if letters.queue.len() >= self.limit {
            return Err(letter);
        }
        if let Some(key) = letter.event.key() {
            let count = letters.parked.entry(key.clone()).or_insert(0);
            if *count == 0 {
                self.parked_keys.fetch_add(1, Ordering::Relaxed);
            }
            *count += 1;
        }
        letters.queue.push_back(letter);
        Ok(())
    }

    /// Waits until letters leave the queue (or a moment passes).
    pub(super) async fn room(&self) {
        let room = self.room.notified();
        if self.len() < self.limit {
            return;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_millis(100), room).await;
    }

    /// Parks a copy of `event` behind the letters of its key, if it has
    /// any (`true`: parked, not to be handled now). Checked and parked
    /// under one lock, so an event never overtakes a dead letter of its
    /// key. With a sink, the sink decides (and takes what it sets aside).
    pub(super) fn park_if_behind(&self, event: &Event<E>) -> Parking
    where
        E: Clone,
    {
        if let Some(sink) = &self.sink {
            return if sink.set_aside(event) {
                Parking::Parked
            } else {
                Parking::Go
            };
        }
        if self.parked_keys.load(Ordering::Relaxed) == 0 {
            return Parking::Go;
        }
        let mut letters = self.lock();
        let Some(key) = event.key() else {
            return Parking::Go;
        };
        if !letters.parked.contains_key(key) {
            return Parking::Go;
        }
        if letters.queue.len() >= self.limit {
            return Parking::Full;
        }
        if let Some(count) = letters.parked.get_mut(key) {
            *count += 1;
        }
        let error: BoxError = std::sync::Arc::new(Parked);
        let letter = DeadLetter {
            event: event.clone(),
            error,
            attempts: 0,
        };
        letters.queue.push_back(letter);
        Parking::Parked
    }

    pub(super) fn snapshot(&self) -> Vec<DeadLetter<E>>
    where
        E: Clone,
    {
        self.lock().queue.iter().cloned().collect()
    }

    pub(super) fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Takes the oldest letter whose key is not in `skip`, leaving its key
    /// parked.
    pub(super) fn take_next(&self, skip: &[EventKey]) -> Option<DeadLetter<E>> {
        let mut letters = self.lock();
        let at = letters
            .queue
            .iter()
            .position(|letter| letter.event.key().is_none_or(|key| !skip.contains(key)))?;
        let taken = letters.queue.remove(at);
        self.room.notify_waiters();
        taken
    }

    /// A taken letter was handled: unpark its key once none is left.
    pub(super) fn handled(&self, letter: &DeadLetter<E>) {
        let Some(key) = letter.event.key() else {
            return;
        };
        let mut letters = self.lock();
        if let Some(count) = letters.parked.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                letters.parked.remove(key);
                self.parked_keys.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// A taken letter failed again: back to the front of its key's line.
    pub(super) fn put_back(&self, letter: DeadLetter<E>) {
        let mut letters = self.lock();
        let at = letter.event.key().map_or(letters.queue.len(), |key| {
            letters
                .queue
                .iter()
                .position(|l| l.event.key() == Some(key))
                .unwrap_or(letters.queue.len())
        });
        letters.queue.insert(at, letter);
    }
}

/// Why a parked event is in the dead-letter queue.
#[derive(Debug)]
struct Parked;

impl fmt::Display for Parked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("parked behind an earlier dead letter of its key")
    }
}

impl std::error::Error for Parked {}
