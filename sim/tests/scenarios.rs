//! The holes a black-box run of real processes found, each as a fault
//! scenario on the simulator: a fixed fault at a fixed time, over the real
//! cores, with every invariant checked after every step. Each failed
//! before its fix.

use std::time::Duration;
use stoa_proto::Time;
use stoa_sim::faults::{Fault, FaultKind};
use stoa_sim::{Sim, SimConfig};

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

/// Runs `faults` on a cluster of tasks of 8–10 s, so that the faults land
/// while they run, for a few seeds of timing.
fn scenario(faults: Vec<Fault>) {
    scenario_with((Duration::from_secs(8), Duration::from_secs(10)), faults)
}

fn scenario_with(task_time: (Duration, Duration), faults: Vec<Fault>) {
    for seed in 0..8 {
        let config = SimConfig {
            seed,
            plan: Some(faults.clone()),
            task_time,
            tasks_per_framework: 12,
            ..SimConfig::faulty(seed)
        };
        let mut sim = Sim::new(config);
        let outcome = sim.run(Duration::from_secs(600));
        let trace = sim.trace();
        assert!(
            outcome.violations.is_empty(),
            "seed {seed}: {:?}\ntrace tail:\n{}",
            outcome.violations,
            trace[trace.len().saturating_sub(30)..].join("\n")
        );
        assert_eq!(
            outcome.finished,
            vec![12, 12],
            "seed {seed}: {:?}",
            outcome.failed
        );
    }
}

fn fault(at_ms: u64, kind: FaultKind, target: usize, lasts_ms: u64) -> Fault {
    Fault {
        at: at(at_ms),
        kind,
        target,
        lasts: Duration::from_millis(lasts_ms),
    }
}

/// The master dies 4 s into 10 s tasks and comes back 3 s later: every
/// FINISHED reaches its scheduler, none is acknowledged for it meanwhile.
#[test]
fn a_master_restart_under_running_tasks_loses_no_update() {
    scenario(vec![fault(4_000, FaultKind::MasterRestart, 0, 3_000)]);
}

/// An agent cut off for 12 s (under the removal timeout, no restart):
/// tasks that ended meanwhile are reported once, FINISHED, never LOST.
#[test]
fn an_agent_back_from_a_partition_reports_what_ended_meanwhile() {
    scenario(vec![fault(4_000, FaultKind::AgentPartition, 1, 12_000)]);
}

/// An agent process restarts for 3.5 s while its executors run on.
#[test]
fn an_agent_restart_under_the_agent_timeout_loses_nothing() {
    scenario(vec![fault(4_000, FaultKind::AgentRestart, 0, 3_500)]);
}

/// An agent cut off past the removal timeout (20 s here) with tasks that
/// would run on past it: its tasks are GONE once, stopped by the agent
/// itself first (never reported GONE while running), and run again
/// elsewhere; the agent comes back under a new id.
#[test]
fn an_agent_gone_past_the_removal_timeout_has_its_tasks_run_elsewhere() {
    scenario_with(
        (Duration::from_secs(40), Duration::from_secs(45)),
        vec![fault(4_000, FaultKind::AgentPartition, 2, 30_000)],
    );
}

/// The master restarts while a scheduler is away and an agent restarts:
/// the framework keeps its id and its tasks across all of it.
#[test]
fn restarts_of_master_scheduler_and_agent_together() {
    scenario(vec![
        fault(3_000, FaultKind::SchedulerFailover, 0, 4_000),
        fault(4_000, FaultKind::MasterRestart, 0, 2_000),
        fault(5_000, FaultKind::AgentRestart, 1, 2_000),
        fault(5_000, FaultKind::SlowAcks, 1, 10_000),
    ]);
}
