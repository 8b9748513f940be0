//! The storage abstraction every pattern is built on.
//!
//! # Which store for which job
//!
//! | you have | use |
//! |---|---|
//! | tests, prototypes, a process-local table | [`MemoryStore`] |
//! | one machine, data that must survive a restart, no server | [`SqliteStore`] (feature `sqlite`, on by default) |
//! | a shared database server | [`PostgresStore`] (feature `postgres`) |
//! | your own backend | implement [`Store`] for it (below) |
//! | stores of different types in one collection, or a plugin chosen at run time | [`DynStore`] behind an `Arc<dyn DynStore<..>>`, which is itself a [`Store`] |
//!
//! Every scaling pattern in scalekit is a *layer*: it wraps one store (or
//! several) and is itself a [`Store`], so layers stack the way tower
//! middleware does.
//!
//! # Contract
//!
//! A [`Store`] implementation promises, for one store instance:
//!
//! - **Read after write.** Once `put`, `delete` or `write_batch` has returned
//!   `Ok`, every later `get` or `get_many` *on the same store value* sees that
//!   write (or a later one). Layers that relax this (a replica routed read,
//!   say) document it and offer a [`Position`] to demand it back.
//! - **Positions grow.** Each successful write resolves to the store's
//!   [`Position`] after that write. A write that starts after another has
//!   returned gets a position at least as large, and strictly larger when
//!   it changed the stored data (a delete of an absent key may leave the
//!   position where it was). Positions of different stores are not
//!   comparable.
//! - **Batches are ordered.** `write_batch` applies its operations as if one
//!   after another in the order given, so the last operation on a key wins.
//!   `get_many` returns one entry per requested key, in the requested order,
//!   duplicates included.
//! - **Batch atomicity is stated by each backend.** The SQL backends apply a
//!   batch in one transaction: all of it or none of it, and no reader sees
//!   half of it. [`MemoryStore`] cannot fail half-way, but a concurrent
//!   reader may see part of a batch while it is being applied. The default
//!   `write_batch` (one write after another) is neither: on an error, a prefix
//!   of the batch may already be applied. Because every operation is a put
//!   or a delete, retrying a whole batch is always safe.
//! - **Errors mean "not known to have happened".** An `Err` from a write means
//!   the store cannot confirm the write: it may or may not have been applied
//!   (a connection can drop after the commit). A read error changes nothing.
//!   Errors are typed ([`Error`](crate::Error)): bad stored data is
//!   [`ErrorKind::Codec`](crate::ErrorKind::Codec), a closed or unreachable store is
//!   [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), an engine failure is
//!   [`ErrorKind::Backend`](crate::ErrorKind::Backend), and data the engine refuses for good
//!   (over its size limit, against a constraint) is
//!   [`ErrorKind::Refused`](crate::ErrorKind::Refused), which no retry can fix.
//!   Nothing panics on bad data.
//! - **Cancellation is safe.** Dropping a future returned by a store leaves
//!   the store usable; a dropped write may or may not have been applied.
//! - **Deleting an absent key is not an error.**
//!
//! # Conditional writes
//!
//! Several processes over one store coordinate through the store, never
//! through one process's memory. The tool is the conditional write:
//! [`write_if`](Store::write_if) applies a batch only if every [`Check`]
//! holds (etcd's *compare, then ops*; object_store's `PutMode::Create` and
//! `PutMode::Update`), and [`get_versioned`](Store::get_versioned) reads a
//! value with the [`Version`] a check can require.
//!
//! | you need | check |
//! |---|---|
//! | insert if absent (an idempotency record, a lease nobody holds) | [`Check::Absent`] on the key you put |
//! | compare and set (a counter, an aggregate, a routing table) | [`Check::Version`] with the version you read |
//! | "what I read is still true" while writing other keys (a fence) | a check on the key read, with puts of other keys |
//!
//! A store that implements them promises:
//!
//! - **All or nothing, atomically.** The checks and the writes happen as
//!   one step: no other write, from any connection or process, lands
//!   between the checks and the writes. If a check fails, nothing is
//!   applied and the error is [`ErrorKind::Conflict`](crate::ErrorKind::Conflict)
//!   with the key and the index of a failing check: "someone else wrote
//!   first", told apart from every other failure.
//! - **Versions identify writes and grow** (see [`Version`]): every write
//!   of a key, conditional or not, leaves a new version, larger than the
//!   key's previous one; a key deleted and written again never gets back
//!   a version it had.
//! - **Other errors still mean "not known"**: a conditional write that
//!   fails with a timeout may have been applied. Read again before
//!   deciding; the checks make a blind retry safe (it conflicts with its
//!   own earlier success rather than apply twice).
//!
//! [`MemoryStore`], [`SqliteStore`] and [`PostgresStore`] implement them
//! natively (SQLite in its write transaction, which serialises every
//! process on the file; PostgreSQL in one round trip, with row locks and
//! no table lock). Layers forward them where they can: a sharded store to
//! the key's shard, a replica set to its primary, a cache to its store
//! (dropping the written keys). A layer that cannot know the outcome
//! when it answers, as [`WriteBehind`](crate::cache::WriteBehind) cannot,
//! refuses with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported),
//! and so does the default implementation a backend gets if it does not
//! override the two methods.
//!
//! The conformance suite in `scalekit::testing` (feature `testing`) checks
//! these promises; run it on your own backend.
//!
//! # Static and dynamic dispatch
//!
//! [`Store`] uses native `async fn` in traits, so a call through a concrete
//! type (or a generic layer over one) allocates nothing: a [`MemoryStore`]
//! hit costs what the hash map lookup costs. Such a trait cannot be a
//! `dyn` object, so [`DynStore`] is its object-safe twin (through
//! `async-trait`, one boxed future per call). Every `Store` is a `DynStore`,
//! and `Arc<dyn DynStore<Key = K, Value = V>>` and `Box<dyn …>` are `Store`s,
//! so boxed stores compose with every layer.
//!
//! # Implementing `Store` for your own backend
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use scalekit::{Position, Result, Store};
//!
//! /// A toy backend: a mutex around a map, counting writes as positions.
//! #[derive(Debug, Default)]
//! struct MyBackend {
//!     rows: Mutex<(HashMap<u64, String>, u64)>,
//! }
//!
//! impl Store for MyBackend {
//!     type Key = u64;
//!     type Value = String;
//!
//!     async fn get(&self, key: &u64) -> Result<Option<String>> {
//!         Ok(self.rows.lock().unwrap().0.get(key).cloned())
//!     }
//!     async fn put(&self, key: u64, value: String) -> Result<Position> {
//!         let mut rows = self.rows.lock().unwrap();
//!         rows.0.insert(key, value);
//!         rows.1 += 1;
//!         Ok(Position::new(rows.1))
//!     }
//!     async fn delete(&self, key: &u64) -> Result<Position> {
//!         let mut rows = self.rows.lock().unwrap();
//!         rows.0.remove(key);
//!         rows.1 += 1;
//!         Ok(Position::new(rows.1))
//!     }
//!     // get_many and write_batch have default implementations;
//!     // override them when the backend can do a batch in one round trip.
//! }
//! ```

