//! The model test: random operation sequences against a store and a
//! `HashMap`, which must agree.

use std::collections::HashMap;
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::faulty::is_injected;
use super::Sample;
use crate::store::{Check, Store, Write};
use crate::{ErrorKind, Position, Version};

/// How many distinct keys a sequence touches (few, so operations collide).
const KEYS: u8 = 16;
/// Where the model's key ranges start, away from the conformance suite's.
const BASE: u64 = 100_000_000;

/// One step of a model sequence; keys are indices `0..16`, values numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelOp {
    /// Read one key.
    Get(u8),
    /// Write one key.
    Put(u8, u16),
    /// Remove one key.
    Delete(u8),
    /// Read several keys.
    GetMany(Vec<u8>),
    /// A batch: `Some(value)` puts, `None` deletes.
    Batch(Vec<(u8, Option<u16>)>),
    /// Insert if absent: applied exactly when the model lacks the key.
    InsertIfAbsent(u8, u16),
    /// Compare and set after reading the key's version: with the version
    /// read (applied), or with one that is not the key's (a conflict that
    /// changes nothing). Skipped by a store without conditional writes.
    CompareAndSet {
        /// The key.
        key: u8,
        /// The value to set.
        value: u16,
        /// Whether the check names a version other than the one read.
        stale: bool,
    },
}

/// The proptest strategy for one operation.
pub fn model_op() -> impl Strategy<Value = ModelOp> {
    let key = 0..KEYS;
    prop_oneof![
        3 => key.clone().prop_map(ModelOp::Get),
        4 => (key.clone(), any::<u16>()).prop_map(|(k, v)| ModelOp::Put(k, v)),
        2 => key.clone().prop_map(ModelOp::Delete),
        1 => prop::collection::vec(key.clone(), 0..6).prop_map(ModelOp::GetMany),
        2 => prop::collection::vec((key.clone(), prop::option::of(any::<u16>())), 0..8)
            .prop_map(ModelOp::Batch),
        2 => (key.clone(), any::<u16>()).prop_map(|(k, v)| ModelOp::InsertIfAbsent(k, v)),
        2 => (key, any::<u16>(), any::<bool>())
            .prop_map(|(key, value, stale)| ModelOp::CompareAndSet { key, value, stale }),
    ]
}

/// Runs random operation sequences against a store and a `HashMap` model
/// and checks that every read agrees, that positions grow, and that a
/// failed write is an injected fault (from a [`FaultyStore`](super::FaultyStore))
/// that changed nothing. A failing case is shrunk to a minimal sequence,
/// which the panic message prints.
///
/// Each case (and each shrinking step) uses fresh keys, so one store
/// serves every case.
///
/// ```
/// use scalekit::testing::ModelTest;
/// use scalekit::MemoryStore;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// ModelTest::new().cases(16).run(&MemoryStore::<u64, String>::new()).await;
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ModelTest {
    cases: u32,
    max_ops: usize,
    seed: u64,
}

impl Default for ModelTest {
    fn default() -> Self {
        ModelTest {
            cases: 64,
            max_ops: 40,
            seed: 0x5ca1_e417,
        }
    }
}

impl ModelTest {
    /// 64 cases of up to 40 operations, from a fixed seed.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many random sequences to run.
    pub fn cases(mut self, cases: u32) -> Self {
        self.cases = cases;
        self
    }

    /// The longest sequence.
    pub fn max_ops(mut self, max_ops: usize) -> Self {
        self.max_ops = max_ops.max(1);
        self
    }

    /// The seed of the generator (the same seed gives the same sequences).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs the cases; panics with the minimal failing sequence on a
    /// disagreement.
    pub async fn run<S>(&self, store: &S)
    where
        S: Store,
        S::Key: Sample,
        S::Value: Sample,
    {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let strategy = prop::collection::vec(model_op(), 1..=self.max_ops);
        let mut namespace = 0u64;
        for _ in 0..self.cases {
            let mut tree = strategy
                .new_tree(&mut runner)
                .expect("the model strategy always generates");
            namespace += 1;
            let Err(first) = check(store, namespace, &tree.current()).await else {
                continue;
            };
            let mut minimal = (tree.current(), first);
            let mut shrinks = 0;
            if tree.simplify() {
                loop {
                    shrinks += 1;
                    namespace += 1;
                    let failed = match check(store, namespace, &tree.current()).await {
                        Err(why) => {
                            minimal = (tree.current(), why);
                            true
                        }
                        Ok(()) => false,
                    };
                    let more = if failed {
                        tree.simplify()
                    } else {
                        tree.complicate()
                    };
                    if !more || shrinks > 1_000 {
                        break;
                    }
                }
            }
            let mut ops = String::new();
            for op in &minimal.0 {
                let _ = writeln!(ops, "    {op:?}");
            }
            panic!(
                "the store disagrees with the model: {}\nminimal sequence ({} ops):\n{ops}",
                minimal.1,
                minimal.0.len()
            );
        }
    }
}

