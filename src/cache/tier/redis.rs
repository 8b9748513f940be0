//! The shared tier in Redis (feature `redis`).

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use super::CacheTier;
use crate::cache::Cached;
use crate::codec::Codec;
use crate::error::CodecDirection;
use crate::{Error, ErrorKind, Result};

const COMPONENT: &str = "RedisTier";
/// Keys deleted per `DEL` when clearing.
const SCAN_BATCH: usize = 500;

/// A [`CacheTier`] in Redis, so that many application processes share one
/// cache: what one process loads, the others hit, and a write through any
/// of them removes or replaces the entry for all.
///
/// Keys are stored under `scalekit:<length of the namespace>:<namespace>:`
/// (so that no two namespaces share a key, `:` or not) followed by the key's
/// [`Codec`] bytes; a value is a presence byte, the wall-clock load time
/// (milliseconds since the Unix epoch, so refresh-ahead works across
/// processes) and the value's codec bytes. A time-to-live becomes Redis
/// expiry (`SET … PX`). Eviction is Redis's own `maxmemory` policy, which
/// this tier does not count. The connection reconnects by itself; a call
/// that fails is an [`Error`] the cache layers count as a tier error and
/// answer from the store instead, so a Redis outage slows reads down but
/// does not fail them.
///
/// Consistency across processes: each process fences its own loads against
/// its own writes (no stale fill within a process). A load in process A
/// that races with a write in process B can still put the older value in
/// Redis; the window is one load's duration, and a time-to-live bounds how
/// long such an entry can live.
///
/// ```no_run
/// use std::time::Duration;
/// use scalekit::cache::{ReadThrough, RedisTier};
/// use scalekit::MemoryStore;
///
/// # async fn demo() -> scalekit::Result<()> {
/// let tier = RedisTier::<u64, String>::builder()
///     .url("redis://127.0.0.1:6379")
///     .namespace("users")
///     .time_to_live(Duration::from_secs(300))
///     .build()
///     .await?;
/// let cache = ReadThrough::builder(MemoryStore::<u64, String>::new(), tier).build()?;
/// # Ok(()) }
/// ```
pub struct RedisTier<K, V> {
    connection: ConnectionManager,
    prefix: Arc<[u8]>,
    default_ttl: Option<Duration>,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for RedisTier<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("default_ttl", &self.default_ttl)
            .finish()
    }
}

fn redis_error(operation: &'static str) -> impl Fn(redis::RedisError) -> Error {
    move |source| {
        if source.is_connection_refusal() || source.is_connection_dropped() || source.is_io_error()
        {
            ErrorKind::Unavailable {
                component: COMPONENT,
                reason: format!("Redis cannot be reached during {operation}"),
                source: Some(Arc::new(source)),
            }
            .into()
        } else if source.is_timeout() {
            ErrorKind::Unavailable {
                component: COMPONENT,
                reason: format!("Redis timed out during {operation}"),
                source: Some(Arc::new(source)),
            }
            .into()
        } else {
            Error::backend("redis", operation, source)
        }
    }
}

/// The prefix of a namespace's keys: `scalekit:<length>:<namespace>:`.
/// The length makes it unambiguous: without it, namespace `users` with
/// key `admin:1` and namespace `users:admin` with key `1` would be one
/// Redis key, and clearing one namespace would delete the other's entries.
fn prefix(namespace: &str) -> String {
    format!("scalekit:{}:{namespace}:", namespace.len())
}

/// Checks a name that becomes part of Redis keys or channels: non-empty
/// ASCII letters, digits, `_`, `-`, `.` and `:` (no glob characters, so a
/// `SCAN MATCH` on it is exact).
pub(crate) fn validate_name(component: &'static str, what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            component,
            format!("{what} {name:?} must be ASCII letters, digits, '_', '-', '.' or ':'"),
        ))
    }
}

/// A stored entry too short to hold its header.
#[derive(Debug)]
struct Truncated(usize);

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a cached entry of {} bytes is shorter than its 9-byte header",
            self.0
        )
    }
}

impl std::error::Error for Truncated {}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<K, V> RedisTier<K, V> {
    /// Starts configuring a tier.
    pub fn builder() -> RedisTierBuilder<K, V> {
        RedisTierBuilder {
            url: None,
            namespace: None,
            time_to_live: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(2),
            types: PhantomData,
        }
    }

    fn redis_key<T: Codec>(&self, key: &T) -> Result<Vec<u8>> {
        let mut out = self.prefix.to_vec();
        key.encode(&mut out).map_err(|source| ErrorKind::Codec {
            direction: CodecDirection::Encode,
            part: "key",
            source: source.into(),
        })?;
        Ok(out)
    }

    /// Every key of this tier's namespace, a batch at a time.
    async fn for_each_key_batch(
        &self,
        mut visit: impl FnMut(Vec<Vec<u8>>) -> Option<redis::Cmd>,
    ) -> Result<u64> {
        let mut pattern = self.prefix.to_vec();
        pattern.push(b'*');
        let mut connection = self.connection.clone();
        let mut cursor = 0u64;
        let mut seen = 0u64;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH)
                .query_async(&mut connection)
                .await
                .map_err(redis_error("scan"))?;
            seen += keys.len() as u64;
            if !keys.is_empty() {
                if let Some(cmd) = visit(keys) {
                    cmd.query_async::<()>(&mut connection)
                        .await
                        .map_err(redis_error("clear"))?;
                }
            }
            if next == 0 {
                return Ok(seen);
            }
            cursor = next;
        }
    }
}

