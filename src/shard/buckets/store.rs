//! A sharded store over virtual buckets that reshards online.

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::migration::{Migration, Phase};
use super::table::BucketTable;
use crate::shard::join::{by_shard, get_many_by_shard};
use crate::shard::key::{key_hash, ShardKey};
use crate::shard::sharded::{std_over_mean, ShardStats};
use crate::store::{DynStore, Scan, Store, Write};
use crate::{Error, Position, Result};

pub(super) const COMPONENT: &str = "BucketSharded";

/// Where a store keeps its bucket table and resharding record.
pub type MetaStore = Arc<dyn DynStore<Key = String, Value = Vec<u8>>>;

pub(super) struct State {
    pub(super) table: Arc<BucketTable>,
    pub(super) migration: Option<Arc<Migration>>,
}

pub(super) struct Inner<S> {
    pub(super) shards: Box<[S]>,
    pub(super) meta: MetaStore,
    name: String,
    state: RwLock<Arc<State>>,
    /// Every write holds it shared for its whole course; changes of the
    /// routing state (a resharding's start, each change of its phase, a
    /// clean-up's end) hold it exclusively, so that no write straddles
    /// one. (A rollback's end changes no routing.)
    pub(super) gate: tokio::sync::RwLock<()>,
    /// The resharding steps of this store run one at a time, so that
    /// none sees the phase change under it (across processes, one
    /// resharder at a time is the caller's to ensure).
    pub(super) steps: tokio::sync::Mutex<()>,
    /// Per shard of the pool: keys routed to it, calls made to it.
    keys: Box<[AtomicU64]>,
    requests: Box<[AtomicU64]>,
}

/// A sharded [`Store`] whose keys map to a fixed number of buckets and
/// buckets to shards through a versioned [`BucketTable`], kept in a meta
/// store. It reshards online: [`start_resharding`](Self::start_resharding)
/// to a new set of shards (from its pool), then
/// [`copy_next`](Self::copy_next) until done,
/// [`switch_reads`](Self::switch_reads),
/// [`switch_writes`](Self::switch_writes) and
/// [`clean_up`](Self::clean_up) (or [`reshard`](Self::reshard) for all of
/// it), while reads and writes go on. Every step is recorded in the meta
/// store before it changes any routing: a process that dies at any step
/// is resumed by opening the store again; before the writes switch,
/// [`roll_back`](Self::roll_back) returns to the old table, and finishes
/// a rollback cut short when called again. The [`Phase`] says where
/// reads and writes of the moving buckets go.
pub struct BucketSharded<S> {
    pub(super) inner: Arc<Inner<S>>,
}

impl<S> Clone for BucketSharded<S> {
    fn clone(&self) -> Self {
        BucketSharded {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for BucketSharded<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("BucketSharded")
            .field("name", &self.inner.name)
            .field("pool", &self.inner.shards.len())
            .field("version", &state.table.version())
            .field("resharding", &state.migration.as_ref().map(|m| m.phase()))
            .finish()
    }
}

/// How far a resharding has got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReshardingProgress {
    /// The phase, or `None` when no resharding runs.
    pub phase: Option<Phase>,
    /// Buckets that move.
    pub moving: usize,
    /// Of them, copied and verified.
    pub copied: usize,
    /// The current table's version.
    pub version: u64,
}

