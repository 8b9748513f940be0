//! # scalekit
//!
//! The scaling playbook of a growing system — one database, then a
//! cache, read replicas, shards, commands split from queries, events — as
//! composable layers of an application's data layer, in one embeddable
//! crate. Every layer wraps a [`Store`] and is itself a [`Store`], so the
//! levels stack like tower middleware and the application's code does
//! not change as they are added.
//!
//! ## Which level for which problem, and what it costs
//!
//! | your problem | the level | scalekit | what it buys (the playbook lab, this crate's own figures) | what it costs |
//! |---|---|---|---|---|
//! | — | one database | a [`Store`] backend: [`MemoryStore`], [`SqliteStore`](store::SqliteStore) (embedded default), [`PostgresStore`](store::PostgresStore) | | |
//! | the same reads, again and again | add a cache | [`cache::ReadThrough`], [`cache::WriteThrough`] with a [`cache::CacheTier`] | 6.2× fewer database calls and 6.2× the throughput at 90% reads, Zipf 0.99, a cache of a fifth of the keys | memory; other writers must announce their writes (events, Redis) or wait out a time-to-live |
//! | slow or bursty writes | buffer them | [`cache::WriteBehind`], optionally journalled | writes acknowledged from memory: 0.03 database calls per request in the lab | durability moves to the journal; the store sees writes later |
//! | reads outgrow one server | read replicas | [`replica::ReplicaSet`], [`replica::Session`] | each doubling of replicas doubled read throughput | ~75 ns routing per read; read-your-writes waits for a replica (in `data_layer`, one cache miss in five, ~4 ms); nothing for writes: a primary saturated by writes stops the scaling |
//! | writes or data outgrow one server | shard | [`shard::Sharded`], [`shard::BucketSharded`] | 1.6×, 2.6×, 4.2× at 2, 4, 8 shards where replicas had stopped helping | no cross-shard transactions; resharding is a deliberate, verified operation |
//! | reads need another shape than writes | CQRS | [`cqrs::CommandBus`], [`cqrs::Projection`], [`cqrs::QueryBus`] | read models shaped per query, rebuilt from the log | read models lag; 1.9× the cost of the same command by hand |
//! | parts of the system react to changes | events | [`events::EventBus`], [`events::Publishing`]; NATS JetStream (feature `nats`) | decoupled consumers with per-key order, retries, dead letters | at-least-once handling; in process, events last as long as the process |
//!
//! The lab is `cargo run --release --example playbook` (every level on one
//! workload; CSV and an SVG chart); the composed application is
//! `cargo run --release --example data_layer`. Figures are ratios from a
//! shared 2-core machine; each module's docs give its own in detail.
//!
//! ## The one idea: everything is a `Store`
//!
//! The spine is:
//!
//! - [`Store`]: async `get` / `put` / `delete` plus the batch forms
//!   `get_many` and `write_batch`, with native `async fn` (no allocation per
//!   call), and [`DynStore`], its object-safe twin, for type erasure;
//! - [`Position`]: the consistency token every write returns, so a read can
//!   later demand to see that write;
//! - [`Error`]: one error type, one pointer wide, whose [`ErrorKind`] says
//!   what failed;
//! - [`codec`]: how keys and values cross into SQL;
//! - `testing` (feature `testing`): the conformance suites, a model test and
//!   a fault-injecting wrapper that every backend and layer runs.
//!
//! ## A composed stack
//!
//! Four shards, each a primary with a replica behind a read-your-writes
//! session, every write published as an event, a cache in front: one
//! [`Store`].
//!
//! ```
//! use std::time::Duration;
//! use scalekit::cache::{MemoryTier, ReadThrough};
//! use scalekit::events::{Change, EventBus, Publishing};
//! use scalekit::replica::{simulated::SimulatedPrimary, ReplicaSet, Session};
//! use scalekit::shard::{Jump, Sharded};
//! use scalekit::Store;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let bus = EventBus::new();
//! let changes = bus.topic::<Change<u64, String>>("users.changes")?;
//! let mut shards = Vec::new();
//! for _ in 0..4 {
//!     let primary = SimulatedPrimary::new(); // or over a SqliteStore, a PostgresStore
//!     let replica = primary.replica(Duration::from_millis(2)).await?;
//!     let set = ReplicaSet::builder().primary(primary).replica("r1", replica).build().await?;
//!     shards.push(Publishing::new(Session::new(set), changes.clone()));
//! }
//! let users = Sharded::builder().shards(shards).strategy(Jump::new(4)?).build()?;
//! let users = ReadThrough::builder(users, MemoryTier::with_capacity(10_000)?).build()?;
//!
//! users.put(7, "ada".to_string()).await?;
//! assert_eq!(users.get(&7).await?, Some("ada".to_string())); // its own write, from a replica
//! assert_eq!(users.get(&7).await?, Some("ada".to_string())); // then from the cache
//! assert_eq!((users.stats().hits, changes.stats().published), (1, 1));
//! # Ok::<(), scalekit::Error>(()) }).unwrap();
//! ```
//!
//! ## Feature flags
//!
//! | feature | default | adds |
//! |---|---|---|
//! | `sqlite` | yes | [`SqliteStore`](store::SqliteStore) over a bundled SQLite |
//! | `postgres` | no | [`PostgresStore`](store::PostgresStore) over tokio-postgres with a pool |
//! | `redis` | no | `cache::RedisTier` (a cache tier shared by many processes) and `cache::RedisInvalidation` (coherent in-process tiers across processes) |
//! | `quick-cache` | no | `cache::QuickCacheTier`, an in-process cache tier on quick_cache (the default [`cache::MemoryTier`] needs no feature) |
//! | `serde` | no | [`codec::JsonEncoded`] for any serde type; serde for [`Position`] |
//! | `nats` | no | `events::nats::NatsTopic`: event topics on NATS JetStream, shared by many processes |
//! | `testing` | no | `scalekit::testing`: conformance suite, model test, `FaultyStore` |
#![cfg_attr(docsrs, feature(doc_cfg))]
// Unsafe code is denied everywhere but one audited place: mapping the
// write-behind journal's active segment (`cache/write_behind/journal/
// segment.rs`), which `benches/write_behind.rs` shows is needed for a
// journalled put to cost about what an unjournalled one does.
#![deny(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod backoff;
pub mod cache;
pub mod codec;
pub mod cqrs;
mod error;
pub mod events;
mod join;
pub mod lease;
pub mod position;
pub mod replica;
pub mod shard;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{BoxError, CodecDirection, Error, ErrorKind, Result};
pub use position::Position;
pub use store::{Check, DynStore, MemoryStore, Store, Version, Versioned, Write};
