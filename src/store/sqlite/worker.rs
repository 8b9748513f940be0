//! The threads that own SQLite connections.
//!
//! SQLite calls block, so they never run on the async runtime's worker
//! threads. One writer thread owns the read-write connection and commits the
//! jobs that queued up while it was busy in one transaction (group commit:
//! one WAL sync for many writers), each job isolated in a savepoint so one
//! failing batch does not fail its neighbours. Reader threads, each with its
//! own connection, serve reads from a shared queue; in WAL mode they never
//! wait for the writer. An in-memory database has one connection, so its
//! writer thread serves reads too.

use std::path::PathBuf;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use crate::store::sql::EncodedBatch;
use crate::{Error, ErrorKind, Position, Result};

/// Most jobs one group commit takes from the queue.
const MAX_GROUP: usize = 256;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// Work for a connection thread.
pub(super) enum Job {
    Read {
        keys: Vec<Vec<u8>>,
        reply: Reply<Vec<Option<Vec<u8>>>>,
    },
    /// One key with its version.
    ReadVersioned {
        key: Vec<u8>,
        reply: Reply<Option<(Vec<u8>, u64)>>,
    },
    Write {
        batch: EncodedBatch,
        reply: Reply<Position>,
    },
    /// Every row of the table.
    Scan {
        reply: Reply<Vec<(Vec<u8>, Vec<u8>)>>,
    },
    /// Finish what was taken from the queue, close the connection, say so.
    Close { done: oneshot::Sender<()> },
}

/// Where the database lives and how its connections are set up.
#[derive(Debug, Clone)]
pub(super) struct ConnectionConfig {
    pub(super) location: Location,
    pub(super) table: String,
    pub(super) synchronous: &'static str,
    pub(super) busy_timeout: Duration,
    /// The largest key or value in bytes (SQLite's length limit).
    pub(super) max_value_bytes: Option<i32>,
}

#[derive(Debug, Clone)]
pub(super) enum Location {
    File(PathBuf),
    Memory,
}

fn backend(operation: &'static str) -> impl FnOnce(rusqlite::Error) -> Error {
    move |source| {
        use rusqlite::ErrorCode::{ConstraintViolation, TooBig, TypeMismatch};
        match source.sqlite_error_code() {
            // The data itself is refused: the same write fails again.
            Some(TooBig | ConstraintViolation | TypeMismatch) => {
                Error::refused("sqlite", operation, source)
            }
            _ => Error::backend("sqlite", operation, source),
        }
    }
}

struct Statements {
    get: String,
    get_versioned: String,
    version: String,
    put: String,
    delete: String,
    scan: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        Statements {
            get: format!("SELECT v FROM \"{table}\" WHERE k = ?1"),
            get_versioned: format!("SELECT v, ver FROM \"{table}\" WHERE k = ?1"),
            version: format!("SELECT ver FROM \"{table}\" WHERE k = ?1"),
            put: format!(
                "INSERT INTO \"{table}\" (k, v, ver) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(k) DO UPDATE SET v = excluded.v, ver = excluded.ver"
            ),
            delete: format!("DELETE FROM \"{table}\" WHERE k = ?1"),
            scan: format!("SELECT k, v FROM \"{table}\""),
        }
    }
}

fn open(config: &ConnectionConfig) -> Result<Connection> {
    let conn = match &config.location {
        Location::File(path) => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        ),
        Location::Memory => Connection::open_in_memory(),
    }
    .map_err(|source| ErrorKind::Unavailable {
        component: "SqliteStore",
        reason: format!("cannot open {:?}", config.location),
        source: Some(std::sync::Arc::new(source)),
    })?;
    conn.busy_timeout(config.busy_timeout)
        .map_err(backend("open"))?;
    if let Some(max) = config.max_value_bytes {
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, max)
            .map_err(backend("open"))?;
    }
    Ok(conn)
}

