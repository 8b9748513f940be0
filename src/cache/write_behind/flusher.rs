//! The flusher task: takes batches from the buffer when a trigger fires
//! and writes them to the store, retrying with back-off, dead-lettering
//! what never goes through.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::buffer::Batch;
use super::dead_letter::DeadLetter;
use super::stats::Counters;
use super::Shared;
use crate::store::Store;

/// Runs until the layer is closed and its buffer is empty.
pub(super) async fn run<S: Store>(shared: Arc<Shared<S>>) {
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    while let Some(batch) = next_batch(&shared).await {
        write(&shared, batch, &mut rng).await;
        let done = {
            let mut buffer = shared.lock();
            let done = buffer.finish_batch();
            if let Some(log) = &mut buffer.log {
                log.confirm(done);
            }
            done
        };
        if let Some((journal, _)) = &shared.journal {
            if let Err(error) = journal.confirm(done) {
                // The records stay and are replayed (again) on the next
                // start: writes are idempotent, so that is safe.
                tracing::warn!(%error, "write-behind journal: could not drop confirmed records");
            }
        }
        shared.done.send_replace(done);
        shared.room.notify_waiters();
    }
    shared.stopped.send_replace(true);
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

/// Writes one batch, retrying transient errors with exponential back-off
/// and jitter; hands it to the dead-letter sink when it never goes through.
async fn write<S: Store>(shared: &Shared<S>, batch: Batch<S::Key, S::Value>, rng: &mut u64) {
    let config = &shared.config;
    let count = batch.writes.len() as u64;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match shared.store.write_batch(batch.writes.clone()).await {
            Ok(_) => {
                Counters::add(&shared.counters.batches, 1);
                Counters::add(&shared.counters.written, count);
                return;
            }
            Err(error) if error.is_transient() && attempts <= config.max_retries => {
                Counters::add(&shared.counters.retries, 1);
                tracing::debug!(%error, attempts, "write-behind batch failed; retrying");
                tokio::time::sleep(backoff(
                    config.base_backoff,
                    config.max_backoff,
                    attempts,
                    rng,
                ))
                .await;
            }
            Err(error) => {
                tracing::warn!(%error, attempts, writes = count, "write-behind batch dead-lettered");
                Counters::add(&shared.counters.dead_lettered, count);
                shared.dead_letter(DeadLetter {
                    writes: batch.writes,
                    error,
                    attempts,
                });
                return;
            }
        }
    }
}

/// The wait before attempt `attempts + 1`: doubling from `base` up to
/// `max`, then a random half to all of it ("equal jitter"), so that many
/// writers retrying together spread out.
fn backoff(base: Duration, max: Duration, attempts: u32, rng: &mut u64) -> Duration {
    let full = base.saturating_mul(1u32 << (attempts - 1).min(20)).min(max);
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let share = 0.5 + (*rng >> 11) as f64 / (1u64 << 54) as f64;
    full.mul_f64(share.min(1.0))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let mut rng = 42;
        for (attempts, full) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (30, 100)] {
            let wait = backoff(base, max, attempts, &mut rng);
            let full = Duration::from_millis(full);
            assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
        }
    }
}
