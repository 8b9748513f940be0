//! A topic's log: a ring holding its most recent events, written once by
//! the publisher and read by every group's workers from their own cursor
//! (the shape of a Kafka partition, or of `tokio::sync::broadcast`'s
//! buffer). An event costs one write however many groups read it.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::SystemTime;

use tokio::sync::Notify;

use super::event::{Event, EventKey};

/// Slots under one lock: a reader takes a lock per block of events, not
/// per event (a read lock writes its lock word, which every group's
/// reader would otherwise bounce between cores event by event).
const BLOCK: usize = 32;

/// [`BLOCK`] slots (fewer in a smaller ring), under one lock.
type Block<E> = RwLock<Box<[Slot<E>]>>;

struct Slot<E> {
    /// The offset whose event the slot holds (meaningless while empty).
    offset: u64,
    event: Option<Event<E>>,
}

/// The ring, and the signals between its writer and its readers. One
/// writer at a time (the topic's lock holder) appends; readers read any
/// offset between `tail - capacity` and `tail` without the topic's lock,
/// each block of slots behind its own lock.
pub(super) struct Log<E> {
    blocks: Box<[Block<E>]>,
    /// Slots in the ring, less one (the slot count is a power of two).
    mask: u64,
    /// Slots in a block (a power of two).
    block_len: u64,
    /// The next offset to be written: every offset below it is readable
    /// until overwritten.
    tail: AtomicU64,
    /// Set once, when the bus shuts down: no event is appended after.
    closed: AtomicBool,
    /// Wakes readers that found nothing new; counts them, so that the
    /// writer wakes only when someone sleeps.
    pub(super) wake: Notify,
    pub(super) sleepers: AtomicU64,
    /// Wakes writers waiting for a blocking group's room; counts them, so
    /// that readers wake only when someone waits.
    pub(super) room: Notify,
    pub(super) room_waiters: AtomicU64,
    /// The tail a waiting writer wants to reach: readers wake it once
    /// they are well clear of it, not at every step.
    pub(super) room_wanted: AtomicU64,
}

impl<E> fmt::Debug for Log<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("capacity", &(self.mask + 1))
            .field("tail", &self.tail())
            .finish()
    }
}

impl<E> Log<E> {
    /// The next offset to be written.
    pub(super) fn tail(&self) -> u64 {
        self.tail.load(Ordering::SeqCst)
    }
}

