//! How keys are spread over shards: hash strategies (jump, ring,
//! rendezvous) and ordered ranges. Each is checked when it is made.

use std::fmt;

use super::key::mix;
use crate::{Error, Result};

const COMPONENT: &str = "shard strategy";

/// Picks the shard of a key from its routing bytes and their
/// [`key_hash`](super::key_hash). Implemented by [`Jump`], [`Ring`],
/// [`Rendezvous`], [`Ranges`] and [`Directory`](super::Directory); a
/// user's own strategy implements it too.
pub trait Strategy: fmt::Debug + Send + Sync + 'static {
    /// The shard (below [`shards`](Self::shards)) for a key.
    ///
    /// # Errors
    ///
    /// A strategy that does not know the key (a directory without a
    /// default shard) says so with a typed error.
    fn shard(&self, key: &[u8], hash: u64) -> Result<usize>;

    /// How many shards it spreads keys over.
    fn shards(&self) -> usize;
}

fn no_shards() -> Error {
    Error::config(COMPONENT, "at least one shard is needed")
}

/// Jump consistent hash (Lamping and Veach, 2014): no memory, an even
/// spread, and going from N to N+1 shards moves only the 1/(N+1) of keys
/// the new shard takes. Shards can only be added or removed at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jump {
    shards: u32,
}

impl Jump {
    /// Jump hashing over `shards` shards.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero shards or
    /// more than `u32::MAX`.
    pub fn new(shards: usize) -> Result<Self> {
        match u32::try_from(shards) {
            Ok(0) => Err(no_shards()),
            Ok(shards) => Ok(Jump { shards }),
            Err(_) => Err(Error::config(COMPONENT, "at most u32::MAX shards")),
        }
    }
}

/// The jump function itself: the bucket below `buckets` for `hash`.
#[inline]
pub fn jump(mut hash: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((hash >> 33) + 1) as f64)) as i64;
    }
    // 0 <= b < buckets <= u32::MAX.
    b as u32
}

impl Strategy for Jump {
    fn shard(&self, _key: &[u8], hash: u64) -> Result<usize> {
        Ok(jump(hash, self.shards) as usize)
    }

    fn shards(&self) -> usize {
        self.shards as usize
    }
}

/// A consistent-hash ring: each shard owns `virtual_nodes` points on a
/// ring of hashes, and a key goes to the first point at or after its
/// hash. More virtual nodes spread keys more evenly (and cost memory and
/// a longer search). Any shard can be added or removed.
#[derive(Clone, PartialEq, Eq)]
pub struct Ring {
    /// (point, shard), sorted by point.
    points: Vec<(u64, u32)>,
    shards: usize,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("shards", &self.shards)
            .field("points", &self.points.len())
            .finish()
    }
}

impl Ring {
    /// A ring of `shards` shards with `virtual_nodes` points each.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero shards,
    /// zero virtual nodes, or more than `u32::MAX` of either.
    pub fn new(shards: usize, virtual_nodes: usize) -> Result<Self> {
        if shards == 0 {
            return Err(no_shards());
        }
        let (Ok(n), Ok(v)) = (u32::try_from(shards), u32::try_from(virtual_nodes)) else {
            return Err(Error::config(
                COMPONENT,
                "at most u32::MAX shards and virtual nodes",
            ));
        };
        if v == 0 {
            return Err(Error::config(
                COMPONENT,
                "a ring needs at least one virtual node per shard",
            ));
        }
        let mut points: Vec<(u64, u32)> = (0..n)
            .flat_map(|shard| {
                (0..v).map(move |node| {
                    (
                        mix((u64::from(shard) << 32 | u64::from(node)) ^ RING_SALT),
                        shard,
                    )
                })
            })
            .collect();
        points.sort_unstable();
        Ok(Ring { points, shards })
    }
}

/// Keeps ring points apart from key hashes of small integers.
const RING_SALT: u64 = 0x5ca1_ab1e_0000_0001;

impl Strategy for Ring {
    fn shard(&self, _key: &[u8], hash: u64) -> Result<usize> {
        let at = self.points.partition_point(|&(point, _)| point < hash);
        let (_, shard) = self.points[if at == self.points.len() { 0 } else { at }];
        Ok(shard as usize)
    }

    fn shards(&self) -> usize {
        self.shards
    }
}

/// Rendezvous (highest random weight) hashing: every shard scores the key
/// and the highest score wins. Even, and removing any shard moves only
/// its keys; a route costs one score per shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// A seed per shard.
    seeds: Vec<u64>,
}

impl Rendezvous {
    /// Rendezvous hashing over `shards` shards.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero shards.
    pub fn new(shards: usize) -> Result<Self> {
        if shards == 0 {
            return Err(no_shards());
        }
        Ok(Rendezvous {
            seeds: (0..shards as u64)
                .map(|shard| mix(shard ^ RING_SALT))
                .collect(),
        })
    }
}

