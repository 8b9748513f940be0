//! Cache tiers: where a cache layer keeps its entries.
//!
//! A [`CacheTier`] is a bounded map with optional per-entry expiry. The
//! cache layers ([`ReadThrough`](crate::cache::ReadThrough),
//! [`WriteThrough`](crate::cache::WriteThrough)) decide *what* goes in and
//! when; the tier decides what to evict and when entries expire.
//!
//! | tier | where | bound | expiry |
//! |---|---|---|---|
//! | [`MemoryTier`] (default) | in-process, adaptive W-TinyLFU | entries or weight | per-entry TTL, time-to-idle |
//! | `QuickCacheTier` (feature `quick-cache`) | in-process, on quick_cache | entries or weight | per-entry TTL, time-to-idle |
//! | [`RedisTier`] (feature `redis`) | Redis, shared by many processes | Redis's `maxmemory` policy | per-entry TTL as Redis expiry |
//!
//! A tier's `get` and `insert` are async so that a networked tier can
//! implement them; the in-process tier's futures are ready at once.

mod memory;
#[cfg(feature = "quick-cache")]
mod quick;
mod settings;

pub use memory::{MemoryTier, MemoryTierBuilder};
#[cfg(feature = "quick-cache")]
pub use quick::{QuickCacheTier, QuickCacheTierBuilder};
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub(crate) use self::redis::validate_name as validate_redis_name;
#[cfg(feature = "redis")]
pub use self::redis::{RedisTier, RedisTierBuilder};

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use crate::Result;

/// A bounded key-value map with optional per-entry time-to-live: the
/// storage behind a cache layer.
pub trait CacheTier: Debug + Send + Sync + 'static {
    /// The key type.
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    /// The value type.
    type Value: Clone + Send + Sync + 'static;

    /// The entry for `key`, unless absent, evicted or expired.
    fn get(&self, key: &Self::Key) -> impl Future<Output = Result<Option<Self::Value>>> + Send;

    /// Answers from memory without waiting, where the tier can: `Some` of
    /// what [`get`](CacheTier::get) would return, or `None` when only the
    /// async `get` can answer (a networked tier: the default). The cache
    /// layers try this first, so an in-process hit pays for no future.
    fn get_now(&self, key: &Self::Key) -> Option<Option<Self::Value>> {
        let _ = key;
        None
    }

    /// Like [`get_now`](CacheTier::get_now), but hands the entry to `read`
    /// instead of cloning it, so a caller that needs part of it copies
    /// only that part. The default clones the entry `get_now` returns.
    fn get_now_with<R>(
        &self,
        key: &Self::Key,
        read: impl FnOnce(&Self::Value) -> R,
    ) -> Option<Option<R>> {
        self.get_now(key).map(|hit| hit.map(|value| read(&value)))
    }

    /// Inserts or replaces an entry; `ttl` overrides the tier's default
    /// time-to-live for this entry (`None`: the default, if any).
    fn insert(
        &self,
        key: Self::Key,
        value: Self::Value,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes an entry (absent keys are fine).
    fn remove(&self, key: &Self::Key) -> impl Future<Output = Result<()>> + Send;

    /// Removes every entry.
    fn clear(&self) -> impl Future<Output = Result<()>> + Send;

    /// How many entries the tier holds (expired ones not yet evicted may
    /// count).
    fn entry_count(&self) -> impl Future<Output = Result<u64>> + Send;

    /// How many entries the tier has evicted to stay within its bound.
    fn evictions(&self) -> u64;
}
