//! `WriteBehind`: writes acknowledged from a buffer reach the store in
//! batches, coalesced and in order, and none is lost to a failing store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalekit::cache::{WhenFull, WriteBehind};
use scalekit::testing::{conformance, FaultyStore, ModelTest};
use scalekit::{Error, ErrorKind, MemoryStore, Store, Write};

fn faulty() -> FaultyStore<MemoryStore<u64, String>> {
    FaultyStore::new(MemoryStore::new())
}

/// A store whose writes wait until the test opens the gate.
#[derive(Debug)]
struct GatedStore {
    inner: MemoryStore<u64, String>,
    gate: tokio::sync::Semaphore,
    /// Batches that reached the gate.
    arrived: AtomicUsize,
    batches: Mutex<Vec<Vec<Write<u64, String>>>>,
}

impl GatedStore {
    /// Waits until `n` batches have reached the gate.
    async fn arrived(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.arrived.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the batch reaches the store");
    }
}

impl Default for GatedStore {
    fn default() -> Self {
        GatedStore {
            inner: MemoryStore::new(),
            gate: tokio::sync::Semaphore::new(0),
            arrived: AtomicUsize::new(0),
            batches: Mutex::default(),
        }
    }
}

impl Store for GatedStore {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> scalekit::Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: u64, value: String) -> scalekit::Result<scalekit::Position> {
        self.write_batch(vec![Write::Put(key, value)]).await
    }
    async fn delete(&self, key: &u64) -> scalekit::Result<scalekit::Position> {
        self.write_batch(vec![Write::Delete(*key)]).await
    }
    async fn write_batch(
        &self,
        batch: Vec<Write<u64, String>>,
    ) -> scalekit::Result<scalekit::Position> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        self.gate.acquire().await.unwrap().forget();
        self.batches.lock().unwrap().push(batch.clone());
        self.inner.write_batch(batch).await
    }
}

#[tokio::test]
async fn many_writes_of_a_key_become_one_store_write_with_the_last_value() {
    let layer = WriteBehind::builder(faulty())
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    for i in 0..100 {
        layer.put(7, format!("v{i}")).await.unwrap();
    }
    layer.delete(&8).await.unwrap();
    layer.put(8, "back".into()).await.unwrap();
    assert_eq!(layer.get_ref().calls().total(), 0, "nothing written yet");
    layer.flush().await.unwrap();
    let calls = layer.get_ref().calls();
    assert_eq!(calls.write_batch, 1, "one batch");
    assert_eq!(
        layer.get_ref().get_ref().get(&7).await.unwrap(),
        Some("v99".into())
    );
    assert_eq!(
        layer.get_ref().get_ref().get(&8).await.unwrap(),
        Some("back".into())
    );
    let stats = layer.stats();
    assert_eq!((stats.acknowledged, stats.coalesced), (102, 100));
    assert_eq!((stats.batches, stats.written, stats.buffered), (1, 2, 0));
}

#[tokio::test]
async fn reads_see_buffered_writes_and_deletes() {
    let store = faulty();
    store.get_ref().put(1, "old".into()).await.unwrap();
    store.get_ref().put(2, "doomed".into()).await.unwrap();
    let layer = WriteBehind::builder(store)
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    layer.put(1, "new".into()).await.unwrap();
    layer.delete(&2).await.unwrap();
    assert_eq!(layer.get(&1).await.unwrap(), Some("new".into()));
    assert_eq!(layer.get(&2).await.unwrap(), None, "a buffered delete");
    assert_eq!(
        layer.get_many(&[1, 2, 3]).await.unwrap(),
        vec![Some("new".into()), None, None]
    );
    assert_eq!(
        layer.get_ref().get_ref().get(&2).await.unwrap(),
        Some("doomed".into()),
        "the store still has the old value"
    );
}