impl<S> BucketSharded<S> {
    pub(super) fn state(&self) -> Arc<State> {
        Arc::clone(
            &self
                .inner
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub(super) fn set_state(&self, state: State) {
        *self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
    }

    pub(super) fn table_key(&self) -> String {
        format!("{}/table", self.inner.name)
    }

    pub(super) fn migration_key(&self) -> String {
        format!("{}/resharding", self.inner.name)
    }
}

impl<S> BucketSharded<S>
where
    S: Scan,
    S::Key: ShardKey,
    S::Value: Hash,
{
    /// Opens the store `name` over a pool of `shards`: its table from
    /// `meta` if it has one (resuming any resharding that was under way),
    /// else `buckets` buckets spread over the first `initial` shards.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for an empty pool,
    /// a bad table (see [`BucketTable::balanced`]), or a stored table or
    /// resharding naming a shard outside the pool;
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) for a corrupt record;
    /// the meta store's errors.
    pub async fn open(
        shards: Vec<S>,
        meta: MetaStore,
        name: impl Into<String>,
        buckets: usize,
        initial: usize,
    ) -> Result<Self> {
        if shards.is_empty() || initial > shards.len() {
            return Err(Error::config(
                COMPONENT,
                format!("{initial} initial shards out of a pool of {}", shards.len()),
            ));
        }
        let pool_size = shards.len();
        let store = BucketSharded {
            inner: Arc::new(Inner {
                shards: shards.into_boxed_slice(),
                meta,
                name: name.into(),
                state: RwLock::new(Arc::new(State {
                    table: Arc::new(BucketTable::balanced(
                        buckets,
                        &(0..initial).collect::<Vec<_>>(),
                    )?),
                    migration: None,
                })),
                gate: tokio::sync::RwLock::new(()),
                steps: tokio::sync::Mutex::new(()),
                keys: (0..pool_size).map(|_| AtomicU64::new(0)).collect(),
                requests: (0..pool_size).map(|_| AtomicU64::new(0)).collect(),
            }),
        };
        let table = match store.inner.meta.get(&store.table_key()).await? {
            Some(bytes) => BucketTable::decode(&bytes)?,
            None => {
                let table = store.state().table.as_ref().clone();
                store
                    .inner
                    .meta
                    .put(store.table_key(), table.encode())
                    .await?;
                table
            }
        };
        let outside = |what: &str, shard: usize| {
            Error::config(
                COMPONENT,
                format!("the stored {what} names shard {shard}, outside the pool of {pool_size}"),
            )
        };
        if let Some(shard) = table.outside(pool_size) {
            return Err(outside("table", shard));
        }
        let migration = match store.inner.meta.get(&store.migration_key()).await? {
            Some(bytes) => {
                let migration = Migration::decode(&table, &bytes)?;
                if migration.to.version() <= table.version() {
                    // Finished but for forgetting the record.
                    store.inner.meta.delete(&store.migration_key()).await?;
                    None
                } else if let Some(shard) = migration.to.outside(pool_size) {
                    return Err(outside("resharding", shard));
                } else {
                    Some(Arc::new(migration))
                }
            }
            None => None,
        };
        store.set_state(State {
            table: Arc::new(table),
            migration,
        });
        Ok(store)
    }

    /// The shard a read of `key` goes to now.
    pub fn shard_of(&self, key: &S::Key) -> usize {
        let state = self.state();
        let bucket = state.table.bucket_of(key_hash(&key.routing_bytes()));
        match &state.migration {
            Some(m) if m.moving[bucket] && m.phase().reads_new_owner() => m.to.owner(bucket),
            _ => state.table.owner(bucket),
        }
    }

    /// The pool of shards.
    pub fn shards(&self) -> &[S] {
        &self.inner.shards
    }

    /// Shard `index`, counting a call of `keys` keys to it.
    fn counted(&self, index: usize, keys: u64) -> &S {
        self.inner.keys[index].fetch_add(keys, Ordering::Relaxed);
        self.inner.requests[index].fetch_add(1, Ordering::Relaxed);
        &self.inner.shards[index]
    }

    /// Keys and calls per shard of the pool, and how evenly the keys
    /// spread over the shards the table uses.
    pub fn stats(&self) -> ShardStats {
        let load = |counters: &[AtomicU64]| -> Vec<u64> {
            counters.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        };
        let keys = load(&self.inner.keys);
        let used: Vec<u64> = {
            let owned = self.table().buckets_per_shard(keys.len());
            keys.iter()
                .zip(owned)
                .filter(|&(_, buckets)| buckets > 0)
                .map(|(&k, _)| k)
                .collect()
        };
        ShardStats {
            balance: std_over_mean(&used),
            keys,
            requests: load(&self.inner.requests),
        }
    }

    /// The current table.
    pub fn table(&self) -> Arc<BucketTable> {
        Arc::clone(&self.state().table)
    }

    /// How far the resharding (if any) has got.
    pub fn progress(&self) -> ReshardingProgress {
        let state = self.state();
        let (phase, moving, copied) = match &state.migration {
            Some(m) => (
                Some(m.phase()),
                m.moving.iter().filter(|&&x| x).count(),
                m.moving.iter().filter(|&&x| x).count() - m.left_to_copy(),
            ),
            None => (None, 0, 0),
        };
        ReshardingProgress {
            phase,
            moving,
            copied,
            version: state.table.version(),
        }
    }

    /// Applies one write: to its bucket's owner, or to the owners its
    /// resharding's [`Phase`] names while the bucket moves. Phases change
    /// only under the gate, so the whole write sees one.
    async fn write(&self, op: Op<'_, S::Key, S::Value>) -> Result<Position> {
        let key = op.key();
        let _gate = self.inner.gate.read().await;
        let state = self.state();
        let bucket = state.table.bucket_of(key_hash(&key.routing_bytes()));
        let old = state.table.owner(bucket);
        let Some(migration) = state.migration.as_ref().filter(|m| m.moving[bucket]) else {
            return op.apply(self.counted(old, 1)).await;
        };
        let (to_old, to_new) = migration.phase().writes_to();
        if !to_new {
            return op.apply(self.counted(old, 1)).await;
        }
        // Ordered against a copy of the bucket.
        let _writing = migration.locks[bucket].read().await;
        let new = self.counted(migration.to.owner(bucket), 1);
        if !to_old {
            return op.apply(new).await;
        }
        let old = self.counted(old, 1);
        let position = op.apply(old).await?;
        if let Err(error) = op.apply(new).await {
            // The copy is behind now: copy the bucket again before reads
            // may switch to it, or writes.
            migration.copied()[bucket] = false;
            return Err(error);
        }
        Ok(position)
    }
}

/// One write, by reference, to apply to one or two shards.
enum Op<'a, K, V> {
    Put(&'a K, &'a V),
    Delete(&'a K),
}

impl<K: Clone, V: Clone> Op<'_, K, V> {
    fn key(&self) -> &K {
        match self {
            Op::Put(key, _) | Op::Delete(key) => key,
        }
    }

