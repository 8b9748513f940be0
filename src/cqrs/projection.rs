//! Projections: they apply the event log, in order, to a read model, keep
//! a durable checkpoint (how far they are), and can be rebuilt into a
//! shadow read model that replaces the live one once it has caught up.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::command::{CommandBus, Recorded};
use super::log::{self, WriteStore};
use crate::codec::Codec;
use crate::events::HandlerError;
use crate::store::DynStore;
use crate::{Error, Position, Result};

const COMPONENT: &str = "Projection";

/// Where a projection reads events: the command side's log.
#[async_trait]
pub trait EventSource<E>: Send + Sync + 'static {
    /// The log position after every committed event.
    async fn position(&self) -> Result<Position>;
    /// Committed events `from..to`, in order.
    async fn read(&self, from: u64, to: u64) -> Result<Vec<Recorded<E>>>;
    /// Told the new position after each commit in this process.
    fn commits(&self) -> watch::Receiver<u64>;
}

#[async_trait]
impl<S, E> EventSource<E> for CommandBus<S, E>
where
    S: WriteStore,
    E: Codec + Clone + Send + Sync + 'static,
{
    async fn position(&self) -> Result<Position> {
        CommandBus::position(self).await
    }

    async fn read(&self, from: u64, to: u64) -> Result<Vec<Recorded<E>>> {
        self.read_log(from, to).await
    }

    fn commits(&self) -> watch::Receiver<u64> {
        CommandBus::commits(self)
    }
}

/// An event the projection could not apply after its retries: set aside,
/// and the projection went on.
#[derive(Debug, Clone)]
pub struct DeadEvent<E> {
    /// The event.
    pub event: Recorded<E>,
    /// The last error.
    pub error: Arc<HandlerError>,
}

type Apply<R, E> = Arc<
    dyn Fn(
            Recorded<E>,
            Arc<R>,
        )
            -> std::pin::Pin<Box<dyn Future<Output = std::result::Result<(), HandlerError>> + Send>>
        + Send
        + Sync,
>;

