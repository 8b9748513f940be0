//! The embedded SQLite backend (feature `sqlite`, on by default).

mod worker;

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use self::worker::{ConnectionConfig, Job, Location, Queues, Reply, Writer};
use super::sql::{self, EncodedBatch};
use super::{conflict, Check, Store, Versioned, Write};
use crate::codec::Codec;
use crate::{Error, Position, Result};

const COMPONENT: &str = "SqliteStore";
/// The most reader threads a store may ask for.
const MAX_READERS: usize = 64;

/// How hard SQLite works to make a commit survive a power cut.
///
/// In WAL mode, `Normal` loses no committed transaction when the *process*
/// crashes, but the last ones may roll back after a power loss; `Full`
/// syncs every commit. Group commit makes `Full` cheaper than it sounds:
/// one sync covers every writer that queued up meanwhile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// No syncs: fastest, for throw-away data.
    Off,
    /// Sync at checkpoints (the WAL default).
    #[default]
    Normal,
    /// Sync every commit.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// A store in one table of an SQLite database: the embedded default.
///
/// Keys and values are stored as blobs through their [`Codec`]; the table
/// has two columns, `k` (the primary key) and `v`. The database runs in WAL
/// mode, every batch is one transaction, and all SQLite work happens on the
/// store's own threads, never on the async runtime's: a writer thread that
/// commits concurrent writers together (group commit) and reader threads
/// with their own connections. Positions count committed write transactions
/// and survive restarts.
///
/// ```
/// use scalekit::store::SqliteStore;
/// use scalekit::Store;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let users: SqliteStore<u64, String> = SqliteStore::builder()
///     .path(dir.path().join("app.db"))
///     .table("users")
///     .build()
///     .await?;
/// users.put(1, "ada".to_string()).await?;
/// assert_eq!(users.get(&1).await?, Some("ada".to_string()));
/// users.close().await;
/// # Ok::<(), scalekit::Error>(()) }).unwrap();
/// ```
pub struct SqliteStore<K, V> {
    queues: Queues,
    /// One permit per job queued or running: the queues' bound.
    slots: tokio::sync::Semaphore,
    max_queued: usize,
    closed: AtomicBool,
    config: ConnectionConfig,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for SqliteStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.config.location)
            .field("table", &self.config.table)
            .field("readers", &self.queues.reader_threads)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl<K, V> SqliteStore<K, V> {
    /// Starts configuring a store.
    pub fn builder() -> SqliteStoreBuilder<K, V> {
        SqliteStoreBuilder {
            location: None,
            table: "scalekit_kv".to_string(),
            readers: None,
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
            max_value_bytes: None,
            max_queued: 4_096,
            types: PhantomData,
        }
    }

    /// The table this store owns.
    pub fn table(&self) -> &str {
        &self.config.table
    }

    /// Calls queued for or running on a connection thread now: at most
    /// [`max_queued`](SqliteStoreBuilder::max_queued).
    pub fn queued(&self) -> usize {
        self.max_queued - self.slots.available_permits()
    }

    /// Finishes the queued work, closes every connection and waits until
    /// they are closed. Later calls get [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable). Closing twice
    /// is harmless. Dropping the store without closing also closes the
    /// connections once their queues drain, without waiting.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut acks = Vec::new();
        let mut ask = |queue: &crossbeam_channel::Sender<Job>| {
            let (done, ack) = oneshot::channel();
            if queue.send(Job::Close { done }).is_ok() {
                acks.push(ack);
            }
        };
        for _ in 0..self.queues.reader_threads {
            ask(&self.queues.readers);
        }
        ask(&self.queues.writer);
        for ack in acks {
            let _ = ack.await;
        }
    }

    async fn submit<T>(
        &self,
        queue: &crossbeam_channel::Sender<Job>,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<T> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::unavailable(COMPONENT, "the store is closed"));
        }
        // Backpressure: past the bound a caller waits for a call to end
        // rather than grow the queue.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::unavailable(COMPONENT, "the store is closed"))?;
        let (reply, answer) = oneshot::channel();
        queue
            .send(job(reply))
            .map_err(|_| Error::unavailable(COMPONENT, "the connection threads have stopped"))?;
        answer
            .await
            .map_err(|_| Error::unavailable(COMPONENT, "the store closed before answering"))?
    }

    async fn read(&self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>> {
        self.submit(&self.queues.readers, |reply| Job::Read { keys, reply })
            .await
    }

    async fn write(&self, batch: EncodedBatch) -> Result<Position> {
        self.submit(&self.queues.writer, |reply| Job::Write { batch, reply })
            .await
    }
}

