//! Sharding costs, each beside its peer in the same run:
//! - routing a key with jump hashing, beside the `jumphash` crate;
//! - routing a key over a consistent-hash ring (100 points per shard),
//!   beside the `hashring` crate with the same points;
//! - `get_many` of 1,000 keys over 8 in-memory shards (one call per
//!   shard, all at once) beside 1,000 single gets through the router;
//! - the same over 8 SQLite shards (in-memory databases, each served by
//!   its own threads), where a call costs what a database call costs.
//!
//! `cargo bench --bench shard`; compare the ratios within one run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use scalekit::shard::{key_hash, Jump, Ring, ShardKey, Sharded, Strategy};
use scalekit::{MemoryStore, Store, Write};

const SHARDS: usize = 8;
const VIRTUAL_NODES: usize = 100;

fn route(strategy: &impl Strategy, key: u64) -> usize {
    let bytes = key.routing_bytes();
    strategy.shard(&bytes, key_hash(&bytes)).unwrap()
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_a_key");
    let jump = Jump::new(SHARDS).unwrap();
    let peer = jumphash::JumpHasher::new_with_keys(1, 2);
    let mut key = 0u64;
    group.bench_function("scalekit_jump", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            route(&jump, black_box(key))
        })
    });
    group.bench_function("jumphash_crate", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            peer.slot(&black_box(key), SHARDS as u32)
        })
    });
    let ring = Ring::new(SHARDS, VIRTUAL_NODES).unwrap();
    let mut peer_ring = hashring::HashRing::new();
    for shard in 0..SHARDS {
        for node in 0..VIRTUAL_NODES {
            peer_ring.add((shard, node));
        }
    }
    group.bench_function("scalekit_ring", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            route(&ring, black_box(key))
        })
    });
    group.bench_function("hashring_crate", |b| {
        b.iter(|| {
            key = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
            peer_ring.get(&black_box(key)).map(|&(shard, _)| shard)
        })
    });
    group.finish();
}

fn scatter_gather(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Sharded::builder()
        .shards((0..SHARDS).map(|_| MemoryStore::<u64, u64>::new()))
        .build()
        .unwrap();
    runtime.block_on(async {
        store
            .write_batch((0..100_000u64).map(|k| Write::Put(k, k * 3)).collect())
            .await
            .unwrap();
    });
    compare_reads(c, &runtime, "read_1000_keys_over_8_shards", &store, 100);
}

/// `get_many` of 1,000 keys beside 1,000 single gets, in one group.
fn compare_reads<S: Store<Key = u64, Value = u64>>(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    store: &S,
    samples: usize,
) {
    let keys: Vec<u64> = (0..1_000u64).map(|k| k * 97 % 100_000).collect();
    let mut group = c.benchmark_group(name);
    group.sample_size(samples);
    group.bench_function("get_many_scatter_gather", |b| {
        b.to_async(runtime)
            .iter(|| async { black_box(store.get_many(&keys).await.unwrap()) })
    });
    group.bench_function("single_gets", |b| {
        b.to_async(runtime).iter(|| async {
            for key in &keys {
                black_box(store.get(key).await.unwrap());
            }
        })
    });
    group.finish();
}

fn scatter_gather_over_sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = runtime.block_on(async {
        let mut shards = Vec::new();
        for _ in 0..SHARDS {
            shards.push(
                scalekit::store::SqliteStore::<u64, u64>::builder()
                    .in_memory()
                    .build()
                    .await
                    .unwrap(),
            );
        }
        let store = Sharded::builder().shards(shards).build().unwrap();
        store
            .write_batch((0..100_000u64).map(|k| Write::Put(k, k * 3)).collect())
            .await
            .unwrap();
        store
    });
    compare_reads(
        c,
        &runtime,
        "read_1000_keys_over_8_sqlite_shards",
        &store,
        10,
    );
}

criterion_group!(benches, routing, scatter_gather, scatter_gather_over_sqlite);
criterion_main!(benches);
