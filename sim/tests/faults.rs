//! The fault sweep: seeded runs of the real cores with every fault kind,
//! checked against the invariants after every step.

use stoa_sim::SimConfig;
use stoa_sim::sweep::{DEFAULT_LIMIT, sweep};

/// Seeds each CI run sweeps (`STOA_SIM_SEEDS` widens it by hand).
const CI_SEEDS: u64 = 200;

#[test]
fn a_sweep_with_every_fault_kind_breaks_no_invariant() {
    let seeds = std::env::var("STOA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SEEDS);
    let summary = sweep(
        &SimConfig::faulty(0),
        0..seeds,
        DEFAULT_LIMIT,
        20,
        |_, _| {},
    );
    let lines: Vec<String> = summary
        .failures
        .iter()
        .map(|f| format!("seed {}: {}", f.seed, f.violation))
        .collect();
    let report: Vec<String> = summary
        .failures
        .iter()
        .take(1)
        .map(|f| {
            format!(
                "seed {}: {}\nfaults: {:#?}\ntrace tail:\n{}",
                f.seed,
                f.violation,
                f.faults,
                f.trace_tail.join("\n")
            )
        })
        .collect();
    assert_eq!(
        summary.violations,
        0,
        "seeds: {}, steps: {}, violations: {}\n{}\n\n{}",
        summary.seeds,
        summary.steps,
        summary.violations,
        lines.join("\n"),
        report.join("\n\n")
    );
    assert!(
        summary.faults_injected >= seeds,
        "every seed injects a fault"
    );
}
