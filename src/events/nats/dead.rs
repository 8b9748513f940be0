//! A NATS group's dead letters, kept in JetStream: one dead-letter
//! stream per topic (`<topic>-dead`), one subject per group in it
//! (`scalekit.dead.<topic>.<group>`). A letter is the event's payload as
//! published, with headers: its key (as published), its stream sequence
//! and publish time in the topic, why it is there, the error and the
//! handler attempts.
//!
//! In a process, the group's [`DeadLetterQueue`] knows which keys have
//! letters (read from the stream when the group subscribes, kept up to
//! date as letters are added and replayed) and parks the later events of
//! such a key; one writer task appends letters in the order they arrive
//! and settles each message at the topic only once JetStream has
//! confirmed its letter.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use async_nats::HeaderMap;
use tokio::sync::{mpsc, oneshot};

use super::base::{unavailable, unhex, Delivered, Replayer, KEY_HEADER};
use super::ledger::{Ledger, Settlement};
use crate::codec::Codec;
use crate::events::dead_letter::{DeadLetter, DeadLetterSink};
use crate::events::handler::Attempt;
use crate::events::{Event, EventKey, ReplayReport};
use crate::{Error, Result};

const SEQUENCE_HEADER: &str = "Scalekit-Sequence";
const PUBLISHED_HEADER: &str = "Scalekit-Published";
const REASON_HEADER: &str = "Scalekit-Reason";
const ERROR_HEADER: &str = "Scalekit-Error";
const ATTEMPTS_HEADER: &str = "Scalekit-Attempts";

/// The longest error text a letter keeps (in bytes; a header line).
const MOST_ERROR_BYTES: usize = 2048;

/// The suffix of a topic's dead-letter stream's name.
pub(super) const DEAD_SUFFIX: &str = "-dead";

/// The subjects of a topic's dead-letter stream.
pub(super) fn dead_subjects(topic: &str) -> String {
    format!("scalekit.dead.{topic}.>")
}

/// The subject of one group's letters.
pub(super) fn dead_subject(topic: &str, group: &str) -> String {
    format!("scalekit.dead.{topic}.{group}")
}

/// Why an event is in its group's dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadReason {
    /// Its handler failed every attempt (or panicked).
    Failed,
    /// It came after a dead letter of its key, and waits behind it so
    /// that the key's events are handled in order when replayed.
    Parked,
    /// Its payload (or its key) did not decode in the process that took
    /// it; a process whose codec reads it can replay it.
    Undecodable,
}

impl DeadReason {
    fn as_str(self) -> &'static str {
        match self {
            DeadReason::Failed => "failed",
            DeadReason::Parked => "parked",
            DeadReason::Undecodable => "undecodable",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "failed" => Some(DeadReason::Failed),
            "parked" => Some(DeadReason::Parked),
            "undecodable" => Some(DeadReason::Undecodable),
            _ => None,
        }
    }

    /// How the topic's message is settled once its letter is stored: a
    /// parked event is handed on, not given up (acknowledged); a failed
    /// or undecodable one is terminated.
    fn settlement(self) -> Settlement {
        match self {
            DeadReason::Parked => Settlement::Ack,
            DeadReason::Failed | DeadReason::Undecodable => Settlement::Term,
        }
    }
}

impl fmt::Display for DeadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dead letter of a NATS group, as its dead-letter stream holds it.
#[non_exhaustive]
pub struct NatsDeadLetter<E> {
    /// The event's offset in its topic.
    pub offset: u64,
    /// The key it was published with, if any (and if it decoded).
    pub key: Option<EventKey>,
    /// The event, or `None` if it does not decode here (its bytes are in
    /// [`payload`](Self::payload)).
    pub event: Option<Event<E>>,
    /// The payload's bytes, as published.
    pub payload: Vec<u8>,
    /// Why it is a dead letter.
    pub reason: DeadReason,
    /// The handler's last error, why it is parked, or why it did not
    /// decode.
    pub error: String,
    /// Handler attempts made (0 for a parked or undecodable event).
    pub attempts: u32,
}

impl<E: Clone> Clone for NatsDeadLetter<E> {
    fn clone(&self) -> Self {
        NatsDeadLetter {
            offset: self.offset,
            key: self.key.clone(),
            event: self.event.clone(),
            payload: self.payload.clone(),
            reason: self.reason,
            error: self.error.clone(),
            attempts: self.attempts,
        }
    }
}

impl<E> fmt::Debug for NatsDeadLetter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsDeadLetter")
            .field("offset", &self.offset)
            .field("key", &self.key)
            .field("reason", &self.reason)
            .field("error", &self.error)
            .field("attempts", &self.attempts)
            .field("decoded", &self.event.is_some())
            .finish()
    }
}

