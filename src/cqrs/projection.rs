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
use super::set_aside;
pub use super::set_aside::DeadEvent;
use crate::codec::Codec;
use crate::events::HandlerError;
use crate::lease::{Fenced, Lease};
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

/// How a projection retries and batches; see [`Projection::start_with`].
/// Set the fields you need and take the rest from the default
/// (`ProjectionOptions { retries: 5, ..ProjectionOptions::default() }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectionOptions {
    /// Attempts after the first before an event is set aside (default 3).
    pub retries: u32,
    /// The pause before the first retry, doubling per retry (default 5 ms).
    pub backoff: Duration,
    /// Events applied per checkpoint (default 256).
    pub batch: u64,
    /// How often it looks for new events when no commit wakes it
    /// (default 50 ms).
    pub poll: Duration,
    /// The most events set aside at once (default 10,000). Past it the
    /// projection stops before the next event it cannot apply and retries
    /// its batch: it lags (visibly) rather than skip an event it could not
    /// record.
    pub max_dead_events: usize,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            retries: 3,
            backoff: Duration::from_millis(5),
            batch: 256,
            poll: Duration::from_millis(50),
            max_dead_events: 10_000,
        }
    }
}

impl ProjectionOptions {
    fn check(&self) -> Result<()> {
        let problem = if self.batch == 0 {
            "batch must be at least 1"
        } else if self.poll.is_zero() {
            "poll must be longer than zero"
        } else if self.max_dead_events == 0 {
            "max_dead_events must be at least 1"
        } else {
            return Ok(());
        };
        Err(Error::config(COMPONENT, problem))
    }
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

/// The checkpoint store, as projections take it.
pub type Checkpoints = Arc<dyn DynStore<Key = String, Value = Vec<u8>>>;

/// The lease that makes a projection run in one process of many; see
/// [`Projection::start_leased`]. Build it with [`projection_lease`].
pub type ProjectionLease = Lease<Checkpoints>;

/// The lease of projection `name` in its checkpoint store, lasting `ttl`
/// past each renewal (the runner renews it every quarter of that). Take
/// its [`fence`](Lease::fence) for the read model's writes
/// ([`Fenced`]), then pass it to [`Projection::start_leased`].
pub fn projection_lease(checkpoints: Checkpoints, name: &str, ttl: Duration) -> ProjectionLease {
    Lease::new(checkpoints, format!("projection/{name}/lease"), ttl)
}

struct Inner<R, E> {
    name: String,
    source: Arc<dyn EventSource<E>>,
    checkpoints: Arc<dyn DynStore<Key = String, Value = Vec<u8>>>,
    /// Where checkpoints and set-aside records are written: the checkpoint
    /// store, fenced by the lease when there is one.
    writes: Checkpoints,
    lease: Option<ProjectionLease>,
    /// When the lease was last acquired or renewed.
    renewed: Mutex<Option<tokio::time::Instant>>,
    apply: Apply<R, E>,
    options: ProjectionOptions,
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
        // A runner stopped on purpose gives its lease up, so a follower
        // takes over at once rather than after the lease's time to live
        // (a write of the aborted batch still in flight fails on the
        // fence: the release changes the lease record). Without a runtime
        // to release it on, the lease expires.
        if let Some(lease) = self.lease.take().filter(|lease| lease.epoch().is_some()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    // Boxed as `Send` where the store type is known, as in
                    // `runs`.
                    let release: std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send + '_>> =
                        Box::pin(lease.release());
                    if let Err(error) = release.await {
                        tracing::warn!(%error, lease = lease.key(), "cannot release the lease");
                    }
                });
            }
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
    /// again), from the checkpoint kept in `checkpoints`, with the default
    /// [`ProjectionOptions`].
    ///
    /// # Errors
    ///
    /// As [`start_with`](Self::start_with).
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
        Self::start_with(
            name,
            source,
            read_model,
            checkpoints,
            ProjectionOptions::default(),
            apply,
        )
        .await
    }

    /// [`start`](Self::start) with the given options. The events set aside
    /// by an earlier run are read back from `checkpoints` (and the log).
    ///
    /// # Errors
    ///
    /// The checkpoint store's and the event source's errors;
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) outside a tokio
    /// runtime or for options that cannot work (a batch or limit of 0, a
    /// zero poll).
    pub async fn start_with<F, Fut>(
        name: impl Into<String>,
        source: Arc<dyn EventSource<E>>,
        read_model: R,
        checkpoints: Arc<dyn DynStore<Key = String, Value = Vec<u8>>>,
        options: ProjectionOptions,
        apply: F,
    ) -> Result<Self>
    where
        F: Fn(Recorded<E>, Arc<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        Self::launch(
            name.into(),
            source,
            read_model,
            checkpoints,
            options,
            None,
            apply,
        )
        .await
    }

    /// [`start_with`](Self::start_with), run by one process of the many
    /// that start it: the one holding `lease` (from
    /// [`projection_lease`], over the same checkpoint store). The others
    /// follow: they take the checkpoint from the store (so
    /// [`position`](Self::position) and [`wait_for`](Self::wait_for) work
    /// in every process, over a read model they share through a store)
    /// and take over within the lease's time to live when the runner
    /// dies. Each checkpoint and set-aside record is written under the
    /// lease's fence, and so must the read model's writes be (a
    /// [`Fenced`] store built from `lease.fence()` before this call): a
    /// runner that stalled past its lease and wakes up cannot write
    /// anything, it finds the conflict and goes back to following. A
    /// batch must take less than the lease's time to live. Dropping the
    /// last handle of the holder releases the lease, so a follower takes
    /// over at once; a holder that dies is replaced once its lease
    /// expires.
    ///
    /// # Errors
    ///
    /// As [`start_with`](Self::start_with).
    pub async fn start_leased<F, Fut>(
        name: impl Into<String>,
        source: Arc<dyn EventSource<E>>,
        read_model: R,
        checkpoints: Checkpoints,
        options: ProjectionOptions,
        lease: ProjectionLease,
        apply: F,
    ) -> Result<Self>
    where
        F: Fn(Recorded<E>, Arc<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        Self::launch(
            name.into(),
            source,
            read_model,
            checkpoints,
            options,
            Some(lease),
            apply,
        )
        .await
    }

    async fn launch<F, Fut>(
        name: String,
        source: Arc<dyn EventSource<E>>,
        read_model: R,
        checkpoints: Checkpoints,
        options: ProjectionOptions,
        lease: Option<ProjectionLease>,
        apply: F,
    ) -> Result<Self>
    where
        F: Fn(Recorded<E>, Arc<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        options.check()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config(COMPONENT, "start projections inside a tokio runtime"))?;
        let checkpoint = stored_checkpoint(&checkpoints, &name).await?;
        let dead = stored_dead(&*source, &checkpoints, &name).await?;
        let writes: Checkpoints = match &lease {
            Some(lease) => Arc::new(Fenced::new(Arc::clone(&checkpoints), lease.fence())),
            None => Arc::clone(&checkpoints),
        };
        let inner = Arc::new(Inner {
            name,
            source,
            writes,
            lease,
            renewed: Mutex::new(None),
            checkpoints,
            apply: Arc::new(move |event, model| Box::pin(apply(event, model))),
            options,
            read_model: RwLock::new(Arc::new(read_model)),
            checkpoint: AtomicU64::new(checkpoint),
            applying: tokio::sync::Mutex::new(()),
            advanced: Notify::new(),
            dead: Mutex::new(dead),
            task: Mutex::new(None),
        });
        let task = runtime.spawn(run(Arc::downgrade(&inner)));
        *inner.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(Projection { inner })
    }

    /// The read model now (a rebuild may replace it).
    pub fn read_model(&self) -> Arc<R> {
        self.inner.model()
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

    /// The events it set aside, oldest first: also those an earlier run
    /// set aside (they are recorded in the checkpoint store before the
    /// checkpoint passes them).
    pub fn dead_events(&self) -> Vec<DeadEvent<E>> {
        self.inner.dead().clone()
    }

    /// Applies the set-aside events again (each with its retries, between
    /// two batches), in order, and forgets those that now apply; returns
    /// how many did. Those that still fail stay set aside, with their new
    /// error. Run it once the cause is fixed (a handler bug, a missing
    /// row).
    ///
    /// # Errors
    ///
    /// The checkpoint store's errors (what is recorded stays as it was;
    /// an event applied meanwhile is applied again by the next call, which
    /// `apply` tolerates).
    pub async fn replay_dead_events(&self) -> Result<usize> {
        let _applying = self.inner.applying.lock().await;
        let model = self.inner.model();
        let waiting = self.inner.dead().clone();
        let mut still = Vec::new();
        for dead in &waiting {
            if let Err(again) = apply_one(&self.inner, &model, dead.event.clone()).await {
                still.push(again);
            }
        }
        let replayed = waiting.len() - still.len();
        self.inner
            .writes
            .dyn_put(set_aside::key(&self.inner.name), set_aside::encode(&still))
            .await?;
        *self.inner.dead() = still;
        Ok(replayed)
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
        let batch = self.inner.options.batch;
        loop {
            let target = self.position().get();
            if done + batch >= target {
                let _applying = self.inner.applying.lock().await;
                let target = self.position().get();
                let failed = apply_range(&self.inner, &shadow, done, target).await?;
                self.inner.set_aside(failed).await?;
                *self
                    .inner
                    .read_model
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = shadow;
                return Ok(());
            }
            let to = target.min(done + batch);
            let failed = apply_range(&self.inner, &shadow, done, to).await?;
            self.inner.set_aside(failed).await?;
            done = to;
        }
    }
}

