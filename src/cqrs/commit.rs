//! The commit of concurrent commands: optimistic, grouped, conditional.
//!
//! Handlers run at once; their commits queue here. Whoever takes the
//! committer's lock commits everything queued in **one** conditional
//! batch, so commands that ran together commit in one round trip (group
//! commit), and the log's sequence numbers are handed out in one place per
//! process. Across processes nothing is trusted that a store check does
//! not guard:
//!
//! - the events go to the slots from the log's next number on, with a
//!   check that the first slot is still free (two appenders that read the
//!   same next number conflict on it; one from a stale number too, since
//!   the slot is taken), and the next number moves in the same batch;
//! - every document a handler read is checked unchanged (its version), so
//!   a command whose reads went stale conflicts and runs again;
//! - an idempotency record is inserted only if absent, so of two processes
//!   racing on one key one commits and the other answers with its record.
//!
//! A conflict names the failing check; the group drops (or re-reads) what
//! that check belongs to and commits the rest again.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};

use tokio::sync::oneshot;

use super::log::{self, LogKeys, WriteStore};
use crate::store::{Check, Write};
use crate::{Error, ErrorKind, Position};

/// How often a group commits again after another process took its log
/// slots, before its commands fail with the conflict.
const MAX_SLOT_RETRIES: usize = 64;

/// What a queued command wants committed.
pub(crate) struct Pending {
    /// The versions its handler read, and its idempotency record's absence.
    pub(crate) checks: Vec<Check<String>>,
    /// The handler's staged writes.
    pub(crate) writes: Vec<Write<String, Vec<u8>>>,
    /// Its events, encoded.
    pub(crate) events: Vec<Vec<u8>>,
    /// Its idempotency record's key and the encoded output to store there
    /// (the token is prefixed at commit).
    pub(crate) record: Option<(String, Vec<u8>)>,
    pub(crate) reply: oneshot::Sender<Outcome>,
}

/// How a queued command's commit ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Committed; the log position after its events.
    Committed(Position),
    /// What it read changed (or its idempotency key was taken): run the
    /// handler again.
    Conflict(Error),
    /// Not known to have committed.
    Failed(Error),
}

/// The queue and the committer of one bus.
#[derive(Default)]
pub(crate) struct Committer {
    queue: Mutex<Vec<Pending>>,
    /// Held while a group commits; holds the log's next number once known.
    next: tokio::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("queued", &self.queue.lock().map(|q| q.len()).unwrap_or(0))
            .finish()
    }
}

impl Committer {
    /// Queues `pending`; the caller then runs [`commit_queued`](Self::commit_queued)
    /// (in a task of its own, so a cancelled caller never cuts a group
    /// commit short) and waits for its reply.
    pub(crate) fn enqueue(&self, pending: Pending) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pending);
    }

    /// Takes the committer's turn and commits everything queued, if any
    /// (an earlier turn may have committed it all). Returns the log's next
    /// number after the commit, when something was committed.
    pub(crate) async fn commit_queued<S: WriteStore>(
        &self,
        store: &S,
        keys: &LogKeys,
    ) -> Option<u64> {
        let mut next = self.next.lock().await;
        let group = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        if group.is_empty() {
            return None;
        }
        commit_group(store, keys, &mut next, group).await
    }
}

/// One entry of a group being committed.
struct Entry {
    pending: Pending,
    /// The indices of its checks in the group's batch.
    checks: std::ops::Range<usize>,
    token: u64,
}

