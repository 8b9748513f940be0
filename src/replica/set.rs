//! The replica set: writes to the primary, reads to a replica chosen by
//! health, lag and load, down a fallback ladder to the primary.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::budget::SpillBudget;
use super::clock::{random_below, random_u64, Clock};
use super::health::{Ejection, Health};
use super::lag::{LagState, MaxLag, PrimaryHistory};
use super::load::Load;
use super::positioned::Positioned;
use super::stats::{bump, load, ReplicaCounters, ReplicaSetStats, ReplicaStats, SetCounters};
use crate::store::{Store, Write};
use crate::{Error, ErrorKind, Position, Result};

const COMPONENT: &str = "ReplicaSet";

/// A replica's latency is measured on one read in this many (and on
/// every failure): reading the clock costs more than the rest of the
/// routing, and the estimate needs samples, not every read.
const RTT_SAMPLE: u64 = 8;

/// The most replicas a set takes (picking one uses a fixed-size list on
/// the stack).
pub const MAX_REPLICAS: usize = 64;

/// How a read picks among the replicas that qualify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn, each replica as often as its weight.
    RoundRobin,
    /// At random, in proportion to the weights.
    Random,
    /// The replica with the fewest reads in flight per unit of weight.
    LeastOutstanding,
    /// The better of two replicas picked at random, by peak-EWMA latency
    /// times reads in flight, per unit of weight (the default; tower's
    /// and Finagle's `p2c` with `PeakEwma`). A failure counts as a slow
    /// response (the failure penalty), so a replica that fails fast does
    /// not look attractive.
    #[default]
    PeakEwma,
}

/// One replica and what the set knows of it.
struct Replica<R> {
    name: String,
    store: R,
    weight: u32,
    load: Load,
    health: Health,
    lag: LagState,
    counters: ReplicaCounters,
}

#[derive(Debug, Clone)]
struct Config {
    balance: Balance,
    max_lag: MaxLag,
    token_wait: Duration,
    allow_stale: bool,
    ejection: Ejection,
    read_timeout: Option<Duration>,
    failure_penalty: Duration,
    poll_interval: Duration,
    /// How long one position probe may take before it counts as failed.
    probe_timeout: Duration,
    health_checks: bool,
}

struct Inner<P, R> {
    primary: P,
    replicas: Box<[Replica<R>]>,
    config: Config,
    clock: Clock,
    /// The clock as last read (by the poller, measured reads and token
    /// waits): what routing decisions use, without a clock read of
    /// their own.
    recent: AtomicU64,
    /// The latest primary position seen (from writes and polls).
    primary_position: AtomicU64,
    history: PrimaryHistory,
    budget: SpillBudget,
    counters: SetCounters,
    round_robin: AtomicUsize,
    /// The pollers: the primary's, then one per replica.
    monitor: Mutex<Vec<JoinHandle<()>>>,
}

impl<P, R> Drop for Inner<P, R> {
    fn drop(&mut self) {
        for poller in self
            .monitor
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            poller.abort();
        }
    }
}

/// A primary and its read replicas, as one [`Store`]: writes go to the
/// primary and return its position (the read-your-writes token); reads go
/// to a replica that is healthy, close enough behind and lightly loaded,
/// and fall back to the primary within a budget. Cloning it is cheap;
/// clones share everything. See the [module docs](super).
pub struct ReplicaSet<P, R = P> {
    inner: Arc<Inner<P, R>>,
}

impl<P, R> Clone for ReplicaSet<P, R> {
    fn clone(&self) -> Self {
        ReplicaSet {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<P: fmt::Debug, R: fmt::Debug> fmt::Debug for ReplicaSet<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("primary", &self.inner.primary)
            .field(
                "replicas",
                &self
                    .inner
                    .replicas
                    .iter()
                    .map(|r| &r.name)
                    .collect::<Vec<_>>(),
            )
            .field("balance", &self.inner.config.balance)
            .finish_non_exhaustive()
    }
}

/// One kind of read, run the same way on any store of the set.
trait ReadOp<K, V>: Copy + Send + Sync {
    type Output: Send;
    fn run<S: Store<Key = K, Value = V>>(
        self,
        store: &S,
    ) -> impl Future<Output = Result<Self::Output>> + Send;
}

struct Get<'a, K>(&'a K);

