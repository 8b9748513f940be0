//! What the benches share: polling ready futures, a seeded generator, Zipf
//! streams, and the ARC paper's traces.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Polls a future that completes without waiting (a cache hit does),
/// with no runtime in the way. The first poll is inline; a future that
/// needs more (moka's may, under contention) is finished out of line, so
/// the harness adds as little as it can to what it measures.
#[inline(always)]
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => finish(future),
    }
}

#[cold]
#[inline(never)]
fn finish<F: Future>(mut future: std::pin::Pin<&mut F>) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("the future did not complete without waiting");
}

#[path = "../../examples/support/workload.rs"]
mod workload;
#[allow(unused_imports)] // not every bench draws keys
pub use workload::{Rng, Zipf};

/// The trace `name` (`OLTP` or `P3`) from `../shared/traces`, expanded to
/// one key per block access; `None` when the traces are not there.
pub fn trace(name: &str) -> Option<Vec<u64>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces")
        .join(format!("{name}.lis.zst"));
    let file = std::fs::File::open(&path).ok()?;
    let decoder = ruzstd::decoding::StreamingDecoder::new(file).ok()?;
    let mut keys = Vec::new();
    for line in BufReader::new(decoder).lines() {
        let line = line.ok()?;
        let mut fields = line.split_whitespace();
        let (Some(start), Some(count)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(start), Ok(count)) = (start.parse::<u64>(), count.parse::<u64>()) else {
            continue;
        };
        keys.extend(start..start + count);
    }
    Some(keys)
}
