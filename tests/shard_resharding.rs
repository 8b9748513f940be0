//! Online resharding over virtual buckets: the specification of
//! `scalekit::shard::BucketSharded`, over in-memory shards. The failure
//! paths (rollbacks cut short, records that cannot be written, bad
//! records, damaged copies, steps that race) are in `failures`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use scalekit::shard::{BucketSharded, MetaStore, Phase};
use scalekit::store::Scan;
use scalekit::testing::FaultyStore;
use scalekit::{ErrorKind, MemoryStore, Position, Result, Store, Write};

#[path = "shard_resharding/failures.rs"]
mod failures;

type Shard = Arc<FaultyStore<Damaging>>;

/// A shard's engine that, while told to, damages every value written to
/// it (as a failing disk or a codec bug would): what a copy's
/// verification must catch.
#[derive(Debug)]
struct Damaging {
    inner: MemoryStore<u64, String>,
    damaging: AtomicBool,
}

impl Damaging {
    fn new() -> Self {
        Damaging {
            inner: MemoryStore::new(),
            damaging: AtomicBool::new(false),
        }
    }

    fn damage_writes(&self, damaging: bool) {
        self.damaging.store(damaging, Ordering::SeqCst);
    }

    fn stored(&self, value: String) -> String {
        if self.damaging.load(Ordering::SeqCst) {
            format!("{value} (damaged)")
        } else {
            value
        }
    }
}

impl Store for Damaging {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> Result<Option<String>> {
        self.inner.get(key).await
    }

    async fn put(&self, key: u64, value: String) -> Result<Position> {
        self.inner.put(key, self.stored(value)).await
    }

    async fn delete(&self, key: &u64) -> Result<Position> {
        self.inner.delete(key).await
    }

    async fn write_batch(&self, batch: Vec<Write<u64, String>>) -> Result<Position> {
        let batch = batch
            .into_iter()
            .map(|write| match write {
                Write::Put(key, value) => Write::Put(key, self.stored(value)),
                delete => delete,
            })
            .collect();
        self.inner.write_batch(batch).await
    }
}

impl Scan for Damaging {
    async fn entries(&self) -> Result<Vec<(u64, String)>> {
        Scan::entries(&self.inner).await
    }
}

fn pool(n: usize) -> Vec<Shard> {
    (0..n)
        .map(|_| Arc::new(FaultyStore::builder(Damaging::new()).build().unwrap()))
        .collect()
}

fn new_meta() -> MetaStore {
    MemoryStore::<String, Vec<u8>>::new().into_dyn()
}

async fn open(shards: &[Shard], meta: &MetaStore, initial: usize) -> BucketSharded<Shard> {
    BucketSharded::open(shards.to_vec(), Arc::clone(meta), "users", 256, initial)
        .await
        .unwrap()
}

/// Every key has its expected value through the store, and lives on
/// exactly one shard of the pool (on none if deleted).
async fn check(
    store: &BucketSharded<Shard>,
    shards: &[Shard],
    expected: &HashMap<u64, Option<String>>,
) {
    for (key, value) in expected {
        assert_eq!(&store.get(key).await.unwrap(), value, "key {key}");
        let mut holders = 0;
        for shard in shards {
            holders += usize::from(shard.get(key).await.unwrap().is_some());
        }
        assert_eq!(
            holders,
            usize::from(value.is_some()),
            "key {key} on {holders} shards"
        );
    }
}

async fn fill(store: &BucketSharded<Shard>, keys: u64) -> HashMap<u64, Option<String>> {
    let mut expected = HashMap::new();
    for key in 0..keys {
        store.put(key, format!("v{key}")).await.unwrap();
        expected.insert(key, Some(format!("v{key}")));
    }
    expected
}

#[tokio::test]
async fn growing_from_four_to_five_shards_moves_a_fifth_of_the_buckets_and_loses_nothing() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 1000).await;
    let started = store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    assert_eq!(started.moving, 51, "256 / 5 of the buckets");
    assert_eq!(started.phase, Some(Phase::Copying));
    // Batched reads answer right at every step: one get_many per shard.
    let keys: Vec<u64> = (0..1000).collect();
    let answers = |values: Vec<Option<String>>| {
        values
            .into_iter()
            .zip(&keys)
            .all(|(value, key)| value == expected[key])
    };
    assert!(answers(store.get_many(&keys).await.unwrap()));
    while store.copy_next().await.unwrap() {}
    store.switch_reads().await.unwrap();
    assert!(answers(store.get_many(&keys).await.unwrap()));
    store.switch_writes().await.unwrap();
    assert!(answers(store.get_many(&keys).await.unwrap()));
    store.clean_up().await.unwrap();
    assert!(answers(store.get_many(&keys).await.unwrap()));
    let done = store.progress();
    assert_eq!((done.phase, done.version), (None, 2));
    assert!(store
        .table()
        .buckets_per_shard(5)
        .iter()
        .all(|&n| n == 51 || n == 52));
    check(&store, &shards, &expected).await;
    let stats = store.stats();
    assert!(
        stats.requests[4] > 0,
        "the new shard serves its share: {stats:?}"
    );
    assert!(stats.balance < 1.0);
}

