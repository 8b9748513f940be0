//! Topics backed by NATS JetStream (feature `nats`), so that several
//! processes share one topic with the bus's delivery semantics.
//!
//! A [`NatsTopic`] is a JetStream stream; a group is a durable pull
//! consumer of it, named after the group: every process that subscribes
//! the same group shares its events (competing consumers), and a
//! restarted process picks up where the group left off. Inside a
//! process, a group's events run through the in-process bus's machinery:
//! keyed workers (one key's events in order), retries with back-off, a
//! caught panic counted as a failed attempt.
//!
//! # What is settled when
//!
//! A message is settled at the topic (acknowledged or terminated) only
//! once it is handled or durably handed on; nothing lives in process
//! memory alone.
//!
//! - A handled event is acknowledged after its handler returned `Ok`.
//! - An event whose handler failed every attempt is a dead letter
//!   ([`DeadReason::Failed`]): it is first appended to the topic's
//!   dead-letter stream (`<topic>-dead`, subject
//!   `scalekit.dead.<topic>.<group>`) with its payload as published, its
//!   key, its offset, the error and the attempt count, and only once
//!   JetStream has confirmed that append is the message terminated.
//! - The later events of a dead letter's key are parked behind it
//!   ([`DeadReason::Parked`]): appended to the same stream, and only then
//!   acknowledged (never terminated). A key stays parked while the stream
//!   holds letters of it, and a new instance of the group reads them when
//!   it subscribes, so a restart loses none of them and lets no newer
//!   event of the key overtake them.
//! - A message whose payload or key does not decode is a dead letter too
//!   ([`DeadReason::Undecodable`]), with its bytes as published, and parks
//!   its key: a process whose codec reads it (a newer deploy) can replay
//!   it.
//! - [`NatsTopic::dead_letters`] lists a group's letters from any
//!   process (by offset, so per key in publish order);
//!   [`NatsSubscription::replay_dead_letters`] hands them to the group's
//!   handler again, key by key in order, deleting each from the stream
//!   once handled. Replay runs the handler itself rather than
//!   republishing to the topic, which would hand the events to every
//!   other group of the topic again.
//!
//! # What a crash can repeat, and what it cannot lose
//!
//! A process that dies leaves its unsettled messages to its group:
//! JetStream hands them out again after the consumer's ack wait. Nothing
//! JetStream confirmed is lost; a crash can repeat:
//!
//! - an event whose handler ran (perhaps in part) but whose
//!   acknowledgement did not reach JetStream: handled again;
//! - an event whose letter was stored but whose settlement did not reach
//!   JetStream: the redelivery finds its letter (by offset) and is only
//!   settled, unless a replay removed the letter in between (then it is
//!   handled or dead-lettered afresh);
//! - a letter being written: written again (two copies of one offset,
//!   which the stream's readers count as one);
//! - a replayed letter handled but not yet deleted: handled again by the
//!   next replay; a replacement written (after a replay failed) before
//!   the old copy was deleted: two copies, read as one.
//!
//! "Confirmed" means what a JetStream acknowledgement means: stored by
//! the server, which syncs its files to disk periodically (every two
//! minutes by default), so a power loss of the server can lose what a
//! process crash cannot.
//!
//! # What `ack_wait` and `max_ack_pending` bound
//!
//! [`max_ack_pending`](NatsGroupBuilder::max_ack_pending) (default 256)
//! bounds the group's messages out and unsettled, across all its
//! processes; a process pulls batches of at most that many and its
//! in-process buffer holds as many. While a message waits in a process
//! or its handler runs, the process sends a progress acknowledgement for
//! it every quarter of the ack wait, so JetStream never hands a live
//! process's messages out again, however slow the handler.
//! [`ack_wait`](NatsGroupBuilder::ack_wait) (default 30 s) thus bounds
//! how long the messages of a dead (or stopped) process stay out before
//! they are redelivered. A handler that never returns keeps its message,
//! and its key, in progress for as long as its process lives.
//!
//! A redelivery of a message the process holds is ignored, and one of a
//! message it settled among its latest settlements (the larger of 4,096
//! and eight times `max_ack_pending`) is settled again, not handled:
//! without a crash, each event is handled once. (A redelivery of one
//! settled longer ago than that, which takes a lost acknowledgement and
//! that many settlements within one ack wait, is handled again.)
//!
//! # Order
//!
//! Per key, events are handled in publish order within one process, and
//! across a restart or a crash (which may repeat the last events handled,
//! never reorder them): a new instance of the group that finds messages
//! out at subscription (a dead instance's, which come back only after
//! the ack wait) holds the newer events, in progress, until those are
//! back or settled, or for at most twice the ack wait. (A process that
//! joins a group whose other processes are running waits the same way
//! for what they hold.) Several live processes of one group each take
//! some of the stream's messages, as JetStream hands them out: per-key
//! order across them needs one process per group. A key parked in one
//! process stays parked there until that process replays the key's
//! letters or restarts, even if another process replayed them (its new
//! events are parked, not lost).

mod base;
mod dead;
mod group;
mod ledger;
mod pump;
mod topic;

pub use self::dead::{DeadReason, NatsDeadLetter};
pub use self::group::{NatsGroupBuilder, NatsSubscription};
pub use self::topic::NatsTopic;
