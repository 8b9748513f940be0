//! Helpers shared by the tests that use real services.

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test, test binary or earlier run uses.
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
