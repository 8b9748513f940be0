//! How far a store is in the primary's history.

use std::future::Future;
use std::sync::Arc;

use crate::store::{MemoryStore, Store};
use crate::{Position, Result};

/// A store that can say how far it is in its primary's history: the
/// primary its current position, a replica the primary position it has
/// applied. Positions of a primary and its replicas must be comparable
/// (PostgreSQL's WAL positions are; so are the simulated replicas' of
/// [`simulated`](super::simulated)).
pub trait Positioned: Store {
    /// The position this store has reached (a primary) or applied (a
    /// replica).
    fn applied_position(&self) -> impl Future<Output = Result<Position>> + Send;
}

/// A [`MemoryStore`] on its own is a primary: its position counts its
/// writes.
impl<K, V> Positioned for MemoryStore<K, V>
where
    K: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    async fn applied_position(&self) -> Result<Position> {
        Ok(self.position())
    }
}

impl<S: Positioned> Positioned for Arc<S> {
    fn applied_position(&self) -> impl Future<Output = Result<Position>> + Send {
        (**self).applied_position()
    }
}
