//! The steps of a resharding: start, copy and verify, switch reads,
//! switch writes, clean up, or roll back.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::migration::{Migration, Phase};
use super::store::{BucketSharded, ReshardingProgress, State, COMPONENT};
use super::table::BucketTable;
use crate::shard::join::join_all;
use crate::shard::key::{key_hash, ShardKey};
use crate::store::{Scan, Store, Write};
use crate::{Error, Result};

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
    /// Records the resharding at `phase` with `copied` buckets, before
    /// the change is applied in memory.
    async fn save_migration(
        &self,
        migration: &Migration,
        phase: Phase,
        copied: &[bool],
    ) -> Result<()> {
        self.inner
            .meta
            .put(self.migration_key(), migration.record(phase, copied))
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
        let _steps = self.inner.steps.lock().await;
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
        let copied = migration.copied().clone();
        self.save_migration(&migration, Phase::Copying, &copied)
            .await?;
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
    /// The shards' and the meta store's errors (nothing is marked copied
    /// then: it is tried again);
    /// [`ErrorKind::Backend`](crate::ErrorKind::Backend) if a copy does
    /// not verify (its checksum differs from the old owner's);
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when no resharding
    /// runs, or while one rolls back.
    pub async fn copy_next(&self) -> Result<bool> {
        let _steps = self.inner.steps.lock().await;
        let state = self.state();
        let migration = self.migration()?;
        if migration.phase() == Phase::RollingBack {
            return Err(rolling_back());
        }
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
        let mut record = migration.copied().clone();
        for &bucket in &buckets {
            record[bucket] = true;
        }
        self.save_migration(&migration, migration.phase(), &record)
            .await?;
        {
            let mut copied = migration.copied();
            for &bucket in &buckets {
                copied[bucket] = true;
            }
        }
        drop(guards);
        Ok(migration.left_to_copy() > 0)
    }

    /// Sends reads of the moved buckets to their new owners (writes still
    /// go to both), once the switch is recorded.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) while buckets are
    /// left to copy, when no resharding runs, or while one rolls back; the
    /// meta store's errors (nothing switched then).
    pub async fn switch_reads(&self) -> Result<()> {
        let _steps = self.inner.steps.lock().await;
        let migration = self.migration()?;
        match migration.phase() {
            Phase::Copying => {
                // No write in flight leaves a copy behind unseen.
                let _gate = self.inner.gate.write().await;
                if migration.left_to_copy() > 0 {
                    return Err(Error::config(COMPONENT, "buckets are left to copy"));
                }
                let copied = migration.copied().clone();
                self.save_migration(&migration, Phase::ReadsSwitched, &copied)
                    .await?;
                migration.set_phase(Phase::ReadsSwitched);
                Ok(())
            }
            Phase::ReadsSwitched | Phase::WritesSwitched => Ok(()),
            Phase::RollingBack => Err(rolling_back()),
        }
    }

    /// Sends writes of the moved buckets to their new owners only (after
    /// the writes in flight to both), once the switch is recorded. No
    /// rollback after this.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) before the reads
    /// switched, while a bucket's copy is behind (a write reached its old
    /// owner only: [`copy_next`](Self::copy_next) copies it again), when
    /// no resharding runs, or while one rolls back; the meta store's
    /// errors (nothing switched then).
    pub async fn switch_writes(&self) -> Result<()> {
        let _steps = self.inner.steps.lock().await;
        let migration = self.migration()?;
        match migration.phase() {
            Phase::Copying => Err(Error::config(COMPONENT, "switch the reads first")),
            Phase::ReadsSwitched => {
                // No write in flight to both owners.
                let _gate = self.inner.gate.write().await;
                if migration.left_to_copy() > 0 {
                    // Recopied after the switch, the bucket would lose
                    // the writes only its new owner had.
                    return Err(Error::config(
                        COMPONENT,
                        "a bucket's copy is behind: copy it again first",
                    ));
                }
                let copied = migration.copied().clone();
                self.save_migration(&migration, Phase::WritesSwitched, &copied)
                    .await?;
                migration.set_phase(Phase::WritesSwitched);
                Ok(())
            }
            Phase::WritesSwitched => Ok(()),
            Phase::RollingBack => Err(rolling_back()),
        }
    }

    /// Removes the moved buckets' old copies, makes the new table current
    /// and forgets the resharding.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) before the writes
    /// switched, when no resharding runs, or while one rolls back; the
    /// stores' errors (run it again: it resumes).
    pub async fn clean_up(&self) -> Result<()> {
        let _steps = self.inner.steps.lock().await;
        let state = self.state();
        let migration = self.migration()?;
        match migration.phase() {
            Phase::WritesSwitched => {}
            Phase::RollingBack => return Err(rolling_back()),
            Phase::Copying | Phase::ReadsSwitched => {
                return Err(Error::config(COMPONENT, "switch the writes first"))
            }
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

    /// Abandons the resharding before the writes switched: once
    /// [`Phase::RollingBack`] is recorded, reads and writes go to the old
    /// owners only; then the copies are removed and the record deleted.
    /// A rollback cut short (by a shard's error, or a crash and a new
    /// [`open`](Self::open)) is finished by calling it again.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) once the writes
    /// switched, or when no resharding runs; the meta store's errors
    /// before the phase is recorded (nothing changed then); the stores'
    /// errors after it (run it again: it resumes).
    pub async fn roll_back(&self) -> Result<()> {
        let _steps = self.inner.steps.lock().await;
        let state = self.state();
        let migration = self.migration()?;
        match migration.phase() {
            Phase::WritesSwitched => {
                return Err(Error::config(
                    COMPONENT,
                    "the writes switched already: finish instead",
                ))
            }
            Phase::RollingBack => {}
            Phase::Copying | Phase::ReadsSwitched => {
                // Writes in flight to both owners finish first.
                let _gate = self.inner.gate.write().await;
                let copied = migration.copied().clone();
                self.save_migration(&migration, Phase::RollingBack, &copied)
                    .await?;
                migration.set_phase(Phase::RollingBack);
            }
        }
        self.remove_copies(&state.table, &migration, |bucket| {
            migration.to.owner(bucket)
        })
        .await?;
        self.inner.meta.delete(&self.migration_key()).await?;
        // The same routing as `RollingBack`: no write can notice.
        self.set_state(State {
            table: Arc::clone(&state.table),
            migration: None,
        });
        Ok(())
    }

    /// Runs a whole resharding to `shards`, or finishes the one under way.
    ///
    /// # Errors
    ///
    /// Any step's; [`ErrorKind::Config`](crate::ErrorKind::Config) while a
    /// resharding rolls back.
    pub async fn reshard(&self, shards: &[usize]) -> Result<()> {
        if self.state().migration.is_none() {
            self.start_resharding(shards).await?;
        }
        self.finish().await
    }

    /// Finishes the resharding under way, from wherever it is (a
    /// rollback under way is finished by [`roll_back`](Self::roll_back)).
    ///
    /// # Errors
    ///
    /// Any step's; [`ErrorKind::Config`](crate::ErrorKind::Config) while
    /// the resharding rolls back.
    pub async fn finish(&self) -> Result<()> {
        while self.copy_next().await? {}
        self.switch_reads().await?;
        self.switch_writes().await?;
        self.clean_up().await
    }
}

/// The error of a step forwards while a rollback is under way.
fn rolling_back() -> Error {
    Error::config(
        COMPONENT,
        "a rollback is under way: run roll_back to finish it",
    )
}
