//! The builder shared by the cache layers.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::core::{CacheConfig, Cached, Core, WriteMode};
use super::tier::CacheTier;
use super::{ReadThrough, WriteThrough};
use crate::store::Store;
use crate::{Error, Result};

/// Configures a [`ReadThrough`] or [`WriteThrough`] cache; start from
/// [`ReadThrough::builder`] or [`WriteThrough::builder`].
pub struct CacheBuilder<S, T, L> {
    store: S,
    tier: T,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    refresh_after: Option<Duration>,
    layer: PhantomData<fn() -> L>,
}

impl<S: fmt::Debug, T: fmt::Debug, L> fmt::Debug for CacheBuilder<S, T, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("store", &self.store)
            .field("tier", &self.tier)
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("refresh_after", &self.refresh_after)
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
        Ok(Arc::new(Core::new(self.store, self.tier, config)))
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
    /// [`Error::Config`] for a zero duration, or a `refresh_after` not
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
    /// [`Error::Config`] for a zero duration, or a `refresh_after` not
    /// shorter than the time-to-live.
    pub fn build(self) -> Result<WriteThrough<S, T>> {
        self.core(WriteMode::Update).map(WriteThrough::from_core)
    }
}
