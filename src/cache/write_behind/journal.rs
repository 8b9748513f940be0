//! The write-behind journal: every acknowledged write is appended to an
//! on-disk log before the caller hears "done", and the log is replayed
//! into the store on the next start.
//!
//! The log is a series of segment files `journal-<n>.log` in one
//! directory. A record is `[payload length: u32][crc32 of payload: u32]
//! [payload]`, little-endian; the payload is `[kind: u8][key length: u32]
//! [key][value]` (kind 1 a put, 0 a delete). A segment is deleted once the
//! store has confirmed every write in it; the active segment is emptied
//! when the store has confirmed everything.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::codec::Codec;
use crate::store::Write;
use crate::{CodecDirection, Error, ErrorKind, Result};

const COMPONENT: &str = "WriteBehind journal";
/// A segment is closed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 4 << 20;
const HEADER: usize = 8;

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

/// Encodes a write as a journal payload, or says why it cannot be.
pub(super) type EncodeFn<K, V> = fn(&Write<K, V>, &mut Vec<u8>) -> Result<()>;
/// Decodes a journal payload back into a write.
pub(super) type DecodeFn<K, V> = fn(&[u8]) -> Result<Write<K, V>>;

#[derive(Debug)]
struct Segment {
    id: u64,
    /// The sequence of the last write in it (in this run's numbering).
    last_seq: u64,
}

#[derive(Debug)]
struct State {
    active: Arc<File>,
    active_id: u64,
    active_len: u64,
    /// Sequence of the last write in the active segment (0: none).
    active_last_seq: u64,
    closed: VecDeque<Segment>,
    /// Records queued for the next write to the file, in sequence order,
    /// and the sequence of the last of them.
    queue: Vec<u8>,
    queue_last_seq: u64,
    /// Bytes queued since open; bytes written to the files; bytes known
    /// durable.
    queued: u64,
    appended: u64,
    synced: u64,
    /// A writer is writing the queue out, or syncing.
    writing: bool,
    syncing: bool,
    /// A write to the file failed: the journal refuses further records.
    broken: Option<Error>,
}

/// What a replay found.
#[derive(Debug)]
pub(super) struct Replay<K, V> {
    pub(super) writes: Vec<Write<K, V>>,
    /// Records that failed their checksum or did not decode (a torn tail
    /// after a crash, or corruption): reported, not applied.
    pub(super) bad_records: u64,
}

#[derive(Debug)]
pub(super) struct Journal {
    dir: PathBuf,
    policy: SyncPolicy,
    state: Mutex<State>,
    /// Wakes writers waiting for a write or a sync of the file.
    progress: Notify,
}

fn io_error(operation: &'static str, error: io::Error) -> Error {
    Error::backend("journal", operation, error)
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("journal-{id:010}.log"))
}