impl<K, V> Store for SqliteStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        let rows = self.read(vec![sql::encode("key", key)?]).await?;
        Ok(sql::decode_values(rows)?.pop().flatten())
    }

    async fn put(&self, key: K, value: V) -> Result<Position> {
        self.write(EncodedBatch::new(vec![Write::Put(key, value)])?)
            .await
    }

    async fn delete(&self, key: &K) -> Result<Position> {
        let batch = EncodedBatch {
            delete_keys: vec![sql::encode("key", key)?],
            ..EncodedBatch::default()
        };
        self.write(batch).await
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.read(sql::encode_keys(keys)?).await?;
        sql::decode_values(rows)
    }

    async fn write_batch(&self, batch: Vec<Write<K, V>>) -> Result<Position> {
        self.write(EncodedBatch::new(batch)?).await
    }

    async fn get_versioned(&self, key: &K) -> Result<Option<Versioned<V>>> {
        let key = sql::encode("key", key)?;
        let row = self
            .submit(&self.queues.readers, |reply| Job::ReadVersioned {
                key,
                reply,
            })
            .await?;
        row.map(|(bytes, version)| {
            Ok(Versioned {
                value: sql::decode("value", &bytes)?,
                version: crate::Version::new(version),
            })
        })
        .transpose()
    }

    /// Checks and writes in the writer's transaction (`BEGIN IMMEDIATE`,
    /// which also serialises every other process writing the file).
    async fn write_if(&self, checks: Vec<Check<K>>, batch: Vec<Write<K, V>>) -> Result<Position> {
        let encoded = EncodedBatch::checked(&checks, batch)?;
        self.write(encoded)
            .await
            .map_err(|error| match error.kind() {
                crate::ErrorKind::Conflict { check, found, .. } => {
                    conflict(&checks, *check, *found)
                }
                _ => error,
            })
    }
}

/// Every row of the table (for moving data between stores), read on a
/// reader connection.
impl<K, V> crate::store::Scan for SqliteStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    async fn entries(&self) -> Result<Vec<(K, V)>> {
        let rows = self
            .submit(&self.queues.readers, |reply| Job::Scan { reply })
            .await?;
        rows.into_iter()
            .map(|(key, value)| Ok((sql::decode("key", &key)?, sql::decode("value", &value)?)))
            .collect()
    }
}

/// Configures and opens a [`SqliteStore`]; see [`SqliteStore::builder`].
pub struct SqliteStoreBuilder<K, V> {
    location: Option<Location>,
    table: String,
    readers: Option<usize>,
    synchronous: Synchronous,
    busy_timeout: Duration,
    max_value_bytes: Option<usize>,
    max_queued: usize,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for SqliteStoreBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStoreBuilder")
            .field("location", &self.location)
            .field("table", &self.table)
            .field("readers", &self.readers)
            .field("synchronous", &self.synchronous)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("max_queued", &self.max_queued)
            .finish()
    }
}

