//! Helpers shared by the tests.

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test, test binary or earlier run uses.
#[allow(dead_code)]
pub fn unique_name(purpose: &str, separator: char) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let s = separator;
    format!(
        "{purpose}{s}{}{s}{}{s}{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls a future that completes without waiting (an in-process tier's
/// do) to its output, with no runtime in the way.
#[allow(dead_code)]
pub fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => panic!("the future did not complete at once"),
    }
}
