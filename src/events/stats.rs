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

/// Counters the workers write, on a cache line of their own, so that a
/// worker's accounting never stalls the publisher. What the publisher
/// knows (events received) is read from the topic's log instead.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(super) struct WorkerCounters {
    /// Events handled, dead-lettered or parked.
    pub(super) finished: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) panicked: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) in_flight: AtomicU64,
    /// Tasks waiting in `caught_up`: the workers look at the other
    /// workers' cursors only while there are some.
    pub(super) watchers: AtomicU64,
}

impl WorkerCounters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}
