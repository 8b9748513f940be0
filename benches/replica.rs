//! Routing overhead per read: a `ReplicaSet` read over three in-memory
//! replicas, beside calling one replica directly, beside tower's
//! power-of-two-choices balancer (`tower::balance::p2c` over `PeakEwma`
//! load) choosing among the same three. Overhead = a routed read's time
//! minus a direct read's, from the same run.
//!
//! `cargo bench --bench replica`; compare within one run.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scalekit::replica::ReplicaSet;
use scalekit::{MemoryStore, Store};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::{Service, ServiceExt};

const KEYS: u64 = 1024;

type Memory = Arc<MemoryStore<u64, u64>>;

async fn filled() -> Memory {
    let store = Arc::new(MemoryStore::new());
    for key in 0..KEYS {
        store.put(key, key * 7).await.unwrap();
    }
    store
}

/// Runs a future that is ready at once (a memory store's read).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a memory store answers at once"),
    }
}

/// One replica as a tower service: the same read, answered at once.
#[derive(Clone)]
struct ReplicaService(Memory);

impl Service<u64> for ReplicaService {
    type Response = Option<u64>;
    type Error = scalekit::Error;
    type Future = std::future::Ready<scalekit::Result<Option<u64>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<scalekit::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: u64) -> Self::Future {
        std::future::ready(now(self.0.get(&key)))
    }
}

fn routing_overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (primary, replicas) = runtime.block_on(async {
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(filled().await);
        }
        (filled().await, replicas)
    });
    let set = runtime.block_on(async {
        let mut builder = ReplicaSet::builder().primary(Arc::clone(&primary));
        for (i, replica) in replicas.iter().enumerate() {
            builder = builder.replica(format!("r{i}"), Arc::clone(replica));
        }
        builder.build().await.unwrap()
    });

    let mut group = c.benchmark_group("replica_read");
    group.bench_function("direct", |b| {
        let replica = Arc::clone(&replicas[0]);
        b.to_async(&runtime).iter_custom(|iters| {
            let replica = Arc::clone(&replica);
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    std::hint::black_box(replica.get(&(i % KEYS)).await.unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("scalekit_replica_set_p2c", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let set = set.clone();
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    std::hint::black_box(set.get(&(i % KEYS)).await.unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("tower_p2c_peak_ewma", |b| {
        b.to_async(&runtime).iter_custom(|iters| {
            let services: Vec<_> = replicas
                .iter()
                .map(|replica| {
                    PeakEwma::new(
                        ReplicaService(Arc::clone(replica)),
                        Duration::from_millis(1),
                        10e9,
                        CompleteOnResponse::default(),
                    )
                })
                .collect();
            let mut balance = Balance::new(ServiceList::new(services));
            async move {
                let start = Instant::now();
                for i in 0..iters {
                    let service = balance.ready().await.unwrap();
                    std::hint::black_box(service.call(i % KEYS).await.unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, routing_overhead);
criterion_main!(benches);
