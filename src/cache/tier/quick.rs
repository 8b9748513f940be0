//! An in-process tier on quick_cache (feature `quick-cache`).

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use tokio::time::Instant;

use super::settings::{TierSettings, ValidSettings, WeighFn};
use super::CacheTier;
use crate::Result;

const COMPONENT: &str = "QuickCacheTier";

/// A stored entry with its expiry bookkeeping.
#[derive(Clone)]
struct Slot<V> {
    value: V,
    /// `None` for an entry that never expires, so the common hit clones
    /// one null pointer beside the value.
    expiry: Option<Arc<Expiry>>,
}

/// When an entry expires.
struct Expiry {
    expires_at: Option<Instant>,
    /// Nanoseconds since the tier's epoch of the last read, when the tier
    /// has a time-to-idle.
    last_access: Option<AtomicU64>,
}

/// Weighs entries: one unit each, or by the user's function.
enum SlotWeighter<K, V> {
    Unit,
    Custom(WeighFn<K, V>),
}

impl<K, V> Clone for SlotWeighter<K, V> {
    fn clone(&self) -> Self {
        match self {
            SlotWeighter::Unit => SlotWeighter::Unit,
            SlotWeighter::Custom(weigh) => SlotWeighter::Custom(Arc::clone(weigh)),
        }
    }
}

impl<K, V> Weighter<K, Slot<V>> for SlotWeighter<K, V> {
    fn weight(&self, key: &K, slot: &Slot<V>) -> u64 {
        match self {
            SlotWeighter::Unit => 1,
            SlotWeighter::Custom(weigh) => weigh(key, &slot.value).max(1),
        }
    }
}

/// Counts evictions.
#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl<K, V> Lifecycle<K, V> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: K, _value: V) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Inner<K, V> = Cache<K, Slot<V>, SlotWeighter<K, V>, DefaultHashBuilder, CountEvictions>;

/// The default in-process [`CacheTier`]: quick_cache's concurrent
/// CLOCK-Pro-style cache, bounded by entry count or by weight, with
/// time-to-live (default and per entry) and time-to-idle on tokio's clock.
///
/// A read of an entry with no expiry costs one quick_cache lookup and a
/// clone of the value; entries with a TTL or a tier with a time-to-idle
/// also read the clock.
///
/// ```
/// use std::time::Duration;
/// use scalekit::cache::{CacheTier, QuickCacheTier};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let tier = QuickCacheTier::<u64, String>::builder()
///     .max_entries(10_000)
///     .time_to_live(Duration::from_secs(60))
///     .build()?;
/// tier.insert(1, "one".into(), None).await?;
/// assert_eq!(tier.get(&1).await?, Some("one".into()));
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct QuickCacheTier<K, V> {
    cache: Inner<K, V>,
    default_ttl: Option<Duration>,
    time_to_idle: Option<Duration>,
    epoch: Instant,
    evictions: Arc<AtomicU64>,
}

impl<K, V> fmt::Debug for QuickCacheTier<K, V>
where
    K: Eq + Hash,
    V: Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuickCacheTier")
            .field("entries", &self.cache.len())
            .field("weight", &self.cache.weight())
            .field("capacity", &self.cache.capacity())
            .field("default_ttl", &self.default_ttl)
            .field("time_to_idle", &self.time_to_idle)
            .field("evictions", &self.evictions.load(Ordering::Relaxed))
            .finish()
    }
}

impl<K, V> QuickCacheTier<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Starts configuring a tier.
    pub fn builder() -> QuickCacheTierBuilder<K, V> {
        QuickCacheTierBuilder {
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

    fn nanos_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    #[inline(always)]
    fn lookup(&self, key: &K) -> Option<V> {
        let slot = self.cache.get(key)?;
        let Some(expiry) = &slot.expiry else {
            return Some(slot.value);
        };
        let now = Instant::now();
        let expired = expiry.expires_at.is_some_and(|at| at <= now)
            || match (&expiry.last_access, self.time_to_idle) {
                (Some(last), Some(tti)) => {
                    let idle = self
                        .nanos_since_epoch(now)
                        .saturating_sub(last.load(Ordering::Relaxed));
                    idle > tti.as_nanos() as u64
                }
                _ => false,
            };
        if expired {
            self.cache.remove_if(key, |current| {
                current
                    .expiry
                    .as_ref()
                    .is_some_and(|current| Arc::ptr_eq(current, expiry))
            });
            return None;
        }
        if let Some(last) = &expiry.last_access {
            last.store(self.nanos_since_epoch(now), Ordering::Relaxed);
        }
        Some(slot.value)
    }
}

impl<K, V> CacheTier for QuickCacheTier<K, V>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.lookup(key))
    }

    #[inline]
    fn get_now(&self, key: &K) -> Option<Option<V>> {
        Some(self.lookup(key))
    }

    async fn insert(&self, key: K, value: V, ttl: Option<Duration>) -> Result<()> {
        let ttl = ttl.or(self.default_ttl);
        let needs_clock = ttl.is_some() || self.time_to_idle.is_some();
        let now = needs_clock.then(Instant::now);
        let slot = Slot {
            value,
            expiry: now.map(|now| {
                Arc::new(Expiry {
                    expires_at: ttl.map(|ttl| now + ttl),
                    last_access: self
                        .time_to_idle
                        .map(|_| AtomicU64::new(self.nanos_since_epoch(now))),
                })
            }),
        };
        self.cache.insert(key, slot);
        Ok(())
    }

    async fn remove(&self, key: &K) -> Result<()> {
        self.cache.remove(key);
        Ok(())
    }

    async fn clear(&self) -> Result<()> {
        self.cache.clear();
        Ok(())
    }

    async fn entry_count(&self) -> Result<u64> {
        Ok(self.cache.len() as u64)
    }

    fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// Configures a [`QuickCacheTier`]; see [`QuickCacheTier::builder`].
pub struct QuickCacheTierBuilder<K, V> {
    settings: TierSettings<K, V>,
}

impl<K, V> fmt::Debug for QuickCacheTierBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuickCacheTierBuilder")
            .field("settings", &self.settings)
            .finish()
    }
}

impl<K, V> QuickCacheTierBuilder<K, V>
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
    /// says (at least 1), for example its size in bytes.
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
    pub fn build(self) -> Result<QuickCacheTier<K, V>> {
        let ValidSettings {
            capacity,
            estimated_entries,
            weigher,
            time_to_live,
            time_to_idle,
        } = self.settings.validate(COMPONENT)?;
        let weighter = match weigher {
            Some(weigh) => SlotWeighter::Custom(weigh),
            None => SlotWeighter::Unit,
        };
        let evictions = CountEvictions::default();
        let counter = Arc::clone(&evictions.0);
        Ok(QuickCacheTier {
            cache: Cache::with(
                estimated_entries as usize,
                capacity,
                weighter,
                DefaultHashBuilder::default(),
                evictions,
            ),
            default_ttl: time_to_live,
            time_to_idle,
            epoch: Instant::now(),
            evictions: counter,
        })
    }
}
