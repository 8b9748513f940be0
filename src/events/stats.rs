//! Counters of topics and subscription groups.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a topic's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicStats {
    /// Events published (the next event's offset).
    pub published: u64,
    /// Events kept for groups that start from the earliest offset.
    pub retained: u64,
    /// Subscription groups.
    pub groups: u64,
}

/// A snapshot of a subscription group's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupStats {
    /// Events handed to the group (published while it was subscribed, and
    /// the retained ones it started from).
    pub received: u64,
    /// Events its handler took (returned `Ok`).
    pub delivered: u64,
    /// Handler attempts that failed (an error or a panic) and were tried
    /// again.
    pub retried: u64,
    /// Handler panics caught (each also counts as a failed attempt).
    pub panicked: u64,
    /// Events moved to the dead-letter queue: after their last attempt
    /// failed, or parked behind an earlier dead letter of their key.
    pub dead_lettered: u64,
    /// Events dropped unhandled because the group's buffer was full
    /// ([`Backpressure::DropOldest`](super::Backpressure::DropOldest)).
    pub dropped: u64,
    /// Events received and not yet handled, dead-lettered or dropped
    /// (queued plus in flight): how far the group is behind.
    pub lag: u64,
    /// Events its workers are handling now.
    pub in_flight: u64,
}

/// Counters the publishers write (under the topic's lock, so plain
/// stores do), on a cache line of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct PublisherCounters {
    pub(super) received: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// Counters the workers write, on a cache line of their own, so that a
/// worker's accounting never stalls the publisher.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct WorkerCounters {
    /// Events handled, dead-lettered or parked (dropped ones are counted
    /// by the publisher).
    pub(super) finished: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) panicked: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) in_flight: AtomicU64,
    /// Tasks waiting in `caught_up`: the workers look at the publisher's
    /// counters only while there are some.
    pub(super) watchers: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct GroupCounters {
    pub(super) publisher: PublisherCounters,
    pub(super) worker: WorkerCounters,
}

impl GroupCounters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    /// Adds to a counter only the topic's lock holder writes: no atomic
    /// read-modify-write needed.
    pub(super) fn add_locked(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Release);
    }

    /// Events received and not finished yet (queued or in flight).
    pub(super) fn pending(&self) -> u64 {
        let finished = self.worker.finished.load(Ordering::SeqCst);
        let dropped = self.publisher.dropped.load(Ordering::Acquire);
        let received = self.publisher.received.load(Ordering::Acquire);
        received.saturating_sub(dropped + finished)
    }

    pub(super) fn snapshot(&self) -> GroupStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GroupStats {
            received: load(&self.publisher.received),
            delivered: load(&self.worker.delivered),
            retried: load(&self.worker.retried),
            panicked: load(&self.worker.panicked),
            dead_lettered: load(&self.worker.dead_lettered),
            dropped: load(&self.publisher.dropped),
            lag: self.pending(),
            in_flight: load(&self.worker.in_flight),
        }
    }
}
