//! One batch of the Monte-Carlo estimate of π: input `SEED SAMPLES`,
//! output how many of SAMPLES random points of the unit square fell inside
//! the quarter circle, as decimal text.

/// Points inside the quarter circle out of `samples`, from `seed`
/// (xorshift64*, so every batch is reproducible).
pub fn hits(seed: u64, samples: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        // The top 53 bits as a float in [0, 1).
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..samples)
        .filter(|_| {
            let (a, b) = (next(), next());
            a * a + b * b <= 1.0
        })
        .count() as u64
}

/// Parses `SEED SAMPLES`.
pub fn parse(input: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(seed)), Some(Ok(samples)), None) if samples <= 1 << 32 => Ok((seed, samples)),
        _ => Err(format!(
            "expected `SEED SAMPLES` (samples ≤ 2^32), got {text:?}"
        )),
    }
}

struct Pi;

impl stoa_guest::Task for Pi {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let (seed, samples) = parse(&input)?;
        Ok(hits(seed, samples).to_string().into_bytes())
    }
}

stoa_guest::export_task!(Pi);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_estimate_pi_and_bad_input_is_refused() {
        let total: u64 = (0..20).map(|seed| hits(seed, 50_000)).sum();
        let pi = 4.0 * total as f64 / 1_000_000.0;
        assert!((pi - std::f64::consts::PI).abs() < 0.01, "{pi}");
        assert_eq!(hits(7, 1000), hits(7, 1000));
        assert_eq!(parse(b"3 100"), Ok((3, 100)));
        assert!(parse(b"3").is_err());
        assert!(parse(b"3 x").is_err());
    }
}
