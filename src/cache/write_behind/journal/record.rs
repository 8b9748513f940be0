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
    frame_with(out, |out| encode(write, out))
}

/// Appends one record whose payload `payload` writes to `out`; on an
/// error `out` is left as it was.
pub(in crate::cache::write_behind) fn frame_with(
    out: &mut Vec<u8>,
    payload: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    if let Err(error) = payload(out) {
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
pub(in crate::cache::write_behind) struct Parsed<'a> {
    /// The payloads of the good records, in order.
    pub(in crate::cache::write_behind) payloads: Vec<&'a [u8]>,
    /// Byte ranges (from the start of the bytes parsed) that hold no good
    /// record and are not the zeros after the last one: a torn append,
    /// a flipped bit, a lost page. Reading resumes at the next good record
    /// after each, so damage costs only the records inside it.
    pub(in crate::cache::write_behind) damaged: Vec<std::ops::Range<usize>>,
}

/// The length of the good record at `at`, if one starts there: a length
/// that fits, at least a payload's smallest size, and a matching checksum.
fn record_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len < MIN_PAYLOAD {
        return None;
    }
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(len)
}

/// The smallest payload: a kind byte and a key length.
const MIN_PAYLOAD: usize = 5;

/// Reads the records in `bytes` up to the zeros that end them. Anything
/// else that is not a good record is damage: it is reported as a range
/// and skipped up to the next good record (found by its checksum), so a
/// zeroed page or a flipped bit in the middle never hides the records
/// after it.
pub(in crate::cache::write_behind) fn parse(bytes: &[u8]) -> Parsed<'_> {
    let mut parsed = Parsed::default();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(len) = record_at(bytes, at) {
            parsed.payloads.push(&bytes[at + HEADER..at + HEADER + len]);
            at += HEADER + len;
            continue;
        }
        let Some(last_nonzero) = bytes[at..].iter().rposition(|&b| b != 0) else {
            break; // only zeros left: the end of the records
        };
        let end = at + last_nonzero + 1;
        let next = (at + 1..end).find(|&next| record_at(bytes, next).is_some());
        parsed.damaged.push(at..next.unwrap_or(end));
        match next {
            Some(next) => at = next,
            None => break,
        }
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
        assert!(parsed.damaged.is_empty());
        let back: Vec<Write<u64, String>> =
            parsed.payloads.iter().map(|p| decode(p).unwrap()).collect();
        assert_eq!(back, writes);
    }

    #[test]
    fn a_torn_or_flipped_record_is_reported_as_a_damaged_range() {
        let good = records(&[Write::Put(1, "one".to_string())]);
        let second = records(&[Write::Put(2, "two".to_string())]);
        let mut torn = [good.as_slice(), &second[..second.len() - 2]].concat();
        torn.extend_from_slice(&[0; 2]);
        let mut flipped = [good.as_slice(), &second].concat();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        // The damage runs from the bad record to its last non-zero byte.
        let start = good.len();
        for (bytes, end) in [
            (torn, start + second.len() - 2),
            (flipped, start + second.len()),
        ] {
            let parsed = parse(&bytes);
            assert_eq!(parsed.damaged, vec![start..end]);
            assert_eq!(parsed.payloads.len(), 1);
        }
        let half_header = [good.as_slice(), &[7, 0, 0]].concat();
        assert_eq!(
            parse(&half_header).damaged,
            vec![good.len()..good.len() + 1]
        );
    }

    #[test]
    fn a_zeroed_run_between_records_is_damage_and_the_records_after_it_are_read() {
        let first = records(&[Write::Put(1, "one".to_string())]);
        let lost = records(&[Write::Put(2, "two".to_string())]);
        let third = records(&[Write::Put(3, "three".to_string())]);
        let zeroed = vec![0u8; lost.len()];
        let mut bytes = [first.as_slice(), &zeroed, &third].concat();
        bytes.extend_from_slice(&[0; 64]);
        let parsed = parse(&bytes);
        assert_eq!(
            parsed.payloads.len(),
            2,
            "the record after the hole is read"
        );
        let keys: Vec<u64> = parsed
            .payloads
            .iter()
            .map(|p| *decode::<u64, String>(p).unwrap().key())
            .collect();
        assert_eq!(keys, vec![1, 3]);
        assert_eq!(parsed.damaged, vec![first.len()..first.len() + lost.len()]);
    }

    #[test]
    fn a_flipped_bit_mid_run_skips_only_its_record() {
        let writes: Vec<Write<u64, String>> = (0..5)
            .map(|k| Write::Put(k, format!("value {k}")))
            .collect();
        let mut bytes = records(&writes);
        let one = records(&writes[..1]).len();
        bytes[2 * one + HEADER + 3] ^= 1; // inside the third record
        let parsed = parse(&bytes);
        assert_eq!(parsed.payloads.len(), 4);
        assert_eq!(parsed.damaged, vec![2 * one..3 * one]);
    }
}