mod condition;
mod dyn_store;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod scan;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod write;

pub(crate) use condition::conflict;
pub use condition::{Check, Version, Versioned};
pub use dyn_store::DynStore;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresStore, PostgresStoreBuilder};
pub use scan::Scan;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStore, SqliteStoreBuilder, Synchronous};
pub use write::Write;

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use crate::{Position, Result};

/// An async key-value store: the one abstraction every scalekit layer wraps
/// and implements. Read the [module docs](self) for the contract.
pub trait Store: Debug + Send + Sync + 'static {
    /// The key type.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// The value type.
    type Value: Clone + Send + Sync + 'static;

    /// Reads one key; `Ok(None)` when it is absent.
    fn get(&self, key: &Self::Key) -> impl Future<Output = Result<Option<Self::Value>>> + Send;

    /// Writes one key, replacing any previous value. Resolves to the store's
    /// position after the write.
    fn put(
        &self,
        key: Self::Key,
        value: Self::Value,
    ) -> impl Future<Output = Result<Position>> + Send;

    /// Removes one key (absent keys are fine). Resolves to the store's
    /// position after the write.
    fn delete(&self, key: &Self::Key) -> impl Future<Output = Result<Position>> + Send;

    /// Reads many keys: one entry per requested key, in order, duplicates
    /// included. The default calls [`get`](Store::get) once per key; backends
    /// override it with one round trip.
    fn get_many(
        &self,
        keys: &[Self::Key],
    ) -> impl Future<Output = Result<Vec<Option<Self::Value>>>> + Send {
        async move {
            let mut values = Vec::with_capacity(keys.len());
            for key in keys {
                values.push(self.get(key).await?);
            }
            Ok(values)
        }
    }

    /// Applies puts and deletes in order (the last operation on a key wins)
    /// and resolves to the position after the last of them; an empty batch
    /// resolves to [`Position::ZERO`] or the current position. The default
    /// applies them one at a time and is **not atomic**; backends override it
    /// with one transaction and say so. See the [contract](self#contract).
    fn write_batch(
        &self,
        batch: Vec<Write<Self::Key, Self::Value>>,
    ) -> impl Future<Output = Result<Position>> + Send {
        async move {
            let mut position = Position::ZERO;
            for write in batch {
                position = match write {
                    Write::Put(key, value) => self.put(key, value).await?,
                    Write::Delete(key) => self.delete(&key).await?,
                };
            }
            Ok(position)
        }
    }

    /// Reads one key with the [`Version`] of the write that stored it, for
    /// a later [`Check::Version`]. The default refuses with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); see
    /// [conditional writes](self#conditional-writes).
    fn get_versioned(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Option<Versioned<Self::Value>>>> + Send {
        let _ = key;
        async move { Err(not_conditional(self)) }
    }

    /// Applies `batch` (as [`write_batch`](Store::write_batch) does, in
    /// order and atomically) only if every check in `checks` holds, checks
    /// and writes in one atomic step. Resolves to the position after the
    /// batch.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) when a check
    /// fails (nothing was applied); the store's other errors, which as
    /// always mean the outcome is not known. The default refuses with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported).
    fn write_if(
        &self,
        checks: Vec<Check<Self::Key>>,
        batch: Vec<Write<Self::Key, Self::Value>>,
    ) -> impl Future<Output = Result<Position>> + Send {
        let _ = (checks, batch);
        async move { Err(not_conditional(self)) }
    }

    /// Puts this store behind an `Arc<dyn DynStore>`, erasing its type.
    /// The result is itself a [`Store`].
    fn into_dyn(self) -> Arc<dyn DynStore<Key = Self::Key, Value = Self::Value>>
    where
        Self: Sized,
    {
        Arc::new(self)
    }
}

