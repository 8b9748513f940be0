//! Caches over any store: read-through and write-through layers, and the
//! tiers they keep entries in.
//!
//! # Which cache for which problem
//!
//! | you have | use |
//! |---|---|
//! | a read-heavy store, writes through the same process | [`ReadThrough`]: misses load once, writes invalidate |
//! | reads that should hit right after a write | [`WriteThrough`]: writes update the tier once the store took them |
//! | a hot key whose reload is slow | either, with `refresh_after`: serve the old value while one background load replaces it |
//! | many lookups of keys that do not exist | either, with `negative_ttl` |
//! | a bound in bytes rather than entries | [`MemoryTier`] with `max_weight` |
//! | many processes that should share one cache | a `RedisTier` (feature `redis`) |
//! | many processes, each with its own in-process tier | `invalidate_across_processes` with a `RedisInvalidation` (feature `redis`) |
//!
//! Both layers wrap any [`Store`](crate::Store) and are themselves stores,
//! so they stack with every other layer.
//!
//! # Guarantees
//!
//! - **Single-flight.** Concurrent misses of one key make one load; every
//!   waiter gets its value or its error. Errors are never cached. A waiter
//!   that is cancelled does not cancel the load for the others.
//! - **No stale fill.** A write or [`invalidate`](ReadThrough::invalidate)
//!   that returned wins over every load that started before it: such a
//!   load's value never enters the tier, and a read that starts after the
//!   write never joins it. ([`CacheStats::stale_fills_prevented`] counts the
//!   fills refused.)
//! - **Batches.** `get_many` loads all its misses with one `get_many` on the
//!   store; `write_batch` is one `write_batch` on the store.
//! - **Read-after-write** holds through the cache as it holds on the store.
//!
//! Within one process, a write's effect on the tier is immediate. Across
//! processes (a shared `RedisTier`, or in-process tiers kept coherent by a
//! `RedisInvalidation`), each process fences its own loads; the windows are
//! described on those types.

mod builder;
mod core;
#[cfg(feature = "redis")]
mod invalidation;
mod layers;
mod stats;
pub mod tier;

pub use self::builder::CacheBuilder;
pub use self::core::Cached;
#[cfg(feature = "redis")]
pub use self::invalidation::RedisInvalidation;
pub use self::layers::{ReadThrough, WriteThrough};
pub use self::stats::CacheStats;
pub use self::tier::CacheTier;
#[cfg(feature = "quick-cache")]
pub use self::tier::{MemoryTier, MemoryTierBuilder};
#[cfg(feature = "redis")]
pub use self::tier::{RedisTier, RedisTierBuilder};
