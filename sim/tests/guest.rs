//! A scheduler written with the guest SDK — the code the hello scheduler
//! component runs — driven natively on the simulator against the real
//! master and agent cores.

use std::time::Duration;
use stoa_sim::guest::{Framework, Guest};
use stoa_sim::{Sim, SimConfig};

fn hello(_framework: usize) -> Box<dyn Framework> {
    let digest = format!("sha256:{}", "ab".repeat(32));
    Box::new(Guest::new(hello_wasm_scheduler::Hello::new(digest, 25)))
}

#[test]
fn the_hello_scheduler_runs_natively_on_the_simulator() {
    let config = SimConfig {
        agents: 4,
        frameworks: 3,
        tasks_per_framework: 25,
        framework: Some(hello),
        ..SimConfig::default()
    };
    let outcome = Sim::new(config.clone()).run(Duration::from_secs(120));
    assert_eq!(outcome.finished, vec![25, 25, 25], "{:?}", outcome.failed);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    // Deterministic as the built-in scheduler is: the same seed, the same run.
    let again = Sim::new(config).run(Duration::from_secs(120));
    assert_eq!(outcome, again);
}
