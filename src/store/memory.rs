//! The in-memory backend.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use dashmap::DashMap;

use super::{conflict, Check, Store, Version, Versioned, Write};
use crate::{Position, Result};

/// A concurrent in-memory store: a sharded hash map plus a write counter
/// that serves as its [`Position`].
///
/// Reads take a shard read lock and clone the value; nothing is allocated
/// per call beyond that clone. `write_batch` cannot fail half-way, but it
/// is not isolated: a concurrent reader may observe part of a batch.
/// Each write of a key is stamped with the position it advanced the
/// counter to, which is its [`Version`]; a [`write_if`](Store::write_if)
/// holds the store's write gate alone while it checks and applies, so no
/// other write lands in between (plain writes share the gate).
///
/// ```
/// use scalekit::{MemoryStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let users = MemoryStore::<u64, String>::new();
/// let p1 = users.put(1, "ada".into()).await?;
/// let p2 = users.put(2, "grace".into()).await?;
/// assert!(p2 > p1);
/// assert_eq!(users.get(&1).await?, Some("ada".into()));
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct MemoryStore<K, V> {
    map: DashMap<K, (V, Version)>,
    position: AtomicU64,
    /// Shared by plain writes, held alone by a conditional write.
    gate: RwLock<()>,
}

impl<K: Eq + Hash, V> MemoryStore<K, V> {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            map: DashMap::new(),
            position: AtomicU64::new(0),
            gate: RwLock::new(()),
        }
    }

    /// An empty store with room for `capacity` entries before it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryStore {
            map: DashMap::with_capacity(capacity),
            position: AtomicU64::new(0),
            gate: RwLock::new(()),
        }
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The position of the last write (zero before the first).
    pub fn position(&self) -> Position {
        Position::new(self.position.load(Ordering::Acquire))
    }

    /// Every entry, copied (a replica's starting snapshot).
    pub(crate) fn entries(&self) -> Vec<(K, V)>
    where
        K: Clone,
        V: Clone,
    {
        self.map
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().0.clone()))
            .collect()
    }

    fn advance(&self) -> Position {
        Position::new(self.position.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Applies one write; the version is drawn while the key's shard is
    /// locked, so the versions of a key grow in the order its writes land.
    fn apply(&self, write: Write<K, V>) -> Position
    where
        K: Clone,
    {
        match write {
            Write::Put(key, value) => {
                let entry = self.map.entry(key);
                let position = self.advance();
                entry.insert((value, Version::new(position.get())));
                position
            }
            Write::Delete(key) => {
                self.map.remove(&key);
                self.advance()
            }
        }
    }

    fn shared_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Eq + Hash, V> Default for MemoryStore<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash, V> fmt::Debug for MemoryStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("len", &self.map.len())
            .field("position", &self.position())
            .finish()
    }
}

impl<K, V> Store for MemoryStore<K, V>
where
    K: Clone + Eq + Hash + fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.map.get(key).map(|entry| entry.value().0.clone()))
    }

    async fn put(&self, key: K, value: V) -> Result<Position> {
        let _gate = self.shared_gate();
        Ok(self.apply(Write::Put(key, value)))
    }

    async fn delete(&self, key: &K) -> Result<Position> {
        let _gate = self.shared_gate();
        Ok(self.apply(Write::Delete(key.clone())))
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        Ok(keys
            .iter()
            .map(|key| self.map.get(key).map(|entry| entry.value().0.clone()))
            .collect())
    }

    async fn write_batch(&self, batch: Vec<Write<K, V>>) -> Result<Position> {
        if batch.is_empty() {
            return Ok(self.position());
        }
        let _gate = self.shared_gate();
        let mut position = self.position();
        for write in batch {
            position = self.apply(write);
        }
        Ok(position)
    }

    async fn get_versioned(&self, key: &K) -> Result<Option<Versioned<V>>> {
        Ok(self.map.get(key).map(|entry| {
            let (value, version) = entry.value();
            Versioned {
                value: value.clone(),
                version: *version,
            }
        }))
    }

    async fn write_if(&self, checks: Vec<Check<K>>, batch: Vec<Write<K, V>>) -> Result<Position> {
        let _alone = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        for (index, check) in checks.iter().enumerate() {
            let found = self.map.get(check.key()).map(|entry| entry.value().1);
            if !check.passes(found) {
                return Err(conflict(&checks, index, found));
            }
        }
        let mut position = self.position();
        for write in batch {
            position = self.apply(write);
        }
        Ok(position)
    }
}
