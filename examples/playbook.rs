//! The playbook lab: one workload, run at every level of the scaling
//! playbook, measured the same way at each.
//!
//! ```text
//! cargo run --release --example playbook                  # the default workload, under a minute
//! cargo run --release --example playbook -- --help        # every knob
//! ```
//!
//! The backend is simulated honestly enough to saturate: every database
//! node (the primary, each replica, each shard's primary) answers after a
//! latency and serves at most `node_capacity` calls at once, like a server
//! with that many connections (`FaultyStore` with a latency and a
//! capacity, over memory; replicas are fed by a replication log, which
//! is not counted as calls and takes no capacity: real replicas pay for
//! replaying writes, so read capacity per replica is optimistic here for
//! write-heavy workloads). The levels are cumulative:
//!
//! | level | stack |
//! |---|---|
//! | direct | clients → one database |
//! | + cache | `WriteThrough` cache (reads load on a miss, writes update it) → database |
//! | + N replicas | cache → `ReplicaSet` (writes to the primary, reads to N replicas) |
//! | + N shards | cache → `Sharded` (jump hash) over N replica sets, each a primary and the replicas of the last replica level |
//! | + write-behind | cache → `WriteBehind` (batched, coalesced) → the shards |
//!
//! Clients are readers or writers in the workload's proportion (page views
//! and form posts are different requests): each sends one request at a
//! time, so a level that makes reads cheaper lets readers send more. Per
//! level it prints throughput (all requests, reads, writes), latency
//! percentiles, backend calls per request, the cache's hit ratio and the
//! bottleneck: the most utilised resource among the database nodes (time
//! busy over time × capacity) and this process's CPU; when none is near
//! full, the clients themselves (concurrency × latency) are the limit.
//! Results go to `<out>/playbook.csv` and `<out>/playbook.svg`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scalekit::cache::{MemoryTier, WhenFull, WriteBehind, WriteThrough};
use scalekit::replica::simulated::SimulatedPrimary;
use scalekit::replica::ReplicaSet;
use scalekit::shard::Sharded;
use scalekit::testing::FaultyStore;
use scalekit::{DynStore, MemoryStore, Store, Write};

#[path = "support/measure.rs"]
mod measure;
#[path = "support/options.rs"]
mod options;
#[path = "support/workload.rs"]
mod workload;
use workload::{Rng, Zipf};

/// What every level stores: a user id and an opaque row.
type Value = Arc<[u8]>;
type AnyStore = Arc<dyn DynStore<Key = u64, Value = Value>>;
type Cache = WriteThrough<AnyStore, MemoryTier<u64, scalekit::cache::Cached<Value>>>;

/// The workload and the simulated backend, the same at every level.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Share of clients that read (the rest write), 0 to 1.
    pub read_share: f64,
    /// Distinct keys, all present at the start.
    pub keys: u64,
    /// Zipf exponent of key popularity (0 is uniform).
    pub zipf: f64,
    /// Bytes per value.
    pub value_size: usize,
    /// Each database call's latency.
    pub latency: Duration,
    /// Calls each database node serves at once.
    pub node_capacity: usize,
    /// Clients, each with one request at a time.
    pub concurrency: usize,
    /// Whether a client only reads or only writes, or mixes both.
    pub clients: Clients,
    /// Cache capacity as a share of the keys.
    pub cache_share: f64,
    /// Run before measuring (not counted).
    pub warmup: Duration,
    /// Measured run per level.
    pub measure: Duration,
    /// The levels, in order (each builds on the ones before).
    pub levels: Vec<Level>,
    /// Where the CSV and the SVG go (`None`: not written).
    pub out: Option<PathBuf>,
}

impl Default for Workload {
    /// 90% reads of 100,000 keys under Zipf 0.99, 1 ms backend latency,
    /// 4 calls at once per node, 64 clients, a cache of a fifth of the
    /// keys, 3 s per level.
    fn default() -> Self {
        Workload {
            read_share: 0.9,
            keys: 100_000,
            zipf: 0.99,
            value_size: 100,
            latency: Duration::from_millis(1),
            node_capacity: 4,
            concurrency: 64,
            clients: Clients::Split,
            cache_share: 0.2,
            warmup: Duration::from_millis(500),
            measure: Duration::from_secs(3),
            levels: Level::PLAYBOOK.to_vec(),
            out: Some(PathBuf::from("target/playbook")),
        }
    }
}

