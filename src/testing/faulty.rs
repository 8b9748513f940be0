//! A store wrapper that injects faults and counts calls.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::store::{Store, Write};
use crate::{Error, ErrorKind, Position, Result};

const COMPONENT: &str = "FaultyStore";
const INJECTED: &str = "injected fault";

/// One kind of [`Store`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`Store::get`].
    Get,
    /// [`Store::put`].
    Put,
    /// [`Store::delete`].
    Delete,
    /// [`Store::get_many`].
    GetMany,
    /// [`Store::write_batch`].
    WriteBatch,
    /// [`Store::get_versioned`].
    GetVersioned,
    /// [`Store::write_if`].
    WriteIf,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 7] = [
        Operation::Get,
        Operation::Put,
        Operation::Delete,
        Operation::GetMany,
        Operation::WriteBatch,
        Operation::GetVersioned,
        Operation::WriteIf,
    ];
    /// The operations that write.
    pub const WRITES: [Operation; 4] = [
        Operation::Put,
        Operation::Delete,
        Operation::WriteBatch,
        Operation::WriteIf,
    ];
    /// The operations that read.
    pub const READS: [Operation; 3] = [Operation::Get, Operation::GetMany, Operation::GetVersioned];

    fn index(self) -> usize {
        self as usize
    }
}

/// How many calls of each kind a [`FaultyStore`] saw (failed ones included),
/// and how many of them it failed on purpose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// `get` calls.
    pub get: u64,
    /// `put` calls.
    pub put: u64,
    /// `delete` calls.
    pub delete: u64,
    /// `get_many` calls.
    pub get_many: u64,
    /// `write_batch` calls.
    pub write_batch: u64,
    /// `get_versioned` calls.
    pub get_versioned: u64,
    /// `write_if` calls.
    pub write_if: u64,
    /// Calls failed by an injected fault.
    pub injected_faults: u64,
}

impl CallCounts {
    /// All calls of every kind.
    pub fn total(&self) -> u64 {
        self.get
            + self.put
            + self.delete
            + self.get_many
            + self.write_batch
            + self.get_versioned
            + self.write_if
    }
}

/// Deterministic pseudo-random numbers (SplitMix64): the same seed gives the
/// same faults on every machine and every version of every dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A [`Store`] wrapper for tests: adds latency, fails calls on a schedule,
/// and counts calls per operation.
///
/// Injected faults happen *before* the inner store is called, so a failed
/// write was certainly not applied; [`FaultyStore::is_injected`] tells an
/// injected error from a real one.
///
/// ```
/// use std::time::Duration;
/// use scalekit::testing::{FaultyStore, Operation};
/// use scalekit::{MemoryStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = FaultyStore::builder(MemoryStore::<u64, u64>::new())
///     .fail_every(3)
///     .on(&Operation::WRITES)
///     .build()?;
/// assert!(store.put(1, 1).await.is_ok());
/// assert!(store.put(2, 2).await.is_ok());
/// let third = store.put(3, 3).await.unwrap_err();
/// assert!(FaultyStore::<MemoryStore<u64, u64>>::is_injected(&third));
/// assert_eq!(store.get(&3).await?, None, "a failed write was not applied");
/// assert_eq!(store.calls().put, 3);
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct FaultyStore<S> {
    inner: S,
    latency: Duration,
    jitter: Duration,
    fail_every: Option<u64>,
    probability: f64,
    rng: Mutex<SplitMix64>,
    applies_to: [bool; Operation::ALL.len()],
    fail_all: AtomicBool,
    /// While `true`, every call waits (a server that accepts and never
    /// answers).
    hanging: tokio::sync::watch::Sender<bool>,
    counts: [AtomicU64; Operation::ALL.len()],
    /// Calls seen by the faults, for `fail_every`.
    eligible_calls: AtomicU64,
    injected: AtomicU64,
    /// At most this many calls at once (a server's connections).
    slots: Option<Semaphore>,
    capacity: usize,
    /// Nanoseconds that calls spent inside, summed over calls.
    busy_nanos: AtomicU64,
}

