//! The price of the spine: a `MemoryStore` get and put against a plain
//! `DashMap` (the peer it is built on), the same calls through the boxed
//! `dyn DynStore` twin, and the SQLite backend sequentially and with
//! concurrent writers (group commit).
//!
//! Run with `cargo bench --bench store`; compare ratios within one run.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dashmap::DashMap;
use scalekit::store::{SqliteStore, Synchronous};
use scalekit::{DynStore, MemoryStore, Store};

const KEYS: u64 = 10_000;

/// Polls a future that is ready at once (every `MemoryStore` future is),
/// with no runtime in the way.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a MemoryStore future is ready at once"),
    }
}

fn memory(c: &mut Criterion) {
    let map: DashMap<u64, u64> = DashMap::new();
    let concrete = MemoryStore::<u64, u64>::new();
    for k in 0..KEYS {
        map.insert(k, k);
        ready(concrete.put(k, k)).unwrap();
    }
    let erased: Arc<dyn DynStore<Key = u64, Value = u64>> = {
        let store = MemoryStore::<u64, u64>::new();
        for k in 0..KEYS {
            ready(store.put(k, k)).unwrap();
        }
        store.into_dyn()
    };

    let mut group = c.benchmark_group("memory_get_hit");
    let mut k = 0u64;
    group.bench_function("dashmap", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(map.get(black_box(&k)).map(|entry| *entry.value()))
        })
    });
    group.bench_function("memory_store_concrete", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(ready(concrete.get(black_box(&k))).unwrap())
        })
    });
    group.bench_function("memory_store_dyn", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(ready(Store::get(&erased, black_box(&k))).unwrap())
        })
    });
    group.finish();

    let mut group = c.benchmark_group("memory_put");
    group.bench_function("dashmap", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(map.insert(black_box(k), k))
        })
    });
    group.bench_function("memory_store_concrete", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(ready(concrete.put(black_box(k), k)).unwrap())
        })
    });
    group.bench_function("memory_store_dyn", |b| {
        b.iter(|| {
            k = (k + 7) % KEYS;
            black_box(ready(Store::put(&erased, black_box(k), k)).unwrap())
        })
    });
    group.finish();
}

fn sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SqliteStore<u64, Vec<u8>>> = runtime.block_on(async {
        let store = SqliteStore::builder()
            .path(dir.path().join("bench.db"))
            .synchronous(Synchronous::Normal)
            .build()
            .await
            .unwrap();
        let batch = (0..KEYS)
            .map(|k| scalekit::Write::Put(k, vec![7u8; 100]))
            .collect();
        store.write_batch(batch).await.unwrap();
        Arc::new(store)
    });

    let mut group = c.benchmark_group("sqlite");
    let mut k = 0u64;
    group.bench_function("get_hit", |b| {
        b.to_async(&runtime).iter(|| {
            k = (k + 7) % KEYS;
            let store = Arc::clone(&store);
            async move { black_box(store.get(&k).await.unwrap()) }
        })
    });
    group.bench_function("get_many_100", |b| {
        let keys: Vec<u64> = (0..100).map(|i| i * 97 % KEYS).collect();
        b.to_async(&runtime)
            .iter(|| async { black_box(store.get_many(&keys).await.unwrap()) })
    });
    group.bench_function("put_sequential", |b| {
        b.to_async(&runtime).iter(|| {
            k = (k + 7) % KEYS;
            let store = Arc::clone(&store);
            async move { black_box(store.put(k, vec![1u8; 100]).await.unwrap()) }
        })
    });
    // 16 writers at once: group commit turns them into one transaction,
    // so the time per iteration is far below 16 sequential puts.
    group.bench_function("put_16_concurrent", |b| {
        b.to_async(&runtime).iter_batched(
            || (0..16u64).map(|i| (i * 613) % KEYS).collect::<Vec<_>>(),
            |keys| {
                let store = Arc::clone(&store);
                async move {
                    let tasks: Vec<_> = keys
                        .into_iter()
                        .map(|key| {
                            let store = Arc::clone(&store);
                            tokio::spawn(async move { store.put(key, vec![2u8; 100]).await })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap().unwrap();
                    }
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, memory, sqlite);
criterion_main!(benches);
