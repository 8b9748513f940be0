//! PostgresStore against the real server on 127.0.0.1:5432, database `test`
//! (override with SCALEKIT_POSTGRES_URL).
#![cfg(feature = "postgres")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use scalekit::store::PostgresStore;
use scalekit::testing::{conformance, FaultyStore, ModelTest};
use scalekit::{Error, ErrorKind, Store, Write};

fn url() -> String {
    std::env::var("SCALEKIT_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A table name no other test (or earlier run) uses.
fn fresh_table(purpose: &str) -> String {
    common::unique_name(&format!("t_{purpose}"), '_')
}

async fn store<K, V>(table: &str) -> PostgresStore<K, V> {
    PostgresStore::builder()
        .url(url())
        .table(table)
        .pool_size(8)
        .build()
        .await
        .expect("connect to PostgreSQL on 127.0.0.1:5432 (see .ci/run)")
}

async fn drop_table(table: &str) {
    store::<Vec<u8>, Vec<u8>>(table)
        .await
        .drop_table()
        .await
        .expect("drop the test table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite() {
    let table = fresh_table("suite");
    conformance::run_all(Arc::new(store::<String, Vec<u8>>(&table).await)).await;
    drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_conformance_suite_with_integer_keys() {
    let table = fresh_table("suite_int");
    conformance::run_all(Arc::new(store::<i64, String>(&table).await)).await;
    drop_table(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_agrees_with_the_model_under_injected_faults() {
    let table = fresh_table("model");
    let faulty = FaultyStore::builder(store::<u64, String>(&table).await)
        .fail_with_probability(0.1, 5)
        .build()
        .unwrap();
    ModelTest::new().cases(48).run(&faulty).await;
    assert!(faulty.calls().injected_faults > 0);
    drop_table(&table).await;
}

#[tokio::test]
async fn positions_are_wal_positions_that_grow_across_store_instances() {
    let table = fresh_table("lsn");
    let a = store::<u64, u64>(&table).await;
    let b = store::<u64, u64>(&table).await;
    let first = a.put(1, 1).await.unwrap();
    let second = b.put(2, 2).await.unwrap();
    let third = a.write_batch(vec![Write::Delete(1)]).await.unwrap();
    assert!(
        first < second && second < third,
        "{first} < {second} < {third}"
    );
    assert_eq!(
        b.get(&1).await.unwrap(),
        None,
        "read after another instance's write"
    );
    drop_table(&table).await;
}

#[tokio::test]
async fn an_undecodable_row_is_a_codec_error() {
    let table = fresh_table("codec");
    let raw = store::<String, Vec<u8>>(&table).await;
    let text = store::<String, String>(&table).await;
    conformance::undecodable_values_are_codec_errors(&raw, &text).await;
    drop_table(&table).await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_at_build() {
    let err = PostgresStore::<u64, u64>::builder()
        .url("postgres://postgres@127.0.0.1:1/test")
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Unavailable {
                component: "PostgresStore",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_missing_database_is_unavailable_at_build() {
    let err = PostgresStore::<u64, u64>::builder()
        .url("postgres://postgres@127.0.0.1:5432/no_such_database_scalekit")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn bad_configurations_are_config_errors_at_build() {
    let cases = [
        PostgresStore::<u64, u64>::builder()
            .build()
            .await
            .unwrap_err(),
        PostgresStore::<u64, u64>::builder()
            .url("this is not a url = =")
            .build()
            .await
            .unwrap_err(),
        PostgresStore::<u64, u64>::builder()
            .url(url())
            .table("1bad")
            .build()
            .await
            .unwrap_err(),
        PostgresStore::<u64, u64>::builder()
            .url(url())
            .pool_size(0)
            .build()
            .await
            .unwrap_err(),
        PostgresStore::<u64, u64>::builder()
            .url(url())
            .wait_timeout(Duration::ZERO)
            .build()
            .await
            .unwrap_err(),
    ];
    for err in cases {
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Config {
                    component: "PostgresStore",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_closed_store_answers_unavailable() {
    let table = fresh_table("closed");
    let store = store::<u64, u64>(&table).await;
    store.put(1, 1).await.unwrap();
    store.close();
    assert!(matches!(
        store.get(&1).await.map_err(Error::into_kind),
        Err(ErrorKind::Unavailable { .. })
    ));
    assert!(matches!(
        store.put(2, 2).await.map_err(Error::into_kind),
        Err(ErrorKind::Unavailable { .. })
    ));
    drop_table(&table).await;
}

#[tokio::test]
async fn a_batch_is_one_transaction() {
    let table = fresh_table("atomic");
    let store = store::<u64, Vec<u8>>(&table).await;
    store.put(1, vec![1]).await.unwrap();
    // A value over PostgreSQL's 1 GB field limit is impossible to send
    // cheaply; a NUL-free but oversized key index entry is: btree rows are
    // capped at about 2.7 kB, so a 10 kB incompressible key fails the
    // whole statement, and the delete of key 1 in the same batch must not
    // happen.
    let mut big_key_value = Vec::with_capacity(10_000);
    let mut x: u32 = 12345;
    for _ in 0..10_000 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        big_key_value.push((x >> 16) as u8);
    }
    let raw = scalekit::store::PostgresStore::<Vec<u8>, Vec<u8>>::builder()
        .url(url())
        .table(&table)
        .build()
        .await
        .unwrap();
    let mut one = Vec::new();
    scalekit::codec::Codec::encode(&1u64, &mut one).unwrap();
    let err = raw
        .write_batch(vec![
            Write::Delete(one.clone()),
            Write::Put(big_key_value, vec![0]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Backend {
                backend: "postgres",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store.get(&1).await.unwrap(),
        Some(vec![1]),
        "nothing of the batch applied"
    );
    drop_table(&table).await;
}

#[tokio::test]
async fn a_server_that_stops_answering_makes_calls_time_out_instead_of_hanging() {
    let table = fresh_table("hung");
    let proxy = common::FreezingProxy::start("127.0.0.1:5432").await;
    let hung: PostgresStore<u64, String> = PostgresStore::builder()
        .url(format!("postgres://postgres@{}/test", proxy.addr))
        .table(&table)
        .pool_size(2)
        .call_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    hung.put(1, "one".into()).await.unwrap();
    proxy.freeze();
    let calls = tokio::time::timeout(Duration::from_secs(10), async {
        let started = tokio::time::Instant::now();
        let read = hung.get(&1).await.unwrap_err();
        let write = hung.put(2, "two".into()).await.unwrap_err();
        let position = scalekit::replica::Positioned::applied_position(&hung)
            .await
            .unwrap_err();
        (read, write, position, started.elapsed())
    })
    .await
    .expect("no call hangs on a server that stopped answering");
    for error in [&calls.0, &calls.1, &calls.2] {
        assert!(matches!(error.kind(), ErrorKind::Timeout { .. }), "{error}");
    }
    assert!(calls.3 < Duration::from_secs(3), "{:?}", calls.3);
    proxy.thaw();
    drop_table(&table).await;
}

#[tokio::test]
async fn a_server_that_accepts_and_never_answers_is_a_timeout() {
    // A listener that takes connections and says nothing stands in for a
    // hung PostgreSQL.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let store: PostgresStore<u64, String> = PostgresStore::builder()
        .url(format!("postgres://postgres@{addr}/test"))
        .create_table(false)
        .call_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), store.get(&1))
        .await
        .expect("the call does not hang");
    let error = answer.unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Timeout { .. }), "{error}");
    held.abort();
}
