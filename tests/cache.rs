//! ReadThrough and WriteThrough: single-flight, no stale fills, batches,
//! negative caching, refresh-ahead, write-through failure, and the suite.

use std::sync::Arc;
use std::time::Duration;

use scalekit::cache::{CacheTier, Cached, MemoryTier, ReadThrough, WriteThrough};
use scalekit::testing::{conformance, FaultyStore, ModelTest, Operation};
use scalekit::{ErrorKind, MemoryStore, Position, Result, Store, Write};
use tokio::sync::{Mutex, Notify};

type Tier<K, V> = MemoryTier<K, Cached<V>>;

fn tier<K, V>() -> Tier<K, V>
where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    MemoryTier::with_capacity(10_000).unwrap()
}

fn faulty(latency_ms: u64) -> FaultyStore<MemoryStore<u64, String>> {
    FaultyStore::builder(MemoryStore::new())
        .latency(Duration::from_millis(latency_ms))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_misses_of_one_key_make_one_load_and_share_its_error() {
    let cache = ReadThrough::builder(faulty(50), tier()).build().unwrap();
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&7).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), None);
    }
    assert_eq!(cache.get_ref().calls().get, 1, "exactly one load");
    assert_eq!(cache.stats().loads, 1);

    // Now every load fails: all waiters get the error, and it is not cached.
    cache.get_ref().set_failing(true);
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.get(&8).await })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(FaultyStore::<MemoryStore<u64, String>>::is_injected(&err));
    }
    assert_eq!(cache.get_ref().calls().get, 2, "one failing load for all");
    cache.get_ref().set_failing(false);
    assert_eq!(cache.get(&8).await.unwrap(), None);
    assert_eq!(
        cache.get_ref().calls().get,
        3,
        "the error was not cached: the next get loads"
    );
    assert_eq!(cache.stats().load_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_does_not_cancel_the_load_for_the_others() {
    let cache = ReadThrough::builder(faulty(100), tier()).build().unwrap();
    cache
        .get_ref()
        .get_ref()
        .put(1, "one".into())
        .await
        .unwrap();
    let first = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get(&1).await })
    };
    let second = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get(&1).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    first.abort();
    assert_eq!(second.await.unwrap().unwrap(), Some("one".into()));
    assert_eq!(cache.get_ref().calls().get, 1);
    assert_eq!(
        cache.get(&1).await.unwrap(),
        Some("one".into()),
        "filled by the load"
    );
    assert_eq!(cache.get_ref().calls().get, 1);
}

/// A store whose reads read the inner value, announce it, then wait for
/// the test to release them: it holds a load between "read" and "return".
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore<u64, String>,
    gate: Mutex<Option<Arc<(Notify, Notify)>>>,
}

impl GatedStore {
    fn new() -> Self {
        GatedStore {
            inner: MemoryStore::new(),
            gate: Mutex::new(None),
        }
    }

    /// The next read will stop after reading; returns (read_done, release).
    async fn hold_next_read(&self) -> Arc<(Notify, Notify)> {
        let gate = Arc::new((Notify::new(), Notify::new()));
        *self.gate.lock().await = Some(Arc::clone(&gate));
        gate
    }
}

impl Store for GatedStore {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> Result<Option<String>> {
        let value = self.inner.get(key).await?;
        let gate = self.gate.lock().await.take();
        if let Some(gate) = gate {
            gate.0.notify_one();
            gate.1.notified().await;
        }
        Ok(value)
    }
    async fn put(&self, key: u64, value: String) -> Result<Position> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &u64) -> Result<Position> {
        self.inner.delete(key).await
    }
}

async fn stale_fill_race<C>(gated: &GatedStore, cache: C, write: impl AsyncFnOnce(&C))
where
    C: Store<Key = u64, Value = String> + Clone,
{
    gated.inner.put(1, "old".into()).await.unwrap();
    let gate = gated.hold_next_read().await;
    let reader = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.get(&1).await })
    };
    gate.0.notified().await; // the load has read "old" and is held
    write(&cache).await; // the write returns while the load is in flight
    gate.1.notify_one(); // the load returns "old" late
    let concurrent = reader.await.unwrap().unwrap();
    assert_eq!(
        concurrent,
        Some("old".into()),
        "a read concurrent with the write may see either"
    );
    for _ in 0..3 {
        let after = cache.get(&1).await.unwrap();
        assert_ne!(
            after,
            Some("old".into()),
            "never the pre-write value after the write returned"
        );
    }
}

