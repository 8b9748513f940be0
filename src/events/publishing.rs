//! `Publishing`: a store layer that publishes a change event after each
//! successful write.

use std::fmt;
use std::future::Future;

use super::event::EventKey;
use super::topic::Topic;
use crate::codec::{Codec, CodecError};
use crate::store::{Store, Write};
use crate::{CodecDirection, ErrorKind, Position, Result};

/// A change of one key, published by [`Publishing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change<K, V> {
    /// The key written.
    pub key: K,
    /// Its new value, or `None` for a delete.
    pub value: Option<V>,
    /// The store's position after the write that made the change.
    pub position: Position,
}

/// A change crosses to a broker as `[position: u64][key length: u32][key]
/// [0 | 1][value]`, little-endian, key and value through their codecs.
impl<K: Codec, V: Codec> Codec for Change<K, V> {
    fn encode(&self, out: &mut Vec<u8>) -> std::result::Result<(), CodecError> {
        out.extend_from_slice(&self.position.get().to_le_bytes());
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        self.key.encode(out)?;
        let key_len =
            u32::try_from(out.len() - at - 4).map_err(|_| "a change's key must be under 4 GiB")?;
        out[at..at + 4].copy_from_slice(&key_len.to_le_bytes());
        match &self.value {
            Some(value) => {
                out.push(1);
                value.encode(out)?;
            }
            None => out.push(0),
        }
        Ok(())
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, CodecError> {
        let malformed = || CodecError::from("a malformed change");
        let position = bytes.get(..8).ok_or_else(malformed)?;
        let key_len = bytes.get(8..12).ok_or_else(malformed)?;
        let key_len = u32::from_le_bytes([key_len[0], key_len[1], key_len[2], key_len[3]]) as usize;
        let key = bytes.get(12..12 + key_len).ok_or_else(malformed)?;
        let rest = &bytes[12 + key_len..];
        let value = match rest.split_first() {
            Some((1, value)) => Some(V::decode(value)?),
            Some((0, [])) => None,
            _ => return Err(malformed()),
        };
        Ok(Change {
            key: K::decode(key)?,
            value,
            position: Position::new(u64::from_le_bytes([
                position[0],
                position[1],
                position[2],
                position[3],
                position[4],
                position[5],
                position[6],
                position[7],
            ])),
        })
    }
}

/// Where [`Publishing`] sends its change events: an in-process
/// [`Topic`], or (feature `nats`) a [`NatsTopic`](super::nats::NatsTopic)
/// that other processes subscribe to.
pub trait ChangeTopic<K, V>: Send + Sync + 'static {
    /// Publishes the changes of one write, in order, each with its key.
    fn publish_changes(
        &self,
        changes: Vec<(EventKey, Change<K, V>)>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The topic's name.
    fn topic_name(&self) -> &str;
}

impl<K, V> ChangeTopic<K, V> for Topic<Change<K, V>>
where
    K: Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    async fn publish_changes(&self, changes: Vec<(EventKey, Change<K, V>)>) -> Result<()> {
        self.publish_batch(changes.into_iter().map(|(key, change)| (Some(key), change)))
            .await
            .map(drop)
    }

    fn topic_name(&self) -> &str {
        self.name()
    }
}

#[cfg(feature = "nats")]
impl<K, V> ChangeTopic<K, V> for super::nats::NatsTopic<Change<K, V>>
where
    K: Codec + Clone,
    V: Codec + Clone,
{
    async fn publish_changes(&self, changes: Vec<(EventKey, Change<K, V>)>) -> Result<()> {
        self.publish_batch(changes.into_iter().map(|(key, change)| (Some(key), change)))
            .await
            .map(drop)
    }

    fn topic_name(&self) -> &str {
        self.name()
    }
}

/// A layer that, after each successful write to the store it wraps,
/// publishes one [`Change`] per written key to a topic, keyed by the key's
/// [`Codec`] bytes (so one key's changes are handled in order). A write
/// the store refuses publishes nothing. It is itself a [`Store`]; reads go
/// straight to the inner store.
///
/// If the store took a write but the event could not be published (the
/// bus is shut down), the write's caller gets that error: the store has
/// the write, its subscribers do not.
///
/// **Order.** Within one `Publishing`, a key's changes are published in
/// the order the store committed them: writes of the same key (by lock
/// stripe) hold a lock from the store call until their events are
/// published, so a write that commits later cannot publish first. Across
/// processes (two layers over one store) no lock is shared: each change
/// carries the store's [`position`](Change::position), and a consumer that
/// may hear of a key's changes from several writers must keep the change
/// with the highest position (the `data_layer` example's cache
/// invalidation does).
///
/// ```
/// use scalekit::events::{Change, EventBus, Publishing};
/// use scalekit::{MemoryStore, Store};
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let bus = EventBus::new();
/// let changes = bus.topic::<Change<u64, String>>("users.changes")?;
/// let users = Publishing::new(MemoryStore::<u64, String>::new(), changes.clone());
///
/// let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let _search = changes.group("search-index").subscribe(move |event: scalekit::events::Event<Change<u64, String>>| {
///     let seen = seen.clone();
///     async move {
///         seen.send(event.payload().clone())?;
///         Ok(())
///     }
/// })?;
/// users.put(7, "ada".to_string()).await?;
/// let change = rx.recv().await.unwrap();
/// assert_eq!((change.key, change.value), (7, Some("ada".to_string())));
/// # bus.shutdown().await;
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct Publishing<S: Store, T = Topic<Change<<S as Store>::Key, <S as Store>::Value>>> {
    store: S,
    topic: T,
    /// Held by a write of a key of the stripe from its store call until
    /// its events are published.
    stripes: Box<[tokio::sync::Mutex<()>]>,
}

