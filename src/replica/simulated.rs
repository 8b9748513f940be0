//! Replication without servers: a primary and replicas in memory, fed
//! through a replication log with a delay you set (and change while it
//! runs), for examples, tests and labs of the embedded default.
//!
//! ```
//! use std::time::Duration;
//! use scalekit::replica::simulated::SimulatedPrimary;
//! use scalekit::replica::Positioned;
//! use scalekit::Store;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let primary = SimulatedPrimary::<u64, String>::new();
//! let replica = primary.replica(Duration::from_millis(20)).await?;
//! let token = primary.put(1, "one".into()).await?;
//! assert_eq!(replica.get(&1).await?, None, "not shipped yet");
//! tokio::time::sleep(Duration::from_millis(60)).await;
//! assert_eq!(replica.get(&1).await?, Some("one".into()));
//! assert!(replica.applied_position().await? >= token);
//! # Ok::<(), scalekit::Error>(()) }).unwrap();
//! ```

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::positioned::Positioned;
use crate::store::{MemoryStore, Scan, Store, Write};
use crate::{Error, Position, Result};

/// One committed write, on its way to the replicas.
struct Shipment<K, V> {
    position: Position,
    writes: Arc<[Write<K, V>]>,
    committed: Instant,
}

/// Where a replica receives the primary's shipments.
type Feed<K, V> = UnboundedSender<Arc<Shipment<K, V>>>;

struct PrimaryInner<K, V, S> {
    store: S,
    /// The position of the latest committed write.
    position: AtomicU64,
    feeds: Mutex<Vec<Feed<K, V>>>,
    /// Writes commit and ship one at a time, so replicas apply them in
    /// position order.
    order: tokio::sync::Mutex<()>,
}

/// A primary whose writes are shipped to its [`SimulatedReplica`]s: an
/// in-memory one ([`SimulatedPrimary::new`]) or any store you give it
/// ([`SimulatedPrimary::over`]: a SQLite file, say, whose replicas are
/// copies in memory). A [`Store`] and [`Positioned`] (its position is that
/// of its latest write). Cloning it is cheap; clones are one primary.
pub struct SimulatedPrimary<K, V, S = MemoryStore<K, V>> {
    inner: Arc<PrimaryInner<K, V, S>>,
}

