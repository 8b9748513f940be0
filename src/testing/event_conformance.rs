//! The event bus's promises, one async function each, run against every
//! topic backend: the in-process [`Topic`] and, with feature `nats`,
//! `NatsTopic`. [`run_all`] runs them all, each on a fresh topic.
//!
//! ```
//! use scalekit::events::EventBus;
//! use scalekit::testing::event_conformance;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let bus = EventBus::new();
//! let mut n = 0;
//! event_conformance::run_all(|| {
//!     n += 1;
//!     let topic = bus.topic::<String>(&format!("suite-{n}")).unwrap();
//!     async move { topic }
//! })
//! .await;
//! bus.shutdown().await;
//! # });
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::{DeadLetter, Event, GroupStats, Handler, RetryPolicy, Subscription, Topic};
use crate::Result;

/// A topic of `String` events the suite can drive.
pub trait TopicUnderTest: Send + Sync + 'static {
    /// A running subscription group.
    type Group: Send + Sync;

    /// Publishes `payload` with `key`; its offset.
    fn publish_keyed(&self, key: &str, payload: String)
        -> impl Future<Output = Result<u64>> + Send;

    /// Subscribes the group `name` with `workers` workers and `retry`.
    fn subscribe<H: Handler<String>>(
        &self,
        name: &str,
        workers: usize,
        retry: RetryPolicy,
        handler: H,
    ) -> impl Future<Output = Result<Self::Group>> + Send;

    /// Returns once the group has finished everything published so far.
    fn caught_up(group: &Self::Group) -> impl Future<Output = ()> + Send;

    /// The group's dead letters, oldest first.
    fn dead_letters(group: &Self::Group) -> impl Future<Output = Vec<DeadLetter<String>>> + Send;

    /// The group's counters.
    fn stats(group: &Self::Group) -> GroupStats;
}

impl TopicUnderTest for Topic<String> {
    type Group = Subscription<String>;

    fn publish_keyed(
        &self,
        key: &str,
        payload: String,
    ) -> impl Future<Output = Result<u64>> + Send {
        Topic::publish_keyed(self, key, payload)
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
    }

    async fn caught_up(group: &Self::Group) {
        group.caught_up().await;
    }

    async fn dead_letters(group: &Self::Group) -> Vec<DeadLetter<String>> {
        group.dead_letters()
    }

    fn stats(group: &Self::Group) -> GroupStats {
        group.stats()
    }
}

fn quick(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

type Log = Arc<Mutex<Vec<(Option<String>, String)>>>;

fn recorder(log: &Log) -> impl Handler<String> {
    let log = Arc::clone(log);
    move |event: Event<String>| {
        let key = event
            .key()
            .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned());
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((key, event.payload().clone()));
        std::future::ready(Ok(()))
    }
}

/// Every group receives every event, with its key.
pub async fn every_group_gets_every_event<T: TopicUnderTest>(topic: &T) {
    let (a, b): (Log, Log) = Default::default();
    let first = topic
        .subscribe("first", 1, quick(0), recorder(&a))
        .await
        .expect("subscribe");
    let second = topic
        .subscribe("second", 2, quick(0), recorder(&b))
        .await
        .expect("subscribe");
    for n in 0..10 {
        topic
            .publish_keyed("k", format!("e{n}"))
            .await
            .expect("publish");
    }
    T::caught_up(&first).await;
    T::caught_up(&second).await;
    let expected: Vec<(Option<String>, String)> = (0..10)
        .map(|n| (Some("k".to_string()), format!("e{n}")))
        .collect();
    assert_eq!(*a.lock().unwrap(), expected, "the first group, in order");
    assert_eq!(*b.lock().unwrap(), expected, "the second group, in order");
    assert_eq!(T::stats(&first).delivered, 10);
}

