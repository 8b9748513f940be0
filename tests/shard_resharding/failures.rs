//! The failure paths of a resharding: a rollback cut short by a shard or
//! by a crash, phase switches whose record cannot be written, a record
//! naming shards outside the pool, a damaged copy, steps forwards during
//! a rollback, and a rollback racing a copy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use scalekit::shard::{BucketSharded, MetaStore, Phase};
use scalekit::testing::FaultyStore;
use scalekit::{ErrorKind, MemoryStore, Store};

use super::{check, fill, new_meta, open, pool, Damaging, Shard};

/// A meta store whose outages a test controls.
type FaultyMeta = Arc<FaultyStore<MemoryStore<String, Vec<u8>>>>;

/// A meta store whose outages the test controls, and the same store as
/// the resharding sees it.
fn faulty_meta() -> (FaultyMeta, MetaStore) {
    let faulty = Arc::new(FaultyStore::new(MemoryStore::new()));
    let meta = Arc::clone(&faulty).into_dyn();
    (faulty, meta)
}

/// The shard each of the keys `0..keys` is read from now.
fn owners(store: &BucketSharded<Shard>, keys: u64) -> Vec<usize> {
    (0..keys).map(|key| store.shard_of(&key)).collect()
}

/// How many of the expected keys read another value through the store.
async fn stale(store: &BucketSharded<Shard>, expected: &HashMap<u64, Option<String>>) -> usize {
    let mut stale = 0;
    for (key, value) in expected {
        stale += usize::from(&store.get(key).await.unwrap() != value);
    }
    stale
}

fn is_config(error: &scalekit::Error) -> bool {
    matches!(error.kind(), ErrorKind::Config { .. })
}

#[tokio::test]
async fn a_rollback_that_fails_midway_can_be_run_again_and_leaves_no_copy_behind() {
    // Shrinking 5 → 3: the copies live on shards 0, 1 and 2.
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 5).await;
    let mut expected = fill(&store, 500).await;
    let before = owners(&store, 500);
    store.start_resharding(&[0, 1, 2]).await.unwrap();
    while store.copy_next().await.unwrap() {}
    store.switch_reads().await.unwrap();
    let copies: Vec<(u64, usize)> = (0..500u64)
        .zip(owners(&store, 500))
        .filter(|&(key, owner)| owner != before[key as usize])
        .collect();

    shards[2].set_failing(true);
    let failed = store.roll_back().await;
    shards[2].set_failing(false);
    assert!(failed.is_err(), "shard 2 cannot remove its copies");
    // Midway: shards 0 and 1 removed their copies, shard 2 kept its own.
    for &(key, owner) in &copies {
        let held = shards[owner].get(&key).await.unwrap().is_some();
        assert_eq!(held, owner == 2, "key {key}'s copy on shard {owner}");
    }
    // Reads and writes go on, by the old table.
    for key in (0..500u64).step_by(3) {
        store.put(key, format!("after {key}")).await.unwrap();
        expected.insert(key, Some(format!("after {key}")));
    }
    assert_eq!(stale(&store, &expected).await, 0);

    store
        .roll_back()
        .await
        .expect("a second roll_back finishes what the first began");
    let done = store.progress();
    assert_eq!((done.phase, done.version), (None, 1));
    assert_eq!(owners(&store, 500), before);
    check(&store, &shards, &expected).await;
}

