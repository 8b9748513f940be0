//! A lossy ring of recent hits, so a read never takes the write lock.
//!
//! A hit records which entry it read; whoever next holds the shard's write
//! lock (an insert, or the hit that fills the ring) replays the records in
//! order into the eviction policy. When readers outpace the replay, the
//! oldest records are overwritten: the policy then misses a few accesses,
//! which costs a little accuracy and never correctness (Caffeine makes the
//! same trade).

use std::sync::atomic::{AtomicU64, Ordering};

/// How many hits a shard remembers between replays.
pub(super) const CAPACITY: u64 = 64;

const EMPTY: u64 = u64::MAX;

#[derive(Debug)]
pub(super) struct ReadBuffer {
    /// Hits recorded so far; the next record goes to `head % CAPACITY`.
    head: AtomicU64,
    records: [AtomicU64; CAPACITY as usize],
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            head: AtomicU64::new(0),
            records: std::array::from_fn(|_| AtomicU64::new(EMPTY)),
        }
    }
}

impl ReadBuffer {
    /// Records a hit; `true` when the ring has just filled and should be
    /// replayed.
    #[inline(always)]
    pub(super) fn record(&self, record: u64) -> bool {
        let at = self.head.fetch_add(1, Ordering::Relaxed);
        self.records[(at % CAPACITY) as usize].store(record, Ordering::Relaxed);
        (at + 1).is_multiple_of(CAPACITY)
    }

    /// Hits recorded since the buffer was made (wraps never in practice).
    pub(super) fn recorded(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    /// Replays, oldest first, the records after `*tail`, and moves `*tail`
    /// to the end. The caller holds the shard's write lock, so there is one
    /// replayer at a time.
    pub(super) fn replay(&self, tail: &mut u64, mut apply: impl FnMut(u64)) {
        let head = self.head.load(Ordering::Acquire);
        let from = (*tail).max(head.saturating_sub(CAPACITY));
        for at in from..head {
            let record = self.records[(at % CAPACITY) as usize].swap(EMPTY, Ordering::Relaxed);
            if record != EMPTY {
                apply(record);
            }
        }
        *tail = head;
    }
}

#[cfg(test)]
mod tests {
    use super::{ReadBuffer, CAPACITY};

    #[test]
    fn replays_in_order_and_once() {
        let buffer = ReadBuffer::default();
        let mut tail = 0;
        for r in 0..10 {
            assert!(!buffer.record(r));
        }
        let mut seen = Vec::new();
        buffer.replay(&mut tail, |r| seen.push(r));
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        seen.clear();
        buffer.replay(&mut tail, |r| seen.push(r));
        assert!(seen.is_empty());
    }

    #[test]
    fn says_when_full_and_keeps_the_newest_when_overrun() {
        let buffer = ReadBuffer::default();
        let full: Vec<bool> = (0..CAPACITY + 10).map(|r| buffer.record(r)).collect();
        assert_eq!(full.iter().filter(|f| **f).count(), 1);
        assert!(full[CAPACITY as usize - 1]);
        let mut seen = Vec::new();
        buffer.replay(&mut 0, |r| seen.push(r));
        assert_eq!(seen, (10..CAPACITY + 10).collect::<Vec<_>>());
    }
}