/// Opens the read-write connection, creates the schema, and returns it with
/// the table's last position.
pub(super) fn open_writer(config: &ConnectionConfig) -> Result<(Connection, Position)> {
    let conn = open(config)?;
    // Processes that open one new file at once contend for it: switching
    // to WAL and the schema's first creation can fail with SQLITE_BUSY
    // without SQLite's busy handler being asked, so they are tried again
    // until the busy timeout.
    let deadline = std::time::Instant::now() + config.busy_timeout;
    loop {
        match set_up(&conn, config) {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(backend("open")(e)),
            Ok(Err(mode)) => {
                return Err(Error::config(
                    "SqliteStore",
                    format!("the database refused WAL mode (journal_mode is {mode})"),
                ))
            }
            Ok(Ok(position)) => return Ok((conn, position)),
        }
    }
}

fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// WAL mode, then the schema in one write transaction (so two processes
/// never both add the version column), then the table's position; the
/// inner `Err` is a journal mode other than WAL.
fn set_up(
    conn: &Connection,
    config: &ConnectionConfig,
) -> rusqlite::Result<std::result::Result<Position, String>> {
    if let Location::File(_) = config.location {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(Err(mode));
        }
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {}", config.synchronous))?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (k BLOB PRIMARY KEY NOT NULL, v BLOB NOT NULL, ver INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS scalekit_positions (name TEXT PRIMARY KEY NOT NULL, position INTEGER NOT NULL);",
        table = config.table,
    ))?;
    add_version_column(&tx, &config.table)?;
    let position: Option<i64> = tx
        .query_row(
            "SELECT position FROM scalekit_positions WHERE name = ?1",
            [&config.table],
            |row| row.get(0),
        )
        .optional()?;
    tx.commit()?;
    Ok(Ok(Position::new(position.unwrap_or(0) as u64)))
}

/// Gives a table made before versions existed its `ver` column (its rows
/// get version 0, older than any write since).
fn add_version_column(conn: &Connection, table: &str) -> rusqlite::Result<()> {
    let has_version: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info(?1) WHERE name = 'ver'",
        [table],
        |row| row.get::<_, i64>(0),
    )? > 0;
    if !has_version {
        conn.execute_batch(&format!(
            "ALTER TABLE \"{table}\" ADD COLUMN ver INTEGER NOT NULL DEFAULT 0"
        ))?;
    }
    Ok(())
}

/// Opens a connection for reads only.
pub(super) fn open_reader(config: &ConnectionConfig) -> Result<Connection> {
    let conn = open(config)?;
    conn.execute_batch("PRAGMA query_only = true")
        .map_err(backend("open"))?;
    Ok(conn)
}

/// Reads `keys` in one read transaction, so a `get_many` sees one snapshot.
/// Every row's key and value bytes.
fn scan(conn: &Connection, statements: &Statements) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut stmt = conn
        .prepare_cached(&statements.scan)
        .map_err(backend("entries"))?;
    let rows = stmt
        .query_map([], |row| {
            Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?))
        })
        .map_err(backend("entries"))?;
    rows.map(|row| row.map_err(backend("entries"))).collect()
}

fn read(
    conn: &mut Connection,
    statements: &Statements,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Vec<u8>>>> {
    let read_one = |conn: &Connection, key: &[u8]| -> Result<Option<Vec<u8>>> {
        let mut stmt = conn
            .prepare_cached(&statements.get)
            .map_err(backend("get"))?;
        let mut rows = stmt.query([key]).map_err(backend("get"))?;
        match rows.next().map_err(backend("get"))? {
            None => Ok(None),
            Some(row) => match row.get_ref(0).map_err(backend("get"))? {
                ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Ok(Some(bytes.to_vec())),
                other => Err(Error::codec(
                    crate::error::CodecDirection::Decode,
                    "value",
                    NotBytes(format!("{:?}", other.data_type())),
                )),
            },
        }
    };
    if let [key] = keys {
        return read_one(conn, key).map(|value| vec![value]);
    }
    let tx = conn.transaction().map_err(backend("get_many"))?;
    let values = keys
        .iter()
        .map(|key| read_one(&tx, key))
        .collect::<Result<Vec<_>>>()?;
    tx.commit().map_err(backend("get_many"))?;
    Ok(values)
}

/// One key with its version.
fn read_versioned(
    conn: &Connection,
    statements: &Statements,
    key: &[u8],
) -> Result<Option<(Vec<u8>, u64)>> {
    let mut stmt = conn
        .prepare_cached(&statements.get_versioned)
        .map_err(backend("get_versioned"))?;
    stmt.query_row([key], |row| {
        Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, i64>(1)? as u64))
    })
    .optional()
    .map_err(backend("get_versioned"))
}