async fn commit_group<S: WriteStore>(
    store: &S,
    keys: &LogKeys,
    next: &mut Option<u64>,
    group: Vec<Pending>,
) -> Option<u64> {
    let mut group = separate_overlaps(group);
    let mut slot_retries = 0;
    let mut committed = None;
    while !group.is_empty() {
        let first = match *next {
            Some(first) => first,
            None => match log::read_counter(store, &keys.next()).await {
                Ok(first) => first,
                Err(error) => {
                    fail_all(group, &error);
                    return committed;
                }
            },
        };
        let (entries, batch_checks, batch) = match assemble(keys, first, group) {
            Ok(assembled) => assembled,
            Err((group, error)) => {
                fail_all(group, &error);
                return committed;
            }
        };
        let end = entries.last().map_or(first, |entry| entry.token);
        let slot_check = (end > first).then_some(batch_checks.len());
        let mut checks = batch_checks;
        if end > first {
            checks.push(Check::Absent(keys.event(first)));
        }
        match store.write_if(checks, batch).await {
            Ok(_) => {
                *next = Some(end);
                committed = Some(end);
                for entry in entries {
                    let _ = entry
                        .pending
                        .reply
                        .send(Outcome::Committed(Position::new(entry.token)));
                }
                return committed;
            }
            Err(error) => {
                let failed = match error.kind() {
                    ErrorKind::Conflict { check, .. } => Some(*check),
                    _ => None,
                };
                match failed {
                    Some(check) if Some(check) == slot_check => {
                        // Another process appended: read the next number
                        // again and commit the same group after it.
                        *next = None;
                        slot_retries += 1;
                        if slot_retries > MAX_SLOT_RETRIES {
                            conflict_all(entries, &error);
                            return committed;
                        }
                        group = entries.into_iter().map(|e| e.pending).collect();
                    }
                    Some(check) => {
                        // One command's reads went stale: it runs again,
                        // the others commit without it.
                        group = Vec::with_capacity(entries.len());
                        for entry in entries {
                            if entry.checks.contains(&check) {
                                let _ = entry.pending.reply.send(Outcome::Conflict(error.clone()));
                            } else {
                                group.push(entry.pending);
                            }
                        }
                    }
                    None => {
                        // Unknown outcome: whether the group landed is not
                        // known, so neither is the next number.
                        *next = None;
                        let group = entries.into_iter().map(|e| e.pending).collect();
                        fail_all(group, &error);
                        return committed;
                    }
                }
            }
        }
    }
    committed
}

/// Commands of one group that read or write a key an earlier one of the
/// group writes would commit on stale reads (the store checks against
/// what was stored before the group): they conflict at once and run again.
fn separate_overlaps(group: Vec<Pending>) -> Vec<Pending> {
    let mut written: HashSet<String> = HashSet::new();
    let mut kept = Vec::with_capacity(group.len());
    for pending in group {
        let touches_written = pending
            .checks
            .iter()
            .map(|check| check.key())
            .chain(pending.writes.iter().map(Write::key))
            .chain(pending.record.iter().map(|(key, _)| key))
            .any(|key| written.contains(key));
        if touches_written {
            let key = pending
                .checks
                .first()
                .map_or_else(String::new, |check| check.key().clone());
            let _ = pending.reply.send(Outcome::Conflict(Error::conflict(
                format!("{key:?}"),
                0,
                None,
            )));
            continue;
        }
        written.extend(pending.writes.iter().map(|w| w.key().clone()));
        written.extend(pending.record.iter().map(|(key, _)| key.clone()));
        kept.push(pending);
    }
    kept
}

type Assembled = (Vec<Entry>, Vec<Check<String>>, Vec<Write<String, Vec<u8>>>);

/// The group's checks and batch with its events from `first` on.
fn assemble(
    keys: &LogKeys,
    first: u64,
    group: Vec<Pending>,
) -> std::result::Result<Assembled, (Vec<Pending>, Error)> {
    let mut entries = Vec::with_capacity(group.len());
    let mut checks = Vec::new();
    let mut batch = Vec::new();
    let mut sequence = first;
    for pending in group {
        let start = checks.len();
        checks.extend(pending.checks.iter().cloned());
        batch.extend(pending.writes.iter().cloned());
        for event in &pending.events {
            batch.push(Write::Put(keys.event(sequence), event.clone()));
            sequence += 1;
        }
        if let Some((key, output)) = &pending.record {
            let mut bytes = sequence.to_be_bytes().to_vec();
            bytes.extend_from_slice(output);
            batch.push(Write::Put(key.clone(), bytes));
        }
        entries.push(Entry {
            checks: start..checks.len(),
            token: sequence,
            pending,
        });
    }
    if sequence > first {
        match log::encode("value", &sequence) {
            Ok(bytes) => batch.push(Write::Put(keys.next(), bytes)),
            Err(error) => return Err((entries.into_iter().map(|e| e.pending).collect(), error)),
        }
    }
    Ok((entries, checks, batch))
}

fn fail_all(group: Vec<Pending>, error: &Error) {
    for pending in group {
        let _ = pending.reply.send(Outcome::Failed(error.clone()));
    }
}

/// Replies "run again" to every entry (its handler reruns, bounded by
/// the bus's conflict retries).
fn conflict_all(entries: Vec<Entry>, error: &Error) {
    for entry in entries {
        let _ = entry.pending.reply.send(Outcome::Conflict(error.clone()));
    }
}
