//! Sharding: when data outgrows one database, each key lives on one of
//! many stores, and the router is itself a [`Store`](crate::Store).
//!
//! # Which tool for which problem
//!
//! | you want | use |
//! |---|---|
//! | keys spread evenly, shards added at the end, no state | [`Jump`] (the default): moves only the 1/(N+1) of keys a new shard takes |
//! | any shard added or removed, moving only its keys | [`Rendezvous`] (a score per shard per key; best up to a few dozen shards) or [`Ring`] (virtual nodes; a binary search per key) |
//! | range scans on few shards, or hot ranges split by hand | [`Ranges`] ([`Ranges::split_at`] for boundaries) |
//! | a tenant (or any key) placed on a chosen shard, shared by every process | [`Directory`]: entries by key or prefix, kept in a store, cached and checked against an epoch |
//! | many keys read or written at once | `get_many` and `write_batch`: one call per shard, all shards at once ([`Sharded::gather`] and [`Sharded::scatter`] for partial results) |
//! | a slow shard not to stall a whole batch | [`per_shard_timeout`](ShardedBuilder::per_shard_timeout) and [`PartialFailure::ReturnPartial`] |
//! | to add or remove shards later, online | [`BucketSharded`]: keys → a fixed number of buckets → shards by a versioned [`BucketTable`]; [`reshard`](BucketSharded::reshard) moves buckets while reads and writes go on, and survives a crash between steps |
//!
//! Every key is routed by its [`ShardKey`] bytes and their [`key_hash`]
//! (FNV-1a then the SplitMix64 finaliser), which are fixed: every
//! process, on every machine and every version of scalekit, routes a key
//! to the same shard.
//!
//! ```
//! use scalekit::shard::{Rendezvous, Sharded};
//! use scalekit::{MemoryStore, Store, Write};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let users = Sharded::builder()
//!     .shards((0..4).map(|_| MemoryStore::<u64, String>::new()))
//!     .strategy(Rendezvous::new(4)?)
//!     .build()?;
//! users.write_batch((0..100).map(|id| Write::Put(id, format!("user {id}"))).collect()).await?;
//! let some = users.get_many(&[3, 50, 99]).await?;        // three shards, at once
//! assert_eq!(some[1].as_deref(), Some("user 50"));
//! assert!(users.stats().balance < 0.5);
//! # Ok::<(), scalekit::Error>(()) }).unwrap();
//! ```
//!
//! # Online resharding
//!
//! [`BucketSharded`] keeps its table, and a record of any resharding, in
//! a meta store. A resharding to a new set of shards from its pool moves
//! as few buckets as an even spread allows (4 → 5 shards: a fifth), and
//! goes: writes to the moving buckets go to both owners → each old
//! shard's moving buckets are copied under their locks (writes to them
//! wait meanwhile) and verified by per-bucket checksums → reads switch to
//! the new owners → writes switch → the old copies are removed and the
//! new table becomes current. Every step is recorded before it changes
//! any routing: opening the store again after a crash resumes where it
//! was; until the writes switch,
//! [`roll_back`](BucketSharded::roll_back) returns to the old layout, and
//! finishes a rollback cut short when called again. A copy that does not
//! verify stops the cut-over. It needs shards that can list their
//! entries ([`Scan`](crate::store::Scan)), and one process to route and
//! reshard a store: another learns a phase only when it opens the store.
//!
//! # Performance (a shared 2-core machine; `cargo bench --bench shard`)
//!
//! Routing a `u64` key costs 0.75× of the `jumphash` crate with jump
//! hashing and 0.6× of the `hashring` crate over the same ring (100
//! points per shard; medians of three runs). `get_many` of 1,000 keys over
//! 8 in-memory shards takes 0.67× the time of 1,000 single gets (32 µs
//! against 48 µs, a quiet run; noisy runs have shown them equal): every
//! key still pays its route (~10–20 ns) and its shard's lookup, which are
//! most of a single get's cost when shards are in memory, so no batching
//! can make it 4× faster there. One call per shard pays off where a call
//! costs a round trip: over 8 SQLite shards (in-memory databases behind
//! their worker threads) the same `get_many` takes 470 µs against 27.7 ms
//! for the single gets, **59×** faster.
//!
//! # What it buys, what it costs
//!
//! Sharding is the level that scales writes: in the playbook lab with
//! every client mixing 10% writes in, where four replicas could not get
//! past the saturated primary, 2, 4 and 8 shards (each with its own
//! primary and replicas) gave 1.6×, 2.6× and 4.2× the throughput of the
//! four-replica level. What it costs: no transaction spans shards (a
//! `write_batch` is atomic per shard only), a key's shard is fixed by its
//! bytes (changing the count needs [`BucketSharded`] and a resharding),
//! and a query that is not by key must visit every shard.

mod buckets;
mod directory;
mod join;
mod key;
mod sharded;
mod strategy;

pub use self::buckets::{BucketSharded, BucketTable, MetaStore, Phase, ReshardingProgress};
pub use self::directory::{Directory, Entry, Unknown};
pub use self::key::{key_hash, RoutingBytes, ShardKey};
pub use self::sharded::{
    Gathered, PartialFailure, Scattered, ShardError, ShardStats, Sharded, ShardedBuilder,
};
pub use self::strategy::{jump, Jump, KeyRange, Ranges, Rendezvous, Ring, Strategy};
