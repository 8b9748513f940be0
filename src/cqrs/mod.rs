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
//!
//! Commands run one at a time per bus (the handler's reads, its commit
//! and the log's sequence numbers stay consistent without optimistic
//! locking); the write store's batch must be atomic (SQLite's and
//! PostgreSQL's are transactions).
//!
//! | read models built from the events, that say how far they are | [`Projection`]: applies the log in order, keeps a durable checkpoint, [`position`](Projection::position), [`rebuild`](Projection::rebuild) into a shadow read model |
//! | a query that sees its own command, or says it cannot | [`QueryBus::query_after`] with the command's token: waits for the projection, then [`QueryError::Stale`] rather than old data |
//!
//! | validation, timing and retries around every command and query | one [`Middleware`] pipeline: [`Validate`], [`Timing`], [`Retry`] (and your own layers), added with `.layer(..)` on either bus; idempotency is the command bus's own, because the key must be stored with the command's writes |

mod command;
mod log;
mod middleware;
mod projection;
mod query;

pub use self::command::{
    Command, CommandBus, CommandBusBuilder, CommandContext, CommandError, CommandHandler, Receipt,
    Recorded,
};
pub use self::log::WriteStore;
pub use self::middleware::{
    BoxedOutcome, Envelope, Failure, MessageKind, Middleware, Next, Outcome, Pipeline, Retry,
    Timing, Timings, Validate,
};
pub use self::projection::{DeadEvent, EventSource, Projection, Stale};
pub use self::query::{Query, QueryBus, QueryBusBuilder, QueryError, QueryHandler, Watermark};
