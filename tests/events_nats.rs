//! Event topics on NATS JetStream (feature `nats`, against the server on
//! 127.0.0.1:4222 that `.ci/run` starts): fan-out to durable groups,
//! sharing across connections, ack only after success, dead letters
//! terminated, redelivery of what a dead subscriber never settled.

#![cfg(feature = "nats")]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalekit::events::nats::NatsTopic;
use scalekit::events::{Change, Event, Publishing, RetryPolicy, StartFrom};
use scalekit::testing::event_conformance;
use scalekit::ErrorKind;
use scalekit::{MemoryStore, Store, Write};

fn url() -> String {
    std::env::var("SCALEKIT_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_string())
}

fn name(purpose: &str) -> String {
    common::unique_name(purpose, '_')
}

fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        base_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

type Seen = Arc<Mutex<Vec<(u64, String)>>>;
type Changes = Arc<Mutex<Vec<(u64, Option<String>)>>>;

fn recorder(
    seen: &Seen,
) -> impl Fn(Event<String>) -> std::future::Ready<Result<(), scalekit::events::HandlerError>>
       + Send
       + Sync
       + 'static {
    let seen = Arc::clone(seen);
    move |event: Event<String>| {
        seen.lock()
            .unwrap()
            .push((event.offset(), event.payload().clone()));
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_durable_group_gets_every_event_in_order_and_acknowledges_it() {
    let topic = NatsTopic::<String>::connect(&url(), &name("fanout"))
        .await
        .unwrap();
    for n in 0..20u64 {
        let offset = topic.publish_keyed("k", format!("e{n}")).await.unwrap();
        assert_eq!(offset, n);
    }
    let (a, b): (Seen, Seen) = Default::default();
    let first = topic.group("a").subscribe(recorder(&a)).await.unwrap();
    let second = topic
        .group("b")
        .workers(3)
        .subscribe(recorder(&b))
        .await
        .unwrap();
    first.caught_up().await.unwrap();
    second.caught_up().await.unwrap();
    let expected: Vec<(u64, String)> = (0..20).map(|n| (n, format!("e{n}"))).collect();
    assert_eq!(*a.lock().unwrap(), expected, "one key: in publish order");
    assert_eq!(*b.lock().unwrap(), expected, "one key stays on one worker");
    assert_eq!(first.stats().delivered, 20);
    let stats = topic.stats().await.unwrap();
    assert_eq!((stats.published, stats.retained, stats.groups), (20, 20, 2));
    first.shutdown().await;
    second.shutdown().await;
    topic.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_a_topic_and_a_group_takes_each_event_once_across_them() {
    let stream = name("shared");
    let publisher = NatsTopic::<String>::connect(&url(), &stream).await.unwrap();
    let (one, two) = (
        NatsTopic::<String>::connect(&url(), &stream).await.unwrap(),
        NatsTopic::<String>::connect(&url(), &stream).await.unwrap(),
    );
    let (a, b): (Seen, Seen) = Default::default();
    let left = one.group("workers").subscribe(recorder(&a)).await.unwrap();
    let right = two.group("workers").subscribe(recorder(&b)).await.unwrap();
    for n in 0..200u64 {
        publisher.publish(format!("e{n}")).await.unwrap();
    }
    left.caught_up().await.unwrap();
    right.caught_up().await.unwrap();
    let mut all: Vec<u64> = a
        .lock()
        .unwrap()
        .iter()
        .chain(b.lock().unwrap().iter())
        .map(|(offset, _)| *offset)
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..200).collect::<Vec<_>>(),
        "each event once, across both"
    );
    left.shutdown().await;
    right.shutdown().await;
    publisher.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_retried_then_dead_lettered_and_not_redelivered() {
    let topic = NatsTopic::<String>::connect(&url(), &name("dlq"))
        .await
        .unwrap();
    let attempts = Arc::new(AtomicU64::new(0));
    let handled: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let (count, done) = (Arc::clone(&attempts), Arc::clone(&handled));
    let group = topic
        .group("g")
        .retries(fast_retries(2))
        .ack_wait(Duration::from_secs(1))
        .subscribe(move |event: Event<String>| {
            let (count, done) = (Arc::clone(&count), Arc::clone(&done));
            async move {
                if event.payload() == "poison" {
                    count.fetch_add(1, Ordering::Relaxed);
                    return Err("cannot handle poison".into());
                }
                done.lock().unwrap().insert(event.payload().clone());
                Ok(())
            }
        })
        .await
        .unwrap();
    topic
        .publish_keyed("bad", "poison".to_string())
        .await
        .unwrap();
    topic
        .publish_keyed("bad", "after".to_string())
        .await
        .unwrap();
    topic
        .publish_keyed("good", "fine".to_string())
        .await
        .unwrap();
    group.caught_up().await.unwrap();
    let letters = group.dead_letters();
    let payloads: Vec<&str> = letters.iter().map(|l| l.event.payload().as_str()).collect();
    assert_eq!(
        payloads,
        vec!["poison", "after"],
        "the later event of its key parks behind it"
    );
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(
        *handled.lock().unwrap(),
        BTreeSet::from(["fine".to_string()])
    );
    // Terminated, so JetStream does not hand them out again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    group.caught_up().await.unwrap();
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        3,
        "no redelivery of a dead letter"
    );
    group.shutdown().await;
    topic.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_dead_subscriber_never_settled_is_redelivered_to_its_group() {
    let topic = NatsTopic::<String>::connect(&url(), &name("redeliver"))
        .await
        .unwrap();
    for n in 0..5u64 {
        topic.publish(format!("e{n}")).await.unwrap();
    }
    // A subscriber that takes events and never finishes them, then dies.
    let stuck = topic
        .group("g")
        .ack_wait(Duration::from_secs(1))
        .subscribe(|_: Event<String>| {
            std::future::pending::<Result<(), scalekit::events::HandlerError>>()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stuck);
    let seen: Seen = Arc::default();
    let heir = topic
        .group("g")
        .ack_wait(Duration::from_secs(1))
        .subscribe(recorder(&seen))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.lock().unwrap().len() < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the unsettled events come back");
    let offsets: BTreeSet<u64> = seen.lock().unwrap().iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..5).collect::<BTreeSet<_>>());
    heir.shutdown().await;
    topic.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_an_unreachable_server_are_typed_errors() {
    let bad = NatsTopic::<String>::connect(&url(), "has.dots")
        .await
        .unwrap_err();
    assert!(matches!(bad.kind(), ErrorKind::Config { .. }), "{bad}");
    let topic = NatsTopic::<String>::connect(&url(), &name("names"))
        .await
        .unwrap();
    let bad_group = topic
        .group("a b")
        .subscribe(|_: Event<String>| async { Ok(()) })
        .await
        .unwrap_err();
    assert!(
        matches!(bad_group.kind(), ErrorKind::Config { .. }),
        "{bad_group}"
    );
    topic.delete().await.unwrap();
    let down = NatsTopic::<String>::connect("nats://127.0.0.1:1", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(down.kind(), ErrorKind::Unavailable { .. }),
        "{down}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_conformance_suite_passes_on_jetstream() {
    let topic = || async {
        NatsTopic::<String>::connect(&url(), &name("suite"))
            .await
            .unwrap()
    };
    let t = topic().await;
    event_conformance::every_group_gets_every_event(&t).await;
    t.delete().await.unwrap();
    let t = topic().await;
    event_conformance::per_key_order_holds_with_several_workers(&t).await;
    t.delete().await.unwrap();
    let t = topic().await;
    event_conformance::failures_are_retried_then_dead_lettered_in_key_order(&t).await;
    t.delete().await.unwrap();
    let t = topic().await;
    event_conformance::a_panicking_handler_is_a_failure_not_a_crash(&t).await;
    t.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stores_changes_reach_another_process_through_jetstream() {
    let stream = name("changes");
    let writer_side = NatsTopic::<Change<u64, String>>::connect(&url(), &stream)
        .await
        .unwrap();
    let reader_side = NatsTopic::<Change<u64, String>>::connect(&url(), &stream)
        .await
        .unwrap();
    let users = Publishing::new(MemoryStore::<u64, String>::new(), writer_side);
    let seen: Changes = Arc::default();
    let record = Arc::clone(&seen);
    let search = reader_side
        .group("search")
        .subscribe(move |event: Event<Change<u64, String>>| {
            let record = Arc::clone(&record);
            async move {
                let change = event.into_payload();
                record.lock().unwrap().push((change.key, change.value));
                Ok(())
            }
        })
        .await
        .unwrap();
    users.put(1, "ada".into()).await.unwrap();
    users.put(1, "ada lovelace".into()).await.unwrap();
    users.delete(&1).await.unwrap();
    users
        .write_batch(vec![
            Write::Put(2, "grace".into()),
            Write::Put(3, "alan".into()),
            Write::Delete(2),
        ])
        .await
        .unwrap();
    search.caught_up().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (1, Some("ada".to_string())),
            (1, Some("ada lovelace".to_string())),
            (1, None),
            (2, Some("grace".to_string())),
            (3, Some("alan".to_string())),
            (2, None),
        ],
        "a batch's changes arrive in order"
    );
    assert_eq!(users.get(&1).await.unwrap(), None);
    search.shutdown().await;
    reader_side.delete().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_from_the_earliest_event_or_only_the_next_ones() {
    let topic = NatsTopic::<String>::connect(&url(), &name("start"))
        .await
        .unwrap();
    let offsets = topic
        .publish_batch((0..3).map(|n| (None, format!("old{n}"))))
        .await
        .unwrap();
    assert_eq!(offsets, vec![0, 1, 2]);
    let (early, late): (Seen, Seen) = Default::default();
    let from_earliest = topic
        .group("early")
        .subscribe(recorder(&early))
        .await
        .unwrap();
    let from_latest = topic
        .group("late")
        .start_from(StartFrom::Latest)
        .subscribe(recorder(&late))
        .await
        .unwrap();
    topic.publish("new".to_string()).await.unwrap();
    from_earliest.caught_up().await.unwrap();
    from_latest.caught_up().await.unwrap();
    let payloads = |seen: &Seen| -> Vec<String> {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    };
    assert_eq!(payloads(&early), vec!["old0", "old1", "old2", "new"]);
    assert_eq!(payloads(&late), vec!["new"]);
    from_earliest.shutdown().await;
    from_latest.shutdown().await;
    topic.delete().await.unwrap();
}

#[tokio::test]
async fn a_cloned_topic_is_the_same_stream() {
    let topic = NatsTopic::<String>::connect(&url(), &name("clone"))
        .await
        .unwrap();
    let clone = topic.clone();
    assert_eq!(clone.name(), topic.name());
    clone
        .publish_keyed("k", "through the clone".into())
        .await
        .unwrap();
    let seen: Seen = Default::default();
    let group = topic.group("g").subscribe(recorder(&seen)).await.unwrap();
    group.caught_up().await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(0, "through the clone".to_string())]
    );
    assert_eq!(topic.stats().await.unwrap().published, 1);
    group.shutdown().await;
    drop(clone);
    topic.delete().await.unwrap();
}
