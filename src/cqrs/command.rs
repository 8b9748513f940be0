//! The command side: typed commands, one handler each, a write model, and
//! the events a command emits committed with its writes.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::commit::{Committer, Outcome, Pending};
use super::log::{self, LogKeys, WriteStore};
use super::middleware::{BoxedOutcome, Envelope, Failure, MessageKind, Middleware, Pipeline};
use super::registry::Registry;
use crate::codec::Codec;
use crate::events::Topic;
use crate::store::{Check, Write};
use crate::{Error, Position, Result};

/// The first and the longest pause between a command's conflict retries
/// (after the first, which runs at once).
const CONFLICT_BACKOFF: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(1),
    std::time::Duration::from_millis(50),
);

/// A request to change the write model. Its handler returns an `Output`
/// (stored with an idempotent command's writes, so it must be a
/// [`Codec`]).
pub trait Command: Send + 'static {
    /// What handling it returns.
    type Output: Codec + Clone + Send + Sync + 'static;

    /// A key that makes the command idempotent: a command whose key was
    /// handled already returns the first result and writes nothing.
    fn idempotency_key(&self) -> Option<String> {
        None
    }
}

/// Why a command was not carried out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// The command is invalid or not allowed now (a validation failure):
    /// retrying it will not help.
    #[error("command rejected: {0}")]
    Rejected(String),
    /// The infrastructure failed (a store, the bus): retrying may help.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// What a handled command returns: its output, and the consistency token
/// (the position just past its last event) that a query can wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt<T> {
    /// The handler's output.
    pub output: T,
    /// The log position after the command's events.
    pub token: Position,
    /// Whether this is the recorded result of an earlier command with the
    /// same idempotency key (nothing was written this time).
    pub repeated: bool,
}

/// A command's view of the write model: reads, and the writes and events
/// it stages, committed together after the handler returns `Ok`.
pub struct CommandContext<'a, E> {
    store: &'a dyn crate::DynStore<Key = String, Value = Vec<u8>>,
    writes: Vec<Write<String, Vec<u8>>>,
    events: Vec<E>,
    /// What the handler read, as checks its commit makes (`None` on a
    /// single-process bus, which needs none).
    reads: Option<std::sync::Mutex<Vec<Check<String>>>>,
}

impl<E> fmt::Debug for CommandContext<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandContext")
            .field("writes", &self.writes.len())
            .field("events", &self.events.len())
            .finish()
    }
}

impl<E: Codec> CommandContext<'_, E> {
    /// Reads a document of the write model (seeing this command's own
    /// staged writes). On a concurrent bus (the default) the version read
    /// is remembered, and the command commits only if the document is
    /// still at that version: if another command (in any process) wrote
    /// it meanwhile, the handler runs again on fresh reads.
    ///
    /// # Errors
    ///
    /// The store's errors; a codec error for bytes that do not decode.
    pub async fn get<T: Codec>(&self, key: &str) -> Result<Option<T>> {
        // A command stages few writes: the latest one of the key, by a
        // scan from the end (no hashing, no copy of the key).
        match self.writes.iter().rev().find(|write| write.key() == key) {
            Some(Write::Put(_, bytes)) => log::decode("value", bytes).map(Some),
            Some(Write::Delete(_)) => Ok(None),
            None => {
                let key = key.to_string();
                let bytes = match &self.reads {
                    None => self.store.dyn_get(&key).await?,
                    Some(reads) => {
                        let read = self.store.dyn_get_versioned(&key).await.map_err(|error| {
                            match error.kind() {
                                crate::ErrorKind::Unsupported { .. } => Error::unsupported(
                                    "CommandBus",
                                    "concurrent commands",
                                    format!("the write store cannot read versions ({error}): build the bus with .single_process() if it is the log's only writer"),
                                ),
                                _ => error,
                            }
                        })?;
                        let mut reads = reads
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if !reads.iter().any(|check| *check.key() == key) {
                            reads.push(Check::unchanged(key, read.as_ref()));
                        }
                        read.map(|read| read.value)
                    }
                };
                bytes.map(|bytes| log::decode("value", &bytes)).transpose()
            }
        }
    }

    /// Stages a write of a document.
    ///
    /// # Errors
    ///
    /// A codec error if the value does not encode.
    pub fn put<T: Codec>(&mut self, key: impl Into<String>, value: &T) -> Result<()> {
        let bytes = log::encode("value", value)?;
        self.writes.push(Write::Put(key.into(), bytes));
        Ok(())
    }

    /// Stages a delete of a document.
    pub fn delete(&mut self, key: impl Into<String>) {
        self.writes.push(Write::Delete(key.into()));
    }

    /// Emits an event, appended to the log with the writes.
    pub fn emit(&mut self, event: E) {
        self.events.push(event);
    }
}

