//! Cache counters: cheap to bump from many threads, cheap to snapshot.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How many threads get a cell of their own in each hot counter.
const CELLS: usize = 32;

/// One counter on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Cell128(AtomicU64);

/// A counter bumped on the hit path by many threads.
///
/// Each of the first [`CELLS`] live threads owns a cell that only it
/// writes, so a bump is a plain load and store (no locked instruction,
/// and no cache line shared between cores); other threads share one
/// atomic cell. A thread's cell passes to a later thread only after it
/// exits, through the registry's lock, so every bump is counted.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    cells: [Cell128; CELLS],
    shared: AtomicU64,
}

/// Which cells are owned by a live thread.
static OWNED: Mutex<[bool; CELLS]> = Mutex::new([false; CELLS]);

/// A thread's claim on a cell index, released when the thread exits.
struct CellClaim(Option<usize>);

impl CellClaim {
    fn claim() -> Self {
        let mut owned = OWNED.lock().unwrap_or_else(PoisonError::into_inner);
        let index = owned.iter().position(|taken| !taken);
        if let Some(index) = index {
            owned[index] = true;
        }
        CellClaim(index)
    }
}

impl Drop for CellClaim {
    fn drop(&mut self) {
        // Bumps made later in this thread's teardown go to the shared cell,
        // so the next owner of this cell is its only writer.
        INDEX.with(|cell| cell.set(CELLS));
        if let Some(index) = self.0 {
            OWNED.lock().unwrap_or_else(PoisonError::into_inner)[index] = false;
        }
    }
}

thread_local! {
    static CLAIM: CellClaim = CellClaim::claim();
    /// The claimed index, cached without a destructor for the fast path:
    /// `usize::MAX` until claimed, `CELLS` for "no cell of its own".
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

#[inline]
fn my_cell() -> usize {
    let index = INDEX.with(Cell::get);
    if index != usize::MAX {
        return index;
    }
    // During thread teardown the claim may be gone: share then.
    let index = CLAIM
        .try_with(|claim| claim.0.unwrap_or(CELLS))
        .unwrap_or(CELLS);
    INDEX.with(|cell| cell.set(index));
    index
}

impl StripedCounter {
    #[inline(always)]
    pub(crate) fn add(&self, n: u64) {
        match self.cells.get(my_cell()) {
            Some(cell) => {
                // Single writer: this thread owns the cell.
                let current = cell.0.load(Ordering::Relaxed);
                cell.0.store(current + n, Ordering::Relaxed);
            }
            None => {
                self.shared.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn sum(&self) -> u64 {
        self.cells
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.shared.load(Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use super::{StripedCounter, CELLS};

    #[test]
    fn counts_every_bump_from_more_threads_than_cells_and_from_reused_cells() {
        let counter = StripedCounter::default();
        // Waves of threads: later waves take over cells earlier ones left.
        for _wave in 0..3 {
            std::thread::scope(|scope| {
                for _ in 0..(CELLS + 8) {
                    scope.spawn(|| {
                        for _ in 0..1_000 {
                            counter.add(1);
                        }
                    });
                }
            });
        }
        assert_eq!(counter.sum(), 3 * (CELLS as u64 + 8) * 1_000);
    }
}
