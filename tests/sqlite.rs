//! SqliteStore: the conformance suite, the model test, and its failure modes.
#![cfg(feature = "sqlite")]

use std::sync::Arc;

use scalekit::store::{SqliteStore, Synchronous};
use scalekit::testing::{conformance, FaultyStore, ModelTest};
use scalekit::{Error, ErrorKind, Store, Write};

async fn file_store<K, V>(dir: &tempfile::TempDir, table: &str) -> SqliteStore<K, V> {
    SqliteStore::builder()
        .path(dir.path().join("test.db"))
        .table(table)
        .build()
        .await
        .expect("open sqlite store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store: SqliteStore<String, Vec<u8>> = file_store(&dir, "suite").await;
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_store_passes_the_conformance_suite_with_integer_keys() {
    let store: SqliteStore<i64, String> = SqliteStore::builder().in_memory().build().await.unwrap();
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_agrees_with_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let store: SqliteStore<u64, String> = file_store(&dir, "model").await;
    ModelTest::new().cases(64).run(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_agrees_with_the_model_under_injected_faults() {
    let dir = tempfile::tempdir().unwrap();
    let store: SqliteStore<u64, u64> = file_store(&dir, "faults").await;
    let faulty = FaultyStore::builder(store)
        .fail_with_probability(0.2, 99)
        .build()
        .unwrap();
    ModelTest::new().cases(48).run(&faulty).await;
    assert!(faulty.calls().injected_faults > 0);
}

#[tokio::test]
async fn data_and_positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let store: SqliteStore<u64, String> = file_store(&dir, "users").await;
        store.put(1, "ada".into()).await.unwrap();
        let p = store.put(2, "grace".into()).await.unwrap();
        store.close().await;
        p
    };
    let store: SqliteStore<u64, String> = file_store(&dir, "users").await;
    assert_eq!(store.get(&1).await.unwrap(), Some("ada".into()));
    let after = store.delete(&1).await.unwrap();
    assert!(
        after > before,
        "positions keep growing across restarts ({after} > {before})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_one_new_file_at_once_all_open_and_share_it() {
    // As app processes starting together do: each opens its own
    // connections to a file nobody created yet.
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let path = dir.path().join("fresh.db");
                tokio::spawn(
                    async move { SqliteStore::<u64, u64>::builder().path(path).build().await },
                )
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(
                open.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}")),
            );
        }
        for (n, store) in stores.iter().enumerate() {
            store.put(n as u64, round).await.unwrap();
        }
        for n in 0..stores.len() {
            assert_eq!(stores[0].get(&(n as u64)).await.unwrap(), Some(round));
        }
    }
}

#[tokio::test]
async fn tables_in_one_file_are_separate_stores() {
    let dir = tempfile::tempdir().unwrap();
    let users: SqliteStore<u64, String> = file_store(&dir, "users").await;
    let posts: SqliteStore<u64, String> = file_store(&dir, "posts").await;
    users.put(1, "ada".into()).await.unwrap();
    assert_eq!(posts.get(&1).await.unwrap(), None);
    assert_eq!(users.table(), "users");
}

#[tokio::test]
async fn an_undecodable_row_is_a_codec_error() {
    let dir = tempfile::tempdir().unwrap();
    let raw: SqliteStore<String, Vec<u8>> = file_store(&dir, "mixed").await;
    let text: SqliteStore<String, String> = file_store(&dir, "mixed").await;
    conformance::undecodable_values_are_codec_errors(&raw, &text).await;
    raw.put("eight".into(), b"8 bytes!".to_vec()).await.unwrap();
    let ints: SqliteStore<String, u64> = file_store(&dir, "mixed").await;
    raw.put("three".into(), vec![1, 2, 3]).await.unwrap();
    assert!(matches!(
        ints.get(&"three".to_string()).await.unwrap_err().kind(),
        ErrorKind::Codec { .. }
    ));
    assert_eq!(
        ints.get(&"eight".to_string()).await.unwrap(),
        Some(u64::from_be_bytes(*b"8 bytes!"))
    );
}

#[tokio::test]
async fn a_closed_store_answers_unavailable_and_loses_nothing_written_before() {
    let dir = tempfile::tempdir().unwrap();
    let store: SqliteStore<u64, u64> = file_store(&dir, "closing").await;
    store.put(1, 1).await.unwrap();
    store.close().await;
    store.close().await;
    assert!(matches!(
        store.get(&1).await.map_err(Error::into_kind),
        Err(ErrorKind::Unavailable { .. })
    ));
    assert!(matches!(
        store.put(2, 2).await.map_err(Error::into_kind),
        Err(ErrorKind::Unavailable { .. })
    ));
    assert!(matches!(
        store
            .write_batch(vec![Write::Delete(1)])
            .await
            .map_err(Error::into_kind),
        Err(ErrorKind::Unavailable { .. })
    ));
    let reopened: SqliteStore<u64, u64> = file_store(&dir, "closing").await;
    assert_eq!(reopened.get(&1).await.unwrap(), Some(1));
    assert_eq!(reopened.get(&2).await.unwrap(), None);
}

