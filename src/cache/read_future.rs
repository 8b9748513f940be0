//! The future a cache read returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use super::core::{Cached, Core, Probe};
use super::tier::CacheTier;
use crate::store::Store;
use crate::Result;

type Boxed<V> = Pin<Box<dyn Future<Output = Result<Option<V>>> + Send>>;

/// A cache read: a hit of an in-process tier is answered when `get` is
/// called, so polling it costs nothing; anything else (a miss, a tier
/// that must be asked over the network) is a boxed future that owns what
/// it needs.
pub(crate) enum ReadFuture<V> {
    /// The hit's answer (taken when polled): just the value, so a hit
    /// moves a few words, not a whole `Result`.
    Ready(Option<Option<V>>),
    /// Everything else.
    Pending(Boxed<V>),
}

impl<V: Clone + Send + Sync + 'static> ReadFuture<V> {
    /// The rest of a read that did not hit at once: boxed and owning its
    /// key (a miss allocates anyway), and out of line, so the hit stays a
    /// few words of straight-line code.
    #[cold]
    #[inline(never)]
    pub(crate) fn pending<S, T>(core: &Arc<Core<S, T>>, key: &S::Key, probe: Probe<V>) -> Self
    where
        S: Store<Value = V>,
        T: CacheTier<Key = S::Key, Value = Cached<V>>,
    {
        let (core, key) = (Arc::clone(core), key.clone());
        ReadFuture::Pending(Box::pin(async move { core.finish_get(&key, probe).await }))
    }
}

// Nothing is ever pinned in place: the ready answer is moved out and the
// pending future is pinned in its box.
impl<V> Unpin for ReadFuture<V> {}

impl<V> fmt::Debug for ReadFuture<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadFuture::Ready(_) => "ReadFuture::Ready",
            ReadFuture::Pending(_) => "ReadFuture::Pending",
        })
    }
}

impl<V> Future for ReadFuture<V> {
    type Output = Result<Option<V>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ReadFuture::Ready(answer) => Poll::Ready(Ok(answer
                .take()
                .expect("a cache read polled after it completed"))),
            ReadFuture::Pending(future) => future.as_mut().poll(cx),
        }
    }
}
