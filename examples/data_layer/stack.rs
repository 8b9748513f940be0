//! The layers, assembled over the databases; the run; the checks.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scalekit::cache::{CacheTier, Cached, ReadThrough, SyncPolicy, WhenFull, WriteBehind};
use scalekit::codec::Codec;
use scalekit::cqrs::{CommandBus, EventSource, Projection, QueryBus, Recorded};
use scalekit::events::{Event, Publishing};
use scalekit::replica::simulated::{SimulatedPrimary, SimulatedReplica};
use scalekit::replica::{Positioned, RecentWrites, ReplicaSet};
use scalekit::shard::{Jump, Sharded};
use scalekit::store::Scan;
use scalekit::{Store, Write};

use super::clients::{client, progress_bar, App, Tally, KINDS};
use super::feed::{Feed, UserChange};
use super::model::{
    circle, user, PostCreated, PostHandler, TimelineHandler, Timelines, User, TIMELINE_LENGTH,
};
use super::report::{LagSamples, Report};
use super::workload::Zipf;
use super::Config;

pub type Primary<P> = SimulatedPrimary<u64, User, P>;
pub type Replica = SimulatedReplica<u64, User>;
pub type Shard<P, R> = Publishing<RecentWrites<P, R>, Feed>;
pub type Users<P, R> = Sharded<Shard<P, R>>;
pub type Posts<Q> = Arc<WriteBehind<Arc<Q>>>;
pub type Commands<Q> = CommandBus<Posts<Q>, PostCreated>;

/// The databases the layers sit on.
pub struct Databases<P, R, Q> {
    /// Per shard: its primary and its replica, the users already in.
    pub shards: Vec<(P, R)>,
    /// The posts table (the write model and its event log).
    pub posts: Arc<Q>,
    /// Where the write-behind journal lives.
    pub journal: PathBuf,
    /// What they are, for the report.
    pub description: String,
}

/// The users table as it was before this run, written to the primaries
/// by the same routing the stack uses.
pub async fn seed<P>(primaries: &[P], users: u64) -> scalekit::Result<()>
where
    P: Store<Key = u64, Value = User> + Clone,
{
    let rows: Vec<Write<u64, User>> = (0..users).map(|id| Write::Put(id, user(id, 0))).collect();
    Sharded::builder()
        .shards(primaries.to_vec())
        .strategy(Jump::new(primaries.len())?)
        .build()?
        .write_batch(rows)
        .await?;
    Ok(())
}

/// Each store a primary with a simulated replica, 2 ms behind it, that
/// starts from a copy of the seeded table.
pub async fn simulated<P>(
    stores: Vec<P>,
    users: u64,
) -> scalekit::Result<Vec<(Primary<P>, Replica)>>
where
    P: Store<Key = u64, Value = User> + Scan,
{
    let primaries: Vec<Primary<P>> = stores.into_iter().map(SimulatedPrimary::over).collect();
    seed(&primaries, users).await?;
    let mut shards = Vec::new();
    for primary in primaries {
        let replica = primary.replica(Duration::from_millis(2)).await?;
        shards.push((primary, replica));
    }
    Ok(shards)
}

/// One process's view of the users: a replica set per shard (its own
/// routing, and the positions of the keys it wrote lately, so that reads
/// of those keys see the writes) over the shared databases.
pub async fn users_stack<P, R>(
    databases: &[(P, R)],
    feed: &Feed,
) -> scalekit::Result<(Users<P, R>, Vec<ReplicaSet<P, R>>)>
where
    P: Positioned<Key = u64, Value = User> + Clone,
    R: Positioned<Key = u64, Value = User> + Clone,
{
    let mut shards = Vec::new();
    let mut sets = Vec::new();
    for (primary, replica) in databases {
        let set = ReplicaSet::builder()
            .primary(primary.clone())
            .replica("replica", replica.clone())
            .token_wait(Duration::from_millis(20))
            .build()
            .await?;
        sets.push(set.clone());
        shards.push(Publishing::new(RecentWrites::new(set), feed.clone()));
    }
    let users = Sharded::builder()
        .shards(shards)
        .strategy(Jump::new(databases.len())?)
        .build()?;
    Ok((users, sets))
}

