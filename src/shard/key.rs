//! The bytes a key is routed by, and their hash: stable across processes,
//! machines and versions of scalekit, so every process routes a key to
//! the same shard.

use std::ops::Deref;

/// A key's routing bytes: borrowed from the key, or (for integers) held
/// inline, so routing never allocates.
#[derive(Debug, Clone, Copy)]
pub enum RoutingBytes<'a> {
    /// The key's own bytes.
    Borrowed(&'a [u8]),
    /// Up to 16 bytes made from the key, and how many are used.
    Inline([u8; 16], u8),
}

impl RoutingBytes<'_> {
    #[inline]
    fn inline(bytes: &[u8]) -> Self {
        let mut buffer = [0u8; 16];
        buffer[..bytes.len()].copy_from_slice(bytes);
        // Integers have at most 16 bytes.
        RoutingBytes::Inline(buffer, bytes.len() as u8)
    }

    /// The bytes, owned.
    pub fn into_owned(self) -> Vec<u8> {
        self.to_vec()
    }
}

impl Deref for RoutingBytes<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            RoutingBytes::Borrowed(bytes) => bytes,
            RoutingBytes::Inline(buffer, len) => &buffer[..usize::from(*len)],
        }
    }
}

impl AsRef<[u8]> for RoutingBytes<'_> {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A key that can be routed to a shard: it gives the bytes it is routed
/// by. Integers give their big-endian bytes (signed ones with the sign
/// bit flipped, so byte order is numeric order, as range routing needs),
/// strings their UTF-8 bytes, byte strings themselves.
pub trait ShardKey {
    /// The key's routing bytes.
    fn routing_bytes(&self) -> RoutingBytes<'_>;
}

macro_rules! unsigned_keys {
    ($($t:ty),*) => {$(
        impl ShardKey for $t {
            #[inline]
            fn routing_bytes(&self) -> RoutingBytes<'_> {
                RoutingBytes::inline(&self.to_be_bytes())
            }
        }
    )*};
}
unsigned_keys!(u8, u16, u32, u64, u128, usize);

macro_rules! signed_keys {
    ($($t:ty => $u:ty),*) => {$(
        impl ShardKey for $t {
            fn routing_bytes(&self) -> RoutingBytes<'_> {
                let flipped = (*self as $u) ^ (1 << (<$u>::BITS - 1));
                RoutingBytes::inline(&flipped.to_be_bytes())
            }
        }
    )*};
}
signed_keys!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128, isize => usize);

impl ShardKey for str {
    fn routing_bytes(&self) -> RoutingBytes<'_> {
        RoutingBytes::Borrowed(self.as_bytes())
    }
}

impl ShardKey for String {
    fn routing_bytes(&self) -> RoutingBytes<'_> {
        RoutingBytes::Borrowed(self.as_bytes())
    }
}

impl ShardKey for [u8] {
    fn routing_bytes(&self) -> RoutingBytes<'_> {
        RoutingBytes::Borrowed(self)
    }
}

impl ShardKey for Vec<u8> {
    fn routing_bytes(&self) -> RoutingBytes<'_> {
        RoutingBytes::Borrowed(self)
    }
}

impl<T: ShardKey + ?Sized> ShardKey for &T {
    fn routing_bytes(&self) -> RoutingBytes<'_> {
        (**self).routing_bytes()
    }
}

impl<T: ShardKey + ?Sized> ShardKey for std::sync::Arc<T> {
    fn routing_bytes(&self) -> RoutingBytes<'_> {
        (**self).routing_bytes()
    }
}

/// The key hash every hash strategy starts from: FNV-1a over the routing
/// bytes taken eight at a time (little-endian words; the last, partial
/// word carries the byte count in its top byte), then the SplitMix64
/// finaliser (FNV alone mixes the last bytes poorly). Fixed forever:
/// changing it would move every key.
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        hash = (hash ^ word).wrapping_mul(PRIME);
    }
    // The tail built in a register (bytes stored one by one and read back
    // as a word would stall the load).
    let mut tail = u64::from(bytes.len() as u8) << 56;
    for (i, &byte) in words.remainder().iter().enumerate() {
        tail |= u64::from(byte) << (8 * i);
    }
    hash = (hash ^ tail).wrapping_mul(PRIME);
    mix(hash)
}

/// SplitMix64's finaliser: a bijection that spreads every input bit.
#[inline]
pub(super) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed vectors (computed by an independent Python implementation of
    /// the same definition): if these change, every deployed shard map
    /// breaks.
    #[test]
    fn the_key_hash_never_changes() {
        assert_eq!(key_hash(b""), 0x25fc_6dd3_6ce0_4b20);
        assert_eq!(key_hash(b"user:42"), key_hash("user:42".as_bytes()));
        assert_eq!(key_hash(&42u64.routing_bytes()), 0xff4b_e8ca_8851_24aa);
        assert_eq!(key_hash(b"tenant-7"), 0xdc38_dca9_d571_ee0d);
    }

    #[test]
    fn routing_bytes_keep_numeric_order() {
        let bytes = |n: i64| n.routing_bytes().into_owned();
        assert!(bytes(-5) < bytes(-1) && bytes(-1) < bytes(0) && bytes(0) < bytes(7));
        assert!(*300u32.routing_bytes() > *2u32.routing_bytes());
        assert_eq!("ab".routing_bytes().as_ref(), b"ab");
        assert_eq!(u128::MAX.routing_bytes().len(), 16);
    }
}
