//! The conformance suite: what every [`Store`] must do.
//!
//! Each function checks one promise of the [store contract](crate::store#contract)
//! and panics with a message naming it when the store breaks it. They use
//! disjoint key ranges and clean up after themselves, so they can run one
//! after another on one store; [`run_all`] runs them all.

use std::collections::HashSet;
use std::sync::Arc;

use super::Sample;
use crate::store::{Check, Store, Write};
use crate::{ErrorKind, Position};

/// Each check's key range starts at its own multiple of this.
const RANGE: u64 = 1_000_000;

fn key<S: Store>(check: u64, n: u64) -> S::Key
where
    S::Key: Sample,
{
    S::Key::sample(check * RANGE + n)
}

fn value<S: Store>(n: u64) -> S::Value
where
    S::Value: Sample,
{
    S::Value::sample(n)
}

/// Runs every check of the suite on `store`, one after another.
pub async fn run_all<S>(store: Arc<S>)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    put_get_delete(&*store).await;
    overwrite(&*store).await;
    absent_keys(&*store).await;
    edge_cases(&*store).await;
    get_many_semantics(&*store).await;
    write_batch_semantics(&*store).await;
    positions_grow(&*store).await;
    large_values(&*store).await;
    concurrent_writers_on_distinct_keys(Arc::clone(&store)).await;
    concurrent_writers_on_shared_keys(Arc::clone(&store)).await;
    if supports_conditional_writes(&*store).await {
        conditional_writes(&*store).await;
        versions_identify_writes(&*store).await;
        compare_and_set_increments_race(store).await;
    }
}

/// Whether the store does conditional writes. A store that does not must
/// refuse both [`get_versioned`](Store::get_versioned) and
/// [`write_if`](Store::write_if) with a typed
/// [`ErrorKind::Unsupported`], never half-implement them; this checks that
/// too.
pub async fn supports_conditional_writes<S>(store: &S) -> bool
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(11, 0);
    match store.get_versioned(&k).await {
        Ok(_) => true,
        Err(error) => {
            assert!(
                matches!(error.kind(), ErrorKind::Unsupported { .. }),
                "get_versioned failed other than as unsupported: {error}"
            );
            let write = store
                .write_if(
                    vec![Check::Absent(k.clone())],
                    vec![Write::Put(k.clone(), value::<S>(1))],
                )
                .await;
            assert!(
                matches!(
                    write.as_ref().map_err(|e| e.kind()),
                    Err(ErrorKind::Unsupported { .. })
                ),
                "a store without versions must refuse write_if as unsupported, got {write:?}"
            );
            assert_eq!(
                store.get(&k).await.expect("get"),
                None,
                "a refused write_if wrote"
            );
            false
        }
    }
}

/// Whether a conditional write over several keys was refused whole as
/// unsupported (a layer over several stores may do that).
fn refused_as_unsupported(result: &crate::Result<Position>) -> bool {
    matches!(
        result.as_ref().map_err(|e| e.kind()),
        Err(ErrorKind::Unsupported { .. })
    )
}

fn assert_conflict(result: crate::Result<Position>, check: usize, what: &str) {
    match result {
        Err(error) => match error.kind() {
            ErrorKind::Conflict { check: failed, .. } => {
                assert_eq!(
                    *failed, check,
                    "{what}: the conflict names the failing check"
                )
            }
            _ => panic!("{what}: expected a conflict, got {error}"),
        },
        Ok(_) => panic!("{what}: expected a conflict, the write was applied"),
    }
}