/// Builds the stack over `databases` with the cache in `tier`, runs the
/// workload, verifies, and reports.
pub async fn run_on<P, R, Q, T>(
    config: &Config,
    databases: Databases<P, R, Q>,
    (tier, cache_description): (T, &str),
    feed: Feed,
) -> scalekit::Result<Report>
where
    P: Positioned<Key = u64, Value = User> + Clone,
    R: Positioned<Key = u64, Value = User> + Clone,
    Q: Store<Key = String, Value = Vec<u8>>,
    T: CacheTier<Key = u64, Value = Cached<User>>,
{
    let (users, sets) = users_stack(&databases.shards, &feed).await?;
    let (admin, _) = users_stack(&databases.shards, &feed).await?;
    let users = ReadThrough::builder(users, tier).build()?;

    // Change events: the cache hears of writes it did not make; an email
    // gateway refuses bounce addresses until it "recovers".
    let invalidation = {
        let users = users.clone();
        feed.subscribe("cache-invalidation", 2, move |event: Event<UserChange>| {
            let users = users.clone();
            async move {
                let change = event.payload();
                let sharded = users.get_ref();
                let shard = sharded.shard_of(&change.key)?;
                // Loads of the key from now on wait for a replica that has
                // the change.
                sharded.shards()[shard]
                    .get_ref()
                    .observe(&change.key, change.position);
                users.invalidate(&change.key).await;
                Ok(())
            }
        })
        .await?
    };
    let gateway_down = Arc::new(AtomicBool::new(true));
    let emails = {
        let down = Arc::clone(&gateway_down);
        feed.subscribe("welcome-email", 1, move |event: Event<UserChange>| {
            let down = Arc::clone(&down);
            async move {
                match &event.payload().value {
                    Some(u)
                        if u.email.ends_with("bounce.invalid") && down.load(Ordering::Relaxed) =>
                    {
                        Err(format!("the gateway refused {}", u.email).into())
                    }
                    _ => Ok(()),
                }
            }
        })
        .await?
    };

    // Posts: commands through a journalled write-behind, a projection
    // fanning each post out to the author's circle, queries with tokens.
    let posts: Posts<Q> = Arc::new(
        WriteBehind::builder(Arc::clone(&databases.posts))
            .batch_size(512)
            .max_delay(Duration::from_millis(10))
            .max_buffered(100_000, WhenFull::Wait)
            .journal(
                &databases.journal,
                SyncPolicy::Interval(Duration::from_millis(5)),
            )
            .build()?,
    );
    // A write-behind buffer acknowledges before SQLite decides, so it
    // cannot write conditionally: this bus is the posts log's only writer.
    let commands: Commands<Q> = CommandBus::builder(Arc::clone(&posts), "posts")
        .single_process()
        .handle(PostHandler)
        .build()?;
    let source: Arc<dyn EventSource<PostCreated>> = Arc::new(commands.clone());
    let user_count = config.users;
    let timelines = Projection::start(
        "timelines",
        source,
        Timelines::new(),
        Arc::clone(&databases.posts).into_dyn(),
        move |recorded: Recorded<PostCreated>, timelines: Arc<Timelines>| async move {
            let post = recorded.event;
            for reader in circle(post.author, user_count) {
                let mut timeline = timelines.get(&reader).await?.unwrap_or_default();
                if !timeline.iter().any(|(id, _)| *id == post.id) {
                    timeline.push((post.id, post.author));
                    if timeline.len() > TIMELINE_LENGTH {
                        timeline.remove(0);
                    }
                    timelines.put(reader, timeline).await?;
                }
            }
            Ok(())
        },
    )
    .await?;
    let queries = QueryBus::builder(timelines.clone())
        .handle(TimelineHandler(timelines.clone()))
        .wait_at_most(Duration::from_secs(2))
        .build()?;

    let app = Arc::new(App {
        users: users.clone(),
        admin,
        commands: commands.clone(),
        queries,
        zipf: Zipf::new(config.users, 0.9),
        user_count: config.users,
        versions: AtomicU64::new(1),
        requests: AtomicU64::new(0),
    });
    let started = Instant::now();
    let deadline = started + config.duration;
    let clients: Vec<_> = (0..config.clients)
        .map(|i| {
            tokio::spawn(client(
                Arc::clone(&app),
                i as u64,
                config.clients as u64,
                deadline,
            ))
        })
        .collect();
    // While the clients run: the progress bar, and how far the timelines
    // projection is behind the log (in events), sampled every 10 ms.
    let show = config.progress && std::io::stderr().is_terminal();
    let mut lag = LagSamples::default();
    let mut shown = Instant::now();
    while Instant::now() < deadline {
        let log = commands.position().await?;
        lag.record(log.get().saturating_sub(timelines.position().get()));
        if show && shown.elapsed() >= Duration::from_millis(100) {
            eprint!("{}", progress_bar(&app.requests, started, config.duration));
            let _ = std::io::stderr().flush();
            shown = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut tallies: [Tally; 5] = Default::default();
    let mut violations = 0;
    let mut accepted = 0;
    for c in clients {
        let r = c
            .await
            .map_err(|e| scalekit::Error::backend("data_layer", "run a client", e))?;
        for (all, one) in tallies.iter_mut().zip(r.tallies) {
            all.merge(one);
        }
        violations += r.read_your_writes_violations;
        accepted += r.posts_accepted;
    }
    let elapsed = started.elapsed();
    if show {
        eprintln!("{}", progress_bar(&app.requests, started, config.duration));
    }
    let projection_at_stop = (timelines.position(), commands.position().await?);

    // Verify. Posts: every acknowledged one reaches the database.
    posts.flush().await?;
    let last_id = databases.posts.get(&"posts/last-id".to_string()).await?;
    let last_id = match last_id {
        Some(bytes) => u64::decode(&bytes).map_err(|e| {
            scalekit::Error::backend(
                "data_layer",
                "read posts/last-id",
                std::io::Error::other(e.to_string()),
            )
        })?,
        None => 0,
    };
    let keys: Vec<String> = (1..=last_id).map(|id| format!("post/{id}")).collect();
    let mut in_database = 0;
    for chunk in keys.chunks(1_000) {
        in_database += databases
            .posts
            .get_many(chunk)
            .await?
            .iter()
            .flatten()
            .count() as u64;
    }
    // Events: once every change is handled, the cache agrees with the
    // primaries on every user.
    invalidation.caught_up().await?;
    emails.caught_up().await?;
    let mut cache_mismatches = 0;
    let ids: Vec<u64> = (0..config.users).collect();
    for chunk in ids.chunks(1_000) {
        let cached = users.get_many(chunk).await?;
        for ((id, seen), _) in chunk.iter().zip(&cached).zip(0..) {
            let primary = sets[users.get_ref().shard_of(id)?].primary();
            if primary.get(id).await? != *seen {
                cache_mismatches += 1;
            }
        }
    }
    // The gateway recovers: the dead letters are handled, none lost.
    let invalidation_stats = invalidation.stats();
    let email_stats = emails.stats();
    gateway_down.store(false, Ordering::Relaxed);
    let dead_letters_replayed = emails.replay_dead_letters().await?;
    let groups = vec![
        (
            "cache-invalidation".to_string(),
            invalidation_stats,
            invalidation.dead_letters().await?,
        ),
        (
            "welcome-email".to_string(),
            email_stats,
            emails.dead_letters().await?,
        ),
    ];
    let events_published = match &feed {
        Feed::Local(topic) => topic.stats().published,
        #[cfg(feature = "nats")]
        Feed::Nats(topic) => topic.stats().await?.published,
    };

    let report = Report {
        databases: format!(
            "on: {}; cache: {}; events: {}",
            databases.description,
            cache_description,
            match &feed {
                Feed::Local(_) => "the in-process event bus",
                #[cfg(feature = "nats")]
                Feed::Nats(_) => "NATS JetStream",
            }
        ),
        requests: KINDS.iter().map(|k| k.to_string()).zip(tallies).collect(),
        cache: users.stats(),
        write_behind: posts.stats(),
        replicas: sets.iter().map(|s| s.stats()).collect(),
        shards: users.get_ref().stats(),
        events_published,
        groups,
        dead_letters_replayed,
        projection_at_stop,
        projection_lag: lag,
        posts: (accepted, in_database),
        cache_mismatches,
        read_your_writes_violations: violations,
        elapsed,
    };
    posts.shutdown().await;
    Ok(report)
}
