//! The builder shared by the cache layers.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::core::{CacheConfig, Cached, Core, CrossProcess, WriteMode};
use super::tier::CacheTier;
use super::{ReadThrough, WriteThrough};
use crate::store::Store;
use crate::{Error, Result};

/// Starts cross-process invalidation for a cache being built.
type StartCrossProcess<S, T> =
    Box<dyn FnOnce(std::sync::Weak<Core<S, T>>) -> CrossProcess<<S as Store>::Key> + Send>;

/// Configures a [`ReadThrough`] or [`WriteThrough`] cache; start from
/// [`ReadThrough::builder`] or [`WriteThrough::builder`].
pub struct CacheBuilder<S: Store, T, L> {
    store: S,
    tier: T,
    cross_process: Option<StartCrossProcess<S, T>>,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    refresh_after: Option<Duration>,
    layer: PhantomData<fn() -> L>,
}

impl<S: Store, T: fmt::Debug, L> fmt::Debug for CacheBuilder<S, T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("store", &self.store)
            .field("tier", &self.tier)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("refresh_after", &self.refresh_after)
            .field("cross_process", &self.cross_process.is_some())
            .finish()
    }
}

impl<S, T, L> CacheBuilder<S, T, L>
where
    S: Store,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    pub(crate) fn new(store: S, tier: T) -> Self {
        CacheBuilder {
            store,
            tier,
            cross_process: None,
            ttl: None,
            negative_ttl: None,
            refresh_after: None,
            layer: PhantomData,
        }
    }

    /// Cached values expire this long after they were loaded or written
    /// (default: the tier's own default, if any).
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Caches the absence of keys for this long, so repeated reads of a
    /// missing key do not reach the store (default: absences are not cached).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Refresh-ahead: an entry older than this is still served, while one
    /// background load replaces it (stale-while-revalidate). A failed
    /// refresh keeps the old entry.
    pub fn refresh_after(mut self, age: Duration) -> Self {
        self.refresh_after = Some(age);
        self
    }

    fn core(self, mode: WriteMode) -> Result<Arc<Core<S, T>>> {
        let component = match mode {
            WriteMode::Invalidate => "ReadThrough",
            WriteMode::Update => "WriteThrough",
        };
        for (name, duration) in [
            ("time_to_live", self.ttl),
            ("negative_ttl", self.negative_ttl),
            ("refresh_after", self.refresh_after),
        ] {
            if duration.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    component,
                    format!("{name} must be longer than zero"),
                ));
            }
        }
        if let (Some(refresh), Some(ttl)) = (self.refresh_after, self.ttl) {
            if refresh >= ttl {
                return Err(Error::config(
                    component,
                    format!(
                        "refresh_after ({refresh:?}) must be shorter than time_to_live ({ttl:?}), \
                         or entries expire before they are refreshed"
                    ),
                ));
            }
        }
        let config = CacheConfig {
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            refresh_after: self.refresh_after,
            mode,
        };
        let (store, tier) = (self.store, self.tier);
        match self.cross_process {
            None => Ok(Arc::new(Core::new(store, tier, config, None))),
            Some(start) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(Error::config(
                        component,
                        "invalidation across processes runs a task: build the cache inside a tokio runtime",
                    ));
                }
                Ok(Arc::new_cyclic(|core| {
                    Core::new(store, tier, config, Some(start(core.clone())))
                }))
            }
        }
    }
}

#[cfg(feature = "redis")]
impl<S, T, L> CacheBuilder<S, T, L>
where
    S: Store,
    S::Key: crate::codec::Codec,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    /// Keeps this cache's tier coherent with other processes' caches on the
    /// same channel: writes and invalidations here are published, and keys
    /// written elsewhere are dropped here. See
    /// [`RedisInvalidation`](crate::cache::RedisInvalidation) for the
    /// consistency window. The cache must be built inside a tokio runtime.
    pub fn invalidate_across_processes(mut self, channel: super::RedisInvalidation) -> Self {
        self.cross_process = Some(Box::new(move |core| channel.start(core)));
        self
    }
}

impl<S, T> CacheBuilder<S, T, ReadThrough<S, T>>
where
    S: Store,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    /// Validates and builds the cache.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a zero duration, or a `refresh_after` not
    /// shorter than the time-to-live.
    pub fn build(self) -> Result<ReadThrough<S, T>> {
        self.core(WriteMode::Invalidate).map(ReadThrough::from_core)
    }
}

impl<S, T> CacheBuilder<S, T, WriteThrough<S, T>>
where
    S: Store,
    T: CacheTier<Key = S::Key, Value = Cached<S::Value>>,
{
    /// Validates and builds the cache.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a zero duration, or a `refresh_after` not
    /// shorter than the time-to-live.
    pub fn build(self) -> Result<WriteThrough<S, T>> {
        self.core(WriteMode::Update).map(WriteThrough::from_core)
    }
}
