//! The query side: typed queries, one handler each, over read models; a
//! query can wait for a command's token.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::middleware::{BoxedOutcome, Envelope, Failure, MessageKind, Middleware, Pipeline};
use super::projection::Stale;
use super::registry::Registry;
use crate::{Error, Position, Result};

/// A question to a read model.
pub trait Query: Send + 'static {
    /// The answer.
    type Output: Send + 'static;
}

/// Answers one type of query.
pub trait QueryHandler<Q: Query>: Send + Sync + 'static {
    /// Answers the query from the read model.
    fn handle(&self, query: Q) -> impl Future<Output = Result<Q::Output>> + Send;
}

/// Why a query was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// The query is invalid (a validating layer refused it): retrying will
    /// not help.
    #[error("query rejected: {0}")]
    Rejected(String),
    /// The read model had not reached the query's token in time.
    #[error(transparent)]
    Stale(#[from] Stale),
    /// The read model or the bus failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// How far a read model is: what a query with a token waits on (a
/// [`Projection`](super::Projection) is one).
pub trait Watermark: Send + Sync + 'static {
    /// Waits until the read model has applied everything below `token`,
    /// up to `timeout`.
    fn wait_for(
        &self,
        token: Position,
        timeout: Duration,
    ) -> impl Future<Output = std::result::Result<(), Stale>> + Send;
}

impl<R, E> Watermark for super::Projection<R, E>
where
    R: Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    fn wait_for(
        &self,
        token: Position,
        timeout: Duration,
    ) -> impl Future<Output = std::result::Result<(), Stale>> + Send {
        super::Projection::wait_for(self, token, timeout)
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait ErasedHandler<Q: Query>: Send + Sync {
    fn handle(&self, query: Q) -> Boxed<'_, Result<Q::Output>>;
}

impl<Q: Query, H: QueryHandler<Q>> ErasedHandler<Q> for H {
    fn handle(&self, query: Q) -> Boxed<'_, Result<Q::Output>> {
        Box::pin(QueryHandler::handle(self, query))
    }
}

/// Dispatches each query to its one handler; a query with a token first
/// waits for the read model's watermark. Cloning it is cheap.
pub struct QueryBus<W> {
    handlers: Arc<Registry>,
    watermark: Arc<W>,
    timeout: Duration,
    pipeline: Arc<Pipeline>,
}

impl<W> Clone for QueryBus<W> {
    fn clone(&self) -> Self {
        QueryBus {
            handlers: Arc::clone(&self.handlers),
            watermark: Arc::clone(&self.watermark),
            timeout: self.timeout,
            pipeline: Arc::clone(&self.pipeline),
        }
    }
}

impl<W> fmt::Debug for QueryBus<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryBus")
            .field("handlers", &self.handlers.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Configures a [`QueryBus`]; see [`QueryBus::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct QueryBusBuilder<W> {
    handlers: Registry,
    watermark: W,
    timeout: Duration,
    pipeline: Pipeline,
}

impl<W> fmt::Debug for QueryBusBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryBusBuilder")
            .field("handlers", &self.handlers.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<W: Watermark> QueryBusBuilder<W> {
    /// Answers queries of type `Q` with `handler` (one handler per type).
    pub fn handle<Q: Query>(mut self, handler: impl QueryHandler<Q>) -> Self {
        let erased: Arc<dyn ErasedHandler<Q>> = Arc::new(handler);
        self.handlers.insert::<Q, _>(erased);
        self
    }

    /// Runs every query through `layer`, inside the layers added before
    /// (see [`Middleware`]).
    pub fn layer(mut self, layer: impl Middleware) -> Self {
        self.pipeline = self.pipeline.layer(layer);
        self
    }

    /// How long a query with a token waits for the read model (default
    /// one second).
    pub fn wait_at_most(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds the bus.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for two handlers of
    /// one query type.
    pub fn build(self) -> Result<QueryBus<W>> {
        self.handlers.check("QueryBus", "query")?;
        Ok(QueryBus {
            handlers: Arc::new(self.handlers),
            watermark: Arc::new(self.watermark),
            timeout: self.timeout,
            pipeline: Arc::new(self.pipeline),
        })
    }
}

impl<W: Watermark> QueryBus<W> {
    /// Starts configuring a bus over the read model `watermark` tracks.
    pub fn builder(watermark: W) -> QueryBusBuilder<W> {
        QueryBusBuilder {
            handlers: Registry::default(),
            watermark,
            timeout: Duration::from_secs(1),
            pipeline: Pipeline::default(),
        }
    }

    fn handler<Q: Query>(&self) -> Result<&Arc<dyn ErasedHandler<Q>>> {
        self.handlers
            .get::<Q, Arc<dyn ErasedHandler<Q>>>("QueryBus")
    }

    /// Answers `query` from the read model as it is (it may not show the
    /// latest commands yet), through the middleware pipeline.
    ///
    /// # Errors
    ///
    /// The handler's errors; a `Config` error for a query without a
    /// handler; [`QueryError::Rejected`] from a validating layer.
    pub async fn query<Q: Query + Clone + Sync>(
        &self,
        query: Q,
    ) -> std::result::Result<Q::Output, QueryError> {
        self.run(query, None).await
    }

    /// Answers `query` once the read model has applied everything below
    /// `token` (a command's [`Receipt::token`](super::Receipt::token)),
    /// waiting up to the bus's limit.
    ///
    /// # Errors
    ///
    /// [`QueryError::Stale`] if the read model did not get there in time
    /// (it never answers from an older read model); as
    /// [`query`](Self::query) otherwise.
    pub async fn query_after<Q: Query + Clone + Sync>(
        &self,
        query: Q,
        token: Position,
    ) -> std::result::Result<Q::Output, QueryError> {
        self.run(query, Some(token)).await
    }

    async fn once<Q: Query>(
        &self,
        query: Q,
        token: Option<Position>,
    ) -> std::result::Result<Q::Output, QueryError> {
        let handler = self.handler::<Q>()?;
        if let Some(token) = token {
            self.watermark.wait_for(token, self.timeout).await?;
        }
        Ok(handler.handle(query).await?)
    }

    async fn run<Q: Query + Clone + Sync>(
        &self,
        query: Q,
        token: Option<Position>,
    ) -> std::result::Result<Q::Output, QueryError> {
        if self.pipeline.is_empty() {
            return self.once(query, token).await;
        }
        let envelope = Envelope {
            kind: MessageKind::Query,
            name: std::any::type_name::<Q>(),
            message: &query,
            idempotent: true,
        };
        let handler = || -> BoxedOutcome<'_> {
            let query = query.clone();
            Box::pin(async move {
                match self.once(query, token).await {
                    Ok(output) => Ok(Box::new(output) as Box<dyn Any + Send>),
                    Err(QueryError::Rejected(reason)) => Err(Failure::Rejected(reason)),
                    Err(QueryError::Stale(stale)) => Err(Failure::Stale(stale)),
                    Err(QueryError::Failed(error)) => Err(Failure::Failed(error)),
                }
            })
        };
        match self.pipeline.run(&envelope, &handler).await {
            Ok(output) => output
                .downcast::<Q::Output>()
                .map(|output| *output)
                .map_err(|_| {
                    QueryError::Failed(Error::config(
                        "QueryBus",
                        "a middleware layer returned another type than the handler's",
                    ))
                }),
            Err(Failure::Stale(stale)) => Err(QueryError::Stale(stale)),
            Err(Failure::Failed(error)) => Err(QueryError::Failed(error)),
            Err(Failure::Rejected(reason)) => Err(QueryError::Rejected(reason)),
        }
    }
}
