//! The sharded store: each key routed to one shard by a strategy; batches
//! split by shard and sent to every shard at once.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::join::{by_shard, get_many_by_shard, join_all};
use super::key::{key_hash, ShardKey};
use super::strategy::{Jump, Strategy};
use crate::store::{Store, Write};
use crate::{Error, ErrorKind, Position, Result};

const COMPONENT: &str = "Sharded";

/// What a scatter-gather call does when some shards fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartialFailure {
    /// The whole call fails with the first shard's error (the default).
    #[default]
    Fail,
    /// The call returns what the other shards answered, and each failed
    /// shard's error.
    ReturnPartial,
}

/// One shard's failure in a scatter-gather call.
#[derive(Debug, Clone)]
pub struct ShardError {
    /// The shard's index.
    pub shard: usize,
    /// What went wrong there (a timeout is
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout)).
    pub error: Error,
}

/// What [`Sharded::gather`] found.
#[derive(Debug, Clone)]
pub struct Gathered<V> {
    /// One entry per key asked, in order; `None` for an absent key or a
    /// key on a failed shard (listed in `unanswered`).
    pub values: Vec<Option<V>>,
    /// The indices (into the keys asked) whose shard failed.
    pub unanswered: Vec<usize>,
    /// The failed shards.
    pub errors: Vec<ShardError>,
}

/// What [`Sharded::scatter`] did: the position each shard reached, or its
/// error.
#[derive(Debug, Clone)]
pub struct Scattered {
    /// Per shard that had writes: its index and the position it reached.
    pub written: Vec<(usize, Position)>,
    /// The shards whose part failed (their writes may or may not have
    /// been applied; writes to the other shards were).
    pub errors: Vec<ShardError>,
}

/// A snapshot of a sharded store's counters.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ShardStats {
    /// Per shard: keys routed to it (each key of a batch counts).
    pub keys: Vec<u64>,
    /// Per shard: calls made to it (a batch is one call per shard).
    pub requests: Vec<u64>,
    /// How evenly keys spread: standard deviation over mean of `keys`
    /// (0 is perfectly even).
    pub balance: f64,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Counters {
    keys: AtomicU64,
    requests: AtomicU64,
    /// The latest position a write to this shard returned.
    position: AtomicU64,
}

struct Inner<S> {
    shards: Box<[S]>,
    strategy: Box<dyn Strategy>,
    timeout: Option<Duration>,
    partial: PartialFailure,
    counters: Box<[Counters]>,
}

/// A [`Store`] spread over shards (each of which may be any store: a
/// [`ReplicaSet`](crate::replica::ReplicaSet), a cache, a database): a key
/// lives on the one shard its [`Strategy`] picks. `get_many` and
/// `write_batch` split by shard and call every shard at once. Cloning it
/// is cheap; clones share the shards. See the [module docs](super).
pub struct Sharded<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Sharded<S> {
    fn clone(&self) -> Self {
        Sharded {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Sharded<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.inner.shards)
            .field("strategy", &self.inner.strategy)
            .field("timeout", &self.inner.timeout)
            .field("partial", &self.inner.partial)
            .finish()
    }
}

