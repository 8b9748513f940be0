//! A journal record: `[payload length: u32][crc32 of payload: u32]
//! [payload]`, little-endian; the payload is `[kind: u8][key length: u32]
//! [key][value]` (kind 1 a put, 0 a delete). A length of zero never
//! starts a record (a payload has at least five bytes): it marks the end
//! of a segment's records.

use std::io;

use crate::codec::Codec;
use crate::store::Write;
use crate::{CodecDirection, Error, ErrorKind, Result};

use super::COMPONENT;

/// The bytes before a record's payload.
pub(super) const HEADER: usize = 8;

/// Encodes a write as a journal payload, or says why it cannot be.
pub(in crate::cache::write_behind) type EncodeFn<K, V> =
    fn(&Write<K, V>, &mut Vec<u8>) -> Result<()>;
/// Decodes a journal payload back into a write.
pub(in crate::cache::write_behind) type DecodeFn<K, V> = fn(&[u8]) -> Result<Write<K, V>>;

/// Appends one record for `write` to `out`, encoded by `encode`; on an
/// error `out` is left as it was.
pub(in crate::cache::write_behind) fn frame<K, V>(
    write: &Write<K, V>,
    encode: EncodeFn<K, V>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    if let Err(error) = encode(write, out) {
        out.truncate(start);
        return Err(error);
    }
    let payload = &out[start + HEADER..];
    let Ok(len) = u32::try_from(payload.len()) else {
        out.truncate(start);
        return Err(Error::config(
            COMPONENT,
            "a journal record must be under 4 GiB",
        ));
    };
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What [`parse`] found in a run of records.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Parsed<'a> {
    /// The payloads of the good records, in order.
    pub(super) payloads: Vec<&'a [u8]>,
    /// A record failed its checksum or ran past the end (a torn write or
    /// corruption): it and everything after it were not read.
    pub(super) torn: bool,
}

/// Reads the records in `bytes` up to the first zero length or the end.
pub(super) fn parse(bytes: &[u8]) -> Parsed<'_> {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            parsed.torn = bytes[at..].iter().any(|&b| b != 0);
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 {
            break;
        }
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        match bytes.get(at + HEADER..at + HEADER + len) {
            Some(payload) if crc32fast::hash(payload) == crc => parsed.payloads.push(payload),
            _ => {
                parsed.torn = true;
                break;
            }
        }
        at += HEADER + len;
    }
    parsed
}

/// Encodes a write as a journal payload through the key's and value's
/// codecs.
pub(in crate::cache::write_behind) fn encode<K: Codec, V: Codec>(
    write: &Write<K, V>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let codec_error = |part| {
        move |source: crate::codec::CodecError| ErrorKind::Codec {
            direction: CodecDirection::Encode,
            part,
            source: source.into(),
        }
    };
    let (kind, key, value) = match write {
        Write::Put(key, value) => (1u8, key, Some(value)),
        Write::Delete(key) => (0u8, key, None),
    };
    out.push(kind);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    key.encode(out).map_err(codec_error("journal key"))?;
    let key_len = u32::try_from(out.len() - at - 4)
        .map_err(|_| Error::config(COMPONENT, "a journalled key must be under 4 GiB"))?;
    out[at..at + 4].copy_from_slice(&key_len.to_le_bytes());
    if let Some(value) = value {
        value.encode(out).map_err(codec_error("journal value"))?;
    }
    Ok(())
}

/// Decodes a journal payload written by [`encode`].
pub(in crate::cache::write_behind) fn decode<K: Codec, V: Codec>(
    payload: &[u8],
) -> Result<Write<K, V>> {
    let malformed = || ErrorKind::Codec {
        direction: CodecDirection::Decode,
        part: "journal record",
        source: std::sync::Arc::new(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed journal record",
        )),
    };
    let codec_error = |part| {
        move |source: crate::codec::CodecError| ErrorKind::Codec {
            direction: CodecDirection::Decode,
            part,
            source: source.into(),
        }
    };
    let (&kind, rest) = payload.split_first().ok_or_else(malformed)?;
    let key_len = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(malformed)? as usize;
    let key_bytes = rest.get(4..4 + key_len).ok_or_else(malformed)?;
    let key = K::decode(key_bytes).map_err(codec_error("journal key"))?;
    let value_bytes = &rest[4 + key_len..];
    match kind {
        1 => Ok(Write::Put(
            key,
            V::decode(value_bytes).map_err(codec_error("journal value"))?,
        )),
        0 if value_bytes.is_empty() => Ok(Write::Delete(key)),
        _ => Err(malformed().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(writes: &[Write<u64, String>]) -> Vec<u8> {
        let mut out = Vec::new();
        for write in writes {
            frame(write, encode::<u64, String>, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn records_read_back_up_to_the_zeros_that_end_them() {
        let writes = vec![Write::Put(1, "one".to_string()), Write::Delete(2)];
        let mut bytes = records(&writes);
        bytes.extend_from_slice(&[0; 64]);
        let parsed = parse(&bytes);
        assert!(!parsed.torn);
        let back: Vec<Write<u64, String>> =
            parsed.payloads.iter().map(|p| decode(p).unwrap()).collect();
        assert_eq!(back, writes);
    }

    #[test]
    fn a_torn_or_flipped_record_ends_the_read_and_is_reported() {
        let good = records(&[Write::Put(1, "one".to_string())]);
        let second = records(&[Write::Put(2, "two".to_string())]);
        let mut torn = [good.as_slice(), &second[..second.len() - 2]].concat();
        torn.extend_from_slice(&[0; 2]);
        let mut flipped = [good.as_slice(), &second].concat();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        for bytes in [torn, flipped] {
            let parsed = parse(&bytes);
            assert!(parsed.torn);
            assert_eq!(parsed.payloads.len(), 1);
        }
        let half_header = [good.as_slice(), &[7, 0, 0]].concat();
        assert!(parse(&half_header).torn);
    }
}
