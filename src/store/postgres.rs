//! The PostgreSQL backend (feature `postgres`).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::types::PgLsn;
use tokio_postgres::NoTls;

use super::sql::{self, EncodedBatch};
use super::{conflict, Check, Store, Versioned, Write};
use crate::codec::Codec;
use crate::{Error, ErrorKind, Position, Result};

const COMPONENT: &str = "PostgresStore";

/// The SQL of one store's table.
#[derive(Debug)]
struct Statements {
    get: String,
    get_versioned: String,
    get_many: String,
    put: String,
    delete: String,
    batch: String,
    scan: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        // A version is drawn again in the update branch, which runs with
        // the row locked: a key's versions grow in the order its writes
        // commit.
        let upsert = format!(
            "INSERT INTO \"{table}\" (k, v, ver) \
             SELECT u.k, u.v, nextval('{VERSIONS}') FROM unnest($1::bytea[], $2::bytea[]) AS u(k, v) \
             ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = nextval('{VERSIONS}')"
        );
        Statements {
            get: format!("SELECT v FROM \"{table}\" WHERE k = $1"),
            get_versioned: format!("SELECT v, ver FROM \"{table}\" WHERE k = $1"),
            get_many: format!("SELECT k, v FROM \"{table}\" WHERE k = ANY($1)"),
            put: format!(
                "INSERT INTO \"{table}\" (k, v, ver) VALUES ($1, $2, nextval('{VERSIONS}')) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = nextval('{VERSIONS}')"
            ),
            delete: format!("DELETE FROM \"{table}\" WHERE k = $1"),
            // One statement is one transaction: the deletes and the upserts
            // (disjoint keys after coalescing) commit together or not at all.
            batch: format!("WITH deleted AS (DELETE FROM \"{table}\" WHERE k = ANY($3)) {upsert}"),
            scan: format!("SELECT k, v FROM \"{table}\""),
        }
    }
}

/// The sequence every table's versions are drawn from.
const VERSIONS: &str = "scalekit_versions";

/// The SQLSTATE the conditional write raises for a failed check (its
/// message is the check's index, its detail the version found or empty).
const CONFLICT_STATE: &str = "SK409";

/// The conditional write, as one function call: one statement, so one
/// round trip and one transaction. Each checked row is locked
/// (`FOR UPDATE`, in key order, so two writers never deadlock on their
/// checks) and its latest committed version compared; an absent key is
/// held by a placeholder row (version -1) until the commit, so no one can
/// insert it meanwhile; then the deletes and upserts, then the unused
/// placeholders go. Every statement inside reads a fresh snapshot (READ
/// COMMITTED), so what is checked is what is committed, not what the
/// transaction saw when it began.
const WRITE_IF_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION scalekit_write_if(tbl text, ck bytea[], cv int8[], pk bytea[], pv bytea[], dk bytea[])
RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  i int;
  n int;
  found_ver int8;
  placeholders bytea[] := '{}';
BEGIN
  FOR i IN SELECT u.ord FROM unnest(ck) WITH ORDINALITY AS u(k, ord) ORDER BY u.k LOOP
    EXECUTE format('SELECT ver FROM %I WHERE k = $1 FOR UPDATE', tbl) INTO found_ver USING ck[i];
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
      IF cv[i] IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SK409', MESSAGE = (i - 1)::text, DETAIL = '';
      END IF;
      EXECUTE format('INSERT INTO %I (k, v, ver) VALUES ($1, ''\x'', -1) ON CONFLICT (k) DO NOTHING', tbl) USING ck[i];
      GET DIAGNOSTICS n = ROW_COUNT;
      IF n = 0 THEN
        EXECUTE format('SELECT ver FROM %I WHERE k = $1', tbl) INTO found_ver USING ck[i];
        RAISE EXCEPTION USING ERRCODE = 'SK409', MESSAGE = (i - 1)::text, DETAIL = coalesce(found_ver::text, '');
      END IF;
      placeholders := placeholders || ck[i];
    ELSIF cv[i] IS NULL OR found_ver <> cv[i] THEN
      RAISE EXCEPTION USING ERRCODE = 'SK409', MESSAGE = (i - 1)::text, DETAIL = found_ver::text;
    END IF;
  END LOOP;
  IF array_length(dk, 1) > 0 THEN
    EXECUTE format('DELETE FROM %I WHERE k = ANY($1)', tbl) USING dk;
  END IF;
  IF array_length(pk, 1) > 0 THEN
    EXECUTE format('INSERT INTO %I (k, v, ver) SELECT u.k, u.v, nextval(''scalekit_versions'') FROM unnest($1::bytea[], $2::bytea[]) AS u(k, v) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, ver = nextval(''scalekit_versions'')', tbl) USING pk, pv;
  END IF;
  IF array_length(placeholders, 1) > 0 THEN
    EXECUTE format('DELETE FROM %I WHERE k = ANY($1) AND ver = -1', tbl) USING placeholders;
  END IF;
