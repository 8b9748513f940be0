//! Sharding: the specification of `scalekit::shard::Sharded` over
//! in-memory shards.

use std::sync::Arc;
use std::time::Duration;

use scalekit::shard::{
    Directory, Entry, Jump, PartialFailure, Ranges, Rendezvous, Ring, ShardKey, Sharded, Unknown,
};
use scalekit::testing::{conformance, FaultyStore, ModelTest};
use scalekit::{ErrorKind, MemoryStore, Store, Write};

type Shard = Arc<FaultyStore<MemoryStore<u64, String>>>;

fn shards(n: usize) -> Vec<Shard> {
    (0..n)
        .map(|_| Arc::new(FaultyStore::builder(MemoryStore::new()).build().unwrap()))
        .collect()
}

fn sharded(shards: &[Shard]) -> Sharded<Shard> {
    Sharded::builder()
        .shards(shards.iter().cloned())
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_key_lives_on_exactly_the_shard_its_strategy_names() {
    let shards = shards(5);
    let store = sharded(&shards);
    store
        .write_batch((0..500).map(|k| Write::Put(k, k.to_string())).collect())
        .await
        .unwrap();
    for key in 0..500u64 {
        let home = store.shard_of(&key).unwrap();
        for (index, shard) in shards.iter().enumerate() {
            let found = shard.get(&key).await.unwrap();
            assert_eq!(found.is_some(), index == home, "key {key} on shard {index}");
        }
    }
    let stats = store.stats();
    assert_eq!(stats.keys.iter().sum::<u64>(), 500);
    assert_eq!(
        stats.requests.iter().sum::<u64>(),
        5,
        "one batch call per shard"
    );
    assert!(stats.balance < 0.3, "{stats:?}");
}

#[tokio::test]
async fn a_sharded_store_passes_the_conformance_suite_and_the_model_for_every_strategy() {
    let stores: Vec<Sharded<MemoryStore<String, Vec<u8>>>> = vec![
        Sharded::builder()
            .shards((0..3).map(|_| MemoryStore::new()))
            .build()
            .unwrap(),
        Sharded::builder()
            .shards((0..3).map(|_| MemoryStore::new()))
            .strategy(Ring::new(3, 64).unwrap())
            .build()
            .unwrap(),
        Sharded::builder()
            .shards((0..3).map(|_| MemoryStore::new()))
            .strategy(Rendezvous::new(3).unwrap())
            .build()
            .unwrap(),
        Sharded::builder()
            .shards((0..3).map(|_| MemoryStore::new()))
            .strategy(Ranges::split_at(vec![b"g".to_vec(), b"p".to_vec()]).unwrap())
            .build()
            .unwrap(),
    ];
    for store in stores {
        conformance::run_all(Arc::new(store)).await;
    }
    let model = Sharded::builder()
        .shards((0..4).map(|_| MemoryStore::<u64, String>::new()))
        .build()
        .unwrap();
    ModelTest::new().run(&model).await;
}

#[tokio::test]
async fn get_many_asks_each_shard_once_and_answers_in_the_keys_order() {
    let shards = shards(8);
    let store = sharded(&shards);
    for key in 0..100u64 {
        store.put(key, format!("v{key}")).await.unwrap();
    }
    let keys: Vec<u64> = (0..200).rev().collect();
    let values = store.get_many(&keys).await.unwrap();
    for (key, value) in keys.iter().zip(&values) {
        let expected = (*key < 100).then(|| format!("v{key}"));
        assert_eq!(value, &expected);
    }
    let calls: u64 = shards.iter().map(|s| s.calls().get_many).sum();
    assert_eq!(calls, 8, "one get_many per shard");
}

#[tokio::test]
async fn a_failed_shard_fails_the_call_or_is_reported_beside_the_rest() {
    let shards = shards(4);
    for policy in [PartialFailure::Fail, PartialFailure::ReturnPartial] {
        let store = Sharded::builder()
            .shards(shards.iter().cloned())
            .partial_failure(policy)
            .build()
            .unwrap();
        store
            .write_batch((0..40).map(|k| Write::Put(k, k.to_string())).collect())
            .await
            .unwrap();
        shards[2].set_failing(true);
        let keys: Vec<u64> = (0..40).collect();
        assert!(
            store.get_many(&keys).await.is_err(),
            "get_many never answers in part"
        );
        let gathered = store.gather(&keys).await;
        match policy {
            PartialFailure::Fail => {
                let error = gathered.unwrap_err();
                assert!(
                    matches!(error.kind(), ErrorKind::Unavailable { .. }),
                    "{error}"
                );
            }
            PartialFailure::ReturnPartial => {
                let gathered = gathered.unwrap();
                assert_eq!(gathered.errors.len(), 1);
                assert_eq!(gathered.errors[0].shard, 2);
                for key in 0..40u64 {
                    let on_failed = store.shard_of(&key).unwrap() == 2;
                    assert_eq!(gathered.unanswered.contains(&(key as usize)), on_failed);
                    if !on_failed {
                        assert_eq!(gathered.values[key as usize], Some(key.to_string()));
                    }
                }
                let scattered = store
                    .scatter((0..40).map(|k| Write::Put(k, "new".into())).collect())
                    .await
                    .unwrap();
                assert_eq!(scattered.errors.len(), 1);
                assert_eq!(scattered.written.len(), 3);
            }
        }
        shards[2].set_failing(false);
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_shard_times_out_without_holding_up_the_others() {
    let slow = Arc::new(
        FaultyStore::builder(MemoryStore::new())
            .latency(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let mut all = shards(3);
    all.push(slow);
    let store = Sharded::builder()
        .shards(all)
        .per_shard_timeout(Duration::from_millis(100))
        .partial_failure(PartialFailure::ReturnPartial)
        .build()
        .unwrap();
    let keys: Vec<u64> = (0..40).collect();
    let started = tokio::time::Instant::now();
    let gathered = store.gather(&keys).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(gathered.errors.len(), 1);
    assert!(matches!(
        gathered.errors[0].error.kind(),
        ErrorKind::Timeout { .. }
    ));
}

#[tokio::test]
async fn a_directory_routes_tenants_and_refuses_unknown_keys_with_a_typed_error() {
    let table = Arc::new(MemoryStore::<String, Vec<u8>>::new());
    let directory = Directory::create(
        Arc::clone(&table),
        "tenants",
        3,
        Unknown::Refuse,
        vec![
            (Entry::Prefix(b"acme/".to_vec()), 2),
            (Entry::Prefix(b"globex/".to_vec()), 0),
        ],
    )
    .await
    .unwrap();
    let store = Sharded::builder()
        .shards((0..3).map(|_| MemoryStore::<String, String>::new()))
        .strategy(directory)
        .build()
        .unwrap();
    store.put("acme/ann".into(), "a".into()).await.unwrap();
    store.put("globex/bob".into(), "b".into()).await.unwrap();
    assert_eq!(
        store.shards()[2].get(&"acme/ann".into()).await.unwrap(),
        Some("a".into())
    );
    assert_eq!(
        store.shards()[0].get(&"globex/bob".into()).await.unwrap(),
        Some("b".into())
    );
    let refused = store.put("initech/x".into(), "x".into()).await.unwrap_err();
    assert!(
        matches!(refused.kind(), ErrorKind::Config { .. }),
        "{refused}"
    );
    let refused = store
        .get_many(&["acme/ann".into(), "initech/x".into()])
        .await
        .unwrap_err();
    assert!(matches!(refused.kind(), ErrorKind::Config { .. }));
}

#[tokio::test]
async fn bad_configurations_are_config_errors() {
    let errors = [
        Sharded::<MemoryStore<u64, u64>>::builder()
            .build()
            .unwrap_err(),
        Sharded::builder()
            .shards((0..3).map(|_| MemoryStore::<u64, u64>::new()))
            .strategy(Jump::new(4).unwrap())
            .build()
            .unwrap_err(),
        Sharded::builder()
            .shard(MemoryStore::<u64, u64>::new())
            .per_shard_timeout(Duration::ZERO)
            .build()
            .unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
    }
}

#[test]
fn keys_route_the_same_in_every_process() {
    // Fixed vectors for the default strategy: these keys must never move.
    let jump = Jump::new(10).unwrap();
    let route = |key: &dyn ShardKey| {
        use scalekit::shard::Strategy;
        let bytes = key.routing_bytes();
        jump.shard(&bytes, scalekit::shard::key_hash(&bytes))
            .unwrap()
    };
    let routes: Vec<usize> = [
        &0u64 as &dyn ShardKey,
        &1u64,
        &42u64,
        &"user:7",
        &"tenant-7",
    ]
    .into_iter()
    .map(route)
    .collect();
    assert_eq!(routes, ROUTES_OVER_TEN_SHARDS);
}

/// Where the keys above go over ten shards with jump hashing, computed by
/// an independent Python implementation of the key hash and of jump.
const ROUTES_OVER_TEN_SHARDS: [usize; 5] = [1, 7, 0, 7, 9];
