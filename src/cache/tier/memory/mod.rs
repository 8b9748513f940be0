//! The default in-process tier: sharded, adaptive W-TinyLFU.

mod climber;
mod shard;
mod sketch;

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use tokio::time::Instant;

use self::shard::{Entry, Shard};
use super::settings::{TierSettings, ValidSettings, WeighFn};
use super::CacheTier;
use crate::Result;

const COMPONENT: &str = "MemoryTier";

/// Shards hold at least this many entries each (fewer, larger shards keep
/// the policy's view of the workload whole; more shards spread the locks).
const MIN_SHARD_ENTRIES: u64 = 2_048;

/// One shard and its hit and miss counts, on cache lines of its own; the
/// hit count sits beside the lock word a hit writes anyway.
#[derive(Debug)]
#[repr(C, align(128))]
struct ShardCell<K, V> {
    hits: AtomicU64,
    state: RwLock<Shard<K, V>>,
    misses: AtomicU64,
}

/// The default in-process [`CacheTier`]: a concurrent cache with an
/// adaptive W-TinyLFU eviction policy, bounded by entry count or by weight,
/// with time-to-live (default and per entry) and time-to-idle on tokio's
/// clock.
///
/// # Policy
///
/// New entries enter a small LRU window; an entry leaving the window is
/// kept only if a count-min sketch of recent accesses says it is more
/// popular than the entry it would displace, so one-off keys (a scan, a
/// crawler) cannot flush a hot working set. A hill climber resizes the
/// window as the workload shifts between recency and frequency. This is
/// the policy of Java's Caffeine; on the ARC traces it beats both moka and
/// quick_cache at every capacity measured (see [the cache module's
/// figures](crate::cache#performance)).
///
/// # Concurrency
///
/// Entries are spread over shards, each behind a read-write lock. A hit
/// takes its shard's lock for reading, clones the value and records the
/// access in a small lossy ring; the policy replays the ring under the
/// write lock when it fills or when the next write comes, so readers never
/// wait for the policy. Under heavy contention a few recorded hits may be
/// overwritten before replay, which costs the policy a little accuracy and
/// never a wrong answer.
///
/// Expired entries answer as absent at once and are removed then, or
/// evicted later as the policy sees fit; [`entry_count`] may count them
/// until then.
///
/// [`entry_count`]: CacheTier::entry_count
///
/// ```
/// use std::time::Duration;
/// use scalekit::cache::{CacheTier, MemoryTier};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let tier = MemoryTier::<u64, String>::builder()
///     .max_entries(10_000)
///     .time_to_live(Duration::from_secs(60))
///     .build()?;
/// tier.insert(1, "one".into(), None).await?;
/// assert_eq!(tier.get(&1).await?, Some("one".into()));
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct MemoryTier<K, V> {
    shards: Box<[ShardCell<K, V>]>,
    shard_mask: u64,
    hasher: foldhash::fast::RandomState,
    weigher: Option<WeighFn<K, V>>,
    capacity: u64,
    default_ttl: Option<Duration>,
    /// Time-to-idle in nanoseconds; 0 for none.
    time_to_idle: u64,
    epoch: Instant,
    evictions: AtomicU64,
}

impl<K, V> fmt::Debug for MemoryTier<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTier")
            .field("capacity", &self.capacity)
            .field("shards", &self.shards.len())
            .field("weighted", &self.weigher.is_some())
            .field("default_ttl", &self.default_ttl)
            .field(
                "time_to_idle",
                &(self.time_to_idle > 0).then(|| Duration::from_nanos(self.time_to_idle)),
            )
            .field("evictions", &self.evictions.load(Ordering::Relaxed))
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // The policy's invariants hold between statements that can panic (only
    // user `Eq`/`Clone`/weigher code runs under the lock, and never halfway
    // through a list update), so a poisoned lock is still consistent.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl<K, V> MemoryTier<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Starts configuring a tier.
    pub fn builder() -> MemoryTierBuilder<K, V> {
        MemoryTierBuilder {
            settings: TierSettings::default(),
        }
    }

    /// A tier of at most `max_entries` entries, with no expiry.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when `max_entries` is 0.
    pub fn with_capacity(max_entries: u64) -> Result<Self> {
        Self::builder().max_entries(max_entries).build()
    }

    /// The bound the tier was built with: entries, or total weight.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    #[inline(always)]
    fn shard(&self, hash: u64) -> &ShardCell<K, V> {
        // Bits 40.. pick the shard; the table uses the low bits and the
        // top seven, so each shard's table still sees well-spread hashes.
        &self.shards[((hash >> 40) & self.shard_mask) as usize]
    }

    fn now(&self) -> u64 {
        // +1 so that "now" is never 0, which means "never expires".
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
            + 1
    }

    fn is_expired(&self, entry: &Entry<K, V>, now: u64) -> bool {
        (entry.expires_at != 0 && entry.expires_at <= now)
            || (self.time_to_idle != 0
                && now.saturating_sub(entry.last_read.load(Ordering::Relaxed)) > self.time_to_idle)
    }

    /// Hands the shard's hit and miss counts to its policy.
    fn count_requests(cell: &ShardCell<K, V>, shard: &mut Shard<K, V>) {
        let hits = cell.hits.swap(0, Ordering::Relaxed);
        let misses = cell.misses.swap(0, Ordering::Relaxed);
        shard.record_hits(hits);
        shard.record_misses(misses);
    }

    #[inline(always)]
    fn lookup<R>(&self, key: &K, read_entry: impl FnOnce(&V) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let cell = self.shard(hash);
        let shard = read(&cell.state);
        let Some(entry) = shard.find(hash, key) else {
            drop(shard);
            cell.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if entry.expires_at != 0 || self.time_to_idle != 0 {
            let now = self.now();
            if self.is_expired(entry, now) {
                drop(shard);
                cell.misses.fetch_add(1, Ordering::Relaxed);
                write(&cell.state).remove_if(hash, key, |entry| self.is_expired(entry, now));
                return None;
            }
            if self.time_to_idle != 0 {
                entry.last_read.store(now, Ordering::Relaxed);
            }
        }
        entry.count_read();
        // The hit count only steers the climber: a plain load and store,
        // which may lose a racing hit, rather than a locked increment.
        let hits = cell.hits.load(Ordering::Relaxed);
        cell.hits.store(hits + 1, Ordering::Relaxed);
        Some(read_entry(&entry.value))
    }

    fn store(&self, key: K, value: V, ttl: Option<Duration>) {
        let weight = match &self.weigher {
            Some(weigh) => weigh(&key, &value).max(1),
            None => 1,
        };
        let ttl = ttl.or(self.default_ttl);
        let now = if ttl.is_some() || self.time_to_idle != 0 {
            self.now()
        } else {
            0
        };
        let expires_at = match ttl {
            Some(ttl) => now.saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64),
            None => 0,
        };
        let hash = self.hasher.hash_one(&key);
        let cell = self.shard(hash);
        let entry = Entry {
            key,
            value,
            expires_at,
            last_read: AtomicU64::new(now),
            reads: AtomicU8::new(0),
        };
        let evicted = {
            let mut shard = write(&cell.state);
            Self::count_requests(cell, &mut shard);
            shard.insert(hash, entry, weight)
        };
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
    }
}