END
$fn$"#;

/// The position after a commit: the WAL insert position, read on the same
/// connection right after the write (pipelined, so it costs no extra round
/// trip). It is past the write's commit record, so a replica that has
/// replayed up to it sees the write.
const POSITION_SQL: &str = "SELECT pg_current_wal_insert_lsn()";

/// A store in one table of a PostgreSQL database, over a connection pool.
///
/// Keys and values are stored as `bytea` through their [`Codec`]; the table
/// has two columns, `k` (the primary key) and `v`. Every batch is one
/// statement, so one transaction, and one round trip however many keys it
/// holds; `get_many` is one `= ANY($1)` query. Positions are PostgreSQL WAL
/// positions (LSNs), the numbers a replica reports as replayed, so a write's
/// position can be compared with `pg_last_wal_replay_lsn()` on a replica.
///
/// ```no_run
/// use scalekit::store::PostgresStore;
/// use scalekit::Store;
///
/// # async fn demo() -> scalekit::Result<()> {
/// let users: PostgresStore<u64, String> = PostgresStore::builder()
///     .url("postgres://postgres@127.0.0.1:5432/test")
///     .table("users")
///     .pool_size(8)
///     .build()
///     .await?;
/// users.put(1, "ada".to_string()).await?;
/// # Ok(()) }
/// ```
pub struct PostgresStore<K, V> {
    pool: Pool,
    /// The longest one call may take, from waiting for a connection to
    /// the last row.
    call_timeout: Duration,
    table: String,
    statements: Arc<Statements>,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for PostgresStore<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .field("pool_size", &status.size)
            .field("pool_max", &status.max_size)
            .field("pool_available", &status.available)
            .finish()
    }
}

fn backend(operation: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| {
        if let Some(db) = source
            .as_db_error()
            .filter(|db| db.code().code() == CONFLICT_STATE)
        {
            // The store names the key (it knows the key type).
            let check = db.message().parse().unwrap_or(0);
            let found = db
                .detail()
                .and_then(|detail| detail.parse().ok())
                .map(crate::Version::new);
            return Error::conflict(String::new(), check, found);
        }
        if source.is_closed() {
            ErrorKind::Unavailable {
                component: COMPONENT,
                reason: format!("the connection closed during {operation}"),
                source: Some(Arc::new(source)),
            }
            .into()
        } else if source.code().is_some_and(|code| {
            // Class 22 (data exception: too long, out of range, bad
            // encoding) and 23 (integrity constraint): the data is
            // refused, and the same write fails again.
            let code = code.code();
            code.starts_with("22") || code.starts_with("23")
        }) {
            Error::refused("postgres", operation, source)
        } else {
            Error::backend("postgres", operation, source)
        }
    }
}