/// Handles one type of command.
pub trait CommandHandler<C: Command, E>: Send + Sync + 'static {
    /// Validates the command, stages writes and events in `context`, and
    /// returns the output; nothing is written if it returns an error.
    fn handle(
        &self,
        command: C,
        context: &mut CommandContext<'_, E>,
    ) -> impl Future<Output = std::result::Result<C::Output, CommandError>> + Send;
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler with its future boxed, so that handlers of every command
/// type live in one map.
trait ErasedHandler<C: Command, E>: Send + Sync {
    fn handle<'a>(
        &'a self,
        command: C,
        context: &'a mut CommandContext<'_, E>,
    ) -> Boxed<'a, std::result::Result<C::Output, CommandError>>;
}

impl<C: Command, E: Send + 'static, H: CommandHandler<C, E>> ErasedHandler<C, E> for H {
    fn handle<'a>(
        &'a self,
        command: C,
        context: &'a mut CommandContext<'_, E>,
    ) -> Boxed<'a, std::result::Result<C::Output, CommandError>> {
        Box::pin(CommandHandler::handle(self, command, context))
    }
}

/// An event as published: its place in the log, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<E> {
    /// Its sequence number in the log (0 for the first).
    pub sequence: u64,
    /// The event.
    pub event: E,
}

struct Inner<S, E: Clone> {
    store: S,
    keys: LogKeys,
    handlers: Registry,
    topic: Option<Topic<Recorded<E>>>,
    /// On a single-process bus, commands run one at a time under it: the
    /// handler's reads, its commit and the log's next sequence number stay
    /// consistent. It holds the next number once read (the bus is the
    /// log's only writer). On a concurrent bus, publishing takes it.
    turn: tokio::sync::Mutex<Option<u64>>,
    /// `None` on a single-process bus.
    committer: Option<Committer>,
    max_conflict_retries: u32,
    /// The log position after each commit, for projections in this
    /// process.
    commits: tokio::sync::watch::Sender<u64>,
    pipeline: Pipeline,
}

/// Dispatches each command to its one handler, commits the handler's
/// writes, its events (to the log) and, for an idempotent command, its
/// result in one batch, then publishes the events to the topic, if any.
/// Cloning it is cheap.
///
/// By default commands run concurrently, in this process and in any
/// other over the same store: each commit is a conditional write
/// ([`Store::write_if`](crate::Store::write_if)) that checks what the
/// handler read, that the log's slots are free and that the idempotency
/// key is new, and commands that commit together go in one batch. A
/// command whose reads went stale runs again (at most
/// [`max_conflict_retries`](CommandBusBuilder::max_conflict_retries)
/// times). Over a store without conditional writes (a
/// [`WriteBehind`](crate::cache::WriteBehind)), build it
/// [`single_process`](CommandBusBuilder::single_process).
pub struct CommandBus<S, E: Clone> {
    inner: Arc<Inner<S, E>>,
}

