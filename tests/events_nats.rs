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

use scalekit::events::nats::{DeadReason, NatsDeadLetter, NatsTopic};
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

/// Each letter's payload (as text), reason and attempts.
fn letter_summary<E>(letters: &[NatsDeadLetter<E>]) -> Vec<(String, DeadReason, u32)> {
    letters
        .iter()
        .map(|l| {
            (
                String::from_utf8_lossy(&l.payload).into_owned(),
                l.reason,
                l.attempts,
            )
        })
        .collect()
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
    let letters = group.dead_letters().await.unwrap();
    assert_eq!(
        letter_summary(&letters),
        [
            ("poison".to_string(), DeadReason::Failed, 3),
            ("after".to_string(), DeadReason::Parked, 0)
        ],
        "the later event of its key parks behind it"
    );
    assert!(
        letters[0].error.contains("cannot handle poison"),
        "{letters:?}"
    );
    assert_eq!(
        *handled.lock().unwrap(),
        BTreeSet::from(["fine".to_string()])
    );
    // Settled, so JetStream does not hand them out again.
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
    for builder in [
        topic.group("g").max_ack_pending(0),
        topic.group("g").max_ack_pending(1 << 20),
        topic.group("g").ack_wait(Duration::ZERO),
        topic.group("g").workers(0),
    ] {
        let error = builder
            .subscribe(|_: Event<String>| async { Ok(()) })
            .await
            .unwrap_err();
        assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
    }
    topic.delete().await.unwrap();
    let reserved = NatsTopic::<String>::connect(&url(), "orders-dead")
        .await
        .unwrap_err();
    assert!(
        matches!(reserved.kind(), ErrorKind::Config { .. }),
        "{reserved}"
    );
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

// ---------------------------------------------------------------------
// Histories: every handling of an event is recorded (by which instance,
// key, offset, payload), then checked against what was published.
// ---------------------------------------------------------------------

/// One handling of an event: the instance (subscription or process)
/// that handled it, and the event's key, offset and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handled {
    instance: u32,
    key: String,
    offset: u64,
    payload: String,
}

type History = Arc<Mutex<Vec<Handled>>>;

/// An event as published: key, offset, payload.
type Published = Vec<(String, u64, String)>;

