//! The machinery shared by the cache layers: single-flight loads, the
//! write fence that prevents stale fills, batch loads, refresh-ahead.
//!
//! # How a stale fill is prevented
//!
//! Keys hash onto stripes; each stripe has an `epoch` and a count of
//! writes in flight, behind an async mutex. A write, before it touches the
//! store, bumps its stripes' epochs and counts itself in flight; after the
//! store answers it updates or invalidates the tier *under the stripe
//! lock*. A load notes its stripe's epoch (and whether a write was in
//! flight) before reading the store, and fills the tier only if, under the
//! same lock, the epoch has not moved and no write was in flight. So a load
//! that may have read a value older than a write never reaches the tier
//! after that write. Writes also detach in-flight loads of their keys, so a
//! read that starts after a write returned never joins a load that started
//! before it. Writes to other keys of the same stripe cost at most a
//! skipped fill, never a wrong one.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;
use tracing::Instrument;

use super::stats::{CacheStats, Counters};
use super::tier::CacheTier;
use crate::store::{Check, Store, Write};
use crate::{Error, Position, Result};

const STRIPES: usize = 1024;

/// What a cache layer keeps in its tier for one key: the value (or its
/// absence, for negative caching) and when it was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<V> {
    /// The value; `None` records that the key was absent.
    pub value: Option<V>,
    /// When it was loaded or written, on tokio's clock.
    pub loaded_at: Instant,
}

/// The answer of a load, shared with every waiter; `None` until it lands.
type Outcome<V> = Option<Result<Option<V>>>;
type Flight<V> = watch::Receiver<Outcome<V>>;
/// A key whose load this caller leads: the key, where to send the answer,
/// and the flight waiters joined (to recognise it when removing it).
type Led<K, V> = (K, watch::Sender<Outcome<V>>, Flight<V>);

#[derive(Debug, Default)]
struct Stripe {
    epoch: u64,
    writes_in_flight: u32,
}

/// A stripe's state when a load started.
#[derive(Debug, Clone, Copy)]
struct LoadFence {
    epoch: u64,
    no_write_in_flight: bool,
}

/// A write's hold on one stripe.
#[derive(Debug, Clone, Copy)]
struct WriteFence {
    stripe: usize,
    epoch: u64,
    alone: bool,
}

/// Tells other processes which keys changed (see `RedisInvalidation`).
#[async_trait::async_trait]
pub(crate) trait Broadcast<K>: fmt::Debug + Send + Sync {
    async fn publish(&self, keys: &[K]) -> Result<()>;
}

/// A started cross-process invalidation: the publisher, and the listener
/// task to stop with the cache.
pub(crate) type CrossProcess<K> = (Arc<dyn Broadcast<K>>, tokio::task::JoinHandle<()>);

/// Releases a write's stripes if the store panics mid-write, so the
/// stripes do not stay fenced forever; the written keys are invalidated,
/// since what the store kept is unknown. Disarmed (`core: None`) once the
/// store has answered.
struct FenceRelease<S, T>
where
    S: Store,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    core: Option<Arc<Core<S, T>>>,
    stripes: Vec<usize>,
    keys: Vec<S::Key>,
}

impl<S, T> Drop for FenceRelease<S, T>
where
    S: Store,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        let (stripes, keys) = (
            std::mem::take(&mut self.stripes),
            std::mem::take(&mut self.keys),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { core.release_after_panic(stripes, keys).await });
        }
    }
}

/// Unregisters a load's flights when its task ends, also by a panic of
/// the store: a flight left registered with its sender gone would fail
/// every later read of the key, however healthy the store.
struct FlightsDone<S: Store, T> {
    core: Arc<Core<S, T>>,
    flights: Vec<(S::Key, Flight<S::Value>)>,
}

impl<S: Store, T> Drop for FlightsDone<S, T> {
    fn drop(&mut self) {
        for (key, flight) in self.flights.drain(..) {
            self.core
                .flights
                .remove_if(&key, |_, current| current.same_channel(&flight));
        }
    }
}

