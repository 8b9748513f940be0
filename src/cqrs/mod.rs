//! CQRS: commands change a write model and emit events; queries read read
//! models that projections build from those events.
//!
//! # Which tool for which problem
//!
//! | you want | use |
//! |---|---|
//! | each command type handled by exactly one handler, returning a typed result | [`CommandBus`] with a [`CommandHandler`] per [`Command`] type |
//! | a validation failure told apart from an outage | [`CommandError::Rejected`] against [`CommandError::Failed`] |
//! | events that exist exactly when the write that caused them does | the command's staged writes and its events are one batch: the events go to the log in the write store |
//! | no event lost if the process dies between commit and publish | the log is the outbox: [`CommandBus::recover`] publishes what was committed and not yet published |
//! | a command retried by a client not to be applied twice | [`Command::idempotency_key`]: the first result is stored with the writes and returned again |
//! | a later read to see a command's effect | the [`Receipt::token`] a command returns: the log position after its events |
//! | read models built from the events, that say how far they are | [`Projection`]: applies the log in order, keeps a durable checkpoint, [`position`](Projection::position), [`rebuild`](Projection::rebuild) into a shadow read model |
//! | an event a projection cannot apply | retried ([`ProjectionOptions`]), then set aside as a [`DeadEvent`], recorded in the checkpoint store before the checkpoint passes it (so it survives restarts), bounded (past the limit the projection stops rather than skip), listed by [`dead_events`](Projection::dead_events) and applied again by [`replay_dead_events`](Projection::replay_dead_events) |
//! | a query that sees its own command, or says it cannot | [`QueryBus::query_after`] with the command's token: waits for the projection, then [`QueryError::Stale`] rather than old data |
//! | validation, timing and retries around every command and query | one [`Middleware`] pipeline: [`Validate`], [`Timing`], [`Retry`] (and your own layers), added with `.layer(..)` on either bus; idempotency is the command bus's own, because the key must be stored with the command's writes |
//! | many app servers sending commands to one log | any number of [`CommandBus`]es over one store: commits are conditional writes (see below) |
//! | one process of many to run a projection, another to take over when it dies | [`Projection::start_leased`] with a [`projection_lease`]: the holder runs, the others follow the stored checkpoint |
//! | a runner paused past its lease unable to write when it wakes | its checkpoint and set-aside writes are fenced by the lease; build the read model's store as a [`Fenced`](crate::lease::Fenced) from `lease.fence()` |
//!
//! # Across processes
//!
//! Commands run concurrently, in one process and across many. A
//! handler's reads ([`CommandContext::get`]) remember the version read;
//! the commit is one [`Store::write_if`](crate::Store::write_if) that
//! checks those versions, that the log slot after the last event is free
//! and that the idempotency record is absent, and writes the documents,
//! the events, the log's next number and the record together. So no two
//! events share a sequence number, none is overwritten, the log has no
//! gap, and an idempotency key is handled once however many processes
//! race on it (the losers answer with the winner's receipt). A command
//! whose reads went stale runs again, at most
//! [`max_conflict_retries`](CommandBusBuilder::max_conflict_retries)
//! times, then fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict).
//! Commands that reach the commit together commit in one batch (group
//! commit), which is why concurrency pays even on one log. Tokens are log
//! positions, so a query with a token works in any process whose
//! projection follows the same log.
//!
//! The write store must do conditional writes (SQLite, PostgreSQL and
//! memory do). Over a store that cannot (a journalled
//! [`WriteBehind`](crate::cache::WriteBehind), as the `data_layer`
//! example runs it), build the bus
//! [`single_process`](CommandBusBuilder::single_process): commands then
//! run one at a time and commit with plain batches, correct while that
//! bus is the log's only writer; a command commits once its batch is in
//! the journal, and a crash replays it whole.
//!
//! # What it costs
//!
//! Reads and writes part ways: a query reads a read model that lags the
//! log (in the `data_layer` example the timelines projection, fanning
//! each of about 6,600 posts a second out to ten timelines, was 4 events
//! behind on average and 100 at most, sampled every 10 ms), so a reader
//! that must see its own command passes the token and may wait. A commit
//! is a conditional write per group of concurrent commands: 16 senders on
//! distinct aggregates over a store with 1 ms latency run 11.7× the
//! commands a second of a single-process bus (`benches/cqrs.rs`). In
//! exchange, read models take the shape
//! each query needs, can be rebuilt from the log, and scale apart from
//! the write model.
//!
//! # Why projections read the log, not the event bus
//!
//! A projection's checkpoint must name a place in a durable, ordered
//! source, or it means nothing after a restart: the in-process
//! [`EventBus`](crate::events::EventBus) forgets its events when the
//! process ends, the log in the write store does not. So a projection
//! reads the log (woken by the command bus after each commit, and
//! polling for other processes' commits), and the events also go to an
//! event-bus topic ([`CommandBusBuilder::publish_to`]) for everything
//! else that reacts to them.
//!
//! ```
//! use std::sync::Arc;
//! use scalekit::cqrs::{Command, CommandBus, CommandContext, CommandError, CommandHandler};
//! use scalekit::MemoryStore;
//!
//! #[derive(Clone)]
//! struct Deposit { account: String, cents: u64 }
//! impl Command for Deposit { type Output = u64; }
//!
//! struct Accounts;
//! impl CommandHandler<Deposit, String> for Accounts {
//!     async fn handle(&self, d: Deposit, model: &mut CommandContext<'_, String>) -> Result<u64, CommandError> {
//!         if d.cents == 0 { return Err(CommandError::Rejected("nothing to deposit".into())); }
//!         let balance = model.get::<u64>(&d.account).await?.unwrap_or(0) + d.cents;
//!         model.put(d.account.clone(), &balance)?;
//!         model.emit(format!("{} +{}", d.account, d.cents));
//!         Ok(balance)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let bus = CommandBus::builder(Arc::new(MemoryStore::new()), "accounts").handle(Accounts).build()?;
//! let receipt = bus.dispatch(Deposit { account: "ann".into(), cents: 500 }).await?;
//! assert_eq!((receipt.output, receipt.token.get()), (500, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! # Performance (a shared 2-core machine; `cargo bench --bench cqrs`)
//!
//! A command through the bus and three middleware layers (timing,
//! validation, retry) over an in-memory write model takes 1.9× the time
//! of the same work written by hand (median of five runs: read, write the
//! post, the counter, the event and the log position in one batch); a
//! projection applies about 1.1 million events a second to an in-memory
//! read model.

mod command;
mod commit;
mod log;
mod middleware;
mod projection;
mod query;
mod registry;
mod set_aside;

pub use self::command::{
    Command, CommandBus, CommandBusBuilder, CommandContext, CommandError, CommandHandler, Receipt,
    Recorded,
};
pub use self::log::WriteStore;
pub use self::middleware::{
    BoxedOutcome, Envelope, Failure, MessageKind, Middleware, Next, Outcome, Pipeline, Retry,
    Timing, Timings, Validate,
};
pub use self::projection::{
    projection_lease, Checkpoints, DeadEvent, EventSource, Projection, ProjectionLease,
    ProjectionOptions, Stale,
};
pub use self::query::{Query, QueryBus, QueryBusBuilder, QueryError, QueryHandler, Watermark};
