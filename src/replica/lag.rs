//! How far each replica is behind the primary, by position and by time,
//! and whether that is too far for plain reads (with hysteresis, so a
//! replica near the limit does not flap in and out).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How far behind a replica may be and still get plain reads. A replica
/// past either bound gets none until it is back within half of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxLag {
    /// Positions behind the primary (`None`: no bound).
    pub positions: Option<u64>,
    /// Time behind the primary: how long the primary has been past what
    /// the replica applied (`None`: no bound).
    pub time: Option<Duration>,
}

impl MaxLag {
    fn over(&self, positions: u64, time: Duration, scale: u32) -> bool {
        self.positions
            .is_some_and(|max| positions.saturating_mul(u64::from(scale)) > max)
            || self.time.is_some_and(|max| time * scale > max)
    }
}

/// A replica's lag as last observed.
#[derive(Debug, Default)]
pub(super) struct LagState {
    /// The primary position the replica has applied.
    pub(super) applied: AtomicU64,
    /// Whether it is too far behind for plain reads.
    pub(super) excluded: AtomicBool,
    /// The lag seen at the last poll.
    pub(super) positions_behind: AtomicU64,
    pub(super) nanos_behind: AtomicU64,
}

impl LagState {
    pub(super) fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    pub(super) fn is_excluded(&self) -> bool {
        self.excluded.load(Ordering::Relaxed)
    }

    /// Records an applied position (a replica's position only grows; a
    /// smaller report is a rebuilt replica and is taken as is).
    pub(super) fn set_applied(&self, applied: u64) {
        self.applied.store(applied, Ordering::Release);
    }

    /// Evaluates the lag against `max`: excluded past it, admitted again
    /// within half of it.
    pub(super) fn evaluate(&self, primary: u64, behind_for: Duration, max: &MaxLag) {
        let positions = primary.saturating_sub(self.applied());
        self.positions_behind.store(positions, Ordering::Relaxed);
        self.nanos_behind.store(
            u64::try_from(behind_for.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let excluded = if self.is_excluded() {
            max.over(positions, behind_for, 2)
        } else {
            max.over(positions, behind_for, 1)
        };
        self.excluded.store(excluded, Ordering::Relaxed);
    }
}

/// When the primary reached which position: the time lag of a replica is
/// how long ago the primary first passed what the replica applied.
#[derive(Debug, Default)]
pub(super) struct PrimaryHistory {
    samples: Mutex<VecDeque<(u64, u64)>>,
}

/// Samples kept: enough for minutes of polls.
const SAMPLES: usize = 4096;

impl PrimaryHistory {
    /// Records that the primary was at `position` at `now` (if it moved).
    pub(super) fn record(&self, position: u64, now: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.back().is_some_and(|&(last, _)| last >= position) {
            return;
        }
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back((position, now));
    }

    /// How long the primary has been past `applied`, as of `now`.
    pub(super) fn behind_for(&self, applied: u64, now: u64) -> Duration {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let first_past = samples.partition_point(|&(position, _)| position <= applied);
        match samples.get(first_past) {
            Some(&(_, since)) => Duration::from_nanos(now.saturating_sub(since)),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_replica_past_the_bound_is_excluded_until_back_within_half_of_it() {
        let max = MaxLag {
            positions: Some(10),
            time: None,
        };
        let lag = LagState::default();
        lag.set_applied(100);
        lag.evaluate(111, Duration::ZERO, &max);
        assert!(lag.is_excluded());
        lag.evaluate(108, Duration::ZERO, &max);
        assert!(lag.is_excluded(), "8 behind: not yet within half");
        lag.evaluate(105, Duration::ZERO, &max);
        assert!(!lag.is_excluded());
        lag.evaluate(109, Duration::ZERO, &max);
        assert!(!lag.is_excluded(), "within the bound");
    }

    #[test]
    fn time_lag_is_how_long_the_primary_has_been_past_the_replica() {
        let history = PrimaryHistory::default();
        history.record(10, 100 * MS);
        history.record(20, 200 * MS);
        history.record(20, 250 * MS); // no move: not a new sample
        history.record(30, 300 * MS);
        assert_eq!(history.behind_for(30, 400 * MS), Duration::ZERO);
        assert_eq!(history.behind_for(20, 400 * MS), Duration::from_millis(100));
        assert_eq!(history.behind_for(15, 400 * MS), Duration::from_millis(200));
        let max = MaxLag {
            positions: None,
            time: Some(Duration::from_millis(150)),
        };
        let lag = LagState::default();
        lag.set_applied(15);
        lag.evaluate(30, history.behind_for(15, 400 * MS), &max);
        assert!(lag.is_excluded());
    }
}
