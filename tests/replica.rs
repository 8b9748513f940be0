//! Replica routing: the specification of `scalekit::replica`, over
//! simulated replicas (no servers) on tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use scalekit::replica::simulated::{SimulatedPrimary, SimulatedReplica};
use scalekit::replica::{
    Balance, Ejection, MaxLag, Positioned, RecentWrites, ReplicaSet, ReplicaSetBuilder, Session,
};
use scalekit::testing::{conformance, FaultyStore};
use scalekit::{ErrorKind, Position, Store};

type Primary = SimulatedPrimary<u64, String>;
type Replica = Arc<FaultyStore<SimulatedReplica<u64, String>>>;
type Set = ReplicaSet<Primary, Replica>;

/// A replica `delay` behind the primary, answering each read after
/// `latency` (on tokio's clock), which a test can switch off.
async fn replica(primary: &Primary, delay: Duration, latency: Duration) -> Replica {
    Arc::new(
        FaultyStore::builder(primary.replica(delay).await.unwrap())
            .latency(latency)
            .build()
            .unwrap(),
    )
}

/// A replica set over `primary` with the named replicas, each `(name,
/// delay, latency)` as [`replica`] makes them.
async fn replicated(
    primary: &Primary,
    replicas: &[(&str, Duration, Duration)],
) -> ReplicaSetBuilder<Primary, Replica> {
    let mut builder = ReplicaSet::builder().primary(primary.clone());
    for &(name, delay, latency) in replicas {
        builder = builder.replica(name, replica(primary, delay, latency).await);
    }
    builder
}

/// A set over `primary` with `replicas` replicas (r1, r2, …), each
/// applying writes `delay` after they commit and answering at once.
async fn lagging(
    primary: &Primary,
    replicas: usize,
    delay: Duration,
) -> ReplicaSetBuilder<Primary, Replica> {
    let names = ["r1", "r2", "r3", "r4"];
    let specs: Vec<(&str, Duration, Duration)> = names[..replicas]
        .iter()
        .map(|name| (*name, delay, Duration::ZERO))
        .collect();
    replicated(primary, &specs).await
}

fn reads_of(set: &Set) -> Vec<u64> {
    set.stats().replicas.iter().map(|r| r.reads).collect()
}