/// Runs one sequence; `Err` says how the store and the model disagreed.
async fn check<S>(store: &S, namespace: u64, ops: &[ModelOp]) -> Result<(), String>
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let key = |k: u8| S::Key::sample(BASE + namespace * KEYS as u64 + k as u64);
    let value = |v: u16| S::Value::sample(v as u64);
    let mut model: HashMap<u8, u16> = HashMap::new();
    let mut last = Position::ZERO;
    // Checks a write's outcome: `Ok(true)` if it was applied. A write that
    // changes the data must move the position forward; any write must not
    // move it back.
    let mut wrote =
        |step: usize, result: crate::Result<Position>, changes: bool| -> Result<bool, String> {
            match result {
                Ok(p) if p > last || (p == last && !changes) => {
                    last = p;
                    Ok(true)
                }
                Ok(p) if p == Position::ZERO && !changes => Ok(true),
                Ok(p) => Err(format!("step {step}: position {p} is not after {last}")),
                Err(e) if is_injected(&e) => Ok(false),
                Err(e) => Err(format!("step {step}: write failed: {e}")),
            }
        };
    for (step, op) in ops.iter().enumerate() {
        match op {
            ModelOp::Get(k) => match store.get(&key(*k)).await {
                Ok(got) => {
                    let expected = model.get(k).map(|v| value(*v));
                    if got != expected {
                        return Err(format!(
                            "step {step}: get({k}) = {got:?}, model has {expected:?}"
                        ));
                    }
                }
                Err(e) if is_injected(&e) => {}
                Err(e) => return Err(format!("step {step}: get failed: {e}")),
            },
            ModelOp::Put(k, v) => {
                let changes = model.get(k) != Some(v);
                if wrote(step, store.put(key(*k), value(*v)).await, changes)? {
                    model.insert(*k, *v);
                }
            }
            ModelOp::Delete(k) => {
                let changes = model.contains_key(k);
                if wrote(step, store.delete(&key(*k)).await, changes)? {
                    model.remove(k);
                }
            }
            ModelOp::GetMany(ks) => {
                let keys: Vec<S::Key> = ks.iter().map(|k| key(*k)).collect();
                match store.get_many(&keys).await {
                    Ok(got) => {
                        let expected: Vec<_> =
                            ks.iter().map(|k| model.get(k).map(|v| value(*v))).collect();
                        if got != expected {
                            return Err(format!(
                                "step {step}: get_many({ks:?}) = {got:?}, model has {expected:?}"
                            ));
                        }
                    }
                    Err(e) if is_injected(&e) => {}
                    Err(e) => return Err(format!("step {step}: get_many failed: {e}")),
                }
            }
            ModelOp::InsertIfAbsent(k, v) => {
                let result = store
                    .write_if(
                        vec![Check::Absent(key(*k))],
                        vec![Write::Put(key(*k), value(*v))],
                    )
                    .await;
                match result {
                    Err(e) if matches!(e.kind(), ErrorKind::Unsupported { .. }) => {}
                    Err(e) if e.is_conflict() => {
                        if !model.contains_key(k) {
                            return Err(format!(
                                "step {step}: insert-if-absent of {k} conflicted, the model lacks it"
                            ));
                        }
                    }
                    result => {
                        let applied = wrote(step, result, true)?;
                        if applied && model.insert(*k, *v).is_some() {
                            return Err(format!(
                                "step {step}: insert-if-absent of {k} applied over a present key"
                            ));
                        }
                    }
                }
            }
            ModelOp::CompareAndSet {
                key: k,
                value: v,
                stale,
            } => {
                let read = match store.get_versioned(&key(*k)).await {
                    Ok(read) => read,
                    Err(e) if is_injected(&e) => continue,
                    Err(e) if matches!(e.kind(), ErrorKind::Unsupported { .. }) => continue,
                    Err(e) => return Err(format!("step {step}: get_versioned failed: {e}")),
                };
                let expected = model.get(k).map(|v| value(*v));
                if read.as_ref().map(|r| &r.value) != expected.as_ref() {
                    return Err(format!(
                        "step {step}: get_versioned({k}) = {read:?}, model has {expected:?}"
                    ));
                }
                let check = match (&read, stale) {
                    (None, false) => Check::Absent(key(*k)),
                    (None, true) => Check::Version(key(*k), Version::new(1)),
                    (Some(r), false) => Check::Version(key(*k), r.version),
                    (Some(_), true) => Check::Absent(key(*k)),
                };
                let result = store
                    .write_if(vec![check], vec![Write::Put(key(*k), value(*v))])
                    .await;
                match result {
                    Err(e) if e.is_conflict() => {
                        if !*stale {
                            return Err(format!(
                                "step {step}: compare-and-set of {k} with the version read conflicted"
                            ));
                        }
                    }
                    result => {
                        if *stale && result.is_ok() {
                            return Err(format!(
                                "step {step}: compare-and-set of {k} with a wrong version was applied"
                            ));
                        }
                        if wrote(step, result, true)? {
                            model.insert(*k, *v);
                            if let (Some(before), Ok(Some(after))) =
                                (&read, store.get_versioned(&key(*k)).await)
                            {
                                if after.version <= before.version {
                                    return Err(format!(
                                        "step {step}: the version of {k} went from {} to {}",
                                        before.version, after.version
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            ModelOp::Batch(writes) => {
                let batch = writes
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => Write::Put(key(*k), value(*v)),
                        None => Write::Delete(key(*k)),
                    })
                    .collect();
                let mut after = model.clone();
                for (k, v) in writes {
                    match v {
                        Some(v) => after.insert(*k, *v),
                        None => after.remove(k),
                    };
                }
                let changes = after != model;
                if wrote(step, store.write_batch(batch).await, changes)? {
                    model = after;
                }
            }
        }
    }
    let all: Vec<S::Key> = (0..KEYS).map(key).collect();
    let final_state = loop {
        match store.get_many(&all).await {
            Ok(values) => break values,
            Err(e) if is_injected(&e) => continue,
            Err(e) => return Err(format!("final get_many failed: {e}")),
        }
    };
    for (k, got) in (0..KEYS).zip(final_state) {
        let expected = model.get(&k).map(|v| value(*v));
        if got != expected {
            return Err(format!(
                "final state of key {k}: {got:?}, model has {expected:?}"
            ));
        }
    }
    Ok(())
}
