//! Exponential back-off with jitter, for retries that many callers make at
//! once: tasks of one process, or processes of a fleet over one store.
//!
//! The random source is seeded per process ([`seed`]), so two processes
//! that collide do not retry in lockstep and collide again.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A seed that differs between processes (and between calls).
pub(crate) fn seed() -> u64 {
    // `RandomState` keys are random per process and advance per call;
    // xorshift must not start at zero.
    RandomState::new().build_hasher().finish() | 1
}

/// The wait before attempt `attempts + 1`: doubling from `base` up to
/// `max`, then a random half to all of it ("equal jitter"), so that many
/// callers retrying together spread out.
pub(crate) fn backoff(base: Duration, max: Duration, attempts: u32, rng: &mut u64) -> Duration {
    let full = base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(max);
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let share = 0.5 + (*rng >> 11) as f64 / (1u64 << 54) as f64;
    full.mul_f64(share.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::{backoff, seed};
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let mut rng = 42;
        for (attempts, full) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (30, 100)] {
            let wait = backoff(base, max, attempts, &mut rng);
            let full = Duration::from_millis(full);
            assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
        }
    }

    #[test]
    fn the_random_source_is_xorshift64() {
        // Marsaglia's shifts 13, 7, 17: from 1, 1 ^ 1 << 13 = 8193;
        // ^ 8193 >> 7 = 8257; ^ 8257 << 17 = 1082269761. And from a seed
        // whose shifted bits overlap (so `|` or `&` for `^` would show).
        let mut rng = 1;
        backoff(Duration::ZERO, Duration::ZERO, 1, &mut rng);
        assert_eq!(rng, 1_082_269_761);
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        backoff(Duration::ZERO, Duration::ZERO, 1, &mut rng);
        assert_eq!(rng, 15_860_402_102_123_842_989);
    }

    #[test]
    fn the_jitter_spreads_waits_over_the_upper_half() {
        let mut rng = seed();
        let base = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..1_000)
            .map(|_| backoff(base, base, 1, &mut rng))
            .collect();
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 990, "{} distinct", distinct.len());
        let low = waits.iter().filter(|w| **w < base * 5 / 8).count();
        let high = waits.iter().filter(|w| **w > base * 7 / 8).count();
        assert!(low > 150 && high > 150, "{low} low, {high} high");
    }

    #[test]
    fn seeds_differ_and_are_never_zero() {
        let seeds: std::collections::BTreeSet<u64> = (0..8).map(|_| seed()).collect();
        assert!(seeds.len() > 1 && !seeds.contains(&0));
    }
}