impl<S> Sharded<S>
where
    S: Store,
    S::Key: ShardKey,
{
    /// Starts configuring a sharded store.
    pub fn builder() -> ShardedBuilder<S> {
        ShardedBuilder {
            shards: Vec::new(),
            strategy: None,
            timeout: None,
            partial: PartialFailure::default(),
        }
    }

    /// The shard `key` lives on.
    ///
    /// # Errors
    ///
    /// The strategy's (a directory refusing an unknown key).
    pub fn shard_of(&self, key: &S::Key) -> Result<usize> {
        let bytes = key.routing_bytes();
        self.inner.strategy.shard(&bytes, key_hash(&bytes))
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[S] {
        &self.inner.shards
    }

    fn counted(&self, shard: usize, keys: u64) -> &S {
        let counters = &self.inner.counters[shard];
        counters.keys.fetch_add(keys, Ordering::Relaxed);
        counters.requests.fetch_add(1, Ordering::Relaxed);
        &self.inner.shards[shard]
    }

    /// Runs `call` on a shard within the per-shard timeout.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match self.inner.timeout {
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Err(ErrorKind::Timeout {
                    operation: "shard call",
                    after: limit,
                }
                .into())
            }),
            None => call.await,
        }
    }

    /// Reads many keys with one `get_many` per shard, all shards at once,
    /// under the [`PartialFailure`] policy: with `ReturnPartial`, the keys
    /// of failed shards are reported instead of failing the call.
    ///
    /// # Errors
    ///
    /// With `PartialFailure::Fail`, the first failed shard's error; the
    /// strategy's for a key it cannot route.
    pub async fn gather(&self, keys: &[S::Key]) -> Result<Gathered<S::Value>> {
        let by_shard = by_shard(keys, self.inner.shards.len(), |key| self.shard_of(key))?;
        let answers = get_many_by_shard(
            keys,
            &by_shard,
            |shard, keys| self.counted(shard, keys),
            self.inner.timeout,
        )
        .await;
        let mut gathered = Gathered {
            values: vec![None; keys.len()],
            unanswered: Vec::new(),
            errors: Vec::new(),
        };
        for (shard, indices, result) in answers {
            match result {
                Ok(values) => {
                    for (&index, value) in indices.iter().zip(values) {
                        gathered.values[index] = value;
                    }
                }
                Err(error) if self.inner.partial == PartialFailure::Fail => return Err(error),
                Err(error) => {
                    gathered.unanswered.extend_from_slice(indices);
                    gathered.errors.push(ShardError { shard, error });
                }
            }
        }
        gathered.unanswered.sort_unstable();
        Ok(gathered)
    }

    /// Writes a batch with one `write_batch` per shard (in the batch's
    /// order within each shard), all shards at once, under the
    /// [`PartialFailure`] policy. Not atomic across shards: each shard's
    /// part is as atomic as that shard's `write_batch`.
    ///
    /// # Errors
    ///
    /// With `PartialFailure::Fail`, the first failed shard's error (the
    /// other shards' parts were still written); the strategy's for a key
    /// it cannot route (then nothing is written).
    pub async fn scatter(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Scattered> {
        let keys: Vec<&S::Key> = batch.iter().map(Write::key).collect();
        let by_shard = by_shard(&keys, self.inner.shards.len(), |key| self.shard_of(key))?;
        let mut writes: Vec<Option<Write<S::Key, S::Value>>> =
            batch.into_iter().map(Some).collect();
        let calls = by_shard
            .iter()
            .enumerate()
            .filter(|(_, indices)| !indices.is_empty())
            .map(|(shard, indices)| {
                let part: Vec<Write<S::Key, S::Value>> =
                    indices.iter().filter_map(|&i| writes[i].take()).collect();
                async move {
                    let store = self.counted(shard, part.len() as u64);
                    (shard, self.bounded(store.write_batch(part)).await)
                }
            })
            .collect::<Vec<_>>();
        let mut scattered = Scattered {
            written: Vec::new(),
            errors: Vec::new(),
        };
        for (shard, result) in join_all(calls).await {
            match result {
                Ok(position) => scattered.written.push((shard, position)),
                Err(error) if self.inner.partial == PartialFailure::Fail => return Err(error),
                Err(error) => scattered.errors.push(ShardError { shard, error }),
            }
        }
        Ok(scattered)
    }

    /// Records the position a shard reached after a write.
    fn reached(&self, shard: usize, position: Position) {
        self.inner.counters[shard]
            .position
            .fetch_max(position.get(), Ordering::Relaxed);
    }

    /// The store's position: the sum of the latest position of every
    /// shard, which grows with every write to any shard.
    fn position(&self) -> Position {
        Position::new(
            self.inner
                .counters
                .iter()
                .map(|c| c.position.load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add),
        )
    }

    /// The store's counters.
    pub fn stats(&self) -> ShardStats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let keys: Vec<u64> = self.inner.counters.iter().map(|c| load(&c.keys)).collect();
        let requests = self
            .inner
            .counters
            .iter()
            .map(|c| load(&c.requests))
            .collect();
        ShardStats {
            balance: std_over_mean(&keys),
            keys,
            requests,
        }
    }
}

/// Standard deviation over mean (0 for no data).
pub(super) fn std_over_mean(counts: &[u64]) -> f64 {
    let n = counts.len() as f64;
    let mean = counts.iter().sum::<u64>() as f64 / n;
    if mean == 0.0 {
        return 0.0;
    }
    let variance = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    variance.sqrt() / mean
}