impl Strategy for Rendezvous {
    fn shard(&self, _key: &[u8], hash: u64) -> Result<usize> {
        let mut best = (0u64, 0usize);
        for (shard, &seed) in self.seeds.iter().enumerate() {
            let score = mix(hash ^ seed);
            if score > best.0 || shard == 0 {
                best = (score, shard);
            }
        }
        Ok(best.1)
    }

    fn shards(&self) -> usize {
        self.seeds.len()
    }
}

/// A range of routing bytes owned by one shard: from `start` (inclusive;
/// `None`: from the smallest key) to `end` (exclusive; `None`: to the
/// largest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Where it starts (inclusive).
    pub start: Option<Vec<u8>>,
    /// Where it ends (exclusive).
    pub end: Option<Vec<u8>>,
    /// The shard that owns it.
    pub shard: usize,
}

/// Ordered ranges of keys, each owned by a shard: range scans stay on few
/// shards, and hot ranges can be split. The ranges must cover every key
/// once: sorted, without gaps or overlaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges {
    /// Where each range after the first starts, sorted.
    starts: Vec<Vec<u8>>,
    /// The shard of each range.
    owners: Vec<usize>,
    shards: usize,
}

impl Ranges {
    /// Ranges over `shards` shards.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for zero shards, no
    /// ranges, a first range with a start or a last with an end, a range
    /// that ends where it starts or before, a gap or an overlap between
    /// neighbours, unsorted ranges, or a shard out of range.
    pub fn new(shards: usize, ranges: Vec<KeyRange>) -> Result<Self> {
        if shards == 0 {
            return Err(no_shards());
        }
        let bad = |reason: String| Err(Error::config(COMPONENT, reason));
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return bad("ranges must cover every key: none given".into());
        };
        if first.start.is_some() || last.end.is_some() {
            return bad(
                "ranges must cover every key: the first must have no start and the last no end"
                    .into(),
            );
        }
        for (i, range) in ranges.iter().enumerate() {
            if range.shard >= shards {
                return bad(format!("range {i} names shard {} of {shards}", range.shard));
            }
            if let (Some(start), Some(end)) = (&range.start, &range.end) {
                if start >= end {
                    return bad(format!("range {i} ends where it starts or before"));
                }
            }
            if let Some(next) = ranges.get(i + 1) {
                match (&range.end, &next.start) {
                    (Some(end), Some(start)) if end < start => {
                        return bad(format!("a gap between ranges {i} and {}", i + 1));
                    }
                    (Some(end), Some(start)) if end > start => {
                        return bad(format!(
                            "ranges {i} and {} overlap (or are not sorted)",
                            i + 1
                        ));
                    }
                    (Some(_), Some(_)) => {}
                    _ => {
                        return bad(format!(
                            "only the first range may lack a start and only the last an end (range {})",
                            i + 1
                        ));
                    }
                }
            }
        }
        Ok(Ranges {
            starts: ranges[1..].iter().filter_map(|r| r.start.clone()).collect(),
            owners: ranges.iter().map(|r| r.shard).collect(),
            shards,
        })
    }

    /// Ranges split at `boundaries` (sorted, distinct): shard 0 below the
    /// first, shard `i` from boundary `i - 1`, the last shard from the
    /// last boundary on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for unsorted or
    /// repeated boundaries.
    pub fn split_at(boundaries: Vec<Vec<u8>>) -> Result<Self> {
        let shards = boundaries.len() + 1;
        let mut starts = vec![None];
        starts.extend(boundaries.iter().cloned().map(Some));
        let mut ends: Vec<Option<Vec<u8>>> = boundaries.into_iter().map(Some).collect();
        ends.push(None);
        let ranges = starts
            .into_iter()
            .zip(ends)
            .enumerate()
            .map(|(shard, (start, end))| KeyRange { start, end, shard })
            .collect();
        Self::new(shards, ranges)
    }
}

impl Strategy for Ranges {
    fn shard(&self, key: &[u8], _hash: u64) -> Result<usize> {
        let range = self.starts.partition_point(|start| start.as_slice() <= key);
        Ok(self.owners[range])
    }

