//! What the NATS bridge's parts share: the message format (the key
//! header, hex), the error of an unreachable NATS, and what a group's
//! workers take.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::events::handler::Attempt;
use crate::events::{Event, EventKey};
use crate::{Error, Result};

/// The component named in the bridge's errors.
pub(super) const COMPONENT: &str = "NatsTopic";
/// The header that carries an event's key, in hex.
pub(super) const KEY_HEADER: &str = "Scalekit-Key";

/// NATS or JetStream did not do what was asked.
pub(super) fn unavailable(
    reason: &str,
    error: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    crate::ErrorKind::Unavailable {
        component: COMPONENT,
        reason: reason.to_string(),
        source: Some(Arc::new(error)),
    }
    .into()
}

/// JetStream's stream and consumer names: ASCII letters, digits, `-`, `_`.
pub(super) fn check_name(what: &str, name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::config(
            COMPONENT,
            format!("`{name}` is not a {what} name: use ASCII letters, digits, `-` and `_`"),
        ))
    }
}

/// A key as its header holds it.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key header read back; `None` if it is not hex.
pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a NATS group's workers take: the message's stream sequence, its
/// key, and its event (or why it did not decode).
#[derive(Clone)]
pub(super) struct Delivered<E> {
    pub(super) sequence: u64,
    pub(super) key: Option<EventKey>,
    pub(super) event: std::result::Result<Event<E>, Arc<str>>,
}

/// Runs the group's handler once on a dead letter's event.
pub(super) type Replayer<E> =
    Arc<dyn Fn(Event<E>) -> Pin<Box<dyn Future<Output = Attempt> + Send>> + Send + Sync>;
