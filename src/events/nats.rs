//! Topics backed by NATS JetStream (feature `nats`), so that several
//! processes share one topic with the bus's delivery semantics.
//!
//! A [`NatsTopic`] is a JetStream stream; a group is a durable pull
//! consumer of it, named after the group, so every process that
//! subscribes the same group shares its events (competing consumers) and
//! a restarted process picks up where the group left off. Inside a
//! process, a group's events run through the same machinery as the
//! in-process bus: keyed workers (one key's events in order), retries
//! with back-off, sequenced dead letters, a caught panic counted as a
//! failure. A message is acknowledged to JetStream only after its handler
//! succeeded; a dead-lettered one is terminated (JetStream stops
//! redelivering it; the letter stays in the group's queue). A message a
//! process took but never settled (the process died) is redelivered to
//! the group after the consumer's ack wait.
//!
//! Per-key order holds within one process; several processes of one
//! group each take some of the stream's messages, as JetStream hands them
//! out, so per-key order across processes needs one process per group.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::dead_letter::DeadLetter;
use super::event::{Event, EventKey};
use super::group::{Backpressure, RetryPolicy, StartFrom, Subscription};
use super::handler::{Handler, HandlerError};
use super::stats::{GroupStats, TopicStats};
use super::topic::TopicOptions;
use super::EventBus;
use crate::codec::Codec;
use crate::{Error, Result};

const COMPONENT: &str = "NatsTopic";
const KEY_HEADER: &str = "Scalekit-Key";

fn unavailable(reason: &str, error: impl std::error::Error + Send + Sync + 'static) -> Error {
    crate::ErrorKind::Unavailable {
        component: COMPONENT,
        reason: reason.to_string(),
        source: Some(Arc::new(error)),
    }
    .into()
}

/// JetStream's stream and consumer names: ASCII letters, digits, `-`, `_`.
fn check_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            COMPONENT,
            format!("`{name}` is not a {what} name: use ASCII letters, digits, `-` and `_`"),
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A topic whose events live in a JetStream stream. Cloning it is cheap;
/// clones share the connection.
pub struct NatsTopic<E> {
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    name: String,
    subject: String,
    _events: PhantomData<fn() -> E>,
}

impl<E> Clone for NatsTopic<E> {
    fn clone(&self) -> Self {
        NatsTopic {
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
            name: self.name.clone(),
            subject: self.subject.clone(),
            _events: PhantomData,
        }
    }
}

impl<E> fmt::Debug for NatsTopic<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTopic")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl<E: Codec + Clone + Send + Sync + 'static> NatsTopic<E> {
    /// Connects to NATS at `url` and opens (creating) the stream `name`,
    /// on the subject `scalekit.events.<name>`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is
    /// empty or holds anything but ASCII letters, digits, `-` and `_`;
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when NATS
    /// cannot be reached or JetStream refuses the stream.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        check_name("topic", name)?;
        let client = async_nats::connect(url)
            .await
            .map_err(|e| unavailable("cannot connect to NATS", e))?;
        let jetstream = jetstream::new(client);
        let subject = format!("scalekit.events.{name}");
        let stream = jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_string(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("JetStream refused the stream", e))?;
        Ok(NatsTopic {
            jetstream,
            stream,
            name: name.to_string(),
            subject,
            _events: PhantomData,
        })
    }

    /// The topic's name (its stream's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes an event without a key; returns its offset once
    /// JetStream has stored it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) if the payload cannot
    /// be encoded; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)
    /// if JetStream did not confirm it (it may or may not be stored).
    pub async fn publish(&self, payload: E) -> Result<u64> {
        self.send(None, payload).await
    }

    /// Publishes an event with a key: within a group (in one process),
    /// events of one key are handled one after another, in publish order.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_keyed(&self, key: impl Into<EventKey>, payload: E) -> Result<u64> {
        self.send(Some(key.into()), payload).await
    }

    /// Publishes several events in order, sending them all before waiting
    /// for JetStream's confirmations (one round trip's wait, not one per
    /// event); returns their offsets.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish); events before the failing one may be
    /// stored.
    pub async fn publish_batch(
        &self,
        events: impl IntoIterator<Item = (Option<EventKey>, E)>,
    ) -> Result<Vec<u64>> {
        let mut pending = Vec::new();
        for (key, payload) in events {
            pending.push(self.send_unconfirmed(key, payload).await?);
        }
        let mut offsets = Vec::with_capacity(pending.len());
        for ack in pending {
            let ack = ack
                .await
                .map_err(|e| unavailable("JetStream did not confirm the event", e))?;
            offsets.push(ack.sequence.saturating_sub(1));
        }
        Ok(offsets)
    }

    async fn send(&self, key: Option<EventKey>, payload: E) -> Result<u64> {
        let ack = self
            .send_unconfirmed(key, payload)
            .await?
            .await
            .map_err(|e| unavailable("JetStream did not confirm the event", e))?;
        Ok(ack.sequence.saturating_sub(1))
    }

    /// Sends one event; the future of its confirmation.
    async fn send_unconfirmed(
        &self,
        key: Option<EventKey>,
        payload: E,
    ) -> Result<jetstream::context::PublishAckFuture> {
        let mut bytes = Vec::new();
        payload
            .encode(&mut bytes)
            .map_err(|source| crate::ErrorKind::Codec {
                direction: crate::CodecDirection::Encode,
                part: "event",
                source: source.into(),
            })?;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(key) = &key {
            headers.insert(KEY_HEADER, hex(key.as_bytes()).as_str());
        }
        self.jetstream
            .publish_with_headers(self.subject.clone(), headers, bytes.into())
            .await
            .map_err(|e| unavailable("cannot publish", e))
    }

    /// The topic's counters, read from the stream: events published, events
    /// the stream holds, and groups (durable consumers).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if the
    /// stream's state cannot be read.
    pub async fn stats(&self) -> Result<TopicStats> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| unavailable("cannot read the stream's state", e))?;
        Ok(TopicStats {
            published: info.state.last_sequence,
            retained: info.state.messages,
            groups: info.state.consumer_count as u64,
        })
    }

    /// Starts configuring the subscription group `name` (a durable
    /// consumer of the stream).
    pub fn group(&self, name: impl Into<String>) -> NatsGroupBuilder<'_, E> {
        NatsGroupBuilder {
            topic: self,
            name: name.into(),
            workers: 1,
            buffer: 1024,
            retry: RetryPolicy::default(),
            start: StartFrom::Earliest,
            ack_wait: Duration::from_secs(30),
        }
    }

    /// Deletes the stream and every event in it (for tests and teardown).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if
    /// JetStream refuses.
    pub async fn delete(self) -> Result<()> {
        self.jetstream
            .delete_stream(&self.name)
            .await
            .map(drop)
            .map_err(|e| unavailable("cannot delete the stream", e))
    }
}

