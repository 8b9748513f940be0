//! The failure paths of a resharding: a record naming shards outside
//! the pool, and a damaged copy.

use std::collections::HashMap;
use std::sync::Arc;

use scalekit::shard::BucketSharded;
use scalekit::{ErrorKind, Store};

use super::{check, fill, new_meta, open, pool, Shard};

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
