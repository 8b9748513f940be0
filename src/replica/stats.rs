//! Counters of a replica set.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A snapshot of one replica's counters.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// The replica's name.
    pub name: String,
    /// Reads it served (successful or not).
    pub reads: u64,
    /// Reads that failed on it (errors and timeouts).
    pub errors: u64,
    /// Times it was ejected.
    pub ejections: u64,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Whether it is too far behind for plain reads now.
    pub lagging: bool,
    /// The primary position it has applied, as last seen.
    pub applied: u64,
    /// Positions behind the primary at the last poll.
    pub lag_positions: u64,
    /// Time behind the primary at the last poll.
    pub lag_time: Duration,
    /// The latency estimate the balancer uses (peak EWMA).
    pub latency_estimate: Duration,
}

/// A snapshot of a replica set's counters.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ReplicaSetStats {
    /// Reads asked of the set.
    pub reads: u64,
    /// Writes sent to the primary.
    pub writes: u64,
    /// Reads the primary served because no replica qualified (or all that
    /// were tried failed), within the spill budget.
    pub spills_to_primary: u64,
    /// Reads refused because no replica qualified and the budget was spent.
    pub refused: u64,
    /// Reads served by the least-lagged replica although it was past
    /// `max_lag` (only when stale reads are allowed).
    pub stale_reads: u64,
    /// Reads with a token that had to wait for a replica to reach it.
    pub token_waits: u64,
    /// Their total waiting time.
    pub token_wait_time: Duration,
    /// Token reads that waited in vain and went on down the ladder.
    pub token_wait_timeouts: u64,
    /// The primary's position, as last seen.
    pub primary_position: u64,
    /// Per replica, in the order they were added.
    pub replicas: Vec<ReplicaStats>,
}

#[derive(Debug, Default)]
pub(super) struct SetCounters {
    pub(super) writes: AtomicU64,
    pub(super) spills: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) stale_reads: AtomicU64,
    pub(super) token_waits: AtomicU64,
    pub(super) token_wait_nanos: AtomicU64,
    pub(super) token_wait_timeouts: AtomicU64,
}

#[derive(Debug, Default)]
pub(super) struct ReplicaCounters {
    pub(super) reads: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) ejections: AtomicU64,
}

pub(super) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
