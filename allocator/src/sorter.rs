//! Fairness, apart from allocation: a [`Sorter`] gives each client (a role
//! or a framework) an order key; the allocator serves the lowest key first.

use crate::quantities::Quantities;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::BTreeSet;

/// Orders clients. Keys are recomputed whenever a client's allocation
/// changes, and for every client at the start of each allocation run.
pub trait Sorter: Send + std::fmt::Debug {
    /// The order key of a client holding `allocated` of a cluster holding
    /// `total`, with `weight` (> 0). Lower is served first.
    fn key(&mut self, allocated: &Quantities, total: &Quantities, weight: f64) -> f64;
}

/// Weighted Dominant Resource Fairness: a client's key is its dominant
/// share (its largest fraction of any one resource kind) divided by its
/// weight. Kinds in `excluded` (e.g. `gpus`) do not count towards shares,
/// so a scarce kind does not dominate everyone's share.
#[derive(Debug, Clone, Default)]
pub struct Drf {
    pub excluded: BTreeSet<String>,
}

impl Drf {
    pub fn dominant_share(&self, allocated: &Quantities, total: &Quantities) -> f64 {
        allocated
            .iter()
            .filter(|(k, _)| !self.excluded.contains(*k))
            .filter_map(|(k, v)| match total.get(k) {
                0 => None,
                t => Some(v as f64 / t as f64),
            })
            .fold(0.0, f64::max)
    }
}

impl Sorter for Drf {
    fn key(&mut self, allocated: &Quantities, total: &Quantities, weight: f64) -> f64 {
        self.dominant_share(allocated, total) / weight
    }
}

/// A weighted random order: each key is an exponential draw scaled by
/// 1/weight, so a client of weight 2 comes first twice as often as one of
/// weight 1. Seeded, so runs are reproducible.
#[derive(Debug, Clone)]
pub struct Random {
    rng: ChaCha8Rng,
}

impl Random {
    pub fn new(seed: u64) -> Random {
        Random {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Sorter for Random {
    fn key(&mut self, _allocated: &Quantities, _total: &Quantities, weight: f64) -> f64 {
        // (0, 1]: never 0, so ln is finite.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        -(1.0 - u).ln() / weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::Resources;

    fn q(s: &str) -> Quantities {
        Quantities::of(&s.parse::<Resources>().expect("resources"))
    }

    #[test]
    fn drf_orders_by_dominant_share_over_weight() {
        let total = q("cpus:100;mem:1000");
        let mut drf = Drf::default();
        // shares: a = .05 (cpus), b = .06 (mem)
        let a = drf.key(&q("cpus:5;mem:10"), &total, 1.0);
        let b = drf.key(&q("cpus:1;mem:60"), &total, 1.0);
        assert!((a - 0.05).abs() < 1e-12 && (b - 0.06).abs() < 1e-12);
        assert!(a < b);
        // weight 2 halves b's key: b = .03 now comes first.
        assert!(drf.key(&q("cpus:1;mem:60"), &total, 2.0) < a);
    }

    #[test]
    fn excluded_kinds_do_not_count() {
        let total = q("cpus:10;gpus:1");
        let drf = Drf {
            excluded: ["gpus".to_string()].into(),
        };
        assert_eq!(drf.dominant_share(&q("cpus:1;gpus:1"), &total), 0.1);
    }

    #[test]
    fn random_order_follows_weights() {
        let mut r = Random::new(42);
        let none = Quantities::default();
        let heavy_first = (0..10_000)
            .filter(|_| r.key(&none, &none, 2.0) < r.key(&none, &none, 1.0))
            .count();
        // P(heavy first) = 2/3.
        assert!((6_300..7_000).contains(&heavy_first), "{heavy_first}");
    }
}
