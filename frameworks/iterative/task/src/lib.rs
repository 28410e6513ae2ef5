//! One partition's share of one iteration of logistic regression: input
//! `PARTITION POINTS W0 W1 W2`, output `G0 G1 G2 LOSS`, the gradient of the
//! log loss and the loss summed over the partition's points.
//!
//! A partition's points are generated from its number (the same partition
//! always holds the same points), standing in for data cached on an agent:
//! two features in [-1, 1] and a label drawn from the true model
//! `w = (0.5, 2, -3)` (bias first).

pub const TRUE_WEIGHTS: [f64; 3] = [0.5, 2.0, -3.0];

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The partition's points: (features with a leading 1, label).
pub fn points(partition: u64, n: u64) -> impl Iterator<Item = ([f64; 3], f64)> {
    let mut x = partition.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(move |_| {
        let features = [1.0, uniform() * 2.0 - 1.0, uniform() * 2.0 - 1.0];
        let p = sigmoid(dot(&TRUE_WEIGHTS, &features));
        let label = if uniform() < p { 1.0 } else { 0.0 };
        (features, label)
    })
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The summed gradient and log loss of `weights` over a partition.
pub fn gradient(partition: u64, n: u64, weights: &[f64; 3]) -> ([f64; 3], f64) {
    let (mut g, mut loss) = ([0.0; 3], 0.0);
    for (x, y) in points(partition, n) {
        let p = sigmoid(dot(weights, &x)).clamp(1e-12, 1.0 - 1e-12);
        for (gi, xi) in g.iter_mut().zip(&x) {
            *gi += (p - y) * xi;
        }
        loss -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
    }
    (g, loss)
}

struct Partition;

impl stoa_guest::Task for Partition {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = String::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
        let v: Vec<&str> = text.split_whitespace().collect();
        let bad = || format!("expected `PARTITION POINTS W0 W1 W2`, got {text:?}");
        let [p, n, w0, w1, w2] = v[..] else {
            return Err(bad());
        };
        let (p, n) = (p.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if n > 10_000_000 {
            return Err("at most 10,000,000 points per partition".into());
        }
        let mut w = [0.0; 3];
        for (wi, s) in w.iter_mut().zip([w0, w1, w2]) {
            *wi = s.parse().map_err(|_| bad())?;
        }
        let (g, loss) = gradient(p, n, &w);
        Ok(format!("{} {} {} {loss}", g[0], g[1], g[2]).into_bytes())
    }
}

stoa_guest::export_task!(Partition);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descent_on_the_gradient_lowers_the_loss() {
        let mut w = [0.0; 3];
        let (_, first) = gradient(1, 2000, &w);
        for _ in 0..50 {
            let (g, _) = gradient(1, 2000, &w);
            for (wi, gi) in w.iter_mut().zip(g) {
                *wi -= 2.0 * gi / 2000.0;
            }
        }
        let (_, last) = gradient(1, 2000, &w);
        assert!(last < first * 0.8, "{first} → {last}");
        assert!(w[2] < -1.0 && w[1] > 1.0, "{w:?}");
    }
}
