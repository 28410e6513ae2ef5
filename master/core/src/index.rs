//! Secondary indexes of the master's books: a key to the set of entries
//! filed under it, with empty sets dropped so that an index holds only
//! keys that have entries.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

pub(crate) fn file<K: Hash + Eq, V: Ord>(index: &mut HashMap<K, BTreeSet<V>>, k: K, v: V) {
    index.entry(k).or_default().insert(v);
}

pub(crate) fn unfile<K: Hash + Eq, V: Ord>(index: &mut HashMap<K, BTreeSet<V>>, k: &K, v: &V) {
    if let Some(set) = index.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            index.remove(k);
        }
    }
}
