//! The flusher task: takes batches from the buffer when a trigger fires
//! and writes them to the store, retrying with back-off, isolating the
//! writes of a failed batch, holding them through an outage and
//! dead-lettering what the store refuses.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::buffer::Batch;
use super::dead_letter::{DeadLetter, Refusal};
use super::stats::Counters;
use super::Shared;
use crate::backoff::backoff;
use crate::store::{Store, Write};
use crate::{Error, Result};

/// Runs until the layer is closed and its buffer is empty (or, with a
/// journal, closed while the store is down: the writes then stay in the
/// journal for the next start).
pub(super) async fn run<S: Store>(shared: Arc<Shared<S>>) {
    let mut rng = crate::backoff::seed();
    while let Some(batch) = next_batch(&shared).await {
        if let Outcome::Held = write(&shared, batch, &mut rng).await {
            shared.held.store(true, Ordering::Release);
            break;
        }
        let done = shared.lock().finish_batch();
        let mut hold = false;
        if let Some((journal, _)) = &shared.journal {
            if let Err(error) = journal.confirm(done) {
                // The segment stays and is replayed (again) on the next
                // start, with everything after it: writes are idempotent
                // and replayed in order, so that is safe.
                tracing::warn!(%error, "write-behind journal: could not drop confirmed records");
                hold = true;
            }
        }
        if let Some(log) = &mut shared.lock().log {
            log.confirm(done, hold);
        }
        shared.done.send_replace(done);
        shared.room.notify_waiters();
    }
    if let Some((journal, _)) = &shared.journal {
        // Stopped: the directory is free for the next layer the moment
        // `shutdown` returns.
        journal.release();
    }
    shared.stopped.send_replace(true);
    // Wake `flush` callers: with writes held, they are told so.
    shared.done.send_modify(|_| ());
}

/// What became of a batch.
enum Outcome {
    /// In the store, or handed to the dead-letter destination.
    Done,
    /// The layer was closed while the store was down: the writes stay in
    /// the journal, unconfirmed.
    Held,
}

/// Forces the journal to the disk every `interval` while the layer lives
/// (the `Interval` sync policy).
pub(super) async fn sync_every<S: Store>(shared: std::sync::Weak<Shared<S>>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if *shared.stopped.borrow() {
            return;
        }
        if let Some((journal, _)) = &shared.journal {
            if let Err(error) = journal.sync().await {
                tracing::warn!(%error, "write-behind journal: periodic sync failed");
            }
        }
    }
}

/// Waits for a trigger and takes the next batch; `None` once closed and
/// drained.
async fn next_batch<S: Store>(shared: &Shared<S>) -> Option<Batch<S::Key, S::Value>> {
    let config = &shared.config;
    loop {
        let wake = shared.wake.notified();
        let deadline = {
            let mut buffer = shared.lock();
            if buffer.pending_len() == 0 {
                if buffer.closed {
                    return None;
                }
                None
            } else {
                let due = buffer
                    .oldest_at()
                    .map_or_else(Instant::now, |oldest| oldest + config.max_delay);
                let triggered = buffer.pending_len() >= config.batch_size
                    || buffer.flush_target > buffer.done_up_to()
                    || buffer.closed
                    || due <= Instant::now();
                if triggered {
                    return Some(buffer.take_batch(config.batch_size));
                }
                Some(due)
            }
        };
        match deadline {
            Some(due) => {
                let _ = tokio::time::timeout_at(due, wake).await;
            }
            None => wake.await,
        }
    }
}