fn checkpoint_key(name: &str) -> String {
    format!("projection/{name}/checkpoint")
}

async fn stored_checkpoint(checkpoints: &Checkpoints, name: &str) -> Result<u64> {
    match checkpoints.dyn_get(&checkpoint_key(name)).await? {
        Some(bytes) => log::decode::<u64>("value", &bytes),
        None => Ok(0),
    }
}

/// The events an earlier run set aside, read back from the log.
async fn stored_dead<E: Send + Sync + 'static>(
    source: &dyn EventSource<E>,
    checkpoints: &Checkpoints,
    name: &str,
) -> Result<Vec<DeadEvent<E>>> {
    let mut dead = Vec::new();
    if let Some(bytes) = checkpoints.dyn_get(&set_aside::key(name)).await? {
        for entry in set_aside::decode(&bytes)? {
            for event in source.read(entry.sequence, entry.sequence + 1).await? {
                dead.push(DeadEvent {
                    event,
                    error: Arc::new(HandlerError::from(entry.error.clone())),
                    attempts: entry.attempts,
                });
            }
        }
    }
    Ok(dead)
}

impl<R, E: Clone> Inner<R, E> {
    /// The live read model.
    fn model(&self) -> Arc<R> {
        Arc::clone(
            &self
                .read_model
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn dead(&self) -> std::sync::MutexGuard<'_, Vec<DeadEvent<E>>> {
        self.dead.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `failed` with the events set aside before (one entry per
    /// sequence), durably, then in memory. Refused past the limit: the
    /// caller must not move its checkpoint past them.
    async fn set_aside(&self, failed: Vec<DeadEvent<E>>) -> Result<()> {
        if failed.is_empty() {
            return Ok(());
        }
        let mut all = self.dead().clone();
        for dead in failed {
            tracing::warn!(projection = %self.name, sequence = dead.event.sequence, error = %dead.error, "event set aside");
            match all
                .iter_mut()
                .find(|d| d.event.sequence == dead.event.sequence)
            {
                Some(known) => *known = dead,
                None => all.push(dead),
            }
        }
        if all.len() > self.options.max_dead_events {
            return Err(Error::unavailable(
                COMPONENT,
                format!(
                    "projection {:?} has {} events set aside, more than its limit of {}: it stops here until they are replayed",
                    self.name,
                    all.len(),
                    self.options.max_dead_events
                ),
            ));
        }
        self.writes
            .dyn_put(set_aside::key(&self.name), set_aside::encode(&all))
            .await?;
        *self.dead() = all;
        Ok(())
    }
}

impl<R, E: Clone + Send + Sync + 'static> Inner<R, E> {
    /// Whether this process runs the projection now: always without a
    /// lease; with one, after acquiring or renewing it when a quarter of
    /// its time to live has passed. A process that has just taken the
    /// lease over reads the checkpoint and the set-aside events from the
    /// store first (the last runner moved them); one that does not hold
    /// it follows the stored checkpoint.
    async fn runs(&self) -> bool {
        let Some(lease) = &self.lease else {
            return true;
        };
        let last = *self.renewed.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < lease.ttl() / 4) && lease.epoch().is_some() {
            return true;
        }
        let held_before = lease.epoch();
        // Boxed as `Send` here, where the store type is known (rustc
        // cannot prove it through the spawned task otherwise).
        let acquire: std::pin::Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>> =
            Box::pin(lease.try_acquire());
        let acquired = acquire.await;
        match acquired {
            Ok(true) => {
                if held_before != lease.epoch() {
                    if let Err(error) = self.resync().await {
                        tracing::warn!(projection = %self.name, %error, "cannot read the checkpoint after taking the lease");
                        return false;
                    }
                }
                *self.renewed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(tokio::time::Instant::now());
                true
            }
            outcome => {
                if let Err(error) = outcome {
                    tracing::warn!(projection = %self.name, %error, "cannot take or renew the lease");
                }
                *self.renewed.lock().unwrap_or_else(PoisonError::into_inner) = None;
                if let Ok(stored) = stored_checkpoint(&self.checkpoints, &self.name).await {
                    if stored > self.checkpoint.fetch_max(stored, Ordering::AcqRel) {
                        self.advanced.notify_waiters();
                    }
                }
                false
            }
        }
    }

    /// Takes the checkpoint and the set-aside events from the store.
    async fn resync(&self) -> Result<()> {
        let checkpoint = stored_checkpoint(&self.checkpoints, &self.name).await?;
        let dead = stored_dead(&*self.source, &self.checkpoints, &self.name).await?;
        *self.dead() = dead;
        self.checkpoint.store(checkpoint, Ordering::Release);
        self.advanced.notify_waiters();
        Ok(())
    }
}

/// Applies one event with its retries; the dead event if it never does.
async fn apply_one<R, E: Clone + Send + Sync + 'static>(
    inner: &Inner<R, E>,
    model: &Arc<R>,
    event: Recorded<E>,
) -> std::result::Result<(), DeadEvent<E>> {
    let options = &inner.options;
    let mut attempt = 0;
    loop {
        match (inner.apply)(event.clone(), Arc::clone(model)).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt >= options.retries => {
                return Err(DeadEvent {
                    event,
                    error: Arc::new(error),
                    attempts: attempt + 1,
                })
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(options.backoff * (1 << (attempt - 1).min(16))).await;
            }
        }
    }
}

