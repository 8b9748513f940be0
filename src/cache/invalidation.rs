//! Invalidation across processes through Redis pub/sub (feature `redis`).

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubStream};

use super::core::{Broadcast, Cached, Core};
use super::tier::CacheTier;
use crate::codec::Codec;
use crate::error::CodecDirection;
use crate::store::Store;
use crate::{Error, ErrorKind, Result};

const COMPONENT: &str = "RedisInvalidation";

/// A message's first byte: an invalidation (`origin ‖ key`) or a
/// heartbeat (`origin`).
const INVALIDATE: u8 = 0;
const HEARTBEAT: u8 = 1;

/// How many heartbeat intervals of silence mean the subscription is dead.
const SILENT_BEATS: u32 = 3;

/// A Redis pub/sub channel that keeps the in-process tiers of many
/// processes coherent: every write (and every
/// [`invalidate`](crate::cache::ReadThrough::invalidate)) through a cache
/// publishes its keys, and every other cache on the channel drops them from
/// its own tier.
///
/// Give one to each cache with
/// [`CacheBuilder::invalidate_across_processes`](crate::cache::CacheBuilder::invalidate_across_processes).
///
/// **Consistency window.** Another process drops a key when the message
/// reaches it: usually within a millisecond on one network, during which it
/// may still serve the old value. If the subscription drops, the cache
/// resubscribes (backing off up to 5 s) and then clears its whole tier,
/// because messages sent meanwhile are lost; a time-to-live bounds how long
/// anything can be missed in the worst case.
///
/// **A silent subscription is a dead one.** A connection can die without
/// closing (a half-open TCP connection after a network fault or a frozen
/// server): no error comes, and no message either. So each listener
/// publishes a heartbeat on the channel every
/// [`heartbeat`](Self::heartbeat) interval (default 1 s), and when it
/// hears nothing on the channel, its own heartbeats included, for three
/// intervals, it treats the subscription as lost: it resubscribes and
/// clears its tier. A write whose invalidation cannot be published is an
/// error to its caller (the store has the write; the other processes may
/// keep the old value), not only a counter.
///
/// ```no_run
/// use scalekit::cache::{MemoryTier, ReadThrough, RedisInvalidation};
/// use scalekit::MemoryStore;
///
/// # async fn demo() -> scalekit::Result<()> {
/// let channel = RedisInvalidation::connect("redis://127.0.0.1:6379", "users").await?;
/// let cache = ReadThrough::builder(MemoryStore::<u64, String>::new(), MemoryTier::with_capacity(10_000)?)
///     .invalidate_across_processes(channel)
///     .build()?;
/// # Ok(()) }
/// ```
pub struct RedisInvalidation {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
    origin: u64,
    stream: PubSubStream,
    heartbeat: Duration,
}

impl fmt::Debug for RedisInvalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisInvalidation")
            .field("channel", &self.channel)
            .field("origin", &self.origin)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

async fn subscribe(client: &redis::Client, channel: &str) -> redis::RedisResult<PubSubStream> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub.into_on_message())
}

impl RedisInvalidation {
    /// Connects to Redis and subscribes to the channel `name` (ASCII letters,
    /// digits, `_`, `-`, `.`, `:`); every cache that should stay coherent
    /// with the others uses the same name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a bad URL or name; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when
    /// Redis cannot be reached.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        super::tier::validate_redis_name(COMPONENT, "channel name", name)?;
        let client = redis::Client::open(url)
            .map_err(|e| Error::config(COMPONENT, format!("cannot parse the URL: {e}")))?;
        let unreachable = |source: redis::RedisError| ErrorKind::Unavailable {
            component: COMPONENT,
            reason: "cannot connect to Redis".to_string(),
            source: Some(Arc::new(source)),
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let publisher = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unreachable)?;
        let channel = format!("scalekit:invalidate:{name}");
        let stream = subscribe(&client, &channel).await.map_err(unreachable)?;
        let origin = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            hasher.finish()
        };
        Ok(RedisInvalidation {
            client,
            publisher,
            channel,
            origin,
            stream,
            heartbeat: Duration::from_secs(1),
        })
    }

    /// How often the listener shows itself it is still subscribed
    /// (default 1 s); three intervals of silence and it resubscribes and
    /// clears its tier.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a zero interval.
    pub fn heartbeat(mut self, every: Duration) -> Result<Self> {
        if every.is_zero() {
            return Err(Error::config(
                COMPONENT,
                "the heartbeat interval must be longer than zero",
            ));
        }
        self.heartbeat = every;
        Ok(self)
    }

    /// Starts listening for other processes' invalidations on behalf of
    /// `core`, and returns the publisher for this cache's own writes.
    pub(crate) fn start<S, T>(
        self,
        core: Weak<Core<S, T>>,
    ) -> (Arc<dyn Broadcast<S::Key>>, tokio::task::JoinHandle<()>)
    where
        S: Store,
        S::Key: Codec,
        T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
    {
        let publisher = Arc::new(Publisher {
            connection: self.publisher,
            channel: self.channel.clone(),
            origin: self.origin,
        });
        let listener = tokio::spawn(listen(
            self.stream,
            self.client,
            self.channel,
            self.origin,
            self.heartbeat,
            core,
        ));
        (publisher, listener)
    }
}

