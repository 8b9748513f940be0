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

/// SplitMix64: a small seeded generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Keys `0..n` drawn with probability proportional to `1 / (rank + 1)^s`.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(total);
        }
        for p in &mut cdf {
            *p /= total;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        self.cdf.partition_point(|p| *p < u) as u64
    }

    pub fn stream(&self, len: usize, seed: u64) -> Vec<u64> {
        let mut rng = Rng(seed);
        // Scatter ranks over the key space so hot keys are not adjacent.
        (0..len)
            .map(|_| self.sample(&mut rng).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect()
    }
}

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