/// Configures a group of a [`NatsTopic`].
#[must_use = "a group receives nothing until `subscribe` is called"]
pub struct NatsGroupBuilder<'a, E> {
    topic: &'a NatsTopic<E>,
    name: String,
    workers: usize,
    buffer: usize,
    retry: RetryPolicy,
    start: StartFrom,
    ack_wait: Duration,
}

impl<E> fmt::Debug for NatsGroupBuilder<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsGroupBuilder")
            .field("topic", &self.topic.name)
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("retry", &self.retry)
            .field("start", &self.start)
            .field("ack_wait", &self.ack_wait)
            .finish()
    }
}

/// What a NATS group's workers handle: the event and the message to settle.
#[derive(Clone)]
struct Delivered<E> {
    event: Event<E>,
    message: Arc<jetstream::Message>,
}

impl<E: Codec + Clone + Send + Sync + 'static> NatsGroupBuilder<'_, E> {
    /// Workers in this process (default 1); one key's events stay on one.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How failing events are retried before they are dead-lettered.
    pub fn retries(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Where a new group starts (default [`StartFrom::Earliest`]: every
    /// event the stream holds). Ignored for a group that exists already:
    /// it goes on from where it was.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// How long JetStream waits for a message to be settled before it
    /// hands it out again (default 30 s): keep it above the handler's
    /// time with all retries.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Creates (or joins) the durable consumer and starts handling.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) as for an
    /// in-process group, or for a group name that is not a valid consumer
    /// name; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if
    /// JetStream refuses the consumer.
    pub async fn subscribe<H: Handler<E>>(self, handler: H) -> Result<NatsSubscription<E>> {
        check_name("group", &self.name)?;
        // The group's in-process half: keyed workers, retries, dead letters.
        let local = EventBus::new();
        let handler = Arc::new(handler);
        let settle_dead: super::group::DeadLetterHook<Delivered<E>> = Arc::new(|letter| {
            let message = Arc::clone(&letter.event.payload().message);
            tokio::spawn(async move {
                if let Err(error) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(%error, "could not terminate a dead-lettered NATS message");
                }
            });
        });
        let topic = local
            .topic_with::<Delivered<E>>(&self.name, TopicOptions::default().buffer(self.buffer))?;
        let inner = topic
            .group(self.name.clone())
            .workers(self.workers)
            .buffer(self.buffer, Backpressure::Block)
            .retries(self.retry)
            .on_dead_letter(settle_dead)
            .subscribe(move |delivered: Event<Delivered<E>>| {
                let handler = Arc::clone(&handler);
                async move {
                    let Delivered { event, message } = delivered.into_payload();
                    handler.handle(event).await?;
                    // Settled only after success; a lost ack means a
                    // redelivery (at least once), never a lost event.
                    if let Err(error) = message.ack().await {
                        tracing::warn!(%error, "could not acknowledge a NATS message");
                    }
                    Ok::<(), HandlerError>(())
                }
            })?;
        let consumer: jetstream::consumer::PullConsumer = self
            .topic
            .stream
            .get_or_create_consumer(
                &self.name,
                pull::Config {
                    durable_name: Some(self.name.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    deliver_policy: match self.start {
                        StartFrom::Earliest => jetstream::consumer::DeliverPolicy::All,
                        StartFrom::Latest => jetstream::consumer::DeliverPolicy::New,
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("JetStream refused the consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("cannot pull from the consumer", e))?;
        let pump = tokio::spawn(pump(messages, topic));
        Ok(NatsSubscription {
            name: self.name,
            inner,
            consumer,
            local,
            pump,
        })
    }
}

/// Moves the consumer's messages into the group's workers, in stream
/// order.
async fn pump<E: Codec + Clone + Send + Sync + 'static>(
    mut messages: pull::Stream,
    topic: super::Topic<Delivered<E>>,
) {
    while let Some(next) = messages.next().await {
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "pulling from NATS failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(event) = decode::<E>(&message) else {
            tracing::warn!("a NATS message did not decode; it is terminated");
            if let Err(error) = message.ack_with(AckKind::Term).await {
                tracing::warn!(%error, "could not terminate an undecodable NATS message");
            }
            continue;
        };
        let key = event.key().cloned();
        let delivered = Delivered {
            event,
            message: Arc::new(message),
        };
        let published = match key {
            Some(key) => topic.publish_keyed(key, delivered).await,
            None => topic.publish(delivered).await,
        };
        if published.is_err() {
            return; // the group is shutting down: unsettled messages are redelivered
        }
    }
}

fn decode<E: Codec>(message: &jetstream::Message) -> Option<Event<E>> {
    let info = message.info().ok()?;
    let offset = info.stream_sequence.saturating_sub(1);
    let timestamp = SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(info.published.unix_timestamp_nanos()).ok()?);
    let key = match message.headers.as_ref().and_then(|h| h.get(KEY_HEADER)) {
        Some(value) => Some(EventKey::from(unhex(value.as_str())?)),
        None => None,
    };
    let payload = E::decode(&message.payload).ok()?;
    Some(Event::new(payload, key, offset, timestamp))
}

/// A running group of a [`NatsTopic`] in this process.
pub struct NatsSubscription<E> {
    name: String,
    inner: Subscription<Delivered<E>>,
    consumer: jetstream::consumer::PullConsumer,
    local: EventBus,
    pump: JoinHandle<()>,
}

impl<E> fmt::Debug for NatsSubscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSubscription")
            .field("group", &self.name)
            .finish_non_exhaustive()
    }
}

impl<E: Codec + Clone + Send + Sync + 'static> NatsSubscription<E> {
    /// The group's counters in this process.
    pub fn stats(&self) -> GroupStats {
        self.inner.stats()
    }