impl<K> Clone for Get<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for Get<'_, K> {}

impl<K: Clone + Eq + std::hash::Hash + Send + Sync + 'static, V: Send + 'static> ReadOp<K, V>
    for Get<'_, K>
{
    type Output = Option<V>;
    fn run<S: Store<Key = K, Value = V>>(
        self,
        store: &S,
    ) -> impl Future<Output = Result<Option<V>>> + Send {
        store.get(self.0)
    }
}

struct GetMany<'a, K>(&'a [K]);

impl<K> Clone for GetMany<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for GetMany<'_, K> {}

impl<K: Clone + Eq + std::hash::Hash + Send + Sync + 'static, V: Send + 'static> ReadOp<K, V>
    for GetMany<'_, K>
{
    type Output = Vec<Option<V>>;
    fn run<S: Store<Key = K, Value = V>>(
        self,
        store: &S,
    ) -> impl Future<Output = Result<Vec<Option<V>>>> + Send {
        store.get_many(self.0)
    }
}

/// Takes a read off a replica's count of reads in flight when it ends,
/// or is cancelled.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(outstanding: &'a AtomicU64) -> Self {
        outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(outstanding)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<P, R> Inner<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    /// The clock now, remembered as the recent time.
    fn now(&self) -> u64 {
        let now = self.clock.now();
        self.recent.fetch_max(now, Ordering::Relaxed);
        now
    }

    /// The recent time: at most a poll interval old.
    fn recent(&self) -> u64 {
        self.recent.load(Ordering::Relaxed)
    }

    fn saw_primary(&self, position: Position) {
        self.primary_position
            .fetch_max(position.get(), Ordering::Relaxed);
    }

    /// A replica for a read: not ejected, and at or past `token` (a token
    /// read) or within `max_lag` (a plain read); `skip` was tried.
    fn pick(&self, now: u64, token: Option<u64>, skip: Option<usize>) -> Option<usize> {
        let qualifies = |index: usize| {
            let replica = &self.replicas[index];
            let fresh = match token {
                Some(token) => replica.lag.applied() >= token,
                None => !replica.lag.is_excluded(),
            };
            fresh && Some(index) != skip && !replica.health.is_ejected(now)
        };
        if self.config.balance == Balance::PeakEwma && self.replicas.len() > 1 {
            // Two at random; if both qualify (the usual case), the better
            // one, without looking at the others.
            let (a, b) = two_at_random(self.replicas.len());
            if qualifies(a) && qualifies(b) {
                return Some(self.cheaper(a, b, now));
            }
        }
        let mut candidates = [0u8; MAX_REPLICAS];
        let mut n = 0;
        for index in 0..self.replicas.len() {
            if qualifies(index) {
                // At most MAX_REPLICAS (64) replicas: the index fits.
                candidates[n] = index as u8;
                n += 1;
            }
        }
        match n {
            0 => None,
            1 => Some(usize::from(candidates[0])),
            _ => Some(self.balance(&candidates[..n], now)),
        }
    }

    fn balance(&self, candidates: &[u8], now: u64) -> usize {
        let replica = |c: u8| &self.replicas[usize::from(c)];
        let weight = |c: u8| f64::from(replica(c).weight);
        let weighted = |mut ticket: u64| {
            for &c in candidates {
                let w = u64::from(replica(c).weight);
                if ticket < w {
                    return usize::from(c);
                }
                ticket -= w;
            }
            usize::from(candidates[candidates.len() - 1])
        };
        let total = || {
            candidates
                .iter()
                .map(|&c| u64::from(replica(c).weight))
                .sum::<u64>()
        };
        match self.config.balance {
            Balance::RoundRobin => {
                let turn = self.round_robin.fetch_add(1, Ordering::Relaxed) as u64;
                weighted(turn % total())
            }
            Balance::Random => {
                let total = total();
                weighted(random_below(usize::try_from(total).unwrap_or(usize::MAX)) as u64)
            }
            Balance::LeastOutstanding => {
                // From a random start, so ties spread.
                let start = random_below(candidates.len());
                let outstanding =
                    |c: u8| replica(c).load.outstanding.load(Ordering::Relaxed) as f64 / weight(c);
                let mut best = candidates[start];
                for offset in 1..candidates.len() {
                    let c = candidates[(start + offset) % candidates.len()];
                    if outstanding(c) < outstanding(best) {
                        best = c;
                    }
                }
                usize::from(best)
            }
            Balance::PeakEwma => {
                let (a, b) = two_at_random(candidates.len());
                self.cheaper(usize::from(candidates[a]), usize::from(candidates[b]), now)
            }
        }
    }

    /// Of replicas `a` and `b`, the one with the lower peak-EWMA cost per
    /// unit of weight (compared crosswise: no division).
    fn cheaper(&self, a: usize, b: usize, now: u64) -> usize {
        let (ra, rb) = (&self.replicas[a], &self.replicas[b]);
        let (num_a, den_a) = ra.load.cost_fraction(now);
        let (num_b, den_b) = rb.load.cost_fraction(now);
        // cost_a / weight_a <= cost_b / weight_b, multiplied out.
        let cost_a = num_a * den_b * f64::from(rb.weight);
        let cost_b = num_b * den_a * f64::from(ra.weight);
        if cost_a <= cost_b {
            a
        } else {
            b
        }
    }

    /// Runs a read on replica `index`, keeping its load and health.
    async fn read_replica<O: ReadOp<P::Key, P::Value>>(
        &self,
        index: usize,
        op: O,
    ) -> Result<O::Output> {
        let replica = &self.replicas[index];
        let measured = replica
            .counters
            .reads
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(RTT_SAMPLE);
        let _in_flight = InFlight::new(&replica.load.outstanding);
        let start = if measured { self.now() } else { 0 };
        let result = match self.config.read_timeout {
            Some(limit) => tokio::time::timeout(limit, op.run(&replica.store))
                .await
                .unwrap_or_else(|_| {
                    Err(ErrorKind::Timeout {
                        operation: "replica read",
                        after: limit,
                    }
                    .into())
                }),
            None => op.run(&replica.store).await,
        };
        match &result {
            Ok(_) => {
                if measured {
                    let end = self.now();
                    replica.load.observe(end, end.saturating_sub(start));
                }
                replica.health.succeeded(&self.config.ejection);
            }
            Err(error) => {
                let end = self.now();
                bump(&replica.counters.errors);
                let penalty =
                    u64::try_from(self.config.failure_penalty.as_nanos()).unwrap_or(u64::MAX);
                replica.load.observe(end, penalty);
                tracing::debug!(replica = %replica.name, %error, "replica read failed");
                self.failed(index, end);
            }
        }
        result
    }

    /// Counts a failure of replica `index`; ejects it if that was one
    /// too many and the cap on ejected replicas allows.
    fn failed(&self, index: usize, now: u64) {
        let replica = &self.replicas[index];
        let policy = &self.config.ejection;
        if !replica.health.failed(now, policy) {
            return;
        }
        let ejected = self
            .replicas
            .iter()
            .filter(|r| r.health.is_ejected(now))
            .count();
        if ejected < policy.max_ejected(self.replicas.len()) {
            let duration = replica.health.eject(now, policy);
            bump(&replica.counters.ejections);
            tracing::warn!(replica = %replica.name, ?duration, "replica ejected");
        }
    }

    /// Waits up to the token wait for a replica at or past `token`,
    /// asking the replicas for their positions meanwhile.
    async fn wait_for(&self, token: u64) -> Option<usize> {
        bump(&self.counters.token_waits);
        let start = self.now();
        let deadline = start
            .saturating_add(u64::try_from(self.config.token_wait.as_nanos()).unwrap_or(u64::MAX));
        let mut pause = Duration::from_millis(1);
        let found = loop {
            let now = self.now();
            let left = Duration::from_nanos(deadline.saturating_sub(now));
            let behind = self
                .replicas
                .iter()
                .filter(|r| r.lag.applied() < token && !r.health.is_ejected(now));
            // All at once, none past the deadline: a hung replica cannot
            // hold the wait.
            let answers = crate::join::join_all(
                behind
                    .map(|replica| async move {
                        let probe = self.probe(&replica.store, left.min(self.config.probe_timeout));
                        (replica, probe.await)
                    })
                    .collect(),
            )
            .await;
            for (replica, answer) in answers {
                if let Ok(position) = answer {
                    replica.lag.set_applied(position.get());
                }
            }
            let now = self.now();
            if let Some(index) = self.pick(now, Some(token), None) {
                break Some(index);
            }
            if now >= deadline {
                bump(&self.counters.token_wait_timeouts);
                break None;
            }
            let left = Duration::from_nanos(deadline - now);
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        self.counters
            .token_wait_nanos
            .fetch_add(self.now().saturating_sub(start), Ordering::Relaxed);
        found
    }

    /// The least-lagged replica that is not ejected (for stale reads).
    fn least_lagged(&self, now: u64) -> Option<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.health.is_ejected(now))
            .max_by_key(|(_, r)| r.lag.applied())
            .map(|(index, _)| index)
    }

    /// A read down the ladder: a qualifying replica (another one if it
    /// fails), the least-lagged replica if stale reads are allowed, the
    /// primary within the spill budget, else an error.
    async fn read<O: ReadOp<P::Key, P::Value>>(
        &self,
        op: O,
        token: Option<Position>,
    ) -> Result<O::Output> {
        self.budget.read();
        let token = token.map(Position::get);
        let now = self.recent();
        let mut pick = self.pick(now, token, None);
        if pick.is_none() {
            if let Some(token) = token {
                pick = self.wait_for(token).await;
            }
        }
        let mut last_error = None;
        if let Some(first) = pick {
            match self.read_replica(first, op).await {
                Ok(output) => return Ok(output),
                Err(error) => last_error = Some(error),
            }
            if let Some(second) = self.pick(self.recent(), token, Some(first)) {
                match self.read_replica(second, op).await {
                    Ok(output) => return Ok(output),
                    Err(error) => last_error = Some(error),
                }
            }
        } else if token.is_none() && self.config.allow_stale {
            if let Some(index) = self.least_lagged(now) {
                bump(&self.counters.stale_reads);
                match self.read_replica(index, op).await {
                    Ok(output) => return Ok(output),
                    Err(error) => last_error = Some(error),
                }
            }
        }
        if self.budget.try_spill() {
            bump(&self.counters.spills);
            return op.run(&self.primary).await;
        }
        bump(&self.counters.refused);
        let reason = match (token, &last_error) {
            (_, Some(_)) => "the replicas tried failed and the primary's spill budget is spent",
            (Some(_), None) => {
                "no replica reached the token in time and the primary's spill budget is spent"
            }
            (None, None) => {
                "no replica is healthy and close enough behind, and the primary's spill budget is spent"
            }
        };
        Err(ErrorKind::Unavailable {
            component: COMPONENT,
            reason: reason.to_string(),
            source: last_error.map(|error| Arc::new(error) as crate::BoxError),
        }
        .into())
    }

    /// Asks the primary and every replica for their positions; updates
    /// lag, and counts a failed answer against a replica's health.
    async fn refresh(&self) {
        self.refresh_primary().await;
        crate::join::join_all(
            (0..self.replicas.len())
                .map(|index| self.refresh_replica(index))
                .collect(),
        )
        .await;
    }

    /// Asks the primary for its position (within the probe timeout).
    async fn refresh_primary(&self) {
        match self.probe(&self.primary, self.config.probe_timeout).await {
            Ok(position) => self.saw_primary(position),
            Err(error) => tracing::warn!(%error, "cannot read the primary's position"),
        }
        let now = self.now();
        self.history
            .record(self.primary_position.load(Ordering::Relaxed), now);
    }

    /// Asks replica `index` for its position (within the probe timeout);
    /// updates its lag, or counts the failure against its health.
    async fn refresh_replica(&self, index: usize) {
        let replica = &self.replicas[index];
        match self.probe(&replica.store, self.config.probe_timeout).await {
            Ok(position) => {
                let now = self.now();
                let primary = self.primary_position.load(Ordering::Relaxed);
                replica.lag.set_applied(position.get());
                let behind_for = self.history.behind_for(position.get(), now);
                replica
                    .lag
                    .evaluate(primary, behind_for, &self.config.max_lag);
            }
            Err(error) => {
                tracing::debug!(replica = %replica.name, %error, "health check failed");
                if self.config.health_checks {
                    bump(&replica.counters.errors);
                    self.failed(index, self.now());
                }
            }
        }
    }

    /// Asks `store` for its position within `limit`.
    async fn probe<S: Positioned>(&self, store: &S, limit: Duration) -> Result<Position> {
        tokio::time::timeout(limit, store.applied_position())
            .await
            .unwrap_or_else(|_| {
                Err(ErrorKind::Timeout {
                    operation: "position probe",
                    after: limit,
                }
                .into())
            })
    }
}

