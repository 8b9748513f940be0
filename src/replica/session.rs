//! A session: read-your-writes without carrying tokens by hand.

use std::sync::atomic::{AtomicU64, Ordering};

use super::positioned::Positioned;
use super::set::ReplicaSet;
use crate::store::{Store, Write};
use crate::{Position, Result};

/// A view of a [`ReplicaSet`] that remembers the position of its own
/// writes (and of tokens it is shown) and reads only from replicas that
/// have applied it: one user's or one request's read-your-writes. It is
/// itself a [`Store`]. Make one per user or request with
/// [`Session::new`], or resume one from a token that travelled in a
/// cookie or a job with [`Session::resume`].
#[derive(Debug)]
pub struct Session<P, R = P> {
    set: ReplicaSet<P, R>,
    token: AtomicU64,
}

impl<P, R> Session<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    /// A session with nothing written yet: its reads are plain reads
    /// until its first write.
    pub fn new(set: ReplicaSet<P, R>) -> Self {
        Self::resume(set, Position::ZERO)
    }

    /// A session that has seen `token` (from an earlier request or
    /// another process).
    pub fn resume(set: ReplicaSet<P, R>, token: Position) -> Self {
        Session {
            set,
            token: AtomicU64::new(token.get()),
        }
    }

    /// The session's token: the position of its latest write or observed
    /// token. Send it along (it prints as a number) to resume elsewhere.
    pub fn token(&self) -> Position {
        Position::new(self.token.load(Ordering::Acquire))
    }

    /// Raises the session's token to `token` (never lowers it).
    pub fn observe(&self, token: Position) {
        self.token.fetch_max(token.get(), Ordering::AcqRel);
    }

    fn wrote(&self, position: Result<Position>) -> Result<Position> {
        if let Ok(position) = position {
            self.observe(position);
        }
        position
    }
}

impl<P, R> Store for Session<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    type Key = P::Key;
    type Value = P::Value;

    async fn get(&self, key: &P::Key) -> Result<Option<P::Value>> {
        match self.token() {
            Position::ZERO => self.set.get(key).await,
            token => self.set.get_after(key, token).await,
        }
    }

    async fn get_many(&self, keys: &[P::Key]) -> Result<Vec<Option<P::Value>>> {
        match self.token() {
            Position::ZERO => self.set.get_many(keys).await,
            token => self.set.get_many_after(keys, token).await,
        }
    }

    async fn put(&self, key: P::Key, value: P::Value) -> Result<Position> {
        self.wrote(self.set.put(key, value).await)
    }

    async fn delete(&self, key: &P::Key) -> Result<Position> {
        self.wrote(self.set.delete(key).await)
    }

    async fn write_batch(&self, batch: Vec<Write<P::Key, P::Value>>) -> Result<Position> {
        self.wrote(self.set.write_batch(batch).await)
    }

    async fn get_versioned(&self, key: &P::Key) -> Result<Option<crate::Versioned<P::Value>>> {
        self.set.get_versioned(key).await
    }

    async fn write_if(
        &self,
        checks: Vec<crate::Check<P::Key>>,
        batch: Vec<Write<P::Key, P::Value>>,
    ) -> Result<Position> {
        self.wrote(self.set.write_if(checks, batch).await)
    }
}
