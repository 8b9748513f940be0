//! The cache hit path: `ReadThrough::get` of a cached key through the
//! concrete type, and the bare in-process tier, beside moka's and
//! quick_cache's own `get` on the same keys, on one thread and on two.
//!
//! `cargo bench --bench cache`; compare the ratios within one run.

mod support;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scalekit::cache::{CacheTier, MemoryTier, ReadThrough};
use scalekit::{MemoryStore, Store};
use support::ready;

const KEYS: u64 = 10_000;

/// Runs `iters` lookups split over `threads` threads and returns the wall time.
fn on_threads(threads: u64, iters: u64, lookup: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    let per_thread = iters / threads + 1;
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let lookup = Arc::clone(&lookup);
            scope.spawn(move || {
                let mut k = t * 4_999;
                for _ in 0..per_thread {
                    k = (k + 7) % KEYS;
                    lookup(k);
                }
            });
        }
    });
    start.elapsed()
}

fn hit_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let read_through = runtime.block_on(async {
        let cache = ReadThrough::builder(
            MemoryStore::<u64, u64>::new(),
            MemoryTier::with_capacity(2 * KEYS).unwrap(),
        )
        .build()
        .unwrap();
        for k in 0..KEYS {
            cache.put(k, k).await.unwrap();
            cache.get(&k).await.unwrap();
        }
        Arc::new(cache)
    });
    assert_eq!(read_through.stats().loads, KEYS, "every key is cached");
    let tier = Arc::new(MemoryTier::<u64, u64>::with_capacity(2 * KEYS).unwrap());
    let moka = Arc::new(moka::future::Cache::<u64, u64>::new(2 * KEYS));
    let quick = Arc::new(quick_cache::sync::Cache::<u64, u64>::new(2 * KEYS as usize));
    for k in 0..KEYS {
        ready(tier.insert(k, k, None)).unwrap();
        ready(moka.insert(k, k));
        quick.insert(k, k);
    }

    for threads in [1u64, 2] {
        let mut group = c.benchmark_group(format!("cache_hit/{threads}_thread"));
        let cache = Arc::clone(&read_through);
        let lookup: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |k| {
            black_box(ready(cache.get(black_box(&k))).unwrap());
        });
        group.bench_function("scalekit_read_through", |b| {
            b.iter_custom(|iters| on_threads(threads, iters, Arc::clone(&lookup)))
        });
        let cache = Arc::clone(&tier);
        let lookup: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |k| {
            black_box(cache.get_now(black_box(&k)));
        });
        group.bench_function("scalekit_memory_tier", |b| {
            b.iter_custom(|iters| on_threads(threads, iters, Arc::clone(&lookup)))
        });
        let cache = Arc::clone(&moka);
        let lookup: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |k| {
            black_box(ready(cache.get(black_box(&k))));
        });
        group.bench_function("moka_future", |b| {
            b.iter_custom(|iters| on_threads(threads, iters, Arc::clone(&lookup)))
        });
        let cache = Arc::clone(&quick);
        let lookup: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |k| {
            black_box(cache.get(black_box(&k)));
        });
        group.bench_function("quick_cache", |b| {
            b.iter_custom(|iters| on_threads(threads, iters, Arc::clone(&lookup)))
        });
        group.finish();
    }
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
