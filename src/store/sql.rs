//! What the SQL backends share: table names, encoding, batch coalescing.

use super::Write;
use crate::codec::Codec;
use crate::error::CodecDirection;
use crate::{Error, ErrorKind, Result};

/// The longest table name accepted (PostgreSQL's identifier limit).
const MAX_TABLE_NAME: usize = 63;

/// Checks that `name` is a plain SQL identifier: a letter or underscore,
/// then letters, digits or underscores, at most 63 bytes.
pub(crate) fn validate_table_name(component: &'static str, name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_start || !valid_rest || name.len() > MAX_TABLE_NAME {
        return Err(Error::config(
            component,
            format!(
                "table name {name:?} must start with a letter or '_', hold only ASCII \
                 letters, digits and '_', and be at most {MAX_TABLE_NAME} bytes"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn encode<T: Codec>(part: &'static str, item: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    item.encode(&mut out).map_err(|source| ErrorKind::Codec {
        direction: CodecDirection::Encode,
        part,
        source: source.into(),
    })?;
    Ok(out)
}

pub(crate) fn decode<T: Codec>(part: &'static str, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|source| {
        ErrorKind::Codec {
            direction: CodecDirection::Decode,
            part,
            source: source.into(),
        }
        .into()
    })
}

pub(crate) fn encode_keys<K: Codec>(keys: &[K]) -> Result<Vec<Vec<u8>>> {
    keys.iter().map(|key| encode("key", key)).collect()
}

pub(crate) fn decode_values<V: Codec>(rows: Vec<Option<Vec<u8>>>) -> Result<Vec<Option<V>>> {
    rows.into_iter()
        .map(|row| row.map(|bytes| decode("value", &bytes)).transpose())
        .collect()
}

/// A write batch encoded and coalesced: one entry per key, the last
/// operation winning, so that puts and deletes touch disjoint keys and can
/// be sent as two set-based statements.
#[derive(Debug, Default)]
pub(crate) struct EncodedBatch {
    pub(crate) put_keys: Vec<Vec<u8>>,
    pub(crate) put_values: Vec<Vec<u8>>,
    pub(crate) delete_keys: Vec<Vec<u8>>,
    /// The checks of a conditional write: a key, and the version it must
    /// have (`None`: absent), in the caller's order.
    pub(crate) checks: Vec<(Vec<u8>, Option<u64>)>,
}

impl EncodedBatch {
    pub(crate) fn new<K: Codec, V: Codec>(batch: Vec<Write<K, V>>) -> Result<Self> {
        let encoded = batch
            .into_iter()
            .map(|write| {
                Ok(match write {
                    Write::Put(key, value) => {
                        Write::Put(encode("key", &key)?, encode("value", &value)?)
                    }
                    Write::Delete(key) => Write::Delete(encode("key", &key)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = EncodedBatch::default();
        for write in Write::coalesce(encoded) {
            match write {
                Write::Put(key, value) => {
                    out.put_keys.push(key);
                    out.put_values.push(value);
                }
                Write::Delete(key) => out.delete_keys.push(key),
            }
        }
        Ok(out)
    }

    /// A conditional batch: `batch` applied only if `checks` hold.
    pub(crate) fn checked<K: Codec, V: Codec>(
        checks: &[crate::store::Check<K>],
        batch: Vec<Write<K, V>>,
    ) -> Result<Self> {
        let mut out = Self::new(batch)?;
        out.checks = checks
            .iter()
            .map(|check| {
                Ok((
                    encode("key", check.key())?,
                    check.expected().map(crate::Version::get),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(out)
    }

    /// Whether it writes nothing (it may still check).
    pub(crate) fn is_empty(&self) -> bool {
        self.put_keys.is_empty() && self.delete_keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["users", "_t", "shard_07", "A1"] {
            assert!(validate_table_name("T", good).is_ok(), "{good}");
        }
        let too_long = "x".repeat(64);
        for bad in [
            "",
            "1users",
            "users; drop table x",
            "naïve",
            "a-b",
            "\"q\"",
            too_long.as_str(),
        ] {
            let err = validate_table_name("T", bad).unwrap_err();
            assert!(
                matches!(err.kind(), ErrorKind::Config { component: "T", .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_batch_is_coalesced_into_disjoint_puts_and_deletes() {
        let batch = vec![
            Write::Put(1u32, "a".to_string()),
            Write::Delete(2),
            Write::Put(2, "b".to_string()),
            Write::Delete(1),
        ];
        let encoded = EncodedBatch::new(batch).unwrap();
        assert_eq!(encoded.put_keys, vec![2u32.to_be_bytes().to_vec()]);
        assert_eq!(encoded.put_values, vec![b"b".to_vec()]);
        assert_eq!(encoded.delete_keys, vec![1u32.to_be_bytes().to_vec()]);
    }
}