/// Within a group of several workers, one key's events are handled one
/// after another, in publish order.
pub async fn per_key_order_holds_with_several_workers<T: TopicUnderTest>(topic: &T) {
    let seen: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    let record = Arc::clone(&seen);
    let group = topic
        .subscribe("ordered", 3, quick(0), move |event: Event<String>| {
            let record = Arc::clone(&record);
            async move {
                let (key, n) = event.payload().split_once(':').unwrap_or(("?", "0"));
                if n.ends_with('3') {
                    tokio::task::yield_now().await;
                }
                record
                    .lock()
                    .unwrap()
                    .entry(key.to_string())
                    .or_default()
                    .push(n.parse().unwrap_or(0));
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    for n in 0..30u64 {
        for key in ["a", "b", "c", "d"] {
            topic
                .publish_keyed(key, format!("{key}:{n}"))
                .await
                .expect("publish");
        }
    }
    T::caught_up(&group).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    for (key, ns) in seen.iter() {
        assert_eq!(*ns, (0..30).collect::<Vec<_>>(), "key {key}");
    }
}

/// A failing event is retried until it succeeds; one that never does is
/// dead-lettered with its error, and the later events of its key park
/// behind it while other keys go on.
pub async fn failures_are_retried_then_dead_lettered_in_key_order<T: TopicUnderTest>(topic: &T) {
    let calls = Arc::new(AtomicU64::new(0));
    let log: Log = Arc::default();
    let (count, record) = (Arc::clone(&calls), Arc::clone(&log));
    let group = topic
        .subscribe("retrying", 1, quick(2), move |event: Event<String>| {
            let (count, record) = (Arc::clone(&count), Arc::clone(&record));
            async move {
                let call = count.fetch_add(1, Ordering::Relaxed);
                match event.payload().as_str() {
                    "poison" => return Err("never handled".into()),
                    "flaky" if call % 2 == 0 => return Err("handled on a retry".into()),
                    _ => {}
                }
                record.lock().unwrap().push((None, event.payload().clone()));
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    for (key, payload) in [
        ("x", "flaky"),
        ("y", "poison"),
        ("y", "after"),
        ("x", "fine"),
    ] {
        topic
            .publish_keyed(key, payload.to_string())
            .await
            .expect("publish");
    }
    T::caught_up(&group).await;
    let handled: Vec<String> = log.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(handled, vec!["flaky".to_string(), "fine".to_string()]);
    let letters = T::dead_letters(&group).await;
    let parked: Vec<(&str, u32)> = letters
        .iter()
        .map(|l| (l.event.payload().as_str(), l.attempts))
        .collect();
    assert_eq!(parked, vec![("poison", 3), ("after", 0)]);
    assert!(letters[0].error.to_string().contains("never handled"));
    let stats = T::stats(&group);
    assert_eq!((stats.delivered, stats.dead_lettered), (2, 2));
    assert!(stats.retried >= 3, "{stats:?}");
}

/// A handler that panics is a failed attempt, not a crash: the group goes on.
pub async fn a_panicking_handler_is_a_failure_not_a_crash<T: TopicUnderTest>(topic: &T) {
    let log: Log = Arc::default();
    let record = Arc::clone(&log);
    let group = topic
        .subscribe("fragile", 1, quick(1), move |event: Event<String>| {
            let record = Arc::clone(&record);
            async move {
                assert!(event.payload() != "boom", "the handler blew up");
                record.lock().unwrap().push((None, event.payload().clone()));
                Ok(())
            }
        })
        .await
        .expect("subscribe");
    for payload in ["one", "boom", "two"] {
        topic
            .publish_keyed(payload, payload.to_string())
            .await
            .expect("publish");
    }
    T::caught_up(&group).await;
    assert_eq!(log.lock().unwrap().len(), 2);
    let stats = T::stats(&group);
    assert_eq!((stats.panicked, stats.dead_lettered), (2, 1));
    assert!(T::dead_letters(&group).await[0]
        .error
        .to_string()
        .contains("blew up"));
}

/// Runs every function of the suite, each on a topic `make` returns.
pub async fn run_all<T, F, Fut>(mut make: F)
where
    T: TopicUnderTest,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    every_group_gets_every_event(&make().await).await;
    per_key_order_holds_with_several_workers(&make().await).await;
    failures_are_retried_then_dead_lettered_in_key_order(&make().await).await;
    a_panicking_handler_is_a_failure_not_a_crash(&make().await).await;
}