/// Publishes `origin ‖ key bytes`, one message per key, in one pipeline.
#[derive(Debug)]
struct Publisher {
    connection: ConnectionManager,
    channel: String,
    origin: u64,
}

#[async_trait]
impl<K: Codec + Sync> Broadcast<K> for Publisher {
    async fn publish(&self, keys: &[K]) -> Result<()> {
        let mut pipe = redis::pipe();
        for key in keys {
            let mut message = vec![INVALIDATE];
            message.extend_from_slice(&self.origin.to_be_bytes());
            key.encode(&mut message)
                .map_err(|source| ErrorKind::Codec {
                    direction: CodecDirection::Encode,
                    part: "key",
                    source: source.into(),
                })?;
            pipe.cmd("PUBLISH").arg(&self.channel).arg(message).ignore();
        }
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|source| ErrorKind::Unavailable {
                component: COMPONENT,
                reason: "cannot publish an invalidation".to_string(),
                source: Some(Arc::new(source)),
            })?;
        Ok(())
    }
}

/// Drops the keys other processes wrote from the local tier, until the
/// cache is gone; after a lost (or silent) subscription, resubscribes and
/// clears.
async fn listen<S, T>(
    mut stream: PubSubStream,
    client: redis::Client,
    channel: String,
    origin: u64,
    heartbeat: Duration,
    core: Weak<Core<S, T>>,
) where
    S: Store,
    S::Key: Codec,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    // Lives as long as this task: aborted with it.
    let _beating = Beating(tokio::spawn(beat(
        client.clone(),
        channel.clone(),
        origin,
        heartbeat,
    )));
    let silence = heartbeat * SILENT_BEATS;
    loop {
        while let Ok(Some(message)) = tokio::time::timeout(silence, stream.next()).await {
            let payload = message.get_payload_bytes();
            let Some((&INVALIDATE, rest)) = payload.split_first() else {
                continue; // a heartbeat: the subscription lives
            };
            let Some((from, key)) = rest.split_first_chunk::<8>() else {
                continue;
            };
            if u64::from_be_bytes(*from) == origin {
                continue;
            }
            let Ok(key) = S::Key::decode(key) else {
                continue;
            };
            // Not upgradable only while the cache is being built (the cache
            // aborts this task when it is dropped).
            if let Some(core) = core.upgrade() {
                core.invalidate_local(&key).await;
            }
        }
        tracing::warn!(%channel, "the invalidation subscription was lost or went silent; resubscribing");
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::time::sleep(backoff).await;
            if let Ok(Ok(resubscribed)) =
                tokio::time::timeout(silence, subscribe(&client, &channel)).await
            {
                stream = resubscribed;
                if let Some(core) = core.upgrade() {
                    core.clear_local().await;
                }
                break;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Stops the heartbeat when the listener stops (or is aborted).
struct Beating(tokio::task::JoinHandle<()>);

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes `origin` as a heartbeat every `every`, on a connection of its
/// own that it makes again after any failure or a reply later than `every`.
async fn beat(client: redis::Client, channel: String, origin: u64, every: Duration) {
    let mut message = vec![HEARTBEAT];
    message.extend_from_slice(&origin.to_be_bytes());
    let mut connection = None;
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if connection.is_none() {
            connection = tokio::time::timeout(every, client.get_multiplexed_async_connection())
                .await
                .ok()
                .and_then(|made| made.ok());
        }
        let Some(live) = connection.as_mut() else {
            continue;
        };
        let sent = tokio::time::timeout(
            every,
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&message)
                .query_async::<()>(live),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            connection = None;
        }
    }
}
