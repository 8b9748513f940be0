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
    pub(super) isolations: AtomicU64,
    pub(super) held_retries: AtomicU64,
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn snapshot(
        &self,
        buffered: u64,
        journal: JournalBytes,
        dead_letters_kept: u64,
    ) -> WriteBehindStats {
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
            isolated_batches: load(&self.isolations),
            held_retries: load(&self.held_retries),
            dead_letters_kept,
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
    /// Writes that became dead letters (refused by the store, or failing
    /// alone after every attempt).
    pub dead_lettered: u64,
    /// Dead letters' writes kept now (in the durable log, with a journal),
    /// waiting for `take_dead_letters` or `replay_dead_letters`.
    pub dead_letters_kept: u64,
    /// Failed batches whose writes were then tried one by one.
    pub isolated_batches: u64,
    /// Rounds of retries past the budget for writes held because the
    /// store took none of them (an outage, with a journal) or the
    /// dead-letter destination was full.
    pub held_retries: u64,
    /// Writes that waited for room in a full buffer.
    pub waited_for_room: u64,
    /// Writes refused because the buffer was full.
    pub rejected_full: u64,
    /// Writes read back from the journal at start and sent to the store.
    pub replayed: u64,
    /// Damaged journal ranges and undecodable records found at start
    /// (also in the dead-letter log): reported, not applied (a crash
    /// mid-append leaves at most one, unacknowledged). Where they are:
    /// [`WriteBehind::journal_damage`](super::WriteBehind::journal_damage).
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