#[tokio::test]
async fn a_full_batch_goes_without_waiting_for_the_delay() {
    let layer = WriteBehind::builder(faulty())
        .batch_size(10)
        .max_delay(Duration::from_secs(3_600))
        .build()
        .unwrap();
    for k in 0..10 {
        layer.put(k, k.to_string()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while layer.get_ref().get_ref().get(&9).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the size trigger sends the batch");
}

#[tokio::test(start_paused = true)]
async fn a_lone_write_goes_after_the_maximum_delay() {
    let layer = WriteBehind::builder(faulty())
        .max_delay(Duration::from_millis(200))
        .build()
        .unwrap();
    layer.put(1, "one".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        layer.get_ref().calls().write_batch,
        0,
        "not before the delay"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(layer.get_ref().calls().write_batch, 1, "after it");
    assert_eq!(
        layer.get_ref().get_ref().get(&1).await.unwrap(),
        Some("one".into())
    );
}

#[tokio::test]
async fn a_key_written_while_its_batch_is_in_flight_ends_with_the_later_value() {
    let gated = Arc::new(GatedStore::default());
    let layer = WriteBehind::builder(Arc::clone(&gated))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    let layer = Arc::new(layer);
    layer.put(1, "first".into()).await.unwrap();
    let first = tokio::spawn({
        let layer = Arc::clone(&layer);
        async move { layer.flush().await }
    });
    gated.arrived(1).await;
    assert_eq!(
        layer.get(&1).await.unwrap(),
        Some("first".into()),
        "in flight"
    );
    layer.put(1, "second".into()).await.unwrap();
    gated.gate.add_permits(10);
    first.await.unwrap().unwrap();
    layer.flush().await.unwrap();
    let batches = gated.batches.lock().unwrap().clone();
    assert_eq!(
        batches,
        vec![
            vec![Write::Put(1, "first".into())],
            vec![Write::Put(1, "second".into())]
        ],
        "acknowledgement order, one batch at a time"
    );
    assert_eq!(gated.inner.get(&1).await.unwrap(), Some("second".into()));
}

#[tokio::test]
async fn a_full_buffer_fails_fast_or_makes_the_writer_wait_as_configured() {
    let gated = Arc::new(GatedStore::default());
    let failing = WriteBehind::builder(Arc::clone(&gated))
        .max_buffered(2, WhenFull::Fail)
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    failing.put(1, "a".into()).await.unwrap();
    failing.put(2, "b".into()).await.unwrap();
    failing.put(2, "b2".into()).await.unwrap(); // a pending key always fits
    let full = failing.put(3, "c".into()).await.unwrap_err();
    assert!(
        matches!(
            full.kind(),
            ErrorKind::Unavailable {
                component: "WriteBehind",
                ..
            }
        ),
        "{full}"
    );
    assert_eq!(failing.stats().rejected_full, 1);

    let gated = Arc::new(GatedStore::default());
    let waiting = Arc::new(
        WriteBehind::builder(Arc::clone(&gated))
            .max_buffered(2, WhenFull::Wait)
            .batch_size(2)
            .build()
            .unwrap(),
    );
    waiting.put(1, "a".into()).await.unwrap();
    waiting.put(2, "b".into()).await.unwrap();
    let third = tokio::spawn({
        let waiting = Arc::clone(&waiting);
        async move { waiting.put(3, "c".into()).await }
    });
    gated.arrived(1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !third.is_finished(),
        "waits while the store holds the batch"
    );
    gated.gate.add_permits(10);
    third.await.unwrap().unwrap();
    waiting.flush().await.unwrap();
    assert_eq!(gated.inner.get(&3).await.unwrap(), Some("c".into()));
    assert_eq!(waiting.stats().waited_for_room, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_is_retried_and_arrives_when_the_store_recovers() {
    let layer = WriteBehind::builder(faulty())
        .retries(10, Duration::from_millis(10), Duration::from_millis(100))
        .max_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    layer.get_ref().set_failing(true);
    layer.put(1, "one".into()).await.unwrap();
    layer.put(2, "two".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(layer.stats().retries >= 2, "{:?}", layer.stats());
    assert_eq!(
        layer.get(&1).await.unwrap(),
        Some("one".into()),
        "still readable"
    );
    layer.get_ref().set_failing(false);
    layer.flush().await.unwrap();
    assert_eq!(
        layer.get_ref().get_ref().get(&2).await.unwrap(),
        Some("two".into())
    );
    assert_eq!(layer.stats().dead_lettered, 0);
    assert!(layer.take_dead_letters().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn writes_that_never_go_through_are_dead_lettered_not_dropped() {
    let layer = WriteBehind::builder(faulty())
        .retries(2, Duration::from_millis(10), Duration::from_millis(10))
        .build()
        .unwrap();
    layer.get_ref().set_failing(true);
    layer.put(1, "one".into()).await.unwrap();
    layer.delete(&2).await.unwrap();
    layer.flush().await.unwrap();
    // Without a journal, an outage past the budget dead-letters each
    // write, after it was tried alone too.
    let letters = layer.take_dead_letters().unwrap();
    assert_eq!(letters.len(), 2);
    let writes: Vec<_> = letters.iter().flat_map(|l| l.writes.clone()).collect();
    assert_eq!(writes, vec![Write::Put(1, "one".into()), Write::Delete(2)]);
    assert_eq!(
        letters[0].attempts, 4,
        "the first try, two retries, and once alone"
    );
    assert!(FaultyStore::<()>::is_injected(&letters[0].error));
    assert_eq!(layer.stats().dead_lettered, 2);
    // Replay once the store is back.
    layer.get_ref().set_failing(false);
    layer.write_batch(writes).await.unwrap();
    layer.flush().await.unwrap();
    assert_eq!(
        layer.get_ref().get_ref().get(&1).await.unwrap(),
        Some("one".into())
    );

    // With a sink of the user's, letters go there.
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&received);
    let layer = WriteBehind::builder(faulty())
        .retries(0, Duration::from_millis(10), Duration::from_millis(10))
        .dead_letter_sink(move |letter| sink.lock().unwrap().push(letter))
        .build()
        .unwrap();
    layer.get_ref().set_failing(true);
    layer.put(5, "five".into()).await.unwrap();
    layer.flush().await.unwrap();
    assert_eq!(received.lock().unwrap().len(), 1);
    assert!(layer.take_dead_letters().unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_drains_the_buffer_and_refuses_later_writes() {
    let layer = WriteBehind::builder(faulty())
        .max_delay(Duration::from_secs(3_600))
        .build()
        .unwrap();
    for k in 0..1_000 {
        layer.put(k, k.to_string()).await.unwrap();
    }
    layer.shutdown().await;
    assert_eq!(
        layer.get_ref().get_ref().get(&999).await.unwrap(),
        Some("999".into())
    );
    let refused = layer.put(1, "late".into()).await.unwrap_err();
    assert!(
        matches!(refused.kind(), ErrorKind::Unavailable { .. }),
        "{refused}"
    );
    assert_eq!(layer.get(&1).await.unwrap(), Some("1".into()), "reads work");
    layer.shutdown().await; // twice is fine
}

#[tokio::test]
async fn dropping_the_layer_drains_it_in_the_background() {
    let store = Arc::new(faulty());
    let layer = WriteBehind::builder(Arc::clone(&store))
        .max_delay(Duration::from_secs(3_600))
        .build()
        .unwrap();
    layer.put(1, "kept".into()).await.unwrap();
    drop(layer);
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.get_ref().get(&1).await.unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the flusher drains after the layer is dropped");
}

#[test]
fn bad_configurations_are_config_errors() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let cases = [
        WriteBehind::builder(faulty()).batch_size(0).build(),
        WriteBehind::builder(faulty())
            .max_buffered(0, WhenFull::Wait)
            .build(),
        WriteBehind::builder(faulty())
            .max_delay(Duration::ZERO)
            .build(),
        WriteBehind::builder(faulty())
            .retries(1, Duration::ZERO, Duration::from_secs(1))
            .build(),
        WriteBehind::builder(faulty())
            .retries(1, Duration::from_secs(2), Duration::from_secs(1))
            .build(),
    ];
    for case in cases {
        let error = case.unwrap_err();
        assert!(
            matches!(
                error.kind(),
                ErrorKind::Config {
                    component: "WriteBehind",
                    ..
                }
            ),
            "{error}"
        );
    }
    drop(_guard);
    let outside = WriteBehind::builder(faulty()).build().unwrap_err();
    assert!(
        matches!(outside.kind(), ErrorKind::Config { .. }),
        "no runtime: {outside}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_passes_the_conformance_suite_and_the_model() {
    let layer = WriteBehind::builder(MemoryStore::<String, Vec<u8>>::new())
        .max_delay(Duration::from_millis(5))
        .batch_size(8)
        .build()
        .unwrap();
    conformance::run_all(Arc::new(layer)).await;
    let layer = WriteBehind::builder(MemoryStore::<u64, String>::new())
        .max_delay(Duration::from_millis(1))
        .batch_size(4)
        .build()
        .unwrap();
    ModelTest::new().cases(64).run(&layer).await;
}

/// A store that fails (transiently) while told to, and logs the batches it
/// takes.
#[derive(Debug, Default)]
struct FlakyLog {
    inner: MemoryStore<u64, String>,
    failing: std::sync::atomic::AtomicBool,
    failures: AtomicUsize,
    taken: Mutex<Vec<Vec<Write<u64, String>>>>,
}

impl Store for FlakyLog {
    type Key = u64;
    type Value = String;

    async fn get(&self, key: &u64) -> scalekit::Result<Option<String>> {
        self.inner.get(key).await
    }
    async fn put(&self, key: u64, value: String) -> scalekit::Result<scalekit::Position> {
        self.write_batch(vec![Write::Put(key, value)]).await
    }
    async fn delete(&self, key: &u64) -> scalekit::Result<scalekit::Position> {
        self.write_batch(vec![Write::Delete(*key)]).await
    }
    async fn write_batch(
        &self,
        batch: Vec<Write<u64, String>>,
    ) -> scalekit::Result<scalekit::Position> {
        if self.failing.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Error::unavailable("FlakyLog", "down"));
        }
        self.taken.lock().unwrap().push(batch.clone());
        self.inner.write_batch(batch).await
    }
}

#[tokio::test]
async fn per_key_order_holds_across_retries() {
    let store = Arc::new(FlakyLog::default());
    store.failing.store(true, Ordering::SeqCst);
    let layer = Arc::new(
        WriteBehind::builder(Arc::clone(&store))
            .retries(1_000, Duration::from_millis(1), Duration::from_millis(2))
            .build()
            .unwrap(),
    );
    layer.put(1, "a".into()).await.unwrap();
    let first = tokio::spawn({
        let layer = Arc::clone(&layer);
        async move { layer.flush().await }
    });
    tokio::time::timeout(Duration::from_secs(10), async {
        while store.failures.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the batch is being retried");
    // Later writes of the key wait behind the batch being retried.
    layer.put(1, "b".into()).await.unwrap();
    layer.put(2, "c".into()).await.unwrap();
    store.failing.store(false, Ordering::SeqCst);
    first.await.unwrap().unwrap();
    layer.flush().await.unwrap();
    let taken = store.taken.lock().unwrap().clone();
    assert_eq!(taken[0], vec![Write::Put(1, "a".into())]);
    assert!(taken[1..]
        .iter()
        .flatten()
        .any(|w| *w == Write::Put(1, "b".into())));
    assert_eq!(store.inner.get(&1).await.unwrap(), Some("b".into()));
    assert_eq!(layer.stats().dead_lettered, 0);
}

#[tokio::test]
async fn a_stalled_store_holds_the_buffer_at_its_bound_and_loses_nothing() {
    let gated = Arc::new(GatedStore::default());
    let layer = Arc::new(
        WriteBehind::builder(Arc::clone(&gated))
            .batch_size(16)
            .max_buffered(64, WhenFull::Wait)
            .max_delay(Duration::from_millis(1))
            .build()
            .unwrap(),
    );
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let layer = Arc::clone(&layer);
            tokio::spawn(async move {
                for i in 0..100u64 {
                    layer.put(w * 1_000 + i, format!("{w}/{i}")).await.unwrap();
                }
            })
        })
        .collect();
    gated.arrived(1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(layer.stats().buffered <= 64, "bounded: {:?}", layer.stats());
    assert!(writers.iter().any(|w| !w.is_finished()), "writers wait");
    gated.gate.add_permits(1_000);
    for writer in writers {
        writer.await.unwrap();
    }
    layer.flush().await.unwrap();
    for w in 0..4u64 {
        for i in 0..100u64 {
            assert_eq!(
                gated.inner.get(&(w * 1_000 + i)).await.unwrap(),
                Some(format!("{w}/{i}"))
            );
        }
    }
    assert!(layer.stats().waited_for_room > 0);
}

mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u64, u8),
        Delete(u64),
        Get(u64),
        Flush,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..8u64, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            1 => (0..8u64).prop_map(Op::Delete),
            3 => (0..8u64).prop_map(Op::Get),
            1 => Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Tasks on disjoint keys, a store failing a third of its batches:
        /// every read agrees with the task's model, and after a flush the
        /// store equals the model.
        #[test]
        fn reads_and_the_flushed_store_agree_with_a_map(
            tasks in proptest::collection::vec(proptest::collection::vec(op(), 1..40), 1..4),
            seed in any::<u64>(),
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let store = FaultyStore::builder(MemoryStore::<u64, String>::new())
                    .fail_with_probability(0.3, seed)
                    .on(&[scalekit::testing::Operation::WriteBatch])
                    .build()
                    .unwrap();
                let layer = Arc::new(
                    WriteBehind::builder(store)
                        .batch_size(4)
                        .max_delay(Duration::from_millis(1))
                        .retries(60, Duration::from_micros(100), Duration::from_millis(1))
                        .build()
                        .unwrap(),
                );
                let handles: Vec<_> = tasks
                    .into_iter()
                    .enumerate()
                    .map(|(t, ops)| {
                        let layer = Arc::clone(&layer);
                        tokio::spawn(async move {
                            let base = t as u64 * 100;
                            let mut model = HashMap::new();
                            for op in ops {
                                match op {
                                    Op::Put(k, v) => {
                                        layer.put(base + k, v.to_string()).await.unwrap();
                                        model.insert(base + k, v.to_string());
                                    }
                                    Op::Delete(k) => {
                                        layer.delete(&(base + k)).await.unwrap();
                                        model.remove(&(base + k));
                                    }
                                    Op::Get(k) => {
                                        let got = layer.get(&(base + k)).await.unwrap();
                                        assert_eq!(got, model.get(&(base + k)).cloned());
                                    }
                                    Op::Flush => layer.flush().await.unwrap(),
                                }
                            }
                            model
                        })
                    })
                    .collect();
                let mut model = HashMap::new();
                for handle in handles {
                    model.extend(handle.await.unwrap());
                }
                layer.flush().await.unwrap();
                assert_eq!(layer.stats().dead_lettered, 0);
                for t in 0..4u64 {
                    for k in 0..8u64 {
                        let key = t * 100 + k;
                        assert_eq!(
                            layer.get_ref().get_ref().get(&key).await.unwrap(),
                            model.get(&key).cloned(),
                            "key {key} in the store"
                        );
                    }
                }
            });
        }
    }
}
