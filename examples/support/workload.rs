//! What the examples' and the benches' workloads share: skewed key
//! popularity and a small seedable random generator (so every run, on
//! every machine, draws the same requests).
#![allow(dead_code)] // each user takes what it needs

/// Keys by Zipf popularity over `0..keys`: key 0 the hottest.
#[derive(Debug)]
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    /// Popularity of rank `r` proportional to `1 / r^exponent` (0 is
    /// uniform); `keys` must be at least 1.
    pub fn new(keys: u64, exponent: f64) -> Zipf {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=keys.max(1))
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        for c in &mut cumulative {
            *c /= total;
        }
        Zipf { cumulative }
    }

    /// A key drawn with `rng`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let uniform = rng.next_f64();
        let at = self.cumulative.partition_point(|c| *c < uniform);
        at.min(self.cumulative.len() - 1) as u64
    }

    /// `len` keys drawn from `seed`, scattered over the `u64` space so
    /// that hot keys are not neighbours.
    pub fn stream(&self, len: usize, seed: u64) -> Vec<u64> {
        let mut rng = Rng(seed);
        (0..len)
            .map(|_| self.sample(&mut rng).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect()
    }
}

/// SplitMix64: fast, seedable, one per client.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// A uniform draw over `u64`.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in `0..1`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