#[tokio::test]
async fn a_file_that_cannot_be_opened_is_unavailable_at_build() {
    let err = SqliteStore::<u64, u64>::builder()
        .path("/nonexistent-dir/deeper/x.db")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unavailable {
                component: "SqliteStore",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = SqliteStore::<u64, u64>::builder()
        .path(&path)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Backend {
                backend: "sqlite",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn bad_configurations_are_config_errors_at_build() {
    let no_location = SqliteStore::<u64, u64>::builder()
        .build()
        .await
        .unwrap_err();
    assert!(no_location
        .to_string()
        .contains(".path(..) or .in_memory()"));

    let bad_table = SqliteStore::<u64, u64>::builder()
        .in_memory()
        .table("users; DROP TABLE x")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(bad_table.kind(), ErrorKind::Config { .. }));

    let readers_in_memory = SqliteStore::<u64, u64>::builder()
        .in_memory()
        .readers(2)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(readers_in_memory.kind(), ErrorKind::Config { .. }));

    let dir = tempfile::tempdir().unwrap();
    let zero_length = SqliteStore::<u64, u64>::builder()
        .in_memory()
        .max_value_bytes(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(zero_length.kind(), ErrorKind::Config { .. }));

    let too_many = SqliteStore::<u64, u64>::builder()
        .path(dir.path().join("x.db"))
        .readers(1_000)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(too_many.kind(), ErrorKind::Config { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_group_committed_and_each_gets_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SqliteStore<u64, u64>> = Arc::new(
        SqliteStore::builder()
            .path(dir.path().join("group.db"))
            .synchronous(Synchronous::Full)
            .readers(1)
            .build()
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..64u64)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put(n, n * 10).await })
        })
        .collect();
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await.unwrap().unwrap());
    }
    let keys: Vec<u64> = (0..64).collect();
    let values = store.get_many(&keys).await.unwrap();
    assert!(values
        .iter()
        .enumerate()
        .all(|(n, v)| *v == Some(n as u64 * 10)));
    positions.sort();
    positions.dedup();
    assert!(
        positions.len() <= 64,
        "writers that share a commit share its position"
    );
}

#[tokio::test]
async fn a_failing_batch_in_a_group_does_not_fail_its_neighbours() {
    // A value over the length limit fails inside the group's transaction
    // while the writes queued beside it succeed.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SqliteStore<u64, Vec<u8>>> = Arc::new(
        SqliteStore::builder()
            .path(dir.path().join("limits.db"))
            .max_value_bytes(1024)
            .build()
            .await
            .unwrap(),
    );
    let huge = vec![7u8; 4096];
    let big_store = Arc::clone(&store);
    let failing = tokio::spawn(async move { big_store.put(1, huge).await });
    let fine: Vec<_> = (2..10u64)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.put(n, vec![n as u8]).await })
        })
        .collect();
    let err = failing.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Refused {
                backend: "sqlite",
                ..
            }
        ),
        "{err}"
    );
    for task in fine {
        task.await.unwrap().expect("a neighbour's write succeeds");
    }
    assert_eq!(
        store.get(&1).await.unwrap(),
        None,
        "the failed write left nothing"
    );
    assert_eq!(store.get(&9).await.unwrap(), Some(vec![9]));
}

#[tokio::test]
async fn debug_output_names_the_store() {
    let store: SqliteStore<u64, u64> = SqliteStore::builder().in_memory().build().await.unwrap();
    let text = format!("{store:?}");
    assert!(
        text.contains("SqliteStore") && text.contains("scalekit_kv"),
        "{text}"
    );
}

#[cfg(feature = "serde")]
#[tokio::test]
async fn serde_types_are_stored_as_json_and_bad_json_is_a_codec_error() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Profile {
        name: String,
        followers: u32,
    }
    impl scalekit::codec::JsonEncoded for Profile {}

    let dir = tempfile::tempdir().unwrap();
    let profiles: SqliteStore<u64, Profile> = file_store(&dir, "profiles").await;
    let ada = Profile {
        name: "ada".into(),
        followers: 1843,
    };
    profiles.put(1, ada.clone()).await.unwrap();
    assert_eq!(profiles.get(&1).await.unwrap(), Some(ada));

    let raw: SqliteStore<u64, Vec<u8>> = file_store(&dir, "profiles").await;
    raw.put(2, b"{\"name\": 5}".to_vec()).await.unwrap();
    assert!(matches!(
        profiles.get(&2).await.map_err(Error::into_kind),
        Err(ErrorKind::Codec { .. })
    ));

    let token = scalekit::Position::new(77);
    let json = serde_json::to_string(&token).unwrap();
    assert_eq!(json, "77");
    assert_eq!(
        serde_json::from_str::<scalekit::Position>(&json).unwrap(),
        token
    );
}