impl<K, V> PostgresStore<K, V> {
    /// Starts configuring a store.
    pub fn builder() -> PostgresStoreBuilder<K, V> {
        PostgresStoreBuilder {
            url: None,
            table: "scalekit_kv".to_string(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(10),
            create_table: true,
            types: PhantomData,
        }
    }

    /// The table this store owns.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Drops the store's table and everything in it, then closes the pool.
    pub async fn drop_table(self) -> Result<()> {
        let client = self.connection().await?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS \"{}\"", self.table))
            .await
            .map_err(backend("drop table"))?;
        drop(client);
        self.pool.close();
        Ok(())
    }

    /// Closes the pool: connections are closed as they come back, and later
    /// calls get [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable).
    pub fn close(&self) {
        self.pool.close();
    }

    async fn connection(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs one call within the call timeout: a server that stops
    /// answering is an [`ErrorKind::Timeout`], never a caller that hangs.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(ErrorKind::Timeout {
                    operation,
                    after: self.call_timeout,
                }
                .into())
            })
    }

    /// Runs one write statement and reads the position after it, pipelined.
    async fn write(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Position> {
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(backend(operation))?;
        let position = client
            .prepare_cached(POSITION_SQL)
            .await
            .map_err(backend(operation))?;
        let (written, lsn) = tokio::join!(
            client.execute(&statement, params),
            client.query_one(&position, &[])
        );
        written.map_err(backend(operation))?;
        let lsn: PgLsn = lsn.map_err(backend(operation))?.get(0);
        Ok(Position::new(u64::from(lsn)))
    }
}

fn pool_error(error: PoolError) -> Error {
    let kind = match error {
        PoolError::Timeout(kind) => ErrorKind::Unavailable {
            component: COMPONENT,
            reason: format!("no connection within the pool's time limit ({kind:?})"),
            source: None,
        },
        PoolError::Closed => return Error::unavailable(COMPONENT, "the store is closed"),
        PoolError::Backend(source) => ErrorKind::Unavailable {
            component: COMPONENT,
            reason: "cannot connect to PostgreSQL".to_string(),
            source: Some(Arc::new(source)),
        },
        other => ErrorKind::Unavailable {
            component: COMPONENT,
            reason: other.to_string(),
            source: None,
        },
    };
    kind.into()
}

impl<K, V> Store for PostgresStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    type Key = K;
    type Value = V;

    async fn get(&self, key: &K) -> Result<Option<V>> {
        self.bounded("get", self.get_unbounded(key)).await
    }

    async fn put(&self, key: K, value: V) -> Result<Position> {
        let key = sql::encode("key", &key)?;
        let value = sql::encode("value", &value)?;
        self.bounded(
            "put",
            self.write("put", &self.statements.put, &[&key, &value]),
        )
        .await
    }

    async fn delete(&self, key: &K) -> Result<Position> {
        let key = sql::encode("key", key)?;
        self.bounded(
            "delete",
            self.write("delete", &self.statements.delete, &[&key]),
        )
        .await
    }

    async fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        self.bounded("get_many", self.get_many_unbounded(keys))
            .await
    }

    async fn write_batch(&self, batch: Vec<Write<K, V>>) -> Result<Position> {
        let batch = EncodedBatch::new(batch)?;
        if batch.is_empty() {
            return Ok(Position::ZERO);
        }
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&batch.put_keys, &batch.put_values, &batch.delete_keys];
        self.bounded(
            "write_batch",
            self.write("write_batch", &self.statements.batch, &params),
        )
        .await
    }

    async fn get_versioned(&self, key: &K) -> Result<Option<Versioned<V>>> {
        self.bounded("get_versioned", self.get_versioned_unbounded(key))
            .await
    }

    /// One call of the conditional-write function: one round trip, row
    /// locks on the checked keys, no table lock.
    async fn write_if(&self, checks: Vec<Check<K>>, batch: Vec<Write<K, V>>) -> Result<Position> {
        let encoded = EncodedBatch::checked(&checks, batch)?;
        let (check_keys, check_versions): (Vec<Vec<u8>>, Vec<Option<i64>>) = encoded
            .checks
            .into_iter()
            .map(|(key, version)| (key, version.map(|v| v as i64)))
            .unzip();
        let table = self.table.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &table,
            &check_keys,
            &check_versions,
            &encoded.put_keys,
            &encoded.put_values,
            &encoded.delete_keys,
        ];
        self.bounded(
            "write_if",
            self.write(
                "write_if",
                "SELECT scalekit_write_if($1, $2, $3, $4, $5, $6)",
                &params,
            ),
        )
        .await
        .map_err(|error| match error.kind() {
            ErrorKind::Conflict { check, found, .. } => conflict(&checks, *check, *found),
            _ => error,
        })
    }
}