/// The refusal of a store without conditional writes.
fn not_conditional<S: Debug + ?Sized>(store: &S) -> crate::Error {
    let name = format!("{store:?}");
    let name = name
        .split([' ', '{', '(', '<'])
        .next()
        .unwrap_or("store")
        .to_string();
    crate::Error::unsupported(
        "Store",
        "conditional writes",
        format!("{name} does not implement get_versioned and write_if"),
    )
}

/// A shared store is a store: layers and tasks can hold the same backend.
impl<S: Store> Store for Arc<S> {
    type Key = S::Key;
    type Value = S::Value;

    fn get(&self, key: &Self::Key) -> impl Future<Output = Result<Option<Self::Value>>> + Send {
        S::get(self, key)
    }

    fn put(
        &self,
        key: Self::Key,
        value: Self::Value,
    ) -> impl Future<Output = Result<Position>> + Send {
        S::put(self, key, value)
    }

    fn delete(&self, key: &Self::Key) -> impl Future<Output = Result<Position>> + Send {
        S::delete(self, key)
    }

    fn get_many(
        &self,
        keys: &[Self::Key],
    ) -> impl Future<Output = Result<Vec<Option<Self::Value>>>> + Send {
        S::get_many(self, keys)
    }

    fn write_batch(
        &self,
        batch: Vec<Write<Self::Key, Self::Value>>,
    ) -> impl Future<Output = Result<Position>> + Send {
        S::write_batch(self, batch)
    }

    fn get_versioned(
        &self,
        key: &Self::Key,
    ) -> impl Future<Output = Result<Option<Versioned<Self::Value>>>> + Send {
        S::get_versioned(self, key)
    }

    fn write_if(
        &self,
        checks: Vec<Check<Self::Key>>,
        batch: Vec<Write<Self::Key, Self::Value>>,
    ) -> impl Future<Output = Result<Position>> + Send {
        S::write_if(self, checks, batch)
    }
}
