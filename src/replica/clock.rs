//! The replica set's clock: nanoseconds since the set was built, on
//! tokio's clock (so tests with paused time are exact).

use tokio::time::Instant;

/// Nanoseconds since a base instant.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    base: Instant,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    /// Nanoseconds since the base (at least 1, so that 0 can mean "never").
    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// A small, fast, per-thread random number source for picking replicas
/// (xorshift64*; not for anything that needs unpredictability).
pub(super) fn random_below(bound: usize) -> usize {
    // Multiply-shift: an index without a division.
    ((u128::from(random_u64()) * bound as u128) >> 64) as usize
}

/// 64 random bits (xorshift64*, per thread).
pub(super) fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            // Seeded per thread from the process's random hasher keys.
            foldhash::fast::RandomState::default().hash_one(std::thread::current().id()) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

#[cfg(test)]
mod tests {
    use super::random_below;

    #[test]
    fn random_indices_stay_in_bounds_and_cover_them() {
        let mut seen = [0u32; 5];
        for _ in 0..5_000 {
            seen[random_below(5)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700), "{seen:?}");
        assert_eq!(random_below(1), 0);
    }
}
