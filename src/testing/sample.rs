//! Test data for any key or value type.

use std::fmt::Debug;

/// A type the conformance suite and the model test can make values of.
///
/// Implemented for `String`, `Vec<u8>` and the 32- to 128-bit integers;
/// implement it for your own key or value type to run the suite on a store
/// of that type. Distinct seeds must give distinct values.
pub trait Sample: Clone + PartialEq + Debug + Send + Sync + 'static {
    /// The value for `seed`; distinct seeds give distinct values.
    fn sample(seed: u64) -> Self;

    /// A value for `seed` of about `len` bytes, for types that can be large
    /// (strings, bytes); others return [`sample`](Sample::sample).
    fn sample_large(seed: u64, len: usize) -> Self {
        let _ = len;
        Self::sample(seed)
    }

    /// Awkward values the type must store faithfully (empty, extremes,
    /// non-ASCII, bytes that look like SQL).
    fn edge_cases() -> Vec<Self>;
}

impl Sample for String {
    fn sample(seed: u64) -> Self {
        format!("k{seed}")
    }
    fn sample_large(seed: u64, len: usize) -> Self {
        let mut s = format!("{seed}:");
        while s.len() < len {
            s.push_str("scalekit ");
        }
        s
    }
    fn edge_cases() -> Vec<Self> {
        vec![
            String::new(),
            " ".to_string(),
            "ünïcødé ✓ 日本".to_string(),
            "'; DROP TABLE users; --".to_string(),
            "nul\0inside".to_string(),
            "x".repeat(4096),
        ]
    }
}

impl Sample for Vec<u8> {
    fn sample(seed: u64) -> Self {
        seed.to_le_bytes().to_vec()
    }
    fn sample_large(seed: u64, len: usize) -> Self {
        (0..len.max(8))
            .map(|i| (seed as usize).wrapping_add(i.wrapping_mul(31)) as u8)
            .collect()
    }
    fn edge_cases() -> Vec<Self> {
        vec![Vec::new(), vec![0], vec![0xff; 3], (0..=255).collect()]
    }
}

macro_rules! sample_int {
    ($($t:ty),*) => {$(
        impl Sample for $t {
            fn sample(seed: u64) -> Self {
                seed as $t
            }
            fn edge_cases() -> Vec<Self> {
                let mut cases = vec![<$t>::MIN, <$t>::MAX, 0 as $t, 1 as $t];
                if <$t>::MIN != 0 as $t {
                    cases.push((0 as $t).wrapping_sub(1 as $t));
                }
                cases
            }
        }
    )*};
}

sample_int!(u32, u64, u128, i32, i64, i128);
