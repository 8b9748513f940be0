//! Reading a whole store: what moving data between stores (resharding)
//! needs, and what the plain [`Store`] trait does not offer.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use super::{MemoryStore, Store};
use crate::Result;

/// A store whose entries can be listed. [`entries`](Scan::entries) reads
/// them all at once: it is for moving data (resharding), not for serving
/// requests.
pub trait Scan: Store {
    /// Every entry, in no particular order.
    fn entries(&self) -> impl Future<Output = Result<Vec<(Self::Key, Self::Value)>>> + Send;
}

impl<K, V> Scan for MemoryStore<K, V>
where
    K: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    async fn entries(&self) -> Result<Vec<(K, V)>> {
        Ok(MemoryStore::entries(self))
    }
}

impl<S: Scan> Scan for Arc<S> {
    fn entries(&self) -> impl Future<Output = Result<Vec<(S::Key, S::Value)>>> + Send {
        (**self).entries()
    }
}
