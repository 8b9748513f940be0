//! What a topic carries: an event with its key, offset and timestamp.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// The key that orders events: events of one key are handled one after
/// another, in publish order, within each subscription group.
///
/// Made from strings, bytes or integers; two keys are the same key when
/// their bytes are equal.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey(Arc<[u8]>);

impl EventKey {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) => write!(f, "EventKey({text:?})"),
            Err(_) => write!(f, "EventKey({:02x?})", &self.0[..]),
        }
    }
}

impl From<&str> for EventKey {
    fn from(key: &str) -> Self {
        EventKey(Arc::from(key.as_bytes()))
    }
}

impl From<String> for EventKey {
    fn from(key: String) -> Self {
        EventKey(Arc::from(key.into_bytes()))
    }
}

impl From<&[u8]> for EventKey {
    fn from(key: &[u8]) -> Self {
        EventKey(Arc::from(key))
    }
}

impl From<Vec<u8>> for EventKey {
    fn from(key: Vec<u8>) -> Self {
        EventKey(Arc::from(key))
    }
}

impl From<u64> for EventKey {
    fn from(key: u64) -> Self {
        EventKey(Arc::from(key.to_be_bytes().as_slice()))
    }
}

/// One published event. Each subscription group gets its own copy (the
/// payload is cloned per group and per handler attempt, as
/// `tokio::sync::broadcast` clones per receiver): wrap a large payload in
/// an `Arc` to share it instead.
#[derive(Clone)]
pub struct Event<E> {
    payload: E,
    key: Option<EventKey>,
    offset: u64,
    /// Nanoseconds since the Unix epoch: a plain word, where a
    /// `SystemTime` (seconds and a 32-bit fraction, with padding) made
    /// every copy of an event stall on a partial store.
    published_nanos: u64,
}

impl<E> Event<E> {
    pub(crate) fn new(
        payload: E,
        key: Option<EventKey>,
        offset: u64,
        timestamp: SystemTime,
    ) -> Self {
        let published_nanos = timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        Event {
            payload,
            key,
            offset,
            published_nanos,
        }
    }

    /// What was published.
    pub fn payload(&self) -> &E {
        &self.payload
    }

    /// Takes the payload out of the event.
    pub fn into_payload(self) -> E {
        self.payload
    }

    /// The key it was published with, if any.
    pub fn key(&self) -> Option<&EventKey> {
        self.key.as_ref()
    }

    /// Its position in the topic: 0 for the first event, growing by one
    /// per event.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// When it was published (wall clock, to the nanosecond; a clock set
    /// before 1970 reads as 1970).
    pub fn timestamp(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(self.published_nanos)
    }
}

impl<E: fmt::Debug> fmt::Debug for Event<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("offset", &self.offset)
            .field("key", &self.key)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::Event;

    #[test]
    fn the_timestamp_is_kept_to_the_nanosecond_and_a_clock_before_1970_reads_as_1970() {
        let published = SystemTime::UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        let event = Event::new((), None, 0, published);
        assert_eq!(event.timestamp(), published);
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        let event = Event::new((), None, 0, before_1970);
        assert_eq!(event.timestamp(), SystemTime::UNIX_EPOCH);
    }
}
