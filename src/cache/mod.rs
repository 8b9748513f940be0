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

//! # Performance (measured on a shared 2-core machine; ratios, not times)
//!
//! - **Hit path** (`benches/cache.rs`, a cached key through the concrete
//!   type): about 4× faster than `moka::future::Cache::get` (1 thread: 114
//!   vs 469 ns; 2 threads: 87 vs 467 ns per hit), and still slower than a
//!   bare `quick_cache::sync::Cache<u64, u64>::get` (27 / 22 ns), which
//!   stores a quarter of the bytes and has no load, fence or refresh logic.
//!   Wall-clock figures swing by 2× between runs on this machine; counted
//!   instructions (callgrind) are steadier: 175 per hit against
//!   quick_cache's 100, i.e. 1.75×. Reaching 1.5× (a tier with compact
//!   entries, cheaper hit accounting) is open work.
//! - **Hit ratio** of [`MemoryTier`] (`benches/cache_lab.rs`, one stream per
//!   cache): it is quick_cache's policy, so it ties quick_cache everywhere
//!   (OLTP 1,000 / 2,000 / 5,000: 35.2 / 43.7 / 54.1 %; P3 at 100,000:
//!   37.9 %) and beats moka on OLTP at 2,000 and 5,000 and on Zipf(0.9), but
//!   trails moka on OLTP at 1,000 (35.7 %) and on P3 (39.5 %). An adaptive
//!   W-TinyLFU tier that wins everywhere is open work.
//! - **Load taken off the database** (`benches/cache_lab.rs`, Zipf(0.99)
//!   over 100,000 keys, 1 ms backend, 64 tasks, 128,000 reads from a cold
//!   start): with 10,000 entries, 72 % hits, 3.6× fewer backend calls and
//!   3.3× the throughput; with 1,000 entries, 58 % hits, 2.4× fewer calls
//!   and 2.1× the throughput.

mod builder;
mod core;
#[cfg(feature = "redis")]
mod invalidation;
mod layers;
mod read_future;
mod stats;
pub mod tier;

pub use self::builder::CacheBuilder;
pub use self::core::Cached;
#[cfg(feature = "redis")]
pub use self::invalidation::RedisInvalidation;
pub use self::layers::{ReadThrough, WriteThrough};
pub use self::stats::CacheStats;
pub use self::tier::CacheTier;
pub use self::tier::{MemoryTier, MemoryTierBuilder};
#[cfg(feature = "quick-cache")]
pub use self::tier::{QuickCacheTier, QuickCacheTierBuilder};
#[cfg(feature = "redis")]
pub use self::tier::{RedisTier, RedisTierBuilder};
