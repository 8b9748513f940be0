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
//! writes are all confirmed are deleted.

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

pub(super) use record::{decode, encode, frame, DecodeFn, EncodeFn};
use segment::Active;

const COMPONENT: &str = "WriteBehind journal";

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
}

/// What a replay found.
#[derive(Debug)]
pub(super) struct Replay<K, V> {
    pub(super) writes: Vec<crate::store::Write<K, V>>,
    /// Records that failed their checksum or did not decode (a torn tail
    /// after a crash, or corruption): reported, not applied.
    pub(super) bad_records: u64,
}

/// The journal's shared half: syncing, deleting confirmed segments, and
/// the count of bytes appended.
#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
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
        let mut writes = Vec::new();
        let mut bad_records = 0;
        let mut left = Vec::new();
        let ids = segment::ids(dir)?;
        for &id in &ids {
            let path = segment::path(dir, id);
            let (records, torn) = segment::read(&path)?;
            if torn {
                bad_records += 1;
                tracing::warn!(path = %path.display(), "journal: a torn or corrupted record was found and not applied");
            }
            if records.is_empty() && !torn {
                remove(dir, id)?; // everything in it was confirmed
                continue;
            }
            for record in records {
                match decode(&record) {
                    Ok(write) => writes.push(write),
                    Err(error) => {
                        bad_records += 1;
                        tracing::warn!(%error, "journal: a record did not decode and was not applied");
                    }
                }
            }
            left.push(id);
        }
        // The segments left hold the replayed writes: they go once the
        // store has them, that is once the first `writes.len()` sequences
        // are done.
        let replayed = writes.len() as u64;
        let closed = left
            .into_iter()
            .map(|id| Closed {
                id,
                last_seq: replayed,
                unsynced: None,
            })
            .collect();
        let active = Active::create(dir, ids.last().map_or(0, |id| id + 1), 0)?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            policy,
            files: Mutex::new(Files {
                active: Arc::clone(active.file()),
                closed,
                synced: 0,
                syncing: false,
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
        };
        Ok((
            journal,
            appender,
            Replay {
                writes,
                bad_records,
            },
        ))
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
        let (files, upto) = {
            let files = self.files();
            // Everything counted here is already in the files' pages.
            let upto = self.appended.load(Ordering::Acquire);
            if files.synced >= upto {
                return Ok(()); // nothing new since the last sync
            }
            let mut unsynced: Vec<Arc<File>> = files
                .closed
                .iter()
                .filter_map(|closed| closed.unsynced.clone())
                .collect();
            unsynced.push(Arc::clone(&files.active));
            (unsynced, upto)
        };
        let synced = files.clone();
        tokio::task::spawn_blocking(move || files.iter().try_for_each(|file| file.sync_data()))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|e| io_error("sync", e))?;
        let mut files = self.files();
        files.synced = files.synced.max(upto);
        for closed in &mut files.closed {
            if closed
                .unsynced
                .as_ref()
                .is_some_and(|file| synced.iter().any(|s| Arc::ptr_eq(s, file)))
            {
                closed.unsynced = None;
            }
        }
        Ok(())
    }

    /// The store has every write up to `done`: delete the closed segments
    /// that hold nothing newer.
    pub(super) fn confirm(&self, done: u64) -> Result<()> {
        let mut files = self.files();
        while files.closed.front().is_some_and(|s| s.last_seq <= done) {
            if let Some(segment) = files.closed.pop_front() {
                remove(&self.dir, segment.id)?;
            }
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
            });
            Ok(())
        }
    }

    /// The store has every write up to `done`: move the active segment's
    /// checkpoint past their records. (Closed segments are deleted whole by
    /// [`Journal::confirm`].)
    pub(super) fn confirm(&mut self, done: u64) {
        let mut checkpoint = None;
        while let Some(mark) = self.marks.front().copied() {
            if mark.seq > done {
                break;
            }
            self.confirmed = mark.appended;
            if mark.segment == self.active.id() {
                checkpoint = Some(mark.end);
            }
            self.marks.pop_front();
        }
        if let Some(offset) = checkpoint {
            self.active.checkpoint(offset);
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
