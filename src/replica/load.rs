//! A replica's load as the balancer sees it: requests in flight, and a
//! peak-EWMA of its latency (Finagle's and tower's `PeakEwma`): a slow
//! response raises the estimate at once, fast ones lower it gradually,
//! and an idle replica's estimate decays so that it is tried again.

use std::sync::atomic::{AtomicU64, Ordering};

/// The estimate before any response: optimistic, so a new replica gets
/// tried (1 ms).
const DEFAULT_RTT_NANOS: f64 = 1_000_000.0;

#[derive(Debug)]
pub(super) struct Load {
    pub(super) outstanding: AtomicU64,
    /// The latency estimate, as `f64` bits, in nanoseconds.
    rtt: AtomicU64,
    /// When it was last updated (the set's clock).
    updated: AtomicU64,
    /// One over the decay time constant, in nanoseconds.
    per_decay: f64,
}

impl Load {
    pub(super) fn new(decay_nanos: u64) -> Self {
        Load {
            outstanding: AtomicU64::new(0),
            rtt: AtomicU64::new(DEFAULT_RTT_NANOS.to_bits()),
            updated: AtomicU64::new(0),
            per_decay: 1.0 / decay_nanos.max(1) as f64,
        }
    }

    /// How much of the estimate is left after `elapsed` nanoseconds: 1 at
    /// once, towards 0 with time. A hyperbolic rather than an
    /// exponential decay: the same shape for this purpose, without an
    /// `exp` on every pick.
    fn kept(&self, elapsed: u64) -> f64 {
        1.0 / (1.0 + elapsed as f64 * self.per_decay)
    }

    /// The latency estimate now.
    pub(super) fn rtt(&self, now: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt.load(Ordering::Relaxed));
        let updated = self.updated.load(Ordering::Relaxed);
        rtt * self.kept(now.saturating_sub(updated))
    }

    /// Records a response's latency (or a failure's penalty). Racy by
    /// design: concurrent updates may lose one sample, never corrupt.
    pub(super) fn observe(&self, now: u64, sample_nanos: u64) {
        let sample = sample_nanos as f64;
        let current = self.rtt(now);
        let next = if sample > current {
            sample // the peak: a slow response counts at once
        } else {
            let kept = self.kept(now.saturating_sub(self.updated.load(Ordering::Relaxed)));
            current * kept + sample * (1.0 - kept)
        };
        self.rtt.store(next.to_bits(), Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    /// The peak-EWMA cost: latency times the requests it would queue
    /// behind (tower's `PeakEwma` load).
    #[cfg(test)]
    pub(super) fn cost(&self, now: u64) -> f64 {
        let (numerator, denominator) = self.cost_fraction(now);
        numerator / denominator
    }

    /// The cost as a fraction, for comparing two costs crosswise without
    /// a division on the routing path.
    pub(super) fn cost_fraction(&self, now: u64) -> (f64, f64) {
        let rtt = f64::from_bits(self.rtt.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.updated.load(Ordering::Relaxed));
        let queued = (self.outstanding.load(Ordering::Relaxed) + 1) as f64;
        (rtt * queued, 1.0 + elapsed as f64 * self.per_decay)
    }
}

#[cfg(test)]
mod tests {
    use super::Load;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slow_response_counts_at_once_and_fast_ones_bring_it_down_gradually() {
        let load = Load::new(10 * MS);
        load.observe(MS, 50 * MS);
        assert!((load.rtt(MS) - (50 * MS) as f64).abs() < 1.0);
        load.observe(2 * MS, MS);
        let after_one_fast = load.rtt(2 * MS);
        assert!(after_one_fast < (50 * MS) as f64 && after_one_fast > (10 * MS) as f64);
    }

    #[test]
    fn an_idle_estimate_decays_and_queued_requests_raise_the_cost() {
        let load = Load::new(10 * MS);
        load.observe(MS, 50 * MS);
        assert!(load.rtt(1_000 * MS) < (MS as f64));
        let idle = load.cost(MS);
        load.outstanding
            .store(3, std::sync::atomic::Ordering::Relaxed);
        assert!((load.cost(MS) - 4.0 * idle).abs() < 1.0);
    }
}
