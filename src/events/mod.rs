//! An in-process event bus with the guarantees people reach for Kafka to
//! get: typed topics, every subscription group sees every event, per-key
//! order within a group, retries, dead letters, backpressure and replay.
//!
//! # Which tool for which problem
//!
//! | you want | use |
//! |---|---|
//! | several independent consumers (email, search, analytics) each to see every event | one [`Subscription`] group per consumer: [`Topic::group`] |
//! | one consumer to keep up with a busy topic | more [`workers`](GroupBuilder::workers) in its group: events are spread over them |
//! | one entity's events (an order, a user) handled in publish order | publish with a key ([`Topic::publish_keyed`]): one key's events go to one worker, one after another, even across retries |
//! | a failing event retried, then set aside without stopping the group | [`RetryPolicy`], then the group's dead-letter queue ([`Subscription::dead_letters`], [`Subscription::replay_dead_letters`]); later events of its key wait behind it there |
//! | a slow consumer to slow the publisher down, losing nothing | [`Backpressure::Block`] (the default) |
//! | a slow consumer never to slow the publisher down | [`Backpressure::DropOldest`]: what it misses is counted in [`GroupStats::dropped`] |
//! | a consumer added later to see recent history | [`TopicOptions::retain_last`] on the topic and [`StartFrom::Earliest`] on the group |
//! | every write of a store to become an event | the [`Publishing`] layer |
//! | a plain in-memory fan-out without these guarantees | `tokio::sync::broadcast` |
//!
//! Delivery is at least once to each group: an event is handed to a
//! group's handler until it returns `Ok`, or it ends in the group's
//! dead-letter queue with the error; a handler that panics is caught and
//! counted as a failed attempt, and the group goes on. Under
//! [`Backpressure::Block`] nothing is lost; under
//! [`Backpressure::DropOldest`] nothing is lost silently.
//! [`EventBus::shutdown`] refuses new events, lets every group finish what
//! it has, and returns when all are handled or dead-lettered.
//!
//! ```
//! use scalekit::events::{Event, EventBus, RetryPolicy};
//!
//! #[derive(Debug, Clone)]
//! struct OrderPlaced { order: u64, total_cents: u64 }
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let bus = EventBus::new();
//! let orders = bus.topic::<OrderPlaced>("orders")?;
//!
//! let emails = orders
//!     .group("email")
//!     .workers(4)
//!     .retries(RetryPolicy::default())
//!     .subscribe(|event: Event<OrderPlaced>| async move {
//!         // send the confirmation; an error is retried, then dead-lettered
//!         let _ = event.payload().total_cents;
//!         Ok(())
//!     })?;
//!
//! orders.publish_keyed("customer-7", OrderPlaced { order: 1, total_cents: 990 }).await?;
//! emails.caught_up().await;
//! assert_eq!(emails.stats().delivered, 1);
//! bus.shutdown().await;
//! # Ok::<(), scalekit::Error>(()) }).unwrap();
//! ```

//!
//! # How it works, and what it costs
//!
//! A topic keeps its recent events in one ring (its
//! [buffer](TopicOptions::buffer)), written once per event however many
//! groups read it; each group's workers read the ring from their own
//! cursor, a block of events per lock, each keeping the events of its
//! keys (Kafka's partitions, inside one process). The publisher waits
//! only when a [`Backpressure::Block`] group's slowest worker is a whole
//! group buffer behind, and then until that worker has half its buffer
//! free again; a [`Backpressure::DropOldest`] worker that far behind skips
//! to the newest events and counts what it skipped. An event's payload
//! stays in the ring until a later event takes its slot.
//!
//! # Performance (measured on a shared 2-core machine; ratios, not times)
//!
//! `cargo bench --bench event_bus`: one publisher, small events, groups of
//! one worker, publish-to-handled throughput against
//! `tokio::sync::broadcast` (one receiver task per group, a buffer as
//! large as the run, since broadcast has no backpressure), medians of
//! three runs' ratios. With a topic buffer of 65,536: one event per
//! publish, **0.76×** broadcast with one group and **0.84×** with four;
//! batches of 256, **2.0×** and **1.3×**. With the default buffer of
//! 1,024 the publisher waits for the slowest group often, and fast
//! groups sleep and are woken again: 0.43× and 0.65× one by one, 0.84×
//! and 0.82× in batches. Raise the buffer for a topic that must absorb
//! bursts.

mod bus;
mod dead_letter;
mod event;
mod group;
mod handler;
mod log;
#[cfg(feature = "nats")]
pub mod nats;
mod publishing;
mod stats;
mod topic;
mod worker;

pub use self::bus::EventBus;
pub use self::dead_letter::{DeadLetter, ReplayReport};
pub use self::event::{Event, EventKey};
pub use self::group::{Backpressure, GroupBuilder, RetryPolicy, StartFrom, Subscription};
pub use self::handler::{Handler, HandlerError};
pub use self::publishing::{Change, ChangeTopic, Publishing};
pub use self::stats::{GroupStats, TopicStats};
pub use self::topic::{Topic, TopicOptions};
