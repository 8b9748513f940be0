//! Read-your-writes per key: only the keys written lately wait for a
//! replica that has them.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::positioned::Positioned;
use super::set::ReplicaSet;
use crate::store::{Store, Write};
use crate::{Position, Result};

/// The fewest remembered keys at which pruning starts.
const PRUNE_FLOOR: usize = 1_024;
/// The most keys [`RecentWrites::new`] remembers one by one.
const DEFAULT_LIMIT: usize = 1_000_000;

/// A view of a [`ReplicaSet`] that remembers the position of the last
/// write of each key written through it (or [`observe`](Self::observe)d,
/// from another process's change event say), and reads such a key only
/// from a replica that has applied that position; every other key reads
/// as a plain read. It is itself a [`Store`].
///
/// Use it where one [`Session`](super::Session) for a whole process
/// would make every read wait behind the process's latest write: under a
/// cache, whose loads must not fill the cache from a replica older than a
/// write the cache has seen (see the `data_layer` example), or for a
/// service whose requests each touch their own keys. A remembered key is
/// forgotten once every replica has applied its position, so the memory
/// it takes follows the replicas' lag, not the number of keys; a replica
/// that stops cannot make it grow past a limit (see
/// [`with_limit`](Self::with_limit)).
///
/// ```
/// use std::time::Duration;
/// use scalekit::replica::simulated::SimulatedPrimary;
/// use scalekit::replica::{RecentWrites, ReplicaSet};
/// use scalekit::Store;
///
/// # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
/// let primary = SimulatedPrimary::<u64, String>::new();
/// primary.put(2, "old".into()).await?;
/// let replica = primary.replica(Duration::from_millis(50)).await?;
/// let set = ReplicaSet::builder().primary(primary).replica("r1", replica).build().await?;
/// let users = RecentWrites::new(set.clone());
///
/// users.put(1, "ada".into()).await?;
/// assert_eq!(users.get(&1).await?, Some("ada".into())); // waited for it (or read the primary)
/// assert_eq!(users.get(&2).await?, Some("old".into())); // a plain read: no wait
/// assert_eq!(set.stats().token_waits, 1);
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct RecentWrites<P: Positioned, R = P> {
    set: ReplicaSet<P, R>,
    recent: DashMap<P::Key, u64, foldhash::fast::RandomState>,
    /// Keys remembered, counted as they are added (`DashMap::len` visits
    /// every shard, too much for each write).
    remembered: AtomicUsize,
    /// Prune when more keys than this are remembered.
    prune_at: AtomicUsize,
    /// The most keys remembered one by one; beyond, they fold into `floor`.
    limit: usize,
    /// A position every read must see: the newest of the keys folded
    /// away while a replica was too far behind to forget them (0: none).
    floor: AtomicU64,
}

