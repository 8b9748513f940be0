//! Writes the store would not take: kept in memory (bounded) or, with a
//! journal, in a durable log next to it until the user takes them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::journal::{self, DecodeFn, EncodeFn};
use crate::store::Write;
use crate::{Error, Result};

/// The dead-letter log's file name, in the journal's directory.
pub(super) const FILE: &str = "dead-letters.log";
/// Where the log is rewritten before it is renamed over the old one.
pub(super) const REWRITE: &str = "dead-letters.log.tmp";

/// Writes that failed every attempt, with the last error: handed to the
/// dead-letter destination (by default kept by the [`WriteBehind`] for
/// [`take_dead_letters`]), never dropped.
///
/// [`WriteBehind`]: super::WriteBehind
/// [`take_dead_letters`]: super::WriteBehind::take_dead_letters
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter<K, V> {
    /// The writes, in the order they were acknowledged (one per key: the
    /// latest of that key at the time).
    pub writes: Vec<Write<K, V>>,
    /// The error of the last attempt. A letter read back from the durable
    /// log after a restart carries the original error's text (as the
    /// source of an [`ErrorKind::Refused`](crate::ErrorKind::Refused) if
    /// it was not transient, of an [`ErrorKind::Backend`](crate::ErrorKind::Backend) if it was).
    pub error: Error,
    /// How many times the writes were tried.
    pub attempts: u32,
}

/// Where dead letters go: a function the user supplies.
pub(super) type DeadLetterSink<K, V> = Box<dyn Fn(DeadLetter<K, V>) + Send + Sync>;

/// The dead letters of one layer: where they go, and how many may wait.
pub(super) struct DeadLetters<K, V> {
    /// Letters waiting to be taken, oldest first (the durable log's
    /// contents, when there is one).
    kept: Mutex<Kept<K, V>>,
    /// The most writes kept at once.
    limit: usize,
    /// Told of every letter (after it is durable, with a journal).
    sink: Option<DeadLetterSink<K, V>>,
}

struct Kept<K, V> {
    letters: Vec<DeadLetter<K, V>>,
    /// Writes in `letters`.
    writes: usize,
    log: Option<Log<K, V>>,
}

/// The durable log: one checksummed record per letter, appended and
/// forced to the disk before the journal lets go of the letter's writes.
struct Log<K, V> {
    path: PathBuf,
    file: File,
    encode: EncodeFn<K, V>,
}

/// Why a letter could not be handed on; the flusher keeps its writes.
#[derive(Debug)]
pub(super) enum Refusal {
    /// As many writes as the limit allows are kept already.
    Full,
    /// The durable log could not take it.
    Log(Error),
}

impl<K: Clone, V: Clone> DeadLetters<K, V> {
    /// Dead letters kept in memory (or handed to `sink`), at most `limit`
    /// writes.
    pub(super) fn in_memory(limit: usize, sink: Option<DeadLetterSink<K, V>>) -> Self {
        DeadLetters {
            kept: Mutex::new(Kept {
                letters: Vec::new(),
                writes: 0,
                log: None,
            }),
            limit,
            sink,
        }
    }