/// Insert-if-absent, compare-and-set and checks on keys not written: each
/// holds or fails with a conflict that applies nothing.
pub async fn conditional_writes<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let (a, b, fence) = (key::<S>(12, 0), key::<S>(12, 1), key::<S>(12, 2));
    // Insert if absent: once.
    store
        .write_if(
            vec![Check::Absent(a.clone())],
            vec![Write::Put(a.clone(), value::<S>(1))],
        )
        .await
        .expect("insert if absent");
    let first = store
        .get_versioned(&a)
        .await
        .expect("get_versioned")
        .expect("inserted");
    assert_eq!(first.value, value::<S>(1));
    assert_conflict(
        store
            .write_if(
                vec![Check::Absent(a.clone())],
                vec![Write::Put(a.clone(), value::<S>(2))],
            )
            .await,
        0,
        "a second insert if absent",
    );
    assert_eq!(
        store.get(&a).await.expect("get"),
        Some(value::<S>(1)),
        "the loser wrote nothing"
    );
    // Compare and set: with the version read, then not with it again.
    store
        .write_if(
            vec![Check::Version(a.clone(), first.version)],
            vec![Write::Put(a.clone(), value::<S>(3))],
        )
        .await
        .expect("compare and set with the version read");
    let second = store
        .get_versioned(&a)
        .await
        .expect("get_versioned")
        .expect("present");
    assert_eq!(second.value, value::<S>(3));
    assert!(
        second.version > first.version,
        "a write leaves a larger version"
    );
    assert_conflict(
        store
            .write_if(
                vec![Check::Version(a.clone(), first.version)],
                vec![Write::Put(a.clone(), value::<S>(4))],
            )
            .await,
        0,
        "compare and set with a stale version",
    );
    assert_conflict(
        store
            .write_if(
                vec![Check::Version(b.clone(), first.version)],
                vec![Write::Put(b.clone(), value::<S>(4))],
            )
            .await,
        0,
        "a version check on an absent key",
    );
    // A failed check among several applies none of the batch. (A layer
    // over several stores, a sharded one, may refuse keys on two of its
    // stores as unsupported, and then must apply nothing either.)
    let two_checks = store
        .write_if(
            vec![
                Check::Absent(b.clone()),
                Check::Version(a.clone(), first.version),
            ],
            vec![
                Write::Put(b.clone(), value::<S>(5)),
                Write::Delete(a.clone()),
            ],
        )
        .await;
    if !refused_as_unsupported(&two_checks) {
        assert_conflict(two_checks, 1, "the second of two checks");
    }
    assert_eq!(
        store.get(&b).await.expect("get"),
        None,
        "nothing of a failed batch is applied"
    );
    assert_eq!(store.get(&a).await.expect("get"), Some(value::<S>(3)));
    // A fence: a check on a key the batch does not write.
    store
        .put(fence.clone(), value::<S>(9))
        .await
        .expect("put fence");
    let held = store
        .get_versioned(&fence)
        .await
        .expect("get")
        .expect("fence");
    let fenced = store
        .write_if(
            vec![Check::Version(fence.clone(), held.version)],
            vec![Write::Put(b.clone(), value::<S>(6))],
        )
        .await;
    if refused_as_unsupported(&fenced) {
        assert_eq!(
            store.get(&b).await.expect("get"),
            None,
            "a refused write applied"
        );
        for k in [a, b, fence] {
            store.delete(&k).await.expect("clean up");
        }
        return;
    }
    fenced.expect("a write under a held fence");
    assert_eq!(store.get(&b).await.expect("get"), Some(value::<S>(6)));
    store
        .put(fence.clone(), value::<S>(10))
        .await
        .expect("move the fence");
    assert_conflict(
        store
            .write_if(
                vec![Check::Version(fence.clone(), held.version)],
                vec![Write::Put(b.clone(), value::<S>(7))],
            )
            .await,
        0,
        "a write under a fence that moved",
    );
    assert_eq!(store.get(&b).await.expect("get"), Some(value::<S>(6)));
    // Checks alone, and an Absent check on a key not written.
    store
        .write_if(vec![Check::Absent(key::<S>(12, 3))], Vec::new())
        .await
        .expect("a check that holds, with nothing to write");
    assert_eq!(
        store.get(&key::<S>(12, 3)).await.expect("get"),
        None,
        "an absent check leaves the key absent"
    );
    for k in [a, b, fence] {
        store.delete(&k).await.expect("clean up");
    }
}

/// Every write of a key leaves a new version, a plain write too, and a key
/// deleted and written again never gets back an old one (no ABA).
pub async fn versions_identify_writes<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(13, 0);
    let mut seen = Vec::new();
    for round in 0..3 {
        store.put(k.clone(), value::<S>(1)).await.expect("put");
        let v1 = store
            .get_versioned(&k)
            .await
            .expect("get")
            .expect("present")
            .version;
        store
            .put(k.clone(), value::<S>(1))
            .await
            .expect("put the same value");
        let v2 = store
            .get_versioned(&k)
            .await
            .expect("get")
            .expect("present")
            .version;
        assert!(
            v2 > v1,
            "round {round}: rewriting the same value leaves a larger version"
        );
        store
            .write_batch(vec![Write::Put(k.clone(), value::<S>(2))])
            .await
            .expect("batch");
        let v3 = store
            .get_versioned(&k)
            .await
            .expect("get")
            .expect("present")
            .version;
        assert!(v3 > v2, "round {round}: a batch leaves a larger version");
        seen.extend([v1, v2, v3]);
        store.delete(&k).await.expect("delete");
        assert!(store.get_versioned(&k).await.expect("get").is_none());
    }
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "a version came back after a delete: {seen:?}"
    );
}

