//! A group's worker: takes its buffer's events in order and runs the
//! handler on each, retrying with back-off, dead-lettering what never
//! succeeds, and parking events behind a dead letter of their key.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dead_letter::DeadLetter;
use super::event::Event;
use super::group::{Backpressure, Group};
use super::handler::{attempt, Attempt, Handler};
use super::stats::GroupCounters;

/// Runs until the group is closed and the worker's buffer is empty.
pub(super) async fn run<E, H>(group: Arc<Group<E>>, index: usize, handler: Arc<H>)
where
    E: Clone + Send + Sync + 'static,
    H: Handler<E>,
{
    let partition = &group.partitions[index];
    let mut batch = std::collections::VecDeque::new();
    loop {
        partition.take_all(&mut batch);
        if batch.is_empty() {
            if group.closed.load(Ordering::Acquire) {
                return;
            }
            // Parks at once: polling an empty buffer again before parking
            // measured slower with several groups, whose workers then take
            // the cores the publisher needs.
            partition.wake.notified().await;
            // Woken by the first event after a quiet spell: let the
            // publisher add a few more before taking them, so that one
            // wake-up serves several events.
            tokio::task::yield_now().await;
            continue;
        }
        if group.backpressure == Backpressure::Block
            && group.room_waiters.load(Ordering::SeqCst) > 0
        {
            group.room.notify_waiters();
        }
        let taken = batch.len() as u64;
        GroupCounters::add(&group.counters.worker.in_flight, taken);
        let mut delivered = 0;
        for event in batch.drain(..) {
            delivered += u64::from(deliver(&group, &*handler, event).await);
        }
        // Counted per batch: one update of each shared counter, not one
        // per event.
        GroupCounters::add(&group.counters.worker.delivered, delivered);
        GroupCounters::sub(&group.counters.worker.in_flight, taken);
        group.finished(taken);
    }
}

/// Handles one event: parked behind its key's dead letter, handled
/// (perhaps after retries: `true`), or dead-lettered.
async fn deliver<E, H>(group: &Group<E>, handler: &H, event: Event<E>) -> bool
where
    E: Clone + Send + Sync + 'static,
    H: Handler<E>,
{
    let event = match group.dead.park_if_behind(event) {
        Some(event) => event,
        None => {
            GroupCounters::add(&group.counters.worker.dead_lettered, 1);
            return false;
        }
    };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match attempt(handler, event.clone()).await {
            Attempt::Handled => return true,
            Attempt::Failed(error) => error,
            Attempt::Panicked(error) => {
                GroupCounters::add(&group.counters.worker.panicked, 1);
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
            let letter = DeadLetter {
                event,
                error,
                attempts,
            };
            group.dead.push(letter);
            GroupCounters::add(&group.counters.worker.dead_lettered, 1);
            return false;
        }
        GroupCounters::add(&group.counters.worker.retried, 1);
        tokio::time::sleep(group.retry.backoff(attempts)).await;
    }
}
