//! Moves a group's messages from its JetStream consumer into its
//! workers, in the order JetStream hands them out: each message is taken
//! into the process's [`Ledger`] first (a redelivery of one the process
//! holds or settled goes no further), and the events that came after
//! messages a dead instance of the group left unsettled wait until those
//! are back (see [`Inherited`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::base::{unhex, Delivered, KEY_HEADER};
use super::ledger::{Ledger, Taken};
use crate::codec::Codec;
use crate::events::{Event, EventKey, Topic};

/// The messages another instance of the group had taken and not settled
/// when this one subscribed (JetStream's `num_ack_pending` then), all at
/// stream sequences up to `through` (the consumer's last delivered one).
/// A dead instance's messages come back only after the ack wait, while
/// newer messages would be handed out at once; to keep each key's order,
/// the newer ones wait here (in progress at the broker) until JetStream
/// has redelivered as many old ones as were out, or settled every message
/// up to `through` (its ack floor passed it), or `until` passed: the old
/// ones are then held by a live instance, and order across live
/// instances is not promised.
pub(super) struct Inherited<E> {
    through: u64,
    outstanding: usize,
    back: HashSet<u64>,
    until: Instant,
    next_look: Instant,
    look_every: Duration,
    waiting: Vec<Delivered<E>>,
}

impl<E> Inherited<E> {
    /// What the consumer's state at subscription says is out, if anything.
    pub(super) fn from_info(info: &jetstream::consumer::Info, ack_wait: Duration) -> Option<Self> {
        if info.num_ack_pending == 0 {
            return None;
        }
        let now = Instant::now();
        let look_every = (ack_wait / 4).max(Duration::from_millis(10));
        Some(Inherited {
            through: info.delivered.stream_sequence,
            outstanding: info.num_ack_pending,
            back: HashSet::new(),
            // Every message of a dead instance is redelivered after one
            // ack wait; the second is the margin.
            until: now + ack_wait * 2,
            next_look: now + look_every,
            look_every,
            waiting: Vec::new(),
        })
    }

    /// Whether the old messages are settled, back here, or given up on.
    async fn over(&mut self, consumer: &jetstream::consumer::PullConsumer) -> bool {
        let now = Instant::now();
        if now >= self.until {
            tracing::warn!(
                through = self.through,
                "messages another instance of the group took are still out after twice the ack \
                 wait: newer events go on (a live instance holds them)"
            );
            return true;
        }
        self.next_look = now + self.look_every;
        match consumer.get_info().await {
            Ok(info) => info.ack_floor.stream_sequence >= self.through,
            Err(error) => {
                tracing::warn!(%error, "cannot read the consumer's state; looking again later");
                false
            }
        }
    }
}

/// The event a message carries, or why it has none.
pub(super) fn delivered<E: Codec>(message: &jetstream::Message, sequence: u64) -> Delivered<E> {
    let offset = sequence.saturating_sub(1);
    let published = message
        .info()
        .ok()
        .and_then(|info| u64::try_from(info.published.unix_timestamp_nanos()).ok())
        .map_or(SystemTime::UNIX_EPOCH, |nanos| {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
        });
    let key = message
        .headers
        .as_ref()
        .and_then(|h| h.get(KEY_HEADER))
        .map(|value| unhex(value.as_str()));
    match key {
        Some(None) => Delivered {
            sequence,
            key: None,
            event: Err(Arc::from("its key header is not hex")),
        },
        key => {
            let key = key.flatten().map(EventKey::from);
            let event = E::decode(&message.payload)
                .map(|payload| Event::new(payload, key.clone(), offset, published))
                .map_err(|error| Arc::from(format!("its payload does not decode: {error}")));
            Delivered {
                sequence,
                key,
                event,
            }
        }
    }
}

/// Hands one event to the workers; `false` once the group is shutting
/// down.
async fn dispatch<E: Clone + Send + Sync + 'static>(
    topic: &Topic<Delivered<E>>,
    delivered: Delivered<E>,
) -> bool {
    let handed = match delivered.key.clone() {
        Some(key) => topic.publish_keyed(key, delivered).await,
        None => topic.publish(delivered).await,
    };
    handed.is_ok()
}

/// Runs until the group shuts down (unsettled messages are redelivered).
pub(super) async fn pump<E: Codec + Clone + Send + Sync + 'static>(
    mut messages: pull::Stream,
    topic: Topic<Delivered<E>>,
    ledger: Arc<Ledger>,
    consumer: jetstream::consumer::PullConsumer,
    mut inherited: Option<Inherited<E>>,
) {
    loop {
        let mut released = false;
        if let Some(old) = &mut inherited {
            if Instant::now() >= old.next_look && old.over(&consumer).await {
                released = true;
            }
        }
        if released && !release(&topic, &mut inherited).await {
            return;
        }
        let next = match &inherited {
            None => messages.next().await,
            Some(old) => match tokio::time::timeout_at(old.next_look, messages.next()).await {
                Ok(next) => next,
                Err(_) => continue,
            },
        };
        let Some(next) = next else {
            return;
        };
        let message = match next {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "pulling from NATS failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(sequence) = message.info().map(|info| info.stream_sequence) else {
            // Not a JetStream delivery (no metadata in its reply
            // subject): there is nothing to settle or to set aside.
            tracing::warn!(subject = %message.subject, "a NATS message without JetStream metadata");
            continue;
        };
        let message = Arc::new(message);
        if ledger.take(&message, sequence).await != Taken::New {
            continue;
        }
        let delivered = delivered::<E>(&message, sequence);
        match &mut inherited {
            Some(old) if sequence > old.through => {
                old.waiting.push(delivered);
            }
            Some(old) => {
                old.back.insert(sequence);
                let all_back = old.back.len() >= old.outstanding;
                if !dispatch(&topic, delivered).await {
                    return;
                }
                if all_back && !release(&topic, &mut inherited).await {
                    return;
                }
            }
            None => {
                if !dispatch(&topic, delivered).await {
                    return;
                }
            }
        }
    }
}

/// Ends the wait for inherited messages: the events that waited go to
/// the workers, in the order they came. `false` once the group is
/// shutting down.
async fn release<E: Clone + Send + Sync + 'static>(
    topic: &Topic<Delivered<E>>,
    inherited: &mut Option<Inherited<E>>,
) -> bool {
    let Some(old) = inherited.take() else {
        return true;
    };
    for delivered in old.waiting {
        if !dispatch(topic, delivered).await {
            return false;
        }
    }
    true
}
