//! What an in-process tier is configured with, and its validation: shared
//! by every in-process tier's builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, Result};

/// Weighs an entry (at least 1 is used).
pub(super) type WeighFn<K, V> = Arc<dyn Fn(&K, &V) -> u64 + Send + Sync>;

/// A builder's settings, as given.
pub(super) struct TierSettings<K, V> {
    pub(super) max_entries: Option<u64>,
    pub(super) max_weight: Option<(u64, WeighFn<K, V>)>,
    pub(super) time_to_live: Option<Duration>,
    pub(super) time_to_idle: Option<Duration>,
}

impl<K, V> Default for TierSettings<K, V> {
    fn default() -> Self {
        TierSettings {
            max_entries: None,
            max_weight: None,
            time_to_live: None,
            time_to_idle: None,
        }
    }
}

impl<K, V> fmt::Debug for TierSettings<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierSettings")
            .field("max_entries", &self.max_entries)
            .field("max_weight", &self.max_weight.as_ref().map(|(w, _)| w))
            .field("time_to_live", &self.time_to_live)
            .field("time_to_idle", &self.time_to_idle)
            .finish()
    }
}

/// Settings that passed [`TierSettings::validate`].
pub(super) struct ValidSettings<K, V> {
    /// The bound: entries, or total weight.
    pub(super) capacity: u64,
    /// About how many entries the bound holds (for sizing).
    pub(super) estimated_entries: u64,
    /// `None` when bounded by entries.
    pub(super) weigher: Option<WeighFn<K, V>>,
    pub(super) time_to_live: Option<Duration>,
    pub(super) time_to_idle: Option<Duration>,
}

impl<K, V> TierSettings<K, V> {
    /// Checks the settings for `component`'s `build`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when no bound or both bounds are given, a bound is
    /// 0, or a time-to-live or time-to-idle is zero.
    pub(super) fn validate(self, component: &'static str) -> Result<ValidSettings<K, V>> {
        let (capacity, estimated_entries, weigher) = match (self.max_entries, self.max_weight) {
            (None, None) => {
                return Err(Error::config(
                    component,
                    "give a bound: .max_entries(n) or .max_weight(w, weigh)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    component,
                    "give one bound, .max_entries or .max_weight, not both",
                ))
            }
            (Some(0), None) | (None, Some((0, _))) => {
                return Err(Error::config(component, "a cache bound must be at least 1"))
            }
            (Some(n), None) => (n, n, None),
            (None, Some((w, weigh))) => (w, (w / 64).clamp(16, 1 << 24), Some(weigh)),
        };
        for (name, duration) in [
            ("time_to_live", self.time_to_live),
            ("time_to_idle", self.time_to_idle),
        ] {
            if duration.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    component,
                    format!("{name} must be longer than zero"),
                ));
            }
        }
        Ok(ValidSettings {
            capacity,
            estimated_entries,
            weigher,
            time_to_live: self.time_to_live,
            time_to_idle: self.time_to_idle,
        })
    }
}