/// Many tasks doing compare-and-set increments of one key end with exactly
/// as many increments as succeeded, and every one succeeds in the end.
pub async fn compare_and_set_increments_race<S>(store: Arc<S>)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    const TASKS: u64 = 8;
    const EACH: u64 = 12;
    let k = key::<S>(14, 0);
    let seed = |n: u64| value::<S>(14 * RANGE + n);
    store
        .put(k.clone(), seed(0))
        .await
        .expect("put the counter");
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = Arc::clone(&store);
            let k = k.clone();
            tokio::spawn(async move {
                let mut conflicts = 0u64;
                for _ in 0..EACH {
                    loop {
                        let read = store
                            .get_versioned(&k)
                            .await
                            .expect("get")
                            .expect("counter");
                        let n = (0..=TASKS * EACH)
                            .find(|&n| seed(n) == read.value)
                            .expect("the counter holds a value some increment wrote");
                        match store
                            .write_if(
                                vec![Check::Version(k.clone(), read.version)],
                                vec![Write::Put(k.clone(), seed(n + 1))],
                            )
                            .await
                        {
                            Ok(_) => break,
                            Err(error) if error.is_conflict() => conflicts += 1,
                            Err(error) => panic!("an increment failed: {error}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("increment task");
    }
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(seed(TASKS * EACH)),
        "every successful compare-and-set is one increment, none lost"
    );
    store.delete(&k).await.expect("clean up");
}

/// A put is read back; a delete makes the key absent.
pub async fn put_get_delete<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(1, 0);
    let v = value::<S>(7);
    store.put(k.clone(), v.clone()).await.expect("put");
    assert_eq!(store.get(&k).await.expect("get"), Some(v), "read after put");
    store.delete(&k).await.expect("delete");
    assert_eq!(store.get(&k).await.expect("get"), None, "read after delete");
}

/// A second put replaces the first.
pub async fn overwrite<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(2, 0);
    store
        .put(k.clone(), value::<S>(1))
        .await
        .expect("first put");
    store
        .put(k.clone(), value::<S>(2))
        .await
        .expect("second put");
    assert_eq!(
        store.get(&k).await.expect("get"),
        Some(value::<S>(2)),
        "last put wins"
    );
    store.delete(&k).await.expect("delete");
}

/// Absent keys read as `None`, and deleting one is not an error.
pub async fn absent_keys<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(3, 0);
    assert_eq!(store.get(&k).await.expect("get of an absent key"), None);
    store
        .delete(&k)
        .await
        .expect("deleting an absent key is not an error");
    store
        .delete(&k)
        .await
        .expect("deleting it twice is not an error either");
    assert_eq!(store.get(&k).await.expect("get"), None);
}

/// Awkward keys and values (empty, extremes, non-ASCII, SQL-looking) are
/// stored faithfully, and distinct keys stay distinct.
pub async fn edge_cases<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let mut keys: Vec<S::Key> = Vec::new();
    for k in S::Key::edge_cases() {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let values = S::Value::edge_cases();
    for (i, k) in keys.iter().enumerate() {
        let v = values[i % values.len()].clone();
        store
            .put(k.clone(), v)
            .await
            .expect("put of an edge-case key");
    }
    for (i, k) in keys.iter().enumerate() {
        let expected = values[i % values.len()].clone();
        assert_eq!(
            store.get(k).await.expect("get of an edge-case key"),
            Some(expected),
            "edge-case key {k:?} reads back what was written"
        );
    }
    for v in &values {
        let k = key::<S>(4, 0);
        store
            .put(k.clone(), v.clone())
            .await
            .expect("put of an edge-case value");
        assert_eq!(
            store.get(&k).await.expect("get"),
            Some(v.clone()),
            "edge-case value"
        );
    }
    for k in keys.iter().chain([&key::<S>(4, 0)]) {
        store.delete(k).await.expect("delete");
    }
}

