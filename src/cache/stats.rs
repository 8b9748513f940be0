//! Cache counters: cheap to bump from many threads, cheap to snapshot.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many cells a hot counter spreads over.
const CELLS: usize = 16;

/// One counter on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell128(AtomicU64);

/// A counter bumped on the hit path by many threads: each thread adds to
/// its own cell, so hits on two cores do not fight over one cache line.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    cells: [Cell128; CELLS],
}

thread_local! {
    static CELL: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn my_cell() -> usize {
    CELL.with(|cell| {
        let mut index = cell.get();
        if index == usize::MAX {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            index = NEXT.fetch_add(1, Ordering::Relaxed) as usize % CELLS;
            cell.set(index);
        }
        index
    })
}

impl StripedCounter {
    #[inline(always)]
    pub(crate) fn add(&self, n: u64) {
        self.cells[my_cell()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// The counters of one cache layer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: StripedCounter,
    pub(crate) misses: StripedCounter,
    pub(crate) loads: AtomicU64,
    pub(crate) load_failures: AtomicU64,
    pub(crate) load_nanos: AtomicU64,
    pub(crate) stale_fills_prevented: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) tier_errors: AtomicU64,
    pub(crate) publish_failures: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, evictions: u64) -> CacheStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: self.hits.sum(),
            misses: self.misses.sum(),
            loads: load(&self.loads),
            load_failures: load(&self.load_failures),
            total_load_time: Duration::from_nanos(load(&self.load_nanos)),
            evictions,
            stale_fills_prevented: load(&self.stale_fills_prevented),
            refreshes: load(&self.refreshes),
            tier_errors: load(&self.tier_errors),
            publish_failures: load(&self.publish_failures),
        }
    }
}

/// A snapshot of a cache layer's counters, in the manner of Caffeine's
/// `CacheStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the tier (negative entries included).
    pub hits: u64,
    /// Reads the tier could not answer.
    pub misses: u64,
    /// Loads from the inner store (one per single-flight group or batch key).
    pub loads: u64,
    /// Loads that failed (the error went to every waiter; nothing was cached).
    pub load_failures: u64,
    /// Time spent in loads, summed.
    pub total_load_time: Duration,
    /// Entries the tier evicted to stay within its bound.
    pub evictions: u64,
    /// Loads whose result was not cached because a write to the key raced
    /// with them (the stale fills other caches would have made).
    pub stale_fills_prevented: u64,
    /// Background refreshes started (refresh-ahead).
    pub refreshes: u64,
    /// Tier operations that failed (reads fell back to the store).
    pub tier_errors: u64,
    /// Invalidations that could not be sent to other processes (their
    /// entries live until their time-to-live).
    pub publish_failures: u64,
}

impl CacheStats {
    /// Hits over all reads (0 when there were none).
    pub fn hit_ratio(&self) -> f64 {
        let reads = self.hits + self.misses;
        if reads == 0 {
            0.0
        } else {
            self.hits as f64 / reads as f64
        }
    }

    /// Mean time of one load.
    pub fn average_load_time(&self) -> Duration {
        if self.loads == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos((self.total_load_time.as_nanos() / self.loads as u128) as u64)
        }
    }
}
