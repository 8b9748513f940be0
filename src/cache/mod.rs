//! Caches over any store: read-through, write-through and write-behind
//! layers, and the tiers they keep entries in.
//!
//! # Which cache for which problem
//!
//! | you have | use |
//! |---|---|
//! | a read-heavy store, writes through the same process | [`ReadThrough`]: misses load once, writes invalidate |
//! | reads that should hit right after a write | [`WriteThrough`]: writes update the tier once the store took them |
//! | writes that must return fast, and a store that prefers batches | [`WriteBehind`]: writes return once buffered; a flusher writes coalesced batches, retries, dead-letters |
//! | a hot key whose reload is slow | either, with `refresh_after`: serve the old value while one background load replaces it |
//! | many lookups of keys that do not exist | either, with `negative_ttl` |
//! | a bound in bytes rather than entries | [`MemoryTier`] with `max_weight` |
//! | many processes that should share one cache | a `RedisTier` (feature `redis`) |
//! | many processes, each with its own in-process tier | `invalidate_across_processes` with a `RedisInvalidation` (feature `redis`) |
//!
//! All three layers wrap any [`Store`](crate::Store) and are themselves
//! stores, so they stack with every other layer (a `ReadThrough` over a
//! `WriteBehind` reads its own buffered writes, for example).
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
//! - **A failed write drops the key.** A store error may mean the write was
//!   applied (the `Store` contract), so after any write error the key
//!   leaves the tier and the next read loads what the store has.
//! - **A tier that cannot follow a write is reported.** If the tier can
//!   neither take the written value nor drop the key (a shared Redis
//!   timing out, say; three tries), the write returns an error saying its
//!   entries may be stale, although the store has it: writing again
//!   (writes are idempotent) retries the tier.
//! - **A panicking store does not wedge a key.** A load whose store call
//!   panics fails its waiters with [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), and the
//!   next read of the key loads again; a panicking write releases its
//!   fences and drops its keys.
//!
//! Within one process, a write's effect on the tier is immediate. Across
//! processes (a shared `RedisTier`, or in-process tiers kept coherent by a
//! `RedisInvalidation`), each process fences its own loads; the windows are
//! described on those types.

//! # What it buys, what it costs
//!
//! In the playbook lab (`cargo run --release --example playbook`: 90%
//! reads, Zipf 0.99 over 100,000 keys, a database answering 4 calls at
//! once at 1 ms each), a [`WriteThrough`] cache holding a fifth of the keys
//! hit 84% of reads, cut database calls per request 6.2× and raised
//! throughput 6.2×; [`WriteBehind`] then took writes off the request path
//! (0.03 database calls per request). What it costs: memory, a window in
//! which other processes' writes are not seen unless they are announced
//! (events, `RedisInvalidation` with feature `redis`, or
//! a time-to-live), and, for write-behind, writes that reach the store
//! later than they were acknowledged (journal them to survive a crash).
//!
//! # Performance (measured on a shared 2-core machine; ratios, not times)
//!
//! - **Hit ratio** of [`MemoryTier`] (`cargo bench --bench cache_lab`, the
//!   same stream for each cache, mean of three fresh caches): higher than
//!   both moka and quick_cache at every capacity measured.
//!
//!   | workload | capacity | `MemoryTier` | moka | quick_cache |
//!   |---|---|---|---|---|
//!   | OLTP (ARC trace) | 1,000 | 40.3 % | 35.7 % | 35.2 % |
//!   | OLTP | 2,000 | 46.9 % | 41.2 % | 43.8 % |
//!   | OLTP | 5,000 | 55.3 % | 49.3 % | 54.1 % |
//!   | P3 (ARC trace) | 100,000 | 40.4 % | 39.9 % | 37.3 % |
//!   | Zipf(0.9), 100k keys | 1,000 | 46.4 % | 43.2 % | 45.7 % |
//!   | Zipf(0.9), 100k keys | 10,000 | 68.0 % | 67.1 % | 67.4 % |
//!
//!   (OLTP at 2,000: Caffeine's published figure is about 46 %.) Single
//!   runs move by a few tenths with the random hash seed, most on P3.
//! - **Hit path** (`cargo bench --bench cache`, a cached `u64` through the
//!   concrete type, time per hit, the ratio of each run's medians, median
//!   of three runs): a `ReadThrough` hit is **1.29×** a bare
//!   `quick_cache::sync::Cache::get` on one thread and **1.12×** on two
//!   (27 vs 22 ns; 40 vs 36 ns), and about 16× / 12× faster than
//!   `moka::future::Cache::get` (450 / 460 ns). [`MemoryTier`] alone is
//!   1.18× / 1.10× quick_cache. Two things keep the layer this close to
//!   the bare tier: [`Error`](crate::Error) is one pointer, so a
//!   `Result<Option<u64>>` comes back in two registers; and the read's
//!   future asks the tier in its first poll and returns the value from
//!   there, never storing it in the future (a miss continues in a boxed
//!   future that borrows the key).
//! - **Load taken off the database** (`cargo bench --bench cache_lab`,
//!   Zipf(0.99) over 100,000 keys, 1 ms backend, 64 tasks, 128,000 reads
//!   from a cold start): with 10,000 entries, 73 % hits, 3.7× fewer backend
//!   calls and 3.2× the throughput; with 1,000 entries, 59 % hits, 2.4×
//!   fewer calls and 2.2× the throughput.
//! - **Write-behind** (`cargo bench --bench write_behind`, a store with
//!   200 µs per call, which tokio's timer stretches to about 1.3 ms): a
//!   [`WriteBehind`] put is acknowledged about 2,400× faster than a
//!   [`WriteThrough`] put; under Zipf(0.99) the store takes 0.15 writes
//!   per acknowledged put; with the journal (synced every 2 ms) puts keep
//!   0.72× of the unjournalled throughput with one writer (median of five
//!   runs) and about 0.8× with 64.

mod builder;
mod core;
#[cfg(feature = "redis")]
mod invalidation;
mod layers;
mod stats;
pub mod tier;
mod write_behind;

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
pub use self::write_behind::{
    DeadLetter, JournalDamage, SyncPolicy, WhenFull, WriteBehind, WriteBehindBuilder,
    WriteBehindStats,
};