/// A letter read from the stream, with where its copies are stored.
pub(super) struct Stored<E> {
    pub(super) letter: NatsDeadLetter<E>,
    /// The newest copy's headers (a replacement starts from them).
    headers: HeaderMap,
    /// The dead-letter stream's sequences holding this letter: one, or
    /// more after a crash between writing a replacement (or a second
    /// copy) and deleting the first.
    copies: Vec<u64>,
}

/// A group's dead-letter subject in its topic's dead-letter stream.
#[derive(Clone)]
pub(super) struct DeadStream {
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    subject: String,
}

impl fmt::Debug for DeadStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadStream")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn malformed(sequence: u64, what: &str) -> Error {
    Error::codec(
        crate::CodecDirection::Decode,
        "dead letter",
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the dead-letter stream's message {sequence} {what}"),
        ),
    )
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

/// An error text as a header value: one line, at most
/// [`MOST_ERROR_BYTES`].
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MOST_ERROR_BYTES {
        let mut end = MOST_ERROR_BYTES;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

impl DeadStream {
    pub(super) fn new(
        jetstream: jetstream::Context,
        stream: jetstream::stream::Stream,
        subject: String,
    ) -> Self {
        DeadStream {
            jetstream,
            stream,
            subject,
        }
    }

    /// Appends a letter; returns once JetStream has stored it.
    async fn append(&self, headers: HeaderMap, payload: Vec<u8>) -> Result<u64> {
        let ack = self
            .jetstream
            .publish_with_headers(self.subject.clone(), headers, payload.into())
            .await
            .map_err(|e| unavailable("cannot publish a dead letter", e))?
            .await
            .map_err(|e| unavailable("JetStream did not confirm a dead letter", e))?;
        Ok(ack.sequence)
    }

    async fn remove(&self, copies: &[u64]) -> Result<()> {
        for &copy in copies {
            self.stream
                .delete_message(copy)
                .await
                .map_err(|e| unavailable("cannot delete a replayed dead letter", e))?;
        }
        Ok(())
    }

    /// Every letter of the group, one per event (copies merged), in the
    /// order of the events' offsets: per key, in publish order.
    pub(super) async fn read<E: Codec>(&self) -> Result<Vec<Stored<E>>> {
        let mut letters: BTreeMap<u64, Stored<E>> = BTreeMap::new();
        let mut next = 1;
        loop {
            let message = match self
                .stream
                .get_first_raw_message_by_subject(&self.subject, next)
                .await
            {
                Ok(message) => message,
                Err(error) if matches!(error.kind(), RawMessageErrorKind::NoMessageFound) => break,
                Err(error) => return Err(unavailable("cannot read the dead-letter stream", error)),
            };
            next = message.sequence + 1;
            let stored = parse::<E>(message)?;
            match letters.entry(stored.letter.offset) {
                Entry::Vacant(slot) => {
                    slot.insert(stored);
                }
                // Read in stream order: the later copy is the newer one.
                Entry::Occupied(mut slot) => {
                    let mut copies = std::mem::take(&mut slot.get_mut().copies);
                    copies.extend(&stored.copies);
                    *slot.get_mut() = Stored { copies, ..stored };
                }
            }
        }
        Ok(letters.into_values().collect())
    }
}

fn parse<E: Codec>(message: jetstream::message::StreamMessage) -> Result<Stored<E>> {
    let at = message.sequence;
    let headers = message.headers;
    let sequence: u64 = header(&headers, SEQUENCE_HEADER)
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .ok_or_else(|| malformed(at, "has no topic sequence"))?;
    let reason = header(&headers, REASON_HEADER)
        .and_then(DeadReason::parse)
        .ok_or_else(|| malformed(at, "has no reason"))?;
    let attempts = match header(&headers, ATTEMPTS_HEADER) {
        Some(text) => text
            .parse()
            .map_err(|_| malformed(at, "has a bad attempt count"))?,
        None => 0,
    };
    let error = header(&headers, ERROR_HEADER)
        .unwrap_or_default()
        .to_string();
    let published = header(&headers, PUBLISHED_HEADER)
        .and_then(|s| s.parse().ok())
        .map_or(SystemTime::UNIX_EPOCH, |n| {
            SystemTime::UNIX_EPOCH + Duration::from_nanos(n)
        });
    let offset = sequence - 1;
    let key = header(&headers, KEY_HEADER).map(unhex);
    let event = match &key {
        Some(None) => None,
        _ => E::decode(&message.payload).ok().map(|payload| {
            Event::new(
                payload,
                key.clone().flatten().map(EventKey::from),
                offset,
                published,
            )
        }),
    };
    Ok(Stored {
        letter: NatsDeadLetter {
            offset,
            key: key.flatten().map(EventKey::from),
            event,
            payload: message.payload.to_vec(),
            reason,
            error,
            attempts,
        },
        headers,
        copies: vec![at],
    })
}

/// The letters a process knows its group has, by the topic's stream
/// sequence, and the keys they park.
#[derive(Default)]
struct Index {
    letters: HashMap<u64, DeadReason>,
    parked: HashMap<EventKey, BTreeSet<u64>>,
}

impl Index {
    fn add(&mut self, sequence: u64, key: Option<&EventKey>, reason: DeadReason) {
        self.letters.insert(sequence, reason);
        if let Some(key) = key {
            self.parked.entry(key.clone()).or_default().insert(sequence);
        }
    }

    fn remove(&mut self, sequence: u64, key: Option<&EventKey>) {
        self.letters.remove(&sequence);
        if let Some(key) = key {
            if let Some(sequences) = self.parked.get_mut(key) {
                sequences.remove(&sequence);
                if sequences.is_empty() {
                    self.parked.remove(key);
                }
            }
        }
    }
}

/// What the writer task does, in order.
enum Job {
    /// Appends a letter for the held message at `sequence`, then settles
    /// the message.
    Write {
        sequence: u64,
        reason: DeadReason,
        error: String,
        attempts: u32,
    },
    /// Settles the held message at `sequence`, whose letter is stored
    /// already (a redelivery after a crash between the two).
    Settle { sequence: u64, reason: DeadReason },
    /// Answers once every job before it is done.
    Flush(oneshot::Sender<()>),
}

/// A group's dead letters in one process: which keys are parked, and the
/// writer's queue.
pub(super) struct DeadLetterQueue {
    index: Mutex<Index>,
    jobs: mpsc::UnboundedSender<Job>,
}

impl fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let index = self.lock();
        f.debug_struct("DeadLetterQueue")
            .field("letters", &index.letters.len())
            .field("parked_keys", &index.parked.len())
            .finish()
    }
}