/// The segments in `dir`, oldest first.
fn segment_ids(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", e))? {
        let name = entry.map_err(|e| io_error("list", e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name
            .strip_prefix("journal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|id| id.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Reads the good records of one segment; returns them, the length of the
/// good prefix, and whether a bad record ended it.
fn read_segment(path: &Path) -> Result<(Vec<Vec<u8>>, u64, bool)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error("read", e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            return Ok((records, at as u64, true));
        };
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return Ok((records, at as u64, true));
        };
        if crc32fast::hash(payload) != crc {
            return Ok((records, at as u64, true));
        }
        records.push(payload.to_vec());
        at += HEADER + len;
    }
    Ok((records, at as u64, false))
}

impl Journal {
    /// Opens (creating) the journal in `dir` and reads back what an earlier
    /// run left. A bad record ends its segment: the segment is cut there
    /// so that later appends do not follow garbage.
    pub(super) fn open<K, V>(
        dir: &Path,
        policy: SyncPolicy,
        decode: DecodeFn<K, V>,
    ) -> Result<(Journal, Replay<K, V>)> {
        fs::create_dir_all(dir).map_err(|e| io_error("create directory", e))?;
        let mut writes = Vec::new();
        let mut bad_records = 0;
        let ids = segment_ids(dir)?;
        for &id in &ids {
            let path = segment_path(dir, id);
            let (records, good_len, torn) = read_segment(&path)?;
            if torn {
                bad_records += 1;
                tracing::warn!(path = %path.display(), good_len, "journal: a torn or corrupted record was found and not applied");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(good_len))
                    .map_err(|e| io_error("cut a torn record", e))?;
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
        }
        // Earlier segments hold the replayed writes: they go once the store
        // has them, that is once the first `writes.len()` sequences are done.
        let replayed = writes.len() as u64;
        let closed = ids
            .iter()
            .map(|&id| Segment {
                id,
                last_seq: replayed,
            })
            .collect();
        let active_id = ids.last().map_or(0, |id| id + 1);
        let active = open_segment(dir, active_id)?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            policy,
            state: Mutex::new(State {
                active: Arc::new(active),
                active_id,
                active_len: 0,
                active_last_seq: 0,
                closed,
                queue: Vec::new(),
                queue_last_seq: 0,
                queued: 0,
                appended: 0,
                synced: 0,
                writing: false,
                syncing: false,
                broken: None,
            }),
            progress: Notify::new(),
        };
        Ok((
            journal,
            Replay {
                writes,
                bad_records,
            },
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn policy(&self) -> SyncPolicy {
        self.policy
    }

    /// Queues the records `frame` appends (the writes with sequences up
    /// to `last_seq`) for the file, encoding them straight into the queue;
    /// returns the ticket to wait on with [`written`](Self::written). If
    /// `frame` fails, nothing is queued. Called under the buffer's lock,
    /// so the log's order is the acknowledgement order.
    pub(super) fn enqueue(
        &self,
        last_seq: u64,
        frame: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<u64> {
        let mut state = self.lock();
        if let Some(error) = &state.broken {
            return Err(error.clone());
        }
        let start = state.queue.len();
        if let Err(error) = frame(&mut state.queue) {
            state.queue.truncate(start);
            return Err(error);
        }
        let added = (state.queue.len() - start) as u64;
        state.queue_last_seq = last_seq;
        state.queued += added;
        Ok(state.queued)
    }

    /// Waits until the records up to `ticket` are written to the file (in
    /// the OS: they survive a crash of the process). One writer writes the
    /// queue for everyone waiting (group append), so many concurrent
    /// writers share one system call.
    pub(super) async fn written(&self, ticket: u64) -> Result<()> {
        loop {
            let progress = self.progress.notified();
            let leads = {
                let mut state = self.lock();
                if let Some(error) = &state.broken {
                    return Err(error.clone());
                }
                if state.appended >= ticket {
                    return Ok(());
                }
                !std::mem::replace(&mut state.writing, true)
            };
            if !leads {
                progress.await;
                continue;
            }
            // This writer leads; if it is cancelled, the guard hands the
            // lead back.
            let guard = Lead::new(self, |state| state.writing = false);
            // Let the other writers that are ready queue their records
            // first, so that one system call carries them all.
            tokio::task::yield_now().await;
            let (rotated, file, bytes, last_seq) = {
                let mut state = self.lock();
                let rotated = if state.active_len >= SEGMENT_BYTES {
                    self.rotate(&mut state)
                } else {
                    Ok(())
                };
                let bytes = std::mem::take(&mut state.queue);
                (
                    rotated,
                    Arc::clone(&state.active),
                    bytes,
                    state.queue_last_seq,
                )
            };
            let result = rotated.and_then(|()| {
                (&*file)
                    .write_all(&bytes)
                    .map_err(|e| io_error("append", e))
            });
            {
                let mut state = self.lock();
                match &result {
                    Ok(()) => {
                        state.appended += bytes.len() as u64;
                        state.active_len += bytes.len() as u64;
                        state.active_last_seq = last_seq;
                    }
                    Err(error) => state.broken = Some(error.clone()),
                }
            }
            drop(guard);
            result?;
        }
    }

    /// Closes the full active segment (made durable first) and starts the
    /// next. The caller holds the state and is the only writer.
    fn rotate(&self, state: &mut State) -> Result<()> {
        state.active.sync_data().map_err(|e| io_error("sync", e))?;
        let next = state.active_id + 1;
        let file = open_segment(&self.dir, next)?;
        state.closed.push_back(Segment {
            id: state.active_id,
            last_seq: state.active_last_seq,
        });
        state.active = Arc::new(file);
        state.active_id = next;
        state.active_len = 0;
        state.synced = state.appended;
        Ok(())
    }

    /// Waits until the records up to `ticket` are written and, if the
    /// policy asks for that before an acknowledgement, on the disk. One
    /// writer syncs for everyone waiting (group commit).
    pub(super) async fn durable(&self, ticket: u64) -> Result<()> {
        self.written(ticket).await?;
        if self.policy != SyncPolicy::EveryWrite {
            return Ok(());
        }
        loop {
            let progress = self.progress.notified();
            let lead = {
                let mut state = self.lock();
                if state.synced >= ticket {
                    return Ok(());
                }
                if state.syncing {
                    None
                } else {
                    state.syncing = true;
                    Some((Arc::clone(&state.active), state.appended))
                }
            };
            match lead {
                None => progress.await,
                Some((file, upto)) => {
                    let guard = Lead::new(self, |state| state.syncing = false);
                    let result = tokio::task::spawn_blocking(move || file.sync_data())
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)))
                        .map_err(|e| io_error("sync", e));
                    if result.is_ok() {
                        let mut state = self.lock();
                        state.synced = state.synced.max(upto);
                    }
                    drop(guard);
                    result?;
                }
            }
        }
    }

    /// Forces everything appended to the disk (the `Interval` policy's
    /// tick).
    pub(super) async fn sync(&self) -> Result<()> {
        let (file, upto) = {
            let state = self.lock();
            (Arc::clone(&state.active), state.appended)
        };
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
            .map_err(|e| io_error("sync", e))?;
        let mut state = self.lock();
        state.synced = state.synced.max(upto);
        Ok(())
    }

    /// The store has every write up to `done`: drop the segments that hold
    /// nothing newer, and empty the active one if it is all done.
    pub(super) fn confirm(&self, done: u64) -> Result<()> {
        let mut state = self.lock();
        while state.closed.front().is_some_and(|s| s.last_seq <= done) {
            if let Some(segment) = state.closed.pop_front() {
                let path = segment_path(&self.dir, segment.id);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error("remove a segment", e)),
                }
            }
        }
        let idle = !state.writing && state.queue.is_empty();
        if idle && state.closed.is_empty() && state.active_len > 0 && state.active_last_seq <= done
        {
            state
                .active
                .set_len(0)
                .map_err(|e| io_error("empty the active segment", e))?;
            state.active_len = 0;
        }
        Ok(())
    }
}