/// How clients divide the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// `read_share` of the clients only read, the others only write:
    /// page views and form posts are different requests, and a read
    /// never waits behind a write. The mix a level completes follows
    /// from what it makes cheap (the report shows reads and writes
    /// apart).
    Split,
    /// Every client draws each request: a read with probability
    /// `read_share`. The mix stays fixed, so the slowest part of it
    /// paces everything.
    Mixed,
}

/// One level of the playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Clients call the database.
    Direct,
    /// A write-through cache in front.
    Cache,
    /// Reads go to this many replicas.
    Replicas(usize),
    /// Keys spread over this many shards.
    Shards(usize),
    /// Writes buffered, batched and coalesced.
    WriteBehind,
}

impl Level {
    /// The whole ladder.
    pub const PLAYBOOK: [Level; 9] = [
        Level::Direct,
        Level::Cache,
        Level::Replicas(1),
        Level::Replicas(2),
        Level::Replicas(4),
        Level::Shards(2),
        Level::Shards(4),
        Level::Shards(8),
        Level::WriteBehind,
    ];

    fn name(self) -> String {
        match self {
            Level::Direct => "direct".into(),
            Level::Cache => "+ cache".into(),
            Level::Replicas(1) => "+ 1 replica".into(),
            Level::Replicas(n) => format!("+ {n} replicas"),
            Level::Shards(n) => format!("+ {n} shards"),
            Level::WriteBehind => "+ write-behind".into(),
        }
    }
}

/// The stack a level runs: what the levels so far add up to.
#[derive(Debug, Clone, Copy, Default)]
struct Stack {
    cache: bool,
    replicas: usize,
    shards: usize,
    write_behind: bool,
}

impl Stack {
    fn after(mut self, level: Level) -> Stack {
        match level {
            Level::Direct => return Stack::default(),
            Level::Cache => self.cache = true,
            Level::Replicas(n) => self.replicas = n,
            Level::Shards(n) => self.shards = n,
            Level::WriteBehind => self.write_behind = true,
        }
        self
    }
}

/// What one level measured.
#[derive(Debug, Clone)]
pub struct LevelReport {
    /// The level's name.
    pub level: String,
    /// Requests a second.
    pub throughput: f64,
    /// Reads a second.
    pub read_throughput: f64,
    /// Writes a second.
    pub write_throughput: f64,
    /// Median request latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Database calls per request (all nodes).
    pub backend_calls_per_request: f64,
    /// The cache's hit ratio (`None` without a cache).
    pub hit_ratio: Option<f64>,
    /// The busiest primary's utilisation, 0 to 1.
    pub primary_utilisation: f64,
    /// The replicas' mean utilisation, 0 to 1 (0 without replicas).
    pub replica_utilisation: f64,
    /// This process's CPU use over the cores, 0 to 1 (`None` where it
    /// cannot be read).
    pub cpu_utilisation: Option<f64>,
    /// Where the limit now is.
    pub bottleneck: String,
    /// Requests that failed.
    pub errors: u64,
}

/// A database node's counters, whatever its type.
struct Probe {
    primary: bool,
    capacity: usize,
    read: Box<dyn Fn() -> (u64, Duration) + Send + Sync>,
}

fn node<S: Store>(store: S, workload: &Workload) -> scalekit::Result<Arc<FaultyStore<S>>> {
    Ok(Arc::new(
        FaultyStore::builder(store)
            .latency(workload.latency)
            .capacity(workload.node_capacity)
            .build()?,
    ))
}

fn probe<S: Store>(node: &Arc<FaultyStore<S>>, primary: bool, capacity: usize) -> Probe {
    let node = Arc::clone(node);
    Probe {
        primary,
        capacity,
        read: Box::new(move || (node.calls().total(), node.busy())),
    }
}

/// A running stack: the store the clients call, and what to measure.
struct Built {
    store: AnyStore,
    cache: Option<Arc<Cache>>,
    write_behind: Option<Arc<WriteBehind<AnyStore>>>,
    probes: Vec<Probe>,
}