impl<K, V> SqliteStoreBuilder<K, V> {
    /// The database file (created if missing; its directory must exist).
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        self.location = Some(Location::File(PathBuf::from(path.as_ref())));
        self
    }

    /// A private in-memory database instead of a file. It has one
    /// connection, so reads and writes share the writer thread.
    pub fn in_memory(mut self) -> Self {
        self.location = Some(Location::Memory);
        self
    }

    /// The table to store into (default `scalekit_kv`): a plain identifier.
    /// Several stores can share one database file with different tables.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How many reader threads (and connections) serve reads; default 2 for
    /// a file, and 0 (reads on the writer) for an in-memory database.
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = Some(readers);
        self
    }

    /// The commit durability; see [`Synchronous`].
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// How long a connection waits for a lock held by another process or
    /// store before failing with a backend error (default 5 s).
    ///
    /// One file lock serialises the writers of every process on the file:
    /// a process stopped (SIGSTOP, a debugger, a VM pause) inside its
    /// write transaction stalls every other process's writes until it
    /// resumes, and past this timeout they fail (transient `Backend`
    /// errors, "database is locked"). Conditional writes and fences still
    /// hold; only progress stops. PostgreSQL's conditional writes are
    /// single statements, so a stopped client there holds no lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// The most calls queued for or running on the connection threads at
    /// once (default 4,096). Past it a call waits for one to end (so a
    /// stalled disk turns into backpressure, not a growing queue).
    pub fn max_queued(mut self, calls: usize) -> Self {
        self.max_queued = calls;
        self
    }

    /// The largest key or value SQLite accepts, in bytes (default: SQLite's
    /// own limit of 1,000,000,000). A larger write fails with
    /// [`ErrorKind::Refused`](crate::ErrorKind::Refused) and leaves nothing behind.
    pub fn max_value_bytes(mut self, max: usize) -> Self {
        self.max_value_bytes = Some(max);
        self
    }

    /// Validates the configuration, opens the database on the store's own
    /// threads, creates the table if needed and returns the store.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a missing location, a bad table name, readers
    /// on an in-memory database or a `max_value_bytes` out of range; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the file cannot
    /// be opened; [`ErrorKind::Backend`](crate::ErrorKind::Backend) when the schema cannot be created.
    pub async fn build(self) -> Result<SqliteStore<K, V>> {
        let location = self.location.ok_or_else(|| {
            Error::config(
                COMPONENT,
                "no database given: call .path(..) or .in_memory()",
            )
        })?;
        sql::validate_table_name(COMPONENT, &self.table)?;
        let readers = match (&location, self.readers) {
            (Location::Memory, Some(n)) if n > 0 => {
                return Err(Error::config(
                    COMPONENT,
                    "an in-memory database has one connection: it cannot have reader threads",
                ))
            }
            (Location::Memory, _) => 0,
            (Location::File(_), None) => 2,
            (Location::File(_), Some(n)) if n > MAX_READERS => {
                return Err(Error::config(
                    COMPONENT,
                    format!("{n} reader threads is more than the limit of {MAX_READERS}"),
                ))
            }
            (Location::File(_), Some(n)) => n,
        };
        let max_value_bytes = match self.max_value_bytes {
            None => None,
            Some(max) if (1..=1_000_000_000).contains(&max) => Some(max as i32),
            Some(max) => {
                return Err(Error::config(
                    COMPONENT,
                    format!("max_value_bytes must be from 1 to 1,000,000,000, not {max}"),
                ))
            }
        };
        if self.max_queued == 0 || self.max_queued > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(Error::config(
                COMPONENT,
                format!(
                    "max_queued must be from 1 to {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                ),
            ));
        }
        let config = ConnectionConfig {
            location,
            table: self.table,
            synchronous: self.synchronous.pragma(),
            busy_timeout: self.busy_timeout,
            max_value_bytes,
        };

        let (writer_queue, writer_jobs) = crossbeam_channel::unbounded();
        let (ready, writer_ready) = oneshot::channel();
        let writer_config = config.clone();
        spawn(
            "scalekit-sqlite-writer",
            move || match worker::open_writer(&writer_config) {
                Ok((conn, position)) => {
                    let _ = ready.send(Ok(()));
                    Writer::new(conn, writer_config.table, position).run(writer_jobs);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            },
        )?;
        writer_ready.await.map_err(|_| {
            Error::unavailable(COMPONENT, "the writer thread stopped while opening")
        })??;

        let readers_queue = if readers == 0 {
            writer_queue.clone()
        } else {
            let (queue, jobs) = crossbeam_channel::unbounded();
            let mut opened = Vec::with_capacity(readers);
            for _ in 0..readers {
                let (ready, reader_ready) = oneshot::channel();
                let reader_config = config.clone();
                let jobs = jobs.clone();
                spawn(
                    "scalekit-sqlite-reader",
                    move || match worker::open_reader(&reader_config) {
                        Ok(conn) => {
                            let _ = ready.send(Ok(()));
                            worker::run_reader(conn, &reader_config.table, jobs);
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                        }
                    },
                )?;
                opened.push(reader_ready);
            }
            for reader_ready in opened {
                reader_ready.await.map_err(|_| {
                    Error::unavailable(COMPONENT, "a reader thread stopped while opening")
                })??;
            }
            queue
        };

        Ok(SqliteStore {
            queues: Queues {
                writer: writer_queue,
                readers: readers_queue,
                reader_threads: readers,
            },
            slots: tokio::sync::Semaphore::new(self.max_queued),
            max_queued: self.max_queued,
            closed: AtomicBool::new(false),
            config,
            types: PhantomData,
        })
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(body)
        .map(drop)
        .map_err(|source| Error::backend("sqlite", "spawn connection thread", source))
}
