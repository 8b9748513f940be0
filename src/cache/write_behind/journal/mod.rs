//! The write-behind journal: every acknowledged write is in an on-disk
//! log before the caller hears "done", and the log is replayed into the
//! store on the next start.
//!
//! The log is a series of segment files `journal-<n>.log` in one
//! directory ([`segment`] has their layout, [`record`] the records'). The
//! active segment is mapped into memory: appending a record is a copy
//! into the operating system's page cache, which survives a crash of the
//! process; the [`SyncPolicy`] says when the file is also forced to the
//! disk, which a power loss needs. As the store confirms writes, the
//! active segment's checkpoint moves past them, and closed segments whose
//! writes are all confirmed are deleted, oldest first.
//!
//! One directory belongs to one journal: opening takes an exclusive lock
//! (`flock`) on its `lock` file, held until the journal is dropped, so a
//! second layer or a second process (a rolling deploy) over the same
//! directory is refused instead of replaying and deleting the first one's
//! live segments.

mod record;
mod segment;

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::stats::JournalBytes;
use crate::{Error, Result};

pub(super) use record::{decode, encode, frame, frame_with, parse, DecodeFn, EncodeFn};
use segment::Active;

const COMPONENT: &str = "WriteBehind journal";

/// The lock file's name.
const LOCK: &str = "lock";

/// Files in the directory that are the journal's own but not segments.
const OWN_FILES: &[&str] = &[LOCK, super::dead_letter::FILE, super::dead_letter::REWRITE];

/// Damage found in the journal at start: which file, which bytes, what.
/// The writes inside a damaged range are not applied (they cannot be
/// read); the records after it are. Also counted in
/// [`WriteBehindStats::bad_journal_records`](super::WriteBehindStats::bad_journal_records)
/// and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JournalDamage {
    /// The segment file.
    pub segment: PathBuf,
    /// The damaged bytes, as offsets in the file.
    pub bytes: std::ops::Range<u64>,
    /// What is wrong there.
    pub what: &'static str,
}

/// When the journal forces appended records to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Before each write is acknowledged: the write survives a power loss.
    /// Concurrent writers share one `fsync` (group commit).
    EveryWrite,
    /// Every interval, in the background: a crash of the process loses
    /// nothing (the records are in the OS), a power loss at most the last
    /// interval.
    Interval(Duration),
    /// Never explicitly: the OS writes back in its own time. A crash of the
    /// process loses nothing; a power loss may lose what the OS held.
    Os,
}

/// A segment no longer appended to, kept until the store confirms it.
#[derive(Debug)]
struct Closed {
    id: u64,
    /// The sequence of the last write in it (in this run's numbering).
    last_seq: u64,
    /// Its file while it may hold records not yet forced to the disk.
    unsynced: Option<Arc<File>>,
    /// [`Journal::appended`] when it was closed: a sync that started
    /// before that may not cover its last records.
    appended_end: u64,
}

/// What syncing and deleting need, behind the journal's own lock.
#[derive(Debug)]
struct Files {
    /// The file of the active segment.
    active: Arc<File>,
    closed: VecDeque<Closed>,
    /// Bytes known to be on the disk (of [`Journal::appended`]).
    synced: u64,
    /// A writer is forcing the files to the disk for everyone.
    syncing: bool,
    /// An `fsync` failed: the kernel may have dropped the pages whose
    /// write-back failed and report the next `fsync` clean, so no later
    /// sync may acknowledge anything (until a restart re-reads the files).
    sync_failed: Option<Error>,
}

/// The files a sync forces to the disk, and the bytes appended when it
/// began.
#[derive(Debug)]
struct SyncPlan {
    files: Vec<Arc<File>>,
    upto: u64,
}

/// What a replay found.
#[derive(Debug)]
pub(super) struct Replay<K, V> {
    pub(super) writes: Vec<crate::store::Write<K, V>>,
    /// Damaged ranges, and records that did not decode (a torn tail after
    /// a crash, or corruption): reported, not applied.
    pub(super) bad_records: u64,
    /// Where each damaged range is.
    pub(super) damage: Vec<JournalDamage>,
}

