//! When Redis drops the invalidation subscription, the cache resubscribes
//! and clears its tier (messages sent meanwhile are lost). Its own test
//! binary, because it kills every pub/sub client of the local Redis.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::time::Duration;

use scalekit::cache::{CacheTier, MemoryTier, ReadThrough, RedisInvalidation};
use scalekit::{MemoryStore, Store};

const URL: &str = "redis://127.0.0.1:6379";

async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..400 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_subscription_is_renewed_and_the_tier_cleared() {
    let channel = format!("resubscribe:{}", std::process::id());
    let database = Arc::new(MemoryStore::<u64, String>::new());
    let cache = |db: &Arc<MemoryStore<u64, String>>| {
        let db = Arc::clone(db);
        let channel = channel.clone();
        async move {
            ReadThrough::builder(db, MemoryTier::with_capacity(100).unwrap())
                .invalidate_across_processes(
                    RedisInvalidation::connect(URL, &channel).await.unwrap(),
                )
                .build()
                .unwrap()
        }
    };
    let a = cache(&database).await;
    let b = cache(&database).await;
    database.put(1, "v1".into()).await.unwrap();
    b.get(&1).await.unwrap();
    assert!(b.tier().get(&1).await.unwrap().is_some());

    let killed = std::process::Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "6379",
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()
        .expect("redis-cli is installed with the Redis server");
    assert!(killed.status.success(), "{killed:?}");

    assert!(
        eventually(async || b.tier().get(&1).await.unwrap().is_none()).await,
        "after resubscribing, the tier is cleared"
    );
    b.get(&1).await.unwrap();
    a.put(1, "v2".into()).await.unwrap();
    assert!(
        eventually(async || b.tier().get(&1).await.unwrap().is_none()).await,
        "invalidations flow again on the new subscription"
    );
    assert_eq!(b.get(&1).await.unwrap(), Some("v2".into()));
}