/// Applies events `from..to` to `model`, each with its retries; returns
/// those that never applied, to be set aside.
async fn apply_range<R, E: Clone + Send + Sync + 'static>(
    inner: &Inner<R, E>,
    model: &Arc<R>,
    from: u64,
    to: u64,
) -> Result<Vec<DeadEvent<E>>> {
    let mut failed = Vec::new();
    if from >= to {
        return Ok(failed);
    }
    for event in inner.source.read(from, to).await? {
        if let Err(dead) = apply_one(inner, model, event).await {
            failed.push(dead);
        }
    }
    Ok(failed)
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
        if !inner.runs().await {
            let poll = inner.options.poll;
            drop(inner);
            tokio::time::sleep(poll).await;
            continue;
        }
        let checkpoint = inner.checkpoint.load(Ordering::Acquire);
        let target = match inner.source.position().await {
            Ok(position) => position.get(),
            Err(error) => {
                tracing::warn!(projection = %inner.name, %error, "cannot read the log's position");
                0
            }
        };
        if checkpoint >= target {
            let poll = inner.options.poll;
            drop(inner);
            let _ = tokio::time::timeout(poll, commits.changed()).await;
            continue;
        }
        let to = target.min(checkpoint + inner.options.batch);
        let applying = inner.applying.lock().await;
        let model = inner.model();
        let applied = async {
            // Set-aside events are recorded before the checkpoint passes
            // them: a crash in between applies the batch again.
            let failed = apply_range(&inner, &model, checkpoint, to).await?;
            inner.set_aside(failed).await?;
            inner
                .writes
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
                let poll = inner.options.poll;
                drop(inner);
                tokio::time::sleep(poll).await;
            }
        }
    }
}
