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
//! A handled event is acknowledged after its handler returned `Ok`. An
//! event whose handler failed every attempt is dead-lettered: its message
//! is terminated (JetStream stops redelivering it), and the letter, with
//! the later events of its key parked behind it (terminated too), is kept
//! in this process's memory only ([`NatsSubscription::dead_letters`]): a
//! restart loses them. A message that does not decode is terminated,
//! with a log line.
//!
//! # What a crash can repeat
//!
//! A process that dies leaves its unsettled messages to its group:
//! JetStream hands them out again after the consumer's ack wait. A crash
//! can repeat an event whose handler ran (perhaps in part) but whose
//! acknowledgement did not reach JetStream. The dead letters and parked
//! events of the process are lost with it.
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
//! order across them needs one process per group.

mod base;
mod group;
mod ledger;
mod pump;
mod topic;

pub use self::group::{NatsGroupBuilder, NatsSubscription};
pub use self::topic::NatsTopic;
