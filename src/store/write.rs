//! One operation of a write batch.

use std::collections::HashMap;
use std::hash::Hash;

/// One operation of a [`Store::write_batch`](crate::Store::write_batch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Write<K, V> {
    /// Set `key` to `value`.
    Put(K, V),
    /// Remove `key`.
    Delete(K),
}

impl<K, V> Write<K, V> {
    /// The key this operation writes.
    pub fn key(&self) -> &K {
        match self {
            Write::Put(key, _) | Write::Delete(key) => key,
        }
    }

    /// The value a put writes; `None` for a delete.
    pub fn value(&self) -> Option<&V> {
        match self {
            Write::Put(_, value) => Some(value),
            Write::Delete(_) => None,
        }
    }

    /// Reduces a batch to one operation per key with the same effect: the
    /// last operation on each key wins. Keys keep the order of their first
    /// appearance, so a backend applying the result sees the same end state
    /// as one applying the whole batch in order.
    ///
    /// ```
    /// use scalekit::Write;
    ///
    /// let batch = vec![
    ///     Write::Put("a", 1),
    ///     Write::Put("b", 2),
    ///     Write::Delete("a"),
    ///     Write::Put("b", 3),
    /// ];
    /// assert_eq!(
    ///     Write::coalesce(batch),
    ///     vec![Write::Delete("a"), Write::Put("b", 3)]
    /// );
    /// ```
    pub fn coalesce(batch: Vec<Write<K, V>>) -> Vec<Write<K, V>>
    where
        K: Eq + Hash + Clone,
    {
        let mut slot_of: HashMap<K, usize> = HashMap::with_capacity(batch.len());
        let mut out: Vec<Write<K, V>> = Vec::with_capacity(batch.len());
        for write in batch {
            match slot_of.get(write.key()) {
                Some(&slot) => out[slot] = write,
                None => {
                    slot_of.insert(write.key().clone(), out.len());
                    out.push(write);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesce_keeps_one_op_per_key_and_the_last_wins() {
        let batch = vec![
            Write::Delete(1),
            Write::Put(2, "x"),
            Write::Put(1, "y"),
            Write::Delete(2),
            Write::Put(3, "z"),
        ];
        assert_eq!(
            Write::coalesce(batch),
            vec![Write::Put(1, "y"), Write::Delete(2), Write::Put(3, "z")]
        );
    }

    #[test]
    fn coalesce_of_an_empty_batch_is_empty() {
        assert!(Write::<u8, u8>::coalesce(Vec::new()).is_empty());
    }
}
