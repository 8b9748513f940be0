//! The in-process tier's own promises: it holds its bound, never answers
//! with another key's or an older value, keeps a popular working set
//! through a scan, and stays consistent under concurrent use.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use scalekit::cache::{CacheTier, MemoryTier};

mod common;
use common::ready;

#[test]
fn a_popular_working_set_survives_a_one_off_scan() {
    let tier = MemoryTier::<u64, u64>::with_capacity(100).unwrap();
    let read = |k: u64| {
        if ready(tier.get(&k)).unwrap().is_none() {
            ready(tier.insert(k, k, None)).unwrap();
        }
    };
    for _ in 0..20 {
        for k in 0..50 {
            read(k);
        }
    }
    // 10,000 keys read once each: an LRU cache would now hold none of the
    // popular keys.
    for k in 1_000..11_000 {
        read(k);
    }
    let kept = (0..50)
        .filter(|k| ready(tier.get(k)).unwrap().is_some())
        .count();
    assert!(
        kept >= 45,
        "popular keys kept through the scan: {kept} of 50"
    );
    assert!(ready(tier.entry_count()).unwrap() <= 100);
}

#[test]
fn the_bound_holds_by_count_and_by_weight() {
    let tier = MemoryTier::<u64, u64>::with_capacity(1_000).unwrap();
    for k in 0..50_000 {
        ready(tier.insert(k, k, None)).unwrap();
    }
    assert!(ready(tier.entry_count()).unwrap() <= 1_000);
    assert_eq!(
        tier.evictions(),
        50_000 - ready(tier.entry_count()).unwrap()
    );

    let weighed = MemoryTier::<u64, Vec<u8>>::builder()
        .max_weight(10_000, |_, v: &Vec<u8>| v.len() as u64)
        .build()
        .unwrap();
    for round in 0..20u64 {
        for k in 0..100 {
            // Values grow and shrink under the same keys.
            let len = 10 + ((k * 37 + round * 11) % 500) as usize;
            ready(weighed.insert(k, vec![0; len], None)).unwrap();
        }
    }
    let total: usize = (0..100)
        .filter_map(|k| ready(weighed.get(&k)).unwrap())
        .map(|v| v.len())
        .sum();
    assert!(total <= 10_000, "weight held: {total}");
    assert!(total > 0);
}

#[test]
fn an_entry_heavier_than_the_bound_is_refused_and_drops_the_old_value() {
    let tier = MemoryTier::<u64, Vec<u8>>::builder()
        .max_weight(100, |_, v: &Vec<u8>| v.len() as u64)
        .build()
        .unwrap();
    ready(tier.insert(1, vec![1; 10], None)).unwrap();
    ready(tier.insert(1, vec![2; 101], None)).unwrap();
    assert_eq!(
        ready(tier.get(&1)).unwrap(),
        None,
        "neither the new value (too heavy) nor the old one (outdated)"
    );
}

#[test]
fn remove_and_clear_forget_entries_and_the_tier_keeps_working() {
    let tier = MemoryTier::<String, u64>::with_capacity(10_000).unwrap();
    for k in 0..100u64 {
        ready(tier.insert(k.to_string(), k, None)).unwrap();
    }
    ready(tier.remove(&"7".to_string())).unwrap();
    assert_eq!(ready(tier.get(&"7".to_string())).unwrap(), None);
    assert_eq!(ready(tier.get(&"8".to_string())).unwrap(), Some(8));
    assert_eq!(ready(tier.entry_count()).unwrap(), 99);
    ready(tier.clear()).unwrap();
    assert_eq!(ready(tier.entry_count()).unwrap(), 0);
    ready(tier.insert("a".into(), 1, None)).unwrap();
    assert_eq!(ready(tier.get(&"a".to_string())).unwrap(), Some(1));
    let debug = format!("{tier:?}");
    assert!(debug.contains("capacity: 10000"), "{debug}");
}

#[test]
fn concurrent_readers_and_writers_see_only_values_written_for_their_key() {
    // Large enough to have several shards.
    let tier = Arc::new(MemoryTier::<u64, (u64, u64)>::with_capacity(20_000).unwrap());
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let tier = Arc::clone(&tier);
            scope.spawn(move || {
                let mut x = t + 1;
                for i in 0..50_000u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = x % 40_000;
                    match i % 5 {
                        0 | 1 => ready(tier.insert(k, (k, i), None)).unwrap(),
                        2 => ready(tier.remove(&k)).unwrap(),
                        _ => {
                            if let Some((key, _)) = ready(tier.get(&k)).unwrap() {
                                assert_eq!(key, k, "a value written for another key");
                            }
                        }
                    }
                }
            });
        }
    });
    assert!(ready(tier.entry_count()).unwrap() <= 20_000);
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u32),
    Remove(u8),
    Get(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k % 64, v)),
        1 => any::<u8>().prop_map(|k| Op::Remove(k % 64)),
        3 => any::<u8>().prop_map(|k| Op::Get(k % 64)),
    ]
}

proptest! {
    /// With room for every key the tier is a map; with less, a read
    /// returns the key's latest value or nothing, never an older one.
    #[test]
    fn reads_return_the_latest_value_or_nothing(
        ops in proptest::collection::vec(op(), 1..400),
        capacity in prop_oneof![Just(1_000u64), 1u64..32],
    ) {
        let tier = MemoryTier::<u8, u32>::with_capacity(capacity).unwrap();
        let mut model = HashMap::new();
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    ready(tier.insert(k, v, None)).unwrap();
                    model.insert(k, v);
                }
                Op::Remove(k) => {
                    ready(tier.remove(&k)).unwrap();
                    model.remove(&k);
                }
                Op::Get(k) => {
                    let got = ready(tier.get(&k)).unwrap();
                    if capacity >= 64 {
                        prop_assert_eq!(got, model.get(&k).copied());
                    } else if let Some(v) = got {
                        prop_assert_eq!(Some(v), model.get(&k).copied());
                    }
                }
            }
            prop_assert!(ready(tier.entry_count()).unwrap() <= capacity);
        }
    }
}
