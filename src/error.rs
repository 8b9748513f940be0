//! The one error type of the crate.
//!
//! Every fallible operation in scalekit returns [`Result<T>`](crate::Result),
//! whose error is [`Error`]. Its [`kind`](Error::kind) says *what* failed,
//! so a caller can decide what to do without parsing messages:
//!
//! | kind | meaning | retry? |
//! |---|---|---|
//! | [`ErrorKind::Backend`] | the engine answered with an error or the I/O to it failed | often, after a back-off |
//! | [`ErrorKind::Refused`] | the engine refused this data for good (too large, a constraint) | no: the same write fails again |
//! | [`ErrorKind::Codec`] | a key or value could not be encoded, or a stored row could not be decoded | no: the data or the codec is wrong |
//! | [`ErrorKind::Config`] | a builder was given a configuration that cannot work | no: fix the configuration |
//! | [`ErrorKind::Timeout`] | an operation did not finish within its bound | yes |
//! | [`ErrorKind::Unavailable`] | the store is closed, shut down or unreachable | once it is back |
//! | [`ErrorKind::Conflict`] | a conditional write found the data changed: someone else wrote first | after reading again |
//! | [`ErrorKind::Unsupported`] | the store or layer cannot do this operation (a conditional write through a write-behind buffer, say) | no |
//!
//! ```
//! use scalekit::{Error, ErrorKind};
//!
//! let error = Error::unavailable("SqliteStore", "closed");
//! assert!(matches!(error.kind(), ErrorKind::Unavailable { .. }));
//! assert!(error.is_transient());
//! ```
//!
//! The error is one pointer wide (the kind lives in a box), so a
//! `Result<Option<u64>>` is two words and comes back in registers: the
//! hit path of a cache never copies a large error-shaped value around.
//! It is `Clone` (sources are shared behind an `Arc`), so one failure can
//! be handed to every waiter of a shared load.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A shared, thread-safe error source.
pub type BoxError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with scalekit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a scalekit operation: one pointer to its
/// [`ErrorKind`].
#[derive(Clone, thiserror::Error)]
#[error(transparent)]
pub struct Error(Box<ErrorKind>);

/// What kind of failure an [`Error`] is, with its details.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend engine reported an error, or the I/O to it failed.
    #[error("{backend} backend failed during {operation}: {source}")]
    Backend {
        /// Which backend (`"sqlite"`, `"postgres"`, `"memory"`, or a user's name).
        backend: &'static str,
        /// The operation that failed (`"get"`, `"write_batch"`, …).
        operation: &'static str,
        /// The engine's own error.
        #[source]
        source: BoxError,
    },
    /// The engine refused this operation's data for good: a value over
    /// its size limit, a violated constraint, a type it cannot store.
    /// Unlike [`Backend`](Self::Backend), retrying the same write cannot
    /// succeed, so layers that retry (write-behind, the CQRS `Retry`)
    /// give up on it at once and set it aside (a dead letter).
    #[error("{backend} refused the data of {operation}: {source}")]
    Refused {
        /// Which backend (`"sqlite"`, `"postgres"`, …).
        backend: &'static str,
        /// The operation refused (`"write_batch"`, …).
        operation: &'static str,
        /// The engine's own error.
        #[source]
        source: BoxError,
    },
    /// A key or value could not be encoded, or stored bytes could not be decoded.
    #[error("cannot {direction} {part}: {source}")]
    Codec {
        /// `"encode"` or `"decode"`.
        direction: CodecDirection,
        /// `"key"` or `"value"`.
        part: &'static str,
        /// What the codec reported.
        #[source]
        source: BoxError,
    },
    /// A builder was given a configuration that cannot work.
    #[error("invalid configuration of {component}: {reason}")]
    Config {
        /// The component being built (`"SqliteStore"`, `"FaultyStore"`, …).
        component: &'static str,
        /// What is wrong, in words a user can act on.
        reason: String,
    },
    /// An operation did not finish within its time bound.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// A conditional write ([`Store::write_if`](crate::Store::write_if))
    /// found the stored data other than its checks required: someone else
    /// wrote first. Nothing of the write was applied. Read again, decide
    /// again, write again.
    #[error("conflict on {key}: check {check} found {}", found.map_or_else(|| "the key absent".to_string(), |v| format!("version {v}")))]
    Conflict {
        /// The key whose check failed, as the key type prints (`Debug`).
        key: String,
        /// The index, in the write's list of checks, of the check that
        /// failed (the first one the store found failing).
        check: usize,
        /// The version found, or `None` where the key was absent.
        found: Option<crate::Version>,
    },
    /// The store or layer cannot carry out this operation at all: a
    /// conditional write through a layer that cannot know the outcome (a
    /// write-behind buffer), or over a backend that does not implement it.
    #[error("{component} does not support {operation}: {reason}")]
    Unsupported {
        /// The store or layer.
        component: &'static str,
        /// The operation (`"write_if"`, `"get_versioned"`).
        operation: &'static str,
        /// Why, in words a user can act on.
        reason: String,
    },
    /// The store is closed, shut down or cannot be reached.
    #[error("{component} is unavailable: {reason}")]
    Unavailable {
        /// The component that is unavailable.
        component: &'static str,
        /// Why (closed, connection refused, …).
        reason: String,
        /// The underlying error, where there is one.
        #[source]
        source: Option<BoxError>,
    },
}

