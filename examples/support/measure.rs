//! How the examples summarise and print what they timed.

use std::time::Duration;

/// The `p` percentile (0 to 1) of `sorted` nanoseconds (zero for none).
pub fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_nanos(sorted[at])
}

/// A duration in the unit that fits it: `561ns`, `7.6µs`, `5.8ms`.
pub fn human(d: Duration) -> String {
    match d.as_nanos() {
        0..=999 => format!("{}ns", d.as_nanos()),
        1_000..=999_999 => format!("{:.1}µs", d.as_secs_f64() * 1e6),
        _ => format!("{:.1}ms", d.as_secs_f64() * 1e3),
    }
}
