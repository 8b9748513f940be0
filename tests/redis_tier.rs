//! RedisTier against the real Redis on 127.0.0.1:6379 (override with
//! SCALEKIT_REDIS_URL).
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use scalekit::cache::{CacheTier, Cached, ReadThrough, RedisTier, WriteThrough};
use scalekit::testing::{conformance, ModelTest};
use scalekit::{Error, ErrorKind, MemoryStore, Store};

fn url() -> String {
    std::env::var("SCALEKIT_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn fresh_namespace(purpose: &str) -> String {
    common::unique_name(&format!("test:{purpose}"), ':')
}

async fn redis_tier<K, V>(namespace: &str) -> RedisTier<K, V> {
    RedisTier::builder()
        .url(url())
        .namespace(namespace)
        .build()
        .await
        .expect("connect to Redis on 127.0.0.1:6379 (see .ci/run)")
}

fn entry<V>(value: Option<V>) -> Cached<V> {
    Cached {
        value,
        loaded_at: tokio::time::Instant::now(),
    }
}

#[tokio::test]
async fn a_namespace_that_contains_a_colon_shares_no_key_with_another() {
    let base = fresh_namespace("colon");
    let users = redis_tier::<String, String>(&base).await;
    let admins = redis_tier::<String, String>(&format!("{base}:admin")).await;
    users
        .insert("admin:1".into(), entry(Some("a user".into())), None)
        .await
        .unwrap();
    admins
        .insert("1".into(), entry(Some("an admin".into())), None)
        .await
        .unwrap();
    assert_eq!(
        users
            .get(&"admin:1".to_string())
            .await
            .unwrap()
            .unwrap()
            .value,
        Some("a user".into())
    );
    assert_eq!(
        admins.get(&"1".to_string()).await.unwrap().unwrap().value,
        Some("an admin".into()),
        "not overwritten by the other namespace's key"
    );
    users.clear().await.unwrap();
    assert!(
        admins.get(&"1".to_string()).await.unwrap().is_some(),
        "clearing one namespace leaves the other's entries"
    );
    admins.clear().await.unwrap();
}

#[tokio::test]
async fn entries_round_trip_expire_and_clear_within_their_namespace() {
    let ns = fresh_namespace("basics");
    let tier = redis_tier::<u64, String>(&ns).await;
    let other = redis_tier::<u64, String>(&fresh_namespace("other")).await;
    tier.insert(1, entry(Some("one".into())), None)
        .await
        .unwrap();
    tier.insert(2, entry(None), None).await.unwrap();
    other
        .insert(1, entry(Some("elsewhere".into())), None)
        .await
        .unwrap();
    assert_eq!(
        tier.get(&1).await.unwrap().unwrap().value,
        Some("one".into())
    );
    assert_eq!(
        tier.get(&2).await.unwrap().unwrap().value,
        None,
        "a negative entry"
    );
    assert!(tier.get(&3).await.unwrap().is_none());
    assert_eq!(tier.entry_count().await.unwrap(), 2);

    tier.insert(
        4,
        entry(Some("brief".into())),
        Some(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(tier.get(&4).await.unwrap().is_none(), "expired by Redis");

    tier.remove(&1).await.unwrap();
    assert!(tier.get(&1).await.unwrap().is_none());
    tier.clear().await.unwrap();
    assert_eq!(tier.entry_count().await.unwrap(), 0);
    assert_eq!(
        other.get(&1).await.unwrap().unwrap().value,
        Some("elsewhere".into()),
        "clear stays in its namespace"
    );
    other.clear().await.unwrap();
}

#[tokio::test]
async fn the_load_time_survives_the_trip_so_refresh_ahead_works_across_processes() {
    let tier = redis_tier::<u64, u64>(&fresh_namespace("age")).await;
    let old = tokio::time::Instant::now() - Duration::from_secs(30);
    tier.insert(
        1,
        Cached {
            value: Some(1),
            loaded_at: old,
        },
        None,
    )
    .await
    .unwrap();
    let back = tier.get(&1).await.unwrap().unwrap();
    let age = back.loaded_at.elapsed();
    assert!(
        age >= Duration::from_secs(29) && age < Duration::from_secs(32),
        "{age:?}"
    );
    tier.clear().await.unwrap();
}

#[tokio::test]
async fn undecodable_entries_are_codec_errors_and_the_cache_falls_back_to_the_store() {
    let ns = fresh_namespace("codec");
    let bytes = redis_tier::<u64, Vec<u8>>(&ns).await;
    bytes
        .insert(1, entry(Some(vec![0xff, 0xfe])), None)
        .await
        .unwrap();
    let text = redis_tier::<u64, String>(&ns).await;
    assert!(matches!(
        text.get(&1).await.map_err(Error::into_kind),
        Err(ErrorKind::Codec { .. })
    ));

    let store = MemoryStore::<u64, String>::new();
    store.put(1, "from the store".into()).await.unwrap();
    let cache = ReadThrough::builder(store, text).build().unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("from the store".into()));
    assert!(cache.stats().tier_errors >= 1);
    bytes.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_over_the_redis_tier_pass_the_conformance_suite_and_the_model() {
    let ns = fresh_namespace("suite");
    let read = ReadThrough::builder(MemoryStore::<String, String>::new(), redis_tier(&ns).await)
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    conformance::run_all(Arc::new(read.clone())).await;
    read.tier().clear().await.unwrap();

    let ns = fresh_namespace("model");
    let write = WriteThrough::builder(MemoryStore::<u64, String>::new(), redis_tier(&ns).await)
        .build()
        .unwrap();
    ModelTest::new().cases(32).run(&write).await;
    write.tier().clear().await.unwrap();
}

#[tokio::test]
async fn two_processes_sharing_the_tier_see_each_others_writes() {
    let ns = fresh_namespace("shared");
    let database = Arc::new(MemoryStore::<u64, String>::new());
    let a = WriteThrough::builder(Arc::clone(&database), redis_tier(&ns).await)
        .build()
        .unwrap();
    let b = ReadThrough::builder(Arc::clone(&database), redis_tier(&ns).await)
        .build()
        .unwrap();
    a.put(1, "v1".into()).await.unwrap();
    assert_eq!(b.get(&1).await.unwrap(), Some("v1".into()));
    assert_eq!(b.stats().loads, 0, "B hit what A wrote through");
    b.put(1, "v2".into()).await.unwrap(); // invalidates the shared entry
    assert_eq!(a.get(&1).await.unwrap(), Some("v2".into()));
    a.tier().clear().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable_and_bad_configurations_are_config_errors() {
    let err = RedisTier::<u64, u64>::builder()
        .url("redis://127.0.0.1:1")
        .namespace("x")
        .connect_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unavailable {
                component: "RedisTier",
                ..
            }
        ),
        "{err}"
    );

    let cases = [
        RedisTier::<u64, u64>::builder()
            .namespace("x")
            .build()
            .await
            .unwrap_err(),
        RedisTier::<u64, u64>::builder()
            .url(url())
            .build()
            .await
            .unwrap_err(),
        RedisTier::<u64, u64>::builder()
            .url(url())
            .namespace("has space*")
            .build()
            .await
            .unwrap_err(),
        RedisTier::<u64, u64>::builder()
            .url("not a url")
            .namespace("x")
            .build()
            .await
            .unwrap_err(),
        RedisTier::<u64, u64>::builder()
            .url(url())
            .namespace("x")
            .time_to_live(Duration::ZERO)
            .build()
            .await
            .unwrap_err(),
    ];
    for err in cases {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Config {
                    component: "RedisTier",
                    ..
                }
            ),
            "{err}"
        );
    }
}