#[tokio::test]
async fn a_rollback_cut_short_by_a_crash_resumes_on_reopening_and_no_read_goes_stale() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let mut expected = fill(&store, 200).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    while store.copy_next().await.unwrap() {}
    store.switch_reads().await.unwrap();
    shards[4].set_failing(true);
    assert!(
        store.roll_back().await.is_err(),
        "shard 4 cannot remove its copies"
    );
    // With the new shard down, reads and acknowledged writes go on: the
    // old owners serve them all. Then the process dies.
    for key in 0..200u64 {
        store.put(key, format!("after {key}")).await.unwrap();
        expected.insert(key, Some(format!("after {key}")));
    }
    assert_eq!(stale(&store, &expected).await, 0);
    shards[4].set_failing(false);
    drop(store);

    let store = open(&shards, &meta, 4).await;
    let stale_keys = stale(&store, &expected).await;
    assert_eq!(
        stale_keys, 0,
        "{stale_keys} of 200 keys stale after reopening"
    );
    assert_eq!(store.progress().phase, Some(Phase::RollingBack));
    let forwards = store
        .finish()
        .await
        .expect_err("a rollback resumed forwards");
    assert!(is_config(&forwards), "{forwards}");
    // Writes go on; the next roll_back finishes the first.
    store.put(7, "later".into()).await.unwrap();
    expected.insert(7, Some("later".into()));
    store
        .roll_back()
        .await
        .expect("the reopened store finishes the rollback");
    assert_eq!(store.progress().phase, None);
    check(&store, &shards, &expected).await;
    let reopened = open(&shards, &meta, 4).await;
    assert_eq!(reopened.progress().phase, None, "the record is gone");
}

#[tokio::test]
async fn while_a_rollback_is_under_way_every_step_forwards_is_a_config_error() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 300).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    shards[4].set_failing(true);
    assert!(store.roll_back().await.is_err(), "shard 4 is down");
    shards[4].set_failing(false);
    assert_eq!(store.progress().phase, Some(Phase::RollingBack));
    // Nothing was copied: a copy now would be one the rollback does not
    // expect, and a clean-up would remove the old owners' keys.
    let errors = vec![
        store.copy_next().await.unwrap_err(),
        store.switch_reads().await.unwrap_err(),
        store.switch_writes().await.unwrap_err(),
        store.clean_up().await.unwrap_err(),
        store.start_resharding(&[0, 1, 2]).await.unwrap_err(),
        store.reshard(&[0, 1, 2, 3, 4]).await.unwrap_err(),
    ];
    for error in errors {
        assert!(is_config(&error), "{error}");
    }
    assert_eq!(stale(&store, &expected).await, 0);
    store.roll_back().await.unwrap();
    check(&store, &shards, &expected).await;
}

#[tokio::test]
async fn a_copy_that_cannot_be_recorded_is_not_marked_copied() {
    let (faulty, meta) = faulty_meta();
    let shards = pool(5);
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 300).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    faulty.set_failing(true);
    assert!(
        store.copy_next().await.is_err(),
        "the record cannot be written"
    );
    faulty.set_failing(false);
    assert_eq!(store.progress().copied, 0, "a copy marked without a record");
    store.finish().await.unwrap();
    check(&store, &shards, &expected).await;
}

#[tokio::test]
async fn a_read_switch_that_cannot_be_recorded_leaves_every_read_with_the_old_owners() {
    let (faulty, meta) = faulty_meta();
    let shards = pool(5);
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 300).await;
    let before = owners(&store, 300);
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    while store.copy_next().await.unwrap() {}

    faulty.set_failing(true);
    let failed = store.switch_reads().await;
    faulty.set_failing(false);
    assert!(failed.is_err(), "the record cannot be written");
    assert_eq!(
        store.progress().phase,
        Some(Phase::Copying),
        "the reads switched without a record"
    );
    assert_eq!(owners(&store, 300), before, "reads routed by no record");
    store.finish().await.unwrap();
    check(&store, &shards, &expected).await;
}

#[tokio::test]
async fn a_write_switch_that_cannot_be_recorded_keeps_writing_to_both_owners_and_a_restart_loses_nothing(
) {
    let (faulty, meta) = faulty_meta();
    let shards = pool(5);
    let store = open(&shards, &meta, 4).await;
    let mut expected = fill(&store, 300).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    while store.copy_next().await.unwrap() {}
    store.switch_reads().await.unwrap();

    faulty.set_failing(true);
    let failed = store.switch_writes().await;
    faulty.set_failing(false);
    assert!(failed.is_err(), "the record cannot be written");
    let phase = store.progress().phase;
    // Acknowledged writes; then the process dies. The record says the
    // reads switched, so the reopened store may roll back.
    for key in 0..300u64 {
        store.put(key, format!("after {key}")).await.unwrap();
        expected.insert(key, Some(format!("after {key}")));
    }
    drop(store);
    let store = open(&shards, &meta, 4).await;
    store.roll_back().await.unwrap();
    check(&store, &shards, &expected).await;
    assert_eq!(
        phase,
        Some(Phase::ReadsSwitched),
        "the writes switched without a record"
    );
}

