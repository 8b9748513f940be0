//! The event bus in one run: a store whose writes become events, two
//! subscription groups (a search index and an email sender whose handler
//! fails for one customer), dead letters parked per key, and their replay.
//!
//! `cargo run --example events`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use scalekit::events::Publishing;
use scalekit::events::{Change, Event, EventBus, RetryPolicy};
use scalekit::{MemoryStore, Store};

type Orders = Change<u64, String>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> scalekit::Result<()> {
    let bus = EventBus::new();
    let changes = bus.topic::<Orders>("orders.changes")?;
    let orders = Publishing::new(MemoryStore::<u64, String>::new(), changes.clone());

    // A search index: every change, in order per order id.
    let index: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let search = {
        let index = Arc::clone(&index);
        changes
            .group("search-index")
            .workers(2)
            .subscribe(move |event: Event<Orders>| {
                let index = Arc::clone(&index);
                async move {
                    let change = event.into_payload();
                    let mut index = index.lock().unwrap();
                    match change.value {
                        Some(text) => index.insert(change.key, text),
                        None => index.remove(&change.key),
                    };
                    Ok(())
                }
            })?
    };

    // An email sender whose mail server refuses order 2 for now.
    let server_down_for_2 = Arc::new(AtomicBool::new(true));
    let emails = {
        let down = Arc::clone(&server_down_for_2);
        changes
            .group("email")
            .retries(RetryPolicy {
                max_retries: 2,
                ..RetryPolicy::default()
            })
            .subscribe(move |event: Event<Orders>| {
                let down = Arc::clone(&down);
                async move {
                    let change = event.payload();
                    if change.key == 2 && down.load(Ordering::Relaxed) {
                        return Err(format!("mail server refused order {}", change.key).into());
                    }
                    println!("email  order {} -> {:?}", change.key, change.value);
                    Ok(())
                }
            })?
    };

    orders.put(1, "2 coffees".into()).await?;
    orders.put(2, "1 tea".into()).await?;
    orders.put(2, "1 tea, 1 cake".into()).await?; // parked behind order 2's dead letter
    orders.put(3, "1 juice".into()).await?;
    orders.delete(&1).await?;

    search.caught_up().await;
    emails.caught_up().await;
    println!("\nsearch index: {:?}", index.lock().unwrap());
    println!("email stats:  {:?}", emails.stats());
    for letter in emails.dead_letters() {
        println!(
            "dead letter  offset {} order {} after {} attempts: {}",
            letter.event.offset(),
            letter.event.payload().key,
            letter.attempts,
            letter.error
        );
    }

    server_down_for_2.store(false, Ordering::Relaxed);
    let replay = emails.replay_dead_letters().await;
    println!("\nreplayed: {replay:?} (order 2's emails, in order)");

    bus.shutdown().await;
    println!("search stats: {:?}", search.stats());
    assert_eq!(orders.get(&2).await?, Some("1 tea, 1 cake".to_string()));
    Ok(())
}