/// A call inside the store: holds a slot, and adds its time to the busy
/// total when it ends.
struct Occupied<'a> {
    busy_nanos: &'a AtomicU64,
    since: Instant,
    _slot: Option<SemaphorePermit<'a>>,
}

impl Drop for Occupied<'_> {
    fn drop(&mut self) {
        let nanos = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_nanos.fetch_add(nanos, Ordering::AcqRel);
    }
}

impl<S: fmt::Debug> fmt::Debug for FaultyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .field("latency", &self.latency)
            .field("jitter", &self.jitter)
            .field("fail_every", &self.fail_every)
            .field("probability", &self.probability)
            .field("fail_all", &self.fail_all.load(Ordering::Relaxed))
            .field("capacity", &self.slots.as_ref().map(|_| self.capacity))
            .field("calls", &self.calls())
            .finish()
    }
}

impl<S> FaultyStore<S> {
    /// Starts configuring faults around `inner`.
    pub fn builder(inner: S) -> FaultyStoreBuilder<S> {
        FaultyStoreBuilder {
            inner,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_every: None,
            probability: None,
            on: Operation::ALL.to_vec(),
            capacity: None,
        }
    }

    /// Wraps `inner` with no faults: only counting (faults can be switched
    /// on later with [`set_failing`](Self::set_failing)).
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            fail_every: None,
            probability: 0.0,
            rng: Mutex::new(SplitMix64(0)),
            applies_to: [true; Operation::ALL.len()],
            fail_all: AtomicBool::new(false),
            hanging: tokio::sync::watch::Sender::new(false),
            counts: Default::default(),
            eligible_calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            slots: None,
            capacity: 0,
            busy_nanos: AtomicU64::new(0),
        }
    }

    /// The time calls have spent inside the store (waiting for a slot not
    /// included), summed over calls. Divided by the elapsed time and by
    /// the [`capacity`](FaultyStoreBuilder::capacity) it is the store's
    /// utilisation: near 1, the store is the bottleneck.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_nanos.load(Ordering::Acquire))
    }

    /// The most calls served at once, if the store has a
    /// [`capacity`](FaultyStoreBuilder::capacity).
    pub fn capacity(&self) -> Option<usize> {
        self.slots.as_ref().map(|_| self.capacity)
    }

    /// Waits for a slot (with a capacity) and starts timing the call.
    async fn occupy(&self) -> Occupied<'_> {
        let slot = match &self.slots {
            // The semaphore is never closed.
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        Occupied {
            busy_nanos: &self.busy_nanos,
            since: Instant::now(),
            _slot: slot,
        }
    }

    /// While `true`, every call of the configured operations fails (an
    /// outage); `false` restores the schedule.
    pub fn set_failing(&self, failing: bool) {
        self.fail_all.store(failing, Ordering::Release);
    }

    /// While `true`, every call (the position of a replica too) waits
    /// without answering, as over a server that accepts connections and
    /// never replies; `false` lets the waiting calls go on. Only a caller's
    /// timeout ends such a call.
    pub fn set_hanging(&self, hanging: bool) {
        self.hanging.send_replace(hanging);
    }

    /// Waits while the store hangs.
    async fn hang(&self) {
        let mut hanging = self.hanging.subscribe();
        let _ = hanging.wait_for(|hanging| !hanging).await;
    }

    /// The calls counted so far.
    pub fn calls(&self) -> CallCounts {
        let count = |op: Operation| self.counts[op.index()].load(Ordering::Acquire);
        CallCounts {
            get: count(Operation::Get),
            put: count(Operation::Put),
            delete: count(Operation::Delete),
            get_many: count(Operation::GetMany),
            write_batch: count(Operation::WriteBatch),
            get_versioned: count(Operation::GetVersioned),
            write_if: count(Operation::WriteIf),
            injected_faults: self.injected.load(Ordering::Acquire),
        }
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether `error` is one this wrapper injected.
    pub fn is_injected(error: &Error) -> bool {
        is_injected(error)
    }

    /// A random delay up to the configured jitter (zero without jitter).
    fn random_jitter(&self) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|poison| poison.into_inner());
        self.jitter.mul_f64(rng.next_f64())
    }

    /// Waits the response half of the jitter, after the inner call.
    async fn leave(&self) {
        let delay = self.random_jitter();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    /// Counts the call, sleeps the latency, and decides whether it fails.
    async fn enter(&self, op: Operation) -> Result<()> {
        self.counts[op.index()].fetch_add(1, Ordering::AcqRel);
        self.hang().await;
        let delay = self.latency + self.random_jitter();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if !self.applies_to[op.index()] {
            return Ok(());
        }
        let nth = self.eligible_calls.fetch_add(1, Ordering::AcqRel) + 1;
        let scheduled = self.fail_every.is_some_and(|n| nth.is_multiple_of(n));
        let random = self.probability > 0.0 && {
            let mut rng = self.rng.lock().unwrap_or_else(|poison| poison.into_inner());
            rng.next_f64() < self.probability
        };
        if self.fail_all.load(Ordering::Acquire) || scheduled || random {
            self.injected.fetch_add(1, Ordering::AcqRel);
            return Err(Error::unavailable(COMPONENT, INJECTED));
        }
        Ok(())
    }
}

