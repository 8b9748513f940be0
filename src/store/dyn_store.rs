//! The object-safe twin of [`Store`], and the blanket impls both ways.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Check, Store, Versioned, Write};
use crate::{Position, Result};

/// The object-safe twin of [`Store`]: the same operations, each returning a
/// boxed future so the trait can stand behind `dyn`.
///
/// Its methods carry a `dyn_` prefix so that a type with both traits in
/// scope has no ambiguous calls; call the [`Store`] methods, which every
/// `Arc<dyn DynStore>` has.
///
/// You rarely implement it: every [`Store`] already is a `DynStore`. Use it
/// to erase a store's type, and use the erased store wherever a [`Store`] is
/// expected, since `Arc<dyn DynStore<..>>` and `Box<dyn DynStore<..>>` are
/// stores themselves:
///
/// ```
/// use std::sync::Arc;
/// use scalekit::{DynStore, MemoryStore, Store};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // Stores of different concrete types, chosen at run time, in one Vec.
/// let shards: Vec<Arc<dyn DynStore<Key = u64, Value = String>>> = vec![
///     MemoryStore::new().into_dyn(),
///     Arc::new(MemoryStore::new()),
/// ];
/// shards[1].put(7, "seven".to_string()).await?;
/// assert_eq!(Store::get(&shards[1], &7).await?, Some("seven".to_string()));
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
///
/// Each call allocates one boxed future; measure with `benches/store.rs`
/// before putting a `dyn` store on a hot path.
#[async_trait]
pub trait DynStore: Debug + Send + Sync + 'static {
    /// The key type.
    type Key: Clone + Eq + Hash + Debug + Send + Sync + 'static;
    /// The value type.
    type Value: Clone + Send + Sync + 'static;

    /// [`Store::get`] with a boxed future.
    async fn dyn_get(&self, key: &Self::Key) -> Result<Option<Self::Value>>;
    /// [`Store::put`] with a boxed future.
    async fn dyn_put(&self, key: Self::Key, value: Self::Value) -> Result<Position>;
    /// [`Store::delete`] with a boxed future.
    async fn dyn_delete(&self, key: &Self::Key) -> Result<Position>;
    /// [`Store::get_many`] with a boxed future.
    async fn dyn_get_many(&self, keys: &[Self::Key]) -> Result<Vec<Option<Self::Value>>>;
    /// [`Store::write_batch`] with a boxed future.
    async fn dyn_write_batch(&self, batch: Vec<Write<Self::Key, Self::Value>>) -> Result<Position>;
    /// [`Store::get_versioned`] with a boxed future.
    async fn dyn_get_versioned(&self, key: &Self::Key) -> Result<Option<Versioned<Self::Value>>>;
    /// [`Store::write_if`] with a boxed future.
    async fn dyn_write_if(
        &self,
        checks: Vec<Check<Self::Key>>,
        batch: Vec<Write<Self::Key, Self::Value>>,
    ) -> Result<Position>;
}

#[async_trait]
impl<S: Store> DynStore for S {
    type Key = S::Key;
    type Value = S::Value;

    async fn dyn_get(&self, key: &Self::Key) -> Result<Option<Self::Value>> {
        Store::get(self, key).await
    }
    async fn dyn_put(&self, key: Self::Key, value: Self::Value) -> Result<Position> {
        Store::put(self, key, value).await
    }
    async fn dyn_delete(&self, key: &Self::Key) -> Result<Position> {
        Store::delete(self, key).await
    }
    async fn dyn_get_many(&self, keys: &[Self::Key]) -> Result<Vec<Option<Self::Value>>> {
        Store::get_many(self, keys).await
    }
    async fn dyn_write_batch(&self, batch: Vec<Write<Self::Key, Self::Value>>) -> Result<Position> {
        Store::write_batch(self, batch).await
    }
    async fn dyn_get_versioned(&self, key: &Self::Key) -> Result<Option<Versioned<Self::Value>>> {
        Store::get_versioned(self, key).await
    }
    async fn dyn_write_if(
        &self,
        checks: Vec<Check<Self::Key>>,
        batch: Vec<Write<Self::Key, Self::Value>>,
    ) -> Result<Position> {
        Store::write_if(self, checks, batch).await
    }
}

/// Implements [`Store`] for a pointer to `dyn DynStore` by forwarding.
macro_rules! store_for_dyn_pointer {
    ($pointer:ident) => {
        impl<K, V> Store for $pointer<dyn DynStore<Key = K, Value = V>>
        where
            K: Clone + Eq + Hash + Debug + Send + Sync + 'static,
            V: Clone + Send + Sync + 'static,
        {
            type Key = K;
            type Value = V;

            async fn get(&self, key: &K) -> Result<Option<V>> {
                DynStore::dyn_get(&**self, key).await
            }
            async fn put(&self, key: K, value: V) -> Result<Position> {
                DynStore::dyn_put(&**self, key, value).await
            }
            async fn delete(&self, key: &K) -> Result<Position> {
                DynStore::dyn_delete(&**self, key).await
            }
            async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
                DynStore::dyn_get_many(&**self, keys).await
            }
            async fn write_batch(&self, batch: Vec<Write<K, V>>) -> Result<Position> {
                DynStore::dyn_write_batch(&**self, batch).await
            }
            async fn get_versioned(&self, key: &K) -> Result<Option<Versioned<V>>> {
                DynStore::dyn_get_versioned(&**self, key).await
            }
            async fn write_if(
                &self,
                checks: Vec<Check<K>>,
                batch: Vec<Write<K, V>>,
            ) -> Result<Position> {
                DynStore::dyn_write_if(&**self, checks, batch).await
            }
        }
    };
}

store_for_dyn_pointer!(Arc);
store_for_dyn_pointer!(Box);