/// The rest of a read that did not hit at once.
pub(crate) type BoxedRead<'a, V> = Pin<Box<dyn Future<Output = Result<Option<V>>> + Send + 'a>>;

/// What an in-process tier said about a key, before any future.
pub(crate) enum Probe<V> {
    /// Cached (the value, or a cached absence).
    Hit(Option<V>),
    /// Not cached.
    Miss,
    /// The tier cannot answer at once: ask its async `get`.
    AskTier,
}

/// What a write does to the tier once the store has taken it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// Remove the key (read-through).
    Invalidate,
    /// Put the written value in the tier (write-through).
    Update,
}

#[derive(Debug, Clone)]
pub(crate) struct CacheConfig {
    pub(crate) ttl: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) refresh_after: Option<Duration>,
    pub(crate) mode: WriteMode,
}

pub(crate) struct Core<S: Store, T> {
    pub(crate) store: S,
    pub(crate) tier: T,
    flights: DashMap<S::Key, Flight<S::Value>>,
    stripes: Box<[Mutex<Stripe>]>,
    hasher: RandomState,
    pub(crate) config: CacheConfig,
    pub(crate) counters: Counters,
    broadcast: Option<Arc<dyn Broadcast<S::Key>>>,
    listener: Option<tokio::task::AbortHandle>,
}

impl<S: Store, T> Drop for Core<S, T> {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl<S: Store, T: fmt::Debug> fmt::Debug for Core<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("store", &self.store)
            .field("tier", &self.tier)
            .field("config", &self.config)
            .field("loads_in_flight", &self.flights.len())
            .field("broadcast", &self.broadcast)
            .finish()
    }
}

/// The store gave a batch answer of the wrong length.
#[derive(Debug)]
struct WrongAnswerCount {
    asked: usize,
    answered: usize,
}

impl fmt::Display for WrongAnswerCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "get_many asked for {} keys and got {} answers",
            self.asked, self.answered
        )
    }
}

impl std::error::Error for WrongAnswerCount {}

fn task_failed(what: &str) -> Error {
    Error::unavailable("cache", format!("the {what} task ended without an answer"))
}