#[tokio::test]
async fn a_resharding_killed_between_any_two_steps_resumes_when_the_store_is_opened_again() {
    // Kill (drop every handle) after each step in turn; reopen; finish.
    for kill_after in 0..5 {
        let shards = pool(5);
        let meta = new_meta();
        let store = open(&shards, &meta, 4).await;
        let mut expected = fill(&store, 600).await;
        store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
        let steps = kill_after;
        if steps >= 1 {
            store.copy_next().await.unwrap();
        }
        if steps >= 2 {
            while store.copy_next().await.unwrap() {}
            store.switch_reads().await.unwrap();
        }
        if steps >= 3 {
            store.switch_writes().await.unwrap();
        }
        if steps >= 4 {
            // Dies during clean-up: the old copies are partly gone.
            let moved_key = (0..600u64).find(|key| store.shard_of(key) == 4).unwrap();
            for shard in &shards[..4] {
                shard.delete(&moved_key).await.unwrap();
            }
        }
        let copied_before = store.progress().copied;
        drop(store);

        let store = open(&shards, &meta, 4).await;
        let resumed = store.progress();
        assert!(
            resumed.phase.is_some(),
            "after step {kill_after}: still under way"
        );
        assert_eq!(resumed.copied, copied_before, "copies are remembered");
        // Writes go on while it finishes.
        store.put(7, "new".into()).await.unwrap();
        expected.insert(7, Some("new".into()));
        store.delete(&8).await.unwrap();
        expected.insert(8, None);
        store.finish().await.unwrap();
        check(&store, &shards, &expected).await;
    }
}

#[tokio::test]
async fn a_resharding_rolled_back_before_the_writes_switch_leaves_the_old_layout() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let mut expected = fill(&store, 500).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    while store.copy_next().await.unwrap() {}
    store.switch_reads().await.unwrap();
    store.put(3, "during".into()).await.unwrap();
    expected.insert(3, Some("during".into()));
    store.roll_back().await.unwrap();
    assert_eq!(store.progress().phase, None);
    assert_eq!(store.table().version(), 1);
    check(&store, &shards, &expected).await;
    for key in 0..500u64 {
        assert_eq!(
            shards[4].get(&key).await.unwrap(),
            None,
            "no copy left behind"
        );
    }
    // And it can start again.
    store.reshard(&[0, 1, 2, 3, 4]).await.unwrap();
    check(&store, &shards, &expected).await;
}

#[tokio::test]
async fn steps_out_of_order_and_bad_targets_are_config_errors() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    fill(&store, 100).await;
    let errors = vec![
        store.copy_next().await.unwrap_err(),
        store.switch_reads().await.unwrap_err(),
        store.start_resharding(&[0, 1, 9]).await.unwrap_err(),
        store.start_resharding(&[]).await.unwrap_err(),
        {
            store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
            store.start_resharding(&[0, 1]).await.unwrap_err()
        },
        store.switch_reads().await.unwrap_err(),
        store.switch_writes().await.unwrap_err(),
        store.clean_up().await.unwrap_err(),
        {
            store.reshard(&[0, 1, 2, 3, 4]).await.unwrap();
            store.start_resharding(&[0, 1, 2]).await.unwrap();
            while store.copy_next().await.unwrap() {}
            store.switch_reads().await.unwrap();
            store.switch_writes().await.unwrap();
            store.roll_back().await.unwrap_err()
        },
        BucketSharded::open(shards.clone(), new_meta(), "x", 2, 4)
            .await
            .unwrap_err(),
        BucketSharded::<Shard>::open(Vec::new(), new_meta(), "x", 16, 0)
            .await
            .unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
    }
}

#[tokio::test]
async fn a_shard_failing_during_the_copy_fails_the_step_and_the_copy_is_tried_again() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let mut expected = fill(&store, 400).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    shards[4].set_failing(true);
    assert!(store.copy_next().await.is_err());
    assert_eq!(store.progress().copied, 0, "nothing marked copied");
    // Writes to the buckets moving to the failing shard fail (after they
    // reached the old owner); those buckets will be copied again.
    let mut failed = 0;
    for key in 0..400u64 {
        if store.put(key, "x".into()).await.is_err() {
            failed += 1;
        }
        expected.insert(key, Some("x".into()));
    }
    assert!(failed > 0, "some keys move to the failing shard");
    shards[4].set_failing(false);
    store.finish().await.unwrap();
    check(&store, &shards, &expected).await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Random writes from several tasks while the store grows from 4 to 5
    /// shards and shrinks from 5 to 3: afterwards every key reads its last
    /// written value and lives on exactly one shard.
    #[test]
    fn random_writes_concurrent_with_resharding_lose_nothing(
        writers in prop::collection::vec(prop::collection::vec((0u64..40, any::<bool>()), 1..60), 1..4),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let shards = pool(5);
            let meta = new_meta();
            let store = open(&shards, &meta, 4).await;
            let tasks: Vec<_> = writers
                .into_iter()
                .enumerate()
                .map(|(w, ops)| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        // Each writer owns keys w * 1000 + 0..40.
                        let mut last = HashMap::new();
                        for (n, (key, delete)) in ops.into_iter().enumerate() {
                            let key = w as u64 * 1000 + key;
                            if delete {
                                store.delete(&key).await.unwrap();
                                last.insert(key, None);
                            } else {
                                store.put(key, format!("{w}-{n}")).await.unwrap();
                                last.insert(key, Some(format!("{w}-{n}")));
                            }
                            tokio::task::yield_now().await;
                        }
                        last
                    })
                })
                .collect();
            store.reshard(&[0, 1, 2, 3, 4]).await.unwrap();
            store.reshard(&[0, 1, 2]).await.unwrap();
            let mut expected = HashMap::new();
            for task in tasks {
                expected.extend(task.await.unwrap());
            }
            check(&store, &shards, &expected).await;
            prop_assert!(store.table().buckets_per_shard(5)[3..].iter().all(|&n| n == 0));
            Ok(())
        })?;
    }
}