impl<K, V> CacheTier for RedisTier<K, V>
where
    K: Codec + Clone + Eq + Hash,
    V: Codec + Clone,
{
    type Key = K;
    type Value = Cached<V>;

    async fn get(&self, key: &K) -> Result<Option<Cached<V>>> {
        let redis_key = self.redis_key(key)?;
        let mut connection = self.connection.clone();
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(redis_key)
            .query_async(&mut connection)
            .await
            .map_err(redis_error("get"))?;
        let Some(bytes) = stored else {
            return Ok(None);
        };
        if bytes.len() < 9 {
            return Err(Error::codec(
                CodecDirection::Decode,
                "value",
                Truncated(bytes.len()),
            ));
        }
        let loaded_ms = u64::from_be_bytes(bytes[1..9].try_into().unwrap_or([0; 8]));
        let age = Duration::from_millis(wall_millis().saturating_sub(loaded_ms));
        let now = Instant::now();
        let loaded_at = now.checked_sub(age).unwrap_or(now);
        let value = match bytes[0] {
            0 => None,
            _ => Some(V::decode(&bytes[9..]).map_err(|source| ErrorKind::Codec {
                direction: CodecDirection::Decode,
                part: "value",
                source: source.into(),
            })?),
        };
        Ok(Some(Cached { value, loaded_at }))
    }

    async fn insert(&self, key: K, entry: Cached<V>, ttl: Option<Duration>) -> Result<()> {
        let redis_key = self.redis_key(&key)?;
        let age = entry.loaded_at.elapsed().as_millis() as u64;
        let mut bytes = Vec::with_capacity(64);
        bytes.push(u8::from(entry.value.is_some()));
        bytes.extend_from_slice(&wall_millis().saturating_sub(age).to_be_bytes());
        if let Some(value) = &entry.value {
            value
                .encode(&mut bytes)
                .map_err(|source| ErrorKind::Codec {
                    direction: CodecDirection::Encode,
                    part: "value",
                    source: source.into(),
                })?;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(redis_key).arg(bytes);
        if let Some(ttl) = ttl.or(self.default_ttl) {
            cmd.arg("PX").arg((ttl.as_millis() as u64).max(1));
        }
        let mut connection = self.connection.clone();
        cmd.query_async::<()>(&mut connection)
            .await
            .map_err(redis_error("insert"))
    }

    async fn remove(&self, key: &K) -> Result<()> {
        let redis_key = self.redis_key(key)?;
        let mut connection = self.connection.clone();
        redis::cmd("DEL")
            .arg(redis_key)
            .query_async::<()>(&mut connection)
            .await
            .map_err(redis_error("remove"))
    }

    async fn clear(&self) -> Result<()> {
        self.for_each_key_batch(|keys| {
            let mut del = redis::cmd("UNLINK");
            del.arg(keys);
            Some(del)
        })
        .await
        .map(drop)
    }

    async fn entry_count(&self) -> Result<u64> {
        self.for_each_key_batch(|_| None).await
    }

    fn evictions(&self) -> u64 {
        0
    }
}

/// Configures and connects a [`RedisTier`]; see [`RedisTier::builder`].
pub struct RedisTierBuilder<K, V> {
    url: Option<String>,
    namespace: Option<String>,
    time_to_live: Option<Duration>,
    connect_timeout: Duration,
    response_timeout: Duration,
    types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> fmt::Debug for RedisTierBuilder<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTierBuilder")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("namespace", &self.namespace)
            .field("time_to_live", &self.time_to_live)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

impl<K, V> RedisTierBuilder<K, V> {
    /// The server, as `redis://host:port[/db]`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The namespace that separates this cache's keys from others' in the
    /// same Redis: ASCII letters, digits, `_`, `-`, `.` and `:`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Entries expire this long after insertion unless an insert gives its
    /// own time-to-live.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take (default 2 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Validates the configuration and connects.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a missing or unparsable URL, a missing or bad
    /// namespace, or a zero duration; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when Redis
    /// cannot be reached.
    pub async fn build(self) -> Result<RedisTier<K, V>> {
        let url = self
            .url
            .ok_or_else(|| Error::config(COMPONENT, "no server: call .url(..)"))?;
        let namespace = self
            .namespace
            .ok_or_else(|| Error::config(COMPONENT, "no namespace: call .namespace(..)"))?;
        validate_name(COMPONENT, "namespace", &namespace)?;
        for (name, duration) in [
            ("time_to_live", self.time_to_live),
            ("connect_timeout", Some(self.connect_timeout)),
            ("response_timeout", Some(self.response_timeout)),
        ] {
            if duration.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    COMPONENT,
                    format!("{name} must be longer than zero"),
                ));
            }
        }
        let client = redis::Client::open(url.as_str())
            .map_err(|e| Error::config(COMPONENT, format!("cannot parse the URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(1);
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|source| ErrorKind::Unavailable {
                component: COMPONENT,
                reason: "cannot connect to Redis".to_string(),
                source: Some(Arc::new(source)),
            })?;
        Ok(RedisTier {
            connection,
            prefix: prefix(&namespace).into_bytes().into(),
            default_ttl: self.time_to_live,
            types: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::prefix;

    #[test]
    fn no_namespace_and_key_spell_another_namespace_s_key() {
        let a = [prefix("users").as_bytes(), b"admin:1"].concat();
        let b = [prefix("users:admin").as_bytes(), b"1"].concat();
        assert_ne!(a, b);
        assert!(!prefix("users:admin").starts_with(&prefix("users")));
    }
}
