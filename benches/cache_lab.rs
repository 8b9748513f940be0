//! The cache lab: hit ratios of the default in-process tier beside moka and
//! quick_cache on the ARC paper's traces and a Zipf stream, then the load a
//! read-through cache takes off a 1 ms backend under Zipf(0.99).
//!
//! `cargo bench --bench cache_lab` (prints tables; no criterion). The
//! traces are Megiddo and Modha, "ARC: A Self-Tuning, Low Overhead
//! Replacement Cache", USENIX FAST 03, read from `../shared/traces`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use scalekit::cache::{CacheTier, MemoryTier, ReadThrough};
use scalekit::testing::FaultyStore;
use scalekit::{MemoryStore, Store};
use support::{ready, Zipf};

fn hit_ratio(keys: &[u64], mut access: impl FnMut(u64) -> bool) -> f64 {
    let hits = keys.iter().filter(|k| access(**k)).count();
    100.0 * hits as f64 / keys.len() as f64
}

fn scalekit_tier(keys: &[u64], capacity: u64) -> f64 {
    let tier = MemoryTier::<u64, u64>::with_capacity(capacity).unwrap();
    hit_ratio(keys, |k| {
        if ready(tier.get(&k)).unwrap().is_some() {
            return true;
        }
        ready(tier.insert(k, k, None)).unwrap();
        false
    })
}

fn moka(keys: &[u64], capacity: u64) -> f64 {
    let cache = moka::sync::Cache::<u64, u64>::new(capacity);
    hit_ratio(keys, |k| {
        if cache.get(&k).is_some() {
            return true;
        }
        cache.insert(k, k);
        false
    })
}

fn quick_cache(keys: &[u64], capacity: u64) -> f64 {
    let cache = quick_cache::sync::Cache::<u64, u64>::new(capacity as usize);
    hit_ratio(keys, |k| {
        if cache.get(&k).is_some() {
            return true;
        }
        cache.insert(k, k);
        false
    })
}

/// Runs per cache and workload: the caches seed their hashes at random, so
/// one run of a policy can land a few tenths of a point either way.
const RUNS: usize = 3;

fn hit_ratios() {
    let mut workloads: Vec<(String, Vec<u64>, Vec<u64>)> = Vec::new();
    match support::trace("OLTP") {
        Some(keys) => workloads.push(("OLTP".into(), keys, vec![1_000, 2_000, 5_000])),
        None => println!("(OLTP trace not found in ../shared/traces: skipped)"),
    }
    match support::trace("P3") {
        Some(keys) => workloads.push(("P3".into(), keys, vec![100_000])),
        None => println!("(P3 trace not found in ../shared/traces: skipped)"),
    }
    workloads.push((
        "Zipf(0.9), 100k keys".into(),
        Zipf::new(100_000, 0.9).stream(1_000_000, 42),
        vec![1_000, 10_000],
    ));
    println!("\nhit ratio (%), same access stream for each cache, mean of {RUNS} fresh caches (hash seeds differ per cache)");
    println!(
        "{:<22} {:>9} {:>12} {:>10} {:>12}",
        "workload", "capacity", "scalekit", "moka", "quick_cache"
    );
    for (name, keys, capacities) in &workloads {
        for &capacity in capacities {
            let mean = |run: fn(&[u64], u64) -> f64| {
                (0..RUNS).map(|_| run(keys, capacity)).sum::<f64>() / RUNS as f64
            };
            println!(
                "{:<22} {:>9} {:>12.2} {:>10.2} {:>12.2}",
                name,
                capacity,
                mean(scalekit_tier),
                mean(moka),
                mean(quick_cache)
            );
        }
    }
}

/// Reads a Zipf(0.99) stream from `tasks` concurrent tasks; returns the
/// requests per second and the backend calls.
async fn drive<S: Store<Key = u64, Value = u64>>(
    store: Arc<S>,
    tasks: usize,
    per_task: usize,
) -> f64 {
    let zipf = Arc::new(Zipf::new(100_000, 0.99));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (store, zipf) = (Arc::clone(&store), Arc::clone(&zipf));
            tokio::spawn(async move {
                for key in zipf.stream(per_task, t as u64) {
                    store.get(&(key % 100_000)).await.unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

fn backend() -> FaultyStore<MemoryStore<u64, u64>> {
    let store = MemoryStore::new();
    for k in 0..100_000 {
        ready(store.put(k, k)).unwrap();
    }
    FaultyStore::builder(store)
        .latency(Duration::from_millis(1))
        .build()
        .unwrap()
}

fn load_reduction() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (tasks, per_task) = (64, 2_000);
        let direct = Arc::new(backend());
        let direct_rps = drive(Arc::clone(&direct), tasks, per_task).await;
        let direct_calls = direct.calls().total();

        println!("\nZipf(0.99) reads over 100k keys, backend latency 1 ms, {tasks} tasks x {per_task} reads");
        println!(
            "{:<28} {:>12} {:>14} {:>10} {:>10}",
            "setup", "reads/s", "backend calls", "hit %", "speed-up"
        );
        println!(
            "{:<28} {:>12.0} {:>14} {:>10} {:>10}",
            "no cache", direct_rps, direct_calls, "-", "1.0x"
        );
        for capacity in [1_000u64, 10_000] {
            let cache = Arc::new(
                ReadThrough::builder(backend(), MemoryTier::with_capacity(capacity).unwrap())
                    .build()
                    .unwrap(),
            );
            let rps = drive(Arc::clone(&cache), tasks, per_task).await;
            let calls = cache.get_ref().calls().total();
            println!(
                "{:<28} {:>12.0} {:>14} {:>10.1} {:>9.1}x",
                format!("read-through, {capacity} entries"),
                rps,
                calls,
                100.0 * cache.stats().hit_ratio(),
                rps / direct_rps
            );
            println!(
                "{:<28} backend calls cut by {:.1}% ({:.1}x fewer)",
                "",
                100.0 * (1.0 - calls as f64 / direct_calls as f64),
                direct_calls as f64 / calls.max(1) as f64
            );
        }
    });
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run this.
    // `cargo bench --bench cache_lab -- hit-ratio` skips the load test.
    hit_ratios();
    if !std::env::args().any(|arg| arg == "hit-ratio") {
        load_reduction();
    }
}