/// Lock stripes of a [`Publishing`] layer.
const STRIPES: usize = 256;

impl<S: Store, T: ChangeTopic<S::Key, S::Value>> fmt::Debug for Publishing<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publishing")
            .field("store", &self.store)
            .field("topic", &self.topic.topic_name())
            .finish()
    }
}

impl<S: Store, T: ChangeTopic<S::Key, S::Value>> Publishing<S, T> {
    /// Wraps `store`, publishing its changes to `topic`.
    pub fn new(store: S, topic: T) -> Self {
        Publishing {
            store,
            topic,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.store
    }

    /// The topic changes go to.
    pub fn topic(&self) -> &T {
        &self.topic
    }
}

fn event_key<K: Codec>(key: &K) -> Result<EventKey> {
    let mut bytes = Vec::new();
    key.encode(&mut bytes).map_err(|source| ErrorKind::Codec {
        direction: CodecDirection::Encode,
        part: "event key",
        source: source.into(),
    })?;
    Ok(EventKey::from(bytes))
}

impl<S: Store, T: ChangeTopic<S::Key, S::Value>> Publishing<S, T>
where
    S::Key: Codec,
{
    /// Writes the batch, then publishes its changes. Keys are encoded
    /// first, so a key that cannot be encoded fails before the write.
    async fn write_and_publish(
        &self,
        checks: Option<Vec<crate::Check<S::Key>>>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        let keys = batch
            .iter()
            .map(|write| event_key(write.key()))
            .collect::<Result<Vec<_>>>()?;
        let mut stripes: Vec<usize> = keys
            .iter()
            .map(|key| {
                use std::hash::BuildHasher;
                foldhash::fast::FixedState::with_seed(0).hash_one(key.as_bytes()) as usize % STRIPES
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        // In stripe order, so two batches never wait for each other.
        let mut held = Vec::with_capacity(stripes.len());
        for stripe in stripes {
            held.push(self.stripes[stripe].lock().await);
        }
        let changes: Vec<(S::Key, Option<S::Value>)> = batch
            .iter()
            .map(|write| match write {
                Write::Put(key, value) => (key.clone(), Some(value.clone())),
                Write::Delete(key) => (key.clone(), None),
            })
            .collect();
        let position = match (checks, batch.len()) {
            (Some(checks), _) => self.store.write_if(checks, batch).await?,
            (None, 1) => match batch.into_iter().next() {
                Some(Write::Put(key, value)) => self.store.put(key, value).await?,
                Some(Write::Delete(key)) => self.store.delete(&key).await?,
                None => Position::ZERO,
            },
            (None, _) => self.store.write_batch(batch).await?,
        };
        let events = keys
            .into_iter()
            .zip(changes)
            .map(|(event_key, (key, value))| {
                (
                    event_key,
                    Change {
                        key,
                        value,
                        position,
                    },
                )
            })
            .collect();
        self.topic.publish_changes(events).await?;
        drop(held);
        Ok(position)
    }
}

impl<S: Store, T: ChangeTopic<S::Key, S::Value>> Store for Publishing<S, T>
where
    S::Key: Codec,
{
    type Key = S::Key;
    type Value = S::Value;

    async fn get(&self, key: &S::Key) -> Result<Option<S::Value>> {
        self.store.get(key).await
    }

    async fn put(&self, key: S::Key, value: S::Value) -> Result<Position> {
        self.write_and_publish(None, vec![Write::Put(key, value)])
            .await
    }

    async fn delete(&self, key: &S::Key) -> Result<Position> {
        self.write_and_publish(None, vec![Write::Delete(key.clone())])
            .await
    }

    async fn get_many(&self, keys: &[S::Key]) -> Result<Vec<Option<S::Value>>> {
        self.store.get_many(keys).await
    }

    async fn write_batch(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
        if batch.is_empty() {
            return self.store.write_batch(batch).await;
        }
        self.write_and_publish(None, batch).await
    }

    async fn get_versioned(&self, key: &S::Key) -> Result<Option<crate::Versioned<S::Value>>> {
        self.store.get_versioned(key).await
    }

    /// Forwarded; the changes are published only when the checks held and
    /// the write committed (a conflict publishes nothing).
    async fn write_if(
        &self,
        checks: Vec<crate::Check<S::Key>>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        if batch.is_empty() {
            return self.store.write_if(checks, batch).await;
        }
        self.write_and_publish(Some(checks), batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_crosses_a_broker_and_back_and_bad_bytes_are_an_error() {
        for change in [
            Change {
                key: 7u64,
                value: Some("seven".to_string()),
                position: Position::new(42),
            },
            Change {
                key: 8u64,
                value: None,
                position: Position::new(43),
            },
        ] {
            let mut bytes = Vec::new();
            change.encode(&mut bytes).unwrap();
            assert_eq!(Change::<u64, String>::decode(&bytes).unwrap(), change);
            let flag_at = 8 + 4 + 8;
            bytes[flag_at] = 2;
            assert!(
                Change::<u64, String>::decode(&bytes).is_err(),
                "a bad value flag"
            );
        }
        let mut delete = Vec::new();
        Change::<u64, String> {
            key: 1,
            value: None,
            position: Position::new(1),
        }
        .encode(&mut delete)
        .unwrap();
        delete.push(9);
        assert!(
            Change::<u64, String>::decode(&delete).is_err(),
            "bytes after a delete"
        );
        assert!(
            Change::<u64, String>::decode(&[1, 2, 3]).is_err(),
            "too short"
        );
    }
}