/// `get_many` answers one entry per key, in order, with duplicates and
/// absent keys, and an empty request gets an empty answer.
pub async fn get_many_semantics<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let (a, b, absent) = (key::<S>(5, 0), key::<S>(5, 1), key::<S>(5, 2));
    store.put(a.clone(), value::<S>(10)).await.expect("put");
    store.put(b.clone(), value::<S>(11)).await.expect("put");
    let got = store
        .get_many(&[b.clone(), absent.clone(), a.clone(), b.clone()])
        .await
        .expect("get_many");
    assert_eq!(
        got,
        vec![
            Some(value::<S>(11)),
            None,
            Some(value::<S>(10)),
            Some(value::<S>(11))
        ],
        "get_many keeps order and duplicates"
    );
    assert!(store
        .get_many(&[])
        .await
        .expect("empty get_many")
        .is_empty());
    let many: Vec<S::Key> = (100..400).map(|n| key::<S>(5, n)).collect();
    let answers = store.get_many(&many).await.expect("get_many of 300 keys");
    assert_eq!(answers.len(), many.len());
    assert!(answers.iter().all(Option::is_none));
    store
        .write_batch(vec![Write::Delete(a), Write::Delete(b)])
        .await
        .expect("cleanup");
}

/// `write_batch` applies puts and deletes in order (the last operation on a
/// key wins), and an empty batch is accepted.
pub async fn write_batch_semantics<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let (a, b, c) = (key::<S>(6, 0), key::<S>(6, 1), key::<S>(6, 2));
    store.put(c.clone(), value::<S>(1)).await.expect("put");
    store
        .write_batch(vec![
            Write::Put(a.clone(), value::<S>(1)),
            Write::Put(b.clone(), value::<S>(2)),
            Write::Delete(a.clone()),
            Write::Put(a.clone(), value::<S>(3)),
            Write::Delete(c.clone()),
            Write::Put(b.clone(), value::<S>(4)),
            Write::Delete(b.clone()),
            Write::Put(b.clone(), value::<S>(5)),
        ])
        .await
        .expect("write_batch");
    assert_eq!(
        store
            .get_many(&[a.clone(), b.clone(), c.clone()])
            .await
            .expect("get_many"),
        vec![Some(value::<S>(3)), Some(value::<S>(5)), None],
        "the last operation on each key wins"
    );
    store
        .write_batch(Vec::new())
        .await
        .expect("an empty batch is accepted");
    let big: Vec<Write<S::Key, S::Value>> = (0..500)
        .map(|n| Write::Put(key::<S>(6, 100 + n), value::<S>(n)))
        .collect();
    store.write_batch(big).await.expect("a batch of 500 puts");
    let keys: Vec<S::Key> = (0..500).map(|n| key::<S>(6, 100 + n)).collect();
    let got = store.get_many(&keys).await.expect("get_many");
    assert!(
        got.iter()
            .enumerate()
            .all(|(n, v)| *v == Some(value::<S>(n as u64))),
        "every put of a large batch is applied"
    );
    let cleanup = keys
        .into_iter()
        .chain([a, b, c])
        .map(Write::Delete)
        .collect();
    store
        .write_batch(cleanup)
        .await
        .expect("a batch of deletes");
}

/// Writes that change data, made one after another, get strictly
/// increasing positions.
pub async fn positions_grow<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(7, 0);
    let mut last = Position::ZERO;
    for n in 0..5 {
        let p = store.put(k.clone(), value::<S>(n)).await.expect("put");
        assert!(
            p > last,
            "put position {p} is after the previous write's {last}"
        );
        last = p;
    }
    let p = store
        .write_batch(vec![Write::Put(k.clone(), value::<S>(9))])
        .await
        .expect("write_batch");
    assert!(p > last, "batch position {p} is after {last}");
    let p2 = store.delete(&k).await.expect("delete");
    assert!(p2 > p, "delete position {p2} is after {p}");
}

/// A value of 1 MiB (for types that can be that large) round-trips intact.
pub async fn large_values<S>(store: &S)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    let k = key::<S>(8, 0);
    let big = S::Value::sample_large(3, 1 << 20);
    store
        .put(k.clone(), big.clone())
        .await
        .expect("put of a large value");
    assert!(
        store.get(&k).await.expect("get of a large value") == Some(big),
        "a large value reads back intact"
    );
    store.delete(&k).await.expect("delete");
}

