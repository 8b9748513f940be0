//! The budget of reads the primary takes when no replica qualifies: at
//! most a share of the reads of the current window, plus a small
//! allowance (Finagle's retry budget, applied to spills), so that one bad
//! minute of the replicas does not become a primary overload.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(super) struct SpillBudget {
    /// Spills allowed per read, as a share.
    share: f64,
    /// Spills allowed per window whatever the reads.
    allowance: u64,
    /// Reads ever, and at the start of the window.
    reads: AtomicU64,
    window_start: AtomicU64,
    spills: AtomicU64,
}

impl SpillBudget {
    pub(super) fn new(share: f64, allowance: u64) -> Self {
        SpillBudget {
            share,
            allowance,
            reads: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            spills: AtomicU64::new(0),
        }
    }

    pub(super) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads ever counted.
    pub(super) fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Takes one spill from the budget if there is one left.
    pub(super) fn try_spill(&self) -> bool {
        let reads = self
            .reads()
            .saturating_sub(self.window_start.load(Ordering::Relaxed));
        let allowed = (reads as f64 * self.share) as u64 + self.allowance;
        let taken = self.spills.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.spills.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }

    /// Starts a new window.
    pub(super) fn roll(&self) {
        self.window_start.store(self.reads(), Ordering::Relaxed);
        self.spills.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::SpillBudget;

    #[test]
    fn spills_are_capped_at_the_share_of_reads_plus_the_allowance_per_window() {
        let budget = SpillBudget::new(0.1, 2);
        for _ in 0..100 {
            budget.read();
        }
        let spilled = (0..100).filter(|_| budget.try_spill()).count();
        assert_eq!(spilled, 12);
        budget.roll();
        assert_eq!((0..100).filter(|_| budget.try_spill()).count(), 2);
        assert_eq!(budget.reads(), 100, "reads are counted across windows");
    }
}