/// Whether `error` was injected by a [`FaultyStore`].
pub(crate) fn is_injected(error: &Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Unavailable { component: COMPONENT, reason, .. } if reason == INJECTED
    )
}

impl<S: Store> Store for FaultyStore<S> {
    type Key = S::Key;
    type Value = S::Value;

    async fn get(&self, key: &S::Key) -> Result<Option<S::Value>> {
        let _inside = self.occupy().await;
        self.enter(Operation::Get).await?;
        let answer = self.inner.get(key).await;
        self.leave().await;
        answer
    }

    async fn put(&self, key: S::Key, value: S::Value) -> Result<Position> {
        let _inside = self.occupy().await;
        self.enter(Operation::Put).await?;
        let answer = self.inner.put(key, value).await;
        self.leave().await;
        answer
    }

    async fn delete(&self, key: &S::Key) -> Result<Position> {
        let _inside = self.occupy().await;
        self.enter(Operation::Delete).await?;
        let answer = self.inner.delete(key).await;
        self.leave().await;
        answer
    }

    async fn get_many(&self, keys: &[S::Key]) -> Result<Vec<Option<S::Value>>> {
        let _inside = self.occupy().await;
        self.enter(Operation::GetMany).await?;
        let answer = self.inner.get_many(keys).await;
        self.leave().await;
        answer
    }

    async fn write_batch(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
        let _inside = self.occupy().await;
        self.enter(Operation::WriteBatch).await?;
        let answer = self.inner.write_batch(batch).await;
        self.leave().await;
        answer
    }

    async fn get_versioned(&self, key: &S::Key) -> Result<Option<crate::Versioned<S::Value>>> {
        let _inside = self.occupy().await;
        self.enter(Operation::GetVersioned).await?;
        let answer = self.inner.get_versioned(key).await;
        self.leave().await;
        answer
    }

    async fn write_if(
        &self,
        checks: Vec<crate::Check<S::Key>>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        let _inside = self.occupy().await;
        self.enter(Operation::WriteIf).await?;
        let answer = self.inner.write_if(checks, batch).await;
        self.leave().await;
        answer
    }
}

/// Configures a [`FaultyStore`]; see [`FaultyStore::builder`].
#[derive(Debug)]
pub struct FaultyStoreBuilder<S> {
    inner: S,
    latency: Duration,
    jitter: Duration,
    fail_every: Option<u64>,
    probability: Option<(f64, u64)>,
    on: Vec<Operation>,
    capacity: Option<usize>,
}

