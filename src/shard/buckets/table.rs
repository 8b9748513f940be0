//! The bucket table: keys map to a fixed number of buckets, buckets to
//! shards. Resharding moves buckets, not keys, and computes a new table
//! that moves as few buckets as it can.

use crate::{CodecDirection, Error, Result};

const COMPONENT: &str = "bucket table";

/// Which shard (of the store's pool) owns each bucket, and the table's
/// version (one more per resharding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTable {
    version: u64,
    owners: Vec<u32>,
}

impl BucketTable {
    /// `buckets` buckets spread evenly over `shards` (indices into the
    /// store's pool of shards), version 1.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for no buckets,
    /// fewer buckets than shards, no shards, or a shard given twice.
    pub fn balanced(buckets: usize, shards: &[usize]) -> Result<Self> {
        check(buckets, shards)?;
        let owners = (0..buckets)
            .map(|b| shards[b % shards.len()] as u32)
            .collect();
        Ok(BucketTable { version: 1, owners })
    }

    /// The table's version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many buckets there are.
    pub fn buckets(&self) -> usize {
        self.owners.len()
    }

    /// The bucket of a key hash (its top 32 bits, scaled to the bucket
    /// count: fixed for a bucket count).
    pub fn bucket_of(&self, hash: u64) -> usize {
        (((hash >> 32) * self.owners.len() as u64) >> 32) as usize
    }

    /// The shard owning `bucket`.
    pub fn owner(&self, bucket: usize) -> usize {
        self.owners[bucket] as usize
    }

    /// The first shard the table names that is not in a pool of `pool`.
    pub(crate) fn outside(&self, pool: usize) -> Option<usize> {
        self.owners
            .iter()
            .map(|&owner| owner as usize)
            .find(|&owner| owner >= pool)
    }

    /// How many buckets each shard of a pool of `pool` owns.
    pub fn buckets_per_shard(&self, pool: usize) -> Vec<usize> {
        let mut counts = vec![0; pool];
        for &owner in &self.owners {
            if let Some(count) = counts.get_mut(owner as usize) {
                *count += 1;
            }
        }
        counts
    }

    /// The next table: the buckets spread evenly over `shards`, moving as
    /// few as possible (a shard keeps its buckets up to its new share;
    /// the rest, and those of shards no longer used, go to shards below
    /// theirs).
    ///
    /// # Errors
    ///
    /// As [`balanced`](Self::balanced).
    pub fn rebalanced(&self, shards: &[usize]) -> Result<BucketTable> {
        check(self.owners.len(), shards)?;
        let buckets = self.owners.len();
        let (base, extra) = (buckets / shards.len(), buckets % shards.len());
        // The first `extra` shards (in the order given) take one more.
        let quota = |position: usize| base + usize::from(position < extra);
        let position_of = |shard: u32| shards.iter().position(|&s| s as u32 == shard);
        let mut kept = vec![0usize; shards.len()];
        let mut owners: Vec<Option<u32>> = self
            .owners
            .iter()
            .map(|&owner| {
                let position = position_of(owner)?;
                (kept[position] < quota(position)).then(|| {
                    kept[position] += 1;
                    owner
                })
            })
            .collect();
        let mut takers = (0..shards.len()).flat_map(|position| {
            std::iter::repeat_n(shards[position] as u32, quota(position) - kept[position])
        });
        for owner in owners.iter_mut().filter(|owner| owner.is_none()) {
            *owner = takers.next();
        }
        Ok(BucketTable {
            version: self.version + 1,
            owners: owners.into_iter().map(|owner| owner.unwrap_or(0)).collect(),
        })
    }

    /// Buckets whose owner differs in `other`.
    pub fn moving_to(&self, other: &BucketTable) -> Vec<bool> {
        self.owners
            .iter()
            .zip(&other.owners)
            .map(|(a, b)| a != b)
            .collect()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = self.version.to_be_bytes().to_vec();
        for owner in &self.owners {
            out.extend_from_slice(&owner.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<BucketTable> {
        if bytes.len() < 12 || !(bytes.len() - 8).is_multiple_of(4) {
            return Err(Error::codec(
                CodecDirection::Decode,
                "value",
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a corrupt bucket table"),
            ));
        }
        let mut version = [0u8; 8];
        version.copy_from_slice(&bytes[..8]);
        let owners = bytes[8..]
            .chunks_exact(4)
            .map(|word| u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
            .collect();
        Ok(BucketTable {
            version: u64::from_be_bytes(version),
            owners,
        })
    }
}

fn check(buckets: usize, shards: &[usize]) -> Result<()> {
    let problem = if shards.is_empty() {
        Some("at least one shard is needed".to_string())
    } else if buckets == 0 || buckets < shards.len() {
        Some(format!(
            "{buckets} buckets cannot cover {} shards",
            shards.len()
        ))
    } else if shards
        .iter()
        .enumerate()
        .any(|(i, s)| shards[..i].contains(s))
    {
        Some("a shard is given twice".to_string())
    } else if shards.iter().any(|&s| u32::try_from(s).is_err()) {
        Some("shard indices must fit 32 bits".to_string())
    } else {
        None
    };
    problem.map_or(Ok(()), |problem| Err(Error::config(COMPONENT, problem)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_and_shrinking_moves_only_the_buckets_that_must_move() {
        let four = BucketTable::balanced(1024, &[0, 1, 2, 3]).unwrap();
        let five = four.rebalanced(&[0, 1, 2, 3, 4]).unwrap();
        let moved = four.moving_to(&five).iter().filter(|&&m| m).count();
        assert_eq!(moved, 204, "1024 / 5, rounded down: the new shard's share");
        let counts = five.buckets_per_shard(5);
        assert!(counts.iter().all(|&c| c == 204 || c == 205), "{counts:?}");
        let three = five.rebalanced(&[0, 1, 2]).unwrap();
        let moved = five.moving_to(&three).iter().filter(|&&m| m).count();
        assert_eq!(moved, 204 + 205, "only the removed shards' buckets");
        assert_eq!(three.version(), 3);
        assert_eq!((three.outside(3), three.outside(2)), (None, Some(2)));
        assert_eq!(BucketTable::decode(&three.encode()).unwrap(), three);
    }

    #[test]
    fn bad_tables_are_config_errors() {
        for error in [
            BucketTable::balanced(0, &[0]).unwrap_err(),
            BucketTable::balanced(2, &[0, 1, 2]).unwrap_err(),
            BucketTable::balanced(8, &[]).unwrap_err(),
            BucketTable::balanced(8, &[1, 1]).unwrap_err(),
        ] {
            assert!(
                matches!(error.kind(), crate::ErrorKind::Config { .. }),
                "{error}"
            );
        }
        assert!(BucketTable::decode(&[1, 2, 3]).is_err());
    }
}
