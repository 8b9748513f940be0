//! Virtual buckets and online resharding.

mod migration;
mod steps;
mod store;
mod table;

pub use self::migration::Phase;
pub use self::store::{BucketSharded, MetaStore, ReshardingProgress};
pub use self::table::BucketTable;