    async fn apply<S: Store<Key = K, Value = V>>(&self, shard: &S) -> Result<Position> {
        match self {
            Op::Put(key, value) => shard.put((*key).clone(), (*value).clone()).await,
            Op::Delete(key) => shard.delete(key).await,
        }
    }
}

impl<S> Store for BucketSharded<S>
where
    S: Scan,
    S::Key: ShardKey,
    S::Value: Hash,
{
    type Key = S::Key;
    type Value = S::Value;

    async fn get(&self, key: &S::Key) -> Result<Option<S::Value>> {
        self.counted(self.shard_of(key), 1).get(key).await
    }

    /// One `get_many` per shard, all shards at once.
    async fn get_many(&self, keys: &[S::Key]) -> Result<Vec<Option<S::Value>>> {
        let by_shard = by_shard(keys, self.inner.shards.len(), |key| Ok(self.shard_of(key)))?;
        let answers = get_many_by_shard(
            keys,
            &by_shard,
            |shard, keys| self.counted(shard, keys),
            None,
        )
        .await;
        let mut values = vec![None; keys.len()];
        for (_, indices, result) in answers {
            for (&index, value) in indices.iter().zip(result?) {
                values[index] = value;
            }
        }
        Ok(values)
    }

    async fn put(&self, key: S::Key, value: S::Value) -> Result<Position> {
        self.write(Op::Put(&key, &value)).await
    }

    async fn delete(&self, key: &S::Key) -> Result<Position> {
        self.write(Op::Delete(key)).await
    }

    /// One write at a time, each to its bucket's owner (both, while the
    /// bucket moves): positions of different shards do not compare, so
    /// the result is the last write's.
    async fn write_batch(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
        let mut position = Position::ZERO;
        for write in batch {
            position = match write {
                Write::Put(key, value) => self.put(key, value).await?,
                Write::Delete(key) => self.delete(&key).await?,
            };
        }
        Ok(position)
    }

    async fn get_versioned(&self, key: &S::Key) -> Result<Option<crate::Versioned<S::Value>>> {
        self.counted(self.shard_of(key), 1).get_versioned(key).await
    }

    /// Refused: while a bucket moves, its writes go to two shards, and a
    /// check on one of them says nothing about the other. Write
    /// conditionally to a [`Sharded`](crate::shard::Sharded) store, or to
    /// a shard you own.
    async fn write_if(
        &self,
        _checks: Vec<crate::Check<S::Key>>,
        _batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        Err(crate::Error::unsupported(
            "BucketSharded",
            "write_if",
            "a moving bucket is written on two shards, so one shard's check cannot guard the write",
        ))
    }
}
