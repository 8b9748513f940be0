//! A resharding in progress: the table it moves to, which buckets move,
//! how far it has got, and a lock per bucket that orders copies against
//! writes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::table::BucketTable;
use crate::{CodecDirection, Error, Result};

/// Where a resharding stands, and so where reads and writes of the
/// buckets that move go. The other buckets are never affected.
///
/// | phase | reads go to | writes go to |
/// |---|---|---|
/// | `Copying` | the old owner | both owners |
/// | `ReadsSwitched` | the new owner | both owners |
/// | `WritesSwitched` | the new owner | the new owner |
/// | `RollingBack` | the old owner | the old owner |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Buckets are being copied to their new owners and verified.
    Copying = 0,
    /// Every moving bucket is copied and verified; writes still reach
    /// both owners, so a rollback loses nothing.
    ReadsSwitched = 1,
    /// The old owners no longer receive writes, and their copies are
    /// being removed. No rollback from here.
    WritesSwitched = 2,
    /// A rollback: the new owners' copies are being removed, and the old
    /// table is the only one in use.
    RollingBack = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Option<Phase> {
        match value {
            0 => Some(Phase::Copying),
            1 => Some(Phase::ReadsSwitched),
            2 => Some(Phase::WritesSwitched),
            3 => Some(Phase::RollingBack),
            _ => None,
        }
    }

    /// Whether reads of a moving bucket go to its new owner.
    pub(super) fn reads_new_owner(self) -> bool {
        matches!(self, Phase::ReadsSwitched | Phase::WritesSwitched)
    }

    /// Whether writes to a moving bucket go to its old owner, and whether
    /// to its new one.
    pub(super) fn writes_to(self) -> (bool, bool) {
        match self {
            Phase::Copying | Phase::ReadsSwitched => (true, true),
            Phase::WritesSwitched => (false, true),
            Phase::RollingBack => (true, false),
        }
    }
}

pub(super) struct Migration {
    pub(super) to: Arc<BucketTable>,
    pub(super) moving: Vec<bool>,
    phase: AtomicU8,
    /// Per bucket: writes hold it shared, a copy (and a phase change)
    /// exclusively.
    pub(super) locks: Box<[tokio::sync::RwLock<()>]>,
    /// Per bucket: copied and verified.
    pub(super) copied: Mutex<Vec<bool>>,
}

impl Migration {
    pub(super) fn new(from: &BucketTable, to: BucketTable) -> Self {
        let moving = from.moving_to(&to);
        Migration {
            copied: Mutex::new(vec![false; moving.len()]),
            locks: moving
                .iter()
                .map(|_| tokio::sync::RwLock::new(()))
                .collect(),
            moving,
            to: Arc::new(to),
            phase: AtomicU8::new(Phase::Copying as u8),
        }
    }

    pub(super) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire)).unwrap_or(Phase::Copying)
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    pub(super) fn copied(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.copied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moving buckets not copied and verified yet.
    pub(super) fn left_to_copy(&self) -> usize {
        let copied = self.copied();
        self.moving
            .iter()
            .zip(copied.iter())
            .filter(|&(&moving, &done)| moving && !done)
            .count()
    }

    /// The record of this resharding at `phase` with `copied` buckets:
    /// the target table's length, the table, the phase, then one byte per
    /// bucket (copied or not). Every change is written so before it is
    /// applied in memory.
    pub(super) fn record(&self, phase: Phase, copied: &[bool]) -> Vec<u8> {
        let table = self.to.encode();
        let mut out = (table.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&table);
        out.push(phase as u8);
        out.extend(copied.iter().map(|&c| u8::from(c)));
        out
    }

    pub(super) fn decode(from: &BucketTable, bytes: &[u8]) -> Result<Migration> {
        let corrupt = || {
            Error::codec(
                CodecDirection::Decode,
                "value",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a corrupt resharding record",
                ),
            )
        };
        let len = bytes
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(corrupt)?;
        let to = BucketTable::decode(bytes.get(4..4 + len).ok_or_else(corrupt)?)?;
        let phase = bytes
            .get(4 + len)
            .and_then(|&p| Phase::from_u8(p))
            .ok_or_else(corrupt)?;
        let copied: Vec<bool> = bytes[5 + len..].iter().map(|&c| c != 0).collect();
        if copied.len() != to.buckets() || to.buckets() != from.buckets() {
            return Err(corrupt());
        }
        let migration = Migration::new(from, to);
        *migration.copied() = copied;
        migration.set_phase(phase);
        Ok(migration)
    }
}