impl DeadLetterQueue {
    /// A queue knowing the letters `stored` (read from the stream), and
    /// its writer task, to spawn.
    pub(super) fn new<E>(
        stored: &[Stored<E>],
        dead: DeadStream,
        ledger: Arc<Ledger>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let mut index = Index::default();
        for stored in stored {
            index.add(
                stored.letter.offset + 1,
                stored.letter.key.as_ref(),
                stored.letter.reason,
            );
        }
        let (jobs, queue) = mpsc::unbounded_channel();
        let queue_task = write_letters(queue, dead, ledger);
        (
            DeadLetterQueue {
                index: Mutex::new(index),
                jobs,
            },
            queue_task,
        )
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            // The writer is gone (the subscription is dropping): the
            // message stays unsettled and comes back to the group.
            tracing::debug!("a dead letter was not written: the group is stopping");
        }
    }

    /// Returns once every letter queued so far is written and its message
    /// settled (at once if the writer is gone).
    pub(super) async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.jobs.send(Job::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

impl<E: Clone + Send + Sync + 'static> DeadLetterSink<Delivered<E>> for DeadLetterQueue {
    fn set_aside(&self, event: &Event<Delivered<E>>) -> bool {
        let delivered = event.payload();
        let sequence = delivered.sequence;
        let mut index = self.lock();
        if let Some(&reason) = index.letters.get(&sequence) {
            // Its letter is stored: only the settlement was lost.
            drop(index);
            self.send(Job::Settle { sequence, reason });
            return true;
        }
        if let Some(key) = &delivered.key {
            if let Some(first) = index.parked.get(key).and_then(|s| s.first().copied()) {
                index.add(sequence, Some(key), DeadReason::Parked);
                drop(index);
                self.send(Job::Write {
                    sequence,
                    reason: DeadReason::Parked,
                    error: format!(
                        "parked behind the dead letter of its key at offset {}",
                        first - 1
                    ),
                    attempts: 0,
                });
                return true;
            }
        }
        if let Err(why) = &delivered.event {
            index.add(sequence, delivered.key.as_ref(), DeadReason::Undecodable);
            drop(index);
            self.send(Job::Write {
                sequence,
                reason: DeadReason::Undecodable,
                error: why.to_string(),
                attempts: 0,
            });
            return true;
        }
        false
    }

    fn dead_letter(&self, letter: DeadLetter<Delivered<E>>) {
        let delivered = letter.event.payload();
        let reason = match delivered.event {
            Ok(_) => DeadReason::Failed,
            Err(_) => DeadReason::Undecodable,
        };
        self.lock()
            .add(delivered.sequence, delivered.key.as_ref(), reason);
        self.send(Job::Write {
            sequence: delivered.sequence,
            reason,
            error: letter.error.to_string(),
            attempts: letter.attempts,
        });
    }
}

