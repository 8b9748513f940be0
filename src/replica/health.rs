//! Outlier ejection: a replica that fails several times in a row gets no
//! reads for a while, longer each time it is ejected again (Envoy's
//! outlier detection).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// When replicas are ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ejection {
    /// Consecutive failures (errors, timeouts, failed health checks) that
    /// eject a replica (default 5).
    pub after_failures: u32,
    /// How long the first ejection lasts; each further one doubles it
    /// (default 1 s).
    pub base: Duration,
    /// The longest ejection (default 30 s).
    pub max: Duration,
    /// The largest share of the replicas ejected at once, from 0 to 1
    /// (default 0.5); at least one replica may always be ejected.
    pub max_ejected_share: f64,
}

impl Default for Ejection {
    fn default() -> Self {
        Ejection {
            after_failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
            max_ejected_share: 0.5,
        }
    }
}

impl Ejection {
    /// How long ejection number `n` (0-based) lasts.
    fn duration(&self, n: u32) -> Duration {
        self.base.saturating_mul(1 << n.min(20)).min(self.max)
    }

    /// How many of `replicas` may be ejected at once.
    pub(super) fn max_ejected(&self, replicas: usize) -> usize {
        ((replicas as f64 * self.max_ejected_share) as usize).max(1)
    }
}

#[derive(Debug, Default)]
pub(super) struct Health {
    consecutive_failures: AtomicU32,
    /// Successes since the last failure: a long run forgives past
    /// ejections.
    streak: AtomicU32,
    /// Ejected until this time (the set's clock; 0: never ejected).
    ejected_until: AtomicU64,
    /// Ejections so far, for the back-off.
    ejections: AtomicU32,
}

impl Health {
    pub(super) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    pub(super) fn succeeded(&self, policy: &Ejection) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= policy.after_failures.saturating_mul(20) {
                self.ejections.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Records a failure; `true` when it should eject the replica now
    /// (the caller checks the cap and calls [`eject`](Self::eject)).
    pub(super) fn failed(&self, now: u64, policy: &Ejection) -> bool {
        self.streak.store(0, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= policy.after_failures && !self.is_ejected(now)
    }

    pub(super) fn eject(&self, now: u64, policy: &Ejection) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed);
        let duration = policy.duration(n);
        let until = now.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn ejections_grow_with_each_repeat_up_to_the_cap() {
        let policy = Ejection {
            after_failures: 2,
            base: Duration::from_secs(1),
            max: Duration::from_secs(3),
            max_ejected_share: 0.5,
        };
        let health = Health::default();
        assert!(!health.failed(S, &policy));
        assert!(health.failed(S, &policy));
        assert_eq!(health.eject(S, &policy), Duration::from_secs(1));
        assert!(health.is_ejected(S + S / 2) && !health.is_ejected(2 * S + 1));
        assert!(!health.failed(3 * S, &policy));
        assert!(health.failed(3 * S, &policy));
        assert_eq!(health.eject(3 * S, &policy), Duration::from_secs(2));
        health.failed(6 * S, &policy);
        health.failed(6 * S, &policy);
        assert_eq!(
            health.eject(6 * S, &policy),
            Duration::from_secs(3),
            "capped"
        );
    }

    #[test]
    fn a_success_resets_the_count_and_at_least_one_replica_may_be_ejected() {
        let policy = Ejection {
            after_failures: 2,
            ..Ejection::default()
        };
        let health = Health::default();
        health.failed(S, &policy);
        health.succeeded(&policy);
        assert!(!health.failed(S, &policy), "the count started over");
        assert_eq!(policy.max_ejected(1), 1);
        assert_eq!(policy.max_ejected(4), 2);
    }
}
