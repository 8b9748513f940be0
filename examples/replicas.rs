//! Read replicas without servers: a simulated primary with three replicas
//! (one slow, one that stalls), routed by `ReplicaSet`.
//!
//! `cargo run --example replicas`
//!
//! Shows: reads spread by latency (the slow replica gets few), a stalled
//! replica taken out of rotation by its lag, read-your-writes with a
//! session and with a token that travels as text, and the stats.

use std::sync::Arc;
use std::time::Duration;

use scalekit::replica::simulated::SimulatedPrimary;
use scalekit::replica::{MaxLag, ReplicaSet, Session};
use scalekit::testing::FaultyStore;
use scalekit::{Position, Store};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> scalekit::Result<()> {
    let primary = SimulatedPrimary::<u64, String>::new();
    // Each replica applies the primary's writes 5 ms after they commit;
    // "slow" also answers reads 10× slower than the others.
    let replica = |latency: Duration| {
        let primary = primary.clone();
        async move {
            let copy = primary.replica(Duration::from_millis(5)).await?;
            let answering = FaultyStore::builder(copy.clone())
                .latency(latency)
                .build()?;
            Ok::<_, scalekit::Error>((Arc::new(answering), copy))
        }
    };
    let (fast, _) = replica(Duration::from_micros(200)).await?;
    let (slow, _) = replica(Duration::from_millis(2)).await?;
    let (stalling, stalling_copy) = replica(Duration::from_micros(200)).await?;

    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("fast", fast)
        .replica("slow", slow)
        .replica("stalling", stalling)
        .max_lag(MaxLag {
            positions: None,
            time: Some(Duration::from_millis(200)),
        })
        .poll_interval(Duration::from_millis(20))
        .build()
        .await?;

    for id in 0..100 {
        set.put(id, format!("user {id}")).await?;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Plain reads: spread by peak-EWMA latency.
    for id in 0..600 {
        set.get(&(id % 100)).await?;
    }
    print_reads("600 reads, all replicas current", &set);

    // One replica stalls: past max_lag it gets no plain reads.
    stalling_copy.set_delay(Duration::from_secs(3600));
    for id in 100..130 {
        set.put(id, format!("user {id}")).await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    set.refresh().await;
    for id in 0..300 {
        set.get(&(id % 100)).await?;
    }
    print_reads("300 more reads, `stalling` past max_lag", &set);

    // Read-your-writes: a session reads its own write at once, from a
    // replica that has it (or the primary if none does in time).
    let alice = Session::new(set.clone());
    alice.put(7, "alice's new name".into()).await?;
    println!(
        "session reads its own write: {:?}",
        alice.get(&7).await?.unwrap_or_default()
    );

    // A token travels as text (a cookie, a job) and works in another
    // process's replica set over the same servers.
    let cookie = alice.token().to_string();
    let resumed = Session::resume(set.clone(), cookie.parse::<Position>().unwrap());
    println!(
        "resumed from token {cookie}: {:?}",
        resumed.get(&7).await?.unwrap_or_default()
    );

    let stats = set.stats();
    println!(
        "reads {}, writes {}, spills to primary {}, token waits {} ({:?})",
        stats.reads,
        stats.writes,
        stats.spills_to_primary,
        stats.token_waits,
        stats.token_wait_time
    );
    for replica in &stats.replicas {
        println!(
            "  {:9} lag {:>3} positions / {:>6.0?}, latency estimate {:>8.2?}, lagging: {}",
            replica.name,
            replica.lag_positions,
            replica.lag_time,
            replica.latency_estimate,
            replica.lagging
        );
    }
    Ok(())
}

fn print_reads<P, R>(title: &str, set: &ReplicaSet<P, R>)
where
    P: scalekit::replica::Positioned,
    R: scalekit::replica::Positioned<Key = P::Key, Value = P::Value>,
{
    let reads: Vec<String> = set
        .stats()
        .replicas
        .iter()
        .map(|r| format!("{} {}", r.name, r.reads))
        .collect();
    println!("{title}: {}", reads.join(", "));
}