struct Inner<R, E> {
    name: String,
    source: Arc<dyn EventSource<E>>,
    checkpoints: Arc<dyn DynStore<Key = String, Value = Vec<u8>>>,
    apply: Apply<R, E>,
    retries: u32,
    batch: u64,
    poll: Duration,
    read_model: RwLock<Arc<R>>,
    checkpoint: AtomicU64,
    /// Held while a batch is applied and its checkpoint written (a rebuild
    /// takes it to swap read models between batches).
    applying: tokio::sync::Mutex<()>,
    advanced: Notify,
    dead: Mutex<Vec<DeadEvent<E>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<R, E> Drop for Inner<R, E> {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// A running projection; cloning it is cheap (clones share it). It stops
/// when the last clone is dropped.
pub struct Projection<R, E> {
    inner: Arc<Inner<R, E>>,
}

impl<R, E> Clone for Projection<R, E> {
    fn clone(&self) -> Self {
        Projection {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R, E> fmt::Debug for Projection<R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.inner.name)
            .field("checkpoint", &self.inner.checkpoint.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The read model's position fell short of a query's token in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("read model `{projection}` is at {reached}, short of {wanted} after {waited:?}")]
pub struct Stale {
    /// The projection.
    pub projection: String,
    /// Where it got to.
    pub reached: Position,
    /// The token waited for.
    pub wanted: Position,
    /// How long it was waited for.
    pub waited: Duration,
}

impl<R, E> Projection<R, E>
where
    R: Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// Starts the projection `name` over `source`, applying each event to
    /// `read_model` with `apply` (which must tolerate an event applied
    /// twice: after a crash, events past the last checkpoint are applied
    /// again), from the checkpoint kept in `checkpoints`.
    ///
    /// # Errors
    ///
    /// The checkpoint store's errors; [`ErrorKind::Config`](crate::ErrorKind::Config)
    /// outside a tokio runtime.
    pub async fn start<F, Fut>(
        name: impl Into<String>,
        source: Arc<dyn EventSource<E>>,
        read_model: R,
        checkpoints: Arc<dyn DynStore<Key = String, Value = Vec<u8>>>,
        apply: F,
    ) -> Result<Self>
    where
        F: Fn(Recorded<E>, Arc<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config(COMPONENT, "start projections inside a tokio runtime"))?;
        let name = name.into();
        let checkpoint = match checkpoints.dyn_get(&checkpoint_key(&name)).await? {
            Some(bytes) => log::decode::<u64>("value", &bytes)?,
            None => 0,
        };
        let inner = Arc::new(Inner {
            name,
            source,
            checkpoints,
            apply: Arc::new(move |event, model| Box::pin(apply(event, model))),
            retries: 3,
            batch: 256,
            poll: Duration::from_millis(50),
            read_model: RwLock::new(Arc::new(read_model)),
            checkpoint: AtomicU64::new(checkpoint),
            applying: tokio::sync::Mutex::new(()),
            advanced: Notify::new(),
            dead: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        });
        let task = runtime.spawn(run(Arc::downgrade(&inner)));
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Projection { inner })
    }

    /// The read model now (a rebuild may replace it).
    pub fn read_model(&self) -> Arc<R> {
        Arc::clone(
            &self
                .inner
                .read_model
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// How far it has applied the log: every event below this position.
    pub fn position(&self) -> Position {
        Position::new(self.inner.checkpoint.load(Ordering::Acquire))
    }

    /// Whether it has applied everything committed so far.
    ///
    /// # Errors
    ///
    /// The event source's errors.
    pub async fn is_caught_up(&self) -> Result<bool> {
        Ok(self.position() >= self.inner.source.position().await?)
    }

    /// The events it set aside.
    pub fn dead_events(&self) -> Vec<DeadEvent<E>> {
        self.inner
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until it has applied everything below `token`, up to
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// [`Stale`] if it has not got there in time.
    pub async fn wait_for(
        &self,
        token: Position,
        timeout: Duration,
    ) -> std::result::Result<(), Stale> {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        loop {
            let mut advanced = std::pin::pin!(self.inner.advanced.notified());
            advanced.as_mut().enable();
            if self.position() >= token {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return Err(Stale {
                    projection: self.inner.name.clone(),
                    reached: self.position(),
                    wanted: token,
                    waited: start.elapsed(),
                });
            }
        }
    }

    /// Rebuilds the read model into `shadow` from the start of the log
    /// while the live one keeps being updated, then makes `shadow` the
    /// live read model once it has caught up (between two batches, so it
    /// misses nothing).
    ///
    /// # Errors
    ///
    /// The event source's errors (the live read model stays).
    pub async fn rebuild(&self, shadow: R) -> Result<()> {
        let shadow = Arc::new(shadow);
        let mut done = 0;
        loop {
            let target = self.position().get();
            if done + self.inner.batch >= target {
                let _applying = self.inner.applying.lock().await;
                let target = self.position().get();
                apply_range(&self.inner, &shadow, done, target).await?;
                *self
                    .inner
                    .read_model
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = shadow;
                return Ok(());
            }
            let to = target.min(done + self.inner.batch);
            apply_range(&self.inner, &shadow, done, to).await?;
            done = to;
        }
    }
}

fn checkpoint_key(name: &str) -> String {
    format!("projection/{name}/checkpoint")
}

/// Applies events `from..to` to `model`, each with its retries; what
/// never succeeds is set aside.
async fn apply_range<R, E: Clone + Send + Sync + 'static>(
    inner: &Inner<R, E>,
    model: &Arc<R>,
    from: u64,
    to: u64,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    for event in inner.source.read(from, to).await? {
        let mut attempt = 0;
        loop {
            match (inner.apply)(event.clone(), Arc::clone(model)).await {
                Ok(()) => break,
                Err(error) if attempt >= inner.retries => {
                    tracing::warn!(projection = %inner.name, sequence = event.sequence, %error, "event set aside");
                    inner
                        .dead
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(DeadEvent {
                            event,
                            error: Arc::new(error),
                        });
                    break;
                }
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5) * attempt).await;
                }
            }
        }
    }
    Ok(())
}

/// Applies new events batch by batch until the projection is dropped.
async fn run<R: Send + Sync + 'static, E: Clone + Send + Sync + 'static>(
    inner: std::sync::Weak<Inner<R, E>>,
) {
    let Some(mut commits) = inner.upgrade().map(|inner| inner.source.commits()) else {
        return;
    };
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let checkpoint = inner.checkpoint.load(Ordering::Acquire);
        let target = match inner.source.position().await {
            Ok(position) => position.get(),
            Err(error) => {
                tracing::warn!(projection = %inner.name, %error, "cannot read the log's position");
                0
            }
        };
        if checkpoint >= target {
            let poll = inner.poll;
            drop(inner);
            let _ = tokio::time::timeout(poll, commits.changed()).await;
            continue;
        }
        let to = target.min(checkpoint + inner.batch);
        let applying = inner.applying.lock().await;
        let model = Arc::clone(
            &inner
                .read_model
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let applied = async {
            apply_range(&inner, &model, checkpoint, to).await?;
            inner
                .checkpoints
                .dyn_put(checkpoint_key(&inner.name), log::encode("value", &to)?)
                .await
        }
        .await;
        match applied {
            Ok(_) => {
                // Moved before the lock is released: a rebuild that takes
                // it next sees this batch as applied.
                inner.checkpoint.store(to, Ordering::Release);
                drop(applying);
                inner.advanced.notify_waiters();
            }
            Err(error) => {
                drop(applying);
                tracing::warn!(projection = %inner.name, %error, "a batch will be applied again");
                let poll = inner.poll;
                drop(inner);
                tokio::time::sleep(poll).await;
            }
        }
    }
}