/// The direction of a failed codec operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecDirection {
    /// Turning a Rust value into stored bytes.
    Encode,
    /// Turning stored bytes back into a Rust value.
    Decode,
}

impl fmt::Display for CodecDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecDirection::Encode => "encode",
            CodecDirection::Decode => "decode",
        })
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl From<ErrorKind> for Error {
    #[cold]
    fn from(kind: ErrorKind) -> Self {
        Error(Box::new(kind))
    }
}

impl Error {
    /// What kind of failure this is, with its details.
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }

    /// The kind, taken out of the error.
    pub fn into_kind(self) -> ErrorKind {
        *self.0
    }

    /// A backend error from any engine error.
    pub fn backend<E>(backend: &'static str, operation: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        ErrorKind::Backend {
            backend,
            operation,
            source: Arc::new(source),
        }
        .into()
    }

    /// The engine refused this data for good (see [`ErrorKind::Refused`]).
    pub fn refused<E>(backend: &'static str, operation: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        ErrorKind::Refused {
            backend,
            operation,
            source: Arc::new(source),
        }
        .into()
    }

    /// A configuration error.
    pub fn config(component: &'static str, reason: impl Into<String>) -> Self {
        ErrorKind::Config {
            component,
            reason: reason.into(),
        }
        .into()
    }

    /// An unavailability error without an underlying source.
    pub fn unavailable(component: &'static str, reason: impl Into<String>) -> Self {
        ErrorKind::Unavailable {
            component,
            reason: reason.into(),
            source: None,
        }
        .into()
    }

    /// A conflict of a conditional write (see [`ErrorKind::Conflict`]).
    pub fn conflict(key: impl Into<String>, check: usize, found: Option<crate::Version>) -> Self {
        ErrorKind::Conflict {
            key: key.into(),
            check,
            found,
        }
        .into()
    }

    /// An operation the component cannot do (see [`ErrorKind::Unsupported`]).
    pub fn unsupported(
        component: &'static str,
        operation: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        ErrorKind::Unsupported {
            component,
            operation,
            reason: reason.into(),
        }
        .into()
    }

    /// Whether this is a [`ErrorKind::Conflict`]: someone else wrote first.
    pub fn is_conflict(&self) -> bool {
        matches!(self.kind(), ErrorKind::Conflict { .. })
    }

    /// A codec error.
    pub fn codec<E>(direction: CodecDirection, part: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        ErrorKind::Codec {
            direction,
            part,
            source: Arc::new(source),
        }
        .into()
    }

    /// Whether retrying the same operation later may succeed
    /// (backend, timeout and unavailability errors). A
    /// [`Conflict`](ErrorKind::Conflict) is not: the same conditional
    /// write fails again until its checks are made against fresh reads.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Backend { .. } | ErrorKind::Timeout { .. } | ErrorKind::Unavailable { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync_static<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync_static_and_clone() {
        assert_send_sync_static::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<Option<u64>>>(),
            2 * std::mem::size_of::<u64>(),
            "a small read result fits in two registers"
        );
        let e = Error::config("Thing", "capacity must be at least 1");
        let cloned = e.clone();
        assert_eq!(
            cloned.to_string(),
            "invalid configuration of Thing: capacity must be at least 1"
        );
        assert!(!e.is_transient());
        let refused = Error::refused(
            "sqlite",
            "put",
            std::io::Error::other("string or blob too big"),
        );
        assert!(!refused.is_transient(), "a refused write fails again");
        assert_eq!(
            refused.to_string(),
            "sqlite refused the data of put: string or blob too big"
        );
    }

    #[test]
    fn a_conflict_names_its_key_and_check_and_is_not_transient() {
        let e = Error::conflict("\"orders/next\"", 2, Some(crate::Version::new(7)));
        assert!(e.is_conflict());
        assert!(!e.is_transient(), "the same checks fail again");
        assert_eq!(
            e.to_string(),
            "conflict on \"orders/next\": check 2 found version 7"
        );
        let absent = Error::conflict("k", 0, None);
        assert_eq!(
            absent.to_string(),
            "conflict on k: check 0 found the key absent"
        );
        let unsupported = Error::unsupported("WriteBehind", "write_if", "buffered");
        assert!(!unsupported.is_conflict() && !unsupported.is_transient());
        assert_eq!(
            unsupported.to_string(),
            "WriteBehind does not support write_if: buffered"
        );
    }

    #[test]
    fn sources_are_exposed() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::backend("sqlite", "put", io);
        assert!(e.is_transient());
        let source = std::error::Error::source(&e).expect("source");
        assert_eq!(source.to_string(), "disk on fire");
        assert_eq!(
            e.to_string(),
            "sqlite backend failed during put: disk on fire"
        );
    }
}