/// Two different indices below `n` (at least 2, at most
/// [`MAX_REPLICAS`]), at random, from one draw.
fn two_at_random(n: usize) -> (usize, usize) {
    let draw = random_u64();
    let below = |bits: u64, n: usize| (((bits & 0xffff_ffff) * n as u64) >> 32) as usize;
    let a = below(draw, n);
    let mut b = below(draw >> 32, n - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// Polls the primary's position every interval, and starts a new spill
/// budget window every second, until the set is dropped.
async fn monitor<P, R>(inner: Weak<Inner<P, R>>, interval: Duration)
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate: build() polled already
    let mut window_start = tokio::time::Instant::now();
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.refresh_primary().await;
        if window_start.elapsed() >= Duration::from_secs(1) {
            inner.budget.roll();
            window_start = tokio::time::Instant::now();
        }
    }
}

/// Polls one replica's position (its health check) every interval, until
/// the set is dropped. Each replica has its own poller, so a hung one
/// delays only its own checks.
async fn monitor_replica<P, R>(inner: Weak<Inner<P, R>>, index: usize, interval: Duration)
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.refresh_replica(index).await;
    }
}

impl<P, R> ReplicaSet<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    /// Starts configuring a replica set.
    pub fn builder() -> ReplicaSetBuilder<P, R> {
        ReplicaSetBuilder::new()
    }

    /// Reads `key` from a replica that has applied `token` (a position a
    /// write returned, here or in another process), waiting up to the
    /// token wait for one, then from the primary within the spill budget.
    ///
    /// # Errors
    ///
    /// The store's errors; [`ErrorKind::Unavailable`] when no replica
    /// reached the token in time and the spill budget is spent.
    pub async fn get_after(&self, key: &P::Key, token: Position) -> Result<Option<P::Value>> {
        self.inner.read(Get(key), Some(token)).await
    }

    /// [`get_many`](Store::get_many) with a token, as
    /// [`get_after`](Self::get_after).
    ///
    /// # Errors
    ///
    /// As [`get_after`](Self::get_after).
    pub async fn get_many_after(
        &self,
        keys: &[P::Key],
        token: Position,
    ) -> Result<Vec<Option<P::Value>>> {
        self.inner.read(GetMany(keys), Some(token)).await
    }

    /// The latest primary position this set has seen: a token that covers
    /// every write it made.
    pub fn primary_position(&self) -> Position {
        Position::new(self.inner.primary_position.load(Ordering::Relaxed))
    }

    /// The position every replica had applied when last asked (by the
    /// poller or a token read): a token at or below it needs no waiting on
    /// any replica.
    pub fn applied_by_every_replica(&self) -> Position {
        Position::new(
            self.inner
                .replicas
                .iter()
                .map(|r| r.lag.applied())
                .min()
                .unwrap_or(0),
        )
    }

    /// Asks the primary and the replicas for their positions now, instead
    /// of waiting for the next poll.
    pub async fn refresh(&self) {
        self.inner.refresh().await;
    }

    /// The primary.
    pub fn primary(&self) -> &P {
        &self.inner.primary
    }

    /// The set's counters.
    pub fn stats(&self) -> ReplicaSetStats {
        let inner = &*self.inner;
        let now = inner.now();
        ReplicaSetStats {
            reads: inner.budget.reads(),
            writes: load(&inner.counters.writes),
            spills_to_primary: load(&inner.counters.spills),
            refused: load(&inner.counters.refused),
            stale_reads: load(&inner.counters.stale_reads),
            token_waits: load(&inner.counters.token_waits),
            token_wait_time: Duration::from_nanos(load(&inner.counters.token_wait_nanos)),
            token_wait_timeouts: load(&inner.counters.token_wait_timeouts),
            primary_position: inner.primary_position.load(Ordering::Relaxed),
            replicas: inner
                .replicas
                .iter()
                .map(|r| ReplicaStats {
                    name: r.name.clone(),
                    reads: load(&r.counters.reads),
                    errors: load(&r.counters.errors),
                    ejections: load(&r.counters.ejections),
                    ejected: r.health.is_ejected(now),
                    lagging: r.lag.is_excluded(),
                    applied: r.lag.applied(),
                    lag_positions: load(&r.lag.positions_behind),
                    lag_time: Duration::from_nanos(load(&r.lag.nanos_behind)),
                    latency_estimate: Duration::from_nanos(r.load.rtt(now) as u64),
                })
                .collect(),
        }
    }
}

