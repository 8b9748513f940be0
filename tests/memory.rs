//! MemoryStore and the dyn twin: the whole conformance suite and the model test.

use std::sync::Arc;

use scalekit::testing::{conformance, FaultyStore, ModelTest, Operation};
use scalekit::{DynStore, MemoryStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_conformance_suite_with_string_keys_and_byte_values() {
    conformance::run_all(Arc::new(MemoryStore::<String, Vec<u8>>::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_passes_the_conformance_suite_with_integer_keys_and_string_values() {
    conformance::run_all(Arc::new(MemoryStore::<i64, String>::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_store_passes_the_conformance_suite_while_its_lease_is_held() {
    let store = Arc::new(MemoryStore::<String, Vec<u8>>::new());
    let lease = scalekit::lease::Lease::new(
        Arc::clone(&store),
        "conformance/lease",
        std::time::Duration::from_secs(600),
    );
    assert!(lease.try_acquire().await.unwrap());
    conformance::run_all(Arc::new(scalekit::lease::Fenced::new(store, lease.fence()))).await;
}

#[tokio::test]
async fn memory_store_agrees_with_the_model() {
    ModelTest::new()
        .cases(256)
        .run(&MemoryStore::<u64, String>::new())
        .await;
}

#[tokio::test]
async fn memory_store_agrees_with_the_model_under_injected_faults() {
    let faulty = FaultyStore::builder(MemoryStore::<u64, u32>::new())
        .fail_with_probability(0.25, 7)
        .build()
        .unwrap();
    ModelTest::new().cases(128).run(&faulty).await;
    let calls = faulty.calls();
    assert!(
        calls.injected_faults > 50,
        "faults were injected: {calls:?}"
    );
    assert!(calls.total() > calls.injected_faults);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arc_dyn_store_is_a_store_and_passes_the_suite() {
    let erased: Arc<dyn DynStore<Key = String, Value = String>> =
        MemoryStore::<String, String>::new().into_dyn();
    conformance::run_all(Arc::new(erased)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boxed_dyn_store_is_a_store_and_passes_the_suite() {
    let boxed: Box<dyn DynStore<Key = u64, Value = Vec<u8>>> =
        Box::new(MemoryStore::<u64, Vec<u8>>::new());
    conformance::run_all(Arc::new(boxed)).await;
}

#[tokio::test]
async fn layers_compose_over_a_dyn_store_and_a_dyn_store_over_layers() {
    // A layer (FaultyStore) over an erased store...
    let erased = MemoryStore::<u64, String>::new().into_dyn();
    let layered = FaultyStore::new(erased);
    ModelTest::new().cases(32).run(&layered).await;
    assert!(layered.calls().total() > 0);
    // ...and an erased layer, mixed with a plain store in one collection.
    let stores: Vec<Arc<dyn DynStore<Key = u64, Value = String>>> =
        vec![layered.into_dyn(), Arc::new(MemoryStore::new())];
    for (n, store) in stores.iter().enumerate() {
        store.put(n as u64, format!("v{n}")).await.unwrap();
        assert_eq!(
            Store::get(store, &(n as u64)).await.unwrap(),
            Some(format!("v{n}"))
        );
    }
}

#[tokio::test]
async fn a_shared_arc_store_is_one_store() {
    let store = Arc::new(MemoryStore::<u64, u64>::new());
    let other_handle = Arc::clone(&store);
    store.put(1, 10).await.unwrap();
    assert_eq!(other_handle.get(&1).await.unwrap(), Some(10));
    assert_eq!(store.len(), 1);
}

#[tokio::test]
async fn memory_store_positions_count_writes_and_an_empty_batch_keeps_the_position() {
    let store = MemoryStore::<u64, u64>::new();
    assert_eq!(store.position().get(), 0);
    let p1 = store.put(1, 1).await.unwrap();
    let p2 = store.delete(&1).await.unwrap();
    assert_eq!((p1.get(), p2.get()), (1, 2));
    assert_eq!(store.write_batch(Vec::new()).await.unwrap(), p2);
    assert!(store.is_empty());
}

#[tokio::test]
async fn faults_can_target_reads_only() {
    let store = FaultyStore::builder(MemoryStore::<u64, u64>::new())
        .fail_every(1)
        .on(&Operation::READS)
        .build()
        .unwrap();
    store.put(1, 1).await.expect("writes are not faulted");
    let err = store.get(&1).await.unwrap_err();
    assert!(FaultyStore::<MemoryStore<u64, u64>>::is_injected(&err));
}