/// A stored value that is neither a blob nor text.
#[derive(Debug)]
struct NotBytes(String);

impl std::fmt::Display for NotBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the stored value is {}, not bytes", self.0)
    }
}

impl std::error::Error for NotBytes {}

/// Checks a job's conditions, then applies its writes, stamping each put
/// with `version` (the position the group commit will leave).
fn check_and_apply(
    conn: &Connection,
    statements: &Statements,
    batch: &EncodedBatch,
    version: u64,
) -> Result<()> {
    if !batch.checks.is_empty() {
        let mut read = conn
            .prepare_cached(&statements.version)
            .map_err(backend("write_if"))?;
        for (index, (key, expected)) in batch.checks.iter().enumerate() {
            let found: Option<u64> = read
                .query_row([key], |row| row.get::<_, i64>(0))
                .optional()
                .map_err(backend("write_if"))?
                .map(|raw| raw as u64);
            if found != *expected {
                // The store names the key (it knows its type).
                return Err(Error::conflict(
                    String::new(),
                    index,
                    found.map(crate::Version::new),
                ));
            }
        }
    }
    apply(conn, statements, batch, version).map_err(backend("write_batch"))
}

fn apply(
    conn: &Connection,
    statements: &Statements,
    batch: &EncodedBatch,
    version: u64,
) -> rusqlite::Result<()> {
    if !batch.put_keys.is_empty() {
        let mut put = conn.prepare_cached(&statements.put)?;
        for (key, value) in batch.put_keys.iter().zip(&batch.put_values) {
            put.execute((key, value, version as i64))?;
        }
    }
    if !batch.delete_keys.is_empty() {
        let mut delete = conn.prepare_cached(&statements.delete)?;
        for key in &batch.delete_keys {
            delete.execute([key])?;
        }
    }
    Ok(())
}

/// The writer thread's state.
pub(super) struct Writer {
    conn: Connection,
    statements: Statements,
    table: String,
    position: Position,
}

impl Writer {
    pub(super) fn new(conn: Connection, table: String, position: Position) -> Self {
        Writer {
            conn,
            statements: Statements::new(&table),
            table,
            position,
        }
    }

