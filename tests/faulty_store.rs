//! FaultyStore: the fault injector later layers test themselves with.

use std::time::Duration;

use scalekit::testing::{FaultyStore, Operation};
use scalekit::{ErrorKind, MemoryStore, Store, Write};

type Faulty = FaultyStore<MemoryStore<u64, u64>>;

fn memory() -> MemoryStore<u64, u64> {
    MemoryStore::new()
}

#[tokio::test]
async fn every_nth_call_fails_and_a_failed_write_is_not_applied() {
    let store = FaultyStore::builder(memory())
        .fail_every(2)
        .build()
        .unwrap();
    assert!(store.put(1, 1).await.is_ok());
    let err = store.put(2, 2).await.unwrap_err();
    assert!(Faulty::is_injected(&err));
    assert!(
        matches!(err.kind(), ErrorKind::Unavailable { .. }),
        "an injected fault is a typed error"
    );
    assert_eq!(
        store.get_ref().len(),
        1,
        "the failed put never reached the inner store"
    );
    assert!(store.get(&1).await.is_ok());
    assert!(store.write_batch(vec![Write::Put(3, 3)]).await.is_err());
    assert_eq!(store.calls().injected_faults, 2);
}

#[tokio::test]
async fn random_faults_are_reproducible_from_the_seed() {
    async fn pattern(seed: u64) -> Vec<bool> {
        let store = FaultyStore::builder(memory())
            .fail_with_probability(0.5, seed)
            .build()
            .unwrap();
        let mut outcomes = Vec::new();
        for n in 0..64 {
            outcomes.push(store.put(n, n).await.is_ok());
        }
        outcomes
    }
    let first = pattern(11).await;
    assert_eq!(first, pattern(11).await, "same seed, same faults");
    assert_ne!(first, pattern(12).await, "another seed, other faults");
    let failures = first.iter().filter(|ok| !**ok).count();
    assert!((16..=48).contains(&failures), "about half fail: {failures}");
}

#[tokio::test]
async fn probability_one_fails_everything_and_zero_nothing() {
    let always = FaultyStore::builder(memory())
        .fail_with_probability(1.0, 1)
        .build()
        .unwrap();
    let never = FaultyStore::builder(memory())
        .fail_with_probability(0.0, 1)
        .build()
        .unwrap();
    for n in 0..20 {
        assert!(always.put(n, n).await.is_err());
        assert!(never.put(n, n).await.is_ok());
    }
}

#[tokio::test]
async fn calls_are_counted_per_operation() {
    let store = FaultyStore::new(memory());
    store.put(1, 1).await.unwrap();
    store.put(2, 2).await.unwrap();
    store.get(&1).await.unwrap();
    store.delete(&1).await.unwrap();
    store.get_many(&[1, 2]).await.unwrap();
    store.write_batch(vec![Write::Delete(2)]).await.unwrap();
    let calls = store.calls();
    assert_eq!(
        (
            calls.get,
            calls.put,
            calls.delete,
            calls.get_many,
            calls.write_batch
        ),
        (1, 2, 1, 1, 1)
    );
    assert_eq!(calls.total(), 6);
    assert_eq!(calls.injected_faults, 0);
}

#[tokio::test]
async fn an_outage_can_be_switched_on_and_off() {
    let store = FaultyStore::builder(memory())
        .on(&Operation::WRITES)
        .build()
        .unwrap();
    store.set_failing(true);
    assert!(store.put(1, 1).await.is_err());
    assert!(store.get(&1).await.is_ok(), "reads are outside the outage");
    store.set_failing(false);
    assert!(store.put(1, 1).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_on_tokio_time() {
    let store = FaultyStore::builder(memory())
        .latency(Duration::from_millis(250))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    store.put(1, 1).await.unwrap();
    store.get(&1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(500));
}

#[test]
fn bad_fault_configurations_are_config_errors() {
    let zero = FaultyStore::builder(memory())
        .fail_every(0)
        .build()
        .unwrap_err();
    assert!(matches!(
        zero.kind(),
        ErrorKind::Config {
            component: "FaultyStore",
            ..
        }
    ));
    for p in [-0.1, 1.5, f64::NAN] {
        let err = FaultyStore::builder(memory())
            .fail_with_probability(p, 0)
            .build()
            .unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Config { .. }),
            "probability {p}"
        );
    }
    let none = FaultyStore::builder(memory()).on(&[]).build().unwrap_err();
    assert!(none.to_string().contains("at least one operation"));
}

#[tokio::test(start_paused = true)]
async fn a_store_with_a_capacity_serves_that_many_calls_at_once_and_queues_the_rest() {
    let store = std::sync::Arc::new(
        FaultyStore::builder(memory())
            .latency(Duration::from_millis(10))
            .capacity(2)
            .build()
            .unwrap(),
    );
    assert_eq!(store.capacity(), Some(2));
    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|key| {
            let store = store.clone();
            tokio::spawn(async move { store.put(key, key).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(30),
        "six 10 ms calls, two at a time, take three rounds"
    );
    assert_eq!(
        store.busy(),
        Duration::from_millis(60),
        "busy time counts time inside, not time queued"
    );
}

#[tokio::test]
async fn a_capacity_of_zero_is_a_configuration_error() {
    let err = FaultyStore::builder(memory())
        .capacity(0)
        .build()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Config { .. }), "{err}");
    assert_eq!(FaultyStore::new(memory()).capacity(), None);
}