/// The headers of a letter for `message`, the topic's message at
/// stream sequence `sequence`.
fn letter_headers(
    message: &jetstream::Message,
    sequence: u64,
    reason: DeadReason,
    error: &str,
    attempts: u32,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(key) = message.headers.as_ref().and_then(|h| h.get(KEY_HEADER)) {
        headers.insert(KEY_HEADER, key.as_str());
    }
    headers.insert(SEQUENCE_HEADER, sequence.to_string().as_str());
    if let Ok(info) = message.info() {
        let published = u64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0);
        headers.insert(PUBLISHED_HEADER, published.to_string().as_str());
    }
    headers.insert(REASON_HEADER, reason.as_str());
    headers.insert(ERROR_HEADER, one_line(error).as_str());
    headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
    headers
}

/// The writer task: appends each letter (retrying until JetStream
/// confirms it), then settles its message; one job at a time, in order.
async fn write_letters(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    dead: DeadStream,
    ledger: Arc<Ledger>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Write {
                sequence,
                reason,
                error,
                attempts,
            } => {
                let Some(message) = ledger.message(sequence) else {
                    continue;
                };
                let headers = letter_headers(&message, sequence, reason, &error, attempts);
                let mut wait = Duration::from_millis(50);
                while let Err(error) = dead.append(headers.clone(), message.payload.to_vec()).await
                {
                    // Unsettled meanwhile: the message stays in progress
                    // here, and nothing is lost if this process dies.
                    tracing::warn!(%error, sequence, "could not write a dead letter; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                ledger.settle(sequence, reason.settlement()).await;
            }
            Job::Settle { sequence, reason } => ledger.settle(sequence, reason.settlement()).await,
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Hands the group's dead letters to `replay` once more, in offset order
/// (per key, in publish order); a letter whose key had a failure earlier
/// in this pass waits. A handled letter is deleted from the stream (and
/// its key unparked in this process once it has no letters left); one
/// that fails again is replaced by a copy with its new error and attempt
/// count.
pub(super) async fn replay<E: Codec + Clone + Send + Sync + 'static>(
    dead: &DeadStream,
    queue: &DeadLetterQueue,
    replay: &Replayer<E>,
) -> Result<ReplayReport> {
    let mut report = ReplayReport::default();
    let mut failed_keys: HashSet<EventKey> = HashSet::new();
    for stored in dead.read::<E>().await? {
        let letter = &stored.letter;
        if letter.key.as_ref().is_some_and(|k| failed_keys.contains(k)) {
            continue;
        }
        let Some(event) = &letter.event else {
            // It does not decode here: it stays as it is (with the
            // error of the process that took it), for a process that
            // can read it.
            report.failed += 1;
            if let Some(key) = &letter.key {
                failed_keys.insert(key.clone());
            }
            continue;
        };
        let outcome = replay(event.clone()).await;
        let sequence = letter.offset + 1;
        match outcome {
            Attempt::Handled => {
                // Deleted only after the handler succeeded: a crash in
                // between replays it again (a duplicate, never a loss).
                dead.remove(&stored.copies).await?;
                queue.lock().remove(sequence, letter.key.as_ref());
                report.handled += 1;
            }
            Attempt::Failed(error) | Attempt::Panicked(error) => {
                let mut headers = stored.headers.clone();
                headers.insert(ERROR_HEADER, one_line(&error.to_string()).as_str());
                let attempts = letter.attempts.saturating_add(1);
                headers.insert(ATTEMPTS_HEADER, attempts.to_string().as_str());
                if letter.reason == DeadReason::Parked {
                    headers.insert(REASON_HEADER, DeadReason::Failed.as_str());
                }
                // The replacement first, then the old copies: a crash in
                // between leaves two copies, read as one.
                dead.append(headers, letter.payload.clone()).await?;
                dead.remove(&stored.copies).await?;
                report.failed += 1;
                if let Some(key) = &letter.key {
                    failed_keys.insert(key.clone());
                }
            }
        }
    }
    Ok(report)
}

/// A letter's error, as the stream keeps it: its text.
#[derive(Debug)]
pub(super) struct LetterError(pub(super) String);

impl fmt::Display for LetterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LetterError {}
