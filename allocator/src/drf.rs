//! Dominant Resource Fairness (Ghodsi et al., NSDI 2011): a framework's share
//! is the largest fraction it holds of any one resource kind.

use stoa_proto::Resources;

/// The largest `allocated[kind] / total[kind]` over every kind the cluster
/// has. Kinds the cluster lacks are ignored (their share is undefined).
pub fn dominant_share(allocated: &Resources, total: &Resources) -> f64 {
    let totals: Vec<(&str, u64)> = total.quantities().collect();
    allocated
        .quantities()
        .filter_map(|(kind, n)| {
            totals
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, t)| n as f64 / *t as f64)
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_the_largest_fraction() {
        let total: Resources = "cpus:10;mem:1000".parse().expect("r");
        assert_eq!(
            dominant_share(&"cpus:1;mem:500".parse().expect("r"), &total),
            0.5
        );
        assert_eq!(
            dominant_share(&"cpus:5;mem:100".parse().expect("r"), &total),
            0.5
        );
        assert_eq!(dominant_share(&"gpus:1".parse().expect("r"), &total), 0.0);
    }
}