/// One shard: a lone database, or a primary with replicas.
async fn shard(
    workload: &Workload,
    replicas: usize,
    probes: &mut Vec<Probe>,
) -> scalekit::Result<AnyStore> {
    let cap = workload.node_capacity;
    if replicas == 0 {
        let database = node(MemoryStore::new(), workload)?;
        probes.push(probe(&database, true, cap));
        return Ok(database.into_dyn());
    }
    let primary = SimulatedPrimary::<u64, Value>::new();
    let primary_node = node(primary.clone(), workload)?;
    probes.push(probe(&primary_node, true, cap));
    let mut set = ReplicaSet::builder().primary(primary_node);
    for i in 0..replicas {
        let replica = node(primary.replica(Duration::ZERO).await?, workload)?;
        probes.push(probe(&replica, false, cap));
        set = set.replica(format!("replica-{i}"), replica);
    }
    Ok(set.build().await?.into_dyn())
}

async fn build(workload: &Workload, stack: Stack) -> scalekit::Result<Built> {
    let mut probes = Vec::new();
    let mut store = if stack.shards <= 1 {
        shard(workload, stack.replicas, &mut probes).await?
    } else {
        let mut shards = Vec::new();
        for _ in 0..stack.shards {
            shards.push(shard(workload, stack.replicas, &mut probes).await?);
        }
        Sharded::builder()
            .shards(shards)
            .strategy(scalekit::shard::Jump::new(stack.shards)?)
            .build()?
            .into_dyn()
    };
    // Every key exists before the clock starts (one batch per shard).
    let value: Value = vec![7u8; workload.value_size].into();
    store
        .write_batch(
            (0..workload.keys)
                .map(|k| Write::Put(k, value.clone()))
                .collect(),
        )
        .await?;
    let mut write_behind = None;
    if stack.write_behind {
        let buffered = Arc::new(
            WriteBehind::builder(store)
                .batch_size(256)
                .max_delay(Duration::from_millis(5))
                .max_buffered(100_000, WhenFull::Wait)
                .build()?,
        );
        write_behind = Some(Arc::clone(&buffered));
        store = buffered.into_dyn();
    }
    let mut cache = None;
    if stack.cache {
        let capacity = ((workload.keys as f64 * workload.cache_share) as u64).max(1);
        let cached =
            Arc::new(WriteThrough::builder(store, MemoryTier::with_capacity(capacity)?).build()?);
        // The cache starts warm, as in steady state: the hottest keys, up
        // to its capacity, are loaded before the clock starts.
        let hottest: Vec<u64> = (0..capacity.min(workload.keys)).collect();
        for chunk in hottest.chunks(1_000) {
            cached.get_many(chunk).await?;
        }
        cache = Some(Arc::clone(&cached));
        store = cached.into_dyn();
    }
    Ok(Built {
        store,
        cache,
        write_behind,
        probes,
    })
}

const WARMING: u8 = 0;
const MEASURING: u8 = 1;
const STOPPED: u8 = 2;

/// One client's measured requests.
#[derive(Default)]
struct ClientTally {
    latencies_ns: Vec<u64>,
    reads: u64,
    writes: u64,
    errors: u64,
}

/// What a client sends.
#[derive(Debug, Clone, Copy)]
enum Role {
    Reader,
    Writer,
    /// Each request a read with this probability, else a write.
    Mixed(f64),
}

async fn client(
    store: AnyStore,
    zipf: Arc<Zipf>,
    role: Role,
    seed: u64,
    value: Value,
    phase: Arc<AtomicU8>,
) -> ClientTally {
    let mut rng = Rng(seed);
    let mut tally = ClientTally::default();
    loop {
        if phase.load(Ordering::Acquire) == STOPPED {
            return tally;
        }
        let key = zipf.sample(&mut rng);
        let reader = match role {
            Role::Reader => true,
            Role::Writer => false,
            Role::Mixed(read_share) => rng.next_f64() < read_share,
        };
        let started = Instant::now();
        let ok = if reader {
            store.get(&key).await.is_ok()
        } else {
            store.put(key, value.clone()).await.is_ok()
        };
        let took = started.elapsed();
        // A request counts if it ends while the clock runs, as the
        // database calls it made are counted between the same instants.
        if phase.load(Ordering::Acquire) == MEASURING {
            if !ok {
                tally.errors += 1;
                continue;
            }
            tally
                .latencies_ns
                .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            if reader {
                tally.reads += 1;
            } else {
                tally.writes += 1;
            }
        }
    }
}

