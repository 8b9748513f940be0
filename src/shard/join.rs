//! Routes keys to shards and runs one call per shard concurrently (with
//! [`join_all`](crate::join::join_all)), collecting the answers in order.

pub(super) use crate::join::join_all;

/// Per shard, the indices of the keys `shard_of` routes to it.
pub(super) fn by_shard<K>(
    keys: &[K],
    shards: usize,
    shard_of: impl Fn(&K) -> crate::Result<usize>,
) -> crate::Result<Vec<Vec<usize>>> {
    let mut by_shard = vec![Vec::new(); shards];
    for (index, key) in keys.iter().enumerate() {
        by_shard[shard_of(key)?].push(index);
    }
    Ok(by_shard)
}

/// One `get_many` per shard that has keys, all at once, each within
/// `timeout` if one is given: per shard, its index, the indices of its
/// keys, and what it answered. `store(shard, keys)` hands out the shard
/// (and may count the call).
pub(super) async fn get_many_by_shard<'a, S: crate::Store>(
    keys: &'a [S::Key],
    by_shard: &'a [Vec<usize>],
    store: impl Fn(usize, u64) -> &'a S,
    timeout: Option<std::time::Duration>,
) -> Vec<(usize, &'a [usize], crate::Result<Vec<Option<S::Value>>>)> {
    let store = &store;
    let calls = by_shard
        .iter()
        .enumerate()
        .filter(|(_, indices)| !indices.is_empty())
        .map(|(shard, indices)| async move {
            let shard_keys: Vec<S::Key> = indices.iter().map(|&i| keys[i].clone()).collect();
            let call = store(shard, indices.len() as u64).get_many(&shard_keys);
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                    Err(crate::ErrorKind::Timeout {
                        operation: "shard call",
                        after: limit,
                    }
                    .into())
                }),
                None => call.await,
            };
            (shard, indices.as_slice(), result)
        })
        .collect();
    join_all(calls).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::join_all;

    #[tokio::test(start_paused = true)]
    async fn futures_run_concurrently_and_outputs_keep_their_order() {
        let start = tokio::time::Instant::now();
        let outputs = join_all(
            [30u64, 10, 20]
                .into_iter()
                .map(|ms| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    ms
                })
                .collect(),
        )
        .await;
        assert_eq!(outputs, vec![30, 10, 20]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(30),
            "not one after another"
        );
    }
}
