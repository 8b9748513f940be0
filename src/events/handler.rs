//! What a subscription group runs for each event, and how a failure or a
//! panic of it is caught.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use super::event::Event;
use crate::BoxError;

/// The error a handler returns: any error type converts into it with `?`,
/// and so do strings (`Err("no such user".into())`).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Handles the events of a subscription group. Implemented for every
/// `Fn(Event<E>) -> impl Future<Output = Result<(), HandlerError>>`, so
/// an async closure or function is a handler.
pub trait Handler<E>: Send + Sync + 'static {
    /// Handles one event; an error makes the group retry it.
    fn handle(&self, event: Event<E>) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

impl<E, F, Fut> Handler<E> for F
where
    F: Fn(Event<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, event: Event<E>) -> impl Future<Output = Result<(), HandlerError>> + Send {
        self(event)
    }
}

/// How one attempt ended.
pub(super) enum Attempt {
    Handled,
    Failed(BoxError),
    Panicked(BoxError),
}

/// Runs the handler once, catching a panic in the call or in any poll of
/// its future.
pub(super) async fn attempt<E, H: Handler<E>>(handler: &H, event: Event<E>) -> Attempt {
    let future = match catch_unwind(AssertUnwindSafe(|| handler.handle(event))) {
        Ok(future) => future,
        Err(panic) => return Attempt::Panicked(panic_error(panic)),
    };
    let mut future = pin!(future);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(Ok(()))) => Poll::Ready(Attempt::Handled),
            Ok(Poll::Ready(Err(error))) => Poll::Ready(Attempt::Failed(Arc::from(error))),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Attempt::Panicked(panic_error(panic))),
        },
    )
    .await
}

/// A caught panic, as an error a dead letter can carry.
#[derive(Debug)]
struct HandlerPanicked(String);

impl std::fmt::Display for HandlerPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the handler panicked: {}", self.0)
    }
}

impl std::error::Error for HandlerPanicked {}

fn panic_error(panic: Box<dyn Any + Send>) -> BoxError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_string());
    Arc::new(HandlerPanicked(message))
}
