//! Publish-to-handled throughput of the event bus: one publisher, 1 and 4
//! subscription groups (one worker each), small events, beside
//! `tokio::sync::broadcast` (one receiver task per group) and crossbeam
//! channels (one channel and one consumer thread per group) carrying the
//! same events. The bus runs with its guarantees on: blocking
//! backpressure, per-key workers, retries and dead letters armed.
//!
//! Buffers: broadcast gets one as large as the run (it has no
//! backpressure: a smaller one would drop events), crossbeam 1,024 per
//! channel. The bus runs twice: with a buffer of 65,536 (`scalekit_bus…`,
//! so that, like broadcast, it rarely makes the publisher wait) and with
//! its default 1,024 (`…_buffer_1k`, where the publisher waits for the
//! slowest group often, and fast groups sleep and are woken again).
//!
//! `cargo bench --bench event_bus`; compare the ratios within one run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use scalekit::events::{Event, EventBus, Subscription};

/// A small event: an id and an amount.
#[derive(Debug, Clone, Copy)]
struct Placed {
    id: u64,
    amount: u64,
}

/// One group's sum, on a cache line of its own (counters allocated side by
/// side would share one).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Sum(AtomicU64);

fn event(i: u64) -> Placed {
    Placed {
        id: i,
        amount: i * 3,
    }
}

/// Subscribes `groups` summing groups to a fresh bus. Each group sums into
/// its own counter, as each peer's consumer sums into its own variable: a
/// counter shared by the groups would make them contend for one cache
/// line, a cost the peers do not pay.
/// A bus, its topic, the groups' subscriptions and their sums.
type Running = (
    EventBus,
    scalekit::events::Topic<Placed>,
    Vec<Subscription<Placed>>,
    Vec<Arc<Sum>>,
);

fn bus_with_groups(groups: usize, buffer: usize) -> Running {
    let bus = EventBus::new();
    let topic = bus
        .topic_with::<Placed>(
            "orders",
            scalekit::events::TopicOptions::default().buffer(buffer),
        )
        .unwrap();
    let sums: Vec<Arc<Sum>> = (0..groups).map(|_| Arc::default()).collect();
    let subscriptions = sums
        .iter()
        .enumerate()
        .map(|(g, sum)| {
            let sum = Arc::clone(sum);
            topic
                .group(format!("group-{g}"))
                .subscribe(move |event: Event<Placed>| {
                    sum.0.fetch_add(
                        event.payload().id + event.payload().amount,
                        Ordering::Relaxed,
                    );
                    std::future::ready(Ok(()))
                })
                .unwrap()
        })
        .collect();
    (bus, topic, subscriptions, sums)
}

async fn scalekit_bus(groups: usize, events: u64, batch: usize, buffer: usize) -> Duration {
    let (bus, topic, subscriptions, sums) = bus_with_groups(groups, buffer);
    let start = Instant::now();
    if batch <= 1 {
        for i in 0..events {
            topic.publish(event(i)).await.unwrap();
        }
    } else {
        let mut i = 0;
        while i < events {
            let end = (i + batch as u64).min(events);
            topic
                .publish_batch((i..end).map(|i| (None, event(i))))
                .await
                .unwrap();
            i = end;
        }
    }
    for subscription in &subscriptions {
        subscription.caught_up().await;
    }
    let elapsed = start.elapsed();
    for sum in &sums {
        assert_eq!(
            sum.0.load(Ordering::Relaxed),
            4 * events * (events.max(1) - 1) / 2
        );
    }
    bus.shutdown().await;
    elapsed
}

async fn tokio_broadcast(groups: usize, events: u64) -> Duration {
    // Large enough that no receiver lags (broadcast would drop events).
    let (sender, _) = tokio::sync::broadcast::channel::<Placed>(events.max(1) as usize);
    let receivers: Vec<_> = (0..groups)
        .map(|_| {
            let mut receiver = sender.subscribe();
            tokio::spawn(async move {
                let mut sum = 0u64;
                for _ in 0..events {
                    let placed = receiver.recv().await.unwrap();
                    sum += placed.id + placed.amount;
                }
                sum
            })
        })
        .collect();
    let start = Instant::now();
    for i in 0..events {
        sender.send(event(i)).unwrap();
    }
    for receiver in receivers {
        std::hint::black_box(receiver.await.unwrap());
    }
    start.elapsed()
}

fn crossbeam(groups: usize, events: u64) -> Duration {
    let channels: Vec<_> = (0..groups)
        .map(|_| crossbeam_channel::bounded::<Placed>(1024))
        .collect();
    let consumers: Vec<_> = channels
        .iter()
        .map(|(_, receiver)| {
            let receiver = receiver.clone();
            std::thread::spawn(move || {
                let mut sum = 0u64;
                for _ in 0..events {
                    let placed = receiver.recv().unwrap();
                    sum += placed.id + placed.amount;
                }
                sum
            })
        })
        .collect();
    let start = Instant::now();
    for i in 0..events {
        let placed = event(i);
        for (sender, _) in &channels {
            sender.send(placed).unwrap();
        }
    }
    for consumer in consumers {
        std::hint::black_box(consumer.join().unwrap());
    }
    start.elapsed()
}

fn publish_to_handled(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for groups in [1usize, 4] {
        let mut group = c.benchmark_group(format!("publish_to_handled/{groups}_groups"));
        group.throughput(criterion::Throughput::Elements(1));
        for (suffix, buffer) in [("", 1 << 16), ("_buffer_1k", 1024)] {
            group.bench_function(format!("scalekit_bus{suffix}"), |b| {
                b.to_async(&runtime)
                    .iter_custom(|iters| scalekit_bus(groups, iters, 1, buffer))
            });
            group.bench_function(format!("scalekit_bus_batched_256{suffix}"), |b| {
                b.to_async(&runtime)
                    .iter_custom(|iters| scalekit_bus(groups, iters, 256, buffer))
            });
        }
        group.bench_function("tokio_broadcast", |b| {
            b.to_async(&runtime)
                .iter_custom(|iters| tokio_broadcast(groups, iters))
        });
        group.bench_function("crossbeam_channel", |b| {
            b.iter_custom(|iters| crossbeam(groups, iters))
        });
        group.finish();
    }
}

criterion_group!(benches, publish_to_handled);
criterion_main!(benches);