    /// The dead letters this process set aside, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter<E>> {
        self.inner
            .dead_letters()
            .into_iter()
            .map(|letter| DeadLetter {
                event: letter.event.into_payload().event,
                error: letter.error,
                attempts: letter.attempts,
            })
            .collect()
    }

    /// Returns once JetStream has nothing left for the group and this
    /// process has settled everything it took.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if the
    /// consumer's state cannot be read.
    pub async fn caught_up(&self) -> Result<()> {
        loop {
            self.inner.caught_up().await;
            let info = self
                .consumer
                .get_info()
                .await
                .map_err(|e| unavailable("cannot read the consumer's state", e))?;
            if info.num_pending == 0 && info.num_ack_pending == 0 && self.inner.stats().lag == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops pulling, lets the workers finish what they took, and returns.
    /// What this process never settled is redelivered to the group.
    pub async fn shutdown(self) {
        self.pump.abort();
        self.local.shutdown().await;
    }
}

/// Dropping the subscription stops pulling at once (without waiting for
/// the workers); what it took and never settled is redelivered to the
/// group after the ack wait.
impl<E> Drop for NatsSubscription<E> {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

#[cfg(feature = "testing")]
impl crate::testing::event_conformance::TopicUnderTest for NatsTopic<String> {
    type Group = NatsSubscription<String>;

    fn publish_keyed(
        &self,
        key: &str,
        payload: String,
    ) -> impl std::future::Future<Output = Result<u64>> + Send {
        NatsTopic::publish_keyed(self, key, payload)
    }

    async fn subscribe<H: Handler<String>>(
        &self,
        name: &str,
        workers: usize,
        retry: RetryPolicy,
        handler: H,
    ) -> Result<Self::Group> {
        self.group(name)
            .workers(workers)
            .retries(retry)
            .subscribe(handler)
            .await
    }

    async fn caught_up(group: &Self::Group) {
        group
            .caught_up()
            .await
            .expect("the consumer's state can be read");
    }

    fn dead_letters(group: &Self::Group) -> Vec<DeadLetter<String>> {
        group.dead_letters()
    }

    fn stats(group: &Self::Group) -> GroupStats {
        group.stats()
    }
}