impl<P, R> Store for ReplicaSet<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    type Key = P::Key;
    type Value = P::Value;

    async fn get(&self, key: &P::Key) -> Result<Option<P::Value>> {
        self.inner.read(Get(key), None).await
    }

    async fn get_many(&self, keys: &[P::Key]) -> Result<Vec<Option<P::Value>>> {
        self.inner.read(GetMany(keys), None).await
    }

    async fn put(&self, key: P::Key, value: P::Value) -> Result<Position> {
        bump(&self.inner.counters.writes);
        let position = self.inner.primary.put(key, value).await?;
        self.inner.saw_primary(position);
        Ok(position)
    }

    async fn delete(&self, key: &P::Key) -> Result<Position> {
        bump(&self.inner.counters.writes);
        let position = self.inner.primary.delete(key).await?;
        self.inner.saw_primary(position);
        Ok(position)
    }

    async fn write_batch(&self, batch: Vec<Write<P::Key, P::Value>>) -> Result<Position> {
        bump(&self.inner.counters.writes);
        let position = self.inner.primary.write_batch(batch).await?;
        self.inner.saw_primary(position);
        Ok(position)
    }

    /// From the primary: a version read for a later check must be the
    /// latest, and a replica's may be behind.
    async fn get_versioned(&self, key: &P::Key) -> Result<Option<crate::Versioned<P::Value>>> {
        self.inner.primary.get_versioned(key).await
    }

    /// To the primary, as every write.
    async fn write_if(
        &self,
        checks: Vec<crate::Check<P::Key>>,
        batch: Vec<Write<P::Key, P::Value>>,
    ) -> Result<Position> {
        bump(&self.inner.counters.writes);
        let position = self.inner.primary.write_if(checks, batch).await?;
        self.inner.saw_primary(position);
        Ok(position)
    }
}

