//! The main job: a social app's data layer, composed from every level of
//! the playbook, on the embedded default (no server to run).
//!
//! ```text
//! cargo run --release --example data_layer
//! cargo run --release --example data_layer -- --help
//! ```
//!
//! The stack, from the request down:
//!
//! ```text
//! profiles ─ ReadThrough cache (MemoryTier, or RedisTier with --redis)
//!              └ Sharded by jump hash over 4 shards, each:
//!                  Publishing (every write becomes a Change event)
//!                    └ RecentWrites (reads of keys written lately wait for a replica that has them)
//!                        └ ReplicaSet: primary = SQLite file (or a PostgreSQL table),
//!                                      1 simulated replica (in memory, 2 ms behind),
//!                                      or its streaming standby (--postgres-standby)
//! changes  ─ event bus topic (or NATS JetStream with --nats):
//!              "cache-invalidation" remembers the change's position for its key, then drops the key from the cache
//!              "welcome-email"      an email gateway that refuses some addresses (retried, then dead-lettered)
//! posts    ─ CommandBus (CreatePost) over a journalled WriteBehind over SQLite (or PostgreSQL)
//!              └ Projection "timelines" (fan-out to each author's circle) ─ QueryBus (GetTimeline, with tokens)
//! ```
//!
//! A second "admin" instance edits profiles through its own stack over the
//! same databases, without the cache: the cache hears of those writes only
//! through the change events. The program runs a mixed workload for a few
//! seconds, prints a table per layer, then checks what it promised: every
//! acknowledged post is in the database, the cache agrees with the
//! primaries on every user, every read of one's own write saw it, every
//! dead letter was replayed. It exits 1 if any check fails.

use std::sync::Arc;
use std::time::Duration;

use scalekit::cache::MemoryTier;
use scalekit::events::EventBus;
use scalekit::replica::Positioned;
use scalekit::store::SqliteStore;
use scalekit::Store;

#[path = "../support/measure.rs"]
mod measure;
#[path = "../support/options.rs"]
mod options;
#[path = "../support/workload.rs"]
mod workload;

#[path = "clients.rs"]
mod clients;
#[path = "feed.rs"]
mod feed;
#[path = "model.rs"]
mod model;
#[path = "report.rs"]
mod report;
#[path = "stack.rs"]
mod stack;

use feed::Feed;
use model::User;
pub use report::Report;
use stack::{run_on, Databases};

/// What to run on, and how long.
#[derive(Debug, Clone)]
pub struct Config {
    /// Users in the table.
    pub users: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// How long the workload runs.
    pub duration: Duration,
    /// A progress bar on standard error (when it is a terminal).
    pub progress: bool,
    /// PostgreSQL URL: shards and posts in PostgreSQL tables instead of SQLite files.
    pub postgres: Option<String>,
    /// The URL of a streaming standby of that PostgreSQL: read from it
    /// instead of from simulated replicas.
    pub postgres_standby: Option<String>,
    /// Redis URL: the profile cache in Redis instead of this process's memory.
    pub redis: Option<String>,
    /// NATS URL: change events through JetStream instead of the in-process bus.
    pub nats: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            users: 10_000,
            clients: 32,
            duration: Duration::from_secs(4),
            progress: true,
            postgres: None,
            postgres_standby: None,
            redis: None,
            nats: None,
        }
    }
}

const HELP: &str = "\
cargo run --release --example data_layer -- [options]

  --users N          users in the table                          (10000)
  --clients N        concurrent clients                          (32)
  --seconds S        how long the workload runs                  (4)
  --postgres URL     shards and posts in PostgreSQL   (or SCALEKIT_DATA_LAYER_POSTGRES; feature postgres)
  --postgres-standby URL
                     read from its streaming standby  (or SCALEKIT_DATA_LAYER_POSTGRES_STANDBY)
  --redis URL        the profile cache in Redis       (or SCALEKIT_DATA_LAYER_REDIS; feature redis)
  --nats URL         change events through JetStream  (or SCALEKIT_DATA_LAYER_NATS; feature nats)
";