#[tokio::test(start_paused = true)]
async fn writes_go_to_the_primary_and_reads_to_the_replicas() {
    let primary = Primary::new();
    let set = lagging(&primary, 2, Duration::from_millis(5))
        .await
        .build()
        .await
        .unwrap();
    let token = set.put(1, "one".into()).await.unwrap();
    assert_eq!(primary.get(&1).await.unwrap(), Some("one".into()));
    assert_eq!(set.primary_position(), token);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..10 {
        assert_eq!(set.get(&1).await.unwrap(), Some("one".into()));
    }
    let stats = set.stats();
    assert_eq!(
        (stats.reads, stats.writes, stats.spills_to_primary),
        (10, 1, 0)
    );
    assert_eq!(reads_of(&set).iter().sum::<u64>(), 10);
    let deleted = set.delete(&1).await.unwrap();
    assert!(deleted > token);
    assert_eq!(
        primary.get(&1).await.unwrap(),
        None,
        "deletes go to the primary too"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_read_sees_the_write_even_when_every_replica_lags() {
    let primary = Primary::new();
    let set = lagging(&primary, 2, Duration::from_millis(30))
        .await
        .token_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let token = set.put(1, "one".into()).await.unwrap();
    assert_eq!(
        set.get(&1).await.unwrap(),
        None,
        "a plain read may be stale"
    );
    assert_eq!(set.get_after(&1, token).await.unwrap(), Some("one".into()));
    let stats = set.stats();
    assert_eq!(stats.token_waits, 1);
    assert!(
        stats.token_wait_time >= Duration::from_millis(25),
        "{stats:?}"
    );
    assert_eq!(stats.spills_to_primary, 0, "the replicas caught up in time");
}

#[tokio::test(start_paused = true)]
async fn a_token_read_falls_back_to_the_primary_when_no_replica_catches_up_in_time() {
    let primary = Primary::new();
    let set = replicated(
        &primary,
        &[("slow", Duration::from_secs(5), Duration::ZERO)],
    )
    .await
    .token_wait(Duration::from_millis(20))
    .build()
    .await
    .unwrap();
    let token = set.put(1, "one".into()).await.unwrap();
    assert_eq!(set.get_after(&1, token).await.unwrap(), Some("one".into()));
    let stats = set.stats();
    assert_eq!((stats.token_wait_timeouts, stats.spills_to_primary), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn tokens_travel_as_text_and_work_in_another_replica_set_over_the_same_servers() {
    let primary = Primary::new();
    let (r1, r2) = (
        replica(&primary, Duration::from_millis(40), Duration::ZERO).await,
        replica(&primary, Duration::from_millis(40), Duration::ZERO).await,
    );
    let writer = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("r1", r1.clone())
        .replica("r2", r2.clone())
        .build()
        .await
        .unwrap();
    let reader = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("r1", r1)
        .replica("r2", r2)
        .token_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let alice = Session::new(writer);
    alice.put(7, "seven".into()).await.unwrap();
    let cookie = alice.token().to_string();
    assert_eq!(alice.get(&7).await.unwrap(), Some("seven".into()));

    let resumed = Session::resume(reader, cookie.parse::<Position>().unwrap());
    assert_eq!(resumed.get(&7).await.unwrap(), Some("seven".into()));
    assert_eq!(resumed.token(), alice.token());
}

#[tokio::test(start_paused = true)]
async fn a_replica_ten_times_slower_gets_under_a_fifth_of_the_reads() {
    let primary = Primary::new();
    let set = replicated(
        &primary,
        &[
            ("fast-1", Duration::ZERO, Duration::from_millis(1)),
            ("fast-2", Duration::ZERO, Duration::from_millis(1)),
            ("slow", Duration::ZERO, Duration::from_millis(10)),
        ],
    )
    .await
    .build()
    .await
    .unwrap();
    let set = Arc::new(set);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let set = Arc::clone(&set);
            tokio::spawn(async move {
                for key in 0..250 {
                    set.get(&key).await.unwrap();
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let reads = reads_of(&set);
    let total: u64 = reads.iter().sum();
    assert_eq!(total, 2000);
    assert!(
        reads[2] * 5 < total,
        "the slow replica served {} of {total} reads",
        reads[2]
    );
    let slow = &set.stats().replicas[2];
    assert!(slow.latency_estimate > set.stats().replicas[0].latency_estimate);
}

#[tokio::test(start_paused = true)]
async fn an_erroring_replica_is_ejected_reads_go_on_and_it_is_readmitted_later() {
    let primary = Primary::new();
    let flaky = replica(&primary, Duration::ZERO, Duration::ZERO).await;
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("flaky", flaky.clone())
        .replica(
            "steady",
            replica(&primary, Duration::ZERO, Duration::ZERO).await,
        )
        .balance(Balance::RoundRobin)
        .ejection(Ejection {
            after_failures: 3,
            base: Duration::from_secs(1),
            ..Ejection::default()
        })
        .health_checks(false)
        .build()
        .await
        .unwrap();
    set.put(1, "one".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    flaky.set_failing(true);
    for _ in 0..20 {
        assert_eq!(
            set.get(&1).await.unwrap(),
            Some("one".into()),
            "never an error"
        );
    }
    let stats = set.stats();
    assert_eq!(stats.replicas[0].ejections, 1);
    assert!(stats.replicas[0].ejected);
    assert_eq!(stats.replicas[0].errors, 3, "no reads once ejected");
    assert_eq!(stats.spills_to_primary, 0, "the other replica took them");

    flaky.set_failing(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = set.stats().replicas[0].reads;
    for _ in 0..10 {
        set.get(&1).await.unwrap();
    }
    let after = set.stats().replicas[0].clone();
    assert!(!after.ejected);
    assert_eq!(after.reads - before, 5, "back in the rotation");
}

#[tokio::test(start_paused = true)]
async fn a_failed_health_check_counts_and_a_dead_replica_is_ejected_without_reads() {
    let primary = Primary::new();
    let dead = replica(&primary, Duration::ZERO, Duration::ZERO).await;
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("dead", dead.clone())
        .replica(
            "alive",
            replica(&primary, Duration::ZERO, Duration::ZERO).await,
        )
        .poll_interval(Duration::from_millis(10))
        .ejection(Ejection {
            after_failures: 3,
            ..Ejection::default()
        })
        .build()
        .await
        .unwrap();
    dead.set_failing(true);
    tokio::time::sleep(Duration::from_millis(45)).await;
    let stats = set.stats();
    assert!(stats.replicas[0].ejected, "{stats:?}");
    assert_eq!(stats.replicas[0].reads, 0);
}

#[tokio::test(start_paused = true)]
async fn with_every_replica_down_reads_go_to_the_primary_within_the_budget_then_fail() {
    let primary = Primary::new();
    let (r1, r2) = (
        replica(&primary, Duration::ZERO, Duration::ZERO).await,
        replica(&primary, Duration::ZERO, Duration::ZERO).await,
    );
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("r1", r1.clone())
        .replica("r2", r2.clone())
        .spill_budget(0.25, 0)
        .ejection(Ejection {
            after_failures: 1,
            base: Duration::from_secs(60),
            max: Duration::from_secs(60),
            max_ejected_share: 1.0,
        })
        .build()
        .await
        .unwrap();
    set.put(1, "one".into()).await.unwrap();
    r1.set_failing(true);
    r2.set_failing(true);
    let (mut served, mut refused) = (0, 0);
    for _ in 0..100 {
        match set.get(&1).await {
            Ok(value) => {
                assert_eq!(value, Some("one".into()));
                served += 1;
            }
            Err(error) => {
                assert!(
                    matches!(error.kind(), ErrorKind::Unavailable { .. }),
                    "{error}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!((served, refused), (25, 75));
    let stats = set.stats();
    assert_eq!((stats.spills_to_primary, stats.refused), (25, 75));
    assert!(stats.replicas.iter().all(|r| r.ejected));
}

#[tokio::test(start_paused = true)]
async fn a_replica_too_far_behind_gets_no_plain_reads_until_it_is_well_within_bounds() {
    let primary = Primary::new();
    let lagging = primary.replica(Duration::ZERO).await.unwrap();
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica(
            "lagging",
            Arc::new(FaultyStore::builder(lagging.clone()).build().unwrap()),
        )
        .replica(
            "fresh",
            replica(&primary, Duration::ZERO, Duration::ZERO).await,
        )
        .max_lag(MaxLag {
            positions: Some(10),
            time: None,
        })
        .balance(Balance::RoundRobin)
        .build()
        .await
        .unwrap();
    lagging.set_delay(Duration::from_secs(3600));
    for n in 0..20 {
        set.put(n, n.to_string()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await; // the fresh one applies them
    set.refresh().await;
    let stats = set.stats();
    assert!(stats.replicas[0].lagging, "{stats:?}");
    assert_eq!(stats.replicas[0].lag_positions, 20);
    for n in 0..10 {
        assert_eq!(set.get(&n).await.unwrap(), Some(n.to_string()));
    }
    assert_eq!(reads_of(&set), vec![0, 10]);

    // Once it has applied what it held back, it is admitted again.
    lagging.set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(3601)).await;
    set.refresh().await;
    assert!(
        !set.stats().replicas[0].lagging,
        "caught up: admitted again"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_reads_when_allowed_go_to_the_least_lagged_replica_before_the_primary() {
    let primary = Primary::new();
    let set = replicated(
        &primary,
        &[
            ("far", Duration::from_secs(60), Duration::ZERO),
            ("farther", Duration::from_secs(120), Duration::ZERO),
        ],
    )
    .await
    .max_lag(MaxLag {
        positions: Some(1),
        time: None,
    })
    .allow_stale_reads(true)
    .build()
    .await
    .unwrap();
    set.put(1, "one".into()).await.unwrap();
    set.put(2, "two".into()).await.unwrap();
    set.refresh().await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    set.put(3, "three".into()).await.unwrap();
    set.put(4, "four".into()).await.unwrap();
    set.refresh().await;
    assert_eq!(set.get(&1).await.unwrap(), Some("one".into()));
    let stats = set.stats();
    assert_eq!((stats.stale_reads, stats.spills_to_primary), (1, 0));
    assert_eq!(reads_of(&set), vec![1, 0], "the less lagged one");
}

#[tokio::test(start_paused = true)]
async fn weights_share_round_robin_reads_in_proportion() {
    let primary = Primary::new();
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .weighted_replica(
            "small",
            replica(&primary, Duration::ZERO, Duration::ZERO).await,
            1,
        )
        .weighted_replica(
            "big",
            replica(&primary, Duration::ZERO, Duration::ZERO).await,
            3,
        )
        .balance(Balance::RoundRobin)
        .build()
        .await
        .unwrap();
    for _ in 0..400 {
        set.get(&1).await.unwrap();
    }
    assert_eq!(reads_of(&set), vec![100, 300]);
}

#[tokio::test(start_paused = true)]
async fn every_balance_policy_serves_reads_from_the_replicas() {
    for balance in [
        Balance::RoundRobin,
        Balance::Random,
        Balance::LeastOutstanding,
        Balance::PeakEwma,
    ] {
        let primary = Primary::new();
        let set = replicated(
            &primary,
            &[
                ("a", Duration::ZERO, Duration::from_millis(1)),
                ("b", Duration::ZERO, Duration::from_millis(1)),
            ],
        )
        .await
        .balance(balance)
        .build()
        .await
        .unwrap();
        for _ in 0..200 {
            set.get(&1).await.unwrap();
        }
        let reads = reads_of(&set);
        assert_eq!(reads.iter().sum::<u64>(), 200, "{balance:?}");
        assert!(reads.iter().all(|&n| n > 20), "{balance:?}: {reads:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn bad_configurations_are_config_errors_at_build() {
    let primary = Primary::new();
    let one = || async { replica(&primary, Duration::ZERO, Duration::ZERO).await };
    let errors = vec![
        ReplicaSet::<Primary, Replica>::builder()
            .replica("r", one().await)
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::<Primary, Replica>::builder()
            .primary(primary.clone())
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .replica("r", one().await)
            .max_lag(MaxLag {
                positions: Some(0),
                time: None,
            })
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .replica("r", one().await)
            .max_lag(MaxLag {
                positions: None,
                time: Some(Duration::ZERO),
            })
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .weighted_replica("r", one().await, 0)
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .replica("r", one().await)
            .replica("r", one().await)
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .replica("r", one().await)
            .spill_budget(1.5, 0)
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .replica("r", one().await)
            .ejection(Ejection {
                after_failures: 0,
                ..Ejection::default()
            })
            .build()
            .await
            .unwrap_err(),
        ReplicaSet::builder()
            .primary(primary.clone())
            .replica("r", one().await)
            .poll_interval(Duration::ZERO)
            .build()
            .await
            .unwrap_err(),
    ];
    for error in errors {
        assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
    }
}

#[test]
fn building_outside_a_runtime_is_a_config_error() {
    let primary = Primary::new();
    let replica = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(replica(&primary, Duration::ZERO, Duration::ZERO));
    let build = ReplicaSet::builder()
        .primary(primary)
        .replica("r", replica)
        .build();
    let error = futures_lite_block_on(build).unwrap_err();
    assert!(matches!(error.kind(), ErrorKind::Config { .. }), "{error}");
}

/// Polls a future to completion on this thread, outside any runtime.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_replica_refuses_writes_and_a_session_passes_the_store_conformance_suite() {
    let primary = SimulatedPrimary::<String, Vec<u8>>::new();
    let replica = primary.replica(Duration::from_millis(3)).await.unwrap();
    let refused = replica.put("k".into(), vec![1]).await.unwrap_err();
    assert!(matches!(refused.kind(), ErrorKind::Unavailable { .. }));
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("r1", replica)
        .replica(
            "r2",
            primary.replica(Duration::from_millis(3)).await.unwrap(),
        )
        .spill_budget(1.0, 1_000)
        .build()
        .await
        .unwrap();
    conformance::run_all(Arc::new(Session::new(set))).await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random writes, each followed by token reads, over replicas with
    /// random delays: a token read never returns data older than its
    /// token.
    #[test]
    fn a_token_read_never_returns_data_older_than_its_token(
        delays in prop::collection::vec(0u64..40, 1..4),
        writes in prop::collection::vec((0u64..6, any::<bool>(), 0u64..3), 1..40),
        token_wait in 0u64..30,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async move {
            let primary = Primary::new();
            let mut builder = ReplicaSet::builder()
                .primary(primary.clone())
                .token_wait(Duration::from_millis(token_wait))
                .spill_budget(1.0, 10_000);
            for (i, delay) in delays.iter().enumerate() {
                builder = builder.replica(
                    format!("r{i}"),
                    replica(&primary, Duration::from_millis(*delay), Duration::ZERO).await,
                );
            }
            let set = builder.build().await.unwrap();
            let mut model: HashMap<u64, String> = HashMap::new();
            let mut token = Position::ZERO;
            for (n, (key, delete, pause)) in writes.into_iter().enumerate() {
                let written = if delete {
                    model.remove(&key);
                    set.delete(&key).await.unwrap()
                } else {
                    model.insert(key, n.to_string());
                    set.put(key, n.to_string()).await.unwrap()
                };
                prop_assert!(written > token);
                token = written;
                tokio::time::sleep(Duration::from_millis(pause * 7)).await;
                for probe in [key, (key + 1) % 6] {
                    let read = set.get_after(&probe, token).await.unwrap();
                    prop_assert_eq!(read.as_ref(), model.get(&probe), "key {} at token {}", probe, token);
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn with_peak_ewma_a_replica_that_fails_fast_stops_being_picked() {
    let primary = Primary::new();
    let failing = replica(&primary, Duration::ZERO, Duration::ZERO).await;
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("failing", failing.clone())
        .replica(
            "slow",
            replica(&primary, Duration::ZERO, Duration::from_millis(5)).await,
        )
        .replica(
            "slower",
            replica(&primary, Duration::ZERO, Duration::from_millis(8)).await,
        )
        .health_checks(false)
        .build()
        .await
        .unwrap();
    failing.set_failing(true);
    for _ in 0..300 {
        set.get(&1).await.unwrap();
    }
    let stats = set.stats();
    assert!(
        stats.replicas[0].reads <= 3,
        "an error answers fastest, but counts as the failure penalty: {stats:?}"
    );
    assert_eq!(stats.spills_to_primary, 0);
}

#[tokio::test(start_paused = true)]
async fn a_read_over_the_timeout_fails_over_to_another_replica_and_counts_as_a_failure() {
    let primary = Primary::new();
    let set = replicated(
        &primary,
        &[
            ("stuck", Duration::ZERO, Duration::from_secs(10)),
            ("quick", Duration::ZERO, Duration::from_millis(1)),
        ],
    )
    .await
    .balance(Balance::RoundRobin)
    .read_timeout(Duration::from_millis(50))
    .ejection(Ejection {
        after_failures: 2,
        ..Ejection::default()
    })
    .health_checks(false)
    .build()
    .await
    .unwrap();
    set.put(1, "one".into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let started = tokio::time::Instant::now();
    for _ in 0..6 {
        assert_eq!(set.get(&1).await.unwrap(), Some("one".into()));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "never waited out the stuck one"
    );
    let stats = set.stats();
    assert_eq!(stats.replicas[0].errors, 2, "{stats:?}");
    assert!(stats.replicas[0].ejected);
    assert_eq!(stats.spills_to_primary, 0);
}

#[tokio::test(start_paused = true)]
async fn no_more_than_the_allowed_share_of_replicas_is_ejected_at_once() {
    let primary = Primary::new();
    let (a, b) = (
        replica(&primary, Duration::ZERO, Duration::ZERO).await,
        replica(&primary, Duration::ZERO, Duration::ZERO).await,
    );
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("a", a.clone())
        .replica("b", b.clone())
        .balance(Balance::RoundRobin)
        .ejection(Ejection {
            after_failures: 1,
            max_ejected_share: 0.5,
            ..Ejection::default()
        })
        .health_checks(false)
        .spill_budget(1.0, 1_000)
        .build()
        .await
        .unwrap();
    a.set_failing(true);
    b.set_failing(true);
    for _ in 0..10 {
        let _ = set.get(&1).await;
    }
    let ejected = set.stats().replicas.iter().filter(|r| r.ejected).count();
    assert_eq!(ejected, 1, "half of two replicas: one, however many fail");
}

#[tokio::test]
async fn a_simulated_primary_over_sqlite_ships_its_writes_to_in_memory_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let file = scalekit::store::SqliteStore::<u64, String>::builder()
        .path(dir.path().join("primary.db"))
        .build()
        .await
        .unwrap();
    let primary = SimulatedPrimary::over(file);
    let early = primary.put(1, "one".into()).await.unwrap();
    // A replica made now starts from a copy of the file.
    let replica = primary.replica(Duration::ZERO).await.unwrap();
    assert_eq!(replica.get(&1).await.unwrap(), Some("one".into()));
    assert_eq!(replica.applied_position().await.unwrap(), early);
    let later = primary.put(2, "two".into()).await.unwrap();
    assert!(later > early);
    assert_eq!(primary.applied_position().await.unwrap(), later);
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("memory", replica)
        .build()
        .await
        .unwrap();
    assert_eq!(set.get_after(&2, later).await.unwrap(), Some("two".into()));
    assert_eq!(
        primary.get_ref().get(&2).await.unwrap(),
        Some("two".into()),
        "the write is in the file"
    );
}

#[tokio::test(start_paused = true)]
async fn recent_writes_make_only_the_written_keys_wait_for_a_replica() {
    let primary = Primary::new();
    primary.put(2, "two".into()).await.unwrap();
    let set = lagging(&primary, 1, Duration::from_millis(30))
        .await
        .token_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let users = RecentWrites::new(set.clone());
    users.put(1, "one".into()).await.unwrap();
    assert_eq!(users.remembered(), 1);
    assert_eq!(
        users.get(&1).await.unwrap(),
        Some("one".into()),
        "its own write"
    );
    assert_eq!(set.stats().token_waits, 1);
    assert_eq!(users.get(&2).await.unwrap(), Some("two".into()));
    assert_eq!(
        users.get_many(&[2, 3]).await.unwrap(),
        vec![Some("two".into()), None]
    );
    assert_eq!(
        set.stats().token_waits,
        1,
        "other keys read without waiting"
    );
    assert_eq!(
        users.get_many(&[1, 2]).await.unwrap(),
        vec![Some("one".into()), Some("two".into())],
        "a batch with a remembered key reads after its position"
    );
}

#[tokio::test(start_paused = true)]
async fn an_observed_position_holds_back_reads_of_its_key_only() {
    let primary = Primary::new();
    let set = lagging(&primary, 1, Duration::from_millis(30))
        .await
        .token_wait(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let here = RecentWrites::new(set.clone());
    // Another process writes; this one hears of it through an event.
    let elsewhere = primary.put(5, "five".into()).await.unwrap();
    assert_eq!(here.get(&5).await.unwrap(), None, "not heard of yet: stale");
    here.observe(&5, elsewhere);
    here.observe(&5, Position::ZERO); // never lowers
    assert_eq!(here.get(&5).await.unwrap(), Some("five".into()));
}

#[tokio::test(start_paused = true)]
async fn remembered_keys_are_forgotten_once_every_replica_has_them() {
    let primary = Primary::new();
    let set = lagging(&primary, 2, Duration::from_millis(5))
        .await
        .poll_interval(Duration::from_millis(10))
        .build()
        .await
        .unwrap();
    let users = RecentWrites::new(set.clone());
    users
        .write_batch(
            (0..1_000)
                .map(|k| scalekit::Write::Put(k, k.to_string()))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(users.remembered(), 1_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(set.applied_by_every_replica() >= set.primary_position());
    // The next write past the pruning threshold forgets what every
    // replica has applied.
    for k in 1_000..1_030 {
        users.put(k, k.to_string()).await.unwrap();
    }
    assert!(
        users.remembered() <= 30,
        "{} keys still remembered",
        users.remembered()
    );
    assert_eq!(users.get(&7).await.unwrap(), Some("7".into()));
}

#[tokio::test(start_paused = true)]
async fn past_its_limit_a_stalled_replica_costs_waits_not_memory_or_stale_reads() {
    let primary = Primary::new();
    let stalled = primary.replica(Duration::from_secs(3_600)).await.unwrap();
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("stalled", Arc::new(FaultyStore::new(stalled)))
        .token_wait(Duration::from_millis(20))
        // With its only replica stalled, the primary serves every read.
        .spill_budget(1.0, 1_000)
        .build()
        .await
        .unwrap();
    let users = RecentWrites::with_limit(set.clone(), 8);
    for k in 0..20 {
        users.put(k, format!("v{k}")).await.unwrap();
    }
    assert!(
        users.remembered() <= 8,
        "{} keys remembered past a limit of 8",
        users.remembered()
    );
    for k in 0..20 {
        assert_eq!(
            users.get(&k).await.unwrap(),
            Some(format!("v{k}")),
            "key {k}: folded keys still read their writes"
        );
    }
    // Keys never written through it now wait too (for the floor): the
    // stalled replica cannot serve them, the primary does.
    assert_eq!(users.get(&99).await.unwrap(), None);
    assert!(set.stats().spills_to_primary > 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_replica_neither_freezes_the_monitor_nor_stretches_a_token_wait() {
    let primary = Primary::new();
    let hung = replica(&primary, Duration::ZERO, Duration::ZERO).await;
    let healthy = replica(&primary, Duration::from_millis(5), Duration::ZERO).await;
    let set = ReplicaSet::builder()
        .primary(primary.clone())
        .replica("hung", Arc::clone(&hung))
        .replica("healthy", healthy)
        .poll_interval(Duration::from_millis(10))
        .token_wait(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    hung.set_hanging(true); // accepts, never answers
    let checked = tokio::time::timeout(Duration::from_secs(30), async {
        set.put(1, "one".into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A write while the hung replica's probe is still out: its lag
        // must be seen within a few polls, not after the probe times out.
        let token = set.put(1, "two".into()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = set.stats();
        let healthy = stats.replicas.iter().find(|r| r.name == "healthy").unwrap();
        assert!(
            healthy.applied >= token.get(),
            "the monitor still follows the healthy replica: {stats:?}"
        );
        // A token no replica reaches: the wait ends at the token wait,
        // however long the hung replica keeps its answer.
        let started = tokio::time::Instant::now();
        let far = scalekit::Position::new(token.get() + 1_000);
        let _ = set.get_after(&1, far).await;
        started.elapsed()
    })
    .await;
    let waited = checked.expect("nothing waits for the hung replica");
    assert!(
        waited <= Duration::from_millis(50) * 3,
        "the token wait is bounded: {waited:?}"
    );
    hung.set_hanging(false);
}
