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
//! # Performance (measured on a shared 2-core machine; ratios, not times)
//!
//! `cargo bench --bench event_bus`, one publisher, small events, groups of
//! one worker, publish-to-handled throughput against
//! `tokio::sync::broadcast` (one receiver task per group), medians of the
//! runs' ratios (five runs for single publishes, two for batches):
//! publishing in batches of 256 (`publish_batch`), the bus runs at
//! **3.6×** broadcast's throughput with one group and **1.15×** with four
//! (and at 1.7× crossbeam channels with four); publishing one event per
//! call, at **0.56×** with one group and **0.37×** with four.
//! A single publish hands the event to each group's worker and usually
//! wakes it: per-group buffers pay that once per group, where broadcast
//! shares one ring among its receivers.

mod bus;
mod dead_letter;
mod event;
mod group;
mod handler;
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