/// The journal's shared half: syncing, deleting confirmed segments, and
/// the count of bytes appended.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    /// Holds the directory's lock until the layer stops (or the journal
    /// is dropped).
    lock: Mutex<Option<File>>,
    policy: SyncPolicy,
    files: Mutex<Files>,
    /// Bytes appended since open: the tickets [`durable`](Self::durable)
    /// waits on.
    appended: AtomicU64,
    /// Wakes writers waiting for a sync of the files.
    progress: Notify,
}

/// The journal's appending half. It lives under the write-behind buffer's
/// lock: a write is logged and buffered under one lock, in one order, and
/// the copy into the log overlaps with the buffering that follows it.
#[derive(Debug)]
pub(super) struct Appender {
    active: Active,
    /// Each group of records appended and not yet confirmed, oldest
    /// first: how far the checkpoint and the confirmed bytes move once the
    /// store confirms its last write.
    marks: VecDeque<Mark>,
    /// Where records are encoded before they are copied in.
    scratch: Vec<u8>,
    /// Bytes appended since open, and of those, bytes of confirmed writes.
    appended: u64,
    confirmed: u64,
    /// Where the active segment's checkpoint may move once no confirmed
    /// segment is stuck.
    checkpoint: Option<usize>,
}

/// Where a group of appended records ends.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// The sequence of its last write.
    seq: u64,
    /// The segment it is in, and its end there.
    segment: u64,
    end: usize,
    /// [`Appender::appended`] after it.
    appended: u64,
}

fn io_error(operation: &'static str, error: io::Error) -> Error {
    Error::backend("journal", operation, error)
}

/// Takes the directory's exclusive lock, or says who holds it.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_error("open the lock file", e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(crate::ErrorKind::Unavailable {
            component: COMPONENT,
            reason: format!(
                "the journal directory {} is in use by another WriteBehind (in this or another process); one directory serves one layer at a time",
                dir.display()
            ),
            source: None,
        }
        .into()),
        Err(fs::TryLockError::Error(e)) => Err(io_error("lock the directory", e)),
    }
}