/// A writer's lead of a write or a sync: when it ends (done, failed or
/// cancelled), the flag is cleared and the waiting writers are woken.
struct Lead<'a> {
    journal: &'a Journal,
    release: fn(&mut State),
}

impl<'a> Lead<'a> {
    fn new(journal: &'a Journal, release: fn(&mut State)) -> Self {
        Lead { journal, release }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        (self.release)(&mut self.journal.lock());
        self.journal.progress.notify_waiters();
    }
}

fn open_segment(dir: &Path, id: u64) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, id))
        .map_err(|e| io_error("open a segment", e))
}

/// Appends one record for `write` to `out`, encoded by `encode`.
pub(super) fn frame<K, V>(
    write: &Write<K, V>,
    encode: EncodeFn<K, V>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    if let Err(error) = encode(write, out) {
        out.truncate(start);
        return Err(error);
    }
    let payload = &out[start + HEADER..];
    let len = u32::try_from(payload.len())
        .map_err(|_| Error::config(COMPONENT, "a journal record must be under 4 GiB"))?;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Encodes a write as a journal payload through the key's and value's
/// codecs.
pub(super) fn encode<K: Codec, V: Codec>(write: &Write<K, V>, out: &mut Vec<u8>) -> Result<()> {
    let codec_error = |part| {
        move |source: crate::codec::CodecError| ErrorKind::Codec {
            direction: CodecDirection::Encode,
            part,
            source: source.into(),
        }
    };
    let (kind, key, value) = match write {
        Write::Put(key, value) => (1u8, key, Some(value)),
        Write::Delete(key) => (0u8, key, None),
    };
    out.push(kind);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    key.encode(out).map_err(codec_error("journal key"))?;
    let key_len = u32::try_from(out.len() - at - 4)
        .map_err(|_| Error::config(COMPONENT, "a journalled key must be under 4 GiB"))?;
    out[at..at + 4].copy_from_slice(&key_len.to_le_bytes());
    if let Some(value) = value {
        value.encode(out).map_err(codec_error("journal value"))?;
    }
    Ok(())
}

/// Decodes a journal payload written by [`encode`].
pub(super) fn decode<K: Codec, V: Codec>(payload: &[u8]) -> Result<Write<K, V>> {
    let malformed = || ErrorKind::Codec {
        direction: CodecDirection::Decode,
        part: "journal record",
        source: std::sync::Arc::new(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed journal record",
        )),
    };
    let codec_error = |part| {
        move |source: crate::codec::CodecError| ErrorKind::Codec {
            direction: CodecDirection::Decode,
            part,
            source: source.into(),
        }
    };
    let (&kind, rest) = payload.split_first().ok_or_else(malformed)?;
    let key_len = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(malformed)? as usize;
    let key_bytes = rest.get(4..4 + key_len).ok_or_else(malformed)?;
    let key = K::decode(key_bytes).map_err(codec_error("journal key"))?;
    let value_bytes = &rest[4 + key_len..];
    match kind {
        1 => Ok(Write::Put(
            key,
            V::decode(value_bytes).map_err(codec_error("journal value"))?,
        )),
        0 if value_bytes.is_empty() => Ok(Write::Delete(key)),
        _ => Err(malformed().into()),
    }
}