/// A replica set is positioned as its primary is.
impl<P, R> Positioned for ReplicaSet<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    async fn applied_position(&self) -> Result<Position> {
        let position = self.inner.primary.applied_position().await?;
        self.inner.saw_primary(position);
        Ok(position)
    }
}

/// Configures a [`ReplicaSet`]; see [`ReplicaSet::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ReplicaSetBuilder<P, R> {
    primary: Option<P>,
    replicas: Vec<(String, R, u32)>,
    config: Config,
    spill_share: f64,
    spill_allowance: u64,
    ewma_decay: Duration,
}

impl<P, R> fmt::Debug for ReplicaSetBuilder<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSetBuilder")
            .field("primary", &self.primary.is_some())
            .field(
                "replicas",
                &self.replicas.iter().map(|r| &r.0).collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .field("spill_share", &self.spill_share)
            .finish_non_exhaustive()
    }
}

impl<P, R> ReplicaSetBuilder<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    fn new() -> Self {
        ReplicaSetBuilder {
            primary: None,
            replicas: Vec::new(),
            config: Config {
                balance: Balance::default(),
                max_lag: MaxLag {
                    positions: None,
                    time: Some(Duration::from_secs(1)),
                },
                token_wait: Duration::from_millis(50),
                allow_stale: false,
                ejection: Ejection::default(),
                read_timeout: None,
                failure_penalty: Duration::from_secs(1),
                poll_interval: Duration::from_millis(100),
                probe_timeout: Duration::from_secs(1),
                health_checks: true,
            },
            spill_share: 0.2,
            spill_allowance: 10,
            ewma_decay: Duration::from_secs(10),
        }
    }

    /// The primary: every write goes there.
    pub fn primary(mut self, primary: P) -> Self {
        self.primary = Some(primary);
        self
    }

    /// Adds a replica of weight 1, named for logs and stats.
    pub fn replica(self, name: impl Into<String>, replica: R) -> Self {
        self.weighted_replica(name, replica, 1)
    }

    /// Adds a replica that takes `weight` times the reads of a replica of
    /// weight 1, other things equal.
    pub fn weighted_replica(mut self, name: impl Into<String>, replica: R, weight: u32) -> Self {
        self.replicas.push((name.into(), replica, weight));
        self
    }

    /// How reads pick a replica (default [`Balance::PeakEwma`]).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.config.balance = balance;
        self
    }

    /// How far behind a replica may be for plain reads (default: one
    /// second, no bound on positions).
    pub fn max_lag(mut self, max_lag: MaxLag) -> Self {
        self.config.max_lag = max_lag;
        self
    }

    /// How long a token read waits for a replica to reach its token
    /// before it goes to the primary (default 50 ms; zero: not at all).
    pub fn token_wait(mut self, wait: Duration) -> Self {
        self.config.token_wait = wait;
        self
    }

    /// Whether a plain read that finds no replica within `max_lag` may go
    /// to the least-lagged replica before the primary (default no).
    pub fn allow_stale_reads(mut self, allow: bool) -> Self {
        self.config.allow_stale = allow;
        self
    }

    /// The primary's spill budget: the share of reads it may take when no
    /// replica qualifies (default 0.2), plus `allowance` reads a second
    /// whatever the traffic (default 10).
    pub fn spill_budget(mut self, share: f64, allowance: u64) -> Self {
        self.spill_share = share;
        self.spill_allowance = allowance;
        self
    }

    /// When failing replicas are ejected (default [`Ejection::default`]).
    pub fn ejection(mut self, ejection: Ejection) -> Self {
        self.config.ejection = ejection;
        self
    }

    /// Fails a replica read that takes longer (a failure for ejection;
    /// the read goes on down the ladder). Default: none.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.config.read_timeout = Some(timeout);
        self
    }

    /// The latency a failed read counts as in the peak EWMA (default 1 s).
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.config.failure_penalty = penalty;
        self
    }

    /// How often positions are polled, and the health checked (default
    /// 100 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// How long asking a store for its position may take (default 1 s).
    /// The replicas are asked at once, each within this bound, so one hung
    /// replica neither freezes the lag and health tracking of the others
    /// nor stretches a token wait; an answer that does not come in time
    /// counts as a failed health check.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.config.probe_timeout = timeout;
        self
    }

    /// Whether a failed position poll counts against a replica's health
    /// (default yes: the poll is the active health check).
    pub fn health_checks(mut self, on: bool) -> Self {
        self.config.health_checks = on;
        self
    }

    /// How fast an idle replica's latency estimate fades (default 10 s).
    pub fn ewma_decay(mut self, decay: Duration) -> Self {
        self.ewma_decay = decay;
        self
    }

    fn problem(&self) -> Option<String> {
        let config = &self.config;
        let share = |s: f64| (0.0..=1.0).contains(&s);
        if self.primary.is_none() {
            return Some("no primary: call .primary(..)".into());
        }
        if self.replicas.is_empty() {
            return Some("no replica: add one with .replica(..)".into());
        }
        if self.replicas.len() > MAX_REPLICAS {
            return Some(format!("at most {MAX_REPLICAS} replicas"));
        }
        if let Some((name, _, _)) = self.replicas.iter().find(|r| r.2 == 0) {
            return Some(format!("replica `{name}` has a weight of zero"));
        }
        if let Some((name, _, _)) = self
            .replicas
            .iter()
            .enumerate()
            .find(|(i, r)| self.replicas[..*i].iter().any(|o| o.0 == r.0))
            .map(|(_, r)| r)
        {
            return Some(format!("two replicas are named `{name}`"));
        }
        if config.max_lag.positions == Some(0) || config.max_lag.time == Some(Duration::ZERO) {
            return Some(
                "a max_lag of zero gives replicas no plain reads: \
                 use token reads (get_after, Session) for read-your-writes"
                    .into(),
            );
        }
        if !share(self.spill_share) || !share(config.ejection.max_ejected_share) {
            return Some("shares (spill budget, ejected replicas) must be between 0 and 1".into());
        }
        if config.ejection.after_failures == 0 {
            return Some("ejection needs at least one failure".into());
        }
        if config.ejection.base > config.ejection.max || config.ejection.base.is_zero() {
            return Some("the ejection time must be above zero and at most its cap".into());
        }
        if config.poll_interval.is_zero()
            || config.probe_timeout.is_zero()
            || self.ewma_decay.is_zero()
            || config.read_timeout.is_some_and(|t| t.is_zero())
        {
            return Some(
                "the poll interval, probe timeout, EWMA decay and read timeout must be above zero"
                    .into(),
            );
        }
        None
    }

    /// Builds the set, asks every member for its position once, and starts
    /// polling them in the background.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for no primary, no replica (or more than
    /// [`MAX_REPLICAS`]), a weight of zero, two replicas of one name, a
    /// `max_lag` of zero, a share outside 0..=1, zero durations, or a call
    /// outside a tokio runtime.
    pub async fn build(self) -> Result<ReplicaSet<P, R>> {
        if let Some(problem) = self.problem() {
            return Err(Error::config(COMPONENT, problem));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::config(
                COMPONENT,
                "build inside a tokio runtime: it polls positions",
            )
        })?;
        let Some(primary) = self.primary else {
            return Err(Error::config(COMPONENT, "no primary"));
        };
        let decay = u64::try_from(self.ewma_decay.as_nanos()).unwrap_or(u64::MAX);
        let inner = Arc::new(Inner {
            primary,
            replicas: self
                .replicas
                .into_iter()
                .map(|(name, store, weight)| Replica {
                    name,
                    store,
                    weight,
                    load: Load::new(decay),
                    health: Health::default(),
                    lag: LagState::default(),
                    counters: ReplicaCounters::default(),
                })
                .collect(),
            clock: Clock::new(),
            recent: AtomicU64::new(1),
            primary_position: AtomicU64::new(0),
            history: PrimaryHistory::default(),
            budget: SpillBudget::new(self.spill_share, self.spill_allowance),
            counters: SetCounters::default(),
            round_robin: AtomicUsize::new(0),
            monitor: Mutex::new(Vec::new()),
            config: self.config,
        });
        inner.refresh().await;
        let interval = inner.config.poll_interval;
        let mut pollers = vec![runtime.spawn(monitor(Arc::downgrade(&inner), interval))];
        for index in 0..inner.replicas.len() {
            pollers.push(runtime.spawn(monitor_replica(Arc::downgrade(&inner), index, interval)));
        }
        *inner.monitor.lock().unwrap_or_else(PoisonError::into_inner) = pollers;
        Ok(ReplicaSet { inner })
    }
}

#[cfg(test)]
mod tests {
    use super::two_at_random;

    #[test]
    fn two_at_random_are_different_and_cover_every_pair() {
        let mut seen = [[0u32; 3]; 3];
        for _ in 0..3_000 {
            let (a, b) = two_at_random(3);
            assert!(a != b && a < 3 && b < 3);
            seen[a][b] += 1;
        }
        for (a, row) in seen.iter().enumerate() {
            for (b, &n) in row.iter().enumerate() {
                assert!(a == b || n > 300, "{seen:?}");
            }
        }
    }
}