pub fn parse(args: &[String]) -> Result<Config, String> {
    let mut config = Config::default();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    config.postgres = env("SCALEKIT_DATA_LAYER_POSTGRES");
    config.postgres_standby = env("SCALEKIT_DATA_LAYER_POSTGRES_STANDBY");
    config.redis = env("SCALEKIT_DATA_LAYER_REDIS");
    config.nats = env("SCALEKIT_DATA_LAYER_NATS");
    for (flag, value) in options::pairs(args, HELP)? {
        let count = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))
        };
        match flag {
            "--users" => config.users = count()?,
            "--clients" => config.clients = count()? as usize,
            "--seconds" => {
                let seconds: f64 = value
                    .parse()
                    .map_err(|_| format!("--seconds takes seconds, not {value:?}"))?;
                config.duration = Duration::try_from_secs_f64(seconds)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("--seconds must be more than 0, not {value}"))?;
            }
            "--postgres" => config.postgres = Some(value.to_string()),
            "--postgres-standby" => config.postgres_standby = Some(value.to_string()),
            "--redis" => config.redis = Some(value.to_string()),
            "--nats" => config.nats = Some(value.to_string()),
            _ => return Err(format!("unknown option {flag}\n\n{HELP}")),
        }
    }
    if config.users < 10 || config.clients == 0 || config.clients as u64 * 2 > config.users {
        return Err(
            "--users must be at least 10 and twice --clients, and --clients at least 1".into(),
        );
    }
    if config.users > 10_000_000 {
        return Err("--users is at most 10,000,000 (the replicas are in memory)".into());
    }
    Ok(config)
}

/// Opens the databases the configuration names, and runs.
pub async fn run(config: &Config, dir: &std::path::Path) -> scalekit::Result<Report> {
    let feed = open_feed(config).await?;
    let journal = dir.join("posts.journal");
    match (&config.postgres, &config.postgres_standby) {
        (None, None) => {
            let mut stores = Vec::new();
            for shard in 0..4 {
                stores.push(
                    SqliteStore::<u64, User>::builder()
                        .path(dir.join(format!("users-{shard}.db")))
                        .table("users")
                        .build()
                        .await?,
                );
            }
            let posts = Arc::new(
                SqliteStore::<String, Vec<u8>>::builder()
                    .path(dir.join("posts.db"))
                    .build()
                    .await?,
            );
            let databases = Databases {
                shards: stack::simulated(stores, config.users).await?,
                posts,
                journal,
                description: format!(
                    "4 SQLite files, each with a simulated replica, and a posts file in {}",
                    dir.display()
                ),
            };
            with_tier(config, databases, feed).await
        }
        #[cfg(feature = "postgres")]
        (Some(url), standby) => {
            let mut primaries = Vec::new();
            for shard in 0..4 {
                primaries.push(fresh_table(url, &format!("data_layer_users_{shard}")).await?);
            }
            let posts = Arc::new(fresh_table::<String, Vec<u8>>(url, "data_layer_posts").await?);
            match standby {
                None => {
                    let databases = Databases {
                        shards: stack::simulated(primaries, config.users).await?,
                        posts,
                        journal,
                        description: format!(
                            "4 PostgreSQL tables at {url}, each with a simulated replica, and a posts table"
                        ),
                    };
                    with_tier(config, databases, feed).await
                }
                Some(standby) => {
                    let primaries: Vec<_> = primaries.into_iter().map(Arc::new).collect();
                    stack::seed(&primaries, config.users).await?;
                    let mut shards = Vec::new();
                    for (shard, primary) in primaries.into_iter().enumerate() {
                        let replica = standby_table(standby, &primary, shard).await?;
                        shards.push((primary, Arc::new(replica)));
                    }
                    let databases = Databases {
                        shards,
                        posts,
                        journal,
                        description: format!(
                            "4 PostgreSQL tables at {url}, read from its streaming standby at {standby}, and a posts table"
                        ),
                    };
                    with_tier(config, databases, feed).await
                }
            }
        }
        #[cfg(not(feature = "postgres"))]
        (Some(_), _) => Err(needs("postgres")),
        (None, Some(_)) => Err(scalekit::Error::config(
            "data_layer",
            "a standby needs its primary: give --postgres too",
        )),
    }
}