    /// Serves jobs until told to close or every sender is gone.
    pub(super) fn run(mut self, jobs: Receiver<Job>) {
        let mut closing = Vec::new();
        while let Ok(first) = jobs.recv() {
            let mut writes = Vec::new();
            let mut reads = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write { batch, reply } => writes.push((batch, reply)),
                    Job::Read { keys, reply } => reads.push((keys, reply)),
                    Job::ReadVersioned { key, reply } => {
                        let _ = reply.send(read_versioned(&self.conn, &self.statements, &key));
                    }
                    Job::Scan { reply } => {
                        let _ = reply.send(scan(&self.conn, &self.statements));
                    }
                    Job::Close { done } => closing.push(done),
                }
                if writes.len() + reads.len() < MAX_GROUP && closing.is_empty() {
                    next = jobs.try_recv().ok();
                }
            }
            if !writes.is_empty() {
                self.commit_group(writes);
            }
            for (keys, reply) in reads {
                let _ = reply.send(read(&mut self.conn, &self.statements, &keys));
            }
            if !closing.is_empty() {
                break;
            }
        }
        drop(self.conn);
        for done in closing {
            let _ = done.send(());
        }
    }

    /// Commits many jobs in one transaction, each in its own savepoint (a
    /// job alone in its group runs without one, and a failure of it rolls
    /// the transaction back): a failing job leaves none of its writes.
    fn commit_group(&mut self, writes: Vec<(EncodedBatch, Reply<Position>)>) {
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(writes.len());
        let group = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate);
        let mut tx = match group {
            Ok(tx) => tx,
            Err(e) => {
                let error = backend("write_batch")(e);
                for (_, reply) in writes {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        // The position this group leaves, read inside the write
        // transaction: another process may have committed since this
        // thread last did. Every put of the group is stamped with it.
        let current: Result<i64> = tx
            .query_row(
                "SELECT position FROM scalekit_positions WHERE name = ?1",
                [&self.table],
                |row| row.get(0),
            )
            .optional()
            .map(|found| found.unwrap_or(0))
            .map_err(backend("write_batch"));
        let next = match current {
            Ok(current) => current as u64 + 1,
            Err(error) => {
                for (_, reply) in writes {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let single = writes.len() == 1;
        for (batch, _) in &writes {
            if batch.is_empty() && batch.checks.is_empty() {
                outcomes.push(Ok(()));
                continue;
            }
            let outcome = if single {
                check_and_apply(&tx, &self.statements, batch, next)
            } else {
                tx.savepoint()
                    .map_err(backend("write_batch"))
                    .and_then(|sp| {
                        check_and_apply(&sp, &self.statements, batch, next)?;
                        sp.commit().map_err(backend("write_batch"))
                    })
            };
            outcomes.push(outcome);
        }
        if let (true, [Err(error)]) = (single, outcomes.as_slice()) {
            // Alone in its group, the batch ran without a savepoint: roll
            // the whole transaction back, so none of its writes stays.
            let error = error.clone();
            if let Err(e) = tx.rollback() {
                tracing::warn!(error = %e, "sqlite: could not roll back a failed batch");
            }
            for (_, reply) in writes {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        let any_applied = writes
            .iter()
            .zip(&outcomes)
            .any(|((batch, _), outcome)| outcome.is_ok() && !batch.is_empty());
        let committed: Result<Position> = (|| {
            let position = if any_applied {
                tx.execute(
                    "INSERT INTO scalekit_positions (name, position) VALUES (?1, ?2) \
                     ON CONFLICT(name) DO UPDATE SET position = excluded.position",
                    (&self.table, next as i64),
                )
                .map_err(backend("write_batch"))?;
                Position::new(next)
            } else {
                Position::new(next - 1)
            };
            tx.commit().map_err(backend("write_batch"))?;
            Ok(position)
        })();
        match committed {
            Ok(position) => {
                self.position = position;
                for ((_, reply), outcome) in writes.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome.map(|()| position));
                }
            }
            Err(error) => {
                for (_, reply) in writes {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Serves reads from the shared queue until told to close.
pub(super) fn run_reader(mut conn: Connection, table: &str, jobs: Receiver<Job>) {
    let statements = Statements::new(table);
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Read { keys, reply } => {
                let _ = reply.send(read(&mut conn, &statements, &keys));
            }
            Job::ReadVersioned { key, reply } => {
                let _ = reply.send(read_versioned(&conn, &statements, &key));
            }
            Job::Scan { reply } => {
                let _ = reply.send(scan(&conn, &statements));
            }
            Job::Write { reply, .. } => {
                // Never routed here; answer rather than drop silently.
                let _ = reply.send(Err(Error::unavailable(
                    "SqliteStore",
                    "a write reached a read-only connection",
                )));
            }
            Job::Close { done } => {
                drop(conn);
                let _ = done.send(());
                return;
            }
        }
    }
}

/// The senders of a store's connection threads.
#[derive(Debug)]
pub(super) struct Queues {
    pub(super) writer: Sender<Job>,
    /// The reader queue; the writer's own queue when there are no readers.
    pub(super) readers: Sender<Job>,
    pub(super) reader_threads: usize,
}
