//! A topic: its stream, its dead-letter stream, publishing and listing.

use std::fmt;
use std::marker::PhantomData;

use async_nats::jetstream;

use super::base::{check_name, hex, unavailable, COMPONENT, KEY_HEADER};
use super::dead::{self, DeadStream, NatsDeadLetter, DEAD_SUFFIX};
use crate::codec::Codec;
use crate::events::{EventKey, TopicStats};
use crate::{Error, Result};

/// A topic whose events live in a JetStream stream, and its groups' dead
/// letters in a second one (`<topic>-dead`). Cloning it is cheap; clones
/// share the connection.
pub struct NatsTopic<E> {
    jetstream: jetstream::Context,
    pub(super) stream: jetstream::stream::Stream,
    dead_stream: jetstream::stream::Stream,
    pub(super) name: String,
    subject: String,
    _events: PhantomData<fn() -> E>,
}

impl<E> Clone for NatsTopic<E> {
    fn clone(&self) -> Self {
        NatsTopic {
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
            dead_stream: self.dead_stream.clone(),
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
    /// on the subject `scalekit.events.<name>`, and its dead-letter
    /// stream `<name>-dead`, on the subjects `scalekit.dead.<name>.>`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is
    /// empty, holds anything but ASCII letters, digits, `-` and `_`, or
    /// ends in `-dead` (the dead-letter streams' names);
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) when NATS
    /// cannot be reached or JetStream refuses a stream.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        check_name("topic", name)?;
        if name.ends_with(DEAD_SUFFIX) {
            return Err(Error::config(
                COMPONENT,
                format!("`{name}`: names ending in `{DEAD_SUFFIX}` are kept for the dead-letter streams"),
            ));
        }
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
        let dead_stream = jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{name}{DEAD_SUFFIX}"),
                subjects: vec![dead::dead_subjects(name)],
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("JetStream refused the dead-letter stream", e))?;
        Ok(NatsTopic {
            jetstream,
            stream,
            dead_stream,
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

    /// The dead letters of the group `group`, read from the dead-letter
    /// stream (so from any process, subscribed or not), by offset: per
    /// key, in publish order. Events that do not decode here are listed
    /// with their bytes and no event.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a name that is
    /// not a group name;
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if the
    /// stream cannot be read; [`ErrorKind::Codec`](crate::ErrorKind::Codec)
    /// if it holds a message that is not a letter (written there by
    /// something else; the error names its sequence, to delete it).
    pub async fn dead_letters(&self, group: &str) -> Result<Vec<NatsDeadLetter<E>>> {
        check_name("group", group)?;
        let letters = self.dead_stream_of(group).read::<E>().await?;
        Ok(letters.into_iter().map(|stored| stored.letter).collect())
    }

    /// The dead-letter subject of the group `group`.
    pub(super) fn dead_stream_of(&self, group: &str) -> DeadStream {
        DeadStream::new(
            self.jetstream.clone(),
            self.dead_stream.clone(),
            dead::dead_subject(&self.name, group),
        )
    }

    /// Deletes the stream and every event in it, and the dead-letter
    /// stream with every letter (for tests and teardown).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if
    /// JetStream refuses.
    pub async fn delete(self) -> Result<()> {
        self.jetstream
            .delete_stream(&self.name)
            .await
            .map_err(|e| unavailable("cannot delete the stream", e))?;
        self.jetstream
            .delete_stream(format!("{}{DEAD_SUFFIX}", self.name))
            .await
            .map(drop)
            .map_err(|e| unavailable("cannot delete the dead-letter stream", e))
    }
}
