//! The workload: clients making the social app's requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scalekit::cache::{CacheTier, Cached, ReadThrough};
use scalekit::cqrs::{CommandError, Projection, QueryBus, QueryError};
use scalekit::replica::Positioned;
use scalekit::{Position, Store};

use super::model::{user, CreatePost, GetTimeline, PostCreated, Timelines, User, TIMELINE_LENGTH};
use super::stack::{Commands, Users};
use super::workload::{Rng, Zipf};

/// Counts and latencies of one kind of request.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests made.
    pub count: u64,
    /// Requests refused as bad input (typed errors, nothing written).
    pub rejected: u64,
    /// Requests that failed otherwise.
    pub failed: u64,
    pub latencies_ns: Vec<u64>,
}

impl Tally {
    pub fn record(&mut self, started: Instant) {
        self.count += 1;
        self.latencies_ns
            .push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.rejected += other.rejected;
        self.failed += other.failed;
        self.latencies_ns.extend(other.latencies_ns);
    }

    pub fn percentile(&mut self, p: f64) -> Duration {
        self.latencies_ns.sort_unstable();
        super::measure::percentile(&self.latencies_ns, p)
    }
}

pub const KINDS: [&str; 5] = [
    "view profile",
    "view timeline",
    "create post",
    "edit own profile",
    "admin edit",
];

/// One client's share of the run.
#[derive(Debug, Default)]
pub struct ClientReport {
    pub tallies: [Tally; 5],
    /// A read of one's own write that did not see it.
    pub read_your_writes_violations: u64,
    /// Posts accepted (each must be in the database at the end).
    pub posts_accepted: u64,
}

/// Everything the workload's clients share.
pub struct App<P, R, Q, T>
where
    P: Positioned<Key = u64, Value = User>,
    R: Positioned<Key = u64, Value = User>,
    Q: Store<Key = String, Value = Vec<u8>>,
{
    pub users: ReadThrough<Users<P, R>, T>,
    pub admin: Users<P, R>,
    pub commands: Commands<Q>,
    pub queries: QueryBus<Projection<Timelines, PostCreated>>,
    pub zipf: Zipf,
    pub user_count: u64,
    pub versions: AtomicU64,
    pub requests: AtomicU64,
}

pub async fn client<P, R, Q, T>(
    app: Arc<App<P, R, Q, T>>,
    seed: u64,
    clients: u64,
    deadline: Instant,
) -> ClientReport
where
    P: Positioned<Key = u64, Value = User>,
    R: Positioned<Key = u64, Value = User>,
    Q: Store<Key = String, Value = Vec<u8>>,
    T: CacheTier<Key = u64, Value = Cached<User>>,
{
    let mut rng = Rng(seed);
    let mut report = ClientReport::default();
    // This client's users' cookies: the token of their latest post.
    let mut cookies: HashMap<u64, (Position, u64)> = HashMap::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let who = app.zipf.sample(&mut rng);
        let dice = rng.next_f64();
        let started = Instant::now();
        app.requests.fetch_add(1, Ordering::Relaxed);
        if dice < 0.60 {
            let tally = &mut report.tallies[0];
            match app.users.get(&who).await {
                Ok(_) => tally.record(started),
                Err(_) => tally.failed += 1,
            }
        } else if dice < 0.80 {
            // A timeline page: the posts, then their authors' profiles in
            // one scatter-gather through the cache.
            let tally = &mut report.tallies[1];
            let answer = match cookies.get(&who) {
                Some(&(token, _)) => app.queries.query_after(GetTimeline(who), token).await,
                None => app.queries.query(GetTimeline(who)).await,
            };
            match answer {
                Ok(timeline) => {
                    // The user's latest post is there, unless fifty newer
                    // posts of the circle pushed it out.
                    if let Some(&(_, post)) = cookies.get(&who) {
                        let room = timeline.len() < TIMELINE_LENGTH || timeline[0].0 < post;
                        if room && !timeline.iter().any(|(id, _)| *id == post) {
                            report.read_your_writes_violations += 1;
                        }
                    }
                    let authors: Vec<u64> = timeline
                        .iter()
                        .rev()
                        .take(10)
                        .map(|(_, author)| *author)
                        .collect();
                    match app.users.get_many(&authors).await {
                        Ok(_) => tally.record(started),
                        Err(_) => tally.failed += 1,
                    }
                }
                Err(QueryError::Stale(_)) | Err(_) => tally.failed += 1,
            }
        } else if dice < 0.92 {
            let tally = &mut report.tallies[2];
            // One post in a hundred is empty: bad input, refused with a
            // typed error.
            let text = if n.is_multiple_of(100) {
                String::new()
            } else {
                format!("post {n} by client {seed}")
            };
            let command = CreatePost {
                author: who,
                text,
                request_id: format!("{seed}-{n}"),
            };
            match app.commands.dispatch(command).await {
                Ok(receipt) => {
                    tally.record(started);
                    report.posts_accepted += 1;
                    cookies.insert(who, (receipt.token, receipt.output));
                }
                Err(CommandError::Rejected(_)) => tally.rejected += 1,
                Err(CommandError::Failed(_)) => tally.failed += 1,
            }
        } else if dice < 0.97 {
            // Edit one's own profile through the cache, then read it back:
            // the session token makes the read see the write. Each client
            // edits its own even-numbered users, nobody else writes them.
            let tally = &mut report.tallies[3];
            let stride = 2 * clients;
            let mine = who - who % stride + 2 * (seed % clients);
            let mine = if mine < app.user_count {
                mine
            } else {
                2 * (seed % clients)
            };
            let edited = user(mine, app.versions.fetch_add(1, Ordering::Relaxed));
            match app.users.put(mine, edited.clone()).await {
                Ok(_) => match app.users.get(&mine).await {
                    Ok(seen) => {
                        if seen.as_ref() != Some(&edited) {
                            report.read_your_writes_violations += 1;
                        }
                        tally.record(started);
                    }
                    Err(_) => tally.failed += 1,
                },
                Err(_) => tally.failed += 1,
            }
        } else {
            // The admin instance writes below the cache (odd-numbered
            // users): only the change event tells the cache.
            let tally = &mut report.tallies[4];
            let odd = (who | 1).min(app.user_count - 1 - (app.user_count % 2 == 1) as u64);
            let version = app.versions.fetch_add(1, Ordering::Relaxed);
            match app.admin.put(odd, user(odd, version)).await {
                Ok(_) => tally.record(started),
                Err(_) => tally.failed += 1,
            }
        }
    }
    report
}

pub fn progress_bar(requests: &AtomicU64, started: Instant, duration: Duration) -> String {
    let done = (started.elapsed().as_secs_f64() / duration.as_secs_f64()).min(1.0);
    let width = 30;
    let filled = (done * width as f64) as usize;
    let count = requests.load(Ordering::Relaxed);
    format!(
        "\r[{}{}] {:>3.0}%  {:>8} requests  {:>7.0}/s ",
        "#".repeat(filled),
        ".".repeat(width - filled),
        done * 100.0,
        count,
        count as f64 / started.elapsed().as_secs_f64().max(1e-3)
    )
}
