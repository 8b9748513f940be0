//! A replica set over real PostgreSQL: the primary on 127.0.0.1:5432 and
//! the streaming hot standby `.ci/run` makes on 127.0.0.1:5433 (override
//! with SCALEKIT_POSTGRES_URL and SCALEKIT_POSTGRES_STANDBY_URL).
//! Positions are WAL positions; lag is made by pausing the standby's
//! replay.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use scalekit::replica::{Balance, Ejection, MaxLag, Positioned, ReplicaSet};
use scalekit::store::PostgresStore;
use scalekit::{ErrorKind, Store};

fn primary_url() -> String {
    std::env::var("SCALEKIT_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn standby_url() -> String {
    std::env::var("SCALEKIT_POSTGRES_STANDBY_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".to_string())
}

/// The tests that pause the standby's replay take turns.
static STANDBY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Pg = PostgresStore<String, String>;

async fn primary(table: &str) -> Pg {
    PostgresStore::builder()
        .url(primary_url())
        .table(table)
        .build()
        .await
        .expect("connect to PostgreSQL on 127.0.0.1:5432 (see .ci/run)")
}

/// A store over `url` that never creates its table (a standby refuses
/// DDL; the primary's table arrives by replication).
async fn replica_at(url: String, table: &str) -> Pg {
    PostgresStore::builder()
        .url(url)
        .table(table)
        .create_table(false)
        .connect_timeout(Duration::from_millis(500))
        .wait_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

/// Ejects a replica after `failures` in a row, for a minute; every replica
/// may be ejected.
fn eject_for_a_minute_after(failures: u32) -> Ejection {
    Ejection {
        after_failures: failures,
        base: Duration::from_secs(60),
        max: Duration::from_secs(60),
        max_ejected_share: 1.0,
    }
}

/// Pauses or resumes WAL replay on the standby.
async fn replay(on: bool) {
    let (client, connection) = tokio_postgres::connect(&standby_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the standby on 127.0.0.1:5433 (see .ci/run)");
    tokio::spawn(connection);
    let sql = if on {
        "SELECT pg_wal_replay_resume()"
    } else {
        "SELECT pg_wal_replay_pause()"
    };
    client.batch_execute(sql).await.unwrap();
}

/// Waits until the standby has replayed everything the primary wrote so
/// far (the table it created, say).
async fn caught_up(primary: &Pg, standby: &Pg) {
    let target = primary.applied_position().await.unwrap();
    for _ in 0..200 {
        if standby.applied_position().await.unwrap() >= target {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the standby did not catch up with {target}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_lag_is_seen_and_token_reads_wait_for_it_or_go_to_the_primary() {
    let _turn = STANDBY.lock().await;
    replay(true).await;
    let table = common::unique_name("t_replica", '_');
    let first = primary(&table).await;
    let standby = replica_at(standby_url(), &table).await;
    caught_up(&first, &standby).await;
    let set = ReplicaSet::builder()
        .primary(std::sync::Arc::new(primary(&table).await))
        .replica("standby", standby)
        .max_lag(MaxLag {
            positions: None,
            time: Some(Duration::from_millis(300)),
        })
        .token_wait(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(50))
        .build()
        .await
        .unwrap();

    // Streaming: the standby has a write within the token wait.
    let token = set.put("k1".into(), "v1".into()).await.unwrap();
    assert_eq!(
        set.get_after(&"k1".into(), token).await.unwrap(),
        Some("v1".into())
    );
    let stats = set.stats();
    assert_eq!(stats.spills_to_primary, 0, "{stats:?}");
    assert_eq!(stats.replicas[0].reads, 1);

    // Replay paused: a token read waits in vain, then the primary answers.
    replay(false).await;
    let token = set.put("k2".into(), "v2".into()).await.unwrap();
    assert_eq!(
        set.get_after(&"k2".into(), token).await.unwrap(),
        Some("v2".into())
    );
    let stats = set.stats();
    assert_eq!((stats.token_wait_timeouts, stats.spills_to_primary), (1, 1));

    // Still paused, and the primary moving on: past max_lag, the standby
    // gets no plain reads.
    for n in 0..8 {
        set.put(format!("more{n}"), "x".into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    set.refresh().await;
    let lagging = set.stats().replicas[0].clone();
    assert!(lagging.lagging, "{lagging:?}");
    assert!(lagging.lag_positions > 0 && lagging.lag_time >= Duration::from_millis(300));
    let spills = set.stats().spills_to_primary;
    assert_eq!(set.get(&"k1".into()).await.unwrap(), Some("v1".into()));
    assert_eq!(set.stats().spills_to_primary, spills + 1);

    // Replay resumed: it catches up, is admitted again, and serves the
    // token read.
    replay(true).await;
    let reads_before = set.stats().replicas[0].reads;
    assert_eq!(
        set.get_after(&"k2".into(), token).await.unwrap(),
        Some("v2".into())
    );
    for _ in 0..100 {
        set.refresh().await;
        if !set.stats().replicas[0].lagging {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!set.stats().replicas[0].lagging);
    assert!(set.stats().replicas[0].reads > reads_before);
    primary(&table).await.drop_table().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_ejected_and_with_none_left_the_primary_answers_within_budget() {
    let _turn = STANDBY.lock().await;
    replay(true).await;
    let table = common::unique_name("t_replica_dead", '_');
    let first = primary(&table).await;
    let standby = replica_at(standby_url(), &table).await;
    caught_up(&first, &standby).await;
    // Nothing listens on port 1: every call is refused.
    let dead = replica_at("postgres://postgres@127.0.0.1:1/test".into(), &table).await;
    let set = ReplicaSet::builder()
        .primary(std::sync::Arc::new(primary(&table).await))
        .replica("standby", standby)
        .replica("dead", dead)
        // In turn, so the dead one keeps being tried until it is ejected
        // (peak-EWMA would simply stop picking it after its first failure).
        .balance(Balance::RoundRobin)
        .ejection(eject_for_a_minute_after(2))
        .health_checks(false)
        .spill_budget(0.5, 0)
        .build()
        .await
        .unwrap();
    let token = set.put("k".into(), "v".into()).await.unwrap();
    caught_up(&first, &replica_at(standby_url(), &table).await).await;
    // Plain reads: the dead replica's lag is unknown, so it is tried (a
    // token read would never pick it: it never reports a position).
    for _ in 0..20 {
        assert_eq!(
            set.get(&"k".into()).await.unwrap(),
            Some("v".into()),
            "never an error"
        );
    }
    assert_eq!(
        set.get_after(&"k".into(), token).await.unwrap(),
        Some("v".into())
    );
    let stats = set.stats();
    assert!(stats.replicas[1].ejected, "{stats:?}");
    assert!(stats.replicas[1].errors <= 2, "no reads once ejected");

    let only_dead = ReplicaSet::builder()
        .primary(std::sync::Arc::new(primary(&table).await))
        .replica(
            "dead",
            replica_at("postgres://postgres@127.0.0.1:1/test".into(), &table).await,
        )
        .ejection(eject_for_a_minute_after(1))
        .health_checks(false)
        .spill_budget(0.5, 0)
        .build()
        .await
        .unwrap();
    let outcomes: Vec<_> = {
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            outcomes.push(only_dead.get(&"k".into()).await);
        }
        outcomes
    };
    let served = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(served, 5, "half the reads, as budgeted");
    for outcome in outcomes {
        match outcome {
            Ok(value) => assert_eq!(value, Some("v".into())),
            Err(error) => assert!(
                matches!(error.kind(), ErrorKind::Unavailable { .. }),
                "{error}"
            ),
        }
    }
    primary(&table).await.drop_table().await.unwrap();
}
