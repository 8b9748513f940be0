//! A group's worker: takes its buffer's events in order and runs the
//! handler on each, retrying with back-off, dead-lettering what never
//! succeeds, and parking events behind a dead letter of their key.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::dead_letter::DeadLetter;
use super::event::Event;
use super::group::Group;
use super::handler::{attempt, Attempt, Handler};
use super::stats::GroupCounters;

/// Runs until the group is closed and the worker's buffer is empty.
pub(super) async fn run<E, H>(group: Arc<Group<E>>, index: usize, handler: Arc<H>)
where
    E: Send + Sync + 'static,
    H: Handler<E>,
{
    let partition = &group.partitions[index];
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = partition.lock();
            batch.extend(queue.drain(..));
        }
        if batch.is_empty() {
            if group.closed.load(Ordering::Acquire) {
                return;
            }
            partition.wake.notified().await;
            continue;
        }
        group.room.notify_waiters();
        let taken = batch.len() as u64;
        GroupCounters::add(&group.counters.in_flight, taken);
        for event in batch.drain(..) {
            deliver(&group, &*handler, event).await;
            GroupCounters::sub(&group.counters.in_flight, 1);
            group.finished(1);
        }
    }
}

/// Handles one event: parked behind its key's dead letter, handled
/// (perhaps after retries), or dead-lettered.
async fn deliver<E, H>(group: &Group<E>, handler: &H, event: Event<E>)
where
    E: Send + Sync + 'static,
    H: Handler<E>,
{
    let Some(event) = group.dead.park_if_behind(event) else {
        GroupCounters::add(&group.counters.dead_lettered, 1);
        return;
    };
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match attempt(handler, event.clone()).await {
            Attempt::Handled => {
                GroupCounters::add(&group.counters.delivered, 1);
                return;
            }
            Attempt::Failed(error) => error,
            Attempt::Panicked(error) => {
                GroupCounters::add(&group.counters.panicked, 1);
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
            group.dead.push(DeadLetter {
                event,
                error,
                attempts,
            });
            GroupCounters::add(&group.counters.dead_lettered, 1);
            return;
        }
        GroupCounters::add(&group.counters.retried, 1);
        tokio::time::sleep(group.retry.backoff(attempts)).await;
    }
}