impl<K, V> PostgresStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    async fn get_unbounded(&self, key: &K) -> Result<Option<V>> {
        let key = sql::encode("key", key)?;
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(&self.statements.get)
            .await
            .map_err(backend("get"))?;
        let row = client
            .query_opt(&statement, &[&key])
            .await
            .map_err(backend("get"))?;
        row.map(|row| {
            let bytes: &[u8] = row.try_get(0).map_err(backend("get"))?;
            sql::decode("value", bytes)
        })
        .transpose()
    }

    async fn get_versioned_unbounded(&self, key: &K) -> Result<Option<Versioned<V>>> {
        let key = sql::encode("key", key)?;
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(&self.statements.get_versioned)
            .await
            .map_err(backend("get_versioned"))?;
        let row = client
            .query_opt(&statement, &[&key])
            .await
            .map_err(backend("get_versioned"))?;
        row.map(|row| {
            let bytes: &[u8] = row.try_get(0).map_err(backend("get_versioned"))?;
            let version: i64 = row.try_get(1).map_err(backend("get_versioned"))?;
            Ok(Versioned {
                value: sql::decode("value", bytes)?,
                version: crate::Version::new(version as u64),
            })
        })
        .transpose()
    }

    async fn get_many_unbounded(&self, keys: &[K]) -> Result<Vec<Option<V>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = sql::encode_keys(keys)?;
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(&self.statements.get_many)
            .await
            .map_err(backend("get_many"))?;
        let rows = client
            .query(&statement, &[&encoded])
            .await
            .map_err(backend("get_many"))?;
        let mut found: HashMap<Vec<u8>, Vec<u8>> = HashMap::with_capacity(rows.len());
        for row in rows {
            let key: Vec<u8> = row.try_get(0).map_err(backend("get_many"))?;
            let value: Vec<u8> = row.try_get(1).map_err(backend("get_many"))?;
            found.insert(key, value);
        }
        let values = encoded.iter().map(|key| found.get(key).cloned()).collect();
        sql::decode_values(values)
    }
}

/// Configures and connects a [`PostgresStore`]; see [`PostgresStore::builder`].
pub struct PostgresStoreBuilder<K, V> {
    url: Option<String>,
    table: String,
    pool_size: usize,
    connect_timeout: Duration,
    wait_timeout: Duration,
    call_timeout: Duration,
    create_table: bool,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for PostgresStoreBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreBuilder")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("call_timeout", &self.call_timeout)
            .field("create_table", &self.create_table)
            .finish()
    }
}