impl<S> Store for Sharded<S>
where
    S: Store,
    S::Key: ShardKey,
{
    type Key = S::Key;
    type Value = S::Value;

    async fn get(&self, key: &S::Key) -> Result<Option<S::Value>> {
        let shard = self.shard_of(key)?;
        self.bounded(self.counted(shard, 1).get(key)).await
    }

    /// Resolves to the store's position: the sum of the latest position
    /// of every shard. It grows with every write, as the contract asks;
    /// it is not a read-your-writes token for one shard (read those from
    /// the shard's own store, a [`ReplicaSet`](crate::replica::ReplicaSet)
    /// say).
    async fn put(&self, key: S::Key, value: S::Value) -> Result<Position> {
        let shard = self.shard_of(&key)?;
        let position = self.bounded(self.counted(shard, 1).put(key, value)).await?;
        self.reached(shard, position);
        Ok(self.position())
    }

    async fn delete(&self, key: &S::Key) -> Result<Position> {
        let shard = self.shard_of(key)?;
        let position = self.bounded(self.counted(shard, 1).delete(key)).await?;
        self.reached(shard, position);
        Ok(self.position())
    }

    /// One `get_many` per shard, all at once; fails if any shard fails
    /// (see [`gather`](Sharded::gather) for partial results).
    async fn get_many(&self, keys: &[S::Key]) -> Result<Vec<Option<S::Value>>> {
        let gathered = self.gather(keys).await?;
        match gathered.errors.into_iter().next() {
            Some(failed) => Err(failed.error),
            None => Ok(gathered.values),
        }
    }

    /// One `write_batch` per shard, all at once; resolves to the store's
    /// position (as [`put`](Store::put)). Not atomic across shards.
    async fn write_batch(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
        let scattered = self.scatter(batch).await?;
        if let Some(failed) = scattered.errors.into_iter().next() {
            return Err(failed.error);
        }
        for &(shard, reached) in &scattered.written {
            self.reached(shard, reached);
        }
        Ok(self.position())
    }

    async fn get_versioned(&self, key: &S::Key) -> Result<Option<crate::Versioned<S::Value>>> {
        let shard = self.shard_of(key)?;
        self.bounded(self.counted(shard, 1).get_versioned(key))
            .await
    }

    /// Sent to the shard of its keys, which must all live on one shard
    /// (conditional writes are atomic within one store only); resolves
    /// to the store's position, as [`put`](Store::put).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for keys
    /// on more than one shard; the shard's errors, a conflict among them.
    async fn write_if(
        &self,
        checks: Vec<crate::Check<S::Key>>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        let mut shard = None;
        for key in checks
            .iter()
            .map(|c| c.key())
            .chain(batch.iter().map(Write::key))
        {
            let this = self.shard_of(key)?;
            match shard {
                Some(first) if first != this => {
                    return Err(Error::unsupported(
                        COMPONENT,
                        "write_if",
                        format!(
                            "its keys live on shards {first} and {this}: a conditional write is atomic within one shard only"
                        ),
                    ))
                }
                _ => shard = Some(this),
            }
        }
        let Some(shard) = shard else {
            return Ok(self.position());
        };
        let position = self
            .bounded(self.counted(shard, 1).write_if(checks, batch))
            .await?;
        self.reached(shard, position);
        Ok(self.position())
    }
}

/// Configures a [`Sharded`] store; see [`Sharded::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ShardedBuilder<S> {
    shards: Vec<S>,
    strategy: Option<Box<dyn Strategy>>,
    timeout: Option<Duration>,
    partial: PartialFailure,
}

impl<S> fmt::Debug for ShardedBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedBuilder")
            .field("shards", &self.shards.len())
            .field("strategy", &self.strategy)
            .field("timeout", &self.timeout)
            .field("partial", &self.partial)
            .finish()
    }
}

impl<S> ShardedBuilder<S>
where
    S: Store,
    S::Key: ShardKey,
{
    /// Adds a shard (shards are numbered in the order they are added).
    pub fn shard(mut self, shard: S) -> Self {
        self.shards.push(shard);
        self
    }

    /// Adds several shards.
    pub fn shards(mut self, shards: impl IntoIterator<Item = S>) -> Self {
        self.shards.extend(shards);
        self
    }

    /// How keys are spread (default: [`Jump`] over the shards added).
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategy = Some(Box::new(strategy));
        self
    }

    /// Fails a shard's part of a call that takes longer (default: none).
    pub fn per_shard_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// What scatter-gather does when some shards fail (default
    /// [`PartialFailure::Fail`]).
    pub fn partial_failure(mut self, policy: PartialFailure) -> Self {
        self.partial = policy;
        self
    }

    /// Builds the store.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for no shards, a
    /// strategy over another number of shards, or a zero timeout.
    pub fn build(self) -> Result<Sharded<S>> {
        if self.shards.is_empty() {
            return Err(Error::config(COMPONENT, "at least one shard is needed"));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config(
                COMPONENT,
                "the per-shard timeout must be above zero",
            ));
        }
        let strategy = match self.strategy {
            Some(strategy) => strategy,
            None => Box::new(Jump::new(self.shards.len())?),
        };
        if strategy.shards() != self.shards.len() {
            return Err(Error::config(
                COMPONENT,
                format!(
                    "the strategy spreads keys over {} shards, but {} were added",
                    strategy.shards(),
                    self.shards.len()
                ),
            ));
        }
        Ok(Sharded {
            inner: Arc::new(Inner {
                counters: self.shards.iter().map(|_| Counters::default()).collect(),
                shards: self.shards.into_boxed_slice(),
                strategy,
                timeout: self.timeout,
                partial: self.partial,
            }),
        })
    }
}