impl<P: Positioned, R> fmt::Debug for RecentWrites<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecentWrites")
            .field("remembered", &self.remembered.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .field("floor", &self.floor.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<P, R> RecentWrites<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    /// Remembers the writes made through it from now on, up to a million
    /// keys one by one (see [`with_limit`](Self::with_limit)).
    pub fn new(set: ReplicaSet<P, R>) -> Self {
        Self::with_limit(set, DEFAULT_LIMIT)
    }

    /// Remembers at most `keys` keys one by one (at least 1). When a
    /// replica falls so far behind (or stops) that more are outstanding,
    /// they are folded into one position that every read must then see,
    /// as a [`Session`](super::Session) does: memory stays bounded, reads
    /// stay correct, and they wait for a replica only until one has
    /// caught up with that position.
    pub fn with_limit(set: ReplicaSet<P, R>, keys: usize) -> Self {
        let limit = keys.max(1);
        RecentWrites {
            set,
            recent: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            remembered: AtomicUsize::new(0),
            prune_at: AtomicUsize::new(PRUNE_FLOOR.min(limit)),
            limit,
            floor: AtomicU64::new(0),
        }
    }

    /// Reads of `key` from now on see at least `position` (a write made
    /// elsewhere, heard of through a change event, say). Never lowers what
    /// is remembered.
    pub fn observe(&self, key: &P::Key, position: Position) {
        self.remember(key, position.get());
    }

    /// How many keys are remembered one by one now.
    pub fn remembered(&self) -> usize {
        self.remembered.load(Ordering::Relaxed)
    }

    /// The replica set.
    pub fn get_ref(&self) -> &ReplicaSet<P, R> {
        &self.set
    }

    fn remember(&self, key: &P::Key, position: u64) {
        // The key is cloned only the first time it is remembered.
        if let Some(mut known) = self.recent.get_mut(key) {
            *known = (*known).max(position);
            return;
        }
        if let Entry::Vacant(vacant) = self.recent.entry(key.clone()).and_modify(|known| {
            *known = (*known).max(position);
        }) {
            vacant.insert(position);
            let remembered = self.remembered.fetch_add(1, Ordering::Relaxed) + 1;
            if remembered > self.prune_at.load(Ordering::Relaxed) {
                self.prune();
            }
        }
    }

    /// Forgets the keys every replica has caught up with; beyond the
    /// limit, folds the rest into the floor.
    fn prune(&self) {
        let everywhere = self.set.applied_by_every_replica().get();
        self.recent.retain(|_, position| *position > everywhere);
        let floor = self.floor.load(Ordering::Acquire);
        if floor != 0 && floor <= everywhere {
            // Every replica has the floor: reads need not wait for it.
            let _ = self
                .floor
                .compare_exchange(floor, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        if self.recent.len() > self.limit {
            // Each key's position joins the floor before the key leaves
            // the map (under its shard's lock), so a read that no longer
            // finds the key finds the floor covering it: at no instant is
            // a remembered write covered by neither.
            self.recent.retain(|_, position| {
                self.floor.fetch_max(*position, Ordering::AcqRel);
                false
            });
        }
        let left = self.recent.len();
        self.remembered.store(left, Ordering::Relaxed);
        self.prune_at.store(
            (left * 2).max(PRUNE_FLOOR).min(self.limit),
            Ordering::Relaxed,
        );
    }

    fn token(&self, key: &P::Key) -> Option<Position> {
        let own = self.recent.get(key).map(|position| *position);
        match (own, self.floor.load(Ordering::Acquire)) {
            (None, 0) => None,
            (own, floor) => Some(Position::new(own.unwrap_or(0).max(floor))),
        }
    }

    fn wrote<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k P::Key>,
        position: Result<Position>,
    ) -> Result<Position>
    where
        P::Key: 'k,
    {
        if let Ok(position) = position {
            for key in keys {
                self.remember(key, position.get());
            }
        }
        position
    }
}

impl<P, R> Store for RecentWrites<P, R>
where
    P: Positioned,
    R: Positioned<Key = P::Key, Value = P::Value>,
{
    type Key = P::Key;
    type Value = P::Value;

    async fn get(&self, key: &P::Key) -> Result<Option<P::Value>> {
        match self.token(key) {
            Some(token) => self.set.get_after(key, token).await,
            None => self.set.get(key).await,
        }
    }

    /// One read for all the keys, after the latest position remembered
    /// for any of them.
    async fn get_many(&self, keys: &[P::Key]) -> Result<Vec<Option<P::Value>>> {
        match keys.iter().filter_map(|key| self.token(key)).max() {
            Some(token) => self.set.get_many_after(keys, token).await,
            None => self.set.get_many(keys).await,
        }
    }

    async fn put(&self, key: P::Key, value: P::Value) -> Result<Position> {
        let written = self.set.put(key.clone(), value).await;
        self.wrote([&key], written)
    }

    async fn delete(&self, key: &P::Key) -> Result<Position> {
        let written = self.set.delete(key).await;
        self.wrote([key], written)
    }

    async fn write_batch(&self, batch: Vec<Write<P::Key, P::Value>>) -> Result<Position> {
        let keys: Vec<P::Key> = batch.iter().map(|w| w.key().clone()).collect();
        let written = self.set.write_batch(batch).await;
        self.wrote(&keys, written)
    }

    async fn get_versioned(&self, key: &P::Key) -> Result<Option<crate::Versioned<P::Value>>> {
        self.set.get_versioned(key).await
    }

    /// Forwarded to the primary; on success the written keys are
    /// remembered as after any write.
    async fn write_if(
        &self,
        checks: Vec<crate::Check<P::Key>>,
        batch: Vec<Write<P::Key, P::Value>>,
    ) -> Result<Position> {
        let keys: Vec<P::Key> = batch.iter().map(|w| w.key().clone()).collect();
        let written = self.set.write_if(checks, batch).await;
        self.wrote(&keys, written)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::RecentWrites;
    use crate::replica::simulated::{SimulatedPrimary, SimulatedReplica};
    use crate::replica::ReplicaSet;

    type Set = ReplicaSet<SimulatedPrimary<u64, String>, SimulatedReplica<u64, String>>;

    /// A set over a simulated primary with one replica `delay` behind it.
    async fn one_replica(delay: Duration) -> Set {
        let primary = SimulatedPrimary::<u64, String>::new();
        let replica = primary.replica(delay).await.unwrap();
        ReplicaSet::builder()
            .primary(primary)
            .replica("r1", replica)
            .build()
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_remembered_key_keeps_its_token_while_the_keys_fold_into_the_floor() {
        // A replica that never catches up: nothing is forgotten, so past
        // the limit every prune folds the keys into the floor. A reader
        // asking for the token of the last key written must get one that
        // covers it at every instant, during the folds too.
        let set = one_replica(Duration::from_secs(3_600)).await;
        let recent = Arc::new(RecentWrites::with_limit(set, 500));
        let last = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (recent, last, stop) = (Arc::clone(&recent), Arc::clone(&last), Arc::clone(&stop));
            std::thread::spawn(move || {
                for position in 1..=200_000u64 {
                    recent.observe(&position, crate::Position::new(position));
                    last.store(position, Ordering::Release);
                }
                stop.store(true, Ordering::Release);
            })
        };
        let mut checked = 0u64;
        let mut missed = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let key = last.load(Ordering::Acquire);
            if key == 0 {
                continue;
            }
            checked += 1;
            match recent.token(&key) {
                Some(token) if token.get() >= key => {}
                other => missed.push((key, other)),
            }
            // The first key was folded long ago: the floor must still
            // cover it, whatever the later prunes did.
            if key > 1_000 && recent.token(&1).is_none_or(|token| token.get() < 1) {
                missed.push((1, recent.token(&1)));
            }
        }
        writer.join().unwrap();
        assert!(checked > 1_000, "the reader ran ({checked} checks)");
        assert!(
            missed.is_empty(),
            "{} of {checked} checks found no token covering the key, e.g. {:?}",
            missed.len(),
            &missed[..missed.len().min(3)]
        );
        assert!(recent.remembered() <= 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_floor_is_dropped_once_every_replica_has_it() {
        let set = one_replica(Duration::from_millis(5)).await;
        let recent = RecentWrites::with_limit(set.clone(), 4);
        for position in 1..=20u64 {
            recent.observe(&position, crate::Position::new(position));
        }
        assert!(
            recent.token(&999).is_some(),
            "folded: every read waits for the floor"
        );
        // The replica catches up with everything (position 20 and more).
        use crate::Store;
        for key in 100..140u64 {
            set.put(key, "v".into()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        set.refresh().await;
        assert!(set.applied_by_every_replica().get() >= 20);
        // The next prune sees that and lets reads of other keys go free.
        for position in 1_000..1_010u64 {
            recent.observe(&position, crate::Position::new(1));
        }
        assert_eq!(recent.token(&999), None, "the floor is gone");
    }
}
