//! A topic: its stream, and publishing.

use std::fmt;
use std::marker::PhantomData;

use async_nats::jetstream;

use super::base::{check_name, hex, unavailable, KEY_HEADER};
use crate::codec::Codec;
use crate::events::{EventKey, TopicStats};
use crate::Result;

/// A topic whose events live in a JetStream stream. Cloning it is cheap;
/// clones share the connection.
pub struct NatsTopic<E> {
    jetstream: jetstream::Context,
    pub(super) stream: jetstream::stream::Stream,
    pub(super) name: String,
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
