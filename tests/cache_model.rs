//! The caches under concurrency: random gets, puts and deletes from several
//! tasks over a faulty store; every read must return a value the history
//! allows — the last acknowledged write, or one concurrent with the read.

mod common;
use common::runtime;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use scalekit::cache::{MemoryTier, ReadThrough, WriteThrough};
use scalekit::testing::FaultyStore;
use scalekit::{MemoryStore, Store};

#[derive(Debug, Clone)]
enum Op {
    Get(u8),
    Put(u8, u16),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2).prop_map(Op::Get),
        3 => (0u8..2, any::<u16>()).prop_map(|(k, v)| Op::Put(k, v)),
        1 => (0u8..2).prop_map(Op::Delete),
    ]
}

/// One completed operation, stamped with a logical clock.
#[derive(Debug, Clone)]
struct Event {
    key: u8,
    start: u64,
    end: u64,
    /// A read's answer, or what an acknowledged write wrote.
    value: Option<u16>,
    is_write: bool,
}

/// A cache whose backing store can be read around the cache.
trait Backed: Store<Key = u64, Value = u16> + Clone {
    fn backing(&self) -> &MemoryStore<u64, u16>;
}

type Faulty = FaultyStore<MemoryStore<u64, u16>>;
type Tier = MemoryTier<u64, scalekit::cache::Cached<u16>>;

impl Backed for ReadThrough<Faulty, Tier> {
    fn backing(&self) -> &MemoryStore<u64, u16> {
        self.get_ref().get_ref()
    }
}

impl Backed for WriteThrough<Faulty, Tier> {
    fn backing(&self) -> &MemoryStore<u64, u16> {
        self.get_ref().get_ref()
    }
}

/// Runs the tasks, then (once quiet) checks that the cache answers what
/// the store holds; returns the history and any incoherence.
async fn run_tasks<S: Backed>(cache: S, tasks: Vec<Vec<Op>>) -> (Vec<Event>, Option<String>) {
    let clock = Arc::new(AtomicU64::new(1));
    let log = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = tasks
        .into_iter()
        .map(|ops| {
            let (cache, clock, log) = (cache.clone(), Arc::clone(&clock), Arc::clone(&log));
            tokio::spawn(async move {
                for op in ops {
                    let start = clock.fetch_add(1, Ordering::SeqCst);
                    let (key, value, is_write, ok) = match op {
                        Op::Get(k) => match cache.get(&(k as u64)).await {
                            Ok(v) => (k, v, false, true),
                            Err(_) => (k, None, false, false),
                        },
                        Op::Put(k, v) => (k, Some(v), true, cache.put(k as u64, v).await.is_ok()),
                        Op::Delete(k) => (k, None, true, cache.delete(&(k as u64)).await.is_ok()),
                    };
                    let end = clock.fetch_add(1, Ordering::SeqCst);
                    if ok {
                        log.lock().unwrap().push(Event {
                            key,
                            start,
                            end,
                            value,
                            is_write,
                        });
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
    let events = log.lock().unwrap().clone();
    for key in 0..2u64 {
        let stored = cache.backing().get(&key).await.unwrap();
        let cached = loop {
            // Reads may still hit injected faults: retry until one answers.
            if let Ok(value) = cache.get(&key).await {
                break value;
            }
        };
        if stored != cached {
            return (
                events,
                Some(format!(
                    "at rest, key {key}: the cache answers {cached:?}, the store holds {stored:?}"
                )),
            );
        }
    }
    (events, None)
}

/// Checks every read against the writes of its key.
fn check(events: &[Event]) -> Result<(), TestCaseError> {
    let initial = |key| Event {
        key,
        start: 0,
        end: 0,
        value: None,
        is_write: true,
    };
    for read in events.iter().filter(|e| !e.is_write) {
        let writes: Vec<Event> = std::iter::once(initial(read.key))
            .chain(
                events
                    .iter()
                    .filter(|e| e.is_write && e.key == read.key)
                    .cloned(),
            )
            .collect();
        let allowed = writes.iter().any(|w| {
            let could_precede = w.start < read.end;
            let superseded = writes
                .iter()
                .any(|later| later.start > w.end && later.end < read.start);
            w.value == read.value && could_precede && !superseded
        });
        prop_assert!(
            allowed,
            "read of key {} during [{}, {}] returned {:?}; writes: {:?}",
            read.key,
            read.start,
            read.end,
            read.value,
            writes
        );
    }
    Ok(())
}

type Run = Box<dyn FnOnce(Vec<Vec<Op>>) -> (Vec<Event>, Option<String>)>;

fn run_model(make: impl Fn(u64) -> Run) {
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let seed = AtomicU64::new(0);
    runner
        .run(
            &prop::collection::vec(prop::collection::vec(op(), 1..24), 4),
            |tasks| {
                let run = make(seed.fetch_add(1, Ordering::Relaxed));
                let (events, incoherent) = run(tasks);
                if let Some(why) = incoherent {
                    return Err(TestCaseError::fail(why));
                }
                check(&events)
            },
        )
        .unwrap();
}

fn faulty_store(seed: u64) -> FaultyStore<MemoryStore<u64, u16>> {
    FaultyStore::builder(MemoryStore::new())
        .fail_with_probability(0.1, seed)
        .jitter(Duration::from_micros(400))
        .build()
        .unwrap()
}

/// Runs the model over the cache `build` makes from a faulty store.
fn run_cache_model<C: Backed>(build: fn(Faulty) -> C) {
    run_model(move |seed| {
        Box::new(move |tasks| runtime().block_on(run_tasks(build(faulty_store(seed)), tasks)))
    });
}

#[test]
fn read_through_reads_are_linearizable_with_concurrent_writes_and_faults() {
    run_cache_model(|store| {
        ReadThrough::builder(store, MemoryTier::with_capacity(64).unwrap())
            .negative_ttl(Duration::from_secs(60))
            .build()
            .unwrap()
    });
}

#[test]
fn write_through_reads_are_linearizable_with_concurrent_writes_and_faults() {
    run_cache_model(|store| {
        WriteThrough::builder(store, MemoryTier::with_capacity(64).unwrap())
            .negative_ttl(Duration::from_secs(60))
            .build()
            .unwrap()
    });
}