#[tokio::test(flavor = "current_thread")]
async fn sqlite_work_never_blocks_the_runtime_thread() {
    // On a one-thread runtime, a ticker keeps ticking while a large batch
    // commits: the SQLite work runs on the store's own threads.
    let dir = tempfile::tempdir().unwrap();
    let store: SqliteStore<u64, Vec<u8>> = file_store(&dir, "blocking").await;
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(std::time::Duration::from_millis(1));
            loop {
                interval.tick().await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    let batch = (0..100_000u64)
        .map(|k| Write::Put(k, vec![1u8; 64]))
        .collect();
    store.write_batch(batch).await.unwrap();
    let took = started.elapsed();
    let ticked = ticks.load(std::sync::atomic::Ordering::Relaxed);
    ticker.abort();
    assert!(
        took < std::time::Duration::from_millis(20) || ticked >= 5,
        "the runtime thread was blocked: {ticked} ticks in {took:?}"
    );
}

#[tokio::test]
async fn a_store_lists_its_entries_for_moving_data_and_a_resharding_over_sqlite_loses_nothing() {
    use scalekit::shard::BucketSharded;
    use scalekit::store::Scan;

    let dir = tempfile::tempdir().unwrap();
    let listed = file_store::<u64, String>(&dir, "listed").await;
    listed
        .write_batch((0..50).map(|k| Write::Put(k, format!("v{k}"))).collect())
        .await
        .unwrap();
    listed.delete(&7).await.unwrap();
    let mut entries = listed.entries().await.unwrap();
    entries.sort();
    assert_eq!(entries.len(), 49);
    assert_eq!(entries[0], (0, "v0".to_string()));

    // Three SQLite files, two in use, resharded to all three.
    let mut shards = Vec::new();
    for n in 0..3 {
        shards.push(Arc::new(
            file_store::<u64, String>(&dir, &format!("shard{n}")).await,
        ));
    }
    let meta = scalekit::MemoryStore::<String, Vec<u8>>::new().into_dyn();
    let store = BucketSharded::open(shards.clone(), meta, "users", 64, 2)
        .await
        .unwrap();
    for key in 0..300u64 {
        store.put(key, format!("u{key}")).await.unwrap();
    }
    store.reshard(&[0, 1, 2]).await.unwrap();
    let mut total = 0;
    for shard in &shards {
        total += shard.entries().await.unwrap().len();
    }
    assert_eq!(total, 300, "each key on one shard");
    for key in 0..300u64 {
        assert_eq!(store.get(&key).await.unwrap(), Some(format!("u{key}")));
    }
}

#[tokio::test]
async fn a_failing_batch_alone_in_its_group_commit_leaves_nothing_applied() {
    // All or nothing, as the contract says, also on the path where the
    // batch is the only job of its group (no neighbour, no savepoint).
    let dir = tempfile::tempdir().unwrap();
    let store: SqliteStore<u64, Vec<u8>> = SqliteStore::builder()
        .path(dir.path().join("alone.db"))
        .max_value_bytes(1024)
        .build()
        .await
        .unwrap();
    for round in 0..20u64 {
        let batch = vec![
            Write::Put(round * 10 + 1, vec![1]),
            Write::Put(round * 10 + 2, vec![7u8; 4096]), // over the limit
            Write::Put(round * 10 + 3, vec![3]),
        ];
        let error = store.write_batch(batch).await.unwrap_err();
        assert!(matches!(error.kind(), ErrorKind::Refused { .. }), "{error}");
        for k in 1..=3 {
            assert_eq!(
                store.get(&(round * 10 + k)).await.unwrap(),
                None,
                "round {round}: write {k} of the failed batch was applied"
            );
        }
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_queues_are_bounded_and_callers_wait_past_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<SqliteStore<u64, u64>> = Arc::new(
        SqliteStore::builder()
            .path(dir.path().join("bounded.db"))
            .max_queued(4)
            .build()
            .await
            .unwrap(),
    );
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (store, most, done) = (Arc::clone(&store), Arc::clone(&most), Arc::clone(&done));
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most.fetch_max(store.queued(), std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let writers: Vec<_> = (0..64u64)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..20 {
                    store.put(w * 100 + i, i).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=4).contains(&most),
        "at most 4 calls queued, saw {most}"
    );
    assert_eq!(
        store.get(&6319).await.unwrap(),
        Some(19),
        "every write landed"
    );
    let error = SqliteStore::<u64, u64>::builder()
        .path(dir.path().join("zero.db"))
        .max_queued(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
}
