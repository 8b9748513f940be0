//! CQRS costs, each beside its baseline in the same run:
//! - a command through the bus and a three-layer middleware pipeline
//!   (timing, validation, retry), beside the same work written by hand
//!   against the same in-memory store (read the counter, write the post,
//!   the counter, the event and the log's next position in one batch);
//! - projection throughput: events applied per second to an in-memory
//!   read model, catching up on a log of 10,000 events;
//! - commands on distinct aggregates from 16 concurrent senders over a
//!   store with 1 ms latency: the concurrent bus (optimistic reads, group
//!   commit of conditional writes) beside the single-process bus (one
//!   command at a time), the only mode before conditional writes.
//!
//! `cargo bench --bench cqrs`; compare within one run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scalekit::cqrs::{
    Command, CommandBus, CommandContext, CommandError, CommandHandler, EventSource, Projection,
    Recorded, Retry, Timing, Validate,
};
use scalekit::{MemoryStore, Store, Write};

#[derive(Clone)]
struct CreatePost {
    author: String,
    text: String,
}

impl Command for CreatePost {
    type Output = u64;
}

struct Posts;

impl CommandHandler<CreatePost, String> for Posts {
    async fn handle(
        &self,
        post: CreatePost,
        context: &mut CommandContext<'_, String>,
    ) -> Result<u64, CommandError> {
        let id = context.get::<u64>("posts/count").await?.unwrap_or(0) + 1;
        context.put("posts/count", &id)?;
        context.put(format!("post/{id}"), &post.text)?;
        context.emit(format!("{}:{id}", post.author));
        Ok(id)
    }
}

type Writes = Arc<MemoryStore<String, Vec<u8>>>;

/// The same command, by hand: what a service without the bus would do.
async fn by_hand(store: &Writes, post: CreatePost, next_event: &mut u64) -> u64 {
    let id = match store.get(&"posts/count".to_string()).await.unwrap() {
        Some(bytes) => u64::from_be_bytes(bytes.try_into().unwrap()) + 1,
        None => 1,
    };
    let event = format!("{}:{id}", post.author);
    store
        .write_batch(vec![
            Write::Put("posts/count".into(), id.to_be_bytes().to_vec()),
            Write::Put(format!("post/{id}"), post.text.into_bytes()),
            Write::Put(
                format!("posts/event/{:020}", *next_event),
                event.into_bytes(),
            ),
            Write::Put(
                "posts/next".into(),
                (*next_event + 1).to_be_bytes().to_vec(),
            ),
        ])
        .await
        .unwrap();
    *next_event += 1;
    id
}

fn post() -> CreatePost {
    CreatePost {
        author: "ann".into(),
        text: "hello".into(),
    }
}

fn command_dispatch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("command");
    group.bench_function("by_hand", |b| {
        let store: Writes = Arc::new(MemoryStore::new());
        let mut next = 0;
        b.to_async(&runtime).iter_custom(|iters| {
            let store = Arc::clone(&store);
            let mut local = next;
            next += iters;
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(by_hand(&store, post(), &mut local).await);
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("bus_with_three_layers", |b| {
        let bus = CommandBus::<_, String>::builder(Arc::new(MemoryStore::new()), "posts")
            .handle(Posts)
            .layer(Timing::new())
            .layer(Validate::new(|post: &CreatePost| {
                if post.text.is_empty() {
                    Err("empty".to_string())
                } else {
                    Ok(())
                }
            }))
            .layer(Retry {
                retries: 2,
                backoff: Duration::from_millis(1),
            })
            .build()
            .unwrap();
        b.to_async(&runtime).iter_custom(|iters| {
            let bus = bus.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(bus.dispatch(post()).await.unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

fn projection_throughput(c: &mut Criterion) {
    const EVENTS: u64 = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus = runtime.block_on(async {
        let bus = CommandBus::<_, String>::builder(Arc::new(MemoryStore::new()), "posts")
            .handle(Posts)
            .build()
            .unwrap();
        for _ in 0..EVENTS {
            bus.dispatch(post()).await.unwrap();
        }
        bus
    });
    let mut group = c.benchmark_group("projection");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    group.bench_function("catch_up_10k_events", |b| {
        b.to_async(&runtime).iter(|| async {
            let source: Arc<dyn EventSource<String>> = Arc::new(bus.clone());
            let projection = Projection::start(
                "counts",
                source,
                MemoryStore::<String, u64>::new(),
                MemoryStore::<String, Vec<u8>>::new().into_dyn(),
                |recorded: Recorded<String>, counts: Arc<MemoryStore<String, u64>>| async move {
                    let author = recorded
                        .event
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let count = counts.get(&author).await?.unwrap_or(0);
                    counts.put(author, count + 1).await?;
                    Ok(())
                },
            )
            .await
            .unwrap();
            projection
                .wait_for(scalekit::Position::new(EVENTS), Duration::from_secs(60))
                .await
                .unwrap();
        })
    });
    group.finish();
}

/// A deposit to one account: read its balance, write it back, emit.
#[derive(Clone)]
struct Deposit {
    account: u64,
}

impl Command for Deposit {
    type Output = u64;
}

struct Accounts;

impl CommandHandler<Deposit, String> for Accounts {
    async fn handle(
        &self,
        deposit: Deposit,
        context: &mut CommandContext<'_, String>,
    ) -> Result<u64, CommandError> {
        let key = format!("account/{}", deposit.account);
        let balance = context.get::<u64>(&key).await?.unwrap_or(0) + 1;
        context.put(key, &balance)?;
        context.emit(format!("deposit:{}", deposit.account));
        Ok(balance)
    }
}

fn concurrent_senders(c: &mut Criterion) {
    const SENDERS: u64 = 16;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("commands_16_senders_1ms_store");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    for single_process in [true, false] {
        let name = if single_process {
            "single_process_bus"
        } else {
            "concurrent_bus"
        };
        group.bench_function(name, |b| {
            let store = scalekit::testing::FaultyStore::builder(MemoryStore::new())
                .latency(Duration::from_millis(1))
                .build()
                .unwrap();
            let builder =
                CommandBus::<_, String>::builder(Arc::new(store), "accounts").handle(Accounts);
            let bus = if single_process {
                builder.single_process()
            } else {
                builder
            }
            .build()
            .unwrap();
            b.to_async(&runtime).iter_custom(|iters| {
                let bus = bus.clone();
                async move {
                    let start = Instant::now();
                    let senders: Vec<_> = (0..SENDERS)
                        .map(|sender| {
                            let bus = bus.clone();
                            tokio::spawn(async move {
                                for n in 0..iters.div_ceil(SENDERS) {
                                    let account = sender * 1_000_000 + n;
                                    bus.dispatch(Deposit { account }).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for sender in senders {
                        sender.await.unwrap();
                    }
                    start.elapsed()
                }
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    command_dispatch,
    projection_throughput,
    concurrent_senders
);
criterion_main!(benches);
