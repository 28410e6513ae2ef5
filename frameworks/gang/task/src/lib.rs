//! One rank of an MPI-style job: input `RANK SIZE N`, output the rank's
//! share of the sum 1 + 2 + … + N (every SIZE-th term from RANK + 1), so
//! the ranks' outputs add up to N(N+1)/2 only if every rank ran.

pub fn partial_sum(rank: u64, size: u64, n: u64) -> u64 {
    (rank + 1..=n).step_by(size.max(1) as usize).sum()
}

fn parse(input: &[u8]) -> Result<(u64, u64, u64), String> {
    let text = std::str::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
    let v: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected `RANK SIZE N`, got {text:?}"))?;
    match v[..] {
        [rank, size, n] if rank < size && n <= 1 << 40 => Ok((rank, size, n)),
        _ => Err(format!(
            "expected `RANK SIZE N` with RANK < SIZE, got {text:?}"
        )),
    }
}

struct Rank;

impl stoa_guest::Task for Rank {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let (rank, size, n) = parse(&input)?;
        println!("rank {rank} of {size} summing to {n}");
        Ok(partial_sum(rank, size, n).to_string().into_bytes())
    }
}

stoa_guest::export_task!(Rank);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranks_add_up_to_the_whole() {
        let total: u64 = (0..4).map(|r| partial_sum(r, 4, 1000)).sum();
        assert_eq!(total, 1000 * 1001 / 2);
        assert!(parse(b"4 4 10").is_err());
        assert_eq!(parse(b"1 4 10"), Ok((1, 4, 10)));
    }
}