    fn shards(&self) -> usize {
        self.shards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::key::{key_hash, ShardKey};
    use crate::shard::sharded::std_over_mean;

    fn spread(strategy: &dyn Strategy, keys: u64) -> Vec<u64> {
        let mut counts = vec![0u64; strategy.shards()];
        for key in 0..keys {
            let bytes = key.routing_bytes();
            counts[strategy.shard(&bytes, key_hash(&bytes)).unwrap()] += 1;
        }
        counts
    }

    /// Keys that change shard going from `from` to `to` shards.
    fn moved(from: &dyn Strategy, to: &dyn Strategy, keys: u64) -> u64 {
        (0..keys)
            .filter(|key| {
                let bytes = key.routing_bytes();
                let hash = key_hash(&bytes);
                from.shard(&bytes, hash).unwrap() != to.shard(&bytes, hash).unwrap()
            })
            .count() as u64
    }

    const MILLION: u64 = 1_000_000;

    #[test]
    fn jump_and_rendezvous_spread_a_million_keys_evenly_over_a_hundred_shards() {
        // Placing each key independently at random has an expected
        // std/mean of sqrt(0.99 / 10,000) = 0.995 %, and a 100-shard
        // sample of it varies by about 7 %: "within 1 %" is asked of a
        // hash as even as chance, with room for the sample's noise.
        let jump = std_over_mean(&spread(&Jump::new(100).unwrap(), MILLION));
        let rendezvous = std_over_mean(&spread(&Rendezvous::new(100).unwrap(), MILLION));
        eprintln!(
            "std/mean at 100 shards: jump {:.3} %, rendezvous {:.3} %",
            jump * 100.0,
            rendezvous * 100.0
        );
        assert!(jump <= 0.011 && rendezvous <= 0.011);
    }

    #[test]
    fn adding_a_shard_moves_at_most_a_little_over_the_ideal_share_of_keys() {
        for n in [4usize, 10, 50] {
            let ideal = MILLION as f64 / (n + 1) as f64;
            let jump = moved(&Jump::new(n).unwrap(), &Jump::new(n + 1).unwrap(), MILLION);
            let rendezvous = moved(
                &Rendezvous::new(n).unwrap(),
                &Rendezvous::new(n + 1).unwrap(),
                MILLION,
            );
            assert!(jump as f64 <= 1.05 * ideal, "jump {n}→{}: {jump}", n + 1);
            assert!(
                rendezvous as f64 <= 1.05 * ideal,
                "rendezvous {n}→{}: {rendezvous}",
                n + 1
            );
        }
    }

    #[test]
    fn a_ring_with_more_virtual_nodes_spreads_more_evenly() {
        let coarse = std_over_mean(&spread(&Ring::new(10, 10).unwrap(), 200_000));
        let fine = std_over_mean(&spread(&Ring::new(10, 400).unwrap(), 200_000));
        assert!(fine < coarse, "{fine} vs {coarse}");
        assert!(fine < 0.08, "{fine}");
        let ring = Ring::new(10, 200).unwrap();
        let grown = Ring::new(11, 200).unwrap();
        let moved = moved(&ring, &grown, 200_000) as f64;
        assert!(moved < 1.5 * 200_000.0 / 11.0, "{moved}");
    }

    #[test]
    fn ranges_route_by_key_order() {
        let ranges = Ranges::split_at(vec![b"g".to_vec(), b"p".to_vec()]).unwrap();
        let shard = |key: &str| ranges.shard(key.as_bytes(), 0).unwrap();
        assert_eq!(
            (
                shard("apple"),
                shard("g"),
                shard("kiwi"),
                shard("p"),
                shard("zebra")
            ),
            (0, 1, 1, 2, 2)
        );
        let numeric = Ranges::split_at(vec![100u64.routing_bytes().into_owned()]).unwrap();
        assert_eq!(numeric.shard(&99u64.routing_bytes(), 0).unwrap(), 0);
        assert_eq!(numeric.shard(&100u64.routing_bytes(), 0).unwrap(), 1);
    }

    #[test]
    fn bad_strategies_are_config_errors() {
        let range = |start: Option<&[u8]>, end: Option<&[u8]>, shard| KeyRange {
            start: start.map(<[u8]>::to_vec),
            end: end.map(<[u8]>::to_vec),
            shard,
        };
        let errors = [
            Jump::new(0).unwrap_err(),
            Ring::new(0, 10).unwrap_err(),
            Ring::new(3, 0).unwrap_err(),
            Rendezvous::new(0).unwrap_err(),
            Ranges::new(2, vec![]).unwrap_err(),
            Ranges::split_at(vec![b"p".to_vec(), b"g".to_vec()]).unwrap_err(),
            Ranges::split_at(vec![b"g".to_vec(), b"g".to_vec()]).unwrap_err(),
            // A gap, an overlap, a range out of the shards, a missing end.
            Ranges::new(
                2,
                vec![range(None, Some(b"g"), 0), range(Some(b"h"), None, 1)],
            )
            .unwrap_err(),
            Ranges::new(
                2,
                vec![range(None, Some(b"h"), 0), range(Some(b"g"), None, 1)],
            )
            .unwrap_err(),
            Ranges::new(
                2,
                vec![range(None, Some(b"g"), 0), range(Some(b"g"), None, 2)],
            )
            .unwrap_err(),
            Ranges::new(2, vec![range(None, Some(b"g"), 0)]).unwrap_err(),
        ];
        for error in errors {
            assert!(
                matches!(error.kind(), crate::ErrorKind::Config { .. }),
                "{error}"
            );
        }
    }
}
