//! Directory routing: a table from keys, or key prefixes (a tenant's),
//! to shards, kept in a store so that it survives restarts and is shared
//! by every process, with a cached copy checked against an epoch number.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use super::strategy::Strategy;
use crate::store::{Check, Store, Write};
use crate::{CodecDirection, Error, Result};

const COMPONENT: &str = "shard directory";
/// How many times in a row a change is re-applied over another process's
/// before it fails with the conflict.
const MAX_CONFLICTS: u32 = 32;
/// The first and the longest pause before re-applying a change that
/// conflicted (doubling, with jitter, so that processes changing the
/// table in a tight loop do not starve each other).
const CONFLICT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_millis(50));

/// What a directory entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// One key, by its routing bytes.
    Key(Vec<u8>),
    /// Every key whose routing bytes start with these (the longest
    /// matching prefix wins; an exact key entry beats any prefix).
    Prefix(Vec<u8>),
}

/// What a directory does with a key it has no entry for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Routes it to this shard.
    Default(usize),
    /// Refuses it with an [`ErrorKind::Config`](crate::ErrorKind::Config) error.
    Refuse,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Table {
    epoch: u64,
    keys: HashMap<Vec<u8>, u32>,
    prefixes: HashMap<Vec<u8>, u32>,
    /// The lengths of the prefixes, longest first when iterated in reverse.
    prefix_lengths: BTreeSet<usize>,
}

impl Table {
    fn insert(&mut self, entry: Entry, shard: u32) -> Option<u32> {
        match entry {
            Entry::Key(key) => self.keys.insert(key, shard),
            Entry::Prefix(prefix) => {
                self.prefix_lengths.insert(prefix.len());
                self.prefixes.insert(prefix, shard)
            }
        }
    }

    fn lookup(&self, key: &[u8]) -> Option<u32> {
        if let Some(&shard) = self.keys.get(key) {
            return Some(shard);
        }
        self.prefix_lengths
            .iter()
            .rev()
            .filter(|&&len| len <= key.len())
            .find_map(|&len| self.prefixes.get(&key[..len]).copied())
    }

    /// epoch, then per entry: kind (0 key, 1 prefix), length, bytes, shard.
    fn encode(&self) -> Vec<u8> {
        let mut out = self.epoch.to_be_bytes().to_vec();
        let mut write = |kind: u8, bytes: &[u8], shard: u32| {
            out.push(kind);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(&shard.to_be_bytes());
        };
        for (key, &shard) in &self.keys {
            write(0, key, shard);
        }
        for (prefix, &shard) in &self.prefixes {
            write(1, prefix, shard);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Table> {
        let corrupt = || {
            Error::codec(
                CodecDirection::Decode,
                "value",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a corrupt shard directory"),
            )
        };
        let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
            let slice = bytes.get(*at..*at + n).ok_or_else(corrupt)?;
            *at += n;
            Ok(slice)
        };
        let word = |slice: &[u8]| u32::from_be_bytes(slice.try_into().unwrap_or_default());
        let mut at = 0;
        let mut table = Table {
            epoch: u64::from_be_bytes(take(&mut at, 8)?.try_into().map_err(|_| corrupt())?),
            ..Table::default()
        };
        while at < bytes.len() {
            let kind = take(&mut at, 1)?[0];
            let len = word(take(&mut at, 4)?) as usize;
            let key = take(&mut at, len)?.to_vec();
            let shard = word(take(&mut at, 4)?);
            let entry = match kind {
                0 => Entry::Key(key),
                1 => Entry::Prefix(key),
                _ => return Err(corrupt()),
            };
            table.insert(entry, shard);
        }
        Ok(table)
    }
}

/// A directory of key (or prefix) → shard, held in `S` under `name` so
/// that it survives restarts and every process shares it. Routing reads a
/// cached copy; [`refresh`](Directory::refresh) reloads it when the stored
/// epoch moved (another process changed it). A change is a
/// compare-and-set of the whole table
/// ([`Store::write_if`](crate::Store::write_if) on the version read), so
/// any number of processes may assign at once: none loses another's
/// update, every change gets its own epoch, and `refresh` sees each one.
/// A process routes by the table it loaded last, so processes agree
/// within one refresh of the last change: call `refresh` on a timer (the
/// bound is its period) or when a shard answers that it does not own a
/// key.
pub struct Directory<S> {
    store: S,
    name: String,
    shards: usize,
    unknown: Unknown,
    cache: RwLock<Arc<Table>>,
}

impl<S> fmt::Debug for Directory<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Directory")
            .field("name", &self.name)
            .field("shards", &self.shards)
            .field("epoch", &table.epoch)
            .field("entries", &(table.keys.len() + table.prefixes.len()))
            .field("unknown", &self.unknown)
            .finish()
    }
}