impl<S> FaultyStoreBuilder<S> {
    /// Sleeps this long (on tokio's clock) before every call.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Adds a random delay of up to `jitter` before the inner call and
    /// another after it (drawn from the seeded generator), so concurrent
    /// calls interleave in many orders: the request and the response of a
    /// real network both take varying time.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Serves at most `calls` calls at once, as a server with that many
    /// connections or cores does; the others queue (first come, first
    /// served). With a [`latency`](Self::latency) this makes the store a
    /// resource that saturates: `calls / latency` operations a second at
    /// most. Without it, calls never queue.
    pub fn capacity(mut self, calls: usize) -> Self {
        self.capacity = Some(calls);
        self
    }

    /// Fails every `n`th call of the chosen operations (`n` ≥ 1).
    pub fn fail_every(mut self, n: u64) -> Self {
        self.fail_every = Some(n);
        self
    }

    /// Fails each call of the chosen operations with `probability`
    /// (0 to 1), drawn from a generator seeded with `seed`.
    pub fn fail_with_probability(mut self, probability: f64, seed: u64) -> Self {
        self.probability = Some((probability, seed));
        self
    }

    /// Which operations faults apply to (default: all). Latency and counts
    /// apply to every operation.
    pub fn on(mut self, operations: &[Operation]) -> Self {
        self.on = operations.to_vec();
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for `fail_every(0)`, a probability outside 0 to 1,
    /// an empty operation list, or a capacity of 0 or over
    /// [`Semaphore::MAX_PERMITS`].
    pub fn build(self) -> Result<FaultyStore<S>> {
        if self.fail_every == Some(0) {
            return Err(Error::config(
                COMPONENT,
                "fail_every takes a whole number from 1 up",
            ));
        }
        let (probability, seed) = self.probability.unwrap_or((0.0, 0));
        if !(0.0..=1.0).contains(&probability) {
            return Err(Error::config(
                COMPONENT,
                format!("a fault probability must be from 0 to 1, not {probability}"),
            ));
        }
        if self.on.is_empty() {
            return Err(Error::config(
                COMPONENT,
                "faults must apply to at least one operation",
            ));
        }
        if let Some(calls) = self.capacity {
            if calls == 0 || calls > Semaphore::MAX_PERMITS {
                return Err(Error::config(
                    COMPONENT,
                    format!(
                        "a capacity is from 1 to {} calls, not {calls}",
                        Semaphore::MAX_PERMITS
                    ),
                ));
            }
        }
        let mut store = FaultyStore::new(self.inner);
        if let Some(calls) = self.capacity {
            store.slots = Some(Semaphore::new(calls));
            store.capacity = calls;
        }
        store.latency = self.latency;
        store.jitter = self.jitter;
        store.fail_every = self.fail_every;
        store.probability = probability;
        store.rng = Mutex::new(SplitMix64(seed));
        store.applies_to = [false; Operation::ALL.len()];
        for op in self.on {
            store.applies_to[op.index()] = true;
        }
        Ok(store)
    }
}

/// Positioned as its inner store is, except during an outage
/// ([`set_failing`](FaultyStore::set_failing)): then asking for the
/// position fails too, as a health check of a dead replica would.
impl<S: crate::replica::Positioned> crate::replica::Positioned for FaultyStore<S> {
    async fn applied_position(&self) -> Result<Position> {
        self.hang().await;
        if self.fail_all.load(Ordering::Acquire) {
            return Err(Error::unavailable(COMPONENT, INJECTED));
        }
        self.inner.applied_position().await
    }
}

/// Lists its inner store's entries, failing during an outage.
impl<S: crate::store::Scan> crate::store::Scan for FaultyStore<S> {
    async fn entries(&self) -> Result<Vec<(S::Key, S::Value)>> {
        if self.fail_all.load(Ordering::Acquire) {
            return Err(Error::unavailable(COMPONENT, INJECTED));
        }
        self.inner.entries().await
    }
}
