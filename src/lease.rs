//! Leases and fences: one holder at a time across processes, and writes
//! that only the holder can make.
//!
//! # Which tool for which problem
//!
//! | you want | use |
//! |---|---|
//! | one process of many to do a job (run a projection, a resharding) and another to take over when it dies | a [`Lease`] on a key of a shared store: [`try_acquire`](Lease::try_acquire), then [`renew`](Lease::renew) well within its time to live |
//! | a holder that stalled past its lease (SIGSTOP, a long pause, a VM migration) to be unable to write when it wakes | [`Fenced`]: a store layer whose every write is conditional on the lease record being the one this holder last wrote |
//!
//! A lease is a record in the store (holder, epoch, expiry), changed only
//! by conditional writes ([`Store::write_if`]), so two processes racing
//! for a free lease cannot both win, and a live holder's renewal cannot
//! be lost. Expiry is wall-clock time (milliseconds since the Unix epoch,
//! written by the holder): it decides *when another process may take
//! over*, never *whether a write is safe*. Safety is the fence's job:
//! [`Fenced`] adds a check on the lease record's [`Version`] to every
//! write, and every acquisition and renewal writes the record, so a
//! holder that was replaced gets an
//! [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) for each write it
//! tries, however late it wakes up and whatever its clock says. The
//! fenced writes must go to the store that holds the lease record (the
//! check is atomic within one store).
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use scalekit::lease::{Fenced, Lease};
//! use scalekit::{MemoryStore, Store};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let store = Arc::new(MemoryStore::<String, Vec<u8>>::new());
//! let mine = Lease::new(Arc::clone(&store), "jobs/compactor", Duration::from_secs(5));
//! let theirs = Lease::new(Arc::clone(&store), "jobs/compactor", Duration::from_secs(5));
//! assert!(mine.try_acquire().await?);
//! assert!(!theirs.try_acquire().await?, "held by another");
//!
//! let output = Fenced::new(Arc::clone(&store), mine.fence());
//! output.put("jobs/compactor/progress".into(), b"42".to_vec()).await?;
//! # Ok::<(), scalekit::Error>(()) }).unwrap();
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{Check, Store, Version, Versioned, Write};
use crate::{CodecDirection, Error, Position, Result};

/// What this holder last wrote to the lease record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// The record's version after that write.
    version: Version,
    epoch: u64,
    expires_ms: u64,
}

/// The shared state of a lease and its fences.
#[derive(Debug)]
struct State {
    key: String,
    held: RwLock<Option<Held>>,
}

impl State {
    fn held(&self) -> Option<Held> {
        *self.held.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, held: Option<Held>) {
        *self.held.write().unwrap_or_else(PoisonError::into_inner) = held;
    }
}

/// A lease on one key of a shared store: at most one holder at a time,
/// taken over when its holder stops renewing. See the [module docs](self).
pub struct Lease<S> {
    store: S,
    holder: String,
    ttl: Duration,
    state: Arc<State>,
}

impl<S> fmt::Debug for Lease<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.state.key)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .field("held", &self.state.held())
            .finish()
    }
}