impl<K, V> CacheTier for MemoryTier<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.lookup(key, V::clone))
    }

    #[inline]
    fn get_now(&self, key: &K) -> Option<Option<V>> {
        Some(self.lookup(key, V::clone))
    }

    #[inline]
    fn get_now_with<R>(&self, key: &K, read: impl FnOnce(&V) -> R) -> Option<Option<R>> {
        Some(self.lookup(key, read))
    }

    async fn insert(&self, key: K, value: V, ttl: Option<Duration>) -> Result<()> {
        self.store(key, value, ttl);
        Ok(())
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let hash = self.hasher.hash_one(key);
        write(&self.shard(hash).state).remove(hash, key);
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        for cell in self.shards.iter() {
            write(&cell.state).clear();
        }
        Ok(())
    }

    async fn entry_count(&self) -> Result<u64> {
        Ok(self
            .shards
            .iter()
            .map(|cell| read(&cell.state).len() as u64)
            .sum())
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// Configures a [`MemoryTier`]; see [`MemoryTier::builder`].
pub struct MemoryTierBuilder<K, V> {
    settings: TierSettings<K, V>,
}

impl<K, V> fmt::Debug for MemoryTierBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTierBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<K, V> MemoryTierBuilder<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Bounds the tier by entry count.
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.settings.max_entries = Some(max_entries);
        self
    }

    /// Bounds the tier by total weight, each entry weighing what `weigh`
    /// says (at least 1), for example its size in bytes. An entry heavier
    /// than a shard's share of the bound is not kept.
    pub fn max_weight(
        mut self,
        max_weight: u64,
        weigh: impl Fn(&K, &V) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.settings.max_weight = Some((max_weight, Arc::new(weigh)));
        self
    }

    /// Entries expire this long after they were inserted, unless the insert
    /// gave its own time-to-live.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.settings.time_to_live = Some(ttl);
        self
    }

    /// Entries expire when not read for this long.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.settings.time_to_idle = Some(tti);
        self
    }

    /// Validates and builds the tier.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when no bound or both bounds are given, a bound is
    /// 0, or a time-to-live or time-to-idle is zero.
    pub fn build(self) -> Result<MemoryTier<K, V>> {
        let ValidSettings {
            capacity,
            estimated_entries,
            weigher,
            time_to_live,
            time_to_idle,
        } = self.settings.validate(COMPONENT)?;
        let parallelism = std::thread::available_parallelism().map_or(4, |n| n.get()) as u64;
        let most_shards = (4 * parallelism).next_power_of_two();
        let shard_count = match estimated_entries / MIN_SHARD_ENTRIES {
            0 => 1,
            n => (1u64 << n.ilog2()).min(most_shards),
        };
        let shards = (0..shard_count)
            .map(|i| {
                // Spread the remainder so the shards' bounds add up exactly.
                let share = capacity / shard_count + u64::from(i < capacity % shard_count);
                let entries = estimated_entries / shard_count + 1;
                ShardCell {
                    hits: AtomicU64::new(0),
                    state: RwLock::new(Shard::new(share.max(1), entries)),
                    misses: AtomicU64::new(0),
                }
            })
            .collect();
        Ok(MemoryTier {
            shards,
            shard_mask: shard_count - 1,
            hasher: foldhash::fast::RandomState::default(),
            weigher,
            capacity,
            default_ttl: time_to_live,
            time_to_idle: time_to_idle.map_or(0, |tti| tti.as_nanos().min(u64::MAX as u128) as u64),
            epoch: Instant::now(),
            evictions: AtomicU64::new(0),
        })
    }
}