#[tokio::test]
async fn a_write_during_a_load_wins_over_the_late_load() {
    let gated = Arc::new(GatedStore::new());
    let cache = ReadThrough::builder(Arc::clone(&gated), tier())
        .build()
        .unwrap();
    stale_fill_race(&gated, cache.clone(), async |c| {
        c.put(1, "new".into()).await.unwrap();
    })
    .await;
    assert_eq!(cache.get(&1).await.unwrap(), Some("new".into()));
    assert_eq!(cache.stats().stale_fills_prevented, 1);
}

#[tokio::test]
async fn a_delete_during_a_load_wins_over_the_late_load() {
    let gated = Arc::new(GatedStore::new());
    let cache = ReadThrough::builder(Arc::clone(&gated), tier())
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    stale_fill_race(&gated, cache.clone(), async |c| {
        c.delete(&1).await.unwrap();
    })
    .await;
    assert_eq!(cache.get(&1).await.unwrap(), None);
}

#[tokio::test]
async fn an_invalidation_during_a_load_wins_over_the_late_load() {
    let gated = Arc::new(GatedStore::new());
    let cache = ReadThrough::builder(Arc::clone(&gated), tier())
        .build()
        .unwrap();
    stale_fill_race(&gated, cache.clone(), async |c| {
        // The store changes behind the cache's back, then the cache is told.
        c.get_ref().inner.put(1, "changed".into()).await.unwrap();
        c.invalidate(&1).await;
    })
    .await;
    assert_eq!(cache.get(&1).await.unwrap(), Some("changed".into()));
    assert_eq!(cache.stats().stale_fills_prevented, 1);
}

#[tokio::test]
async fn a_write_through_during_a_load_wins_over_the_late_load() {
    let gated = Arc::new(GatedStore::new());
    let cache = WriteThrough::builder(Arc::clone(&gated), tier())
        .build()
        .unwrap();
    stale_fill_race(&gated, cache.clone(), async |c| {
        c.put(1, "new".into()).await.unwrap();
    })
    .await;
    assert_eq!(cache.get(&1).await.unwrap(), Some("new".into()));
    assert_eq!(cache.stats().stale_fills_prevented, 1);
}

#[tokio::test]
async fn get_many_loads_all_misses_in_one_batch_call() {
    let cache = ReadThrough::builder(faulty(0), tier()).build().unwrap();
    for k in 0..10u64 {
        cache
            .get_ref()
            .get_ref()
            .put(k, format!("v{k}"))
            .await
            .unwrap();
    }
    cache.get(&3).await.unwrap(); // one key cached beforehand
    let before = cache.get_ref().calls();
    let keys = [0u64, 1, 2, 3, 4, 5, 1, 99];
    let got = cache.get_many(&keys).await.unwrap();
    let expected: Vec<Option<String>> = keys
        .iter()
        .map(|k| (*k < 10).then(|| format!("v{k}")))
        .collect();
    assert_eq!(got, expected);
    let after = cache.get_ref().calls();
    assert_eq!(after.get_many - before.get_many, 1, "one batch call");
    assert_eq!(after.get - before.get, 0, "no single loads");
    assert_eq!(
        cache.get_many(&keys[..6]).await.unwrap(),
        expected[..6].to_vec(),
        "now all hits"
    );
    assert_eq!(cache.get_ref().calls().get_many, after.get_many);
}

