//! The main job (`examples/data_layer.rs`) on a short workload: it runs to
//! the end, keeps every promise it checks, and its figures make sense.

#[allow(dead_code)]
#[path = "../examples/data_layer/main.rs"]
mod data_layer;

use std::time::Duration;

use data_layer::{Config, Report};

fn short() -> Config {
    Config {
        users: 2_000,
        clients: 8,
        duration: Duration::from_millis(1_500),
        progress: false,
        ..Config::default()
    }
}

fn check(report: &Report) {
    assert!(report.failures().is_empty(), "{:?}", report.failures());
    let requests: u64 = report.requests.iter().map(|(_, t)| t.count).sum();
    assert!(requests > 100, "the clients made requests: {requests}");
    for (kind, tally) in &report.requests {
        assert!(tally.count > 0, "{kind}: some requests");
        assert_eq!(tally.failed, 0, "{kind}: no request failed");
    }
    let (_, posts) = &report.requests[2];
    assert!(posts.rejected > 0, "the empty posts were refused");
    let hits = report.cache.hit_ratio();
    assert!(
        (0.0..=1.0).contains(&hits) && hits > 0.2,
        "hit ratio {hits}"
    );
    assert!(report.cache.loads > 0);
    assert!(report.posts.0 > 0 && report.posts.0 == report.posts.1);
    assert!(
        report.write_behind.acknowledged >= report.write_behind.written,
        "coalescing never writes more than was acknowledged"
    );
    assert!(
        report.write_behind.journal_bytes_appended > 0,
        "the write-behind is journalled"
    );
    assert_eq!(report.replicas.len(), 4);
    let replica_reads: u64 = report
        .replicas
        .iter()
        .flat_map(|r| &r.replicas)
        .map(|r| r.reads)
        .sum();
    assert!(replica_reads > 0, "cache misses read from the replicas");
    assert_eq!(report.shards.keys.len(), 4);
    assert!(report.shards.keys.iter().all(|k| *k > 0));
    assert!(
        report.shards.balance < 0.5,
        "balance {}",
        report.shards.balance
    );
    assert!(report.events_published > 0);
    for (name, stats, _) in &report.groups {
        assert_eq!(
            stats.received, report.events_published,
            "{name} sees every change"
        );
    }
    let (at, log) = report.projection_at_stop;
    assert!(at <= log && log.get() > 0);
    let lag = &report.projection_lag;
    assert!(
        lag.samples() > 10,
        "the lag was sampled while the clients ran"
    );
    assert!(lag.mean() <= lag.max as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_runs_on_the_embedded_default_and_keeps_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let report = data_layer::run(&short(), dir.path()).await.unwrap();
    check(&report);
    assert!(report.databases.contains("SQLite"));
    let emails = report
        .groups
        .iter()
        .find(|(n, _, _)| n == "welcome-email")
        .unwrap();
    assert!(
        emails.1.dead_lettered > 0,
        "bounced addresses were dead-lettered"
    );
    assert!(report.dead_letters_replayed > 0, "and replayed");
    assert_eq!(emails.2, 0, "none is left");
}

#[cfg(all(feature = "postgres", feature = "redis", feature = "nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_main_job_runs_over_postgresql_redis_and_nats() {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let config = Config {
        postgres: Some(env(
            "SCALEKIT_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        )),
        // The streaming standby `.ci/run` makes: real replication.
        postgres_standby: Some(env(
            "SCALEKIT_POSTGRES_STANDBY_URL",
            "postgres://postgres@127.0.0.1:5433/test",
        )),
        redis: Some(env("SCALEKIT_REDIS_URL", "redis://127.0.0.1:6379")),
        nats: Some(env("SCALEKIT_NATS_URL", "nats://127.0.0.1:4222")),
        ..short()
    };
    let dir = tempfile::tempdir().unwrap();
    let report = data_layer::run(&config, dir.path()).await.unwrap();
    check(&report);
    assert!(report.databases.contains("PostgreSQL"));
    assert!(report.databases.contains("standby"));
    assert!(report.databases.contains("Redis"));
    assert!(report.databases.contains("NATS"));
}

#[test]
fn bad_options_are_refused_with_a_message() {
    let parse =
        |args: &[&str]| data_layer::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    assert!(parse(&[]).is_ok());
    assert!(parse(&["--users", "ten"])
        .unwrap_err()
        .contains("whole number"));
    assert!(parse(&["--seconds", "-1"]).is_err());
    assert!(
        parse(&["--seconds", "1e300"]).is_err(),
        "too long is refused, not a panic"
    );
    assert!(parse(&["--seconds", "NaN"]).is_err());
    assert!(parse(&["--users", "100000000000"]).is_err());
    assert!(parse(&["--users", "20", "--clients", "11"]).is_err());
    assert!(parse(&["--bogus", "1"])
        .unwrap_err()
        .contains("unknown option"));
    assert!(parse(&["--users"]).unwrap_err().contains("needs a value"));
}

#[tokio::test]
async fn configurations_that_cannot_run_are_typed_errors() {
    let mut configs = vec![Config {
        postgres_standby: Some("postgres://127.0.0.1:5433/test".into()),
        ..short()
    }];
    if cfg!(not(feature = "postgres")) {
        // A backend this build lacks.
        configs.push(Config {
            postgres: Some("postgres://nowhere".into()),
            ..short()
        });
    }
    for config in configs {
        let dir = tempfile::tempdir().unwrap();
        let err = data_layer::run(&config, dir.path()).await.unwrap_err();
        assert!(
            matches!(err.kind(), scalekit::ErrorKind::Config { .. }),
            "{err}"
        );
    }
}