fn remove(dir: &Path, id: u64) -> Result<()> {
    match fs::remove_file(segment::path(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error("remove a segment", e)),
        _ => Ok(()),
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir` and reads back what an earlier
    /// run left unconfirmed. Appends go to a new segment.
    pub(super) fn open<K, V>(
        dir: &Path,
        policy: SyncPolicy,
        decode: DecodeFn<K, V>,
    ) -> Result<(Journal, Appender, Replay<K, V>)> {
        fs::create_dir_all(dir).map_err(|e| io_error("create directory", e))?;
        let lock = lock(dir)?;
        let mut writes = Vec::new();
        let mut bad_records = 0;
        let mut damage = Vec::new();
        let mut left = Vec::new();
        let ids = segment::ids(dir)?;
        for &id in &ids {
            let path = segment::path(dir, id);
            let found = segment::read(&path)?;
            for (bytes, what) in found.damage.iter().cloned() {
                bad_records += 1;
                tracing::warn!(
                    path = %path.display(),
                    from = bytes.start,
                    to = bytes.end,
                    what,
                    "journal: damaged bytes found; the writes in them are not applied"
                );
                damage.push(JournalDamage {
                    segment: path.clone(),
                    bytes,
                    what,
                });
            }
            if found.payloads.is_empty() && found.damage.is_empty() {
                remove(dir, id)?; // everything in it was confirmed
                continue;
            }
            for record in found.payloads {
                match decode(&record) {
                    Ok(write) => writes.push(write),
                    Err(error) => {
                        bad_records += 1;
                        tracing::warn!(%error, path = %path.display(), "journal: a record did not decode and was not applied");
                    }
                }
            }
            // The segment goes once the store has its writes (sequences
            // are given to the replayed writes in order), so a crash loop
            // over a long backlog makes progress segment by segment.
            left.push((id, writes.len() as u64));
        }
        let closed = left
            .into_iter()
            .map(|(id, last_seq)| Closed {
                id,
                last_seq,
                unsynced: None,
                appended_end: 0,
            })
            .collect();
        let active = Active::create(dir, ids.last().map_or(0, |id| id + 1), 0)?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            lock: Mutex::new(Some(lock)),
            policy,
            files: Mutex::new(Files {
                active: Arc::clone(active.file()),
                closed,
                synced: 0,
                syncing: false,
                sync_failed: None,
            }),
            appended: AtomicU64::new(0),
            progress: Notify::new(),
        };
        let appender = Appender {
            active,
            marks: VecDeque::new(),
            scratch: Vec::new(),
            appended: 0,
            confirmed: 0,
            checkpoint: None,
        };
        Ok((
            journal,
            appender,
            Replay {
                writes,
                bad_records,
                damage,
            },
        ))
    }

    /// Lets go of the directory: the layer has stopped and appends no
    /// more, so another layer may take it (and replay what is left).
    pub(super) fn release(&self) {
        let lock = self
            .lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(lock) = lock {
            let _ = lock.unlock();
        }
    }

    fn files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// Returns once the records up to `ticket` are as safe as the policy
    /// asks before an acknowledgement: at once, except under
    /// [`SyncPolicy::EveryWrite`], where one writer forces the files to the
    /// disk for everyone waiting (group commit).
    pub(super) async fn durable(&self, ticket: u64) -> Result<()> {
        if self.policy != SyncPolicy::EveryWrite {
            return Ok(());
        }
        loop {
            let progress = self.progress.notified();
            let leads = {
                let mut files = self.files();
                if let Some(error) = &files.sync_failed {
                    return Err(error.clone());
                }
                if files.synced >= ticket {
                    return Ok(());
                }
                !std::mem::replace(&mut files.syncing, true)
            };
            if leads {
                // If this writer is cancelled, the guard hands the lead back.
                let _lead = Lead(self);
                self.sync().await?;
            } else {
                progress.await;
            }
        }
    }

    /// Forces everything appended so far to the disk (also the `Interval`
    /// policy's tick).
    pub(super) async fn sync(&self) -> Result<()> {
        let Some(plan) = self.plan_sync()? else {
            return Ok(()); // nothing new since the last sync
        };
        let files = plan.files.clone();
        let outcome =
            tokio::task::spawn_blocking(move || files.iter().try_for_each(|file| file.sync_data()))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)));
        self.finish_sync(plan, outcome)
    }

    /// What a sync must force to the disk: the files that may hold records
    /// not yet there, and how many bytes were appended when it began (all
    /// of them already in those files' pages). `None` if nothing is new.
    fn plan_sync(&self) -> Result<Option<SyncPlan>> {
        let files = self.files();
        if let Some(error) = &files.sync_failed {
            return Err(error.clone());
        }
        let upto = self.appended.load(Ordering::Acquire);
        if files.synced >= upto {
            return Ok(None);
        }
        let mut unsynced: Vec<Arc<File>> = files
            .closed
            .iter()
            .filter_map(|closed| closed.unsynced.clone())
            .collect();
        unsynced.push(Arc::clone(&files.active));
        Ok(Some(SyncPlan {
            files: unsynced,
            upto,
        }))
    }

    /// Records what a sync planned by [`plan_sync`](Self::plan_sync) did.
    fn finish_sync(&self, plan: SyncPlan, outcome: io::Result<()>) -> Result<()> {
        let mut files = self.files();
        if let Err(e) = outcome {
            let error = Error::from(crate::ErrorKind::Unavailable {
                component: COMPONENT,
                reason: "an fsync of the journal failed: nothing more is acknowledged until the layer is rebuilt (the journal is re-read then)".into(),
                source: Some(Arc::new(e)),
            });
            files.sync_failed = Some(error.clone());
            return Err(error);
        }
        files.synced = files.synced.max(plan.upto);
        for closed in &mut files.closed {
            // A segment closed after the sync began may hold records the
            // sync did not cover: it stays unsynced for the next one.
            if closed.appended_end <= plan.upto
                && closed
                    .unsynced
                    .as_ref()
                    .is_some_and(|file| plan.files.iter().any(|s| Arc::ptr_eq(s, file)))
            {
                closed.unsynced = None;
            }
        }
        Ok(())
    }

    /// The store has every write up to `done`: delete the closed segments
    /// that hold nothing newer, oldest first. If one cannot be removed,
    /// it and every segment after it stay (removal is retried on the next
    /// confirmation), and the caller must hold the active segment's
    /// checkpoint: a restart then replays it and everything after it in
    /// order, never its old values over newer ones.
    pub(super) fn confirm(&self, done: u64) -> Result<()> {
        let mut files = self.files();
        while let Some(segment) = files.closed.front() {
            if segment.last_seq > done {
                break;
            }
            remove(&self.dir, segment.id)?;
            files.closed.pop_front();
        }
        Ok(())
    }
}

impl Appender {
    /// Appends the records `frame` encodes (the writes with sequences up
    /// to `last_seq`); once this returns they survive a crash of the
    /// process. Returns the ticket to wait on with
    /// [`Journal::durable`]. If `frame` fails, or a new segment is needed
    /// and cannot be made, nothing is appended.
    pub(super) fn append(
        &mut self,
        journal: &Journal,
        last_seq: u64,
        frame: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<u64> {
        self.scratch.clear();
        frame(&mut self.scratch)?;
        let len = self.scratch.len();
        if !self.active.fits(len) {
            self.rotate(journal, len)?;
        }
        let end = self.active.append(&self.scratch, last_seq);
        self.appended += len as u64;
        self.marks.push_back(Mark {
            seq: last_seq,
            segment: self.active.id(),
            end,
            appended: self.appended,
        });
        journal.appended.store(self.appended, Ordering::Release);
        if self.scratch.capacity() > 64 << 10 {
            self.scratch = Vec::new(); // do not keep a large write's buffer
        }
        Ok(self.appended)
    }

    /// Closes the full active segment and starts the next, with room for
    /// at least `bytes`.
    fn rotate(&mut self, journal: &Journal, bytes: usize) -> Result<()> {
        let next = Active::create(&journal.dir, self.active.id() + 1, bytes)?;
        let full = std::mem::replace(&mut self.active, next);
        let mut files = journal.files();
        files.active = Arc::clone(self.active.file());
        if full.is_empty() {
            let id = full.id();
            drop(full);
            remove(&journal.dir, id)
        } else {
            files.closed.push_back(Closed {
                id: full.id(),
                last_seq: full.last_seq(),
                unsynced: Some(Arc::clone(full.file())),
                appended_end: self.appended,
            });
            self.checkpoint = None; // it was the full segment's
            Ok(())
        }
    }

    /// The store has every write up to `done`: move the active segment's
    /// checkpoint past their records, unless `hold` (a confirmed closed
    /// segment could not be removed: a restart must replay from it, so
    /// the records after it must stay too). Closed segments are deleted
    /// whole by [`Journal::confirm`].
    pub(super) fn confirm(&mut self, done: u64, hold: bool) {
        while let Some(mark) = self.marks.front().copied() {
            if mark.seq > done {
                break;
            }
            self.confirmed = mark.appended;
            if mark.segment == self.active.id() {
                self.checkpoint = Some(mark.end);
            }
            self.marks.pop_front();
        }
        if !hold {
            if let Some(offset) = self.checkpoint.take() {
                self.active.checkpoint(offset);
            }
        }
    }

    /// Bytes appended since open, and bytes not yet confirmed.
    pub(super) fn bytes(&self) -> JournalBytes {
        JournalBytes {
            appended: self.appended,
            unconfirmed: self.appended - self.confirmed,
        }
    }
}

/// A writer's lead of a sync: when it ends (done, failed or cancelled),
/// the flag is cleared and the waiting writers are woken.
struct Lead<'a>(&'a Journal);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.files().syncing = false;
        self.0.progress.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Write;

    fn open(dir: &Path) -> (Journal, Appender) {
        let (journal, appender, _) =
            Journal::open(dir, SyncPolicy::EveryWrite, decode::<u64, String>).unwrap();
        (journal, appender)
    }

    fn append(journal: &Journal, appender: &mut Appender, seq: u64, bytes: usize) -> u64 {
        appender
            .append(journal, seq, |out| {
                frame(
                    &Write::Put(seq, "x".repeat(bytes)),
                    encode::<u64, String>,
                    out,
                )
            })
            .unwrap()
    }

    #[test]
    fn a_segment_closed_after_a_sync_began_stays_unsynced_for_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut appender) = open(dir.path());
        append(&journal, &mut appender, 1, 10);
        let plan = journal.plan_sync().unwrap().expect("something to sync");
        // Appended after the plan, then the segment fills and closes.
        let late = append(&journal, &mut appender, 2, 3 << 20);
        append(&journal, &mut appender, 3, 3 << 20);
        assert_eq!(journal.files().closed.len(), 1, "rotated");
        journal.finish_sync(plan, Ok(())).unwrap();
        let files = journal.files();
        assert!(
            files.synced < late,
            "the late record is not counted as synced"
        );
        assert!(
            files.closed[0].unsynced.is_some(),
            "the closed segment still needs the next sync"
        );
    }

    #[test]
    fn after_a_failed_fsync_nothing_more_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut appender) = open(dir.path());
        let ticket = append(&journal, &mut appender, 1, 10);
        let plan = journal.plan_sync().unwrap().unwrap();
        let error = journal
            .finish_sync(plan, Err(io::Error::other("EIO")))
            .unwrap_err();
        assert!(matches!(error.kind(), crate::ErrorKind::Unavailable { .. }));
        // A later fsync could report success for pages the kernel dropped.
        let later = append(&journal, &mut appender, 2, 10);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for wanted in [ticket, later] {
            assert!(runtime.block_on(journal.durable(wanted)).is_err());
        }
        assert!(runtime.block_on(journal.sync()).is_err());
    }

    #[test]
    fn a_confirmed_segment_that_cannot_be_removed_keeps_itself_the_ones_after_it_and_the_checkpoint(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (journal, mut appender) = open(dir.path());
        // Two closed segments (one 3 MiB record each), then two records in
        // the active one.
        append(&journal, &mut appender, 1, 3 << 20);
        append(&journal, &mut appender, 2, 3 << 20);
        append(&journal, &mut appender, 3, 3 << 20);
        append(&journal, &mut appender, 4, 10);
        let closed: Vec<u64> = journal.files().closed.iter().map(|c| c.id).collect();
        assert_eq!(closed.len(), 2, "{closed:?}");
        // The oldest cannot be removed: a directory stands at its path.
        let first = segment::path(dir.path(), closed[0]);
        std::fs::remove_file(&first).unwrap();
        std::fs::create_dir(&first).unwrap();
        assert!(journal.confirm(4).is_err());
        assert_eq!(
            journal.files().closed.len(),
            2,
            "nothing after it is removed"
        );
        assert!(segment::path(dir.path(), closed[1]).exists());
        let active = appender.active.id();
        appender.confirm(4, true);
        let held = segment::read(&segment::path(dir.path(), active)).unwrap();
        assert_eq!(held.payloads.len(), 2, "the active checkpoint did not move");
        // Once it can be removed, everything confirmed goes.
        std::fs::remove_dir(&first).unwrap();
        journal.confirm(4).unwrap();
        appender.confirm(4, false);
        assert!(journal.files().closed.is_empty());
        let moved = segment::read(&segment::path(dir.path(), active)).unwrap();
        assert!(moved.payloads.is_empty(), "now the checkpoint moves");
    }
}