impl<K, V, S> Clone for SimulatedPrimary<K, V, S> {
    fn clone(&self) -> Self {
        SimulatedPrimary {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V, S> fmt::Debug for SimulatedPrimary<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedPrimary")
            .field("position", &self.inner.position.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K, V> Default for SimulatedPrimary<K, V>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> SimulatedPrimary<K, V>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// An empty in-memory primary with no replicas.
    pub fn new() -> Self {
        Self::over(MemoryStore::new())
    }
}

impl<K, V, S> SimulatedPrimary<K, V, S>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<Key = K, Value = V>,
{
    /// A primary over `store`, with no replicas: every write through it
    /// reaches `store` first, then its replicas. Write to the store only
    /// through the primary, or the replicas miss those writes.
    pub fn over(store: S) -> Self {
        SimulatedPrimary {
            inner: Arc::new(PrimaryInner {
                store,
                position: AtomicU64::new(0),
                feeds: Mutex::new(Vec::new()),
                order: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The store the primary writes to.
    pub fn get_ref(&self) -> &S {
        &self.inner.store
    }

    /// A new replica: a copy of the primary now (read with
    /// [`Scan`]), then every later write, each applied `delay` after it
    /// committed.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) outside a tokio
    /// runtime (the replica applies writes in a task); the store's error if
    /// it cannot be read.
    pub async fn replica(&self, delay: Duration) -> Result<SimulatedReplica<K, V>>
    where
        S: Scan,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                "SimulatedReplica",
                "make replicas inside a tokio runtime: they apply writes in a task",
            )
        })?;
        // No write commits while the copy is taken and the feed joins.
        let _order = self.inner.order.lock().await;
        let store = MemoryStore::new();
        store
            .write_batch(
                self.inner
                    .store
                    .entries()
                    .await?
                    .into_iter()
                    .map(|(key, value)| Write::Put(key, value))
                    .collect(),
            )
            .await?;
        let shared = Arc::new(ReplicaShared {
            store,
            applied: AtomicU64::new(self.inner.position.load(Ordering::Acquire)),
            delay_nanos: AtomicU64::new(nanos(delay)),
        });
        let (feed, shipments) = unbounded_channel();
        self.inner
            .feeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(feed);
        let task = runtime.spawn(apply(Arc::clone(&shared), shipments));
        Ok(SimulatedReplica {
            shared,
            task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Commits `writes` (by `commit`) and ships them, in position order.
    async fn commit(
        &self,
        writes: Vec<Write<K, V>>,
        commit: impl std::future::Future<Output = Result<Position>>,
    ) -> Result<Position> {
        let _order = self.inner.order.lock().await;
        let position = commit.await?;
        self.inner
            .position
            .fetch_max(position.get(), Ordering::AcqRel);
        let shipment = Arc::new(Shipment {
            position,
            writes: writes.into(),
            committed: Instant::now(),
        });
        self.inner
            .feeds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|feed| feed.send(Arc::clone(&shipment)).is_ok());
        Ok(position)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl<K, V, S> Store for SimulatedPrimary<K, V, S>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<Key = K, Value = V>,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        self.inner.store.get(key).await
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        self.inner.store.get_many(keys).await
    }

    async fn put(&self, key: K, value: V) -> Result<Position> {
        let write = vec![Write::Put(key.clone(), value.clone())];
        self.commit(write, self.inner.store.put(key, value)).await
    }

    async fn delete(&self, key: &K) -> Result<Position> {
        let write = vec![Write::Delete(key.clone())];
        self.commit(write, self.inner.store.delete(key)).await
    }

    async fn write_batch(&self, batch: Vec<Write<K, V>>) -> Result<Position> {
        self.commit(batch.clone(), self.inner.store.write_batch(batch))
            .await
    }

    async fn get_versioned(&self, key: &K) -> Result<Option<crate::Versioned<V>>> {
        self.inner.store.get_versioned(key).await
    }

    /// Ships the batch to the replicas only when the checks held.
    async fn write_if(
        &self,
        checks: Vec<crate::Check<K>>,
        batch: Vec<Write<K, V>>,
    ) -> Result<Position> {
        self.commit(batch.clone(), self.inner.store.write_if(checks, batch))
            .await
    }
}

impl<K, V, S> Positioned for SimulatedPrimary<K, V, S>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    S: Store<Key = K, Value = V>,
{
    async fn applied_position(&self) -> Result<Position> {
        Ok(Position::new(self.inner.position.load(Ordering::Acquire)))
    }
}

struct ReplicaShared<K, V> {
    store: MemoryStore<K, V>,
    applied: AtomicU64,
    delay_nanos: AtomicU64,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A read-only copy of a [`SimulatedPrimary`], behind it by a delay you
/// choose; its [`applied_position`](Positioned::applied_position) is the
/// primary position of the last write it applied. Writing to it is an
/// error. Cloning it is cheap; clones are one replica.
#[derive(Clone)]
pub struct SimulatedReplica<K, V> {
    shared: Arc<ReplicaShared<K, V>>,
    task: Arc<AbortOnDrop>,
}

impl<K, V> fmt::Debug for SimulatedReplica<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedReplica")
            .field("applied", &self.shared.applied.load(Ordering::Relaxed))
            .field("delay", &self.delay())
            .finish_non_exhaustive()
    }
}

impl<K, V> SimulatedReplica<K, V> {
    /// The delay now.
    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.shared.delay_nanos.load(Ordering::Relaxed))
    }

    /// Changes the delay, for writes not applied yet (a long one is a
    /// stalled replica).
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_nanos
            .store(nanos(delay), Ordering::Relaxed);
    }

    /// Whether the task applying the primary's writes still runs.
    pub fn is_running(&self) -> bool {
        !self.task.0.is_finished()
    }
}

/// Applies shipments in order, each its delay after it committed.
async fn apply<K, V>(
    replica: Arc<ReplicaShared<K, V>>,
    mut shipments: UnboundedReceiver<Arc<Shipment<K, V>>>,
) where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    while let Some(shipment) = shipments.recv().await {
        let delay = Duration::from_nanos(replica.delay_nanos.load(Ordering::Relaxed));
        tokio::time::sleep_until(shipment.committed + delay).await;
        // A memory store does not fail.
        let _ = replica.store.write_batch(shipment.writes.to_vec()).await;
        replica
            .applied
            .fetch_max(shipment.position.get(), Ordering::Release);
    }
}

fn read_only() -> Error {
    Error::unavailable(
        "SimulatedReplica",
        "a replica is read-only: write to the primary",
    )
}

impl<K, V> Store for SimulatedReplica<K, V>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        self.shared.store.get(key).await
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        self.shared.store.get_many(keys).await
    }

    async fn put(&self, _key: K, _value: V) -> Result<Position> {
        Err(read_only())
    }

    async fn delete(&self, _key: &K) -> Result<Position> {
        Err(read_only())
    }

    async fn write_batch(&self, _batch: Vec<Write<K, V>>) -> Result<Position> {
        Err(read_only())
    }

    /// The replica's own copy, with the version it was stamped with here
    /// (a replica's versions are its own, not the primary's).
    async fn get_versioned(&self, key: &K) -> Result<Option<crate::Versioned<V>>> {
        self.shared.store.get_versioned(key).await
    }

    async fn write_if(
        &self,
        _checks: Vec<crate::Check<K>>,
        _batch: Vec<Write<K, V>>,
    ) -> Result<Position> {
        Err(read_only())
    }
}

impl<K, V> Positioned for SimulatedReplica<K, V>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    async fn applied_position(&self) -> Result<Position> {
        Ok(Position::new(self.shared.applied.load(Ordering::Acquire)))
    }
}