/// The lease record: epoch, expiry (ms since the Unix epoch), holder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    epoch: u64,
    expires_ms: u64,
    holder: String,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.holder.len());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
        out.extend_from_slice(self.holder.as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || {
            Error::codec(
                CodecDirection::Decode,
                "value",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a corrupt lease record"),
            )
        };
        if bytes.len() < 16 {
            return Err(corrupt());
        }
        let word = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(raw)
        };
        Ok(Record {
            epoch: word(0),
            expires_ms: word(8),
            holder: String::from_utf8(bytes[16..].to_vec()).map_err(|_| corrupt())?,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A holder name unique to this process and lease value.
fn unique_holder() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!(
        "pid{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl<S: Store<Key = String, Value = Vec<u8>>> Lease<S> {
    /// A lease on `key` in `store` that lasts `ttl` past each acquisition
    /// or renewal; it is not held until [`try_acquire`](Self::try_acquire)
    /// says so. The holder's name is unique to this value (process id,
    /// time, counter).
    pub fn new(store: S, key: impl Into<String>, ttl: Duration) -> Self {
        Lease {
            store,
            holder: unique_holder(),
            ttl,
            state: Arc::new(State {
                key: key.into(),
                held: RwLock::new(None),
            }),
        }
    }

    /// The key of the lease record.
    pub fn key(&self) -> &str {
        &self.state.key
    }

    /// This holder's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long the lease lasts past each acquisition or renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The epoch of the lease while this holder holds it (it grows with
    /// each new holder); `None` when not held.
    pub fn epoch(&self) -> Option<u64> {
        self.state.held().map(|held| held.epoch)
    }

    /// Whether this holder holds the lease, as far as it knows (it may
    /// have been taken over since its last renewal if it stalled: the
    /// [`Fenced`] writes find out for sure).
    pub fn is_held(&self) -> bool {
        self.state
            .held()
            .is_some_and(|held| now_ms() < held.expires_ms)
    }

    /// A fence for [`Fenced`] writes: they pass only while the lease
    /// record is the one this holder last wrote.
    pub fn fence(&self) -> Fence {
        Fence {
            state: Arc::clone(&self.state),
        }
    }

    /// Takes the lease if nobody holds it (or its holder let it expire),
    /// or renews it if this holder does; `true` if held now. A record
    /// this holder left without knowing its version (after a
    /// [`release`](Self::release), or a renewal that failed with a store
    /// error) is taken again at once, as a new epoch.
    ///
    /// # Errors
    ///
    /// The store's errors (the lease is then treated as not held); a
    /// codec error for a corrupt record.
    pub async fn try_acquire(&self) -> Result<bool> {
        let read = self.store.get_versioned(&self.state.key).await?;
        let now = now_ms();
        let (epoch, check) = match &read {
            None => (1, Check::Absent(self.state.key.clone())),
            Some(Versioned { value, version }) => {
                let record = Record::decode(value)?;
                let ours = record.holder == self.holder;
                let renewal = ours
                    && self
                        .state
                        .held()
                        .is_some_and(|held| held.version == *version);
                if renewal {
                    (
                        record.epoch,
                        Check::Version(self.state.key.clone(), *version),
                    )
                } else if ours || now >= record.expires_ms {
                    // Expired, or left by this holder without its knowing
                    // the version (released, or a write of unknown
                    // outcome): a new tenure, whose version fences out
                    // whatever the old one still had in flight.
                    (
                        record.epoch + 1,
                        Check::Version(self.state.key.clone(), *version),
                    )
                } else {
                    self.state.set(None);
                    return Ok(false);
                }
            }
        };
        self.write_record(epoch, check).await
    }

    /// Extends the lease by its time to live; `false` (and not held) if
    /// another holder took it over.
    ///
    /// # Errors
    ///
    /// The store's errors: whether the renewal landed is then unknown, so
    /// the lease is treated as not held until the next call.
    pub async fn renew(&self) -> Result<bool> {
        let Some(held) = self.state.held() else {
            return Ok(false);
        };
        self.write_record(
            held.epoch,
            Check::Version(self.state.key.clone(), held.version),
        )
        .await
    }

    /// Gives the lease up (if still held), so another process can take it
    /// at once rather than after its expiry.
    ///
    /// # Errors
    ///
    /// The store's errors.
    pub async fn release(&self) -> Result<()> {
        let Some(held) = self.state.held() else {
            return Ok(());
        };
        self.state.set(None);
        let expired = Record {
            epoch: held.epoch,
            expires_ms: 0,
            holder: self.holder.clone(),
        };
        match self
            .store
            .write_if(
                vec![Check::Version(self.state.key.clone(), held.version)],
                vec![Write::Put(self.state.key.clone(), expired.encode())],
            )
            .await
        {
            Err(error) if !error.is_conflict() => Err(error),
            _ => Ok(()),
        }
    }

    /// Writes this holder's record under `check`, then reads its version
    /// back (the fence's check).
    async fn write_record(&self, epoch: u64, check: Check<String>) -> Result<bool> {
        let expires_ms =
            now_ms().saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let record = Record {
            epoch,
            expires_ms,
            holder: self.holder.clone(),
        };
        let written = self
            .store
            .write_if(
                vec![check],
                vec![Write::Put(self.state.key.clone(), record.encode())],
            )
            .await;
        match written {
            Ok(_) => {}
            Err(error) if error.is_conflict() => {
                self.state.set(None);
                return Ok(false);
            }
            Err(error) => {
                self.state.set(None);
                return Err(error);
            }
        }
        // The version this write left: read back, and only ours if the
        // record is still the one written (nobody can take a lease that
        // has just been renewed, short of a stall longer than its ttl).
        match self.store.get_versioned(&self.state.key).await {
            Ok(Some(read)) if Record::decode(&read.value)? == record => {
                self.state.set(Some(Held {
                    version: read.version,
                    epoch,
                    expires_ms,
                }));
                Ok(true)
            }
            Ok(_) => {
                self.state.set(None);
                Ok(false)
            }
            Err(error) => {
                self.state.set(None);
                Err(error)
            }
        }
    }
}

/// The check a [`Fenced`] store adds to its writes; from
/// [`Lease::fence`]. Cloning it is cheap (clones follow the same lease).
#[derive(Debug, Clone)]
pub struct Fence {
    state: Arc<State>,
}

impl Fence {
    /// The check that the lease record is the one this holder last wrote;
    /// a conflict error when the holder does not hold the lease.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) naming the
    /// lease key when the lease is not held.
    pub fn check(&self) -> Result<Check<String>> {
        match self.state.held() {
            Some(held) => Ok(Check::Version(self.state.key.clone(), held.version)),
            None => Err(Error::conflict(format!("{:?}", self.state.key), 0, None)),
        }
    }

    /// The lease's epoch while held.
    pub fn epoch(&self) -> Option<u64> {
        self.state.held().map(|held| held.epoch)
    }
}

/// A store layer whose every write is conditional on a [`Fence`]: it
/// lands only while the fence's lease is held by the holder that made
/// the fence, and fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict)
/// otherwise (nothing of it applied). Reads pass through. The inner store
/// must hold the lease record.
#[derive(Debug, Clone)]
pub struct Fenced<S> {
    store: S,
    fence: Fence,
}

impl<S> Fenced<S> {
    /// Fences the writes to `store` with `fence`.
    pub fn new(store: S, fence: Fence) -> Self {
        Fenced { store, fence }
    }

    /// The inner store.
    pub fn get_ref(&self) -> &S {
        &self.store
    }

    /// The fence.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }
}

impl<S: Store<Key = String, Value = Vec<u8>>> Store for Fenced<S> {
    type Key = String;
    type Value = Vec<u8>;

    async fn get(&self, key: &String) -> Result<Option<Vec<u8>>> {
        self.store.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        self.store.get_many(keys).await
    }

    async fn put(&self, key: String, value: Vec<u8>) -> Result<Position> {
        self.write_batch(vec![Write::Put(key, value)]).await
    }

    async fn delete(&self, key: &String) -> Result<Position> {
        self.write_batch(vec![Write::Delete(key.clone())]).await
    }

    async fn write_batch(&self, batch: Vec<Write<String, Vec<u8>>>) -> Result<Position> {
        self.write_if(Vec::new(), batch).await
    }

    async fn get_versioned(&self, key: &String) -> Result<Option<Versioned<Vec<u8>>>> {
        self.store.get_versioned(key).await
    }

    /// The caller's checks, then the fence's (a conflict on the fence has
    /// the index one past the caller's checks).
    async fn write_if(
        &self,
        mut checks: Vec<Check<String>>,
        batch: Vec<Write<String, Vec<u8>>>,
    ) -> Result<Position> {
        checks.push(self.fence.check()?);
        self.store.write_if(checks, batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    type Shared = Arc<MemoryStore<String, Vec<u8>>>;

    fn lease(store: &Shared, ttl_ms: u64) -> Lease<Shared> {
        Lease::new(Arc::clone(store), "job", Duration::from_millis(ttl_ms))
    }

    #[tokio::test]
    async fn one_holder_at_a_time_and_a_takeover_after_expiry_fences_the_old_holder_out() {
        let store: Shared = Arc::new(MemoryStore::new());
        let (old, new) = (lease(&store, 50), lease(&store, 50));
        assert!(old.try_acquire().await.unwrap());
        assert_eq!(old.epoch(), Some(1));
        assert!(!new.try_acquire().await.unwrap(), "held and not expired");
        let old_output = Fenced::new(Arc::clone(&store), old.fence());
        old_output.put("out".into(), b"old".to_vec()).await.unwrap();
        assert!(old.renew().await.unwrap(), "a live holder renews");
        old_output
            .put("out".into(), b"old 2".to_vec())
            .await
            .unwrap();

        // The old holder stalls past its lease; the new one takes over.
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert!(new.try_acquire().await.unwrap(), "expired: taken over");
        assert_eq!(new.epoch(), Some(2), "a new holder, a new epoch");
        let new_output = Fenced::new(Arc::clone(&store), new.fence());
        new_output.put("out".into(), b"new".to_vec()).await.unwrap();

        // The old holder wakes up with its old fence: every write fails.
        let stale = old_output
            .put("out".into(), b"stale".to_vec())
            .await
            .unwrap_err();
        assert!(stale.is_conflict(), "{stale}");
        assert!(old_output
            .write_batch(vec![Write::Put("other".into(), b"x".to_vec())])
            .await
            .unwrap_err()
            .is_conflict());
        assert!(!old.renew().await.unwrap(), "its renewal fails too");
        assert!(old_output
            .put("out".into(), b"stale".to_vec())
            .await
            .unwrap_err()
            .is_conflict());
        assert_eq!(
            store.get(&"out".to_string()).await.unwrap(),
            Some(b"new".to_vec())
        );
        assert_eq!(store.get(&"other".to_string()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_a_lease_never_held_fences_everything() {
        let store: Shared = Arc::new(MemoryStore::new());
        let (first, second) = (lease(&store, 60_000), lease(&store, 60_000));
        let never = Fenced::new(Arc::clone(&store), second.fence());
        assert!(never
            .put("k".into(), vec![1])
            .await
            .unwrap_err()
            .is_conflict());
        assert!(first.try_acquire().await.unwrap());
        assert!(
            first.try_acquire().await.unwrap(),
            "the holder acquires again: a renewal"
        );
        assert_eq!(first.epoch(), Some(1));
        first.release().await.unwrap();
        assert!(!first.is_held());
        assert!(
            second.try_acquire().await.unwrap(),
            "released: no wait for the expiry"
        );
        assert_eq!(second.epoch(), Some(2));
        assert!(
            never.put("k".into(), vec![2]).await.is_ok(),
            "the fence follows its lease"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_many_racing_for_a_free_lease_exactly_one_wins() {
        let store: Shared = Arc::new(MemoryStore::new());
        let racers: Vec<_> = (0..16).map(|_| Arc::new(lease(&store, 60_000))).collect();
        let tasks: Vec<_> = racers
            .iter()
            .map(|racer| {
                let racer = Arc::clone(racer);
                tokio::spawn(async move { racer.try_acquire().await.unwrap() })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap());
        }
        assert_eq!(winners, 1);
    }

    #[test]
    fn a_corrupt_record_is_a_codec_error() {
        assert!(Record::decode(&[1, 2, 3]).is_err());
        assert!(Record::decode(&[0; 15]).is_err());
        for holder in ["h", ""] {
            let record = Record {
                epoch: 3,
                expires_ms: 9,
                holder: holder.into(),
            };
            assert_eq!(Record::decode(&record.encode()).unwrap(), record);
        }
    }

    #[tokio::test]
    async fn a_lease_says_what_it_is_and_holders_are_unique() {
        let store: Shared = Arc::new(MemoryStore::new());
        let (one, two) = (lease(&store, 1_500), lease(&store, 1_500));
        assert_eq!(one.key(), "job");
        assert_eq!(one.ttl(), Duration::from_millis(1_500));
        assert_ne!(one.holder(), two.holder());
        assert!(one
            .holder()
            .starts_with(&format!("pid{}-", std::process::id())));
        let shown = format!("{one:?}");
        assert!(
            shown.contains("job") && shown.contains(one.holder()),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn held_means_acquired_and_not_expired_and_the_fence_knows_the_epoch() {
        let store: Shared = Arc::new(MemoryStore::new());
        let short = lease(&store, 40);
        let fence = short.fence();
        assert!(!short.is_held());
        assert_eq!(fence.epoch(), None);
        assert!(short.try_acquire().await.unwrap());
        assert!(short.is_held());
        assert_eq!(fence.epoch(), Some(1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!short.is_held(), "expired without a renewal");
        let next = lease(&store, 60_000);
        assert!(next.try_acquire().await.unwrap());
        assert_eq!(next.fence().epoch(), Some(2));
        assert_eq!(fence.epoch(), Some(1), "what the old holder last knew");
        assert!(!short.renew().await.unwrap());
        assert_eq!(fence.epoch(), None);
    }

    #[tokio::test]
    async fn taking_a_lease_again_after_releasing_it_is_a_new_epoch() {
        let store: Shared = Arc::new(MemoryStore::new());
        let holder = lease(&store, 60_000);
        assert!(holder.try_acquire().await.unwrap());
        holder.release().await.unwrap();
        assert!(holder.try_acquire().await.unwrap());
        assert_eq!(holder.epoch(), Some(2), "a new tenure, not a renewal");
    }

    /// A store whose conditional writes can fail (`down`), and where
    /// another holder's record can land just after a write (`steal`).
    #[derive(Debug, Clone, Default)]
    struct Troubled {
        inner: Arc<MemoryStore<String, Vec<u8>>>,
        down: Arc<std::sync::atomic::AtomicBool>,
        steal: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Store for Troubled {
        type Key = String;
        type Value = Vec<u8>;

        async fn get(&self, key: &String) -> Result<Option<Vec<u8>>> {
            self.inner.get(key).await
        }
        async fn put(&self, key: String, value: Vec<u8>) -> Result<Position> {
            self.inner.put(key, value).await
        }
        async fn delete(&self, key: &String) -> Result<Position> {
            self.inner.delete(key).await
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
            self.inner.get_many(keys).await
        }
        async fn write_batch(&self, batch: Vec<Write<String, Vec<u8>>>) -> Result<Position> {
            self.inner.write_batch(batch).await
        }
        async fn get_versioned(&self, key: &String) -> Result<Option<Versioned<Vec<u8>>>> {
            self.inner.get_versioned(key).await
        }
        async fn write_if(
            &self,
            checks: Vec<Check<String>>,
            batch: Vec<Write<String, Vec<u8>>>,
        ) -> Result<Position> {
            if self.down.load(Ordering::Relaxed) {
                return Err(Error::unavailable("test store", "down"));
            }
            let key = batch.first().map(|write| write.key().clone());
            let position = self.inner.write_if(checks, batch).await?;
            if let (Some(key), true) = (key, self.steal.swap(false, Ordering::Relaxed)) {
                let thief = Record {
                    epoch: 99,
                    expires_ms: u64::MAX,
                    holder: "thief".into(),
                };
                self.inner.put(key, thief.encode()).await?;
            }
            Ok(position)
        }
    }

    #[tokio::test]
    async fn a_store_failure_is_an_error_and_the_lease_is_not_held() {
        let store = Troubled::default();
        let holder = Lease::new(store.clone(), "job", Duration::from_secs(60));
        store.down.store(true, Ordering::Relaxed);
        let error = holder.try_acquire().await.unwrap_err();
        assert!(!error.is_conflict(), "{error}");
        assert!(!holder.is_held());
        store.down.store(false, Ordering::Relaxed);
        assert!(holder.try_acquire().await.unwrap());
        store.down.store(true, Ordering::Relaxed);
        assert!(holder.renew().await.is_err());
        assert!(!holder.is_held(), "a renewal of unknown outcome: not held");
        store.down.store(false, Ordering::Relaxed);
        assert!(
            holder.try_acquire().await.unwrap(),
            "its own record is taken again at once"
        );
        assert_eq!(holder.epoch(), Some(2), "as a new tenure");
        store.down.store(true, Ordering::Relaxed);
        assert!(
            holder.release().await.is_err(),
            "a release that did not land says so"
        );
    }

    #[tokio::test]
    async fn releasing_a_lease_taken_over_meanwhile_is_no_error_and_leaves_the_new_holder() {
        let store: Shared = Arc::new(MemoryStore::new());
        let (old, new) = (lease(&store, 30), lease(&store, 60_000));
        assert!(old.try_acquire().await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(new.try_acquire().await.unwrap());
        old.release().await.unwrap();
        assert!(new.renew().await.unwrap(), "the new holder still holds it");
    }

    #[tokio::test]
    async fn a_write_that_another_holder_overwrote_at_once_is_not_held() {
        let store = Troubled::default();
        let holder = Lease::new(store.clone(), "job", Duration::from_secs(60));
        store.steal.store(true, Ordering::Relaxed);
        assert!(!holder.try_acquire().await.unwrap());
        assert!(!holder.is_held());
        assert!(holder.fence().check().unwrap_err().is_conflict());
    }
}