impl<E: Clone> Log<E> {
    /// A ring of at least `capacity` slots (rounded up to a power of two).
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        let block_len = capacity.min(BLOCK);
        let empty_block = || {
            (0..block_len)
                .map(|_| Slot {
                    offset: 0,
                    event: None,
                })
                .collect()
        };
        Log {
            blocks: (0..capacity / block_len)
                .map(|_| RwLock::new(empty_block()))
                .collect(),
            mask: capacity as u64 - 1,
            block_len: block_len as u64,
            tail: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            sleepers: AtomicU64::new(0),
            room: Notify::new(),
            room_waiters: AtomicU64::new(0),
            room_wanted: AtomicU64::new(0),
        }
    }

    /// Whether the bus shut down: once seen, the tail no longer moves.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Marks the log closed (under the topic's lock, after the last
    /// append) and wakes every sleeping reader and waiting writer.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        self.room.notify_waiters();
    }

    /// Wakes sleeping readers, if there are any, after an append.
    pub(super) fn wake_readers(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake.notify_waiters();
        }
    }

    /// Wakes writers waiting for room, if there are any, after a reader
    /// with a buffer of `capacity` moved its cursor to `next`: once it
    /// has room for what they want and half its buffer more, or has read
    /// everything. (Waking at every step would wake a writer that still
    /// waits for a slower reader, over and over.)
    pub(super) fn wake_writers(&self, next: u64, capacity: u64) {
        if self.room_waiters.load(Ordering::SeqCst) > 0
            && (next + capacity / 2 >= self.room_wanted.load(Ordering::SeqCst)
                || next >= self.tail())
        {
            self.room.notify_waiters();
        }
    }

    /// How many of the latest events the ring holds.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.mask as usize + 1
    }

    /// Writes events at the tail, each over the event a ring before it,
    /// then publishes them to readers by moving the tail. The caller is
    /// the only writer (it holds the topic's lock) and has checked that
    /// no reader that must not lose events is a ring behind.
    pub(super) fn append(&self, events: impl Iterator<Item = Event<E>>) {
        let mut tail = self.tail.load(Ordering::Relaxed);
        let mut events = events.peekable();
        while events.peek().is_some() {
            // The events that go into this block, under one lock.
            let (block, first) = self.place(tail);
            let mut block = block.write().unwrap_or_else(PoisonError::into_inner);
            for slot in &mut block[first..] {
                let Some(event) = events.next() else { break };
                debug_assert_eq!(event.offset(), tail);
                slot.offset = tail;
                slot.event = Some(event);
                tail += 1;
            }
        }
        // Sequentially consistent, with the load of the sleepers' count
        // that follows: a reader about to sleep sees the new tail, or is
        // seen sleeping and woken.
        self.tail.store(tail, Ordering::SeqCst);
    }

    /// Writes one event at the tail, made in its slot from its parts
    /// (moving a finished event into the slot would copy it once more);
    /// returns its offset. As [`append`](Self::append) otherwise.
    pub(super) fn append_one(&self, payload: E, key: Option<EventKey>, now: SystemTime) -> u64 {
        let offset = self.tail.load(Ordering::Relaxed);
        let (block, index) = self.place(offset);
        {
            let mut block = block.write().unwrap_or_else(PoisonError::into_inner);
            let slot = &mut block[index];
            slot.offset = offset;
            slot.event = Some(Event::new(payload, key, offset, now));
        }
        self.tail.store(offset + 1, Ordering::SeqCst);
        offset
    }

    /// Shows `visit` each offset from `from` to `to` (below the tail) with
    /// its event (`None`: a later event took its slot, the reader fell a
    /// ring behind), taking one lock per block.
    pub(super) fn read(&self, from: u64, to: u64, mut visit: impl FnMut(u64, Option<&Event<E>>)) {
        let mut offset = from;
        while offset < to {
            let (block, first) = self.place(offset);
            let block = block.read().unwrap_or_else(PoisonError::into_inner);
            for slot in &block[first..] {
                if offset == to {
                    break;
                }
                visit(
                    offset,
                    slot.event.as_ref().filter(|_| slot.offset == offset),
                );
                offset += 1;
            }
        }
    }

    /// The block holding `offset`, and the slot's index in it.
    fn place(&self, offset: u64) -> (&Block<E>, usize) {
        let position = offset & self.mask;
        // Both below the slot count, a `usize`.
        let block = (position / self.block_len) as usize;
        let slot = (position % self.block_len) as usize;
        (&self.blocks[block], slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(offsets: std::ops::Range<u64>) -> impl Iterator<Item = Event<u64>> {
        offsets.map(|offset| Event::new(offset * 10, None, offset, SystemTime::now()))
    }

    fn payloads(log: &Log<u64>, from: u64, to: u64) -> Vec<Option<u64>> {
        let mut seen = Vec::new();
        log.read(from, to, |offset, event| {
            assert!(event.is_none_or(|event| event.offset() == offset));
            seen.push(event.map(|event| *event.payload()));
        });
        seen
    }

    #[test]
    fn the_capacity_is_rounded_up_to_a_power_of_two() {
        assert_eq!(Log::<u64>::new(0).capacity(), 1);
        assert_eq!(Log::<u64>::new(5).capacity(), 8);
        assert_eq!(Log::<u64>::new(1024).capacity(), 1024);
    }

    #[test]
    fn a_reader_sees_the_last_ring_of_events_and_knows_when_it_fell_behind() {
        let log = Log::new(4);
        log.append(events(0..2));
        assert_eq!(log.append_one(20, None, SystemTime::now()), 2);
        assert_eq!(log.tail(), 3);
        assert_eq!(payloads(&log, 0, 3), [Some(0), Some(10), Some(20)]);
        log.append(events(3..6));
        assert_eq!(log.tail(), 6);
        assert_eq!(
            payloads(&log, 1, 6),
            [None, Some(20), Some(30), Some(40), Some(50)],
            "offset 5 took the slot of offset 1"
        );
    }

    #[test]
    fn reads_and_writes_cross_blocks_and_wrap_around_the_ring() {
        let log = Log::new(4 * BLOCK);
        let ring = 4 * BLOCK as u64;
        log.append(events(0..ring + 10));
        let seen = payloads(&log, 5, ring + 10);
        assert!(seen[..5].iter().all(Option::is_none), "overwritten");
        let kept: Vec<u64> = seen[5..].iter().map(|p| p.unwrap()).collect();
        assert_eq!(kept, (10..ring + 10).map(|o| o * 10).collect::<Vec<_>>());
    }
}
