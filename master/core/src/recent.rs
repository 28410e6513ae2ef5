//! A bounded memory of recent entries, oldest forgotten first: how ended
//! tasks ended (for reconciliation once they are forgotten) and where
//! tasks ran (for log reads after they end).
//!
//! Putting a key again makes it the newest; the stale place it held in
//! the order is skipped when its turn to be forgotten comes.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    max: usize,
    next: u64,
    /// Keys in the order they were put, each with the stamp it was put
    /// under.
    order: VecDeque<(u64, K)>,
    entries: HashMap<K, (u64, V)>,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    pub(crate) fn new(max: usize) -> Self {
        Recent {
            max,
            next: 0,
            order: VecDeque::new(),
            entries: HashMap::new(),
        }
    }

    pub(crate) fn put(&mut self, key: K, value: V) {
        self.next += 1;
        self.order.push_back((self.next, key.clone()));
        self.entries.insert(key, (self.next, value));
        while self.entries.len() > self.max || self.order.len() > 2 * self.max {
            let Some((stamp, old)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|(s, _)| *s == stamp) {
                self.entries.remove(&old);
            }
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Entries, newest first (a walk of the memory: operators only).
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order.iter().rev().filter_map(|(stamp, k)| {
            let (s, v) = self.entries.get(k)?;
            (s == stamp).then_some((k, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_a_key_put_again_is_new() {
        let mut r = Recent::new(2);
        r.put("a", 1);
        r.put("b", 2);
        r.put("a", 3);
        r.put("c", 4);
        assert_eq!(r.get(&"a"), Some(&3), "put again: newer than b");
        assert_eq!(r.get(&"b"), None);
        let all: Vec<_> = r.newest_first().collect();
        assert_eq!(all, [(&"c", &4), (&"a", &3)]);
        r.remove(&"a");
        assert_eq!(r.get(&"a"), None);
        assert_eq!(r.newest_first().count(), 1);
    }
}