impl<S: Store<Key = String, Value = Vec<u8>>> Directory<S> {
    fn table_key(&self) -> String {
        format!("{}/table", self.name)
    }

    fn epoch_key(&self) -> String {
        format!("{}/epoch", self.name)
    }

    /// Opens the directory `name` in `store` (empty if it has none yet),
    /// over `shards` shards.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero shards, a
    /// default shard out of range, or a stored entry naming a shard out of
    /// range; the store's errors; a codec error for a corrupt table.
    pub async fn open(
        store: S,
        name: impl Into<String>,
        shards: usize,
        unknown: Unknown,
    ) -> Result<Self> {
        if shards == 0 {
            return Err(Error::config(COMPONENT, "at least one shard is needed"));
        }
        if let Unknown::Default(shard) = unknown {
            if shard >= shards {
                return Err(Error::config(
                    COMPONENT,
                    format!("default shard {shard} of {shards}"),
                ));
            }
        }
        let directory = Directory {
            store,
            name: name.into(),
            shards,
            unknown,
            cache: RwLock::new(Arc::new(Table::default())),
        };
        let table = directory.load().await?;
        *directory
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        Ok(directory)
    }

    /// Opens the directory and writes `entries` into it at once.
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); [`ErrorKind::Config`](crate::ErrorKind::Config)
    /// for an entry given twice or a shard out of range (nothing is written).
    pub async fn create(
        store: S,
        name: impl Into<String>,
        shards: usize,
        unknown: Unknown,
        entries: Vec<(Entry, usize)>,
    ) -> Result<Self> {
        let directory = Self::open(store, name, shards, unknown).await?;
        let mut table = (*directory.table()).clone();
        let mut seen = BTreeSet::new();
        for (entry, shard) in entries {
            if !seen.insert(entry.clone()) {
                return Err(Error::config(
                    COMPONENT,
                    format!("{entry:?} is given twice"),
                ));
            }
            table.insert(entry, directory.check_shard(shard)?);
        }
        directory
            .update(|stored| {
                for (key, shard) in &table.keys {
                    stored.insert(Entry::Key(key.clone()), *shard);
                }
                for (prefix, shard) in &table.prefixes {
                    stored.insert(Entry::Prefix(prefix.clone()), *shard);
                }
            })
            .await?;
        Ok(directory)
    }

    fn check_shard(&self, shard: usize) -> Result<u32> {
        if shard >= self.shards {
            return Err(Error::config(
                COMPONENT,
                format!("shard {shard} is not one of the {} shards", self.shards),
            ));
        }
        Ok(shard as u32)
    }

    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.cache.read().unwrap_or_else(PoisonError::into_inner))
    }

    async fn load(&self) -> Result<Table> {
        Ok(self.load_versioned().await?.0)
    }

    /// The stored table, with the check that it is still the stored one.
    async fn load_versioned(&self) -> Result<(Table, Check<String>)> {
        let read = self.store.get_versioned(&self.table_key()).await?;
        let table = match &read {
            Some(read) => Table::decode(&read.value)?,
            None => Table::default(),
        };
        let unchanged = Check::unchanged(self.table_key(), read.as_ref());
        let out_of_range = table
            .keys
            .values()
            .chain(table.prefixes.values())
            .find(|&&shard| shard as usize >= self.shards);
        if let Some(shard) = out_of_range {
            return Err(Error::config(
                COMPONENT,
                format!(
                    "the stored directory names shard {shard} of {}",
                    self.shards
                ),
            ));
        }
        Ok((table, unchanged))
    }

    /// Applies `change` to the stored table and writes it with the next
    /// epoch, if nobody wrote the table meanwhile: table and epoch in one
    /// conditional batch. Another process's change in between is read
    /// and `change` applied again on top of it, after a pause with jitter.
    async fn update(&self, change: impl Fn(&mut Table)) -> Result<u64> {
        let mut conflicts = 0;
        let mut rng = crate::backoff::seed();
        loop {
            let (mut table, unchanged) = self.load_versioned().await?;
            change(&mut table);
            table.epoch += 1;
            let batch = vec![
                Write::Put(self.table_key(), table.encode()),
                Write::Put(self.epoch_key(), table.epoch.to_be_bytes().to_vec()),
            ];
            match self.store.write_if(vec![unchanged], batch).await {
                Ok(_) => {
                    let epoch = table.epoch;
                    *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
                    return Ok(epoch);
                }
                Err(error) if error.is_conflict() && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    let (base, max) = CONFLICT_BACKOFF;
                    tokio::time::sleep(crate::backoff::backoff(base, max, conflicts, &mut rng))
                        .await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Routes `entry` to `shard` from now on; returns the new epoch,
    /// unique to this change. Safe from any number of processes at once
    /// (a compare-and-set, retried on top of the other change).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a shard out of
    /// range; [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) if other
    /// processes changed the table first 32 times in a row (each retry
    /// waits a little longer, from 1 ms doubling to 50 ms, with jitter); the store's
    /// errors ([`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
    /// over a store without conditional writes).
    pub async fn assign(&self, entry: Entry, shard: usize) -> Result<u64> {
        let shard = self.check_shard(shard)?;
        self.update(|table| {
            table.insert(entry.clone(), shard);
        })
        .await
    }

    /// Reloads the table if another process changed it (its epoch moved);
    /// `true` if it did.
    ///
    /// # Errors
    ///
    /// The store's errors; a codec error for a corrupt table.
    pub async fn refresh(&self) -> Result<bool> {
        let stored = match self.store.get(&self.epoch_key()).await? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().unwrap_or_default()),
            None => 0,
        };
        if stored == self.epoch() {
            return Ok(false);
        }
        let table = self.load().await?;
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        Ok(true)
    }

    /// The epoch of the cached table.
    pub fn epoch(&self) -> u64 {
        self.table().epoch
    }
}