#[tokio::test]
async fn a_failing_batch_load_fails_the_call_and_caches_nothing() {
    let store = FaultyStore::builder(MemoryStore::<u64, String>::new())
        .fail_every(1)
        .on(&[Operation::GetMany])
        .build()
        .unwrap();
    let cache = ReadThrough::builder(store, tier()).build().unwrap();
    let err = cache.get_many(&[1, 2]).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unavailable { .. }));
    assert_eq!(cache.tier().entry_count().await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn absent_keys_are_cached_only_with_a_negative_ttl_and_only_for_it() {
    let plain = ReadThrough::builder(faulty(0), tier()).build().unwrap();
    plain.get(&1).await.unwrap();
    plain.get(&1).await.unwrap();
    assert_eq!(
        plain.get_ref().calls().get,
        2,
        "absence not cached by default"
    );

    let negative = ReadThrough::builder(faulty(0), tier())
        .negative_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    negative.get(&1).await.unwrap();
    negative.get(&1).await.unwrap();
    assert_eq!(negative.get_ref().calls().get, 1, "absence cached");
    tokio::time::advance(Duration::from_secs(6)).await;
    negative.get(&1).await.unwrap();
    assert_eq!(
        negative.get_ref().calls().get,
        2,
        "the negative entry expired"
    );
    negative.put(1, "now here".into()).await.unwrap();
    assert_eq!(negative.get(&1).await.unwrap(), Some("now here".into()));
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_serves_the_old_value_while_one_reload_replaces_it() {
    let cache = ReadThrough::builder(faulty(10), tier())
        .refresh_after(Duration::from_secs(10))
        .time_to_live(Duration::from_secs(60))
        .build()
        .unwrap();
    let backend = cache.get_ref().get_ref();
    backend.put(1, "v1".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("v1".into()));
    backend.put(1, "v2".into()).await.unwrap(); // behind the cache's back
    tokio::time::advance(Duration::from_secs(11)).await;
    // Old enough: served at once, one background reload starts.
    assert_eq!(cache.get(&1).await.unwrap(), Some("v1".into()));
    assert_eq!(cache.get(&1).await.unwrap(), Some("v1".into()));
    assert_eq!(
        cache.stats().refreshes,
        1,
        "one refresh for many stale hits"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(cache.get(&1).await.unwrap(), Some("v2".into()), "replaced");
    assert_eq!(cache.get_ref().calls().get, 2);

    // A failed refresh keeps the old value.
    tokio::time::advance(Duration::from_secs(11)).await;
    cache.get_ref().set_failing(true);
    assert_eq!(cache.get(&1).await.unwrap(), Some("v2".into()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        cache.get(&1).await.unwrap(),
        Some("v2".into()),
        "kept after a failed refresh"
    );
    assert!(cache.stats().load_failures >= 1);
}

#[tokio::test]
async fn writes_through_read_through_invalidate_and_errors_are_returned() {
    let cache = ReadThrough::builder(faulty(0), tier()).build().unwrap();
    cache.put(1, "a".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("a".into()));
    cache.put(1, "b".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("b".into()));
    cache.get_ref().set_failing(true);
    assert!(cache.put(1, "c".into()).await.is_err());
    cache.get_ref().set_failing(false);
    assert_eq!(cache.get(&1).await.unwrap(), Some("b".into()));
}

/// A store whose writes, while `ambiguous` is set, are applied and then
/// reported as failed (the connection dropped after the commit).
#[derive(Debug, Default)]
struct AppliesThenFails {
    inner: MemoryStore<u64, String>,
    ambiguous: Arc<std::sync::atomic::AtomicBool>,
}

impl AppliesThenFails {
    fn answer(&self, applied: Result<Position>) -> Result<Position> {
        if self.ambiguous.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(scalekit::Error::unavailable(
                "test",
                "connection lost after the commit",
            ));
        }
        applied
    }
}

impl Store for AppliesThenFails {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: u64, value: String) -> Result<Position> {
        let applied = self.inner.put(key, value).await;
        self.answer(applied)
    }
    async fn delete(&self, key: &u64) -> Result<Position> {
        let applied = self.inner.delete(key).await;
        self.answer(applied)
    }
}

/// Caches `kept`, makes a write of `applied` that the store applies and
/// reports as failed, and checks the cache then serves what the store has.
async fn after_an_ambiguous_failure<C: Store<Key = u64, Value = String>>(
    cache: &C,
    ambiguous: &std::sync::atomic::AtomicBool,
) -> Option<String> {
    cache.put(1, "kept".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("kept".into()), "cached");
    ambiguous.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(cache.put(1, "applied".into()).await.is_err());
    ambiguous.store(false, std::sync::atomic::Ordering::Relaxed);
    cache.get(&1).await.unwrap()
}

#[tokio::test]
async fn a_failed_write_drops_the_key_since_the_store_may_have_applied_it() {
    let store = AppliesThenFails::default();
    let flag = Arc::clone(&store.ambiguous);
    let cache = WriteThrough::builder(store, tier()).build().unwrap();
    assert_eq!(
        after_an_ambiguous_failure(&cache, &flag).await,
        Some("applied".into()),
        "write-through must not keep the old value"
    );
    let store = AppliesThenFails::default();
    let flag = Arc::clone(&store.ambiguous);
    let cache = ReadThrough::builder(store, tier()).build().unwrap();
    assert_eq!(
        after_an_ambiguous_failure(&cache, &flag).await,
        Some("applied".into()),
        "read-through must not keep the old value"
    );
}

#[tokio::test]
async fn write_through_batches_update_the_tier() {
    let cache = WriteThrough::builder(faulty(0), tier())
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    cache
        .write_batch(vec![
            Write::Put(1, "a".into()),
            Write::Put(2, "b".into()),
            Write::Delete(1),
        ])
        .await
        .unwrap();
    assert_eq!(
        cache.get_many(&[1, 2]).await.unwrap(),
        vec![None, Some("b".into())]
    );
    assert_eq!(
        cache.get_ref().calls().get + cache.get_ref().calls().get_many,
        0
    );
}

#[test]
fn bad_cache_configurations_are_config_errors() {
    let refresh_after_ttl = ReadThrough::builder(MemoryStore::<u64, u64>::new(), tier())
        .time_to_live(Duration::from_secs(5))
        .refresh_after(Duration::from_secs(5))
        .build()
        .unwrap_err();
    assert!(matches!(
        refresh_after_ttl.kind(),
        ErrorKind::Config {
            component: "ReadThrough",
            ..
        }
    ));
    let zero = WriteThrough::builder(MemoryStore::<u64, u64>::new(), tier())
        .negative_ttl(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(
        zero.kind(),
        ErrorKind::Config {
            component: "WriteThrough",
            ..
        }
    ));
    for err in [
        MemoryTier::<u64, u64>::with_capacity(0).unwrap_err(),
        MemoryTier::<u64, u64>::builder().build().unwrap_err(),
        MemoryTier::<u64, u64>::builder()
            .max_entries(5)
            .max_weight(5, |_, _| 1)
            .build()
            .unwrap_err(),
        MemoryTier::<u64, u64>::builder()
            .max_entries(5)
            .time_to_idle(Duration::ZERO)
            .build()
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Config {
                    component: "MemoryTier",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_through_passes_the_conformance_suite_over_memory() {
    let cache = ReadThrough::builder(MemoryStore::<String, Vec<u8>>::new(), tier())
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    conformance::run_all(Arc::new(cache)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_passes_the_conformance_suite_over_memory() {
    let cache = WriteThrough::builder(MemoryStore::<i64, String>::new(), tier())
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    conformance::run_all(Arc::new(cache)).await;
}

#[cfg(feature = "quick-cache")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_caches_pass_the_conformance_suite_over_the_quick_cache_tier() {
    use scalekit::cache::QuickCacheTier;
    let read = ReadThrough::builder(
        MemoryStore::<String, Vec<u8>>::new(),
        QuickCacheTier::with_capacity(10_000).unwrap(),
    )
    .negative_ttl(Duration::from_secs(60))
    .build()
    .unwrap();
    conformance::run_all(Arc::new(read)).await;
    let write = WriteThrough::builder(
        MemoryStore::<i64, String>::new(),
        QuickCacheTier::with_capacity(10_000).unwrap(),
    )
    .build()
    .unwrap();
    conformance::run_all(Arc::new(write)).await;
}

#[cfg(feature = "quick-cache")]
#[tokio::test(start_paused = true)]
async fn the_quick_cache_tier_expires_by_ttl_and_idle_time_and_holds_its_bound() {
    use scalekit::cache::QuickCacheTier;
    let tier = QuickCacheTier::<u64, u64>::builder()
        .max_entries(100)
        .time_to_live(Duration::from_secs(10))
        .time_to_idle(Duration::from_secs(5))
        .build()
        .unwrap();
    tier.insert(1, 1, None).await.unwrap();
    tier.insert(2, 2, None).await.unwrap();
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(tier.get(&1).await.unwrap(), Some(1), "kept alive by reads");
    }
    assert_eq!(tier.get(&2).await.unwrap(), None, "idle too long");
    tokio::time::advance(Duration::from_secs(3)).await;
    assert_eq!(tier.get(&1).await.unwrap(), None, "lived too long");
    for k in 0..1_000 {
        tier.insert(k, k, None).await.unwrap();
    }
    assert!(tier.entry_count().await.unwrap() <= 100);
    assert!(tier.evictions() >= 900);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_caches_pass_the_conformance_suite_over_sqlite() {
    use scalekit::store::SqliteStore;
    let dir = tempfile::tempdir().unwrap();
    let open = |table: &'static str| {
        SqliteStore::<String, String>::builder()
            .path(dir.path().join("cache.db"))
            .table(table)
            .build()
    };
    let read = ReadThrough::builder(open("read").await.unwrap(), tier())
        .build()
        .unwrap();
    conformance::run_all(Arc::new(read)).await;
    let write = WriteThrough::builder(open("write").await.unwrap(), tier())
        .build()
        .unwrap();
    conformance::run_all(Arc::new(write)).await;
}

#[tokio::test]
async fn both_caches_agree_with_the_model_under_injected_faults() {
    let store = FaultyStore::builder(MemoryStore::<u64, String>::new())
        .fail_with_probability(0.2, 3)
        .build()
        .unwrap();
    let read = ReadThrough::builder(store, tier())
        .negative_ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    ModelTest::new().cases(96).run(&read).await;
    assert!(read.get_ref().calls().injected_faults > 0);

    let store = FaultyStore::builder(MemoryStore::<u64, String>::new())
        .fail_with_probability(0.2, 4)
        .build()
        .unwrap();
    let write = WriteThrough::builder(store, tier()).build().unwrap();
    ModelTest::new().cases(96).run(&write).await;
}

#[tokio::test(start_paused = true)]
async fn the_memory_tier_expires_by_ttl_and_idle_time_and_counts_evictions() {
    let ttl = MemoryTier::<u64, u64>::builder()
        .max_entries(100)
        .time_to_live(Duration::from_secs(10))
        .build()
        .unwrap();
    ttl.insert(1, 1, None).await.unwrap();
    ttl.insert(2, 2, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(ttl.get(&1).await.unwrap(), None, "default TTL");
    assert_eq!(ttl.get(&2).await.unwrap(), Some(2), "per-entry TTL");

    let idle = MemoryTier::<u64, u64>::builder()
        .max_entries(100)
        .time_to_idle(Duration::from_secs(10))
        .build()
        .unwrap();
    idle.insert(1, 1, None).await.unwrap();
    idle.insert(2, 2, None).await.unwrap();
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(idle.get(&1).await.unwrap(), Some(1), "kept alive by reads");
    }
    assert_eq!(idle.get(&2).await.unwrap(), None, "idle too long");

    let small = MemoryTier::<u64, u64>::with_capacity(100).unwrap();
    for k in 0..1_000 {
        small.insert(k, k, None).await.unwrap();
    }
    assert!(small.entry_count().await.unwrap() <= 100);
    assert!(
        small.evictions() >= 900,
        "evictions counted: {}",
        small.evictions()
    );

    let weighed = MemoryTier::<u64, Vec<u8>>::builder()
        .max_weight(10_000, |_, v: &Vec<u8>| v.len() as u64)
        .build()
        .unwrap();
    for k in 0..100 {
        weighed.insert(k, vec![0; 1_000], None).await.unwrap();
    }
    assert!(weighed.entry_count().await.unwrap() <= 10);
}

/// A store that panics on the write of one poisoned value.
#[derive(Debug, Default)]
struct PanicsOnPoison {
    inner: MemoryStore<u64, String>,
}

impl Store for PanicsOnPoison {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: u64, value: String) -> Result<Position> {
        assert_ne!(value, "poison", "the backend panics on this value");
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &u64) -> Result<Position> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_store_write_is_an_error_and_leaves_the_cache_working() {
    let cache = ReadThrough::builder(PanicsOnPoison::default(), tier())
        .build()
        .unwrap();
    cache.put(1, "before".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("before".into()));
    let err = cache.put(1, "poison".into()).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unavailable { .. }), "{err}");
    // The key's stripe is released (by a task the unwinding write spawns):
    // a miss fills the tier again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let loads = cache.stats().loads;
    assert_eq!(cache.get(&1).await.unwrap(), Some("before".into()));
    assert_eq!(cache.get(&1).await.unwrap(), Some("before".into()));
    assert_eq!(
        cache.stats().loads,
        loads + 1,
        "one load, then hits: fills work again"
    );
    cache.put(1, "after".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("after".into()));
}

/// A tier that counts how often it is asked, and whose inserts and
/// removes fail while `refusing` is set (a shared Redis that times out).
#[derive(Debug)]
struct CountingTier {
    inner: Tier<u64, String>,
    asked: std::sync::atomic::AtomicU64,
    refusing: std::sync::atomic::AtomicBool,
}

impl CountingTier {
    fn check(&self) -> Result<()> {
        if self.refusing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(scalekit::Error::unavailable("tier", "timed out"));
        }
        Ok(())
    }
}

impl CacheTier for CountingTier {
    type Key = u64;
    type Value = Cached<String>;

    async fn get(&self, key: &u64) -> Result<Option<Cached<String>>> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(key).await
    }
    fn get_now(&self, key: &u64) -> Option<Option<Cached<String>>> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get_now(key)
    }
    async fn insert(&self, key: u64, value: Cached<String>, ttl: Option<Duration>) -> Result<()> {
        self.check()?;
        self.inner.insert(key, value, ttl).await
    }
    async fn remove(&self, key: &u64) -> Result<()> {
        self.check()?;
        self.inner.remove(key).await
    }
    async fn clear(&self) -> Result<()> {
        self.inner.clear().await
    }
    async fn entry_count(&self) -> Result<u64> {
        self.inner.entry_count().await
    }
    fn evictions(&self) -> u64 {
        self.inner.evictions()
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_asks_the_tier_once_whether_it_hits_or_misses() {
    let tier = CountingTier {
        inner: tier(),
        asked: Default::default(),
        refusing: Default::default(),
    };
    let cache = ReadThrough::builder(faulty(20), tier).build().unwrap();
    let asked = || {
        cache
            .tier()
            .asked
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    cache.get(&1).await.unwrap();
    assert_eq!(asked(), 1, "a miss asks the tier once, then loads");
    cache.put(2, "two".into()).await.unwrap();
    cache.get(&2).await.unwrap();
    cache.get(&2).await.unwrap();
    assert_eq!(asked(), 3, "a hit asks the tier once");
    cache.get_many(&[2, 3]).await.unwrap();
    assert_eq!(asked(), 5, "get_many asks once per key");
    let stats = cache.stats();
    assert_eq!(stats.loads, 3);
    assert_eq!(
        stats.average_load_time(),
        Duration::from_millis(20),
        "paused time: the latency"
    );
}

/// A store whose `get` of key 666 panics once.
#[derive(Debug, Default)]
struct PanicsOnceOnRead {
    inner: MemoryStore<u64, String>,
    panicked: std::sync::atomic::AtomicBool,
}

impl Store for PanicsOnceOnRead {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> Result<Option<String>> {
        if *key == 666
            && !self
                .panicked
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("the backend panics on this read");
        }
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[u64]) -> Result<Vec<Option<String>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }
    async fn put(&self, key: u64, value: String) -> Result<Position> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &u64) -> Result<Position> {
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_read_that_panics_fails_its_waiters_and_does_not_wedge_the_key() {
    for batch in [false, true] {
        let store = PanicsOnceOnRead::default();
        store.inner.put(666, "fine".into()).await.unwrap();
        let cache = ReadThrough::builder(store, tier()).build().unwrap();
        let first = if batch {
            cache.get_many(&[666, 1]).await.map(|mut v| v.remove(0))
        } else {
            cache.get(&666).await
        };
        let err = first.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Unavailable { .. }), "{err}");
        let again = tokio::time::timeout(Duration::from_secs(5), cache.get(&666))
            .await
            .expect("not stuck");
        assert_eq!(
            again.unwrap(),
            Some("fine".into()),
            "batch {batch}: the key loads again"
        );
    }
}

#[tokio::test]
async fn a_write_whose_tier_entry_cannot_be_updated_or_dropped_is_reported_as_an_error() {
    let tier = CountingTier {
        inner: tier(),
        asked: Default::default(),
        refusing: Default::default(),
    };
    let cache = WriteThrough::builder(MemoryStore::<u64, String>::new(), tier)
        .build()
        .unwrap();
    cache.put(1, "old".into()).await.unwrap();
    cache
        .tier()
        .refusing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let err = cache.put(1, "new".into()).await.unwrap_err();
    assert!(
        err.to_string().contains("may be stale"),
        "the caller hears that the cached entry may be stale: {err}"
    );
    assert_eq!(
        cache.get_ref().get(&1).await.unwrap(),
        Some("new".into()),
        "in the store"
    );
    assert!(cache.stats().tier_errors >= 1);
    // Retrying the write (safe: writes are idempotent) mends the tier.
    cache
        .tier()
        .refusing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    cache.put(1, "new".into()).await.unwrap();
    assert_eq!(cache.get(&1).await.unwrap(), Some("new".into()));
}
