//! What the run measured and verified, printed as a table per layer.

use std::time::Duration;

use scalekit::cache::{CacheStats, WriteBehindStats};
use scalekit::events::GroupStats;
use scalekit::replica::ReplicaSetStats;
use scalekit::shard::ShardStats;
use scalekit::Position;

use super::clients::Tally;
use super::measure::human;

/// What the run measured and verified, layer by layer.
#[derive(Debug)]
pub struct Report {
    /// What the layers ran on.
    pub databases: String,
    /// Requests by kind: `(kind, tally)`.
    pub requests: Vec<(String, Tally)>,
    /// The profile cache.
    pub cache: CacheStats,
    /// The posts' write-behind buffer.
    pub write_behind: WriteBehindStats,
    /// One replica set per shard (this instance's routing).
    pub replicas: Vec<ReplicaSetStats>,
    /// The sharded users store.
    pub shards: ShardStats,
    /// Change events published.
    pub events_published: u64,
    /// The subscription groups: `(name, stats, dead letters left)`.
    pub groups: Vec<(String, GroupStats, usize)>,
    /// Dead letters handled when replayed after the gateway recovered.
    pub dead_letters_replayed: u64,
    /// The timeline projection's position when the clients stopped, and the log's.
    pub projection_at_stop: (Position, Position),
    /// How far the projection was behind the log while the clients ran.
    pub projection_lag: LagSamples,
    /// Posts accepted, and posts found in the database after the flush.
    pub posts: (u64, u64),
    /// Users whose cached profile differs from the primary's.
    pub cache_mismatches: u64,
    /// Reads of one's own write that missed it.
    pub read_your_writes_violations: u64,
    /// How long the workload ran.
    pub elapsed: Duration,
}

impl Report {
    /// The checks the program promises; empty when all hold.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.posts.0 != self.posts.1 {
            failures.push(format!(
                "{} posts accepted, {} in the database",
                self.posts.0, self.posts.1
            ));
        }
        if self.cache_mismatches > 0 {
            failures.push(format!(
                "{} cached profiles differ from the primary",
                self.cache_mismatches
            ));
        }
        if self.read_your_writes_violations > 0 {
            failures.push(format!(
                "{} reads missed the reader's own write",
                self.read_your_writes_violations
            ));
        }
        if self.write_behind.dead_lettered > 0 {
            failures.push(format!(
                "{} posts dead-lettered by the write-behind",
                self.write_behind.dead_lettered
            ));
        }
        for (name, _, left) in &self.groups {
            if *left > 0 {
                failures.push(format!(
                    "{left} dead letters left in {name} after the replay"
                ));
            }
        }
        failures
    }

    pub fn print(&mut self) {
        let secs = self.elapsed.as_secs_f64();
        let total: u64 = self.requests.iter().map(|(_, t)| t.count).sum();
        println!("\n{}", self.databases);
        println!(
            "requests: {total} in {secs:.1} s ({:.0}/s)",
            total as f64 / secs
        );
        table(
            &["request", "count", "p50", "p99", "rejected", "failed"],
            self.requests
                .iter_mut()
                .map(|(kind, t)| {
                    vec![
                        kind.clone(),
                        t.count.to_string(),
                        human(t.percentile(0.5)),
                        human(t.percentile(0.99)),
                        t.rejected.to_string(),
                        t.failed.to_string(),
                    ]
                })
                .collect(),
        );

        let c = &self.cache;
        println!("\ncache (ReadThrough over the shards)");
        table(
            &[
                "hits",
                "misses",
                "hit ratio",
                "loads",
                "stale fills prevented",
                "evictions",
            ],
            vec![vec![
                c.hits.to_string(),
                c.misses.to_string(),
                format!("{:.1}%", c.hit_ratio() * 100.0),
                c.loads.to_string(),
                c.stale_fills_prevented.to_string(),
                c.evictions.to_string(),
            ]],
        );

        let w = &self.write_behind;
        println!("\nposts write-behind (journalled)");
        table(
            &[
                "acknowledged",
                "batches",
                "coalesced",
                "written",
                "retries",
                "dead-lettered",
                "journal bytes",
            ],
            vec![vec![
                w.acknowledged.to_string(),
                w.batches.to_string(),
                w.coalesced.to_string(),
                w.written.to_string(),
                w.retries.to_string(),
                w.dead_lettered.to_string(),
                w.journal_bytes_appended.to_string(),
            ]],
        );

        println!("\nreplicas (one replica set per shard)");
        table(
            &[
                "shard",
                "reads",
                "on replica",
                "spills to primary",
                "token waits",
                "mean wait",
                "writes",
            ],
            self.replicas
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let on_replica: u64 = r.replicas.iter().map(|x| x.reads).sum();
                    vec![
                        i.to_string(),
                        r.reads.to_string(),
                        on_replica.to_string(),
                        r.spills_to_primary.to_string(),
                        r.token_waits.to_string(),
                        human(
                            r.token_wait_time
                                / u32::try_from(r.token_waits.max(1)).unwrap_or(u32::MAX),
                        ),
                        r.writes.to_string(),
                    ]
                })
                .collect(),
        );

        let s = &self.shards;
        println!("\nshards (jump hash); balance = standard deviation / mean of keys routed");
        let mut rows: Vec<Vec<String>> = s
            .keys
            .iter()
            .zip(&s.requests)
            .enumerate()
            .map(|(i, (k, r))| vec![i.to_string(), k.to_string(), r.to_string()])
            .collect();
        rows.push(vec![
            "balance".into(),
            format!("{:.3}", s.balance),
            String::new(),
        ]);
        table(&["shard", "keys routed", "calls"], rows);

        println!(
            "\nevents: {} profile changes published",
            self.events_published
        );
        table(
            &[
                "group",
                "received",
                "handled",
                "retried",
                "dead-lettered",
                "left after replay",
            ],
            self.groups
                .iter()
                .map(|(name, g, left)| {
                    vec![
                        name.clone(),
                        g.received.to_string(),
                        g.delivered.to_string(),
                        g.retried.to_string(),
                        g.dead_lettered.to_string(),
                        left.to_string(),
                    ]
                })
                .collect(),
        );

        let (at, log) = self.projection_at_stop;
        println!("\nCQRS timeline projection (lag in events behind the log, sampled every 10 ms)");
        table(
            &[
                "log position",
                "mean lag",
                "max lag",
                "lag at stop",
                "posts accepted",
                "posts in database",
            ],
            vec![vec![
                log.to_string(),
                format!("{:.1}", self.projection_lag.mean()),
                self.projection_lag.max.to_string(),
                log.get().saturating_sub(at.get()).to_string(),
                self.posts.0.to_string(),
                self.posts.1.to_string(),
            ]],
        );
    }
}

/// Samples of the projection's lag.
#[derive(Debug, Default, Clone)]
pub struct LagSamples {
    /// The largest lag seen.
    pub max: u64,
    sum: u64,
    samples: u64,
}

impl LagSamples {
    pub fn record(&mut self, lag: u64) {
        self.max = self.max.max(lag);
        self.sum += lag;
        self.samples += 1;
    }

    /// How many samples were taken.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.samples.max(1) as f64
    }
}

pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("  {}", padded.join("  "));
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