    /// Dead letters kept durably in `dir` (the journal's directory), with
    /// the letters an earlier run left there, and how many of the log's
    /// records were damaged (reported, not returned).
    pub(super) fn durable(
        dir: &Path,
        limit: usize,
        sink: Option<DeadLetterSink<K, V>>,
        encode: EncodeFn<K, V>,
        decode: DecodeFn<K, V>,
    ) -> Result<(Self, u64)> {
        let path = dir.join(FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error("read the dead-letter log", e)),
        };
        let parsed = journal::parse(&bytes);
        let mut bad = parsed.damaged.len() as u64;
        let mut letters = Vec::new();
        let mut good = Vec::new();
        for payload in parsed.payloads {
            match decode_letter(payload, decode) {
                Ok(letter) => {
                    journal::frame_with(&mut good, |out| {
                        out.extend_from_slice(payload);
                        Ok(())
                    })?;
                    letters.push(letter);
                }
                Err(error) => {
                    bad += 1;
                    tracing::warn!(%error, path = %path.display(), "dead-letter log: a record did not decode");
                }
            }
        }
        if bad > 0 {
            tracing::warn!(path = %path.display(), damaged = bad, "dead-letter log: damaged records skipped");
        }
        // Rewrite the log with the good records only, so that a torn tail
        // (a crash mid-append, before the letter counted) never sits in
        // front of the next record.
        if good.len() != bytes.len() {
            replace_file(&path, &good).map_err(|e| io_error("rewrite the dead-letter log", e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("open the dead-letter log", e))?;
        let writes = letters
            .iter()
            .map(|l: &DeadLetter<K, V>| l.writes.len())
            .sum();
        let kept = Kept {
            letters,
            writes,
            log: Some(Log { path, file, encode }),
        };
        Ok((
            DeadLetters {
                kept: Mutex::new(kept),
                limit,
                sink,
            },
            bad,
        ))
    }

    fn kept(&self) -> MutexGuard<'_, Kept<K, V>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `letter`: into the durable log (forced to the disk) when
    /// there is one, else to the sink or into memory. `force` ignores the
    /// limit (a layer shutting down without a journal has nowhere else to
    /// put it). Given back when it cannot be taken.
    pub(super) fn accept(
        &self,
        letter: DeadLetter<K, V>,
        force: bool,
    ) -> std::result::Result<(), (DeadLetter<K, V>, Refusal)> {
        let mut kept = self.kept();
        let count = letter.writes.len();
        let keeps = kept.log.is_some() || self.sink.is_none();
        if keeps && !force && kept.writes + count > self.limit {
            return Err((letter, Refusal::Full));
        }
        if let Some(log) = &mut kept.log {
            if let Err(error) = log.append(&letter) {
                return Err((letter, Refusal::Log(error)));
            }
        }
        if keeps {
            kept.writes += count;
            kept.letters.push(letter.clone());
        }
        drop(kept);
        if let Some(sink) = &self.sink {
            sink(letter);
        }
        Ok(())
    }

    /// Writes kept now.
    pub(super) fn len(&self) -> usize {
        self.kept().writes
    }

    /// Takes the oldest `count` kept letters (all of them with `None`);
    /// the durable log keeps the rest (rewritten whole, then renamed over
    /// the old one, so a crash leaves the old log or the new).
    pub(super) fn take(&self, count: Option<usize>) -> Result<Vec<DeadLetter<K, V>>> {
        let mut kept = self.kept();
        let kept = &mut *kept;
        let count = count.unwrap_or(kept.letters.len()).min(kept.letters.len());
        if let Some(log) = &mut kept.log {
            log.rewrite(&kept.letters[count..])?;
        }
        let taken: Vec<_> = kept.letters.drain(..count).collect();
        kept.writes -= taken.iter().map(|l| l.writes.len()).sum::<usize>();
        Ok(taken)
    }

    /// A copy of the kept letters.
    pub(super) fn peek(&self) -> Vec<DeadLetter<K, V>> {
        self.kept().letters.clone()
    }
}

impl<K, V> Log<K, V> {
    fn append(&mut self, letter: &DeadLetter<K, V>) -> Result<()> {
        let mut record = Vec::new();
        journal::frame_with(&mut record, |out| encode_letter(letter, self.encode, out))?;
        // The rare path: a blocking append and sync on the flusher task is
        // simpler than handing the letter to another thread, and the
        // flusher has nothing else to do while a letter is being kept.
        (|| {
            self.file.write_all(&record)?;
            self.file.sync_data()
        })()
        .map_err(|e| io_error("append to the dead-letter log", e))
    }