impl<K, V> PostgresStoreBuilder<K, V> {
    /// The connection string, as a URL (`postgres://user@host:port/db`) or
    /// in key-value form (`host=… user=… dbname=…`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The table to store into (default `scalekit_kv`): a plain identifier.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// The most connections the pool opens (default 16).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How long opening one connection may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free pooled connection (default 30 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The longest one call may take, waiting for a connection included
    /// (default 10 s): a server that accepts and stops answering makes
    /// calls fail with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) rather than hang, so the
    /// write-behind flusher, the replica monitor and every writer behind
    /// them go on. A write that times out may still commit, as any write
    /// error may (the `Store` contract).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Whether `build` creates the table if it is missing (default yes).
    /// Say no for a read replica (a hot standby refuses DDL; the primary's
    /// table reaches it by replication): then `build` does not connect,
    /// and the store connects on its first call. The set-up also adds the
    /// `ver` column to a table made before versions, and creates the
    /// `scalekit_versions` sequence and the `scalekit_write_if` function
    /// conditional writes use; a table managed elsewhere needs them for
    /// [`write_if`](crate::Store::write_if).
    pub fn create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// Validates the configuration, connects, creates the table if needed
    /// and returns the store.
    ///
    /// # Errors
    ///
    /// With [`create_table(false)`](Self::create_table), the store connects
    /// on its first call instead (an unreachable server is an error then).
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a missing or unparsable URL, a bad table name,
    /// a pool size of 0 or a zero timeout; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when the
    /// server cannot be reached; [`ErrorKind::Backend`](crate::ErrorKind::Backend) when the table cannot be
    /// created.
    pub async fn build(self) -> Result<PostgresStore<K, V>> {
        let url = self
            .url
            .ok_or_else(|| Error::config(COMPONENT, "no connection string: call .url(..)"))?;
        sql::validate_table_name(COMPONENT, &self.table)?;
        if self.pool_size == 0 {
            return Err(Error::config(COMPONENT, "the pool size must be at least 1"));
        }
        if self.connect_timeout.is_zero()
            || self.wait_timeout.is_zero()
            || self.call_timeout.is_zero()
        {
            return Err(Error::config(
                COMPONENT,
                "timeouts must be longer than zero",
            ));
        }
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
            Error::config(
                COMPONENT,
                format!("cannot parse the connection string: {e}"),
            )
        })?;
        pg.connect_timeout(self.connect_timeout);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.wait_timeout))
            .create_timeout(Some(self.connect_timeout))
            .build()
            .map_err(|e| Error::config(COMPONENT, e.to_string()))?;

        if self.create_table {
            let client = pool.get().await.map_err(pool_error)?;
            // Several processes may start at once, and `IF NOT EXISTS`
            // races (a unique violation on the catalog): one transaction
            // under an advisory lock makes the schema set-up one at a time.
            client
                .batch_execute(&format!(
                    "BEGIN;
                     SELECT pg_advisory_xact_lock(7363957);
                     CREATE TABLE IF NOT EXISTS \"{table}\" (k bytea PRIMARY KEY, v bytea NOT NULL, ver bigint NOT NULL DEFAULT 0);
                     ALTER TABLE \"{table}\" ADD COLUMN IF NOT EXISTS ver bigint NOT NULL DEFAULT 0;
                     CREATE SEQUENCE IF NOT EXISTS {VERSIONS};
                     {WRITE_IF_FUNCTION};
                     COMMIT;",
                    table = self.table
                ))
                .await
                .map_err(backend("create table"))?;
        }

        Ok(PostgresStore {
            pool,
            call_timeout: self.call_timeout,
            statements: Arc::new(Statements::new(&self.table)),
            table: self.table,
            types: PhantomData,
        })
    }
}

/// The position a PostgreSQL server has reached: on a primary its WAL
/// write position (`pg_current_wal_lsn()`), on a hot standby the WAL
/// position it has replayed (`pg_last_wal_replay_lsn()`): the two compare,
/// so a [`ReplicaSet`](crate::replica::ReplicaSet) of PostgreSQL stores
/// knows each standby's lag and which standby has a write's token.
const APPLIED_POSITION_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END";

impl<K, V> crate::replica::Positioned for PostgresStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    async fn applied_position(&self) -> Result<Position> {
        self.bounded("applied_position", self.applied_position_unbounded())
            .await
    }
}

impl<K, V> PostgresStore<K, V> {
    async fn applied_position_unbounded(&self) -> Result<Position> {
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(APPLIED_POSITION_SQL)
            .await
            .map_err(backend("applied_position"))?;
        let row = client
            .query_one(&statement, &[])
            .await
            .map_err(backend("applied_position"))?;
        let lsn: Option<PgLsn> = row.try_get(0).map_err(backend("applied_position"))?;
        // A standby that has replayed nothing yet reports no position.
        Ok(Position::new(lsn.map_or(0, u64::from)))
    }
}

/// Every row of the table (for moving data between stores).
impl<K, V> crate::store::Scan for PostgresStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    /// Within the call timeout, like every call: raise it for tables too
    /// large to read in that time.
    async fn entries(&self) -> Result<Vec<(K, V)>> {
        self.bounded("entries", self.entries_unbounded()).await
    }
}

impl<K, V> PostgresStore<K, V>
where
    K: Codec + Clone + Eq + Hash + std::fmt::Debug,
    V: Codec + Clone,
{
    async fn entries_unbounded(&self) -> Result<Vec<(K, V)>> {
        let client = self.connection().await?;
        let statement = client
            .prepare_cached(&self.statements.scan)
            .await
            .map_err(backend("entries"))?;
        let rows = client
            .query(&statement, &[])
            .await
            .map_err(backend("entries"))?;
        rows.iter()
            .map(|row| {
                let key: &[u8] = row.try_get(0).map_err(backend("entries"))?;
                let value: &[u8] = row.try_get(1).map_err(backend("entries"))?;
                Ok((sql::decode("key", key)?, sql::decode("value", value)?))
            })
            .collect()
    }
}
