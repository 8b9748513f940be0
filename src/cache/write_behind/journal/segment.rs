//! One segment file of the journal, mapped into memory while it is the
//! one being appended to.
//!
//! A segment is `[magic: 8 bytes][checkpoint: u32][its crc32: u32]`
//! followed by records (see [`record`](super::record)) and zeros to its
//! end. The checkpoint is the offset of the first record the store has not
//! confirmed: a replay starts there. Its checksum makes a damaged
//! checkpoint visible: the replay then starts at the first record instead
//! (replaying confirmed writes again, in order, is safe; skipping
//! unconfirmed ones is not). The file is written out to its full size
//! (real blocks, not a sparse file) before it is mapped, so a full disk is
//! an error when a segment is created, never a fault on a later store into
//! the mapping; a segment that could not be written out is removed, so the
//! next try starts clean.
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
use super::record;
use crate::Result;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"skjrnl02";
/// The first bytes of a segment of the first format, whose checkpoint is
/// a plain `u64` (still read, never written).
const MAGIC_V1: &[u8; 8] = b"skjrnl01";
/// Where the first record starts.
pub(super) const START: usize = 16;
/// The size of a segment, unless one record needs more.
const SEGMENT_BYTES: usize = 4 << 20;

/// The name of segment `id`.
fn name(id: u64) -> String {
    format!("journal-{id:010}.log")
}

pub(super) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(name(id))
}

