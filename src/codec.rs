//! How keys and values cross into SQL (and later into Redis and NATS).
//!
//! The SQL backends store keys and values as byte strings (`BLOB` in SQLite,
//! `BYTEA` in PostgreSQL). A type that implements [`Codec`] says how it turns
//! into those bytes and back:
//!
//! | type | bytes | sorts like the value? |
//! |---|---|---|
//! | `String` | UTF-8 | yes (by code point) |
//! | `Vec<u8>` | as is | yes |
//! | `u8` … `u128`, `i8` … `i128` | big-endian, sign bit flipped for signed types | yes |
//! | any `serde` type marked [`JsonEncoded`] (feature `serde`) | JSON | no |
//!
//! Order-preserving keys matter for range sharding, where a key range of
//! the Rust type must be a byte range in the table.
//!
//! Decoding is checked: bytes that are not valid for the type give a
//! [`ErrorKind::Codec`](crate::ErrorKind::Codec), never a panic.
//!
//! ```
//! use scalekit::codec::Codec;
//!
//! let mut bytes = Vec::new();
//! (-5i64).encode(&mut bytes).unwrap();
//! assert_eq!(i64::decode(&bytes).unwrap(), -5);
//!
//! let mut minus_one = Vec::new();
//! (-1i64).encode(&mut minus_one).unwrap();
//! assert!(bytes < minus_one, "byte order is numeric order");
//! ```
//!
//! With the `serde` feature, one line makes your own type storable:
//!
//! ```
//! # #[cfg(feature = "serde")] {
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User { name: String }
//!
//! impl scalekit::codec::JsonEncoded for User {}
//! # }
//! ```

use std::fmt;

/// The error a codec reports; the backends wrap it in
/// [`ErrorKind::Codec`](crate::ErrorKind::Codec) with the part (key or value) and
/// direction.
pub type CodecError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A type that can be stored as bytes.
pub trait Codec: Sized + Send + Sync + 'static {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Reads a value back from exactly the bytes [`encode`](Codec::encode) wrote.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(self);
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// Stored bytes had the wrong length for a fixed-width type.
#[derive(Debug)]
struct WrongLength {
    expected: usize,
    found: usize,
    type_name: &'static str,
}

impl fmt::Display for WrongLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {} needs {} bytes, found {}",
            self.type_name, self.expected, self.found
        )
    }
}

impl std::error::Error for WrongLength {}

fn fixed<const N: usize>(bytes: &[u8], type_name: &'static str) -> Result<[u8; N], CodecError> {
    bytes.try_into().map_err(|_| {
        Box::new(WrongLength {
            expected: N,
            found: bytes.len(),
            type_name,
        }) as CodecError
    })
}

macro_rules! unsigned_codec {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                out.extend_from_slice(&self.to_be_bytes());
                Ok(())
            }
            fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
                Ok(<$t>::from_be_bytes(fixed(bytes, stringify!($t))?))
            }
        }
    )*};
}

macro_rules! signed_codec {
    ($($t:ty => $u:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                // Flipping the sign bit maps MIN..=MAX onto 0..=uMAX in order.
                let flipped = (*self as $u) ^ (1 << (<$u>::BITS - 1));
                out.extend_from_slice(&flipped.to_be_bytes());
                Ok(())
            }
            fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
                let flipped = <$u>::from_be_bytes(fixed(bytes, stringify!($t))?);
                Ok((flipped ^ (1 << (<$u>::BITS - 1))) as $t)
            }
        }
    )*};
}

unsigned_codec!(u8, u16, u32, u64, u128);
signed_codec!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

/// Marks a serde type to be stored as JSON (feature `serde`).
///
/// `impl JsonEncoded for MyType {}` is all it takes; [`Codec`] follows.
#[cfg(feature = "serde")]
pub trait JsonEncoded:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
}

#[cfg(feature = "serde")]
impl<T: JsonEncoded> Codec for T {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, self).map_err(Into::into)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Codec>(value: T) -> Vec<u8> {
        let mut out = Vec::new();
        value.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn signed_integers_round_trip_and_sort_in_numeric_order() {
        let values = [i64::MIN, -300, -1, 0, 1, 255, i64::MAX];
        let encoded: Vec<Vec<u8>> = values.iter().map(|v| bytes_of(*v)).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for (v, bytes) in values.iter().zip(&encoded) {
            assert_eq!(i64::decode(bytes).unwrap(), *v);
        }
        assert_eq!(i8::decode(&bytes_of(-128i8)).unwrap(), -128);
    }

    #[test]
    fn unsigned_integers_round_trip() {
        assert_eq!(
            u32::decode(&bytes_of(0xdead_beef_u32)).unwrap(),
            0xdead_beef
        );
        assert_eq!(u128::decode(&bytes_of(u128::MAX)).unwrap(), u128::MAX);
    }

    #[test]
    fn wrong_lengths_and_bad_utf8_are_errors_not_panics() {
        let err = u64::decode(&[1, 2, 3]).unwrap_err();
        assert_eq!(err.to_string(), "a u64 needs 8 bytes, found 3");
        assert!(i16::decode(&[]).is_err());
        assert!(String::decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn strings_and_bytes_are_stored_as_is() {
        assert_eq!(bytes_of("héllo".to_string()), "héllo".as_bytes());
        assert_eq!(bytes_of(vec![0u8, 1, 2]), vec![0, 1, 2]);
        assert_eq!(String::decode("héllo".as_bytes()).unwrap(), "héllo");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn json_encoded_types_round_trip_and_reject_garbage() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct User {
            name: String,
            age: u8,
        }
        impl JsonEncoded for User {}

        let user = User {
            name: "ada".into(),
            age: 36,
        };
        assert_eq!(User::decode(&bytes_of(user)).unwrap().name, "ada");
        assert!(User::decode(b"{not json").is_err());
    }
}
