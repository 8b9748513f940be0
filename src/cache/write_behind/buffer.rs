//! The write-behind buffer: the latest acknowledged write of each key not
//! yet in the store, in acknowledgement order, and the batch in flight.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use tokio::time::Instant;

use super::journal::Appender;
use crate::store::Write;

/// One buffered write and the sequence number it was acknowledged with.
#[derive(Debug)]
struct Pending<V> {
    seq: u64,
    value: Option<V>,
}

/// A batch taken by the flusher.
#[derive(Debug)]
pub(super) struct Batch<K, V> {
    pub(super) writes: Vec<Write<K, V>>,
}

/// What a read finds in the buffer.
#[derive(Debug, PartialEq)]
pub(super) enum Buffered<V> {
    /// The key's latest acknowledged write: its value, or `None` for a
    /// delete.
    Write(Option<V>),
    /// Nothing buffered: the store has the key's latest write.
    Nothing,
}

#[derive(Debug)]
pub(super) struct Buffer<K, V> {
    /// The latest unflushed write per key.
    pending: HashMap<K, Pending<V>>,
    /// Pending keys by the sequence of their latest write, oldest first.
    order: BTreeMap<u64, K>,
    /// The batch the flusher is writing: still visible to reads.
    in_flight: HashMap<K, Option<V>>,
    /// The sequence of the last acknowledged write.
    last_seq: u64,
    /// When the oldest pending write was acknowledged.
    oldest_at: Option<Instant>,
    /// Flush everything acknowledged up to here, whatever the triggers say.
    pub(super) flush_target: u64,
    /// No further writes are accepted.
    pub(super) closed: bool,
    /// The journal's appending half, when there is a journal: writes are
    /// logged under the same lock that buffers them.
    pub(super) log: Option<Appender>,
}

impl<K: Clone + Eq + Hash, V: Clone> Buffer<K, V> {
    pub(super) fn new() -> Self {
        Buffer {
            pending: HashMap::new(),
            order: BTreeMap::new(),
            in_flight: HashMap::new(),
            last_seq: 0,
            oldest_at: None,
            flush_target: 0,
            closed: false,
            log: None,
        }
    }

    /// Entries held: pending keys plus the batch in flight.
    pub(super) fn len(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub(super) fn oldest_at(&self) -> Option<Instant> {
        self.oldest_at
    }

    /// Whether a write to `key` needs a new entry (rather than replacing a
    /// pending one).
    pub(super) fn needs_room(&self, key: &K) -> bool {
        !self.pending.contains_key(key)
    }

    /// Buffers a write; returns its sequence and whether it replaced a
    /// pending write of the same key (coalesced).
    pub(super) fn push(&mut self, write: Write<K, V>, now: Instant) -> (u64, bool) {
        self.last_seq += 1;
        let seq = self.last_seq;
        let (key, value) = match write {
            Write::Put(key, value) => (key, Some(value)),
            Write::Delete(key) => (key, None),
        };
        let replaced = self.pending.insert(key.clone(), Pending { seq, value });
        if let Some(old) = &replaced {
            self.order.remove(&old.seq);
        }
        self.order.insert(seq, key);
        self.oldest_at = self.oldest_at.or(Some(now));
        (seq, replaced.is_some())
    }

    /// The latest acknowledged write of `key` that the store may not have.
    pub(super) fn read(&self, key: &K) -> Buffered<V> {
        if let Some(pending) = self.pending.get(key) {
            return Buffered::Write(pending.value.clone());
        }
        match self.in_flight.get(key) {
            Some(value) => Buffered::Write(value.clone()),
            None => Buffered::Nothing,
        }
    }

    /// Takes up to `max` of the oldest pending writes as the batch in
    /// flight. There is one batch in flight at a time, so a key's writes
    /// reach the store in the order they were acknowledged.
    pub(super) fn take_batch(&mut self, max: usize) -> Batch<K, V> {
        debug_assert!(self.in_flight.is_empty(), "one batch in flight at a time");
        let mut writes = Vec::with_capacity(max.min(self.pending.len()));
        while writes.len() < max {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            let Some(pending) = self.pending.remove(&key) else {
                continue;
            };
            self.in_flight.insert(key.clone(), pending.value.clone());
            writes.push(match pending.value {
                Some(value) => Write::Put(key, value),
                None => Write::Delete(key),
            });
        }
        // The oldest write left is younger than any taken; restart its
        // clock from now rather than track every write's time.
        self.oldest_at = if self.pending.is_empty() {
            None
        } else {
            Some(Instant::now())
        };
        Batch { writes }
    }

    /// The batch in flight is done (written or dead-lettered); returns the
    /// sequence up to which every acknowledged write is done.
    pub(super) fn finish_batch(&mut self) -> u64 {
        self.in_flight.clear();
        self.done_up_to()
    }

    /// Every write with a sequence up to this one is done.
    pub(super) fn done_up_to(&self) -> u64 {
        match self.order.first_key_value() {
            Some((&oldest, _)) => oldest - 1,
            None => self.last_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Buffer, Buffered};
    use crate::store::Write;
    use tokio::time::Instant;

    #[test]
    fn coalesces_per_key_and_keeps_acknowledgement_order() {
        let mut buffer = Buffer::<&str, u32>::new();
        let now = Instant::now();
        assert_eq!(buffer.push(Write::Put("a", 1), now), (1, false));
        assert_eq!(buffer.push(Write::Put("b", 2), now), (2, false));
        assert_eq!(buffer.push(Write::Put("a", 3), now), (3, true));
        assert_eq!(buffer.push(Write::Delete("b"), now), (4, true));
        assert_eq!(buffer.read(&"a"), Buffered::Write(Some(3)));
        assert_eq!(buffer.read(&"b"), Buffered::Write(None));
        assert_eq!(buffer.read(&"c"), Buffered::Nothing);
        let batch = buffer.take_batch(10);
        assert_eq!(batch.writes, vec![Write::Put("a", 3), Write::Delete("b")]);
        // Still visible while in flight.
        assert_eq!(buffer.read(&"a"), Buffered::Write(Some(3)));
        assert_eq!(buffer.finish_batch(), 4);
        assert_eq!(buffer.read(&"a"), Buffered::Nothing);
    }

    #[test]
    fn a_partial_batch_is_done_only_up_to_the_oldest_write_left() {
        let mut buffer = Buffer::<u32, u32>::new();
        let now = Instant::now();
        for k in 0..5 {
            buffer.push(Write::Put(k, k), now);
        }
        let batch = buffer.take_batch(2);
        assert_eq!(batch.writes.len(), 2);
        buffer.push(Write::Put(0, 9), now);
        assert_eq!(buffer.finish_batch(), 2, "writes 3.. are still pending");
        assert_eq!(buffer.len(), 4);
        assert!(!buffer.needs_room(&0));
        assert!(buffer.needs_room(&1));
    }
}
