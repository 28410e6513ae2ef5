//! Runs the simulator at cluster scale and prints how long it took:
//! `cargo run --release -p stoa-sim --example scale -- AGENTS FRAMEWORKS TASKS_PER_FRAMEWORK`.

use std::time::{Duration, Instant};
use stoa_sim::{Sim, SimConfig};

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let config = SimConfig {
        seed: 1,
        agents: arg(1, 50_000),
        frameworks: arg(2, 100),
        tasks_per_framework: arg(3, 1_000),
        // The books are checked by the fault sweep; walking 50,000 agents
        // after every step would measure the check, not the cores.
        check_books: false,
        ..SimConfig::default()
    };
    let (agents, frameworks, tasks) =
        (config.agents, config.frameworks, config.tasks_per_framework);
    let started = Instant::now();
    let mut sim = Sim::new(config);
    let outcome = sim.run(Duration::from_secs(600));
    let finished: usize = outcome.finished.iter().sum();
    println!(
        "{agents} agents, {frameworks} frameworks: {finished} of {} tasks finished, {} failed, {} simulated, {:.1} s real, {} steps",
        frameworks * tasks,
        outcome.failed.len(),
        outcome.end,
        started.elapsed().as_secs_f64(),
        outcome.steps
    );
    if finished != frameworks * tasks {
        std::process::exit(1);
    }
}
