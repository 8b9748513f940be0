//! The caching level of the playbook over embedded SQLite: a read-through
//! cache in front of a table, and a journalled write-behind buffer that
//! survives a crash.
//!
//! `cargo run --release --example caching`

use std::time::{Duration, Instant};

use scalekit::cache::{MemoryTier, ReadThrough, SyncPolicy, WhenFull, WriteBehind};
use scalekit::store::SqliteStore;
use scalekit::Store;

async fn table(dir: &std::path::Path, name: &str) -> scalekit::Result<SqliteStore<u64, String>> {
    SqliteStore::builder()
        .path(dir.join("app.db"))
        .table(name)
        .build()
        .await
}

#[tokio::main]
async fn main() -> scalekit::Result<()> {
    let dir = std::env::temp_dir().join(format!("scalekit-caching-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| scalekit::Error::backend("example", "mkdir", e))?;

    // Read-through: concurrent misses of a key make one load; a write wins
    // over any load that started before it.
    let products = table(&dir, "products").await?;
    for id in 0..1_000 {
        products.put(id, format!("product #{id}")).await?;
    }
    let cached = ReadThrough::builder(products, MemoryTier::with_capacity(500)?)
        .negative_ttl(Duration::from_secs(30))
        .refresh_after(Duration::from_secs(60))
        .build()?;
    let start = Instant::now();
    for round in 0..20u64 {
        for id in 0..200 {
            let _ = cached.get(&((id * 7 + round) % 250)).await?;
        }
    }
    let stats = cached.stats();
    println!(
        "read-through: {} reads in {:?}, {} hits, {} loads from SQLite ({:.0}% hits)",
        stats.hits + stats.misses,
        start.elapsed(),
        stats.hits,
        stats.loads,
        100.0 * stats.hits as f64 / (stats.hits + stats.misses) as f64
    );
    cached.put(3, "product #3, renamed".into()).await?; // to SQLite, then the tier drops it
    println!("after a write: {:?}", cached.get(&3).await?);

    // Write-behind with a journal: puts return once buffered and logged;
    // batches reach SQLite later; a crash loses nothing acknowledged.
    let events = WriteBehind::builder(table(&dir, "page_views").await?)
        .batch_size(500)
        .max_delay(Duration::from_millis(50))
        .max_buffered(100_000, WhenFull::Wait)
        .journal(
            dir.join("journal"),
            SyncPolicy::Interval(Duration::from_millis(2)),
        )
        .build()?;
    let start = Instant::now();
    for i in 0..20_000u64 {
        events.put(i % 1_000, format!("view {i}")).await?; // many writes per key coalesce
    }
    let acknowledged = start.elapsed();
    events.flush().await?;
    let stats = events.stats();
    println!(
        "write-behind: {} puts acknowledged in {:?}; SQLite took {} writes in {} batches ({} coalesced)",
        stats.acknowledged, acknowledged, stats.written, stats.batches, stats.coalesced
    );
    println!("last value of key 999: {:?}", events.get(&999).await?);
    events.shutdown().await;

    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
