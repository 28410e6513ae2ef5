//! `stoa sim`: sweeps seeds of the deterministic simulator with injected
//! faults, or replays one seed with its whole trace.

use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;
use stoa_sim::SimConfig;
use stoa_sim::faults::parse_kinds;
use stoa_sim::sweep::{DEFAULT_LIMIT, run_seed, sweep};

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// How many seeds to sweep, from --first-seed up.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// The first seed of the sweep.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Replay one seed instead of sweeping.
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// With --seed: print the whole trace, every message and fault.
    #[arg(long, requires = "seed")]
    trace: bool,
    /// What may break: all, none, or a comma-separated list of
    /// agent-partition, scheduler-partition, agent-restart, agent-crash,
    /// executor-crash, master-restart, scheduler-failover, scheduler-gone,
    /// slow-acks, fetch-failure.
    #[arg(long, default_value = "all")]
    faults: String,
    /// At most this many faults per seed.
    #[arg(long, default_value_t = 4)]
    max_faults: usize,
    #[arg(long, default_value_t = 3)]
    agents: usize,
    #[arg(long, default_value_t = 2)]
    frameworks: usize,
    /// Units of work each framework runs.
    #[arg(long, default_value_t = 20)]
    tasks: usize,
    /// Simulated seconds a seed may take before it counts as stuck.
    #[arg(long, default_value_t = DEFAULT_LIMIT.as_secs())]
    limit_secs: u64,
    /// Print the summary (and failures) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SimArgs) -> anyhow::Result<()> {
    let faults = parse_kinds(&a.faults)?;
    if a.agents == 0 || a.frameworks == 0 {
        bail!("--agents and --frameworks must be at least 1");
    }
    let base = SimConfig {
        agents: a.agents,
        frameworks: a.frameworks,
        tasks_per_framework: a.tasks,
        faults,
        max_faults: a.max_faults,
        full_trace: a.trace,
        ..SimConfig::faulty(0)
    };
    let limit = Duration::from_secs(a.limit_secs);
    if let Some(seed) = a.seed {
        return replay(&base, seed, limit, &a);
    }
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(a.seeds).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let mut violations = 0;
    let summary = sweep(
        &base,
        a.first_seed..a.first_seed + a.seeds,
        limit,
        10,
        |_, o| {
            violations += o.violations.len();
            bar.set_message(format!("{violations} violations"));
            bar.inc(1);
        },
    );
    bar.finish_and_clear();
    if a.json {
        let failures: Vec<serde_json::Value> = summary
            .failures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "seed": f.seed,
                    "invariant": f.violation.invariant,
                    "at": f.violation.at.to_string(),
                    "detail": f.violation.detail,
                    "faults": f.faults,
                    "trace_tail": f.trace_tail,
                })
            })
            .collect();
        let out = serde_json::json!({
            "seeds": summary.seeds,
            "steps": summary.steps,
            "violations": summary.violations,
            "faults_injected": summary.faults_injected,
            "units_finished": summary.finished,
            "failures": failures,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for f in &summary.failures {
            println!("seed {}: {}", f.seed, f.violation);
            for fault in &f.faults {
                println!("  fault {fault}");
            }
            for line in &f.trace_tail {
                println!("  | {line}");
            }
            println!("  replay: stoa sim --seed {} --trace", f.seed);
        }
        println!(
            "seeds: {}, steps: {}, violations: {}",
            summary.seeds, summary.steps, summary.violations
        );
    }
    if summary.violations > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn replay(base: &SimConfig, seed: u64, limit: Duration, a: &SimArgs) -> anyhow::Result<()> {
    let (outcome, trace) = run_seed(base, seed, limit);
    if a.json {
        let out = serde_json::json!({
            "seed": seed,
            "steps": outcome.steps,
            "end": outcome.end.to_string(),
            "finished": outcome.finished,
            "failed": outcome.failed,
            "faults": outcome.faults.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            "violations": outcome.violations.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            "trace": trace,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for line in &trace {
            println!("{line}");
        }
        for fault in &outcome.faults {
            println!("fault {fault}");
        }
        println!(
            "seed {seed}: steps: {}, finished {:?}, violations: {}",
            outcome.steps,
            outcome.finished,
            outcome.violations.len()
        );
        for v in &outcome.violations {
            println!("violation {v}");
        }
    }
    if !outcome.violations.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