/// This process's CPU time so far (Linux: `/proc/self/stat`, in clock
/// ticks of 1/100 s).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn snapshot(probes: &[Probe]) -> Vec<(u64, Duration)> {
    probes.iter().map(|p| (p.read)()).collect()
}

async fn measure_level(
    workload: &Workload,
    level: Level,
    stack: Stack,
    zipf: &Arc<Zipf>,
) -> scalekit::Result<LevelReport> {
    let built = build(workload, stack).await?;
    let readers = (workload.concurrency as f64 * workload.read_share).round() as usize;
    let phase = Arc::new(AtomicU8::new(WARMING));
    let value: Value = vec![1u8; workload.value_size].into();
    let clients: Vec<_> = (0..workload.concurrency)
        .map(|i| {
            tokio::spawn(client(
                Arc::clone(&built.store),
                Arc::clone(zipf),
                match workload.clients {
                    Clients::Split if i < readers => Role::Reader,
                    Clients::Split => Role::Writer,
                    Clients::Mixed => Role::Mixed(workload.read_share),
                },
                0x5EED + i as u64,
                value.clone(),
                Arc::clone(&phase),
            ))
        })
        .collect();
    tokio::time::sleep(workload.warmup).await;
    let nodes_before = snapshot(&built.probes);
    let cache_before = built.cache.as_ref().map(|c| c.stats());
    let cpu_before = cpu_time();
    let started = Instant::now();
    phase.store(MEASURING, Ordering::Release);
    tokio::time::sleep(workload.measure).await;
    phase.store(STOPPED, Ordering::Release);
    let elapsed = started.elapsed();
    let nodes_after = snapshot(&built.probes);
    let cache_after = built.cache.as_ref().map(|c| c.stats());
    let cpu_after = cpu_time();

    let mut latencies = Vec::new();
    let (mut reads, mut writes, mut errors) = (0, 0, 0);
    for c in clients {
        let tally = c.await.expect("a client task does not panic");
        latencies.extend(tally.latencies_ns);
        reads += tally.reads;
        writes += tally.writes;
        errors += tally.errors;
    }
    if let Some(buffer) = &built.write_behind {
        buffer.shutdown().await;
    }
    latencies.sort_unstable();
    let requests = (reads + writes).max(1);
    let seconds = elapsed.as_secs_f64();

    let mut calls = 0;
    let (mut primary_use, mut replica_use, mut replicas) = (0f64, 0f64, 0usize);
    for ((probe, before), after) in built.probes.iter().zip(&nodes_before).zip(&nodes_after) {
        calls += after.0 - before.0;
        let busy = (after.1 - before.1).as_secs_f64() / (seconds * probe.capacity as f64);
        if probe.primary {
            primary_use = primary_use.max(busy);
        } else {
            replica_use += busy;
            replicas += 1;
        }
    }
    if replicas > 0 {
        replica_use /= replicas as f64;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu_utilisation = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some((a - b).as_secs_f64() / (seconds * cores)),
        _ => None,
    };
    let hit_ratio = match (cache_before, cache_after) {
        (Some(b), Some(a)) => {
            let hits = a.hits - b.hits;
            let lookups = hits + (a.misses - b.misses);
            Some(if lookups == 0 {
                0.0
            } else {
                hits as f64 / lookups as f64
            })
        }
        _ => None,
    };
    let database = if replicas > 0 {
        "primary (writes)"
    } else {
        "database"
    };
    let mut resources = [
        (database, primary_use),
        ("replicas (reads)", replica_use),
        ("CPU", cpu_utilisation.unwrap_or(0.0)),
    ];
    resources.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Every resource near full is a bottleneck; with none, the clients
    // (how many, times how long each request takes) are the limit.
    let full: Vec<String> = resources
        .iter()
        .filter(|(_, used)| *used >= 0.85)
        .map(|(name, used)| format!("{name} {:.0}%", used * 100.0))
        .collect();
    let bottleneck = if full.is_empty() {
        let (name, used) = resources[0];
        format!("clients (busiest: {name} {:.0}%)", used * 100.0)
    } else {
        full.join(", ")
    };
    Ok(LevelReport {
        level: level.name(),
        throughput: requests as f64 / seconds,
        read_throughput: reads as f64 / seconds,
        write_throughput: writes as f64 / seconds,
        p50: measure::percentile(&latencies, 0.5),
        p99: measure::percentile(&latencies, 0.99),
        p999: measure::percentile(&latencies, 0.999),
        backend_calls_per_request: calls as f64 / requests as f64,
        hit_ratio,
        primary_utilisation: primary_use,
        replica_utilisation: replica_use,
        cpu_utilisation,
        bottleneck,
        errors,
    })
}