impl<S, T> Core<S, T>
where
    S: Store,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    pub(crate) fn new(
        store: S,
        tier: T,
        config: CacheConfig,
        cross_process: Option<CrossProcess<S::Key>>,
    ) -> Self {
        let (broadcast, listener) = match cross_process {
            Some((broadcast, listener)) => (Some(broadcast), Some(listener.abort_handle())),
            None => (None, None),
        };
        Core {
            store,
            tier,
            flights: DashMap::new(),
            stripes: (0..STRIPES)
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            hasher: RandomState::new(),
            config,
            counters: Counters::default(),
            broadcast,
            listener,
        }
    }

    /// Tells the other processes (if any listen) that `keys` changed;
    /// `false` if they could not be told.
    async fn publish(&self, keys: &[S::Key]) -> bool {
        if let Some(broadcast) = &self.broadcast {
            if broadcast.publish(keys).await.is_err() {
                Counters::bump(&self.counters.publish_failures);
                return false;
            }
        }
        true
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.counters.snapshot(self.tier.evictions())
    }

    fn stripe_of(&self, key: &S::Key) -> usize {
        self.hasher.hash_one(key) as usize & (STRIPES - 1)
    }

    /// The tier's entry, or `None` on a miss or a tier failure.
    #[inline]
    async fn lookup(&self, key: &S::Key) -> Option<Cached<S::Value>> {
        match self.tier.get(key).await {
            Ok(entry) => entry,
            Err(_) => {
                Counters::bump(&self.counters.tier_errors);
                None
            }
        }
    }

    /// Whether an entry loaded at `loaded_at` is due for refresh-ahead.
    #[inline(always)]
    fn is_due(&self, loaded_at: Instant) -> bool {
        self.config
            .refresh_after
            .is_some_and(|refresh_after| loaded_at.elapsed() >= refresh_after)
    }

    /// Counts a hit and starts a refresh when the entry is due for one.
    #[inline(always)]
    fn hit(self: &Arc<Self>, key: &S::Key, due: bool) {
        self.counters.hits.add(1);
        if due {
            self.refresh(key);
        }
    }

    /// Starts one background reload of `key` unless a load is in flight.
    #[cold]
    fn refresh(self: &Arc<Self>, key: &S::Key) {
        if !self.flights.contains_key(key) {
            let (_, led) = self.join_or_lead(key);
            if led {
                Counters::bump(&self.counters.refreshes);
            }
        }
    }

    /// Asks a tier that answers at once (in-process) about `key`, without
    /// creating a future; counts a hit. Only the value is copied out of
    /// the tier, under its lock.
    #[inline(always)]
    pub(crate) fn try_hit(self: &Arc<Self>, key: &S::Key) -> Probe<S::Value> {
        let read = |entry: &Cached<S::Value>| (entry.value.clone(), self.is_due(entry.loaded_at));
        match self.tier.get_now_with(key, read) {
            Some(Some((value, due))) => {
                self.hit(key, due);
                Probe::Hit(value)
            }
            Some(None) => Probe::Miss,
            None => Probe::AskTier,
        }
    }

    /// [`finish_get`](Self::finish_get) boxed (a miss allocates anyway) and
    /// out of line, so a read's future stays a few words and its hit a
    /// few instructions of straight-line code.
    #[cold]
    #[inline(never)]
    pub(crate) fn finish_get_boxed<'a>(
        self: &'a Arc<Self>,
        key: &'a S::Key,
        probe: Probe<S::Value>,
    ) -> BoxedRead<'a, S::Value> {
        Box::pin(self.finish_get(key, probe))
    }

    /// The rest of a read after [`try_hit`](Self::try_hit): the tier's
    /// async `get` if it must be asked, then a single-flight load on a miss.
    pub(crate) async fn finish_get(
        self: &Arc<Self>,
        key: &S::Key,
        probe: Probe<S::Value>,
    ) -> Result<Option<S::Value>> {
        match probe {
            Probe::Hit(value) => Ok(value),
            Probe::Miss => self.miss(key).await,
            Probe::AskTier => match self.lookup(key).await {
                Some(entry) => {
                    self.hit(key, self.is_due(entry.loaded_at));
                    Ok(entry.value)
                }
                None => self.miss(key).await,
            },
        }
    }

    /// Counts a miss and waits for the key's single-flight load.
    async fn miss(self: &Arc<Self>, key: &S::Key) -> Result<Option<S::Value>> {
        self.counters.misses.add(1);
        let (flight, _) = self.join_or_lead(key);
        Self::wait(flight).await
    }

    /// Joins the load of `key` in flight, or starts one; `true` if started.
    fn join_or_lead(self: &Arc<Self>, key: &S::Key) -> (Flight<S::Value>, bool) {
        let (flight, sender) = match self.flights.entry(key.clone()) {
            Entry::Occupied(entry) => (entry.get().clone(), None),
            Entry::Vacant(entry) => {
                let (sender, flight) = watch::channel(None);
                entry.insert(flight.clone());
                (flight, Some(sender))
            }
        };
        let led = sender.is_some();
        if let Some(sender) = sender {
            self.spawn_load(key.clone(), sender, flight.clone());
        }
        (flight, led)
    }

    async fn wait(mut flight: Flight<S::Value>) -> Result<Option<S::Value>> {
        let outcome = flight
            .wait_for(Option::is_some)
            .await
            .map_err(|_| task_failed("load"))?;
        match outcome.as_ref() {
            Some(result) => result.clone(),
            None => Err(task_failed("load")),
        }
    }

    async fn load_fence(&self, key: &S::Key) -> LoadFence {
        let stripe = self.stripes[self.stripe_of(key)].lock().await;
        LoadFence {
            epoch: stripe.epoch,
            no_write_in_flight: stripe.writes_in_flight == 0,
        }
    }

    fn record_load(&self, started: Instant, ok: bool) {
        Counters::bump(&self.counters.loads);
        if !ok {
            Counters::bump(&self.counters.load_failures);
        }
        self.counters
            .load_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Loads one key in its own task, so no waiter's cancellation stops it.
    fn spawn_load(
        self: &Arc<Self>,
        key: S::Key,
        sender: watch::Sender<Outcome<S::Value>>,
        flight: Flight<S::Value>,
    ) {
        let core = Arc::clone(self);
        let span = tracing::debug_span!("scalekit.cache.load", keys = 1);
        tokio::spawn(
            async move {
                let done = FlightsDone {
                    core: Arc::clone(&core),
                    flights: vec![(key.clone(), flight)],
                };
                let fence = core.load_fence(&key).await;
                let started = Instant::now();
                let result = core.store.get(&key).await;
                core.record_load(started, result.is_ok());
                if let Ok(value) = &result {
                    core.fill(&key, value, fence).await;
                }
                let _ = sender.send(Some(result));
                drop(done);
            }
            .instrument(span),
        );
    }

    /// Puts a loaded value in the tier unless a write raced with the load.
    async fn fill(&self, key: &S::Key, value: &Option<S::Value>, fence: LoadFence) {
        let stripe = self.stripes[self.stripe_of(key)].lock().await;
        if !fence.no_write_in_flight || stripe.epoch != fence.epoch {
            Counters::bump(&self.counters.stale_fills_prevented);
            return;
        }
        let ttl = match value {
            Some(_) => self.config.ttl,
            None => match self.config.negative_ttl {
                Some(ttl) => Some(ttl),
                None => return,
            },
        };
        let entry = Cached {
            value: value.clone(),
            loaded_at: Instant::now(),
        };
        if self.tier.insert(key.clone(), entry, ttl).await.is_err() {
            Counters::bump(&self.counters.tier_errors);
        }
        drop(stripe);
    }

    pub(crate) async fn get_many(
        self: &Arc<Self>,
        keys: &[S::Key],
    ) -> Result<Vec<Option<S::Value>>> {
        let mut answers = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let entry = match self.tier.get_now(key) {
                Some(entry) => entry,
                None => self.lookup(key).await,
            };
            match entry {
                Some(entry) => {
                    self.hit(key, self.is_due(entry.loaded_at));
                    answers.push(entry.value);
                }
                None => {
                    self.counters.misses.add(1);
                    answers.push(None);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return Ok(answers);
        }
        let mut flight_of: HashMap<&S::Key, Flight<S::Value>> = HashMap::new();
        let mut to_load = Vec::new();
        for &i in &missing {
            let key = &keys[i];
            if flight_of.contains_key(key) {
                continue;
            }
            let flight = match self.flights.entry(key.clone()) {
                Entry::Occupied(entry) => entry.get().clone(),
                Entry::Vacant(entry) => {
                    let (sender, flight) = watch::channel(None);
                    entry.insert(flight.clone());
                    to_load.push((key.clone(), sender, flight.clone()));
                    flight
                }
            };
            flight_of.insert(key, flight);
        }
        if !to_load.is_empty() {
            self.spawn_batch_load(to_load);
        }
        for i in missing {
            let flight = flight_of[&keys[i]].clone();
            answers[i] = Self::wait(flight).await?;
        }
        Ok(answers)
    }

    /// Loads many keys with one `get_many` on the store, in its own task.
    fn spawn_batch_load(self: &Arc<Self>, batch: Vec<Led<S::Key, S::Value>>) {
        let core = Arc::clone(self);
        let span = tracing::debug_span!("scalekit.cache.load", keys = batch.len());
        tokio::spawn(
            async move {
                let done = FlightsDone {
                    core: Arc::clone(&core),
                    flights: batch
                        .iter()
                        .map(|(key, _, flight)| (key.clone(), flight.clone()))
                        .collect(),
                };
                let mut fences = Vec::with_capacity(batch.len());
                for (key, _, _) in &batch {
                    fences.push(core.load_fence(key).await);
                }
                let keys: Vec<S::Key> = batch.iter().map(|(key, _, _)| key.clone()).collect();
                let started = Instant::now();
                let result = core.store.get_many(&keys).await.and_then(|values| {
                    if values.len() == keys.len() {
                        Ok(values)
                    } else {
                        Err(Error::backend(
                            "cache",
                            "get_many",
                            WrongAnswerCount {
                                asked: keys.len(),
                                answered: values.len(),
                            },
                        ))
                    }
                });
                core.record_load(started, result.is_ok());
                match result {
                    Ok(values) => {
                        for (((key, sender, _), value), fence) in
                            batch.into_iter().zip(values).zip(fences)
                        {
                            core.fill(&key, &value, fence).await;
                            let _ = sender.send(Some(Ok(value)));
                        }
                    }
                    Err(error) => {
                        for (_, sender, _) in batch {
                            let _ = sender.send(Some(Err(error.clone())));
                        }
                    }
                }
                drop(done);
            }
            .instrument(span),
        );
    }

    /// Runs a write in its own task (so a cancelled caller cannot leave a
    /// stripe fenced) and waits for it.
    pub(crate) async fn write(
        self: &Arc<Self>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        let core = Arc::clone(self);
        tokio::spawn(async move { core.write_fenced(None, batch).await })
            .await
            .map_err(|_| task_failed("write"))?
    }

    /// A conditional write through the store; the tier is updated or
    /// invalidated as after a plain write of the batch.
    pub(crate) async fn write_if(
        self: &Arc<Self>,
        checks: Vec<Check<S::Key>>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        let core = Arc::clone(self);
        tokio::spawn(async move { core.write_fenced(Some(checks), batch).await })
            .await
            .map_err(|_| task_failed("write_if"))?
    }

    async fn write_fenced(
        self: &Arc<Self>,
        checks: Option<Vec<Check<S::Key>>>,
        batch: Vec<Write<S::Key, S::Value>>,
    ) -> Result<Position> {
        // What the tier needs afterwards: the last write per key, with its
        // value only when the tier is updated (write-through).
        // A conditional write that succeeds leaves exactly its batch, as
        // a plain one does; one that fails changes nothing, and its keys
        // are dropped as after any failed write.
        let finals = match self.config.mode {
            WriteMode::Update => Write::coalesce(batch.clone()),
            WriteMode::Invalidate => Write::coalesce(
                batch
                    .iter()
                    .map(|write| Write::Delete(write.key().clone()))
                    .collect(),
            ),
        };
        let mut stripes: Vec<usize> = finals.iter().map(|w| self.stripe_of(w.key())).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut fences = Vec::with_capacity(stripes.len());
        for &index in &stripes {
            let mut stripe = self.stripes[index].lock().await;
            stripe.epoch += 1;
            stripe.writes_in_flight += 1;
            fences.push(WriteFence {
                stripe: index,
                epoch: stripe.epoch,
                alone: stripe.writes_in_flight == 1,
            });
        }
        for write in &finals {
            self.flights.remove(write.key());
        }
        let mut unwinding = FenceRelease {
            core: Some(Arc::clone(self)),
            stripes: stripes.clone(),
            keys: finals.iter().map(|w| w.key().clone()).collect(),
        };
        let result = match (checks, <[_; 1]>::try_from(batch)) {
            (Some(checks), Ok(batch)) => self.store.write_if(checks, batch.into()).await,
            (Some(checks), Err(batch)) => self.store.write_if(checks, batch).await,
            (None, Ok([Write::Put(key, value)])) => self.store.put(key, value).await,
            (None, Ok([Write::Delete(key)])) => self.store.delete(&key).await,
            (None, Err(batch)) => self.store.write_batch(batch).await,
        };
        unwinding.core = None;
        let mut unsettled = 0;
        for fence in fences {
            let mut stripe = self.stripes[fence.stripe].lock().await;
            let undisturbed = fence.alone && stripe.epoch == fence.epoch;
            stripe.writes_in_flight -= 1;
            for write in finals
                .iter()
                .filter(|w| self.stripe_of(w.key()) == fence.stripe)
            {
                self.flights.remove(write.key());
                if !self.settle(write, result.is_ok(), undisturbed).await {
                    unsettled += 1;
                }
            }
        }
        let mut told = true;
        if self.broadcast.is_some() {
            let keys: Vec<S::Key> = finals.iter().map(|w| w.key().clone()).collect();
            told = self.publish(&keys).await;
        }
        match result {
            Ok(_) if !told => Err(Error::unavailable(
                "cache",
                "the write reached the store, but the other processes could not be told: their cached entries may be stale (writing again publishes again)",
            )),
            Ok(_) if unsettled > 0 => Err(Error::unavailable(
                "cache",
                format!(
                    "the write reached the store, but the tier could neither update nor drop {unsettled} of its keys: their cached entries may be stale until they expire (writing again retries the tier)"
                ),
            )),
            result => result,
        }
    }

    /// The end of a write whose store call panicked.
    async fn release_after_panic(&self, stripes: Vec<usize>, keys: Vec<S::Key>) {
        for index in stripes {
            let mut stripe = self.stripes[index].lock().await;
            stripe.epoch += 1;
            stripe.writes_in_flight = stripe.writes_in_flight.saturating_sub(1);
        }
        for key in &keys {
            self.flights.remove(key);
            self.remove_from_tier(key).await;
        }
    }

    /// Updates or invalidates the tier after a write (under its stripe
    /// lock); `false` if the tier could do neither, so its entry may be
    /// stale. A failed write invalidates too: the store may have applied
    /// it (an error means "not known to have happened").
    async fn settle(&self, write: &Write<S::Key, S::Value>, ok: bool, undisturbed: bool) -> bool {
        let key = write.key();
        if ok && undisturbed && self.config.mode == WriteMode::Update {
            let (value, ttl) = match write {
                Write::Put(_, value) => (Some(value.clone()), self.config.ttl),
                Write::Delete(_) => match self.config.negative_ttl {
                    Some(ttl) => (None, Some(ttl)),
                    None => return self.drop_from_tier(key).await,
                },
            };
            let entry = Cached {
                value,
                loaded_at: Instant::now(),
            };
            if self.tier.insert(key.clone(), entry, ttl).await.is_ok() {
                return true;
            }
            Counters::bump(&self.counters.tier_errors);
        }
        self.drop_from_tier(key).await
    }

    /// Removes `key` from the tier, trying three times; `false` if every
    /// try failed.
    async fn drop_from_tier(&self, key: &S::Key) -> bool {
        for _ in 0..3 {
            if self.tier.remove(key).await.is_ok() {
                return true;
            }
            Counters::bump(&self.counters.tier_errors);
        }
        false
    }

    async fn remove_from_tier(&self, key: &S::Key) {
        if self.tier.remove(key).await.is_err() {
            Counters::bump(&self.counters.tier_errors);
        }
    }

    /// Drops `key` from the tier and detaches its loads in flight, fenced
    /// like a write, so no load that started before can fill it back; then
    /// tells the other processes.
    pub(crate) async fn invalidate(&self, key: &S::Key) {
        self.invalidate_local(key).await;
        let _ = self.publish(std::slice::from_ref(key)).await;
    }

    /// [`invalidate`](Self::invalidate) in this process only.
    pub(crate) async fn invalidate_local(&self, key: &S::Key) {
        let mut stripe = self.stripes[self.stripe_of(key)].lock().await;
        stripe.epoch += 1;
        self.flights.remove(key);
        self.remove_from_tier(key).await;
    }

    /// Empties the tier, fencing every stripe first so no load in flight
    /// can fill an entry back.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn clear_local(&self) {
        for stripe in self.stripes.iter() {
            stripe.lock().await.epoch += 1;
        }
        self.flights.clear();
        if self.tier.clear().await.is_err() {
            Counters::bump(&self.counters.tier_errors);
        }
    }
}
