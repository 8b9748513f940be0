//! Write-behind counters.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) acknowledged: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) waited_for_room: AtomicU64,
    pub(super) rejected_full: AtomicU64,
    pub(super) replayed: AtomicU64,
    pub(super) bad_journal_records: AtomicU64,
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self, buffered: u64, journal: JournalBytes) -> WriteBehindStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WriteBehindStats {
            acknowledged: load(&self.acknowledged),
            coalesced: load(&self.coalesced),
            batches: load(&self.batches),
            written: load(&self.written),
            retries: load(&self.retries),
            dead_lettered: load(&self.dead_lettered),
            waited_for_room: load(&self.waited_for_room),
            rejected_full: load(&self.rejected_full),
            replayed: load(&self.replayed),
            bad_journal_records: load(&self.bad_journal_records),
            buffered,
            journal_bytes_appended: journal.appended,
            journal_bytes_unconfirmed: journal.unconfirmed,
        }
    }
}

/// A snapshot of a [`WriteBehind`](super::WriteBehind)'s counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Writes acknowledged to callers (each write of a batch counts).
    pub acknowledged: u64,
    /// Writes replaced by a later write of the same key before reaching
    /// the store.
    pub coalesced: u64,
    /// Batches the store took.
    pub batches: u64,
    /// Writes the store took.
    pub written: u64,
    /// Batch attempts that failed and were tried again.
    pub retries: u64,
    /// Writes handed to the dead-letter sink after every attempt failed.
    pub dead_lettered: u64,
    /// Writes that waited for room in a full buffer.
    pub waited_for_room: u64,
    /// Writes refused because the buffer was full.
    pub rejected_full: u64,
    /// Writes read back from the journal at start and sent to the store.
    pub replayed: u64,
    /// Journal records found torn or corrupted at start: reported, not
    /// applied (a crash mid-append leaves at most one, unacknowledged).
    pub bad_journal_records: u64,
    /// Entries buffered now (pending, plus the batch in flight).
    pub buffered: u64,
    /// Bytes of records appended to the journal since the layer was built
    /// (0 without a journal).
    pub journal_bytes_appended: u64,
    /// Bytes of journal records whose writes the store has not confirmed
    /// yet: what a crash now would leave to replay.
    pub journal_bytes_unconfirmed: u64,
}

/// The journal's byte counts, read under the buffer's lock.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct JournalBytes {
    pub(super) appended: u64,
    pub(super) unconfirmed: u64,
}