/// Writes one batch. A failing batch is retried (transient errors) with
/// exponential back-off and jitter up to the retry budget; then each of
/// its writes is tried alone, so one bad write does not fail the others.
/// A write the store refuses for good, or that fails alone while others
/// go through, goes to the dead-letter destination. When nothing goes
/// through at all the store is down: with a journal the writes are held
/// and retried at the back-off cap for as long as it takes (an outage
/// never turns acknowledged writes into dead letters); without one they
/// are dead-lettered, as are writes the destination has no room for
/// once it has room.
async fn write<S: Store>(
    shared: &Shared<S>,
    batch: Batch<S::Key, S::Value>,
    rng: &mut u64,
) -> Outcome {
    let config = &shared.config;
    let mut writes = batch.writes;
    let mut attempts = 0;
    loop {
        let error = match attempt(shared, &writes, &mut attempts, rng).await {
            Ok(()) => return Outcome::Done,
            Err(error) => error,
        };
        let tried = writes.len();
        let failed = if tried == 1 {
            writes.into_iter().map(|w| (w, error.clone())).collect()
        } else {
            isolate(shared, writes).await
        };
        let store_is_up = failed.len() < tried;
        let alone = u32::from(tried > 1); // each write's own attempt
        let mut held = Vec::new();
        for (write, error) in failed {
            let outage = error.is_transient() && !store_is_up && shared.journal.is_some();
            if outage {
                held.push(write);
                continue;
            }
            let closing = shared.lock().closed;
            let letter = DeadLetter {
                writes: vec![write],
                error,
                attempts: attempts + alone,
            };
            // Shutting down without a journal, memory is the last place.
            let force = closing && shared.journal.is_none();
            match shared.letters.accept(letter, force) {
                Ok(()) => {
                    tracing::warn!(
                        attempts = attempts + alone,
                        "write-behind write dead-lettered"
                    );
                    Counters::add(&shared.counters.dead_lettered, 1);
                }
                Err((letter, refusal)) => {
                    match refusal {
                        Refusal::Full => tracing::warn!(
                            "write-behind: the dead letters are at their limit; holding the write"
                        ),
                        Refusal::Log(error) => tracing::warn!(
                            %error,
                            "write-behind: the dead-letter log cannot take a write; holding it"
                        ),
                    }
                    held.extend(letter.writes);
                }
            }
        }
        if held.is_empty() {
            return Outcome::Done;
        }
        if shared.journal.is_some() && shared.lock().closed {
            return Outcome::Held;
        }
        Counters::add(&shared.counters.held_retries, 1);
        tracing::warn!(
            writes = held.len(),
            "write-behind: the store takes nothing; holding the writes and retrying"
        );
        let pause = backoff(config.max_backoff, config.max_backoff, 1, rng);
        if pause_unless_closed(shared, pause).await && shared.journal.is_some() {
            return Outcome::Held;
        }
        writes = held;
    }
}

/// Sleeps `pause`, or less if the layer is closed meanwhile; whether it
/// is closed.
async fn pause_unless_closed<S: Store>(shared: &Shared<S>, pause: Duration) -> bool {
    let until = Instant::now() + pause;
    loop {
        // Writes wake the flusher too: only a close ends the pause early.
        let wake = shared.wake.notified();
        if shared.lock().closed {
            return true;
        }
        if tokio::time::timeout_at(until, wake).await.is_err() {
            return shared.lock().closed;
        }
    }
}

/// Tries `writes` as one batch, retrying transient errors up to the
/// budget; counts the attempts in `attempts`.
async fn attempt<S: Store>(
    shared: &Shared<S>,
    writes: &[Write<S::Key, S::Value>],
    attempts: &mut u32,
    rng: &mut u64,
) -> Result<()> {
    let config = &shared.config;
    let count = writes.len() as u64;
    let mut tries = 0;
    loop {
        tries += 1;
        *attempts += 1;
        match shared.store.write_batch(writes.to_vec()).await {
            Ok(_) => {
                Counters::add(&shared.counters.batches, 1);
                Counters::add(&shared.counters.written, count);
                return Ok(());
            }
            Err(error) if error.is_transient() && tries <= config.max_retries => {
                Counters::add(&shared.counters.retries, 1);
                tracing::debug!(%error, tries, "write-behind batch failed; retrying");
                tokio::time::sleep(backoff(config.base_backoff, config.max_backoff, tries, rng))
                    .await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A write that failed alone, with its error.
type Failed<S> = (Write<<S as Store>::Key, <S as Store>::Value>, Error);

/// Tries each write alone (as Hazelcast retries a failed `storeAll` entry
/// by entry); returns those that failed, with their errors. When the
/// first few all fail for a reason that may pass and none went through,
/// the store is down (or hung: each try could take a whole call timeout),
/// so the rest are not tried one by one: they are returned with the same
/// error, and the caller holds them all as an outage.
async fn isolate<S: Store>(
    shared: &Shared<S>,
    writes: Vec<Write<S::Key, S::Value>>,
) -> Vec<Failed<S>> {
    /// Transient failures in a row, with nothing through, that end the
    /// isolation.
    const LOOKS_DOWN: usize = 3;
    Counters::add(&shared.counters.isolations, 1);
    let mut failed: Vec<Failed<S>> = Vec::new();
    let mut through = 0;
    let mut writes = writes.into_iter();
    while let Some(write) = writes.next() {
        match shared.store.write_batch(vec![write.clone()]).await {
            Ok(_) => {
                through += 1;
                Counters::add(&shared.counters.batches, 1);
                Counters::add(&shared.counters.written, 1);
            }
            Err(error) => {
                let looks_down = through == 0
                    && failed.len() + 1 >= LOOKS_DOWN
                    && error.is_transient()
                    && failed.iter().all(|(_, e)| e.is_transient());
                failed.push((write, error.clone()));
                if looks_down {
                    failed.extend(writes.map(|write| (write, error.clone())));
                    break;
                }
            }
        }
    }
    failed
}