/// Many tasks writing distinct keys at once lose none of their writes.
pub async fn concurrent_writers_on_distinct_keys<S>(store: Arc<S>)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    const WRITERS: u64 = 8;
    const EACH: u64 = 40;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for n in 0..EACH {
                    let id = w * EACH + n;
                    store
                        .put(key::<S>(9, id), value::<S>(id))
                        .await
                        .expect("concurrent put");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let keys: Vec<S::Key> = (0..WRITERS * EACH).map(|id| key::<S>(9, id)).collect();
    let got = store.get_many(&keys).await.expect("get_many");
    for (id, v) in got.iter().enumerate() {
        assert_eq!(
            v,
            &Some(value::<S>(id as u64)),
            "write {id} of a concurrent writer"
        );
    }
    store
        .write_batch(keys.into_iter().map(Write::Delete).collect())
        .await
        .expect("cleanup");
}

/// Many tasks writing the same keys at once, with readers alongside: every
/// read sees absent or a value some writer wrote (nothing torn), each
/// writer's positions grow, and after a final write every key holds it.
pub async fn concurrent_writers_on_shared_keys<S>(store: Arc<S>)
where
    S: Store,
    S::Key: Sample,
    S::Value: Sample,
{
    const WRITERS: u64 = 6;
    const ROUNDS: u64 = 25;
    const KEYS: u64 = 4;
    let written = |k: u64| -> HashSet<u64> {
        (0..WRITERS)
            .flat_map(|w| (0..ROUNDS).map(move |r| 1_000 * (w + 1) + r * KEYS + k))
            .collect()
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut last = Position::ZERO;
                for r in 0..ROUNDS {
                    for k in 0..KEYS {
                        let v = 1_000 * (w + 1) + r * KEYS + k;
                        let p = store
                            .put(key::<S>(10, k), value::<S>(v))
                            .await
                            .expect("put");
                        assert!(p > last, "a writer's own positions grow");
                        last = p;
                    }
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..ROUNDS {
                    for k in 0..KEYS {
                        seen.push((k, store.get(&key::<S>(10, k)).await.expect("get")));
                    }
                }
                seen
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer task");
    }
    for reader in readers {
        for (k, v) in reader.await.expect("reader task") {
            if let Some(v) = v {
                let legal = written(k).iter().any(|n| value::<S>(*n) == v);
                assert!(legal, "a concurrent read saw a value nobody wrote: {v:?}");
            }
        }
    }
    for k in 0..KEYS {
        let v = store
            .get(&key::<S>(10, k))
            .await
            .expect("get")
            .expect("present");
        assert!(
            written(k).iter().any(|n| value::<S>(*n) == v),
            "final value was written"
        );
        store
            .put(key::<S>(10, k), value::<S>(5))
            .await
            .expect("final put");
        assert_eq!(
            store.get(&key::<S>(10, k)).await.expect("get"),
            Some(value::<S>(5))
        );
        store.delete(&key::<S>(10, k)).await.expect("delete");
    }
}

/// For backends that store bytes through a [`Codec`](crate::codec::Codec):
/// a stored value that does not decode is an
/// [`ErrorKind::Codec`] on `get` and `get_many`, never a
/// panic, and does not spoil the readable rows beside it.
///
/// `raw` and `text` must be two views of the same table: one with byte
/// values, one with `String` values.
pub async fn undecodable_values_are_codec_errors<R, T>(raw: &R, text: &T)
where
    R: Store<Key = String, Value = Vec<u8>>,
    T: Store<Key = String, Value = String>,
{
    use crate::{CodecDirection, ErrorKind};

    let (bad, good) = ("undecodable".to_string(), "decodable".to_string());
    raw.put(bad.clone(), vec![0xff, 0xfe, 0xfd])
        .await
        .expect("put raw bytes");
    raw.put(good.clone(), b"fine".to_vec())
        .await
        .expect("put raw bytes");
    let err = text
        .get(&bad)
        .await
        .expect_err("invalid UTF-8 must not decode");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Codec {
                direction: CodecDirection::Decode,
                part: "value",
                ..
            }
        ),
        "a decode error names its direction and part: {err}"
    );
    assert_eq!(
        text.get(&good).await.expect("a good row"),
        Some("fine".to_string())
    );
    let err = text
        .get_many(&[good.clone(), bad.clone()])
        .await
        .expect_err("get_many with an undecodable row");
    assert!(matches!(err.kind(), ErrorKind::Codec { .. }), "{err}");
    raw.write_batch(vec![Write::Delete(bad), Write::Delete(good)])
        .await
        .expect("cleanup");
}