impl<S, E: Clone> Clone for CommandBus<S, E> {
    fn clone(&self) -> Self {
        CommandBus {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: fmt::Debug, E: Clone> fmt::Debug for CommandBus<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBus")
            .field("store", &self.inner.store)
            .field("handlers", &self.inner.handlers.len())
            .field("publishes", &self.inner.topic.is_some())
            .field("committer", &self.inner.committer)
            .finish()
    }
}

/// Configures a [`CommandBus`]; see [`CommandBus::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct CommandBusBuilder<S, E: Clone> {
    store: S,
    name: String,
    handlers: Registry,
    topic: Option<Topic<Recorded<E>>>,
    pipeline: Pipeline,
    single_process: bool,
    max_conflict_retries: u32,
}

impl<S, E: Clone> fmt::Debug for CommandBusBuilder<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBusBuilder")
            .field("name", &self.name)
            .field("handlers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl<S, E> CommandBusBuilder<S, E>
where
    S: WriteStore,
    E: Codec + Clone + Send + Sync + 'static,
{
    /// Handles commands of type `C` with `handler` (one handler per type).
    pub fn handle<C: Command>(mut self, handler: impl CommandHandler<C, E>) -> Self {
        let erased: Arc<dyn ErasedHandler<C, E>> = Arc::new(handler);
        self.handlers.insert::<C, _>(erased);
        self
    }

    /// Runs every command through `layer`, inside the layers added before
    /// (see [`Middleware`]).
    pub fn layer(mut self, layer: impl Middleware) -> Self {
        self.pipeline = self.pipeline.layer(layer);
        self
    }

    /// Publishes every committed event to `topic` (recovering what a
    /// crash left unpublished on [`recover`](CommandBus::recover)).
    pub fn publish_to(mut self, topic: Topic<Recorded<E>>) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Makes this bus the log's only writer: commands run one at a time,
    /// and commit with plain batches (no conditional writes, no version
    /// reads). For a store that cannot write conditionally (a
    /// [`WriteBehind`](crate::cache::WriteBehind)). It is correct only
    /// while no other bus, in this process or another, writes the same
    /// log: two such buses overwrite each other's events.
    pub fn single_process(mut self) -> Self {
        self.single_process = true;
        self
    }

    /// How many times a command whose reads went stale runs again before
    /// it fails with the [`ErrorKind::Conflict`](crate::ErrorKind::Conflict)
    /// (default 10). The first retry runs at once; later ones wait from
    /// 1 ms, doubling to 50 ms, with jitter.
    pub fn max_conflict_retries(mut self, retries: u32) -> Self {
        self.max_conflict_retries = retries;
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for two handlers
    /// of one command type, or an empty name.
    pub fn build(self) -> Result<CommandBus<S, E>> {
        self.handlers.check("CommandBus", "command")?;
        if self.name.is_empty() {
            return Err(Error::config("CommandBus", "the log needs a name"));
        }
        Ok(CommandBus {
            inner: Arc::new(Inner {
                store: self.store,
                keys: LogKeys::new(&self.name),
                handlers: self.handlers,
                topic: self.topic,
                turn: tokio::sync::Mutex::new(None),
                committer: (!self.single_process).then(Committer::default),
                max_conflict_retries: self.max_conflict_retries,
                commits: tokio::sync::watch::Sender::new(0),
                pipeline: self.pipeline,
            }),
        })
    }
}

impl<S, E> CommandBus<S, E>
where
    S: WriteStore,
    E: Codec + Clone + Send + Sync + 'static,
{
    /// Starts configuring a bus whose write model and event log `name`
    /// live in `store`.
    pub fn builder(store: S, name: impl Into<String>) -> CommandBusBuilder<S, E> {
        CommandBusBuilder {
            store,
            name: name.into(),
            handlers: Registry::default(),
            topic: None,
            pipeline: Pipeline::default(),
            single_process: false,
            max_conflict_retries: 10,
        }
    }

    /// The write store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The log position after every event committed so far.
    ///
    /// # Errors
    ///
    /// The store's errors.
    pub async fn position(&self) -> Result<Position> {
        Ok(Position::new(
            log::read_counter(&self.inner.store, &self.inner.keys.next()).await?,
        ))
    }

    /// Handles `command` through the middleware pipeline: runs its
    /// handler, then commits the staged writes, the events and (for an
    /// idempotent command) the result in one batch, then publishes the
    /// events. (A retrying layer runs a copy of the command again: hence
    /// `Clone`.)
    ///
    /// # Errors
    ///
    /// [`CommandError::Rejected`] from the handler or a validating layer
    /// (nothing is written); [`CommandError::Failed`] for infrastructure
    /// errors, or a command type without a handler (a `Config` error).
    pub async fn dispatch<C: Command + Clone + Sync>(
        &self,
        command: C,
    ) -> std::result::Result<Receipt<C::Output>, CommandError> {
        let pipeline = &self.inner.pipeline;
        if pipeline.is_empty() {
            return self.dispatch_once(command).await;
        }
        let envelope = Envelope {
            kind: MessageKind::Command,
            name: std::any::type_name::<C>(),
            message: &command,
            idempotent: command.idempotency_key().is_some(),
        };
        let handler = || -> BoxedOutcome<'_> {
            let command = command.clone();
            Box::pin(async move {
                match self.dispatch_once(command).await {
                    Ok(receipt) => Ok(Box::new(receipt) as Box<dyn Any + Send>),
                    Err(CommandError::Rejected(reason)) => Err(Failure::Rejected(reason)),
                    Err(CommandError::Failed(error)) => Err(Failure::Failed(error)),
                }
            })
        };
        match pipeline.run(&envelope, &handler).await {
            Ok(output) => output
                .downcast::<Receipt<C::Output>>()
                .map(|receipt| *receipt)
                .map_err(|_| {
                    CommandError::Failed(Error::config(
                        "CommandBus",
                        "a middleware layer returned another type than the handler's",
                    ))
                }),
            Err(Failure::Rejected(reason)) => Err(CommandError::Rejected(reason)),
            Err(Failure::Failed(error)) => Err(CommandError::Failed(error)),
            Err(Failure::Stale(stale)) => Err(CommandError::Failed(Error::unavailable(
                "CommandBus",
                stale.to_string(),
            ))),
        }
    }

    /// Handles `command` without the pipeline.
    async fn dispatch_once<C: Command + Clone>(
        &self,
        command: C,
    ) -> std::result::Result<Receipt<C::Output>, CommandError> {
        let inner = &*self.inner;
        let handler = inner
            .handlers
            .get::<C, Arc<dyn ErasedHandler<C, E>>>("CommandBus")?;
        let idempotency = command
            .idempotency_key()
            .map(|key| inner.keys.handled(&key));
        if inner.committer.is_some() {
            return self
                .dispatch_concurrent(command, Arc::clone(handler), idempotency)
                .await;
        }
        let mut turn = inner.turn.lock().await;
        if let Some(receipt) = recorded_receipt(&inner.store, idempotency.as_ref()).await? {
            return Ok(receipt);
        }
        let mut context = CommandContext {
            store: &inner.store,
            writes: Vec::new(),
            events: Vec::new(),
            reads: None,
        };
        let output = handler.handle(command, &mut context).await?;
        let CommandContext {
            mut writes, events, ..
        } = context;
        let first = match *turn {
            Some(next) => next,
            None => log::read_counter(&inner.store, &inner.keys.next()).await?,
        };
        let token = Position::new(first + events.len() as u64);
        writes.extend(log::append(&inner.keys, first, &events)?);
        if let Some(record) = idempotency {
            writes.push(Write::Put(record, encode_result(&output, token)?));
        }
        if let Err(error) = inner.store.write_batch(writes).await {
            // Whether it landed is unknown: read the next number again.
            *turn = None;
            return Err(error.into());
        }
        *turn = Some(token.get());
        inner.commits.send_replace(token.get());
        drop(turn);
        if let Err(error) = self.publish_pending().await {
            // Committed: the events are in the log and will be published by
            // a later command or by `recover`.
            tracing::warn!(%error, "committed events could not be published yet");
        }
        Ok(Receipt {
            output,
            token,
            repeated: false,
        })
    }

    /// Runs the handler, queues its commit with the others running now,
    /// and runs it again (bounded) when its reads went stale.
    async fn dispatch_concurrent<C: Command + Clone>(
        &self,
        command: C,
        handler: Arc<dyn ErasedHandler<C, E>>,
        idempotency: Option<String>,
    ) -> std::result::Result<Receipt<C::Output>, CommandError> {
        let inner = &*self.inner;
        let Some(committer) = &inner.committer else {
            return Err(Error::config("CommandBus", "a concurrent bus without a committer").into());
        };
        let mut conflicts = 0;
        // Seeded at the first pause: most commands never conflict.
        let mut rng = None;
        loop {
            if let Some(receipt) = recorded_receipt(&inner.store, idempotency.as_ref()).await? {
                return Ok(receipt);
            }
            let mut context = CommandContext {
                store: &inner.store,
                writes: Vec::new(),
                events: Vec::new(),
                reads: Some(std::sync::Mutex::new(Vec::new())),
            };
            let output = handler.handle(command.clone(), &mut context).await?;
            let CommandContext {
                writes,
                events,
                reads,
                ..
            } = context;
            let mut checks = reads
                .map(|reads| {
                    reads
                        .into_inner()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                })
                .unwrap_or_default();
            let record = match &idempotency {
                Some(record) => {
                    checks.push(Check::Absent(record.clone()));
                    Some((record.clone(), log::encode("value", &output)?))
                }
                None => None,
            };
            let events = events
                .iter()
                .map(|event| log::encode("value", event))
                .collect::<Result<Vec<_>>>()?;
            let (reply, answer) = tokio::sync::oneshot::channel();
            committer.enqueue(Pending {
                checks,
                writes,
                events,
                record,
                reply,
            });
            // The group commit runs in a task of its own: a caller that
            // gives up never cuts it short for the commands queued with it.
            let bus = Arc::clone(&self.inner);
            tokio::spawn(async move {
                if let Some(committer) = &bus.committer {
                    if let Some(next) = committer.commit_queued(&bus.store, &bus.keys).await {
                        bus.commits.send_modify(|seen| *seen = (*seen).max(next));
                    }
                }
            });
            let outcome = answer.await.unwrap_or_else(|_| {
                Outcome::Failed(Error::unavailable(
                    "CommandBus",
                    "the commit task ended without an answer",
                ))
            });
            match outcome {
                Outcome::Committed(token) => {
                    if let Err(error) = self.publish_pending().await {
                        tracing::warn!(%error, "committed events could not be published yet");
                    }
                    return Ok(Receipt {
                        output,
                        token,
                        repeated: false,
                    });
                }
                Outcome::Conflict(error) => {
                    conflicts += 1;
                    if conflicts > inner.max_conflict_retries {
                        return Err(error.into());
                    }
                    // The first retry runs at once (most conflicts are
                    // one overlap); later ones back off with jitter, so
                    // processes contending for one aggregate take turns.
                    if conflicts > 1 {
                        let pause = crate::backoff::backoff(
                            CONFLICT_BACKOFF.0,
                            CONFLICT_BACKOFF.1,
                            conflicts - 1,
                            rng.get_or_insert_with(crate::backoff::seed),
                        );
                        tokio::time::sleep(pause).await;
                    }
                }
                Outcome::Failed(error) => {
                    return Err(match error.kind() {
                        crate::ErrorKind::Unsupported { .. } => Error::unsupported(
                            "CommandBus",
                            "concurrent commands",
                            format!("the write store cannot write conditionally ({error}): build the bus with .single_process() if it is the log's only writer"),
                        ),
                        _ => error,
                    }
                    .into())
                }
            }
        }
    }

    /// Tells the log position after each commit made through this bus (in
    /// this process; other processes' commits show in
    /// [`position`](Self::position)).
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.commits.subscribe()
    }

    /// The committed events `from..to` of the log, in order.
    ///
    /// # Errors
    ///
    /// The store's errors; [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable)
    /// for a sequence past the end of the log.
    pub async fn read_log(&self, from: u64, to: u64) -> Result<Vec<Recorded<E>>> {
        Ok(
            log::read_events(&self.inner.store, &self.inner.keys, from, to)
                .await?
                .into_iter()
                .map(|(sequence, event)| Recorded { sequence, event })
                .collect(),
        )
    }

    /// Publishes what the log holds past the published cursor (after a
    /// crash between commit and publish, say); returns how many events.
    ///
    /// # Errors
    ///
    /// The store's errors; the topic's (the cursor stays, so nothing is
    /// lost: call it again).
    pub async fn recover(&self) -> Result<u64> {
        self.publish_pending().await
    }

    async fn publish_pending(&self) -> Result<u64> {
        let inner = &*self.inner;
        let Some(topic) = &inner.topic else {
            return Ok(0);
        };
        let _turn = inner.turn.lock().await;
        let (published, cursor_version) = if inner.committer.is_some() {
            match inner.store.get_versioned(&inner.keys.published()).await? {
                Some(read) => (
                    log::decode::<u64>("value", &read.value)?,
                    Some(read.version),
                ),
                None => (0, None),
            }
        } else {
            (
                log::read_counter(&inner.store, &inner.keys.published()).await?,
                None,
            )
        };
        let next = log::read_counter(&inner.store, &inner.keys.next()).await?;
        if published >= next {
            return Ok(0);
        }
        let events: Vec<(u64, E)> =
            log::read_events(&inner.store, &inner.keys, published, next).await?;
        topic
            .publish_batch(
                events
                    .into_iter()
                    .map(|(sequence, event)| (None, Recorded { sequence, event })),
            )
            .await?;
        let cursor = log::encode("value", &next)?;
        if inner.committer.is_none() {
            inner.store.put(inner.keys.published(), cursor).await?;
            return Ok(next - published);
        }
        // Many buses may publish one log: the cursor only moves forward
        // from what was read (another bus that moved it first published
        // these events too: at least once, never lost).
        let check = match cursor_version {
            Some(version) => Check::Version(inner.keys.published(), version),
            None => Check::Absent(inner.keys.published()),
        };
        match inner
            .store
            .write_if(
                vec![check],
                vec![Write::Put(inner.keys.published(), cursor)],
            )
            .await
        {
            Ok(_) => Ok(next - published),
            Err(error) if error.is_conflict() => Ok(0),
            Err(error) => Err(error),
        }
    }
}

fn encode_result<T: Codec>(output: &T, token: Position) -> Result<Vec<u8>> {
    let mut bytes = token.to_bytes().to_vec();
    bytes.extend(log::encode("value", output)?);
    Ok(bytes)
}

/// The receipt recorded under an idempotency key, if the command with
/// that key was handled already.
async fn recorded_receipt<S: WriteStore, T: Codec>(
    store: &S,
    record: Option<&String>,
) -> Result<Option<Receipt<T>>> {
    let Some(record) = record else {
        return Ok(None);
    };
    let Some(bytes) = store.get(record).await? else {
        return Ok(None);
    };
    let (output, token) = decode_result::<T>(&bytes)?;
    Ok(Some(Receipt {
        output,
        token,
        repeated: true,
    }))
}

fn decode_result<T: Codec>(bytes: &[u8]) -> Result<(T, Position)> {
    let (token, output) = bytes.split_at_checked(8).ok_or_else(|| {
        Error::codec(
            crate::CodecDirection::Decode,
            "value",
            std::io::Error::new(std::io::ErrorKind::InvalidData, "a torn command record"),
        )
    })?;
    let mut word = [0u8; 8];
    word.copy_from_slice(token);
    Ok((log::decode("value", output)?, Position::from_bytes(word)))
}
