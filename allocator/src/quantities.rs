//! Resource quantities summed across agents. Unlike [`Resources`], which
//! describes one agent's concrete bundle (which ports), these only count,
//! so sums over many agents stay meaningful.

use std::collections::BTreeMap;
use stoa_proto::Resources;

/// Amount per resource kind; absent kinds are zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quantities(BTreeMap<String, u64>);

impl Quantities {
    pub fn of(r: &Resources) -> Quantities {
        Quantities(r.quantities().map(|(k, v)| (k.to_string(), v)).collect())
    }

    pub fn get(&self, kind: &str) -> u64 {
        self.0.get(kind).copied().unwrap_or(0)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn add(&mut self, r: &Resources) {
        for (k, v) in r.quantities() {
            // Look up before inserting: the common case allocates nothing.
            match self.0.get_mut(k) {
                Some(e) => *e = e.saturating_add(v),
                None => {
                    self.0.insert(k.to_string(), v);
                }
            }
        }
    }

    pub fn sub(&mut self, r: &Resources) {
        for (k, v) in r.quantities() {
            if let Some(e) = self.0.get_mut(k) {
                *e = e.saturating_sub(v);
                if *e == 0 {
                    self.0.remove(k);
                }
            }
        }
    }

    /// `self - other` per kind, never below zero.
    pub fn saturating_minus(&self, other: &Quantities) -> Quantities {
        Quantities(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(other.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every kind of `self` is at least that of `other`.
    pub fn covers(&self, other: &Quantities) -> bool {
        other.iter().all(|(k, v)| self.get(k) >= v)
    }
}
