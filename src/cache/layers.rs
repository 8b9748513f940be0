//! `ReadThrough` and `WriteThrough`: the two faces of one cache core.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use super::builder::CacheBuilder;
use super::core::{Cached, Core, Probe};
use super::stats::CacheStats;
use super::tier::CacheTier;
use crate::store::{Store, Write};
use crate::{Position, Result};

macro_rules! cache_layer {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<S: Store, T> {
            core: Arc<Core<S, T>>,
        }

        impl<S: Store, T> Clone for $name<S, T> {
            fn clone(&self) -> Self {
                $name {
                    core: Arc::clone(&self.core),
                }
            }
        }

        impl<S: Store, T: fmt::Debug> fmt::Debug for $name<S, T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.core).finish()
            }
        }

        impl<S, T> $name<S, T>
        where
            S: Store,
            T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
        {
            /// Starts configuring a cache of `store` kept in `tier`.
            pub fn builder(store: S, tier: T) -> CacheBuilder<S, T, Self> {
                CacheBuilder::new(store, tier)
            }

            pub(crate) fn from_core(core: Arc<Core<S, T>>) -> Self {
                $name { core }
            }

            /// A snapshot of the counters.
            pub fn stats(&self) -> CacheStats {
                self.core.stats()
            }

            /// Removes `key` from the tier, so the next read loads it; a
            /// load already in flight cannot fill it back.
            pub async fn invalidate(&self, key: &S::Key) {
                self.core.invalidate(key).await
            }

            /// The cached store.
            pub fn get_ref(&self) -> &S {
                &self.core.store
            }

            /// The tier the entries live in.
            pub fn tier(&self) -> &T {
                &self.core.tier
            }
        }

        impl<S, T> Store for $name<S, T>
        where
            S: Store,
            T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
        {
            type Key = S::Key;
            type Value = S::Value;

            /// A hit of an in-process tier is answered in the first poll,
            /// in registers; anything else continues in a boxed future.
            #[inline(always)]
            fn get(
                &self,
                key: &S::Key,
            ) -> impl Future<Output = Result<Option<S::Value>>> + Send {
                async move {
                    match self.core.try_hit(key) {
                        Probe::Hit(value) => Ok(value),
                        probe => self.core.finish_get_boxed(key, probe).await,
                    }
                }
            }

            async fn put(&self, key: S::Key, value: S::Value) -> Result<Position> {
                self.core.write(vec![Write::Put(key, value)]).await
            }

            async fn delete(&self, key: &S::Key) -> Result<Position> {
                self.core.write(vec![Write::Delete(key.clone())]).await
            }

            async fn get_many(&self, keys: &[S::Key]) -> Result<Vec<Option<S::Value>>> {
                self.core.get_many(keys).await
            }

            async fn write_batch(&self, batch: Vec<Write<S::Key, S::Value>>) -> Result<Position> {
                self.core.write(batch).await
            }

            /// Read from the store, past the tier: a cached value has no
            /// version.
            async fn get_versioned(
                &self,
                key: &S::Key,
            ) -> Result<Option<crate::Versioned<S::Value>>> {
                self.core.store.get_versioned(key).await
            }

            /// Forwarded to the store; the tier then changes as after a
            /// plain write of the batch (a conflict drops the keys).
            async fn write_if(
                &self,
                checks: Vec<crate::Check<S::Key>>,
                batch: Vec<Write<S::Key, S::Value>>,
            ) -> Result<Position> {
                self.core.write_if(checks, batch).await
            }
        }
    };
}

cache_layer!(
    /// A read-through cache over any [`Store`], itself a [`Store`].
    ///
    /// Reads check the tier; a miss loads from the store once however many
    /// readers wait (single-flight), fills the tier and answers them all
    /// (errors are shared, never cached). A `get_many` loads all its misses
    /// in one `get_many` on the store. Writes go to the store, then
    /// invalidate the tier; a load that raced with a write never puts the
    /// older value back (see the [module docs](crate::cache)).
    ///
    /// Loads and writes run in tasks of their own, so a cancelled caller
    /// cancels neither; the cache must be used inside a tokio runtime.
    ///
    /// ```
    /// use scalekit::cache::{MemoryTier, ReadThrough};
    /// use scalekit::{MemoryStore, Store};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let cache = ReadThrough::builder(MemoryStore::<u64, String>::new(), MemoryTier::with_capacity(10_000)?)
    ///     .build()?;
    /// cache.put(1, "ada".into()).await?;
    /// assert_eq!(cache.get(&1).await?, Some("ada".into())); // a miss: loads
    /// assert_eq!(cache.get(&1).await?, Some("ada".into())); // a hit
    /// assert_eq!((cache.stats().hits, cache.stats().loads), (1, 1));
    /// # Ok::<(), scalekit::Error>(()) }).unwrap();
    /// ```
    ReadThrough
);

cache_layer!(
    /// A write-through cache over any [`Store`], itself a [`Store`].
    ///
    /// A write goes to the store first and, only when the store has taken
    /// it, puts the new value in the tier; when the store fails, the key is
    /// dropped from the tier (the store may have applied the write) and the
    /// caller gets the error. When writes to keys of
    /// the same stripe overlap, their order in the store cannot be known, so
    /// the tier entry is invalidated instead of updated. Reads behave as in
    /// [`ReadThrough`].
    ///
    /// ```
    /// use scalekit::cache::{MemoryTier, WriteThrough};
    /// use scalekit::{MemoryStore, Store};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let cache = WriteThrough::builder(MemoryStore::<u64, String>::new(), MemoryTier::with_capacity(10_000)?)
    ///     .build()?;
    /// cache.put(1, "ada".into()).await?;
    /// assert_eq!(cache.get(&1).await?, Some("ada".into())); // a hit: the write filled the tier
    /// assert_eq!(cache.stats().loads, 0);
    /// # Ok::<(), scalekit::Error>(()) }).unwrap();
    /// ```
    WriteThrough
);
