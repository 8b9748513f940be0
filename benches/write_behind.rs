//! Write-behind against write-through over a store with 200 µs per call:
//! put throughput, the backend writes a Zipf(0.99) stream costs, and what
//! the journal costs (synced every 2 ms, and left to the OS), for one
//! writer and for 64 concurrent ones. (tokio's
//! timer rounds the 200 µs up to about a millisecond per store call.)
//!
//! `cargo bench --bench write_behind`; compare the ratios within one run.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scalekit::cache::{MemoryTier, SyncPolicy, WriteBehind, WriteThrough};
use scalekit::testing::FaultyStore;
use scalekit::{MemoryStore, Store};
use support::Zipf;

const KEYS: u64 = 10_000;

fn slow_store() -> FaultyStore<MemoryStore<u64, String>> {
    FaultyStore::builder(MemoryStore::new())
        .latency(Duration::from_micros(200))
        .build()
        .unwrap()
}

async fn put_loop<S: Store<Key = u64, Value = String>>(
    store: &S,
    iters: u64,
    offset: u64,
) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        store
            .put((offset + i) % KEYS, "value".to_string())
            .await
            .unwrap();
    }
    start.elapsed()
}

/// `iters` puts spread over `tasks` concurrent tasks (a server's writers).
async fn concurrent_puts<S>(store: Arc<S>, iters: u64, tasks: u64) -> Duration
where
    S: Store<Key = u64, Value = String>,
{
    let per_task = iters / tasks + 1;
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { put_loop(&*store, per_task, t * 997).await })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    start.elapsed()
}

fn report_zipf_backend_writes(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        let layer = WriteBehind::builder(slow_store())
            .batch_size(256)
            .max_delay(Duration::from_millis(10))
            .build()
            .unwrap();
        let keys = Zipf::new(KEYS, 0.99).stream(100_000, 7);
        for key in &keys {
            layer.put(*key, "value".to_string()).await.unwrap();
        }
        layer.flush().await.unwrap();
        let stats = layer.stats();
        eprintln!(
            "Zipf(0.99) over {KEYS} keys: {} puts acknowledged, {} backend writes in {} batches: {:.3} backend writes per put (1/{:.1})",
            stats.acknowledged,
            stats.written,
            stats.batches,
            stats.written as f64 / stats.acknowledged as f64,
            stats.acknowledged as f64 / stats.written as f64
        );
        layer.shutdown().await;
    });
}

fn puts(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    report_zipf_backend_writes(&runtime);
    let journal_dir = tempfile::tempdir().unwrap();
    let (through, behind, journalled, journalled_os) = runtime.block_on(async {
        let through =
            WriteThrough::builder(slow_store(), MemoryTier::with_capacity(2 * KEYS).unwrap())
                .build()
                .unwrap();
        let behind = WriteBehind::builder(slow_store()).build().unwrap();
        let journalled = WriteBehind::builder(slow_store())
            .journal(
                journal_dir.path(),
                SyncPolicy::Interval(Duration::from_millis(2)),
            )
            .build()
            .unwrap();
        let journalled_os = WriteBehind::builder(slow_store())
            .journal(journal_dir.path().join("os"), SyncPolicy::Os)
            .build()
            .unwrap();
        (
            Arc::new(through),
            Arc::new(behind),
            Arc::new(journalled),
            Arc::new(journalled_os),
        )
    });

    let mut group = c.benchmark_group("put_over_200us_store");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("write_through", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| put_loop(&*through, iters, 0))
    });
    group.bench_function("write_behind", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| put_loop(&*behind, iters, 0))
    });
    group.bench_function("write_behind_journalled_2ms", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| put_loop(&*journalled, iters, 0))
    });
    group.bench_function("write_behind_journalled_os", |b| {
        b.to_async(&runtime)
            .iter_custom(|iters| put_loop(&*journalled_os, iters, 0))
    });
    for (name, layer) in [
        ("write_behind_64_writers", &behind),
        ("write_behind_journalled_2ms_64_writers", &journalled),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| concurrent_puts(Arc::clone(layer), iters, 64))
        });
    }
    group.finish();
    runtime.block_on(async {
        behind.shutdown().await;
        journalled.shutdown().await;
        journalled_os.shutdown().await;
    });
}

criterion_group!(benches, puts);
criterion_main!(benches);
