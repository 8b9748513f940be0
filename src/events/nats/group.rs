//! A group of a topic: its consumer, its in-process workers, the tasks
//! that pull, keep messages in progress and write dead letters, and its
//! handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use tokio::task::JoinHandle;

use super::base::{check_name, unavailable, Delivered, Replayer, COMPONENT};
use super::dead::{self, DeadLetterQueue, DeadStream, NatsDeadLetter};
use super::ledger::{Ledger, Settlement};
use super::pump;
use super::topic::NatsTopic;
use crate::codec::Codec;
use crate::events::dead_letter::{DeadLetter, DeadLetterSink};
use crate::events::handler::{attempt, Handler, HandlerError};
use crate::events::{
    Backpressure, Event, EventBus, GroupStats, ReplayReport, RetryPolicy, StartFrom, Subscription,
    TopicOptions,
};
use crate::{Error, Result};

/// The most messages one pull asks for.
const MOST_PER_PULL: usize = 256;

/// The largest `max_ack_pending` (a process buffers as many events).
const MOST_ACK_PENDING: usize = 65_536;

impl<E: Codec + Clone + Send + Sync + 'static> NatsTopic<E> {
    /// Starts configuring the subscription group `name` (a durable
    /// consumer of the stream).
    pub fn group(&self, name: impl Into<String>) -> NatsGroupBuilder<'_, E> {
        NatsGroupBuilder {
            topic: self,
            name: name.into(),
            workers: 1,
            retry: RetryPolicy::default(),
            start: StartFrom::Earliest,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 256,
        }
    }
}