mod across_processes {
    use super::*;
    use scalekit::cache::{MemoryTier, RedisInvalidation};

    async fn local_cache(
        database: &Arc<MemoryStore<u64, String>>,
        channel: &str,
    ) -> ReadThrough<Arc<MemoryStore<u64, String>>, MemoryTier<u64, Cached<String>>> {
        ReadThrough::builder(
            Arc::clone(database),
            MemoryTier::with_capacity(1_000).unwrap(),
        )
        .invalidate_across_processes(RedisInvalidation::connect(&url(), channel).await.unwrap())
        .build()
        .unwrap()
    }

    async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
        for _ in 0..200 {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_that_goes_silent_is_noticed_and_the_tier_cleared() {
        let channel = fresh_namespace("silent");
        let database = Arc::new(MemoryStore::<u64, String>::new());
        let a = local_cache(&database, &channel).await;
        let proxy = common::FreezingProxy::start("127.0.0.1:6379").await;
        let listening = RedisInvalidation::connect(&format!("redis://{}", proxy.addr), &channel)
            .await
            .unwrap()
            .heartbeat(Duration::from_millis(100))
            .unwrap();
        let b = ReadThrough::builder(
            Arc::clone(&database),
            MemoryTier::with_capacity(1_000).unwrap(),
        )
        .invalidate_across_processes(listening)
        .build()
        .unwrap();
        database.put(1, "v1".into()).await.unwrap();
        assert_eq!(b.get(&1).await.unwrap(), Some("v1".into()));
        // B's connections die without closing (a half-open connection):
        // A's invalidation never reaches it.
        proxy.freeze();
        a.put(1, "v2".into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.thaw();
        let mut noticed = false;
        for _ in 0..100 {
            if b.tier().get(&1).await.unwrap().is_none() {
                noticed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            noticed,
            "B notices the silence, resubscribes and clears its tier"
        );
        assert_eq!(b.get(&1).await.unwrap(), Some("v2".into()));
        assert!(RedisInvalidation::connect(&url(), &channel)
            .await
            .unwrap()
            .heartbeat(Duration::ZERO)
            .is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_in_one_process_drops_the_key_from_the_others_in_process_tiers() {
        let channel = fresh_namespace("inv");
        let database = Arc::new(MemoryStore::<u64, String>::new());
        let a = local_cache(&database, &channel).await;
        let b = local_cache(&database, &channel).await;
        // v1 is in the database before either cache writes, so no
        // invalidation is in flight when B caches it (a put through A
        // here would send one that may land after B's fill and drop it).
        database.put(1, "v1".into()).await.unwrap();
        assert_eq!(b.get(&1).await.unwrap(), Some("v1".into()));
        assert!(
            b.tier().get(&1).await.unwrap().is_some(),
            "B caches v1 locally"
        );

        a.put(1, "v2".into()).await.unwrap();
        assert!(
            eventually(async || b.tier().get(&1).await.unwrap().is_none()).await,
            "B's local entry is dropped by A's write"
        );
        assert_eq!(b.get(&1).await.unwrap(), Some("v2".into()));

        // An explicit invalidation travels too.
        database.put(2, "behind".into()).await.unwrap();
        b.get(&2).await.unwrap();
        database.put(2, "changed".into()).await.unwrap();
        a.invalidate(&2).await;
        assert!(eventually(async || b.tier().get(&2).await.unwrap().is_none()).await);
        assert_eq!(b.get(&2).await.unwrap(), Some("changed".into()));
        assert_eq!(a.stats().publish_failures, 0);
    }

    #[tokio::test]
    async fn a_bad_channel_name_is_a_config_error_and_building_outside_a_runtime_is_refused() {
        let err = RedisInvalidation::connect(&url(), "bad name")
            .await
            .unwrap_err();
        assert!(matches!(
            err.kind(),
            ErrorKind::Config {
                component: "RedisInvalidation",
                ..
            }
        ));
        let err = RedisInvalidation::connect("redis://127.0.0.1:1", "x")
            .await
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Unavailable { .. }), "{err}");

        let channel = RedisInvalidation::connect(&url(), &fresh_namespace("rt"))
            .await
            .unwrap();
        let built = std::thread::spawn(move || {
            ReadThrough::builder(
                MemoryStore::<u64, String>::new(),
                MemoryTier::with_capacity(10).unwrap(),
            )
            .invalidate_across_processes(channel)
            .build()
            .map(drop)
        })
        .join()
        .unwrap();
        assert!(matches!(
            built.map_err(Error::into_kind),
            Err(ErrorKind::Config { .. })
        ));
    }
}
