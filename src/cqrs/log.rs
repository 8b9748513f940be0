//! The event log: every event a command emits, kept in the write store
//! under consecutive sequence numbers, written in the same batch as the
//! command's writes (so an event exists exactly when its write does). It
//! is the outbox too: a cursor says how far the log has been published.

use crate::codec::Codec;
use crate::store::{Store, Write};
use crate::{CodecDirection, Error, Result};

/// The write store: string keys, byte values (the write model's
/// documents, the event log, idempotency records, all in one store so
/// that one batch commits them together).
pub trait WriteStore: Store<Key = String, Value = Vec<u8>> {}

impl<S: Store<Key = String, Value = Vec<u8>>> WriteStore for S {}

pub(crate) fn encode<T: Codec>(part: &'static str, value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    value
        .encode(&mut out)
        .map_err(|e| Error::codec(CodecDirection::Encode, part, CodecFailure(e)))?;
    Ok(out)
}

pub(crate) fn decode<T: Codec>(part: &'static str, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| Error::codec(CodecDirection::Decode, part, CodecFailure(e)))
}

#[derive(Debug)]
struct CodecFailure(crate::codec::CodecError);

impl std::fmt::Display for CodecFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CodecFailure {}

/// Keys of the log in the write store.
#[derive(Debug, Clone)]
pub(crate) struct LogKeys {
    prefix: String,
}

impl LogKeys {
    pub(crate) fn new(name: &str) -> Self {
        LogKeys {
            prefix: format!("{name}/"),
        }
    }

    /// The event at `sequence` (zero-padded, so keys sort by sequence).
    pub(crate) fn event(&self, sequence: u64) -> String {
        format!("{}event/{sequence:020}", self.prefix)
    }

    /// The next sequence number to assign.
    pub(crate) fn next(&self) -> String {
        format!("{}next", self.prefix)
    }

    /// How far the log has been published.
    pub(crate) fn published(&self) -> String {
        format!("{}published", self.prefix)
    }

    /// The recorded result of the command with this idempotency key.
    pub(crate) fn handled(&self, key: &str) -> String {
        format!("{}handled/{key}", self.prefix)
    }
}

/// Reads a sequence counter (absent: 0).
pub(crate) async fn read_counter<S: WriteStore>(store: &S, key: &String) -> Result<u64> {
    match store.get(key).await? {
        Some(bytes) => decode::<u64>("value", &bytes),
        None => Ok(0),
    }
}

/// Reads events `from..to` of the log (one round trip).
pub(crate) async fn read_events<S: WriteStore, E: Codec>(
    store: &S,
    keys: &LogKeys,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, E)>> {
    let wanted: Vec<String> = (from..to).map(|sequence| keys.event(sequence)).collect();
    let found = store.get_many(&wanted).await?;
    (from..to)
        .zip(found)
        .map(|(sequence, bytes)| {
            let bytes = bytes.ok_or_else(|| {
                Error::unavailable(
                    "event log",
                    format!("event {sequence} is missing from the log"),
                )
            })?;
            Ok((sequence, decode::<E>("value", &bytes)?))
        })
        .collect()
}

/// The writes that append `events` at `first` onward and move the next
/// sequence number past them.
pub(crate) fn append<E: Codec>(
    keys: &LogKeys,
    first: u64,
    events: &[E],
) -> Result<Vec<Write<String, Vec<u8>>>> {
    let mut writes = Vec::with_capacity(events.len() + 1);
    for (offset, event) in events.iter().enumerate() {
        writes.push(Write::Put(
            keys.event(first + offset as u64),
            encode("value", event)?,
        ));
    }
    writes.push(Write::Put(
        keys.next(),
        encode("value", &(first + events.len() as u64))?,
    ));
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn appended_events_read_back_in_order_and_a_gap_is_an_error() {
        let store = MemoryStore::<String, Vec<u8>>::new();
        let keys = LogKeys::new("orders");
        store
            .write_batch(append(&keys, 0, &["a".to_string(), "b".to_string()]).unwrap())
            .await
            .unwrap();
        assert_eq!(read_counter(&store, &keys.next()).await.unwrap(), 2);
        let events: Vec<(u64, String)> = read_events(&store, &keys, 0, 2).await.unwrap();
        assert_eq!(events, vec![(0, "a".to_string()), (1, "b".to_string())]);
        assert!(read_events::<_, String>(&store, &keys, 1, 3).await.is_err());
        assert!(keys.event(2) < keys.event(10), "keys sort by sequence");
    }
}