/// The standby's copy of a shard's table, once the standby has replayed
/// the primary's writes so far (it has the table and the users then).
#[cfg(feature = "postgres")]
async fn standby_table(
    url: &str,
    primary: &scalekit::store::PostgresStore<u64, User>,
    shard: usize,
) -> scalekit::Result<scalekit::store::PostgresStore<u64, User>> {
    use scalekit::replica::Positioned;
    let replica = scalekit::store::PostgresStore::<u64, User>::builder()
        .url(url)
        .table(format!("data_layer_users_{shard}"))
        .create_table(false)
        .build()
        .await?;
    let target = primary.applied_position().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while replica.applied_position().await? < target {
        if tokio::time::Instant::now() > deadline {
            return Err(scalekit::Error::unavailable(
                "data_layer",
                "the standby did not catch up with the primary in 10 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(replica)
}

#[cfg_attr(
    all(feature = "postgres", feature = "redis", feature = "nats"),
    allow(dead_code)
)]
fn needs(feature: &str) -> scalekit::Error {
    scalekit::Error::config(
        "data_layer",
        format!("this build has no {feature} support: run it with --features {feature}"),
    )
}

/// A PostgreSQL table emptied for this run.
#[cfg(feature = "postgres")]
async fn fresh_table<K, V>(
    url: &str,
    table: &str,
) -> scalekit::Result<scalekit::store::PostgresStore<K, V>>
where
    K: scalekit::codec::Codec + Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    V: scalekit::codec::Codec + Clone + Send + Sync + 'static,
{
    let open = || {
        scalekit::store::PostgresStore::<K, V>::builder()
            .url(url)
            .table(table)
            .build()
    };
    open().await?.drop_table().await?;
    open().await
}

async fn open_feed(config: &Config) -> scalekit::Result<Feed> {
    match &config.nats {
        None => Ok(Feed::Local(EventBus::new().topic("users.changes")?)),
        #[cfg(feature = "nats")]
        Some(url) => {
            use scalekit::events::nats::NatsTopic;
            // A fresh stream: the databases are fresh too.
            NatsTopic::<feed::UserChange>::connect(url, "data_layer_users")
                .await?
                .delete()
                .await?;
            Ok(Feed::Nats(Arc::new(
                NatsTopic::connect(url, "data_layer_users").await?,
            )))
        }
        #[cfg(not(feature = "nats"))]
        Some(_) => Err(needs("nats")),
    }
}

async fn with_tier<P, R, Q>(
    config: &Config,
    databases: Databases<P, R, Q>,
    feed: Feed,
) -> scalekit::Result<Report>
where
    P: Positioned<Key = u64, Value = User> + Clone,
    R: Positioned<Key = u64, Value = User> + Clone,
    Q: Store<Key = String, Value = Vec<u8>>,
{
    match &config.redis {
        None => {
            let tier = MemoryTier::with_capacity(config.users / 5 + 1)?;
            run_on(
                config,
                databases,
                (tier, "in process (a fifth of the users)"),
                feed,
            )
            .await
        }
        #[cfg(feature = "redis")]
        Some(url) => {
            // A namespace of this run's own: the databases are fresh, so
            // no earlier run's entries may be read.
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let tier = scalekit::cache::RedisTier::<u64, User>::builder()
                .url(url)
                .namespace(format!("data_layer:{run}:{}", std::process::id()))
                .time_to_live(Duration::from_secs(600))
                .build()
                .await?;
            run_on(config, databases, (tier, "Redis"), feed).await
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => Err(needs("redis")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(if message == HELP { 0 } else { 2 });
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("no temporary directory: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "scalekit data layer: {} users, {} clients, {:?}; profiles sharded 4 ways with a replica each, \
         cached, change events, posts through a journalled write-behind, CQRS timelines",
        config.users, config.clients, config.duration
    );
    let mut report = match run(&config, dir.path()).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("the data layer failed: {e}");
            std::process::exit(1);
        }
    };
    report.print();
    let failures = report.failures();
    if failures.is_empty() {
        let letters = format!(
            "{} dead letters replayed once the gateway recovered, none left",
            report.dead_letters_replayed
        );
        println!(
            "\nverified: all {} accepted posts are in the database; the cache agrees with the primaries on all {} users; \
             every read of one's own write saw it; {letters}",
            report.posts.0, config.users,
        );
    } else {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        std::process::exit(1);
    }
}
