//! Tools to test stores and layers (feature `testing`).
//!
//! | tool | checks |
//! |---|---|
//! | [`conformance`] | each promise of the [store contract](crate::store#contract), one async function each; [`conformance::run_all`] runs them all |
//! | [`ModelTest`] | random operation sequences (with injected faults, if you wrap the store in a [`FaultyStore`]) against a `HashMap` model, shrunk to a minimal failing sequence |
//! | [`event_conformance`] | each promise of the [event bus](crate::events), against any topic backend (in-process, NATS) |
//! | [`FaultyStore`] | a wrapper that adds latency, fails calls on a schedule or at random from a seed, and counts calls per operation |
//!
//! Every backend and every layer in scalekit runs the whole suite and the
//! model test in its own tests; run them on yours:
//!
//! ```
//! use std::sync::Arc;
//! use scalekit::testing::{conformance, FaultyStore, ModelTest};
//! use scalekit::MemoryStore;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! conformance::run_all(Arc::new(MemoryStore::<String, Vec<u8>>::new())).await;
//!
//! let faulty = FaultyStore::builder(MemoryStore::<u64, String>::new())
//!     .fail_with_probability(0.2, 42)
//!     .build()
//!     .unwrap();
//! ModelTest::new().cases(32).run(&faulty).await;
//! assert!(faulty.calls().injected_faults > 0);
//! # });
//! ```
//!
//! Keys and values are made through [`Sample`], implemented for strings,
//! bytes and integers.

pub mod conformance;
pub mod event_conformance;
mod faulty;
mod model;
mod sample;

pub use faulty::{CallCounts, FaultyStore, FaultyStoreBuilder, Operation};
pub use model::{model_op, ModelOp, ModelTest};
pub use sample::Sample;
