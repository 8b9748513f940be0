//! The README's composed stack: four SQLite shards, each a primary with a
//! replica, writes published as events, a cache in front: five levels of
//! the playbook in one `Store`.
//!
//! `cargo run --example composed`

use std::path::Path;
use std::time::Duration;

use scalekit::cache::{MemoryTier, ReadThrough};
use scalekit::events::{Change, EventBus, Publishing};
use scalekit::replica::{simulated::SimulatedPrimary, ReplicaSet, Session};
use scalekit::shard::{Jump, Sharded};
use scalekit::store::SqliteStore;
use scalekit::Store;

/// Builds the stack in `dir`, writes a user and reads it back; returns
/// how many change events the write published.
#[rustfmt::skip] // laid out as the README shows it
pub async fn compose(dir: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    // README: begin
    let bus = EventBus::new();
    let changes = bus.topic::<Change<u64, String>>("users.changes")?;
    let mut shards = Vec::new();
    for i in 0..4 {
        let path = dir.join(format!("users-{i}.db"));
        let primary = SimulatedPrimary::over(SqliteStore::builder().path(path).build().await?);
        let replica = primary.replica(Duration::from_millis(2)).await?; // in memory, 2 ms behind
        let set = ReplicaSet::builder().primary(primary).replica("r1", replica).build().await?;
        // A session reads its own writes; Publishing turns each write into an event.
        shards.push(Publishing::new(Session::new(set), changes.clone()));
    }
    let users = Sharded::builder().shards(shards).strategy(Jump::new(4)?).build()?;
    let users = ReadThrough::builder(users, MemoryTier::with_capacity(100_000)?).build()?;

    users.put(7, "ada".to_string()).await?; // to the primary of 7's shard, then an event
    let ada = users.get(&7).await?; // from a replica that has the write, then from the cache
    // README: end
    assert_eq!(ada, Some("ada".to_string()));
    assert_eq!(users.get(&7).await?, ada);
    assert_eq!(users.stats().hits, 1, "the second read was a hit");
    Ok(changes.stats().published)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let published = compose(dir.path()).await?;
    println!("the stack read its own write back, from a replica and then from the cache; {published} change event published");
    Ok(())
}
