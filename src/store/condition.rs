//! Conditional writes: versions, and the checks a write can depend on.

use std::fmt;

/// Which write left a key's current value: the *version* a conditional
/// write can require ([`Check::Version`]).
///
/// A store gives every write of a key a version, and promises (see the
/// [contract](crate::store#conditional-writes)):
///
/// - **Versions identify writes.** Two writes of one key never leave the
///   same version, even across a delete and a re-create, so a check for a
///   version read earlier fails if *anything* wrote the key meanwhile (no
///   ABA).
/// - **Versions grow.** While a key exists, each write of it leaves a
///   larger version than the one before, so of two versions of one key the
///   larger is the later write.
///
/// What the number counts is the backend's business:
/// [`MemoryStore`](crate::MemoryStore) and the SQLite store use the
/// [`Position`](crate::Position) of the write (so there a version and a
/// position compare), PostgreSQL draws it from a sequence while it holds
/// the row's lock. Versions of different keys should not be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Version(u64);

impl Version {
    /// A version from its raw number.
    pub const fn new(raw: u64) -> Self {
        Version(raw)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A value with the version of the write that left it; see
/// [`Store::get_versioned`](crate::Store::get_versioned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<V> {
    /// The stored value.
    pub value: V,
    /// The version of the write that stored it.
    pub version: Version,
}

/// What a conditional write ([`Store::write_if`](crate::Store::write_if))
/// requires of the stored data before it applies anything: etcd's
/// *compare* half of a transaction, DynamoDB's condition expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check<K> {
    /// The key must be absent: *insert if absent* when the write puts it.
    Absent(K),
    /// The key must be present with exactly this version: *compare and
    /// set* when the write puts it.
    Version(K, Version),
}

impl<K> Check<K> {
    /// The key this check reads.
    pub fn key(&self) -> &K {
        match self {
            Check::Absent(key) | Check::Version(key, _) => key,
        }
    }

    /// The check for a value read with [`get_versioned`](crate::Store::get_versioned):
    /// `Absent` for a key that was absent, `Version` for one that was there.
    pub fn unchanged<V>(key: K, read: Option<&Versioned<V>>) -> Self {
        match read {
            None => Check::Absent(key),
            Some(versioned) => Check::Version(key, versioned.version),
        }
    }

    /// The version this check requires; `None` for [`Check::Absent`].
    pub fn expected(&self) -> Option<Version> {
        match self {
            Check::Absent(_) => None,
            Check::Version(_, version) => Some(*version),
        }
    }

    /// Whether a key found at `found` (`None`: absent) passes this check.
    pub fn passes(&self, found: Option<Version>) -> bool {
        self.expected() == found
    }
}

/// The conflict for the failed check `index` of `checks`, with the key as
/// it prints.
pub(crate) fn conflict<K: fmt::Debug>(
    checks: &[Check<K>],
    index: usize,
    found: Option<Version>,
) -> crate::Error {
    let key = checks
        .get(index)
        .map_or_else(|| "?".to_string(), |check| format!("{:?}", check.key()));
    crate::Error::conflict(key, index, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_passes_only_the_state_it_names() {
        let absent = Check::Absent("k");
        assert!(absent.passes(None));
        assert!(!absent.passes(Some(Version::new(1))));
        let at_3 = Check::Version("k", Version::new(3));
        assert!(at_3.passes(Some(Version::new(3))));
        assert!(!at_3.passes(Some(Version::new(4))));
        assert!(!at_3.passes(None));
        let read = Versioned {
            value: 1,
            version: Version::new(9),
        };
        assert_eq!(
            Check::unchanged("k", Some(&read)),
            Check::Version("k", Version::new(9))
        );
        assert_eq!(Check::unchanged::<u8>("k", None), Check::Absent("k"));
        assert_eq!(Version::new(9).to_string(), "9");
    }

    #[test]
    fn a_conflict_names_the_key_of_its_check() {
        let checks = [Check::Absent("a"), Check::Version("b", Version::new(1))];
        let error = conflict(&checks, 1, None);
        assert!(matches!(
            error.kind(),
            crate::ErrorKind::Conflict { key, check: 1, found: None } if key == "\"b\""
        ));
    }
}
