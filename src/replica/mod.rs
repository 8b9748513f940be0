//! Read replicas: writes to the primary, reads spread over replicas that
//! are healthy, close enough behind and lightly loaded, with
//! read-your-writes when a reader needs it and a fallback to the primary
//! that cannot overload it.
//!
//! # Which tool for which problem
//!
//! | you want | use |
//! |---|---|
//! | reads off the primary, writes to it, in one [`Store`](crate::Store) | [`ReplicaSet`]: `ReplicaSet::builder().primary(p).replica("r1", r1)…build()` |
//! | a slow or busy replica to get fewer reads | the default [`Balance::PeakEwma`] (power of two choices over peak-EWMA latency × reads in flight); [`weighted_replica`](ReplicaSetBuilder::weighted_replica) for bigger machines |
//! | a failing replica out of rotation, and back later | [`Ejection`]: after N consecutive failures, for a time that doubles per repeat, never more than a share of the replicas at once; position polls double as health checks |
//! | no reads from a replica that is too far behind | [`MaxLag`] by positions or time, with hysteresis |
//! | a user to read what they just wrote | the position a write returns is a token: [`ReplicaSet::get_after`]; or a [`Session`] per user or request, which tracks it for you |
//! | reads of the keys this process wrote lately to see those writes, without every other read waiting (under a cache, say) | [`RecentWrites`]: remembers each written key's position until every replica has it |
//! | read-your-writes across processes (a token in a cookie or a job) | [`Position`](crate::Position) prints and parses as a number: [`Session::resume`] with it |
//! | the primary protected when replicas fail or lag | the spill budget ([`spill_budget`](ReplicaSetBuilder::spill_budget)): beyond it a read is a typed error, not a primary overload |
//! | replicas to test against without servers | [`simulated`]: a primary and replicas in memory with a delay you set |
//! | PostgreSQL streaming replicas | [`PostgresStore`](crate::store::PostgresStore) (feature `postgres`): positions are WAL LSNs |
//!
//! # The read ladder
//!
//! A plain read goes to a replica that is not ejected and within
//! `max_lag`, chosen by the [`Balance`] policy; if it fails, to one other
//! such replica; then (if [`allow_stale_reads`](ReplicaSetBuilder::allow_stale_reads))
//! to the least-lagged replica; then to the primary if the spill budget
//! allows; else it is an [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)
//! error carrying the last replica's error. A token read goes only to
//! replicas that have applied the token, waits up to
//! [`token_wait`](ReplicaSetBuilder::token_wait) for one (asking the
//! replicas for their positions meanwhile), then takes the same way down.
//! Writes always go to the primary and return its position.
//!
//! ```
//! use std::time::Duration;
//! use scalekit::replica::{simulated::SimulatedPrimary, ReplicaSet, Session};
//! use scalekit::Store;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! let primary = SimulatedPrimary::<u64, String>::new();
//! let set = ReplicaSet::builder()
//!     .primary(primary.clone())
//!     .replica("r1", primary.replica(Duration::from_millis(5)).await?)
//!     .replica("r2", primary.replica(Duration::from_millis(5)).await?)
//!     .build()
//!     .await?;
//!
//! let token = set.put(7, "seven".into()).await?;      // to the primary
//! assert_eq!(set.get_after(&7, token).await?, Some("seven".into()));
//!
//! let alice = Session::new(set.clone());               // tracks her token
//! alice.put(8, "eight".into()).await?;
//! assert_eq!(alice.get(&8).await?, Some("eight".into()));
//! # Ok::<(), scalekit::Error>(()) }).unwrap();
//! ```
//!
//! # Performance (a shared 2-core machine; medians of three runs)
//!
//! `cargo bench --bench replica`: routing a read through a set of three
//! in-memory replicas costs about 75 ns more than reading one replica
//! directly; `tower::balance::p2c` over `PeakEwma` load choosing among the
//! same three costs about 645 ns more (the set: 0.12× of it). Routing
//! reads a remembered clock (refreshed by the poller and by measured
//! reads) and times one read in eight per replica: reading the clock
//! costs more than the rest of the routing.
//!
//! # What it buys, what it costs
//!
//! In the playbook lab (`cargo run --release --example playbook`: nodes
//! serving 4 calls at once at 1 ms each, a cache in front), each doubling
//! of replicas doubled read throughput (1.97×, 1.99×) while readers and
//! writers were separate clients. When every client mixes 10% writes in,
//! replicas stop helping once the primary is saturated by the writes
//! (1 → 2 replicas 1.72×, 2 → 4 replicas 1.00×): replicas scale reads,
//! not writes. Read-your-writes has a price too: in the `data_layer`
//! example, where a cache miss must not fill the cache from a replica
//! behind a write the cache has seen, [`RecentWrites`] makes a miss on a
//! key written lately wait for its replica (2 ms behind): about one
//! replica read in five, 4 ms each. One process-wide [`Session`] there
//! made four reads in five wait, and the whole program ran at 55% of the
//! throughput.

mod budget;
mod clock;
mod health;
mod lag;
mod load;
mod positioned;
mod recent;
mod session;
mod set;
pub mod simulated;
mod stats;

pub use self::health::Ejection;
pub use self::lag::MaxLag;
pub use self::positioned::Positioned;
pub use self::recent::RecentWrites;
pub use self::session::Session;
pub use self::set::{Balance, ReplicaSet, ReplicaSetBuilder, MAX_REPLICAS};
pub use self::stats::{ReplicaSetStats, ReplicaStats};