/// Configures a group of a [`NatsTopic`].
#[must_use = "a group receives nothing until `subscribe` is called"]
pub struct NatsGroupBuilder<'a, E> {
    topic: &'a NatsTopic<E>,
    name: String,
    workers: usize,
    retry: RetryPolicy,
    start: StartFrom,
    ack_wait: Duration,
    max_ack_pending: usize,
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
            .field("max_ack_pending", &self.max_ack_pending)
            .finish()
    }
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

    /// How long JetStream waits for a message to be settled, or kept in
    /// progress, before it hands it out again (default 30 s). A live
    /// process keeps its messages in progress, so this bounds how long
    /// the messages of a dead or stopped process stay out, not the
    /// handler's time. Applied to an existing group's consumer too.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// The most messages the group has out unsettled at once, across
    /// all its processes (default 256, at most 65,536; JetStream's
    /// `max_ack_pending`). A process also pulls at most this many (and
    /// at most 256) at a time, and its in-process buffer holds this many.
    /// Applied to an existing group's consumer too.
    pub fn max_ack_pending(mut self, messages: usize) -> Self {
        self.max_ack_pending = messages;
        self
    }

    fn check(&self) -> Result<i64> {
        let problem = if self.workers == 0 {
            Some("a group needs at least one worker".to_string())
        } else if !(1..=MOST_ACK_PENDING).contains(&self.max_ack_pending) {
            Some(format!(
                "a group's `max_ack_pending` must be 1 to {MOST_ACK_PENDING} messages (its process \
                 buffers as many)"
            ))
        } else if self.ack_wait.is_zero() {
            Some("a group's ack wait must be above zero".to_string())
        } else if self.retry.max_backoff < self.retry.base_backoff {
            Some("the retry back-off cap must not be below its base".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::config(COMPONENT, problem));
        }
        Ok(i64::try_from(self.max_ack_pending).unwrap_or(i64::MAX))
    }

    /// The group's consumer, created or joined, with this builder's ack
    /// wait and `max_ack_pending`.
    async fn consumer(&self, max_ack_pending: i64) -> Result<jetstream::consumer::PullConsumer> {
        let wanted = pull::Config {
            durable_name: Some(self.name.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending,
            deliver_policy: match self.start {
                StartFrom::Earliest => jetstream::consumer::DeliverPolicy::All,
                StartFrom::Latest => jetstream::consumer::DeliverPolicy::New,
            },
            ..Default::default()
        };
        let stream = &self.topic.stream;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(&self.name, wanted.clone())
            .await
            .map_err(|e| unavailable("JetStream refused the consumer", e))?;
        let existing = &consumer.cached_info().config;
        if existing.ack_wait == self.ack_wait && existing.max_ack_pending == max_ack_pending {
            return Ok(consumer);
        }
        // An existing group: where it starts stays as it is.
        let update = pull::Config {
            deliver_policy: existing.deliver_policy,
            ..wanted
        };
        stream
            .create_consumer(update)
            .await
            .map_err(|e| unavailable("JetStream refused to update the consumer", e))
    }

    /// Creates (or joins) the durable consumer and starts handling: the
    /// group's dead letters are read first, so that the keys they park
    /// stay parked.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero workers,
    /// a `max_ack_pending` of zero or above 65,536, a zero ack wait, a
    /// retry back-off cap below its base, or a group name that is not a
    /// valid consumer name;
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if
    /// JetStream refuses the consumer or the dead letters cannot be read;
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) as for
    /// [`NatsTopic::dead_letters`].
    pub async fn subscribe<H: Handler<E>>(self, handler: H) -> Result<NatsSubscription<E>> {
        check_name("group", &self.name)?;
        let max_ack_pending = self.check()?;
        let consumer = self.consumer(max_ack_pending).await?;
        let info = consumer.cached_info().clone();
        let ack_wait = info.config.ack_wait;
        let buffer = usize::try_from(info.config.max_ack_pending)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(self.max_ack_pending);
        let inherited = pump::Inherited::from_info(&info, ack_wait);
        let dead = self.topic.dead_stream_of(&self.name);
        let stored = dead.read::<E>().await?;
        let ledger = Arc::new(Ledger::new((8 * buffer).max(4096)));
        let (queue, writer) = DeadLetterQueue::new(&stored, dead.clone(), Arc::clone(&ledger));
        let queue = Arc::new(queue);

        // The group's in-process half: keyed workers and retries; its dead
        // letters go to the queue, which writes them to the stream.
        let local = EventBus::new();
        let topic =
            local.topic_with::<Delivered<E>>(&self.name, TopicOptions::default().buffer(buffer))?;
        let handler = Arc::new(handler);
        let handle = {
            let (handler, ledger) = (Arc::clone(&handler), Arc::clone(&ledger));
            move |delivered: Event<Delivered<E>>| {
                let (handler, ledger) = (Arc::clone(&handler), Arc::clone(&ledger));
                async move {
                    let Delivered {
                        sequence, event, ..
                    } = delivered.into_payload();
                    // The queue sets undecodable events aside before
                    // they get here; failing is the safe answer anyway.
                    let event = event.map_err(|why| HandlerError::from(why.to_string()))?;
                    handler.handle(event).await?;
                    // Settled only after success; a lost ack means a
                    // redelivery (at least once), never a lost event.
                    ledger.settle(sequence, Settlement::Ack).await;
                    Ok::<(), HandlerError>(())
                }
            }
        };
        let sink: Arc<dyn DeadLetterSink<Delivered<E>>> = Arc::clone(&queue) as _;
        let inner = topic
            .group(self.name.clone())
            .workers(self.workers)
            .buffer(buffer, Backpressure::Block)
            .retries(self.retry)
            .dead_letter_sink(sink)
            .subscribe(handle)?;
        let messages = match consumer
            .stream()
            .max_messages_per_batch(buffer.min(MOST_PER_PULL))
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(15))
            .messages()
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                inner.abort();
                return Err(unavailable("cannot pull from the consumer", error));
            }
        };
        let replayer: Replayer<E> = Arc::new(move |event| {
            let handler = Arc::clone(&handler);
            Box::pin(async move { attempt(&*handler, event).await })
        });
        let writer = tokio::spawn(writer);
        let progress = tokio::spawn(keep_in_progress(Arc::clone(&ledger), ack_wait));
        let pump = tokio::spawn(pump::pump(
            messages,
            topic,
            Arc::clone(&ledger),
            consumer.clone(),
            inherited,
        ));
        Ok(NatsSubscription {
            name: self.name,
            inner,
            consumer,
            local,
            dead,
            queue,
            ledger,
            replayer,
            replaying: tokio::sync::Mutex::new(()),
            pump,
            progress,
            writer,
        })
    }
}

