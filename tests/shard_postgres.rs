//! Sharding over real PostgreSQL: four databases on the local server
//! (created here when missing), resharded to five while writers keep
//! writing, then checked key by key.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use scalekit::shard::BucketSharded;
use scalekit::store::PostgresStore;
use scalekit::Store;

fn server_url(database: &str) -> String {
    let base = std::env::var("SCALEKIT_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => base,
    }
}

/// Creates the shard databases that do not exist yet.
async fn databases(count: usize) -> Vec<String> {
    let (client, connection) =
        tokio_postgres::connect(&server_url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL on 127.0.0.1:5432 (see .ci/run)");
    tokio::spawn(connection);
    let mut names = Vec::new();
    for n in 0..count {
        let name = format!("scalekit_shard_{n}");
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .unwrap()
            .is_some();
        if !exists {
            // Two test processes may race to create it: either wins.
            let _ = client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await;
        }
        names.push(name);
    }
    names
}

type Shard = Arc<PostgresStore<u64, String>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_postgres_databases_are_resharded_to_five_under_concurrent_writes() {
    let table = common::unique_name("t_shard", '_');
    let mut shards: Vec<Shard> = Vec::new();
    for database in databases(5).await {
        shards.push(Arc::new(
            PostgresStore::builder()
                .url(server_url(&database))
                .table(&table)
                .pool_size(4)
                .build()
                .await
                .unwrap(),
        ));
    }
    let meta = PostgresStore::<String, Vec<u8>>::builder()
        .url(server_url("test"))
        .table(format!("{table}_meta"))
        .build()
        .await
        .unwrap();
    let meta = Arc::new(meta);
    let store = BucketSharded::open(shards.clone(), meta.clone().into_dyn(), "users", 256, 4)
        .await
        .unwrap();
    let mut expected: HashMap<u64, Option<String>> = HashMap::new();
    store
        .write_batch(
            (0..1_000u64)
                .map(|k| scalekit::Write::Put(k, format!("v{k}")))
                .collect(),
        )
        .await
        .unwrap();
    for key in 0..1_000u64 {
        expected.insert(key, Some(format!("v{key}")));
    }
    assert_eq!(
        shards[4].entries_len().await,
        0,
        "the fifth is not used yet"
    );

    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut last = HashMap::new();
                for n in 0..150u64 {
                    // Writer w owns the keys equal to w modulo 3.
                    let key = (n * 3 + w) % 1_000;
                    if n % 5 == 4 {
                        store.delete(&key).await.unwrap();
                        last.insert(key, None);
                    } else {
                        store.put(key, format!("w{w}-{n}")).await.unwrap();
                        last.insert(key, Some(format!("w{w}-{n}")));
                    }
                }
                last
            })
        })
        .collect();
    store.reshard(&[0, 1, 2, 3, 4]).await.unwrap();
    for writer in writers {
        expected.extend(writer.await.unwrap());
    }
    assert!(
        shards[4].entries_len().await > 0,
        "the fifth took its share"
    );
    for (key, value) in &expected {
        let read = store.get(key).await.unwrap();
        assert_eq!(&read, value, "key {key}");
        let mut holders = 0;
        for shard in &shards {
            holders += usize::from(shard.get(key).await.unwrap().is_some());
        }
        assert_eq!(
            holders,
            usize::from(read.is_some()),
            "key {key} lives on one shard"
        );
    }
    drop(store);
    for shard in shards {
        Arc::try_unwrap(shard).unwrap().drop_table().await.unwrap();
    }
    Arc::try_unwrap(meta).unwrap().drop_table().await.unwrap();
}

trait EntriesLen {
    async fn entries_len(&self) -> usize;
}

impl EntriesLen for Shard {
    async fn entries_len(&self) -> usize {
        scalekit::store::Scan::entries(&**self).await.unwrap().len()
    }
}
