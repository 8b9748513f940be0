//! The playbook lab (`examples/playbook.rs`) on a short, latency-bound
//! workload: it runs every level to the end, and its figures make sense.

#[allow(dead_code)]
#[path = "../examples/playbook.rs"]
mod playbook;

use std::time::Duration;

use playbook::{Level, LevelReport, Workload};

fn short() -> Workload {
    Workload {
        keys: 5_000,
        // A slow backend with one connection per node: the database, not
        // this (debug-built, shared) machine's CPU, is the limit.
        latency: Duration::from_millis(5),
        node_capacity: 1,
        concurrency: 32,
        warmup: Duration::from_millis(100),
        measure: Duration::from_millis(400),
        out: None,
        ..Workload::default()
    }
}

fn level<'a>(reports: &'a [LevelReport], name: &str) -> &'a LevelReport {
    reports
        .iter()
        .find(|r| r.level == name)
        .unwrap_or_else(|| panic!("no level {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_level_runs_and_the_figures_are_sane() {
    let workload = short();
    let mut heard = 0;
    let reports = playbook::run(&workload, |_| heard += 1).await.unwrap();
    assert_eq!(reports.len(), Level::PLAYBOOK.len());
    assert_eq!(heard, reports.len(), "progress hears every level");
    for r in &reports {
        assert_eq!(r.errors, 0, "{}: no request fails", r.level);
        assert!(r.throughput > 0.0, "{}: requests completed", r.level);
        assert!(
            r.p50 <= r.p99 && r.p99 <= r.p999,
            "{}: percentiles",
            r.level
        );
        if let Some(hits) = r.hit_ratio {
            assert!((0.0..=1.0).contains(&hits), "{}: hit ratio {hits}", r.level);
        }
        assert!((0.0..=1.05).contains(&r.primary_utilisation), "{r:?}");
    }
    let direct = level(&reports, "direct");
    let cached = level(&reports, "+ cache");
    assert!(direct.hit_ratio.is_none());
    assert!(
        (0.9..=1.1).contains(&direct.backend_calls_per_request),
        "without a cache every request is a database call: {}",
        direct.backend_calls_per_request
    );
    assert!(
        cached.backend_calls_per_request < direct.backend_calls_per_request / 2.0,
        "the cache calls the database less: {} vs {}",
        cached.backend_calls_per_request,
        direct.backend_calls_per_request
    );
    assert!(cached.throughput > direct.throughput);
    let one = level(&reports, "+ 1 replica");
    let four = level(&reports, "+ 4 replicas");
    assert!(
        four.read_throughput > one.read_throughput * 1.5,
        "more replicas, more reads on a latency-bound backend: {} vs {}",
        four.read_throughput,
        one.read_throughput
    );
    let behind = level(&reports, "+ write-behind");
    assert!(
        behind.write_throughput > level(&reports, "+ 8 shards").write_throughput,
        "buffered writes return sooner"
    );
    let csv = playbook::csv(&reports);
    assert_eq!(csv.lines().count(), reports.len() + 1);
    let svg = playbook::svg(&reports, &workload).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("+ write-behind"));
    assert!(playbook::summary(&reports)[0].starts_with("cache:"));
}

#[tokio::test]
async fn a_bad_workload_is_a_configuration_error() {
    for workload in [
        Workload {
            read_share: 1.5,
            ..short()
        },
        Workload { keys: 0, ..short() },
        Workload {
            zipf: f64::NAN,
            ..short()
        },
        Workload {
            measure: Duration::ZERO,
            ..short()
        },
    ] {
        let err = playbook::run(&workload, |_| {}).await.unwrap_err();
        assert!(
            matches!(err.kind(), scalekit::ErrorKind::Config { .. }),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_clients_keep_the_workloads_mix_at_every_level() {
    let workload = Workload {
        clients: playbook::Clients::Mixed,
        levels: vec![Level::Direct, Level::Cache, Level::Replicas(2)],
        ..short()
    };
    let reports = playbook::run(&workload, |_| {}).await.unwrap();
    for r in &reports {
        let requests = r.read_throughput + r.write_throughput;
        let write_share = r.write_throughput / requests;
        // Four standard deviations of a binomial share, plus a point.
        let n = requests * workload.measure.as_secs_f64();
        let tolerance = 4.0 * (0.09 / n).sqrt() + 0.01;
        assert!(
            (write_share - 0.1).abs() < tolerance,
            "{}: {:.3} of requests were writes over {n:.0} requests",
            r.level,
            write_share
        );
    }
}

#[test]
fn bad_options_are_refused_with_a_message_not_a_panic() {
    let parse =
        |args: &[&str]| playbook::parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    assert!(parse(&[]).is_ok());
    assert!(parse(&["--clients", "mixed"]).is_ok());
    for bad in [
        &["--seconds", "inf"][..],
        &["--seconds", "-1"],
        &["--latency-ms", "NaN"],
        &["--warmup", "1e300"],
        &["--keys", "many"],
        &["--clients", "both"],
        &["--bogus", "1"],
        &["--reads"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(parse(&["--help"]).unwrap_err().contains("--concurrency"));
}

#[tokio::test]
async fn a_workload_too_large_for_memory_is_refused_before_it_starts() {
    for workload in [
        Workload {
            keys: 1 << 40,
            ..short()
        },
        Workload {
            value_size: 1 << 40,
            ..short()
        },
    ] {
        let err = playbook::run(&workload, |_| {}).await.unwrap_err();
        assert!(
            matches!(err.kind(), scalekit::ErrorKind::Config { .. }),
            "{err}"
        );
    }
}
