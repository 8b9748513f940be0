//! Writes the store would not take.

use crate::store::Write;
use crate::Error;

/// A batch of writes that failed every attempt, with the last error: handed
/// to the dead-letter sink (by default kept by the [`WriteBehind`] for
/// [`take_dead_letters`]), never dropped.
///
/// [`WriteBehind`]: super::WriteBehind
/// [`take_dead_letters`]: super::WriteBehind::take_dead_letters
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter<K, V> {
    /// The writes, in the order they were acknowledged (one per key: the
    /// latest of that key at the time).
    pub writes: Vec<Write<K, V>>,
    /// The error of the last attempt.
    pub error: Error,
    /// How many times the batch was tried.
    pub attempts: u32,
}

/// Where dead letters go: a function the user supplies.
pub(super) type DeadLetterSink<K, V> = Box<dyn Fn(DeadLetter<K, V>) + Send + Sync>;