#[tokio::test]
async fn the_writes_switch_only_once_every_new_owner_has_every_write_so_no_later_write_is_undone() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let mut expected = fill(&store, 300).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    while store.copy_next().await.unwrap() {}
    store.switch_reads().await.unwrap();
    // A write reaches the old owner but not the new one: its bucket's
    // copy is behind.
    let key = (0..300u64).find(|key| store.shard_of(key) == 4).unwrap();
    shards[4].set_failing(true);
    assert!(store.put(key, "half".into()).await.is_err());
    shards[4].set_failing(false);

    let early = store.switch_writes().await;
    store.put(key, "after".into()).await.unwrap();
    expected.insert(key, Some("after".into()));
    store.finish().await.unwrap();
    check(&store, &shards, &expected).await;
    let error = early.expect_err("the writes switched over a copy that is behind");
    assert!(is_config(&error), "{error}");
}

#[tokio::test]
async fn opening_over_a_recorded_resharding_to_a_shard_outside_the_pool_is_a_config_error() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 100).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    drop(store);

    let error = BucketSharded::open(shards[..4].to_vec(), Arc::clone(&meta), "users", 256, 4)
        .await
        .expect_err("the recorded resharding moves buckets to shard 4, outside a pool of 4");
    assert!(is_config(&error), "{error}");
    // With the shard back in the pool, it opens and finishes.
    let store = open(&shards, &meta, 4).await;
    store.finish().await.unwrap();
    check(&store, &shards, &expected).await;
}

#[tokio::test]
async fn a_copy_damaged_on_its_new_owner_fails_verification_and_the_cut_over_refuses() {
    let shards = pool(5);
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 400).await;
    let before = owners(&store, 400);
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();

    shards[4].get_ref().damage_writes(true);
    let error = store
        .copy_next()
        .await
        .expect_err("a damaged copy does not verify");
    assert!(matches!(error.kind(), ErrorKind::Backend { .. }), "{error}");
    assert_eq!(store.progress().copied, 0, "nothing marked copied");
    let refused = store
        .switch_reads()
        .await
        .expect_err("the reads switch to a damaged copy");
    assert!(is_config(&refused), "{refused}");
    // The old owners serve every key.
    assert_eq!(owners(&store, 400), before);
    assert_eq!(stale(&store, &expected).await, 0);

    // Once the shard stores what it is given, the copy is made again.
    shards[4].get_ref().damage_writes(false);
    store.finish().await.unwrap();
    check(&store, &shards, &expected).await;
}

#[tokio::test(start_paused = true)]
async fn a_rollback_waits_for_a_copy_under_way_and_leaves_no_copy_or_record_behind() {
    // Shard 4, the new one, takes 10 ms a call.
    let mut shards = pool(4);
    shards.push(Arc::new(
        FaultyStore::builder(Damaging::new())
            .latency(Duration::from_millis(10))
            .build()
            .unwrap(),
    ));
    let meta = new_meta();
    let store = open(&shards, &meta, 4).await;
    let expected = fill(&store, 300).await;
    store.start_resharding(&[0, 1, 2, 3, 4]).await.unwrap();
    let copying = tokio::spawn({
        let store = store.clone();
        async move { store.copy_next().await }
    });
    // The copy is writing to shard 4 now.
    tokio::time::sleep(Duration::from_millis(1)).await;
    store.roll_back().await.unwrap();
    copying.await.unwrap().unwrap();
    assert_eq!(store.progress().phase, None);
    check(&store, &shards, &expected).await;
    let reopened = open(&shards, &meta, 4).await;
    assert_eq!(reopened.progress().phase, None, "no record comes back");
}
