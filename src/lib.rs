//! # scalekit
//!
//! The scaling playbook of a growing system as composable layers of an
//! application's data layer, in one embeddable crate.
//!
//! | level of the playbook | scalekit |
//! |---|---|
//! | one database | a [`Store`] backend: [`MemoryStore`], [`SqliteStore`](store::SqliteStore) (embedded default), [`PostgresStore`](store::PostgresStore) |
//! | add caching | [`cache::ReadThrough`] and [`cache::WriteThrough`] over any store, with a pluggable [`cache::CacheTier`]; [`cache::WriteBehind`], optionally journalled |
//! | read replicas | replica routing: lag- and load-aware, read-your-writes *(coming)* |
//! | sharding | hash, range and directory routing, online resharding *(coming)* |
//! | CQRS | command and query buses, projections *(coming)* |
//! | event-driven | [`events::EventBus`]: typed topics, groups, per-key order, retries, dead letters, backpressure; [`events::Publishing`] turns a store's writes into events; topics shared between processes over NATS JetStream (feature `nats`) |
//!
//! ## The one idea: everything is a `Store`
//!
//! Every pattern wraps one store (or several) and is itself a [`Store`], so
//! the levels stack like tower middleware. The spine is:
//!
//! - [`Store`]: async `get` / `put` / `delete` plus the batch forms
//!   `get_many` and `write_batch`, with native `async fn` (no allocation per
//!   call), and [`DynStore`], its object-safe twin, for type erasure;
//! - [`Position`]: the consistency token every write returns, so a read can
//!   later demand to see that write;
//! - [`Error`]: one error type, one pointer wide, whose [`ErrorKind`] says
//!   what failed;
//! - [`codec`]: how keys and values cross into SQL;
//! - `testing` (feature `testing`): the conformance suite, a model test and
//!   a fault-injecting wrapper that every backend and layer runs.
//!
//! ## Example
//!
//! ```
//! use scalekit::{MemoryStore, Store, Write};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryStore::<String, String>::new();
//! let token = store.put("user:1".into(), "ada".into()).await?;
//! store
//!     .write_batch(vec![
//!         Write::Put("user:2".into(), "grace".into()),
//!         Write::Delete("user:1".into()),
//!     ])
//!     .await?;
//! let users = store.get_many(&["user:1".into(), "user:2".into()]).await?;
//! assert_eq!(users, vec![None, Some("grace".to_string())]);
//! assert!(token > scalekit::Position::ZERO);
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

pub mod cache;
pub mod codec;
pub mod cqrs;
mod error;
pub mod events;
pub mod position;
pub mod replica;
pub mod shard;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{BoxError, CodecDirection, Error, ErrorKind, Result};
pub use position::Position;
pub use store::{DynStore, MemoryStore, Store, Write};
