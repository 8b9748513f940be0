//! The events a projection set aside: recorded in its checkpoint store
//! before the checkpoint moves past them, so a restart still knows them.
//!
//! The record is one value per projection, `projection/<name>/set-aside`:
//! for each event, `[sequence: u64][attempts: u32][error length: u32]
//! [error text]`, little-endian. The events themselves stay in the log;
//! the record names them.

use std::sync::Arc;

use crate::events::HandlerError;
use crate::{Error, Result};

use super::command::Recorded;

/// An event the projection could not apply after its retries: set aside
/// (durably, in the projection's checkpoint store, before the checkpoint
/// passed it), and the projection went on. Listed by
/// [`Projection::dead_events`](super::Projection::dead_events), also
/// after a restart, until
/// [`replay_dead_events`](super::Projection::replay_dead_events) applies
/// it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadEvent<E> {
    /// The event.
    pub event: Recorded<E>,
    /// The last error (after a restart, its text).
    pub error: Arc<HandlerError>,
    /// How many times applying it was tried.
    pub attempts: u32,
}

pub(super) fn key(name: &str) -> String {
    format!("projection/{name}/set-aside")
}

/// One entry of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) sequence: u64,
    pub(super) attempts: u32,
    pub(super) error: String,
}

pub(super) fn encode<E>(events: &[DeadEvent<E>]) -> Vec<u8> {
    let mut out = Vec::new();
    for dead in events {
        let text = dead.error.to_string();
        out.extend_from_slice(&dead.event.sequence.to_le_bytes());
        out.extend_from_slice(&dead.attempts.to_le_bytes());
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out
}

pub(super) fn decode(bytes: &[u8]) -> Result<Vec<Entry>> {
    let malformed = || {
        Error::codec(
            crate::CodecDirection::Decode,
            "set-aside record",
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "malformed set-aside record",
            ),
        )
    };
    let mut entries = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (head, tail) = rest.split_at_checked(16).ok_or_else(malformed)?;
        let sequence = u64::from_le_bytes(head[..8].try_into().map_err(|_| malformed())?);
        let attempts = u32::from_le_bytes(head[8..12].try_into().map_err(|_| malformed())?);
        let len = u32::from_le_bytes(head[12..16].try_into().map_err(|_| malformed())?) as usize;
        let (text, tail) = tail.split_at_checked(len).ok_or_else(malformed)?;
        entries.push(Entry {
            sequence,
            attempts,
            error: String::from_utf8_lossy(text).into_owned(),
        });
        rest = tail;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_back_and_damage_is_a_codec_error() {
        let dead = |sequence, error: &str| DeadEvent {
            event: Recorded {
                sequence,
                event: "e".to_string(),
            },
            error: Arc::new(HandlerError::from(error)),
            attempts: 4,
        };
        let bytes = encode(&[dead(3, "cannot apply"), dead(9, "")]);
        let entries = decode(&bytes).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry {
                    sequence: 3,
                    attempts: 4,
                    error: "cannot apply".into()
                },
                Entry {
                    sequence: 9,
                    attempts: 4,
                    error: String::new()
                },
            ]
        );
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&bytes[..5]).is_err());
    }
}