/// Runs every level of `workload` in order; `progress` hears each report
/// as it is made.
pub async fn run(
    workload: &Workload,
    mut progress: impl FnMut(&LevelReport),
) -> scalekit::Result<Vec<LevelReport>> {
    validate(workload)?;
    let zipf = Arc::new(Zipf::new(workload.keys, workload.zipf));
    let mut stack = Stack::default();
    let mut reports = Vec::new();
    for &level in &workload.levels {
        stack = stack.after(level);
        let report = measure_level(workload, level, stack, &zipf).await?;
        progress(&report);
        reports.push(report);
    }
    Ok(reports)
}

fn validate(w: &Workload) -> scalekit::Result<()> {
    let bad = |why: String| Err(scalekit::Error::config("playbook", why));
    if !(0.0..=1.0).contains(&w.read_share) {
        return bad(format!(
            "--reads is a share from 0 to 1, not {}",
            w.read_share
        ));
    }
    if w.keys == 0 || w.concurrency == 0 || w.node_capacity == 0 {
        return bad("--keys, --concurrency and --capacity must be at least 1".into());
    }
    // Every level holds every key (and replicas copies): keep it in memory.
    if w.keys > 50_000_000 || w.value_size > 1 << 20 || w.concurrency > 100_000 {
        return bad(
            "the lab holds at most 50,000,000 keys of at most 1 MiB, with at most 100,000 clients"
                .into(),
        );
    }
    if !(w.zipf >= 0.0 && w.zipf.is_finite()) {
        return bad(format!("--zipf is 0 or more, not {}", w.zipf));
    }
    if !(0.0..=1.0).contains(&w.cache_share) {
        return bad(format!(
            "--cache is a share from 0 to 1, not {}",
            w.cache_share
        ));
    }
    if w.measure.is_zero() {
        return bad("--seconds must be more than 0".into());
    }
    Ok(())
}

fn header() -> String {
    format!(
        "{:<16} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6}  {}",
        "level",
        "req/s",
        "reads/s",
        "writes/s",
        "p50",
        "p99",
        "p99.9",
        "calls/req",
        "hits",
        "bottleneck"
    )
}

fn row(r: &LevelReport) -> String {
    let ms = measure::human;
    format!(
        "{:<16} {:>9.0} {:>9.0} {:>8.0} {:>8} {:>8} {:>8} {:>9.3} {:>6}  {}{}",
        r.level,
        r.throughput,
        r.read_throughput,
        r.write_throughput,
        ms(r.p50),
        ms(r.p99),
        ms(r.p999),
        r.backend_calls_per_request,
        r.hit_ratio
            .map_or("-".into(), |h| format!("{:.1}%", h * 100.0)),
        r.bottleneck,
        if r.errors > 0 {
            format!(" ({} errors)", r.errors)
        } else {
            String::new()
        },
    )
}

/// The results as CSV, a header and a row per level.
pub fn csv(reports: &[LevelReport]) -> String {
    let mut out = String::from(
        "level,throughput,read_throughput,write_throughput,p50_us,p99_us,p999_us,\
         backend_calls_per_request,hit_ratio,primary_utilisation,replica_utilisation,\
         cpu_utilisation,bottleneck,errors\n",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{:.4},{},{:.3},{:.3},{},\"{}\",{}",
            r.level,
            r.throughput,
            r.read_throughput,
            r.write_throughput,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.p999.as_secs_f64() * 1e6,
            r.backend_calls_per_request,
            r.hit_ratio.map_or(String::new(), |h| format!("{h:.4}")),
            r.primary_utilisation,
            r.replica_utilisation,
            r.cpu_utilisation
                .map_or(String::new(), |c| format!("{c:.3}")),
            r.bottleneck,
            r.errors
        );
    }
    out
}

