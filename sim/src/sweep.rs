//! Many seeds in a row: what `stoa sim` and the CI sweep run.

use crate::ledger::Violation;
use crate::{Outcome, Sim, SimConfig};
use std::time::Duration;

/// How long one seed may run in simulated time before the run counts as
/// stuck (the liveness check then names what never ended).
pub const DEFAULT_LIMIT: Duration = Duration::from_secs(600);

/// One seed that broke an invariant: enough to replay and read it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub violation: Violation,
    pub faults: Vec<String>,
    /// The last lines of the trace, the violation last.
    pub trace_tail: Vec<String>,
}

/// What a sweep found.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub seeds: u64,
    pub steps: u64,
    pub violations: u64,
    pub faults_injected: u64,
    /// Units of work that finished, over all seeds.
    pub finished: u64,
    pub failures: Vec<Failure>,
}

/// Runs one seed of `base`.
pub fn run_seed(base: &SimConfig, seed: u64, limit: Duration) -> (Outcome, Vec<String>) {
    let mut sim = Sim::new(SimConfig {
        seed,
        ..base.clone()
    });
    let outcome = sim.run(limit);
    (outcome, sim.trace())
}

/// Runs every seed in `seeds`, calling `progress` after each; keeps the
/// first `keep` failures whole.
pub fn sweep(
    base: &SimConfig,
    seeds: impl IntoIterator<Item = u64>,
    limit: Duration,
    keep: usize,
    mut progress: impl FnMut(u64, &Outcome),
) -> Summary {
    let mut summary = Summary::default();
    for seed in seeds {
        let (outcome, trace) = run_seed(base, seed, limit);
        summary.seeds += 1;
        summary.steps += outcome.steps;
        summary.faults_injected += outcome.faults.len() as u64;
        summary.finished += outcome.finished.iter().sum::<usize>() as u64;
        summary.violations += outcome.violations.len() as u64;
        if let Some(violation) = outcome.violations.first()
            && summary.failures.len() < keep
        {
            summary.failures.push(Failure {
                seed,
                violation: violation.clone(),
                faults: outcome.faults.iter().map(|f| f.to_string()).collect(),
                trace_tail: trace[trace.len().saturating_sub(40)..].to_vec(),
            });
        }
        progress(seed, &outcome);
    }
    summary
}
