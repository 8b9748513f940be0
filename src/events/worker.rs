//! A group's worker: reads the topic's log from its cursor, takes the
//! events of its partition in order and runs the handler on each,
//! retrying with back-off, dead-lettering what never succeeds, and
//! parking events behind a dead letter of their key.

use std::pin::pin;
use std::sync::Arc;

use super::dead_letter::{DeadLetter, Parking};
use super::event::Event;
use super::group::{partition_of, Backpressure, Group, Watching};
use super::handler::{attempt, Attempt, Handler};
use super::log::Log;
use super::stats::WorkerCounters;

/// The most events a worker takes from the log at once: its cursor moves
/// (and blocked publishers go on) at least this often.
const MOST_PER_BATCH: u64 = 256;

/// Runs until the bus shuts down and the worker has read to the tail.
pub(super) async fn run<E, H>(group: Arc<Group<E>>, index: usize, handler: Arc<H>)
where
    E: Clone + Send + Sync + 'static,
    H: Handler<E>,
{
    let log = &*group.log;
    let mut next = group.cursors[index]
        .next
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut batch = Vec::new();
    loop {
        let tail = log.tail();
        if next == tail {
            if log.is_closed() {
                // Closed after the last append (under the topic's lock):
                // this tail is the last.
                if log.tail() == next {
                    return;
                }
                continue;
            }
            sleep(log, next).await;
            continue;
        }
        let dropped = take(&group, index, &mut next, tail, &mut batch);
        group.cursors[index]
            .next
            .store(next, std::sync::atomic::Ordering::SeqCst);
        if group.backpressure == Backpressure::Block {
            log.wake_writers(next, group.capacity);
        }
        let taken = batch.len() as u64;
        WorkerCounters::add(&group.counters.in_flight, taken);
        let mut delivered = 0;
        for event in &batch {
            delivered += u64::from(deliver(&group, &*handler, event).await);
        }
        batch.clear();
        // Counted per batch: one update of each shared counter, not one
        // per event.
        WorkerCounters::add(&group.counters.delivered, delivered);
        WorkerCounters::sub(&group.counters.in_flight, taken);
        if dropped > 0 {
            WorkerCounters::add(&group.counters.dropped, dropped);
        }
        group.finished(index, taken, next);
    }
}

/// Waits until the tail moves past `next` or the log closes.
async fn sleep<E: Clone>(log: &Log<E>, next: u64) {
    {
        // Counted as sleeping before looking at the tail once more: an
        // append after this look sees the count and wakes this worker.
        let _sleeping = Watching::new(&log.sleepers);
        let mut woken = pin!(log.wake.notified());
        woken.as_mut().enable();
        if log.tail() == next && !log.is_closed() {
            woken.await;
        }
    }
    // Woken by the first event after a quiet spell: let the publisher add
    // a few more before reading, so that one wake-up serves several.
    tokio::task::yield_now().await;
}

/// Reads the log from `next` towards `tail` into `batch`, keeping this
/// worker's events, and moves `next` past what it read. A dropping
/// worker more than its buffer behind first skips to the newest events;
/// returns how many of its own it skipped.
fn take<E: Clone + Send + Sync + 'static>(
    group: &Group<E>,
    index: usize,
    next: &mut u64,
    tail: u64,
    batch: &mut Vec<Event<E>>,
) -> u64 {
    let workers = group.cursors.len();
    let mine = |event: Option<&Event<E>>, offset: u64| {
        workers == 1
            || match event {
                Some(event) => partition_of(event.key(), offset, workers) == index,
                // Its key is gone with it: counted by offset, as unkeyed
                // events are spread.
                None => offset % workers as u64 == index as u64,
            }
    };
    let mut dropped = 0;
    if group.backpressure == Backpressure::DropOldest && tail - *next > group.capacity {
        let keep_from = tail - group.capacity;
        group.log.read(*next, keep_from, |offset, event| {
            dropped += u64::from(mine(event, offset));
        });
        *next = keep_from;
    }
    let end = tail.min(*next + MOST_PER_BATCH);
    group.log.read(*next, end, |offset, event| {
        if mine(event, offset) {
            match event {
                Some(event) => batch.push(event.clone()),
                // Only a dropping worker is ever overtaken.
                None => dropped += 1,
            }
        }
    });
    *next = end;
    dropped
}

/// Handles one event: parked behind its key's dead letter, handled
/// (perhaps after retries: `true`), or dead-lettered.
async fn deliver<E, H>(group: &Group<E>, handler: &H, event: &Event<E>) -> bool
where
    E: Clone + Send + Sync + 'static,
    H: Handler<E>,
{
    loop {
        match group.dead.park_if_behind(event) {
            Parking::Go => break,
            Parking::Parked => {
                WorkerCounters::add(&group.counters.dead_lettered, 1);
                return false;
            }
            // Bounded: the worker waits (and with it, by the group's
            // backpressure, the publisher) rather than drop the event.
            Parking::Full => group.dead.room().await,
        }
    }
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match attempt(handler, event.clone()).await {
            Attempt::Handled => return true,
            Attempt::Failed(error) => error,
            Attempt::Panicked(error) => {
                WorkerCounters::add(&group.counters.panicked, 1);
                error
            }
        };
        if attempts > group.retry.max_retries {
            tracing::warn!(
                group = %group.name,
                offset = event.offset(),
                attempts,
                %error,
                "event dead-lettered"
            );
            let mut letter = DeadLetter {
                event: event.clone(),
                error,
                attempts,
            };
            // A full queue holds the worker until letters are replayed.
            while let Err(back) = group.dead.push(letter) {
                letter = back;
                group.dead.room().await;
            }
            WorkerCounters::add(&group.counters.dead_lettered, 1);
            return false;
        }
        WorkerCounters::add(&group.counters.retried, 1);
        tokio::time::sleep(group.retry.backoff(attempts)).await;
    }
}
