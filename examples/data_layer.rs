//! The main job, on the embedded default: a users table behind the `Store`
//! trait, on SQLite, with no server to run.
//!
//! ```text
//! cargo run --release --example data_layer
//! ```
//!
//! It stores users with their own codec, writes them one by one and in a
//! batch, reads them back singly and in one round trip, survives a restart,
//! and prints what it saw. Later levels of the playbook (caches, replicas,
//! shards, CQRS, events) will wrap this same store.

use std::time::Instant;

use scalekit::codec::{Codec, CodecError};
use scalekit::store::SqliteStore;
use scalekit::{Position, Store, Write};

/// A row of the users table.
#[derive(Debug, Clone, PartialEq)]
struct User {
    name: String,
    email: String,
}

/// How a `User` is stored: `name`, a NUL byte, `email`.
impl Codec for User {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if self.name.contains('\0') {
            return Err("a user name cannot hold a NUL byte".into());
        }
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        out.extend_from_slice(self.email.as_bytes());
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let split = bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or("a stored user has no separator")?;
        Ok(User {
            name: std::str::from_utf8(&bytes[..split])?.to_string(),
            email: std::str::from_utf8(&bytes[split + 1..])?.to_string(),
        })
    }
}

fn user(name: &str) -> User {
    User {
        name: name.to_string(),
        email: format!("{}@example.com", name.to_lowercase()),
    }
}

async fn open(path: &std::path::Path) -> scalekit::Result<SqliteStore<u64, User>> {
    SqliteStore::builder()
        .path(path)
        .table("users")
        .build()
        .await
}

#[tokio::main]
async fn main() -> scalekit::Result<()> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("app.db");
    println!(
        "scalekit data layer, level 1: one database (SQLite at {})\n",
        path.display()
    );

    let users = open(&path).await?;

    // Writes: one at a time, then a batch in one transaction.
    let mut last = Position::ZERO;
    for (id, name) in [(1, "Ada"), (2, "Grace"), (3, "Edsger")] {
        last = users.put(id, user(name)).await?;
        println!("put    user {id:<3} -> position {last}");
    }
    let batch: Vec<Write<u64, User>> = (4..=1_000)
        .map(|id| Write::Put(id, user(&format!("User{id}"))))
        .chain([Write::Delete(3)])
        .collect();
    let started = Instant::now();
    let batch_position = users.write_batch(batch).await?;
    println!(
        "batch  997 puts + 1 delete in one transaction -> position {batch_position} ({:.1} ms)",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(batch_position > last, "positions grow");

    // Reads: one key, then many in one round trip.
    let ada = users.get(&1).await?;
    println!("\nget    user 1   -> {ada:?}");
    let ids = [2, 3, 500, 9_999];
    let found = users.get_many(&ids).await?;
    for (id, row) in ids.iter().zip(&found) {
        match row {
            Some(u) => println!("get_many user {id:<5} -> {} <{}>", u.name, u.email),
            None => println!("get_many user {id:<5} -> absent"),
        }
    }

    // Bad input is a typed error, not a panic, and writes nothing.
    let bad = User {
        name: "nul\0byte".into(),
        email: String::new(),
    };
    match users.put(42, bad).await {
        Err(e) => println!("\nrejected a bad row: {e}"),
        Ok(_) => unreachable!("the codec refuses NUL bytes in names"),
    }

    // Durability: close, reopen, and the data is still there.
    users.close().await;
    let reopened = open(&path).await?;
    let all: Vec<u64> = (1..=1_000).collect();
    let present = reopened.get_many(&all).await?.iter().flatten().count();
    let after_restart = reopened.put(1, user("Ada Lovelace")).await?;
    println!(
        "\nafter a restart: {present} users present, next write at position {after_restart} (> {batch_position})"
    );
    assert_eq!(present, 999);
    assert!(after_restart > batch_position);

    println!("\n{:<12} {:>10}", "table", "rows");
    println!("{:<12} {:>10}", "users", present);
    reopened.close().await;
    Ok(())
}
