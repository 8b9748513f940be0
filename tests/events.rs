//! The in-process event bus: fan-out to groups, competing workers, per-key
//! order (also across retries and dead letters), at-least-once delivery,
//! panic isolation, both backpressure policies, retention and late
//! groups, shutdown, and the `Publishing` store layer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use scalekit::events::{
    Backpressure, Change, Event, EventBus, Publishing, RetryPolicy, StartFrom, Subscription, Topic,
    TopicOptions,
};
use scalekit::testing::FaultyStore;
use scalekit::{ErrorKind, MemoryStore, Store, Write};
use tokio::sync::{Barrier, Semaphore};

fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

/// Waits (bounded) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the condition never held");
}

type Seen = Arc<Mutex<Vec<u64>>>;

fn recorder(
    seen: &Seen,
) -> impl Fn(Event<u64>) -> std::future::Ready<Result<(), scalekit::events::HandlerError>>
       + Send
       + Sync
       + 'static {
    let seen = Arc::clone(seen);
    move |event: Event<u64>| {
        seen.lock().unwrap().push(*event.payload());
        std::future::ready(Ok(()))
    }
}

/// A group of one worker with a buffer of `capacity`, whose handler waits
/// for a permit of the returned gate before it records each event.
fn gated_group(
    topic: &Topic<u64>,
    name: &str,
    capacity: usize,
    when_full: Backpressure,
) -> (Subscription<u64>, Arc<Semaphore>, Seen) {
    let gate = Arc::new(Semaphore::new(0));
    let seen: Seen = Arc::default();
    let (open, record) = (Arc::clone(&gate), Arc::clone(&seen));
    let group = topic
        .group(name)
        .buffer(capacity, when_full)
        .subscribe(move |event: Event<u64>| {
            let (open, record) = (Arc::clone(&open), Arc::clone(&record));
            async move {
                open.acquire().await?.forget();
                record.lock().unwrap().push(*event.payload());
                Ok(())
            }
        })
        .unwrap();
    (group, gate, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_receives_every_event_with_its_offset_and_key() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("numbers").unwrap();
    let (a, b): (Seen, Seen) = Default::default();
    let first = topic.group("a").subscribe(recorder(&a)).unwrap();
    let second = topic.group("b").workers(3).subscribe(recorder(&b)).unwrap();
    for n in 0..100 {
        assert_eq!(topic.publish(n).await.unwrap(), n, "offsets count from 0");
    }
    let range = topic
        .publish_batch((100..110).map(|n| (Some(n.into()), n)))
        .await
        .unwrap();
    assert_eq!(range, 100..110);
    first.caught_up().await;
    second.caught_up().await;
    assert_eq!(
        *a.lock().unwrap(),
        (0..110).collect::<Vec<_>>(),
        "one worker: in order"
    );
    let mut all_b = b.lock().unwrap().clone();
    all_b.sort_unstable();
    assert_eq!(all_b, (0..110).collect::<Vec<_>>());
    assert_eq!(first.stats().delivered, 110);
    assert_eq!(second.stats().delivered, 110);
    let stats = topic.stats();
    assert_eq!((stats.published, stats.groups), (110, 2));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_workers_handle_events_concurrently() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("work").unwrap();
    let barrier = Arc::new(Barrier::new(4));
    let group = topic
        .group("crew")
        .workers(4)
        .subscribe(move |_: Event<u64>| {
            let barrier = Arc::clone(&barrier);
            async move {
                // Passes only when four handlers run at the same time.
                barrier.wait().await;
                Ok(())
            }
        })
        .unwrap();
    // Keyless events go round the workers by offset: one each.
    topic
        .publish_batch((0..4).map(|n| (None, n)))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), group.caught_up())
        .await
        .expect("four workers, four events at once");
    assert_eq!(group.stats().delivered, 4);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_caught_counted_and_the_group_goes_on() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("fragile").unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let handled = Arc::clone(&ok);
    let group = topic
        .group("g")
        .retries(fast_retries(1))
        .subscribe(move |event: Event<u64>| {
            let handled = Arc::clone(&handled);
            async move {
                if event.payload() % 10 == 3 {
                    panic!("bad event {}", event.payload());
                }
                handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .unwrap();
    for n in 0..30 {
        topic.publish(n).await.unwrap();
    }
    group.caught_up().await;
    let stats = group.stats();
    assert_eq!(ok.load(Ordering::Relaxed), 27);
    assert_eq!((stats.delivered, stats.dead_lettered), (27, 3));
    assert_eq!(stats.panicked, 6, "two attempts each");
    let letters = group.dead_letters();
    assert_eq!(
        letters
            .iter()
            .map(|l| *l.event.payload())
            .collect::<Vec<_>>(),
        vec![3, 13, 23]
    );
    assert!(
        letters[0].error.to_string().contains("bad event 3"),
        "{:?}",
        letters[0]
    );
    assert_eq!(letters[0].attempts, 2);
    // The bus still works.
    topic.publish(40).await.unwrap();
    group.caught_up().await;
    assert_eq!(group.stats().delivered, 28);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_events_of_a_dead_lettered_key_wait_behind_it_and_replay_in_order() {
    let bus = EventBus::new();
    let topic = bus.topic::<(String, u64)>("accounts").unwrap();
    let failing = Arc::new(AtomicBool::new(true));
    let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (fail, seen) = (Arc::clone(&failing), Arc::clone(&log));
    let group = topic
        .group("ledger")
        .workers(2)
        .retries(fast_retries(2))
        .subscribe(move |event: Event<(String, u64)>| {
            let (fail, seen) = (Arc::clone(&fail), Arc::clone(&seen));
            async move {
                let (account, n) = event.payload().clone();
                if account == "a" && n == 1 && fail.load(Ordering::Relaxed) {
                    return Err("account a is locked".into());
                }
                seen.lock().unwrap().push((account, n));
                Ok(())
            }
        })
        .unwrap();
    for n in 0..4 {
        for account in ["a", "b"] {
            topic
                .publish_keyed(account, (account.to_string(), n))
                .await
                .unwrap();
        }
    }
    group.caught_up().await;
    let of = |account: &str| -> Vec<u64> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == account)
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(of("b"), vec![0, 1, 2, 3], "other keys go on");
    assert_eq!(
        of("a"),
        vec![0],
        "a's later events wait behind its dead letter"
    );
    let letters = group.dead_letters();
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.event.payload().1, l.attempts))
            .collect::<Vec<_>>(),
        vec![(1, 3), (2, 0), (3, 0)],
        "the failed event, then the parked ones"
    );
    assert_eq!(group.stats().dead_lettered, 3);

    // Still failing: the replay stops at the first letter and keeps all.
    let again = group.replay_dead_letters().await;
    assert_eq!((again.handled, again.failed), (0, 1));
    assert_eq!(group.dead_letters().len(), 3);

    failing.store(false, Ordering::Relaxed);
    let replayed = group.replay_dead_letters().await;
    assert_eq!((replayed.handled, replayed.failed), (3, 0));
    assert!(group.dead_letters().is_empty());
    topic
        .publish_keyed("a", ("a".to_string(), 4))
        .await
        .unwrap();
    group.caught_up().await;
    assert_eq!(of("a"), vec![0, 1, 2, 3, 4], "in order, and unparked");
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_blocking_group_makes_the_publisher_wait_and_loses_nothing() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("slow").unwrap();
    let (group, gate, seen) = gated_group(&topic, "slow", 2, Backpressure::Block);
    topic.publish(0).await.unwrap();
    eventually(|| group.stats().in_flight == 1).await; // the worker holds event 0
    topic.publish(1).await.unwrap();
    topic.publish(2).await.unwrap(); // the buffer is full now
    let publisher = {
        let topic = topic.clone();
        tokio::spawn(async move {
            for n in 3..10 {
                topic.publish(n).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!publisher.is_finished(), "the publisher waits for room");
    assert_eq!(topic.stats().published, 3);
    gate.add_permits(10);
    publisher.await.unwrap();
    group.caught_up().await;
    assert_eq!(*seen.lock().unwrap(), (0..10).collect::<Vec<_>>());
    assert_eq!(group.stats().dropped, 0);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dropping_group_drops_the_oldest_and_counts_them() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("lossy").unwrap();
    let (group, gate, seen) = gated_group(&topic, "lossy", 2, Backpressure::DropOldest);
    topic.publish(0).await.unwrap();
    eventually(|| group.stats().in_flight == 1).await;
    for n in 1..10 {
        topic.publish(n).await.unwrap(); // never waits
    }
    let stats = group.stats();
    assert_eq!((stats.dropped, stats.lag), (7, 3), "{stats:?}");
    gate.add_permits(10);
    group.caught_up().await;
    assert_eq!(*seen.lock().unwrap(), vec![0, 8, 9], "the newest are kept");
    assert_eq!(group.stats().received, 10);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_group_starts_from_the_earliest_retained_event_or_the_latest() {
    let bus = EventBus::new();
    let topic = bus
        .topic_with::<u64>("history", TopicOptions::default().retain_last(5))
        .unwrap();
    for n in 0..10 {
        topic.publish(n).await.unwrap();
    }
    assert_eq!(topic.stats().retained, 5);
    let (early, late): (Seen, Seen) = Default::default();
    let from_earliest = topic
        .group("replayer")
        .start_from(StartFrom::Earliest)
        .subscribe(recorder(&early))
        .unwrap();
    let from_latest = topic.group("tail").subscribe(recorder(&late)).unwrap();
    topic.publish(10).await.unwrap();
    from_earliest.caught_up().await;
    from_latest.caught_up().await;
    assert_eq!(*early.lock().unwrap(), vec![5, 6, 7, 8, 9, 10]);
    assert_eq!(*late.lock().unwrap(), vec![10]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_group_then_refuses_events() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("drain").unwrap();
    let slow: Seen = Arc::default();
    let record = Arc::clone(&slow);
    let group = topic
        .group("slow")
        .workers(2)
        .subscribe(move |event: Event<u64>| {
            let record = Arc::clone(&record);
            async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                record.lock().unwrap().push(*event.payload());
                Ok(())
            }
        })
        .unwrap();
    topic
        .publish_batch((0..50).map(|n| (None, n)))
        .await
        .unwrap();
    bus.shutdown().await;
    assert_eq!(
        slow.lock().unwrap().len(),
        50,
        "all handled before shutdown returned"
    );
    assert_eq!(group.stats().lag, 0);
    let refused = topic.publish(99).await.unwrap_err();
    assert!(
        matches!(refused.kind(), ErrorKind::Unavailable { .. }),
        "{refused}"
    );
    let late = bus.topic::<u64>("other").unwrap_err();
    assert!(
        matches!(late.kind(), ErrorKind::Unavailable { .. }),
        "{late}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_are_config_errors() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("t").unwrap();
    let handler = |_: Event<u64>| async { Ok(()) };
    let errors = [
        topic
            .group("zero")
            .workers(0)
            .subscribe(handler)
            .unwrap_err(),
        topic
            .group("tiny")
            .buffer(0, Backpressure::Block)
            .subscribe(handler)
            .unwrap_err(),
        topic
            .group("backwards")
            .retries(RetryPolicy {
                max_retries: 1,
                base_backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(1),
            })
            .subscribe(handler)
            .unwrap_err(),
        {
            let _first = topic.group("twice").subscribe(handler).unwrap();
            topic.group("twice").subscribe(handler).unwrap_err()
        },
        bus.topic::<String>("t").unwrap_err(),
        bus.topic_with::<u64>("t", TopicOptions::default().retain_last(3))
            .unwrap_err(),
        bus.topic::<u64>("").unwrap_err(),
        topic
            .group("wider than its topic")
            .buffer(1025, Backpressure::DropOldest)
            .subscribe(handler)
            .unwrap_err(),
        bus.topic_with::<u64>("no room", TopicOptions::default().buffer(0))
            .unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
    }
    assert_eq!(
        bus.topic::<u64>("t").unwrap().stats().groups,
        1,
        "the same topic"
    );
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_topics_buffer_is_refused_whole() {
    let bus = EventBus::new();
    let topic = bus
        .topic_with::<u64>("small", TopicOptions::default().buffer(8))
        .unwrap();
    let seen: Seen = Arc::default();
    let group = topic.group("all").subscribe(recorder(&seen)).unwrap();
    let error = topic
        .publish_batch((0..9).map(|n| (None, n)))
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
    assert_eq!(topic.stats().published, 0, "none of it");
    assert_eq!(
        topic
            .publish_batch((0..8).map(|n| (None, n)))
            .await
            .unwrap(),
        0..8
    );
    group.caught_up().await;
    assert_eq!(*seen.lock().unwrap(), (0..8).collect::<Vec<_>>());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropping_group_a_whole_buffer_behind_counts_what_was_overwritten() {
    // The topic holds 4 events; the group's worker holds event 0 while 20
    // more are published, so most of what it missed is gone from the
    // topic when it reads again: all of it is counted, the newest kept.
    let bus = EventBus::new();
    let topic = bus
        .topic_with::<u64>("tiny", TopicOptions::default().buffer(4))
        .unwrap();
    let (group, gate, seen) = gated_group(&topic, "lossy", 2, Backpressure::DropOldest);
    topic.publish(0).await.unwrap();
    eventually(|| group.stats().in_flight == 1).await;
    for n in 1..=20 {
        topic.publish(n).await.unwrap();
    }
    assert_eq!(group.stats().dropped, 18);
    gate.add_permits(100);
    group.caught_up().await;
    assert_eq!(*seen.lock().unwrap(), vec![0, 19, 20]);
    let stats = group.stats();
    assert_eq!((stats.received, stats.dropped, stats.lag), (21, 18, 0));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropping_group_of_several_workers_counts_each_dropped_event_once() {
    let bus = EventBus::new();
    let topic = bus
        .topic_with::<u64>("spread", TopicOptions::default().buffer(16))
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicU64::new(0));
    let (open, count) = (Arc::clone(&gate), Arc::clone(&handled));
    let group = topic
        .group("lossy")
        .workers(2)
        .buffer(4, Backpressure::DropOldest)
        .subscribe(move |_: Event<u64>| {
            let (open, count) = (Arc::clone(&open), Arc::clone(&count));
            async move {
                open.acquire().await?.forget();
                count.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .unwrap();
    // Unkeyed events alternate between the two workers: each holds its
    // first event while the rest pile up.
    topic
        .publish_batch((0..2).map(|n| (None, n)))
        .await
        .unwrap();
    eventually(|| group.stats().in_flight == 2).await;
    for n in 2..100 {
        topic.publish(n).await.unwrap();
    }
    gate.add_permits(1000);
    group.caught_up().await;
    let stats = group.stats();
    assert_eq!(stats.received, 100);
    assert_eq!(
        stats.delivered + stats.dropped,
        100,
        "each event handled or dropped, none twice: {stats:?}"
    );
    assert_eq!(stats.delivered, handled.load(Ordering::SeqCst));
    assert_eq!(stats.lag, 0);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_conformance_suite_passes_in_process() {
    let bus = EventBus::new();
    let mut n = 0;
    scalekit::testing::event_conformance::run_all(|| {
        n += 1;
        let topic = bus.topic::<String>(&format!("suite-{n}")).unwrap();
        async move { topic }
    })
    .await;
    bus.shutdown().await;
}

#[test]
fn subscribing_outside_a_runtime_is_a_config_error() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("t").unwrap();
    let error = topic
        .group("g")
        .subscribe(|_: Event<u64>| async { Ok(()) })
        .unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_publishes_each_successful_write_and_nothing_for_a_failed_one() {
    let bus = EventBus::new();
    let topic = bus.topic::<Change<u64, String>>("changes").unwrap();
    let changes: Arc<Mutex<Vec<Change<u64, String>>>> = Arc::default();
    let record = Arc::clone(&changes);
    let group = topic
        .group("audit")
        .subscribe(move |event: Event<Change<u64, String>>| {
            let record = Arc::clone(&record);
            async move {
                record.lock().unwrap().push(event.payload().clone());
                Ok(())
            }
        })
        .unwrap();
    let store = FaultyStore::new(MemoryStore::<u64, String>::new());
    let layer = Publishing::new(store, topic.clone());
    let p1 = layer.put(1, "one".into()).await.unwrap();
    layer
        .write_batch(vec![Write::Put(2, "two".into()), Write::Delete(1)])
        .await
        .unwrap();
    layer.get_ref().set_failing(true);
    assert!(layer.put(3, "three".into()).await.is_err());
    assert!(layer.delete(&2).await.is_err());
    layer.get_ref().set_failing(false);
    layer.delete(&2).await.unwrap();
    group.caught_up().await;
    let seen = changes.lock().unwrap().clone();
    let summary: Vec<(u64, Option<&str>)> =
        seen.iter().map(|c| (c.key, c.value.as_deref())).collect();
    assert_eq!(
        summary,
        vec![(1, Some("one")), (2, Some("two")), (1, None), (2, None)],
        "the failed writes published nothing"
    );
    assert_eq!(seen[0].position, p1);
    assert_eq!(layer.get(&1).await.unwrap(), None);
    scalekit::testing::conformance::run_all(Arc::new(Publishing::new(
        MemoryStore::<String, Vec<u8>>::new(),
        bus.topic("conformance").unwrap(),
    )))
    .await;
    bus.shutdown().await;
    // A write the store took but the bus could not publish is an error to
    // its caller, not a silent gap in the events.
    let unpublished = layer.put(9, "nine".into()).await.unwrap_err();
    assert!(
        matches!(unpublished.kind(), ErrorKind::Unavailable { .. }),
        "{unpublished}"
    );
    assert_eq!(layer.get(&9).await.unwrap(), Some("nine".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waiting_for_room_is_refused_at_shutdown_and_the_rest_is_drained() {
    let bus = EventBus::new();
    let topic = bus.topic::<u64>("stuck").unwrap();
    let (group, gate, seen) = gated_group(&topic, "stuck", 1, Backpressure::Block);
    topic.publish(0).await.unwrap();
    eventually(|| group.stats().in_flight == 1).await;
    topic.publish(1).await.unwrap(); // fills the buffer
    let waiting = {
        let topic = topic.clone();
        tokio::spawn(async move { topic.publish(2).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "waits for room");
    let shutdown = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.shutdown().await })
    };
    let refused = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(refused.kind(), ErrorKind::Unavailable { .. }),
        "{refused}"
    );
    gate.add_permits(10);
    shutdown.await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![0, 1],
        "what was accepted is handled"
    );
    assert_eq!(topic.stats().published, 2);
}

/// One run of the ordering property: `publishers` tasks publish keyed
/// events concurrently (each owns its keys), a group of `workers` handles
/// them with handlers that fail at random (retried, sometimes until
/// dead-lettered, then replayed); every event ends handled exactly once
/// or in the dead-letter queue, and each key's events are handled in
/// publish order.
async fn ordering_and_delivery(publishers: u64, workers: usize, per_key: u64, fail_one_in: u64) {
    let bus = EventBus::new();
    let topic = bus.topic::<(u64, u64)>("ordered").unwrap();
    let handled: Arc<Mutex<BTreeMap<u64, Vec<u64>>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let (record, count) = (Arc::clone(&handled), Arc::clone(&calls));
    let group = topic
        .group("ordered")
        .workers(workers)
        .buffer(8, Backpressure::Block)
        .retries(fast_retries(1))
        .subscribe(move |event: Event<(u64, u64)>| {
            let (record, count) = (Arc::clone(&record), Arc::clone(&count));
            async move {
                let call = count.fetch_add(1, Ordering::Relaxed);
                // A deterministic scatter of failures over the calls.
                if fail_one_in > 0 && (call.wrapping_mul(0x9e37_79b9) >> 7) % fail_one_in == 0 {
                    return Err("injected".into());
                }
                if call % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                let (key, seq) = *event.payload();
                record.lock().unwrap().entry(key).or_default().push(seq);
                Ok(())
            }
        })
        .unwrap();
    let tasks: Vec<_> = (0..publishers)
        .map(|p| {
            let topic = topic.clone();
            tokio::spawn(async move {
                for seq in 0..per_key {
                    for k in 0..3 {
                        let key = p * 10 + k;
                        topic.publish_keyed(key, (key, seq)).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    group.caught_up().await;
    let parked: BTreeSet<(u64, u64)> = group
        .dead_letters()
        .iter()
        .map(|l| *l.event.payload())
        .collect();
    {
        let handled = handled.lock().unwrap();
        for (key, seqs) in handled.iter() {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "key {key}: {seqs:?}");
        }
        // Every event is handled or dead-lettered, never both, never lost.
        for p in 0..publishers {
            for k in 0..3 {
                let key = p * 10 + k;
                let done = handled.get(&key).map_or(&[][..], |s| s.as_slice());
                for seq in 0..per_key {
                    let in_dlq = parked.contains(&(key, seq));
                    assert!(
                        done.contains(&seq) ^ in_dlq,
                        "event ({key}, {seq}) lost or doubled"
                    );
                }
            }
        }
    }
    // Replaying until the queue is empty hands each key's rest over in order.
    for _ in 0..100 {
        if group.dead_letters().is_empty() {
            break;
        }
        group.replay_dead_letters().await;
    }
    assert!(group.dead_letters().is_empty());
    for seqs in handled.lock().unwrap().values() {
        assert_eq!(*seqs, (0..per_key).collect::<Vec<_>>());
    }
    bus.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn per_key_order_and_at_least_once_hold_under_concurrent_publishers_and_failures(
        publishers in 1u64..5,
        workers in 1usize..5,
        per_key in 1u64..40,
        fail_one_in in prop_oneof![Just(0u64), 3u64..12],
    ) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(ordering_and_delivery(publishers, workers, per_key, fail_one_in));
    }
}

/// A store whose answers come back after the commit, each after its own
/// delay: a later commit can answer first, as over a network.
#[derive(Debug, Default)]
struct SlowAnswers {
    inner: MemoryStore<u64, String>,
    calls: AtomicU64,
}

impl Store for SlowAnswers {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> scalekit::Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: u64, value: String) -> scalekit::Result<scalekit::Position> {
        let position = self.inner.put(key, value).await?;
        // Even calls answer late, odd ones at once.
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_micros(if n.is_multiple_of(2) {
            2_000
        } else {
            0
        }))
        .await;
        Ok(position)
    }
    async fn delete(&self, key: &u64) -> scalekit::Result<scalekit::Position> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_one_key_are_published_in_commit_order() {
    let bus = EventBus::new();
    let topic = bus.topic::<Change<u64, String>>("ordered").unwrap();
    let last = Arc::new(Mutex::new(BTreeMap::<u64, (String, u64)>::new()));
    let inversions = Arc::new(AtomicU64::new(0));
    let (record, inverted) = (Arc::clone(&last), Arc::clone(&inversions));
    // A consumer that applies each change's value, as a cache would.
    let group = topic
        .group("mirror")
        .subscribe(move |event: Event<Change<u64, String>>| {
            let (record, inverted) = (Arc::clone(&record), Arc::clone(&inverted));
            async move {
                let change = event.payload();
                let mut mirror = record.lock().unwrap();
                let position = change.position.get();
                if let Some((_, seen)) = mirror.get(&change.key) {
                    if *seen > position {
                        inverted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let value = change.value.clone().unwrap_or_default();
                mirror.insert(change.key, (value, position));
                Ok(())
            }
        })
        .unwrap();
    let layer = Arc::new(Publishing::new(SlowAnswers::default(), topic.clone()));
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let layer = Arc::clone(&layer);
            tokio::spawn(async move {
                for i in 0..100u64 {
                    layer.put(i % 3, format!("w{w} i{i}")).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    group.caught_up().await;
    assert_eq!(
        inversions.load(Ordering::Relaxed),
        0,
        "a key's changes arrived out of commit order"
    );
    let mirror = last.lock().unwrap().clone();
    for key in 0..3u64 {
        assert_eq!(
            Some(mirror[&key].0.clone()),
            layer.get(&key).await.unwrap(),
            "key {key}: the consumer ends where the store is"
        );
    }
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_queue_holds_the_worker_instead_of_growing_or_dropping() {
    let bus = EventBus::new();
    let topic = bus.topic::<String>("bounded-letters").unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (is_fixed, record) = (Arc::clone(&fixed), Arc::clone(&handled));
    let group = topic
        .group("bounded")
        .max_dead_letters(2)
        .retries(RetryPolicy {
            max_retries: 0,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
        })
        .subscribe(move |event: Event<String>| {
            let (is_fixed, record) = (Arc::clone(&is_fixed), Arc::clone(&record));
            async move {
                if event.payload().starts_with("poison") && !is_fixed.load(Ordering::SeqCst) {
                    return Err("not yet".into());
                }
                record.lock().unwrap().push(event.payload().clone());
                Ok(())
            }
        })
        .unwrap();
    for (key, payload) in [
        ("a", "poison a"),
        ("a", "a2"),
        ("b", "poison b"),
        ("c", "c1"),
    ] {
        topic.publish_keyed(key, payload.to_string()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(group.dead_letters().len(), 2, "the queue holds its bound");
    assert!(
        handled.lock().unwrap().is_empty(),
        "the worker waits for room rather than drop or overtake: {:?}",
        handled.lock().unwrap()
    );
    fixed.store(true, Ordering::SeqCst);
    // Replays make room: the held worker goes on.
    for _ in 0..50 {
        group.replay_dead_letters().await;
        if handled.lock().unwrap().len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group.caught_up().await;
    let order = handled.lock().unwrap().clone();
    assert_eq!(order.len(), 4, "{order:?}");
    let at = |p: &str| order.iter().position(|x| x == p).unwrap();
    assert!(at("poison a") < at("a2"), "per-key order: {order:?}");
    assert!(group.dead_letters().is_empty());
    let error = topic
        .group("zero")
        .max_dead_letters(0)
        .subscribe(|_: Event<String>| async { Ok(()) });
    assert!(matches!(
        error.unwrap_err().kind(),
        ErrorKind::Config { .. }
    ));
    bus.shutdown().await;
}