/// The segments in `dir`, oldest first. Files the journal did not name
/// (`journal-7.log`, a backup, an editor's swap file) are ignored with a
/// warning: they are not replayed, and they do not stop the start.
pub(super) fn ids(dir: &Path) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", e))? {
        let name = entry.map_err(|e| io_error("list", e))?.file_name();
        let name = name.to_string_lossy();
        let id = name
            .strip_prefix("journal-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|id| id.parse::<u64>().ok())
            .filter(|&id| self::name(id) == name);
        match id {
            Some(id) => ids.push(id),
            None if super::OWN_FILES.contains(&name.as_ref()) => {}
            None => tracing::warn!(
                dir = %dir.display(),
                file = %name,
                "journal: a file the journal did not write is in its directory; ignored"
            ),
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// What [`read`] found in a segment left by an earlier run.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Segment {
    /// The payloads of the records the store had not confirmed.
    pub(super) payloads: Vec<Vec<u8>>,
    /// What is damaged in it: which bytes, and how.
    pub(super) damage: Vec<(std::ops::Range<u64>, &'static str)>,
}

/// The checkpoint slot's bytes for `offset`: the offset and its crc32.
fn checkpoint_bytes(offset: usize) -> [u8; 8] {
    let offset = (offset as u32).to_le_bytes();
    let crc = crc32fast::hash(&offset).to_le_bytes();
    [
        offset[0], offset[1], offset[2], offset[3], crc[0], crc[1], crc[2], crc[3],
    ]
}

/// Reads the records of a segment left by an earlier run that the store
/// had not confirmed, and what is damaged in it.
pub(super) fn read(path: &Path) -> Result<Segment> {
    let bytes = fs::read(path).map_err(|e| io_error("read", e))?;
    let mut segment = Segment::default();
    if bytes.is_empty() {
        // Created, and the process died before it was written out.
        return Ok(segment);
    }
    let whole = 0..bytes.len() as u64;
    if bytes.len() < START {
        segment
            .damage
            .push((whole, "shorter than a segment's header"));
        return Ok(segment);
    }
    let slot: [u8; 8] = bytes[8..START].try_into().unwrap_or_default();
    let checkpoint = match &bytes[..8] {
        magic if magic == MAGIC => {
            let (offset, crc) = slot.split_at(4);
            if crc32fast::hash(offset) == u32::from_le_bytes(crc.try_into().unwrap_or_default()) {
                Some(u32::from_le_bytes(offset.try_into().unwrap_or_default()) as u64)
            } else {
                None
            }
        }
        magic if magic == MAGIC_V1 => Some(u64::from_le_bytes(slot)),
        _ => {
            segment
                .damage
                .push((whole, "not a journal segment (bad magic)"));
            return Ok(segment);
        }
    };
    // A checkpoint that fails its checksum or points out of range is
    // damage: replay everything rather than skip an unconfirmed write.
    let from = match checkpoint
        .and_then(|at| usize::try_from(at).ok())
        .filter(|&at| (START..=bytes.len()).contains(&at))
    {
        Some(at) => at,
        None => {
            segment.damage.push((
                8..START as u64,
                "damaged checkpoint: the segment is replayed from its first record",
            ));
            START
        }
    };
    let parsed = record::parse(&bytes[from..]);
    segment.payloads = parsed.payloads.into_iter().map(<[u8]>::to_vec).collect();
    segment
        .damage
        .extend(parsed.damaged.into_iter().map(|range| {
            (
                (from + range.start) as u64..(from + range.end) as u64,
                "no readable record (torn, corrupted or zeroed): its records are skipped",
            )
        }));
    Ok(segment)
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
        if u32::try_from(size).is_err() {
            return Err(crate::Error::config(
                super::COMPONENT,
                "a journalled write must be under 4 GiB",
            ));
        }
        let path = path(dir, id);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("create a segment", e))?;
        let mapped = write_out(&mut file, size)
            .map_err(|e| io_error("allocate a segment", e))
            .and_then(|()| map(&file).map_err(|e| io_error("map a segment", e)));
        let map = match mapped {
            Ok(map) => map,
            Err(error) => {
                // A full disk: remove the partial file, so that once there
                // is room again the same segment can be made.
                drop(file);
                let _ = fs::remove_file(&path);
                return Err(error);
            }
        };
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
    /// and will not be replayed. One aligned eight-byte store (the offset
    /// and its checksum), so a crash leaves the old checkpoint or the new
    /// one, and damage to it is seen.
    pub(super) fn checkpoint(&mut self, offset: usize) {
        self.map[8..START].copy_from_slice(&checkpoint_bytes(offset));
    }
}

/// Writes the header and zeros up to `size`.
fn write_out(file: &mut File, size: usize) -> io::Result<()> {
    const CHUNK: usize = 64 << 10;
    let mut chunk = vec![0u8; CHUNK];
    chunk[..8].copy_from_slice(MAGIC);
    chunk[8..START].copy_from_slice(&checkpoint_bytes(START));
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
        let segment = read(&path(dir.path(), 7)).unwrap();
        assert_eq!(segment.damage, vec![]);
        assert_eq!(
            segment.payloads.len(),
            2,
            "the confirmed first record is skipped"
        );
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
        let segment = read(&foreign).unwrap();
        assert!(segment.payloads.is_empty());
        assert_eq!(segment.damage.len(), 1);
        let empty = dir.path().join("empty");
        fs::write(&empty, b"").unwrap();
        assert_eq!(read(&empty).unwrap(), Segment::default());
    }

    #[test]
    fn a_damaged_checkpoint_is_reported_and_the_segment_replayed_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut active = Active::create(dir.path(), 1, 0).unwrap();
        let mut bytes = Vec::new();
        for (seq, key) in [(1, 10u64), (2, 20)] {
            bytes.clear();
            frame(&Write::Put(key, "v".to_string()), encode, &mut bytes).unwrap();
            let end = active.append(&bytes, seq);
            if seq == 2 {
                active.checkpoint(end); // both confirmed
            }
        }
        drop(active);
        let file = path(dir.path(), 1);
        assert!(read(&file).unwrap().payloads.is_empty());
        let mut raw = fs::read(&file).unwrap();
        raw[9] ^= 0x01; // one flipped bit in the checkpoint's offset
        fs::write(&file, &raw).unwrap();
        let segment = read(&file).unwrap();
        assert_eq!(segment.payloads.len(), 2, "replayed from the first record");
        assert_eq!(segment.damage.len(), 1);
        assert_eq!(segment.damage[0].0, 8..START as u64);
    }

    #[test]
    fn only_names_the_journal_writes_are_segments() {
        let dir = tempfile::tempdir().unwrap();
        Active::create(dir.path(), 3, 0).unwrap();
        for stray in [
            "journal-7.log",
            "journal-x.log",
            "journal-0000000003.log.bak",
            "notes.txt",
        ] {
            fs::write(dir.path().join(stray), b"stray").unwrap();
        }
        assert_eq!(ids(dir.path()).unwrap(), vec![3]);
    }
}
