//! `Publishing`: a store layer that publishes a change event after each
//! successful write.

use std::fmt;

use super::event::EventKey;
use super::topic::Topic;
use crate::codec::Codec;
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
pub struct Publishing<S: Store> {
    store: S,
    topic: Topic<Change<S::Key, S::Value>>,
}

impl<S: Store> fmt::Debug for Publishing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publishing")
            .field("store", &self.store)
            .field("topic", &self.topic.name())
            .finish()
    }
}

impl<S: Store> Publishing<S> {
    /// Wraps `store`, publishing its changes to `topic`.
    pub fn new(store: S, topic: Topic<Change<S::Key, S::Value>>) -> Self {
        Publishing { store, topic }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.store
    }

    /// The topic changes go to.
    pub fn topic(&self) -> &Topic<Change<S::Key, S::Value>> {
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

impl<S: Store> Publishing<S>
where
    S::Key: Codec,
{
    /// Writes the batch, then publishes its changes. Keys are encoded
    /// first, so a key that cannot be encoded fails before the write.
    async fn write_and_publish(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
        let keys = batch
            .iter()
            .map(|write| event_key(write.key()))
            .collect::<Result<Vec<_>>>()?;
        let changes: Vec<(S::Key, Option<S::Value>)> = batch
            .iter()
            .map(|write| match write {
                Write::Put(key, value) => (key.clone(), Some(value.clone())),
                Write::Delete(key) => (key.clone(), None),
            })
            .collect();
        let position = match batch.len() {
            1 => match batch.into_iter().next() {
                Some(Write::Put(key, value)) => self.store.put(key, value).await?,
                Some(Write::Delete(key)) => self.store.delete(&key).await?,
                None => Position::ZERO,
            },
            _ => self.store.write_batch(batch).await?,
        };
        let events = keys
            .into_iter()
            .zip(changes)
            .map(|(event_key, (key, value))| {
                (
                    Some(event_key),
                    Change {
                        key,
                        value,
                        position,
                    },
                )
            });
        self.topic.publish_batch(events).await?;
        Ok(position)
    }
}

impl<S: Store> Store for Publishing<S>
where
    S::Key: Codec,
{
    type Key = S::Key;
    type Value = S::Value;

    async fn get(&self, key: &S::Key) -> Result<Option<S::Value>> {
        self.store.get(key).await
    }

    async fn put(&self, key: S::Key, value: S::Value) -> Result<Position> {
        self.write_and_publish(vec![Write::Put(key, value)]).await
    }

    async fn delete(&self, key: &S::Key) -> Result<Position> {
        self.write_and_publish(vec![Write::Delete(key.clone())])
            .await
    }

    async fn get_many(&self, keys: &[S::Key]) -> Result<Vec<Option<S::Value>>> {
        self.store.get_many(keys).await
    }

    async fn write_batch(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
        if batch.is_empty() {
            return self.store.write_batch(batch).await;
        }
        self.write_and_publish(batch).await
    }
}
