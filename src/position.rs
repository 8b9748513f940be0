//! Consistency tokens: the position a write leaves a store at.
//!
//! Replica routing (read-your-writes) and CQRS (a query that waits for its
//! own command) need the same thing: a small, ordered, serialisable mark that
//! a write hands back and a later read can demand. In scalekit that mark is a
//! [`Position`], and the spine decides how it travels: **every write returns
//! it**. [`Store::put`](crate::Store::put), [`Store::delete`](crate::Store::delete)
//! and [`Store::write_batch`](crate::Store::write_batch) resolve to the
//! position of the store that committed the write, and a layer that forwards a
//! write to one inner store returns that store's position unchanged. So a
//! write through a whole stack of layers still yields the token of the engine
//! that made it durable.
//!
//! What a position counts is the backend's business, as long as it only grows:
//! [`MemoryStore`](crate::MemoryStore) and the SQLite store count committed
//! write transactions, and PostgreSQL reports its WAL position (the LSN), the
//! same number a PostgreSQL replica reports as replayed. Positions of two
//! different stores are not comparable.
//!
//! A position is eight bytes. It prints as a decimal number and parses back
//! (so it can ride in a cookie, a header or a job payload), converts to and
//! from big-endian bytes, and with the `serde` feature serialises as a number.
//!
//! ```
//! use scalekit::Position;
//!
//! let token = Position::new(42);
//! let wire = token.to_string();
//! let back: Position = wire.parse().unwrap();
//! assert_eq!(back, token);
//! assert!(Position::new(43) > token);
//! ```

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

/// How far a store's history has advanced: the consistency token a write
/// returns. Ordered; larger is later. See the [module docs](crate::position).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct Position(u64);

impl Position {
    /// The position of a store before its first write.
    pub const ZERO: Position = Position(0);

    /// A position from its raw number.
    pub const fn new(raw: u64) -> Self {
        Position(raw)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Eight big-endian bytes, whose byte order is the position order.
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// The inverse of [`to_bytes`](Self::to_bytes).
    pub const fn from_bytes(bytes: [u8; 8]) -> Self {
        Position(u64::from_be_bytes(bytes))
    }

    /// The later of two positions.
    pub fn max(self, other: Position) -> Position {
        Ord::max(self, other)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for Position {
    type Err = ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Position)
    }
}

impl From<u64> for Position {
    fn from(raw: u64) -> Self {
        Position(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_keep_order() {
        let a = Position::new(255);
        let b = Position::new(256);
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(Position::from_bytes(b.to_bytes()), b);
    }

    #[test]
    fn text_round_trip_and_bad_text_is_an_error() {
        assert_eq!("7".parse::<Position>().unwrap(), Position::new(7));
        assert!("seven".parse::<Position>().is_err());
        assert!("-1".parse::<Position>().is_err());
    }
}
