//! One segment file of the journal, mapped into memory while it is the
//! one being appended to.
//!
//! A segment is `[magic: 8 bytes][checkpoint: u64]` followed by records
//! (see [`record`](super::record)) and zeros to its end. The checkpoint is
//! the offset of the first record the store has not confirmed: a replay
//! starts there. The file is written out to its full size (real blocks,
//! not a sparse file) before it is mapped, so a full disk is an error when
//! a segment is created, never a fault on a later store into the mapping.
//!
//! Why a mapping: a record copied into a shared file mapping is in the
//! operating system's page cache at once, so it survives a crash of the
//! process without a system call per acknowledged write. Appending with
//! `write(2)` instead ran a single writer at 0.25× the unjournalled
//! throughput (`benches/write_behind.rs`); with the mapping, and the copy
//! made under the buffer's lock so that it overlaps the buffering, it runs
//! at about 0.7×.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use super::io_error;
use super::record::{self, Parsed};
use crate::Result;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"skjrnl01";
/// Where the first record starts.
pub(super) const START: usize = 16;
/// The size of a segment, unless one record needs more.
const SEGMENT_BYTES: usize = 4 << 20;

pub(super) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("journal-{id:010}.log"))
}

/// The segments in `dir`, oldest first.
pub(super) fn ids(dir: &Path) -> Result<Vec<u64>> {
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

/// The records of a segment left by an earlier run that the store had not
/// confirmed, as their payloads, and whether a bad record ended them.
pub(super) fn read(path: &Path) -> Result<(Vec<Vec<u8>>, bool)> {
    let bytes = fs::read(path).map_err(|e| io_error("read", e))?;
    if bytes.is_empty() {
        // Created, and the process died before it was written out.
        return Ok((Vec::new(), false));
    }
    if bytes.len() < START || &bytes[..8] != MAGIC {
        return Ok((Vec::new(), true));
    }
    let checkpoint = u64::from_le_bytes(bytes[8..START].try_into().unwrap_or_default());
    // A checkpoint out of range is damage: replay everything rather than
    // skip an unconfirmed write.
    let from = usize::try_from(checkpoint)
        .ok()
        .filter(|&at| (START..=bytes.len()).contains(&at))
        .unwrap_or(START);
    let Parsed { payloads, torn } = record::parse(&bytes[from..]);
    Ok((payloads.into_iter().map(<[u8]>::to_vec).collect(), torn))
}

/// The segment being appended to.
#[derive(Debug)]
pub(super) struct Active {
    id: u64,
    file: Arc<File>,
    map: MmapMut,
    /// Where the next record goes.
    end: usize,
    /// The sequence of the last write in it (0: none).
    last_seq: u64,
}

impl Active {
    /// Creates segment `id` in `dir`, large enough for `at_least` bytes of
    /// records, and maps it.
    pub(super) fn create(dir: &Path, id: u64, at_least: usize) -> Result<Active> {
        let size = (START + at_least).max(SEGMENT_BYTES).next_multiple_of(4096);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path(dir, id))
            .map_err(|e| io_error("create a segment", e))?;
        write_out(&mut file, size).map_err(|e| io_error("allocate a segment", e))?;
        let map = map(&file).map_err(|e| io_error("map a segment", e))?;
        Ok(Active {
            id,
            file: Arc::new(file),
            map,
            end: START,
            last_seq: 0,
        })
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(super) fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub(super) fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether no record was ever appended.
    pub(super) fn is_empty(&self) -> bool {
        self.end == START
    }

    /// Whether `bytes` more fit.
    pub(super) fn fits(&self, bytes: usize) -> bool {
        self.end + bytes <= self.map.len()
    }

    /// Copies `records` (the writes up to `last_seq`) in after the last
    /// ones; returns where they end. The caller checked that they fit.
    pub(super) fn append(&mut self, records: &[u8], last_seq: u64) -> usize {
        let end = self.end + records.len();
        self.map[self.end..end].copy_from_slice(records);
        self.end = end;
        self.last_seq = last_seq;
        end
    }

    /// Moves the checkpoint: the records before `offset` are confirmed
    /// and will not be replayed. One aligned eight-byte store, so a crash
    /// leaves the old checkpoint or the new one.
    pub(super) fn checkpoint(&mut self, offset: usize) {
        self.map[8..START].copy_from_slice(&(offset as u64).to_le_bytes());
    }
}

/// Writes the header and zeros up to `size`.
fn write_out(file: &mut File, size: usize) -> io::Result<()> {
    const CHUNK: usize = 64 << 10;
    let mut chunk = vec![0u8; CHUNK];
    chunk[..8].copy_from_slice(MAGIC);
    chunk[8..START].copy_from_slice(&(START as u64).to_le_bytes());
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK);
        file.write_all(&chunk[..n])?;
        if left == size {
            chunk[..START].fill(0);
        }
        left -= n;
    }
    Ok(())
}

/// Maps a segment this journal created and wrote out.
#[allow(unsafe_code)]
fn map(file: &File) -> io::Result<MmapMut> {
    // SAFETY: a mapping is unsound if the file changes size or contents
    // behind it. This file was created here with `create_new`, written out
    // to its full size before mapping, and is never resized; scalekit
    // writes it only through this mapping, under the journal's lock, and
    // removes it only after the mapping is gone. The journal's directory
    // belongs to one `WriteBehind` (documented on
    // `WriteBehindBuilder::journal`); other programs must not modify it.
    // Populated: the pages are faulted in now, not one fault per page on
    // the acknowledgement path.
    unsafe { MmapOptions::new().populate().map_mut(file) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::write_behind::journal::record::{encode, frame};
    use crate::store::Write;

    #[test]
    fn appended_records_read_back_from_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut active = Active::create(dir.path(), 7, 0).unwrap();
        assert!(active.is_empty());
        let mut bytes = Vec::new();
        for (seq, key) in [(1, 10u64), (2, 20), (3, 30)] {
            bytes.clear();
            frame(&Write::Put(key, "v".to_string()), encode, &mut bytes).unwrap();
            let end = active.append(&bytes, seq);
            if seq == 1 {
                active.checkpoint(end);
            }
        }
        assert_eq!(active.last_seq(), 3);
        let (payloads, torn) = read(&path(dir.path(), 7)).unwrap();
        assert!(!torn);
        assert_eq!(payloads.len(), 2, "the confirmed first record is skipped");
        assert_eq!(
            fs::metadata(path(dir.path(), 7)).unwrap().len(),
            SEGMENT_BYTES as u64
        );
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_a_segment_of_its_own_size() {
        let dir = tempfile::tempdir().unwrap();
        let active = Active::create(dir.path(), 0, SEGMENT_BYTES + 1).unwrap();
        assert!(active.fits(SEGMENT_BYTES + 1));
        assert!(
            Active::create(dir.path(), 0, 0).is_err(),
            "never reuses a file"
        );
    }

    #[test]
    fn a_foreign_or_truncated_file_is_reported_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("foreign");
        fs::write(&foreign, b"not a journal segment at all").unwrap();
        assert_eq!(read(&foreign).unwrap(), (Vec::new(), true));
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert_eq!(read(&empty).unwrap(), (Vec::new(), false));
    }
}