    /// Replaces the log's contents with `letters`.
    fn rewrite(&mut self, letters: &[DeadLetter<K, V>]) -> Result<()> {
        let mut bytes = Vec::new();
        for letter in letters {
            journal::frame_with(&mut bytes, |out| encode_letter(letter, self.encode, out))?;
        }
        let replaced = replace_file(&self.path, &bytes)
            .and_then(|()| OpenOptions::new().append(true).open(&self.path));
        match replaced {
            Ok(file) => {
                self.file = file;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "dead-letter log: could not be rewritten");
                Err(io_error("rewrite the dead-letter log", e))
            }
        }
    }
}

fn io_error(operation: &'static str, error: io::Error) -> Error {
    Error::backend("write-behind dead letters", operation, error)
}

/// Replaces the file at `path` with `bytes` so that a crash leaves the
/// old contents or the new, never a part: written to a temporary file,
/// forced to the disk, renamed over it, and the rename forced too.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = path.with_file_name(REWRITE);
    let mut file = File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `[attempts: u32][transient: u8][error length: u32][error text]
/// [writes: u32]` then each write as `[length: u32][journal payload]`.
fn encode_letter<K, V>(
    letter: &DeadLetter<K, V>,
    encode: EncodeFn<K, V>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let text = letter.error.to_string();
    out.extend_from_slice(&letter.attempts.to_le_bytes());
    out.push(u8::from(letter.error.is_transient()));
    out.extend_from_slice(&len32(text.len())?.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&len32(letter.writes.len())?.to_le_bytes());
    for write in &letter.writes {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode(write, out)?;
        let len = len32(out.len() - at - 4)?;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}

fn len32(len: usize) -> Result<u32> {
    u32::try_from(len)
        .map_err(|_| Error::config(super::COMPONENT, "a dead letter must be under 4 GiB"))
}

/// A dead letter's error, read back from the durable log: its text.
#[derive(Debug)]
struct RecordedError(String);

impl std::fmt::Display for RecordedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RecordedError {}

fn decode_letter<K, V>(payload: &[u8], decode: DecodeFn<K, V>) -> Result<DeadLetter<K, V>> {
    let malformed = || {
        Error::codec(
            crate::CodecDirection::Decode,
            "dead letter",
            io::Error::new(io::ErrorKind::InvalidData, "malformed dead-letter record"),
        )
    };
    let mut rest = payload;
    let mut take = |n: usize| -> Result<&[u8]> {
        let (head, tail) = rest.split_at_checked(n).ok_or_else(malformed)?;
        rest = tail;
        Ok(head)
    };
    let u32_at = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().unwrap_or_default());
    let attempts = u32_at(take(4)?);
    let transient = take(1)?[0] != 0;
    let text_len = u32_at(take(4)?) as usize;
    let text = String::from_utf8_lossy(take(text_len)?).into_owned();
    let count = u32_at(take(4)?) as usize;
    let mut writes = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let len = u32_at(take(4)?) as usize;
        writes.push(decode(take(len)?)?);
    }
    if !rest.is_empty() {
        return Err(malformed());
    }
    let source = RecordedError(text);
    let error = if transient {
        Error::backend(
            "write-behind dead letters",
            "a write kept from an earlier run",
            source,
        )
    } else {
        Error::refused(
            "write-behind dead letters",
            "a write kept from an earlier run",
            source,
        )
    };
    Ok(DeadLetter {
        writes,
        error,
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::write_behind::journal::{decode, encode};

    fn letter(key: u64, transient: bool) -> DeadLetter<u64, String> {
        let error = if transient {
            Error::unavailable("test", "down")
        } else {
            Error::refused("test", "put", io::Error::other("too big"))
        };
        DeadLetter {
            writes: vec![Write::Put(key, format!("v{key}")), Write::Delete(key + 1)],
            error,
            attempts: 7,
        }
    }

    #[test]
    fn durable_letters_are_read_back_after_a_restart_until_taken() {
        let dir = tempfile::tempdir().unwrap();
        let open = || DeadLetters::<u64, String>::durable(dir.path(), 10, None, encode, decode);
        let (letters, bad) = open().unwrap();
        assert_eq!(bad, 0);
        letters.accept(letter(1, true), false).unwrap();
        letters.accept(letter(3, false), false).unwrap();
        drop(letters);
        let (letters, bad) = open().unwrap();
        assert_eq!(bad, 0);
        let back = letters.peek();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].writes, letter(1, true).writes);
        assert_eq!(back[0].attempts, 7);
        assert!(back[0].error.is_transient());
        assert!(!back[1].error.is_transient());
        assert!(
            back[1].error.to_string().contains("too big"),
            "{}",
            back[1].error
        );
        assert_eq!(letters.len(), 4);
        assert_eq!(letters.take(Some(1)).unwrap().len(), 1);
        drop(letters);
        let (letters, _) = open().unwrap();
        assert_eq!(letters.peek().len(), 1, "the letter not taken stays");
        assert_eq!(letters.take(None).unwrap().len(), 1);
        drop(letters);
        let (letters, _) = open().unwrap();
        assert!(
            letters.peek().is_empty(),
            "taken letters are gone from the log"
        );
    }

    #[test]
    fn a_full_destination_gives_the_letter_back() {
        let letters = DeadLetters::<u64, String>::in_memory(3, None);
        letters.accept(letter(1, true), false).unwrap();
        let (back, why) = letters.accept(letter(3, true), false).unwrap_err();
        assert!(matches!(why, Refusal::Full));
        assert_eq!(back.writes.len(), 2);
        letters.accept(back, true).unwrap();
        assert_eq!(letters.len(), 4, "forced past the limit");
    }

    #[test]
    fn the_limit_counts_writes_and_admits_exactly_up_to_it() {
        let single = |key: u64| DeadLetter {
            writes: vec![Write::Put(key, "v".to_string())],
            error: Error::unavailable("test", "down"),
            attempts: 1,
        };
        let letters = DeadLetters::<u64, String>::in_memory(2, None);
        letters.accept(single(1), false).unwrap();
        letters.accept(single(2), false).unwrap();
        assert_eq!(letters.len(), 2, "up to the limit");
        assert!(matches!(
            letters.accept(single(3), false),
            Err((_, Refusal::Full))
        ));
        assert_eq!(letters.take(Some(1)).unwrap().len(), 1);
        letters.accept(single(3), false).unwrap();
    }

    #[test]
    fn a_record_that_does_not_decode_is_counted_and_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let open = || DeadLetters::<u64, String>::durable(dir.path(), 10, None, encode, decode);
        let (letters, _) = open().unwrap();
        letters.accept(letter(1, true), false).unwrap();
        drop(letters);
        // A whole record, checksum and all, whose payload is no letter.
        let mut bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        journal::frame_with(&mut bytes, |out| {
            out.extend_from_slice(b"not a dead letter");
            Ok(())
        })
        .unwrap();
        std::fs::write(dir.path().join(FILE), &bytes).unwrap();
        let (letters, bad) = open().unwrap();
        assert_eq!((bad, letters.peek().len()), (1, 1));
    }

    #[test]
    fn a_torn_tail_of_the_log_is_reported_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let open = || DeadLetters::<u64, String>::durable(dir.path(), 10, None, encode, decode);
        let (letters, _) = open().unwrap();
        letters.accept(letter(1, true), false).unwrap();
        drop(letters);
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&path, &bytes).unwrap();
        let (letters, bad) = open().unwrap();
        assert_eq!((bad, letters.peek().len()), (1, 1));
        letters.accept(letter(5, true), false).unwrap();
        drop(letters);
        let (letters, bad) = open().unwrap();
        assert_eq!(
            (bad, letters.peek().len()),
            (0, 2),
            "appends after the cut read back"
        );
    }
}