/// The results as an SVG chart: reads and writes a second per level (on a
/// log scale), and database calls per request.
pub fn svg(
    reports: &[LevelReport],
    workload: &Workload,
) -> Result<String, Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    const READS: RGBColor = RGBColor(52, 101, 164);
    const WRITES: RGBColor = RGBColor(204, 102, 0);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(420);
        let n = reports.len() as f64;
        let names: Vec<String> = reports.iter().map(|r| r.level.clone()).collect();
        let label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-9 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let rate = |v: f64| {
            if v >= 1e3 {
                format!("{:.0}k", v / 1e3)
            } else {
                format!("{v:.0}")
            }
        };

        let peak = reports
            .iter()
            .map(|r| r.read_throughput.max(r.write_throughput))
            .fold(10.0, f64::max);
        let mut chart = ChartBuilder::on(&top)
            .caption(describe(workload), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, (10.0..peak * 3.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(reports.len())
            .x_label_formatter(&label)
            .y_desc("per second (log scale)")
            .y_label_formatter(&|v| rate(*v))
            .draw()?;
        for (series, colour, offset, value) in [
            (
                "reads / s",
                READS,
                -0.2,
                (|r: &LevelReport| r.read_throughput) as fn(&LevelReport) -> f64,
            ),
            ("writes / s", WRITES, 0.2, |r: &LevelReport| {
                r.write_throughput
            }),
        ] {
            chart
                .draw_series(reports.iter().enumerate().map(|(i, r)| {
                    let x = i as f64 + offset;
                    Rectangle::new(
                        [(x - 0.18, 10.0), (x + 0.18, value(r).max(10.0))],
                        colour.filled(),
                    )
                }))?
                .label(series)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
            chart.draw_series(reports.iter().enumerate().map(|(i, r)| {
                let x = i as f64 + offset - 0.18;
                Text::new(
                    rate(value(r)),
                    (x, value(r).max(10.0) * 1.25),
                    ("sans-serif", 11),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;

        let most = reports
            .iter()
            .map(|r| r.backend_calls_per_request)
            .fold(0.1, f64::max)
            * 1.2;
        let mut calls = ChartBuilder::on(&bottom)
            .caption("database calls per request", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..most)?;
        calls
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(reports.len())
            .x_label_formatter(&label)
            .y_desc("calls / request")
            .draw()?;
        calls.draw_series(reports.iter().enumerate().map(|(i, r)| {
            let x = i as f64;
            Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, r.backend_calls_per_request)],
                RGBColor(90, 90, 90).filled(),
            )
        }))?;
        calls.draw_series(reports.iter().enumerate().map(|(i, r)| {
            Text::new(
                format!("{:.2}", r.backend_calls_per_request),
                (i as f64 - 0.15, r.backend_calls_per_request + most * 0.04),
                ("sans-serif", 11),
            )
        }))?;
        root.present()?;
    }
    Ok(out)
}

/// The workload in one line.
pub fn describe(w: &Workload) -> String {
    let clients = match w.clients {
        Clients::Split => format!(
            "{} clients ({:.0}% only read, the rest only write)",
            w.concurrency,
            w.read_share * 100.0
        ),
        Clients::Mixed => format!(
            "{} clients (each request {:.0}% a read)",
            w.concurrency,
            w.read_share * 100.0
        ),
    };
    format!(
        "{clients}, {} keys, Zipf {}, {} B values, {:?} per database call, {} at once per node",
        w.keys, w.zipf, w.value_size, w.latency, w.node_capacity
    )
}

const HELP: &str = "\
cargo run --release --example playbook -- [options]

  --reads SHARE        share of clients that read, 0..1        (0.9)
  --keys N             distinct keys                           (100000)
  --zipf S             Zipf exponent of key popularity         (0.99)
  --value-size BYTES   bytes per value                         (100)
  --latency-ms MS      latency of each database call           (1)
  --capacity N         calls each database node serves at once (4)
  --concurrency N      clients                                 (64)
  --clients KIND       split: readers and writers apart;
                       mixed: each client mixes both         (split)
  --cache SHARE        cache capacity as a share of the keys   (0.2)
  --seconds S          measured time per level                 (3)
  --warmup S           unmeasured time before each level       (0.5)
  --out DIR            where playbook.csv and playbook.svg go  (target/playbook)
";

/// The workload the command line asks for; `Err` with a message (or the
/// help) for anything else.
pub fn parse(args: &[String]) -> Result<Workload, String> {
    let mut w = Workload::default();
    for (flag, value) in options::pairs(args, HELP)? {
        let number = |what: &str| -> Result<f64, String> {
            value
                .parse::<f64>()
                .map_err(|_| format!("{flag} takes {what}, not {value:?}"))
        };
        let seconds = |scale: f64| -> Result<Duration, String> {
            Duration::try_from_secs_f64(number("a time")? / scale)
                .map_err(|_| format!("{flag} takes a time from 0 up, not {value:?}"))
        };
        match flag {
            "--reads" => w.read_share = number("a share from 0 to 1")?,
            "--keys" => w.keys = number("a count")? as u64,
            "--zipf" => w.zipf = number("an exponent")?,
            "--value-size" => w.value_size = number("a size in bytes")? as usize,
            "--latency-ms" => w.latency = seconds(1e3)?,
            "--capacity" => w.node_capacity = number("a count")? as usize,
            "--concurrency" => w.concurrency = number("a count")? as usize,
            "--clients" => {
                w.clients = match value {
                    "split" => Clients::Split,
                    "mixed" => Clients::Mixed,
                    _ => return Err(format!("--clients is split or mixed, not {value:?}")),
                }
            }
            "--cache" => w.cache_share = number("a share from 0 to 1")?,
            "--seconds" => w.measure = seconds(1.0)?,
            "--warmup" => w.warmup = seconds(1.0)?,
            "--out" => w.out = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown option {flag}\n\n{HELP}")),
        }
    }
    Ok(w)
}

/// How the levels compare: the ratios the playbook promises.
pub fn summary(reports: &[LevelReport]) -> Vec<String> {
    let find = |name: &str| reports.iter().find(|r| r.level == name);
    let mut lines = Vec::new();
    if let (Some(direct), Some(cache)) = (find("direct"), find("+ cache")) {
        lines.push(format!(
            "cache: {:.1}x fewer database calls per request, {:.1}x the throughput of the direct level",
            direct.backend_calls_per_request / cache.backend_calls_per_request.max(1e-9),
            cache.throughput / direct.throughput.max(1e-9)
        ));
    }
    let replicas: Vec<&LevelReport> = reports
        .iter()
        .filter(|r| r.level.contains("replica"))
        .collect();
    for pair in replicas.windows(2) {
        lines.push(format!(
            "{} -> {}: {:.2}x the read throughput",
            pair[0].level.trim_start_matches("+ "),
            pair[1].level.trim_start_matches("+ "),
            pair[1].read_throughput / pair[0].read_throughput.max(1e-9)
        ));
    }
    lines
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = match parse(&args) {
        Ok(w) => w,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(if message == HELP { 0 } else { 2 });
        }
    };
    println!(
        "scalekit playbook lab: {}, {:?} per level\n",
        describe(&workload),
        workload.measure
    );
    println!("{}", header());
    let reports = match run(&workload, |r| println!("{}", row(r))).await {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("the lab failed: {e}");
            std::process::exit(1);
        }
    };
    println!();
    for line in summary(&reports) {
        println!("{line}");
    }
    if let Some(dir) = &workload.out {
        let written = std::fs::create_dir_all(dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::fs::write(dir.join("playbook.csv"), csv(&reports)).map_err(|e| e.to_string())
            })
            .and_then(|()| svg(&reports, &workload).map_err(|e| e.to_string()))
            .and_then(|chart| {
                std::fs::write(dir.join("playbook.svg"), chart).map_err(|e| e.to_string())
            });
        match written {
            Ok(()) => println!(
                "\nwrote {0}/playbook.csv and {0}/playbook.svg",
                dir.display()
            ),
            Err(e) => {
                eprintln!("could not write the results to {}: {e}", dir.display());
                std::process::exit(1);
            }
        }
    }
}
