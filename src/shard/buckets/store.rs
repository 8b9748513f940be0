//! A sharded store over virtual buckets that reshards online.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::migration::{Migration, Phase};
use super::table::BucketTable;
use crate::shard::join::{by_shard, get_many_by_shard, join_all};
use crate::shard::key::{key_hash, ShardKey};
use crate::shard::sharded::{std_over_mean, ShardStats};
use crate::store::{DynStore, Scan, Store, Write};
use crate::{Error, Position, Result};

const COMPONENT: &str = "BucketSharded";

/// Where a store keeps its bucket table and resharding record.
pub type MetaStore = Arc<dyn DynStore<Key = String, Value = Vec<u8>>>;

struct State {
    table: Arc<BucketTable>,
    migration: Option<Arc<Migration>>,
}

struct Inner<S> {
    shards: Box<[S]>,
    meta: MetaStore,
    name: String,
    state: RwLock<Arc<State>>,
    /// Every write holds it shared for its whole course; changes of the
    /// routing state (a resharding's start, its write switch, its end)
    /// hold it exclusively, so that no write straddles one.
    gate: tokio::sync::RwLock<()>,
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
/// store: a process that dies between steps is resumed by opening the
/// store again; before the writes switch, [`roll_back`](Self::roll_back)
/// returns to the old table.
pub struct BucketSharded<S> {
    inner: Arc<Inner<S>>,
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
    fn state(&self) -> Arc<State> {
        Arc::clone(
            &self
                .inner
                .state
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn set_state(&self, state: State) {
        *self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(state);
    }

    fn table_key(&self) -> String {
        format!("{}/table", self.inner.name)
    }

    fn migration_key(&self) -> String {
        format!("{}/resharding", self.inner.name)
    }
}

/// A fixed hash of an entry, for the per-bucket checksums.
fn entry_hash<K: ShardKey, V: Hash>(key: &K, value: &V) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x5ca1_e5ee_d000_0001).build_hasher();
    std::hash::Hasher::write(&mut hasher, &key.routing_bytes());
    value.hash(&mut hasher);
    std::hash::Hasher::finish(&hasher)
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
    /// a bad table (see [`BucketTable::balanced`]) or a stored table
    /// naming a shard outside the pool; the meta store's errors.
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
        let pool = store.inner.shards.len();
        if (0..table.buckets()).any(|b| table.owner(b) >= pool) {
            return Err(Error::config(
                COMPONENT,
                "the stored table names a shard outside the pool",
            ));
        }
        let migration = match store.inner.meta.get(&store.migration_key()).await? {
            Some(bytes) => {
                let migration = Migration::decode(&table, &bytes)?;
                if migration.to.version() <= table.version() {
                    // Finished but for forgetting the record.
                    store.inner.meta.delete(&store.migration_key()).await?;
                    None
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
            Some(m) if m.moving[bucket] && m.phase() >= Phase::ReadsSwitched => m.to.owner(bucket),
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

    /// Applies one write, to both owners while its bucket moves.
    async fn write(&self, op: Op<'_, S::Key, S::Value>) -> Result<Position> {
        let key = op.key();
        let _gate = self.inner.gate.read().await;
        let state = self.state();
        let bucket = state.table.bucket_of(key_hash(&key.routing_bytes()));
        let old = state.table.owner(bucket);
        let Some(migration) = state.migration.as_ref().filter(|m| m.moving[bucket]) else {
            return op.apply(self.counted(old, 1)).await;
        };
        let _writing = migration.locks[bucket].read().await;
        let new = self.counted(migration.to.owner(bucket), 1);
        if migration.phase() == Phase::WritesSwitched {
            return op.apply(new).await;
        }
        let old = self.counted(old, 1);
        let position = op.apply(old).await?;
        if let Err(error) = op.apply(new).await {
            // The copy is behind now: copy the bucket again before reads
            // may switch to it.
            migration.copied()[bucket] = false;
            return Err(error);
        }
        Ok(position)
    }

    async fn save_migration(&self, migration: &Migration) -> Result<()> {
        self.inner
            .meta
            .put(self.migration_key(), migration.encode())
            .await
            .map(|_| ())
    }

    fn migration(&self) -> Result<Arc<Migration>> {
        self.state()
            .migration
            .clone()
            .ok_or_else(|| Error::config(COMPONENT, "no resharding is under way"))
    }

    /// Starts moving to the table that spreads the buckets evenly over
    /// `shards` (indices into the pool): writes to the buckets that move
    /// go to both owners from now on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) while another
    /// resharding runs, or for shards outside the pool (or a bad table);
    /// the meta store's errors.
    pub async fn start_resharding(&self, shards: &[usize]) -> Result<ReshardingProgress> {
        let _gate = self.inner.gate.write().await;
        let state = self.state();
        if state.migration.is_some() {
            return Err(Error::config(
                COMPONENT,
                "a resharding is under way: finish or roll it back",
            ));
        }
        if let Some(&outside) = shards.iter().find(|&&s| s >= self.inner.shards.len()) {
            return Err(Error::config(
                COMPONENT,
                format!("shard {outside} is not in the pool"),
            ));
        }
        let migration = Migration::new(&state.table, state.table.rebalanced(shards)?);
        self.save_migration(&migration).await?;
        self.set_state(State {
            table: Arc::clone(&state.table),
            migration: Some(Arc::new(migration)),
        });
        Ok(self.progress())
    }

    /// Copies and verifies the moving buckets of one old shard (writes to
    /// them wait meanwhile); `false` when none is left to copy.
    ///
    /// # Errors
    ///
    /// The shards' errors (nothing is marked copied then: it is tried
    /// again); [`ErrorKind::Backend`](crate::ErrorKind::Backend) if a
    /// copy does not verify; a configuration error when no resharding
    /// runs.
    pub async fn copy_next(&self) -> Result<bool> {
        let state = self.state();
        let migration = self.migration()?;
        let from = &state.table;
        let next = {
            let copied = migration.copied();
            (0..from.buckets()).find(|&b| migration.moving[b] && !copied[b])
        };
        let Some(first) = next else {
            return Ok(false);
        };
        let old_shard = from.owner(first);
        let buckets: Vec<usize> = {
            let copied = migration.copied();
            (0..from.buckets())
                .filter(|&b| migration.moving[b] && !copied[b] && from.owner(b) == old_shard)
                .collect()
        };
        let mut guards = Vec::with_capacity(buckets.len());
        for &bucket in &buckets {
            guards.push(migration.locks[bucket].write().await);
        }
        let in_copy = |bucket: usize| buckets.binary_search(&bucket).is_ok();
        let bucket_of = |key: &S::Key| from.bucket_of(key_hash(&key.routing_bytes()));
        // What the old owner holds of these buckets, per new owner.
        let source: Vec<(S::Key, S::Value)> = self.inner.shards[old_shard]
            .entries()
            .await?
            .into_iter()
            .filter(|(key, _)| in_copy(bucket_of(key)))
            .collect();
        let mut new_shards: Vec<usize> = buckets.iter().map(|&b| migration.to.owner(b)).collect();
        new_shards.sort_unstable();
        new_shards.dedup();
        for &new_shard in &new_shards {
            let target = &self.inner.shards[new_shard];
            let mine = |key: &S::Key| {
                let bucket = bucket_of(key);
                in_copy(bucket) && migration.to.owner(bucket) == new_shard
            };
            // Whatever the new owner holds of them that the old does not
            // (from an earlier, interrupted attempt) goes.
            let stale: Vec<Write<S::Key, S::Value>> = target
                .entries()
                .await?
                .into_iter()
                .filter(|(key, _)| mine(key) && !source.iter().any(|(k, _)| k == key))
                .map(|(key, _)| Write::Delete(key))
                .collect();
            let copies: Vec<Write<S::Key, S::Value>> = source
                .iter()
                .filter(|(key, _)| mine(key))
                .map(|(key, value)| Write::Put(key.clone(), value.clone()))
                .chain(stale)
                .collect();
            if !copies.is_empty() {
                target.write_batch(copies).await?;
            }
        }
        // Verify: per bucket, the checksum of the entries on each side.
        let checksums = |entries: &[(S::Key, S::Value)], keep: &dyn Fn(&S::Key) -> bool| {
            let mut sums = std::collections::HashMap::<usize, (u64, usize)>::new();
            for (key, value) in entries.iter().filter(|(key, _)| keep(key)) {
                let sum = sums.entry(bucket_of(key)).or_default();
                sum.0 = sum.0.wrapping_add(entry_hash(key, value));
                sum.1 += 1;
            }
            sums
        };
        let expected = checksums(&source, &|_| true);
        let mut found = std::collections::HashMap::new();
        for &new_shard in &new_shards {
            let entries = self.inner.shards[new_shard].entries().await?;
            found.extend(checksums(&entries, &|key| {
                let bucket = bucket_of(key);
                in_copy(bucket) && migration.to.owner(bucket) == new_shard
            }));
        }
        if let Some(&bucket) = buckets.iter().find(|b| expected.get(b) != found.get(b)) {
            return Err(Error::backend(
                COMPONENT,
                "verify",
                std::io::Error::other(format!("bucket {bucket}: the copy's checksum differs")),
            ));
        }
        {
            let mut copied = migration.copied();
            for &bucket in &buckets {
                copied[bucket] = true;
            }
        }
        self.save_migration(&migration).await?;
        drop(guards);
        Ok(migration.left_to_copy() > 0)
    }

    /// Sends reads of the moved buckets to their new owners (writes still
    /// go to both).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) while buckets are
    /// left to copy, or when no resharding runs; the meta store's errors.
    pub async fn switch_reads(&self) -> Result<()> {
        let migration = self.migration()?;
        if migration.left_to_copy() > 0 {
            return Err(Error::config(COMPONENT, "buckets are left to copy"));
        }
        if migration.phase() < Phase::ReadsSwitched {
            migration.set_phase(Phase::ReadsSwitched);
            self.save_migration(&migration).await?;
        }
        Ok(())
    }

    /// Sends writes of the moved buckets to their new owners only (after
    /// the writes in flight to both). No rollback after this.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) before the reads
    /// switched, or when no resharding runs; the meta store's errors.
    pub async fn switch_writes(&self) -> Result<()> {
        let migration = self.migration()?;
        if migration.phase() < Phase::ReadsSwitched {
            return Err(Error::config(COMPONENT, "switch the reads first"));
        }
        if migration.phase() == Phase::ReadsSwitched {
            // No write in flight to both owners.
            let _gate = self.inner.gate.write().await;
            migration.set_phase(Phase::WritesSwitched);
            self.save_migration(&migration).await?;
        }
        Ok(())
    }

    /// Removes the moved buckets' old copies, makes the new table current
    /// and forgets the resharding.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) before the writes
    /// switched, or when no resharding runs; the stores' errors (run it
    /// again: it resumes).
    pub async fn clean_up(&self) -> Result<()> {
        let state = self.state();
        let migration = self.migration()?;
        if migration.phase() < Phase::WritesSwitched {
            return Err(Error::config(COMPONENT, "switch the writes first"));
        }
        self.remove_copies(&state.table, &migration, |bucket| state.table.owner(bucket))
            .await?;
        let table = Arc::clone(&migration.to);
        self.inner
            .meta
            .put(self.table_key(), table.encode())
            .await?;
        self.inner.meta.delete(&self.migration_key()).await?;
        let _gate = self.inner.gate.write().await;
        self.set_state(State {
            table,
            migration: None,
        });
        Ok(())
    }

    /// Deletes, from the shard `owner(bucket)` of each moving bucket, its
    /// entries.
    async fn remove_copies(
        &self,
        table: &BucketTable,
        migration: &Migration,
        owner: impl Fn(usize) -> usize,
    ) -> Result<()> {
        let holders: Vec<usize> = {
            let mut holders: Vec<usize> = (0..table.buckets())
                .filter(|&b| migration.moving[b])
                .map(&owner)
                .collect();
            holders.sort_unstable();
            holders.dedup();
            holders
        };
        let removals = holders.iter().map(|&shard| {
            let owner = &owner;
            async move {
                let store = &self.inner.shards[shard];
                let gone: Vec<Write<S::Key, S::Value>> = store
                    .entries()
                    .await?
                    .into_iter()
                    .filter(|(key, _)| {
                        let bucket = table.bucket_of(key_hash(&key.routing_bytes()));
                        migration.moving[bucket] && owner(bucket) == shard
                    })
                    .map(|(key, _)| Write::Delete(key))
                    .collect();
                if gone.is_empty() {
                    return Ok(());
                }
                store.write_batch(gone).await.map(|_| ())
            }
        });
        join_all(removals.collect()).await.into_iter().collect()
    }

    /// Abandons the resharding before the writes switched: reads and
    /// writes go to the old owners only, and the copies are removed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) once the writes
    /// switched, or when no resharding runs; the stores' errors (run it
    /// again: it resumes).
    pub async fn roll_back(&self) -> Result<()> {
        let state = self.state();
        let migration = self.migration()?;
        if migration.phase() >= Phase::WritesSwitched {
            return Err(Error::config(
                COMPONENT,
                "the writes switched already: finish instead",
            ));
        }
        {
            // Writes in flight to both owners finish first.
            let _gate = self.inner.gate.write().await;
            self.set_state(State {
                table: Arc::clone(&state.table),
                migration: None,
            });
        }
        self.remove_copies(&state.table, &migration, |bucket| {
            migration.to.owner(bucket)
        })
        .await?;
        self.inner.meta.delete(&self.migration_key()).await?;
        Ok(())
    }

    /// Runs a whole resharding to `shards`, or finishes the one under way.
    ///
    /// # Errors
    ///
    /// Any step's.
    pub async fn reshard(&self, shards: &[usize]) -> Result<()> {
        if self.state().migration.is_none() {
            self.start_resharding(shards).await?;
        }
        self.finish().await
    }

    /// Finishes the resharding under way, from wherever it is.
    ///
    /// # Errors
    ///
    /// Any step's.
    pub async fn finish(&self) -> Result<()> {
        while self.copy_next().await? {}
        self.switch_reads().await?;
        self.switch_writes().await?;
        self.clean_up().await
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
}