impl<S: Store<Key = String, Value = Vec<u8>>> Strategy for Directory<S> {
    fn shard(&self, key: &[u8], _hash: u64) -> Result<usize> {
        let found = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .lookup(key);
        match (found, self.unknown) {
            (Some(shard), _) => Ok(shard as usize),
            (None, Unknown::Default(shard)) => Ok(shard),
            (None, Unknown::Refuse) => Err(Error::config(
                COMPONENT,
                format!(
                    "no directory entry for key {:?}",
                    String::from_utf8_lossy(key)
                ),
            )),
        }
    }

    fn shards(&self) -> usize {
        self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn a_table_round_trips_and_a_corrupt_one_is_an_error() {
        let mut table = Table {
            epoch: 7,
            ..Table::default()
        };
        table.insert(Entry::Key(b"user:1".to_vec()), 2);
        table.insert(Entry::Prefix(b"acme/".to_vec()), 1);
        let decoded = Table::decode(&table.encode()).unwrap();
        assert_eq!(decoded, table);
        let mut torn = table.encode();
        torn.truncate(torn.len() - 2);
        assert!(Table::decode(&torn).is_err());
    }

    #[tokio::test]
    async fn keys_then_the_longest_prefix_then_the_default_decide() {
        let store = Arc::new(MemoryStore::<String, Vec<u8>>::new());
        let directory = Directory::create(
            Arc::clone(&store),
            "tenants",
            4,
            Unknown::Default(0),
            vec![
                (Entry::Prefix(b"acme/".to_vec()), 1),
                (Entry::Prefix(b"acme/eu/".to_vec()), 2),
                (Entry::Key(b"acme/eu/ceo".to_vec()), 3),
            ],
        )
        .await
        .unwrap();
        let shard = |key: &str| directory.shard(key.as_bytes(), 0).unwrap();
        assert_eq!(shard("acme/us/bob"), 1);
        assert_eq!(shard("acme/eu/ann"), 2);
        assert_eq!(shard("acme/eu/ceo"), 3);
        assert_eq!(shard("globex/x"), 0);

        // Another process sees a change after refreshing.
        let other = Directory::open(Arc::clone(&store), "tenants", 4, Unknown::Refuse)
            .await
            .unwrap();
        assert_eq!(other.shard(b"acme/us/bob", 0).unwrap(), 1);
        directory
            .assign(Entry::Prefix(b"acme/us/".to_vec()), 3)
            .await
            .unwrap();
        assert!(other.refresh().await.unwrap());
        assert_eq!(other.shard(b"acme/us/bob", 0).unwrap(), 3);
        assert!(!other.refresh().await.unwrap(), "no change: no reload");
        assert!(other.shard(b"globex/x", 0).is_err(), "refused");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_assigns_from_two_directories_lose_no_update_and_get_unique_epochs() {
        let store = Arc::new(MemoryStore::<String, Vec<u8>>::new());
        let open = || Directory::open(Arc::clone(&store), "tenants", 4, Unknown::Refuse);
        let (a, b) = (
            Arc::new(open().await.unwrap()),
            Arc::new(open().await.unwrap()),
        );
        let tasks: Vec<_> = (0..40u32)
            .map(|n| {
                let directory = Arc::clone(if n % 2 == 0 { &a } else { &b });
                tokio::spawn(async move {
                    let key = format!("tenant-{n}").into_bytes();
                    directory
                        .assign(Entry::Key(key), (n % 4) as usize)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut epochs = BTreeSet::new();
        for task in tasks {
            assert!(
                epochs.insert(task.await.unwrap()),
                "an epoch was handed out twice"
            );
        }
        assert_eq!(
            epochs,
            (1..=40).collect(),
            "one epoch per change, none skipped"
        );
        for directory in [&a, &b] {
            directory.refresh().await.unwrap();
            assert_eq!(directory.epoch(), 40);
            for n in 0..40u32 {
                let key = format!("tenant-{n}");
                assert_eq!(
                    directory.shard(key.as_bytes(), 0).unwrap(),
                    (n % 4) as usize,
                    "the assign of {key} was lost"
                );
            }
        }
    }

    /// A store over a shared memory store where, before each conditional
    /// write, a rival directory changes the table (`rivals` times), or
    /// which is down; it counts the conditional writes.
    #[derive(Debug)]
    struct Contended {
        inner: Arc<MemoryStore<String, Vec<u8>>>,
        rival: Directory<Arc<MemoryStore<String, Vec<u8>>>>,
        rivals: std::sync::atomic::AtomicU32,
        down: std::sync::atomic::AtomicBool,
        tries: std::sync::atomic::AtomicU32,
    }

    impl Contended {
        async fn new(rivals: u32) -> Arc<Self> {
            let inner = Arc::new(MemoryStore::new());
            let rival = Directory::open(Arc::clone(&inner), "tenants", 4, Unknown::Refuse)
                .await
                .unwrap();
            Arc::new(Contended {
                inner,
                rival,
                rivals: rivals.into(),
                down: false.into(),
                tries: 0.into(),
            })
        }
    }

    impl Store for Contended {
        type Key = String;
        type Value = Vec<u8>;

        async fn get(&self, key: &String) -> Result<Option<Vec<u8>>> {
            self.inner.get(key).await
        }
        async fn put(&self, key: String, value: Vec<u8>) -> Result<crate::Position> {
            self.inner.put(key, value).await
        }
        async fn delete(&self, key: &String) -> Result<crate::Position> {
            self.inner.delete(key).await
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
            self.inner.get_many(keys).await
        }
        async fn write_batch(&self, batch: Vec<Write<String, Vec<u8>>>) -> Result<crate::Position> {
            self.inner.write_batch(batch).await
        }
        async fn get_versioned(
            &self,
            key: &String,
        ) -> Result<Option<crate::store::Versioned<Vec<u8>>>> {
            self.inner.get_versioned(key).await
        }
        async fn write_if(
            &self,
            checks: Vec<Check<String>>,
            batch: Vec<Write<String, Vec<u8>>>,
        ) -> Result<crate::Position> {
            use std::sync::atomic::Ordering::Relaxed;
            let tries = self.tries.fetch_add(1, Relaxed);
            if self.down.load(Relaxed) {
                return Err(Error::unavailable("test store", "down"));
            }
            if self.rivals.load(Relaxed) > 0 {
                self.rivals.fetch_sub(1, Relaxed);
                let key = format!("rival-{tries}").into_bytes();
                self.rival.assign(Entry::Key(key), 1).await?;
            }
            self.inner.write_if(checks, batch).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_assign_over_changes_made_meanwhile_is_applied_again_on_top_of_them() {
        let store = Contended::new(3).await;
        let directory = Directory::open(Arc::clone(&store), "tenants", 4, Unknown::Refuse)
            .await
            .unwrap();
        let epoch = directory
            .assign(Entry::Key(b"ours".to_vec()), 2)
            .await
            .unwrap();
        assert_eq!(epoch, 4, "after the rivals' epochs 1, 2 and 3");
        assert_eq!(store.tries.load(std::sync::atomic::Ordering::Relaxed), 4);
        directory.refresh().await.unwrap();
        assert_eq!(directory.shard(b"ours", 0).unwrap(), 2);
        for rival in 0..3 {
            let key = format!("rival-{rival}");
            assert_eq!(directory.shard(key.as_bytes(), 0).unwrap(), 1, "{key}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_assign_that_always_conflicts_fails_with_the_conflict_after_32_retries() {
        let store = Contended::new(u32::MAX).await;
        let directory = Directory::open(Arc::clone(&store), "tenants", 4, Unknown::Refuse)
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let error = directory
            .assign(Entry::Key(b"ours".to_vec()), 2)
            .await
            .unwrap_err();
        assert!(error.is_conflict(), "{error}");
        assert_eq!(store.tries.load(std::sync::atomic::Ordering::Relaxed), 33);
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "it backed off between tries: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_store_failure_is_returned_at_once_not_retried() {
        let store = Contended::new(0).await;
        store.down.store(true, std::sync::atomic::Ordering::Relaxed);
        let directory = Directory::open(Arc::clone(&store), "tenants", 4, Unknown::Refuse)
            .await
            .unwrap();
        let error = directory
            .assign(Entry::Key(b"ours".to_vec()), 2)
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind(), crate::ErrorKind::Unavailable { .. }),
            "{error}"
        );
        assert_eq!(store.tries.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_directory_is_stored_under_its_name_and_says_what_it_holds() {
        let store = Arc::new(MemoryStore::<String, Vec<u8>>::new());
        let directory = Directory::create(
            Arc::clone(&store),
            "tenants",
            4,
            Unknown::Refuse,
            vec![
                (Entry::Key(b"a".to_vec()), 0),
                (Entry::Key(b"b".to_vec()), 1),
                (Entry::Prefix(b"c/".to_vec()), 2),
            ],
        )
        .await
        .unwrap();
        let epoch = directory.epoch();
        let stored_epoch = store.get(&"tenants/epoch".to_string()).await.unwrap();
        assert_eq!(stored_epoch, Some(epoch.to_be_bytes().to_vec()));
        let table = store
            .get(&"tenants/table".to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(Table::decode(&table).unwrap().keys.len(), 2);
        let shown = format!("{directory:?}");
        assert!(
            shown.contains("\"tenants\"") && shown.contains("entries: 3"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn bad_directories_are_config_errors() {
        let store = || Arc::new(MemoryStore::<String, Vec<u8>>::new());
        let twice = Directory::create(
            store(),
            "d",
            2,
            Unknown::Refuse,
            vec![
                (Entry::Key(b"a".to_vec()), 0),
                (Entry::Key(b"a".to_vec()), 1),
            ],
        )
        .await
        .unwrap_err();
        let unknown_shard = Directory::create(
            store(),
            "d",
            2,
            Unknown::Refuse,
            vec![(Entry::Key(b"a".to_vec()), 2)],
        )
        .await
        .unwrap_err();
        let bad_default = Directory::open(store(), "d", 2, Unknown::Default(5))
            .await
            .unwrap_err();
        let no_shards = Directory::open(store(), "d", 0, Unknown::Refuse)
            .await
            .unwrap_err();
        for error in [twice, unknown_shard, bad_default, no_shards] {
            assert!(
                matches!(error.kind(), crate::ErrorKind::Config { .. }),
                "{error}"
            );
        }
    }
}