fn key_text(event: &Event<String>) -> String {
    event
        .key()
        .map(|k| String::from_utf8_lossy(k.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// A handler that records each event it handles (after `delay`) as
/// handled by `instance`, and fails every attempt at a payload in `fail`.
fn history_recorder(
    history: &History,
    instance: u32,
    delay: Duration,
    fail: &'static [&'static str],
) -> impl scalekit::events::Handler<String> {
    let history = Arc::clone(history);
    move |event: Event<String>| {
        let history = Arc::clone(&history);
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail.contains(&event.payload().as_str()) {
                return Err(format!("cannot handle {}", event.payload()).into());
            }
            history.lock().unwrap().push(Handled {
                instance,
                key: key_text(&event),
                offset: event.offset(),
                payload: event.payload().clone(),
            });
            Ok(())
        }
    }
}

/// Checks a history against what was published. Every event is handled
/// at least once. Per key, each instance handled a run of consecutive
/// events of the key, in publish order (no gap, no inversion, no repeat),
/// and each instance's run starts no later than where the runs before it
/// ended: a later instance may redo events whose acknowledgements were
/// lost with a crash, never skip one. With `exactly_once`, no event is
/// handled twice.
fn check_history(history: &[Handled], published: &Published, exactly_once: bool) {
    use std::collections::BTreeMap;
    let mut events: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for (key, offset, payload) in published {
        events.entry(key).or_default().push((*offset, payload));
    }
    for list in events.values_mut() {
        list.sort_unstable();
    }
    let mut runs: BTreeMap<&str, Vec<(u32, Vec<&Handled>)>> = BTreeMap::new();
    for handled in history {
        let key_runs = runs.entry(handled.key.as_str()).or_default();
        match key_runs.iter_mut().find(|(i, _)| *i == handled.instance) {
            Some((_, run)) => run.push(handled),
            None => key_runs.push((handled.instance, vec![handled])),
        }
    }
    for (key, list) in &events {
        let mut covered = 0usize;
        for (instance, run) in runs.get(key).map(Vec::as_slice).unwrap_or_default() {
            let first = list
                .iter()
                .position(|(offset, _)| *offset == run[0].offset)
                .unwrap_or_else(|| {
                    panic!("key {key}: offset {} was never published", run[0].offset)
                });
            assert!(
                first <= covered,
                "key {key}: instance {instance} began at offset {} while offset {} was never handled \
                 (a skipped event: {run:?})",
                run[0].offset,
                list[covered].0
            );
            for (n, handled) in run.iter().enumerate() {
                let expected = list.get(first + n);
                assert_eq!(
                    expected.map(|(o, p)| (*o, *p)),
                    Some((handled.offset, handled.payload.as_str())),
                    "key {key}: instance {instance}'s handling number {n} is out of order, \
                     repeated or unknown; its run: {:?}",
                    run.iter().map(|h| h.offset).collect::<Vec<_>>()
                );
            }
            covered = covered.max(first + run.len());
        }
        assert_eq!(
            covered,
            list.len(),
            "key {key}: events from offset {:?} on were never handled",
            list.get(covered).map(|(o, _)| *o)
        );
    }
    if exactly_once {
        assert_eq!(
            history.len(),
            published.len(),
            "every event exactly once: {} handlings of {} events",
            history.len(),
            published.len()
        );
    }
}

/// Publishes `per_key` events of each key, the keys taking turns; what
/// was published.
async fn publish_interleaved(
    topic: &NatsTopic<String>,
    keys: &[&str],
    per_key: usize,
    tag: &str,
) -> Published {
    let events: Vec<(String, String)> = (0..per_key)
        .flat_map(|n| {
            keys.iter()
                .map(move |k| (k.to_string(), format!("{k}-{tag}{n}")))
        })
        .collect();
    let offsets = topic
        .publish_batch(events.iter().map(|(k, p)| {
            (
                Some(scalekit::events::EventKey::from(k.as_str())),
                p.clone(),
            )
        }))
        .await
        .unwrap();
    events
        .into_iter()
        .zip(offsets)
        .map(|((k, p), o)| (k, o, p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_ack_wait_is_handled_once_each_in_order_per_key() {
    let topic = NatsTopic::<String>::connect(&url(), &name("backlog"))
        .await
        .unwrap();
    // Two keys of 100 events each (one per worker), there before the
    // group starts: at 20 ms an event, one key's backlog takes twice the
    // ack wait.
    let published = publish_interleaved(&topic, &["a", "c"], 100, "e").await;
    let history: History = Arc::default();
    let started = std::time::Instant::now();
    let group = topic
        .group("slow")
        .workers(2)
        .ack_wait(Duration::from_secs(1))
        .subscribe(history_recorder(
            &history,
            1,
            Duration::from_millis(20),
            &[],
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), group.caught_up())
        .await
        .expect("the backlog is handled within a minute")
        .unwrap();
    eprintln!("backlog of 200 handled in {:?}", started.elapsed());
    group.shutdown().await;
    topic.delete().await.unwrap();
    check_history(&history.lock().unwrap(), &published, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_process_keeps_its_messages_from_the_other_processes_of_its_group() {
    let stream = name("slowpeer");
    let (one, two) = (
        NatsTopic::<String>::connect(&url(), &stream).await.unwrap(),
        NatsTopic::<String>::connect(&url(), &stream).await.unwrap(),
    );
    let published = publish_interleaved(&one, &["a", "b", "c", "d"], 25, "e").await;
    let history: History = Arc::default();
    // The slow one takes the whole backlog (100 events at 20 ms, twice
    // the ack wait); the fast one joins after it and must get none of
    // them while the slow one is alive and working.
    let slow = one
        .group("g")
        .ack_wait(Duration::from_secs(1))
        .subscribe(history_recorder(
            &history,
            1,
            Duration::from_millis(20),
            &[],
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = two
        .group("g")
        .ack_wait(Duration::from_secs(1))
        .subscribe(history_recorder(&history, 2, Duration::ZERO, &[]))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(20), slow.caught_up())
        .await
        .unwrap()
        .unwrap();
    eprintln!("slow peer caught up in {:?}", started.elapsed());
    fast.caught_up().await.unwrap();
    slow.shutdown().await;
    fast.shutdown().await;
    one.delete().await.unwrap();
    let history = history.lock().unwrap();
    assert!(
        history.iter().all(|h| h.instance == 1),
        "the fast process handled the slow one's events: {:?}",
        history
            .iter()
            .filter(|h| h.instance == 2)
            .map(|h| h.offset)
            .collect::<Vec<_>>()
    );
    check_history(&history, &published, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_takes_no_more_than_max_ack_pending_messages_at_once() {
    let topic = NatsTopic::<String>::connect(&url(), &name("bounded"))
        .await
        .unwrap();
    let published = publish_interleaved(&topic, &["a", "b", "c", "d"], 10, "e").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let history: History = Arc::default();
    let group = topic
        .group("g")
        .workers(4)
        .max_ack_pending(8)
        .subscribe(gated_recorder(&gate, &history, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        group.stats().received,
        8,
        "the handlers wait: the group has taken max_ack_pending messages, and no more"
    );
    gate.add_permits(published.len());
    tokio::time::timeout(Duration::from_secs(10), group.caught_up())
        .await
        .unwrap()
        .unwrap();
    group.shutdown().await;
    topic.delete().await.unwrap();
    check_history(&history.lock().unwrap(), &published, true);
}

/// A handler that waits for a permit of `gate`, then records the event.
fn gated_recorder(
    gate: &Arc<tokio::sync::Semaphore>,
    history: &History,
    instance: u32,
) -> impl scalekit::events::Handler<String> {
    let (gate, history) = (Arc::clone(gate), Arc::clone(history));
    move |event: Event<String>| {
        let (gate, history) = (Arc::clone(&gate), Arc::clone(&history));
        async move {
            gate.acquire().await.unwrap().forget();
            history.lock().unwrap().push(Handled {
                instance,
                key: key_text(&event),
                offset: event.offset(),
                payload: event.payload().clone(),
            });
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_group_takes_the_ack_wait_and_max_ack_pending_of_its_new_subscription() {
    let topic = NatsTopic::<String>::connect(&url(), &name("reconfigured"))
        .await
        .unwrap();
    let published = publish_interleaved(&topic, &["a", "b"], 10, "e").await;
    let history: History = Arc::default();
    // The first instance takes four messages with a 30 s ack wait, and
    // dies without handling any.
    let closed = Arc::new(tokio::sync::Semaphore::new(0));
    let first = topic
        .group("g")
        .max_ack_pending(4)
        .subscribe(gated_recorder(&closed, &history, 1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(first.stats().received, 4);
    drop(first);
    // The new instance's ack wait brings them back within a second or
    // two (not thirty), and its max_ack_pending lets it take eight.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = std::time::Instant::now();
    let second = topic
        .group("g")
        .ack_wait(Duration::from_secs(1))
        .max_ack_pending(8)
        .subscribe(gated_recorder(&gate, &history, 2))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while second.stats().received < 8 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the dead instance's messages come back after the new ack wait");
    eprintln!("taken back after {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(second.stats().received, 8, "no more than max_ack_pending");
    gate.add_permits(published.len());
    second.caught_up().await.unwrap();
    second.shutdown().await;
    topic.delete().await.unwrap();
    check_history(&history.lock().unwrap(), &published, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_and_the_events_parked_behind_it_survive_a_restart() {
    let topic = NatsTopic::<String>::connect(&url(), &name("deadrestart"))
        .await
        .unwrap();
    let history: History = Arc::default();
    // Instance 1 cannot handle "poison": it is dead-lettered, and the
    // later events of its key park behind it.
    // A short ack wait: a message JetStream hands to the dropped
    // instance's last pull in flight comes back within a second.
    let first = topic
        .group("g")
        .retries(fast_retries(1))
        .ack_wait(Duration::from_secs(1))
        .subscribe(history_recorder(&history, 1, Duration::ZERO, &["poison"]))
        .await
        .unwrap();
    let mut published = Published::new();
    for (key, payload) in [
        ("k", "k0"),
        ("k", "poison"),
        ("j", "j0"),
        ("k", "k2"),
        ("k", "k3"),
        ("j", "j1"),
    ] {
        let offset = topic.publish_keyed(key, payload.to_string()).await.unwrap();
        published.push((key.to_string(), offset, payload.to_string()));
    }
    first.caught_up().await.unwrap();
    let letters = first.dead_letters().await.unwrap();
    assert_eq!(
        letter_summary(&letters),
        [
            ("poison".to_string(), DeadReason::Failed, 2),
            ("k2".to_string(), DeadReason::Parked, 0),
            ("k3".to_string(), DeadReason::Parked, 0),
        ]
    );
    assert!(
        letters[0].error.contains("cannot handle poison"),
        "{letters:?}"
    );
    // A restart: a new instance of the group, which handles everything.
    drop(first);
    let offset = topic.publish_keyed("k", "k4".to_string()).await.unwrap();
    published.push(("k".to_string(), offset, "k4".to_string()));
    let second = topic
        .group("g")
        .retries(fast_retries(1))
        .ack_wait(Duration::from_secs(1))
        .subscribe(history_recorder(&history, 2, Duration::ZERO, &[]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), second.caught_up())
        .await
        .unwrap()
        .unwrap();
    // The letters outlived the restart, and k4 parked behind them; any
    // process lists them.
    let elsewhere = NatsTopic::<String>::connect(&url(), topic.name())
        .await
        .unwrap();
    let letters = elsewhere.dead_letters("g").await.unwrap();
    assert_eq!(
        letter_summary(&letters),
        [
            ("poison".to_string(), DeadReason::Failed, 2),
            ("k2".to_string(), DeadReason::Parked, 0),
            ("k3".to_string(), DeadReason::Parked, 0),
            ("k4".to_string(), DeadReason::Parked, 0),
        ]
    );
    assert_eq!(
        letters.iter().map(|l| l.offset).collect::<Vec<_>>(),
        [1, 3, 4, 6]
    );
    let report = second.replay_dead_letters().await.unwrap();
    assert_eq!((report.handled, report.failed), (4, 0));
    assert!(second.dead_letters().await.unwrap().is_empty());
    // The key is no longer parked.
    let offset = topic.publish_keyed("k", "k5".to_string()).await.unwrap();
    published.push(("k".to_string(), offset, "k5".to_string()));
    second.caught_up().await.unwrap();
    second.shutdown().await;
    topic.delete().await.unwrap();
    check_history(&history.lock().unwrap(), &published, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_does_not_decode_is_dead_lettered_durably_and_parks_its_key() {
    let stream = name("undecodable");
    let topic = NatsTopic::<String>::connect(&url(), &stream).await.unwrap();
    // Another codec on the same stream: bytes that are not UTF-8.
    let raw = NatsTopic::<Vec<u8>>::connect(&url(), &stream)
        .await
        .unwrap();
    raw.publish_keyed("k", vec![0xff, 0xfe]).await.unwrap();
    topic.publish_keyed("k", "after".to_string()).await.unwrap();
    topic.publish_keyed("j", "other".to_string()).await.unwrap();
    let history: History = Arc::default();
    let group = topic
        .group("g")
        .subscribe(history_recorder(&history, 1, Duration::ZERO, &[]))
        .await
        .unwrap();
    group.caught_up().await.unwrap();
    let handled: Vec<String> = history
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.payload.clone())
        .collect();
    assert_eq!(
        handled,
        ["other"],
        "the event after the undecodable one of its key parks behind it"
    );
    let letters = group.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(
        (
            letters[0].reason,
            letters[0].offset,
            &letters[0].payload[..]
        ),
        (DeadReason::Undecodable, 0, &[0xff, 0xfe][..])
    );
    assert!(letters[0].event.is_none());
    assert_eq!(letters[0].key, Some(scalekit::events::EventKey::from("k")));
    assert!(letters[0].error.contains("does not decode"), "{letters:?}");
    assert_eq!(letters[1].reason, DeadReason::Parked);
    // This process cannot replay the undecodable letter: it stays, and
    // so does the one behind it.
    let report = group.replay_dead_letters().await.unwrap();
    assert_eq!((report.handled, report.failed), (0, 1));
    assert_eq!(group.dead_letters().await.unwrap().len(), 2);
    group.shutdown().await;
    // A process whose codec reads it replays both, in order.
    let bytes: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let record = Arc::clone(&bytes);
    let reader = raw
        .group("g")
        .subscribe(move |event: Event<Vec<u8>>| {
            record.lock().unwrap().push(event.into_payload());
            std::future::ready(Ok(()))
        })
        .await
        .unwrap();
    let report = reader.replay_dead_letters().await.unwrap();
    assert_eq!((report.handled, report.failed), (2, 0));
    assert_eq!(
        *bytes.lock().unwrap(),
        [vec![0xff, 0xfe], b"after".to_vec()]
    );
    assert!(raw.dead_letters("g").await.unwrap().is_empty());
    reader.shutdown().await;
    topic.delete().await.unwrap();
}

// ---------------------------------------------------------------------
// Real processes: the test binary runs again as a child process that
// handles a group and appends its history to a file; the parent kills
// or pauses it with real signals, then checks the merged history.
// ---------------------------------------------------------------------

const CHILD_TEST: &str = "child_process_handles_a_group_and_records_its_history";

/// How the child ends: killed by the parent, or by itself once the group
/// has caught up (and stayed so for longer than the ack wait).
#[derive(Clone, Copy)]
enum ChildEnds {
    WhenKilled,
    WhenCaughtUp,
}

/// The child process; killed when dropped, so that a failing test
/// leaves none behind.
struct ChildProcess(std::process::Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(
    topic: &str,
    history: &std::path::Path,
    delay: Duration,
    ends: ChildEnds,
) -> ChildProcess {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--ignored", "--test-threads=1"])
        .env("SCALEKIT_NATS_CHILD_TOPIC", topic)
        .env("SCALEKIT_NATS_CHILD_HISTORY", history)
        .env(
            "SCALEKIT_NATS_CHILD_DELAY_MS",
            delay.as_millis().to_string(),
        )
        .env(
            "SCALEKIT_NATS_CHILD_ENDS",
            match ends {
                ChildEnds::WhenKilled => "killed",
                ChildEnds::WhenCaughtUp => "caught-up",
            },
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ChildProcess(child)
}

/// The history a child appended to `path`: one `instance key offset
/// payload` line per handling.
fn read_history(path: &std::path::Path) -> Vec<Handled> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let mut next = || parts.next().expect("a complete history line").to_string();
            Handled {
                instance: next().parse().unwrap(),
                key: next(),
                offset: next().parse().unwrap(),
                payload: next(),
            }
        })
        .collect()
}

async fn wait_for_lines(path: &std::path::Path, lines: usize) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while std::fs::read_to_string(path).unwrap().lines().count() < lines {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the child handles events");
}

fn signal(child: &ChildProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// Not a test of its own: the fleet tests below run the test binary
/// again with this test alone, its settings in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the fleet tests, which set its environment"]
async fn child_process_handles_a_group_and_records_its_history() {
    use std::io::Write as _;
    let setting = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the parent test"))
    };
    let topic = NatsTopic::<String>::connect(&url(), &setting("SCALEKIT_NATS_CHILD_TOPIC"))
        .await
        .unwrap();
    let delay = Duration::from_millis(setting("SCALEKIT_NATS_CHILD_DELAY_MS").parse().unwrap());
    let file = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .open(setting("SCALEKIT_NATS_CHILD_HISTORY"))
            .unwrap(),
    ));
    let group = topic
        .group("g")
        .workers(2)
        .ack_wait(Duration::from_secs(1))
        .max_ack_pending(16)
        .subscribe(move |event: Event<String>| {
            let file = Arc::clone(&file);
            async move {
                tokio::time::sleep(delay).await;
                let line = format!(
                    "1 {} {} {}\n",
                    key_text(&event),
                    event.offset(),
                    event.payload()
                );
                file.lock().unwrap().write_all(line.as_bytes()).unwrap();
                Ok(())
            }
        })
        .await
        .unwrap();
    match setting("SCALEKIT_NATS_CHILD_ENDS").as_str() {
        "caught-up" => {
            group.caught_up().await.unwrap();
            // Redeliveries the server sent while this process was
            // paused come in now: they must not be handled again.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            group.caught_up().await.unwrap();
            group.shutdown().await;
        }
        _ => tokio::time::sleep(Duration::from_secs(60)).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_handling_loses_nothing_and_keeps_per_key_order() {
    let stream = name("killed");
    let topic = NatsTopic::<String>::connect(&url(), &stream).await.unwrap();
    let mut published = publish_interleaved(&topic, &["a", "b", "c"], 40, "e").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let started = std::time::Instant::now();
    let child = spawn_child(
        &stream,
        file.path(),
        Duration::from_millis(10),
        ChildEnds::WhenKilled,
    );
    wait_for_lines(file.path(), 30).await;
    drop(child); // SIGKILL, mid-handling
    let history: History = Arc::new(Mutex::new(read_history(file.path())));
    // Published while the group has no process: they must not overtake
    // the events the dead process took and never settled.
    published.extend(publish_interleaved(&topic, &["a", "b", "c"], 10, "late").await);
    let heir = topic
        .group("g")
        .workers(2)
        .ack_wait(Duration::from_secs(1))
        .max_ack_pending(16)
        .subscribe(history_recorder(
            &history,
            2,
            Duration::from_millis(10),
            &[],
        ))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), heir.caught_up())
        .await
        .expect("the heir catches up")
        .unwrap();
    eprintln!("killed and taken over in {:?}", started.elapsed());
    heir.shutdown().await;
    topic.delete().await.unwrap();
    check_history(&history.lock().unwrap(), &published, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_paused_past_ack_wait_handles_each_event_once_in_order() {
    let stream = name("paused");
    let topic = NatsTopic::<String>::connect(&url(), &stream).await.unwrap();
    let published = publish_interleaved(&topic, &["a", "b", "c"], 30, "e").await;
    let file = tempfile::NamedTempFile::new().unwrap();
    let started = std::time::Instant::now();
    let mut child = spawn_child(
        &stream,
        file.path(),
        Duration::from_millis(20),
        ChildEnds::WhenCaughtUp,
    );
    wait_for_lines(file.path(), 10).await;
    // Stopped for twice the ack wait: JetStream hands what the process
    // holds out again, and the copies arrive when it goes on.
    signal(&child, "STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, "CONT");
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the child catches up and ends");
    assert!(status.success(), "the child ended with {status}");
    eprintln!("paused and finished in {:?}", started.elapsed());
    topic.delete().await.unwrap();
    check_history(&read_history(file.path()), &published, true);
}