/// Sends progress acknowledgements for every message the process holds,
/// four times per ack wait.
async fn keep_in_progress(ledger: Arc<Ledger>, ack_wait: Duration) {
    let every = (ack_wait / 4).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        ledger.keep_in_progress().await;
    }
}

/// A running group of a [`NatsTopic`] in this process.
pub struct NatsSubscription<E> {
    name: String,
    inner: Subscription<Delivered<E>>,
    consumer: jetstream::consumer::PullConsumer,
    local: EventBus,
    dead: DeadStream,
    queue: Arc<DeadLetterQueue>,
    ledger: Arc<Ledger>,
    replayer: Replayer<E>,
    /// One replay at a time in this process.
    replaying: tokio::sync::Mutex<()>,
    pump: JoinHandle<()>,
    progress: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl<E> fmt::Debug for NatsSubscription<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSubscription")
            .field("group", &self.name)
            .field("ledger", &self.ledger)
            .field("dead_letters", &self.queue)
            .finish_non_exhaustive()
    }
}

impl<E: Codec + Clone + Send + Sync + 'static> NatsSubscription<E> {
    /// The group's counters in this process (parked and undecodable
    /// events count as dead-lettered).
    pub fn stats(&self) -> GroupStats {
        self.inner.stats()
    }

    /// The group's dead letters, read from its dead-letter stream; as
    /// [`NatsTopic::dead_letters`].
    ///
    /// # Errors
    ///
    /// As [`NatsTopic::dead_letters`].
    pub async fn dead_letters(&self) -> Result<Vec<NatsDeadLetter<E>>> {
        let letters = self.dead.read::<E>().await?;
        Ok(letters.into_iter().map(|stored| stored.letter).collect())
    }

    /// Hands every dead letter of the group to its handler once more, in
    /// offset order, one attempt each; a key whose letter fails again
    /// keeps that letter and those behind it for the next replay (the
    /// failed one with its new error and attempt count). A handled
    /// letter is deleted from the stream; once a key has no letters left
    /// in this process's view, its new events go to the workers again.
    ///
    /// At least once: a crash after a letter's handler succeeded and
    /// before its deletion replays it again next time. Letters written
    /// after the replay began wait for the next one.
    ///
    /// # Errors
    ///
    /// As [`dead_letters`](Self::dead_letters), and
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) if a
    /// letter cannot be deleted or replaced (the letters replayed so far
    /// are done; the one at hand stays and is replayed again).
    pub async fn replay_dead_letters(&self) -> Result<ReplayReport> {
        let _one = self.replaying.lock().await;
        dead::replay(&self.dead, &self.queue, &self.replayer).await
    }

    /// Returns once JetStream has nothing left for the group and this
    /// process has settled everything it took (dead letters written
    /// included).
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

    /// Stops pulling, lets the workers finish what they took, writes the
    /// dead letters queued, and returns; what the process took and never
    /// handed to the workers is given back to JetStream (a negative
    /// acknowledgement), for the group to take again at once.
    pub async fn shutdown(self) {
        self.pump.abort();
        self.local.shutdown().await;
        self.queue.flush().await;
        self.ledger.give_back().await;
    }
}

/// Dropping the subscription stops it at once, as a crash would: nothing
/// more is pulled, handled, written or settled, and what it held
/// unsettled is redelivered to the group after the ack wait.
impl<E> Drop for NatsSubscription<E> {
    fn drop(&mut self) {
        self.pump.abort();
        self.progress.abort();
        self.writer.abort();
        self.inner.abort();
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

    async fn dead_letters(group: &Self::Group) -> Vec<DeadLetter<String>> {
        let letters = group
            .dead_letters()
            .await
            .expect("the dead-letter stream can be read");
        letters
            .into_iter()
            .filter_map(|letter| {
                Some(DeadLetter {
                    event: letter.event?,
                    error: Arc::new(dead::LetterError(letter.error)),
                    attempts: letter.attempts,
                })
            })
            .collect()
    }

    fn stats(group: &Self::Group) -> GroupStats {
        group.stats()
    }
}
