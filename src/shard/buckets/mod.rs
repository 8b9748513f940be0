//! Virtual buckets and online resharding.
//!
//! Keys map to a fixed number of buckets, buckets to shards of a pool by
//! a versioned [`BucketTable`] (`table.rs`). A resharding moves buckets
//! to a new table through the [`Phase`]s of a record (`migration.rs`),
//! one step at a time (`steps.rs`), while [`BucketSharded`] (`store.rs`)
//! routes reads and writes of the moving buckets by the phase.
//!
//! # Promises
//!
//! - **No acknowledged write is lost**, whichever step a shard's error
//!   or a crash interrupts: until the writes switch, a write to a moving
//!   bucket is acknowledged only once its old owner has it (and the new
//!   one, until a rollback begins); after, once its new owner has it,
//!   and the new owner has had every acknowledged write since its copy
//!   verified. Reads go to an owner holding every acknowledged write.
//! - **A phase change is recorded before it is applied.** Each step
//!   writes the record to the meta store first and changes the routing
//!   after; a record that cannot be written fails the step and changes
//!   nothing, so no read or write is ever routed by an unrecorded phase.
//!   Buckets are marked copied the same way.
//! - **A copy is verified before it is used**: per bucket, the sum of a
//!   64-bit hash of each entry and the count of entries, on the old
//!   owner and on the new one. A difference fails
//!   [`copy_next`](BucketSharded::copy_next) with
//!   [`ErrorKind::Backend`](crate::ErrorKind::Backend), marks nothing
//!   copied, and the reads cannot switch (a
//!   [`ErrorKind::Config`](crate::ErrorKind::Config) error) until a new
//!   copy verifies. Writes switch only when no bucket's copy is behind
//!   (a write that failed on the new owner unmarks its bucket in this
//!   process).
//! - **Every interruption can be resumed.** Opening the store again over
//!   the same meta store and pool resumes the recorded phase;
//!   [`finish`](BucketSharded::finish) then goes forwards, or
//!   [`roll_back`](BucketSharded::roll_back) backwards (before the writes
//!   switch) and finishes a rollback cut short. While a rollback is under
//!   way every step forwards is a `Config` error.
//! - **A bad record is a typed error on opening**, never a panic: a
//!   corrupt one is [`ErrorKind::Codec`](crate::ErrorKind::Codec); a
//!   table or a resharding naming a shard outside the pool is
//!   [`ErrorKind::Config`](crate::ErrorKind::Config).
//!
//! # What a crash at each step leaves
//!
//! | step | recorded first | then applied | a crash leaves, and opening again resumes |
//! |---|---|---|---|
//! | `start_resharding` | target table, `Copying`, nothing copied | writes to moving buckets reach both owners | no record (nothing began), or `Copying` |
//! | `copy_next` | its buckets marked copied, once verified | the marks | copies not yet marked: made again (what an earlier attempt left on the new owner is replaced) |
//! | `switch_reads` | `ReadsSwitched` | reads of moving buckets go to the new owners | `Copying` or `ReadsSwitched`: writes reached both owners in either |
//! | `switch_writes` | `WritesSwitched` | writes go to the new owners only | `ReadsSwitched` (writes reached both owners until then) or `WritesSwitched` |
//! | `clean_up` | nothing: it removes the old copies, records the new table, deletes the record | the new table | `WritesSwitched` with old copies partly removed (`clean_up` again), or the new table with a leftover record, which opening deletes |
//! | `roll_back` | `RollingBack` | reads and writes go to the old owners only; the copies are removed, the record deleted | the old phase (nothing began), or `RollingBack` with copies partly removed: `roll_back` again |
//!
//! # Limits
//!
//! - A write that fails may or may not have been applied, as anywhere;
//!   during a resharding it may have reached the old owner only. Until
//!   [`copy_next`](BucketSharded::copy_next) copies its bucket again,
//!   reads switched to the new owner do not see it, although reads before
//!   the switch may have.
//! - The steps of one [`BucketSharded`] run one at a time. The routing
//!   state lives in the process: another process over the same meta store
//!   learns a phase when it opens the store, not when the phase changes,
//!   and nothing fences two resharders. Route and reshard a store from
//!   one process (leases and fences for fleets are to come in `coord`).

mod migration;
mod steps;
mod store;
mod table;

pub use self::migration::Phase;
pub use self::store::{BucketSharded, MetaStore, ReshardingProgress};
pub use self::table::BucketTable;
