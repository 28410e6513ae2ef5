//! Seeded fault plans: what breaks in a simulated run, and when.
//!
//! A plan is drawn from the run's seed before the run starts, so a failing
//! seed replays the same faults at the same simulated times.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use stoa_proto::Time;

/// The kinds of fault the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The link between an agent and the master is cut for a window.
    AgentPartition,
    /// The link between a scheduler and the master is cut for a window.
    SchedulerPartition,
    /// An agent process dies and restarts; its executors keep running.
    AgentRestart,
    /// An agent process dies with its executors, and restarts.
    AgentCrash,
    /// One framework's executor on one agent dies.
    ExecutorCrash,
    /// The master dies and restarts from its registry.
    MasterRestart,
    /// A scheduler dies and subscribes again, within its failover timeout.
    SchedulerFailover,
    /// A scheduler dies and stays away past its failover timeout.
    SchedulerGone,
    /// A scheduler skips or delays acknowledgements for a window.
    SlowAcks,
    /// An agent loses its artifacts and cannot fetch them for a window.
    FetchFailure,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::AgentPartition,
        FaultKind::SchedulerPartition,
        FaultKind::AgentRestart,
        FaultKind::AgentCrash,
        FaultKind::ExecutorCrash,
        FaultKind::MasterRestart,
        FaultKind::SchedulerFailover,
        FaultKind::SchedulerGone,
        FaultKind::SlowAcks,
        FaultKind::FetchFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::AgentPartition => "agent-partition",
            FaultKind::SchedulerPartition => "scheduler-partition",
            FaultKind::AgentRestart => "agent-restart",
            FaultKind::AgentCrash => "agent-crash",
            FaultKind::ExecutorCrash => "executor-crash",
            FaultKind::MasterRestart => "master-restart",
            FaultKind::SchedulerFailover => "scheduler-failover",
            FaultKind::SchedulerGone => "scheduler-gone",
            FaultKind::SlowAcks => "slow-acks",
            FaultKind::FetchFailure => "fetch-failure",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A fault kind named on a command line that Stoa does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault kind {0:?}; known: all, none, {known}", known = FaultKind::ALL.map(FaultKind::name).join(", "))]
pub struct UnknownFault(String);

impl FromStr for FaultKind {
    type Err = UnknownFault;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownFault(s.to_string()))
    }
}

/// Parses `all`, `none` or a comma-separated list of kinds.
pub fn parse_kinds(s: &str) -> Result<Vec<FaultKind>, UnknownFault> {
    match s.trim() {
        "all" => Ok(FaultKind::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|k| k.trim().parse()).collect(),
    }
}

/// One fault: what, to whom, when and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at: Time,
    pub kind: FaultKind,
    /// The agent or framework it hits (unused for the master).
    pub target: usize,
    /// How long the partition, the outage or the window lasts.
    pub lasts: Duration,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} target {} for {:.1}s",
            self.at,
            self.kind,
            self.target,
            self.lasts.as_secs_f64()
        )
    }
}

/// Timings the plan draws its windows against.
#[derive(Debug, Clone, Copy)]
pub struct PlanLimits {
    /// Faults start within this much simulated time.
    pub horizon: Duration,
    pub agents: usize,
    pub frameworks: usize,
    /// The master's agent removal timeout: some partitions outlast it.
    pub agent_removal_timeout: Duration,
    /// The frameworks' failover timeout: `SchedulerGone` outlasts it,
    /// `SchedulerFailover` stays within it.
    pub failover_timeout: Duration,
}

/// Draws up to `max_faults` faults of the given kinds from `seed`.
pub fn plan(seed: u64, kinds: &[FaultKind], max_faults: usize, limits: PlanLimits) -> Vec<Fault> {
    if kinds.is_empty() || max_faults == 0 {
        return Vec::new();
    }
    // A stream of its own, so the plan does not shift the run's timings.
    let mut draw = Draw(ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_fa17));
    let removal = limits.agent_removal_timeout.as_millis() as u64;
    let failover = limits.failover_timeout.as_millis() as u64;
    let (agents, frameworks) = (limits.agents as u64, limits.frameworks as u64);
    let count = 1 + draw.below(max_faults as u64) as usize;
    let mut faults: Vec<Fault> = (0..count)
        .map(|_| {
            let kind = kinds[draw.below(kinds.len() as u64) as usize];
            let at = Time::ZERO
                + Duration::from_millis(500 + draw.below(limits.horizon.as_millis() as u64));
            let (target, lasts) = match kind {
                // Most partitions heal before removal; some outlast it.
                FaultKind::AgentPartition => {
                    let target = draw.below(agents);
                    let lasts = if draw.below(4) == 0 {
                        draw.ms(removal + 2_000, removal + 10_000)
                    } else {
                        draw.ms(500, removal / 2)
                    };
                    (target, lasts)
                }
                FaultKind::SchedulerPartition => {
                    (draw.below(frameworks), draw.ms(500, failover / 2))
                }
                FaultKind::AgentRestart | FaultKind::AgentCrash => {
                    (draw.below(agents), draw.ms(200, 15_000))
                }
                FaultKind::ExecutorCrash => (
                    draw.below(agents) * frameworks + draw.below(frameworks),
                    Duration::ZERO,
                ),
                FaultKind::MasterRestart => (0, draw.ms(200, 8_000)),
                FaultKind::SchedulerFailover => {
                    (draw.below(frameworks), draw.ms(200, failover / 2))
                }
                FaultKind::SchedulerGone => (
                    draw.below(frameworks),
                    draw.ms(failover + 2_000, failover + 8_000),
                ),
                FaultKind::SlowAcks => (draw.below(frameworks), draw.ms(1_000, 20_000)),
                FaultKind::FetchFailure => (draw.below(agents), draw.ms(1_000, 10_000)),
            };
            Fault {
                at,
                kind,
                target: target as usize,
                lasts,
            }
        })
        .collect();
    faults.sort_by_key(|f| f.at);
    faults
}

/// Draws from the plan's own random stream.
struct Draw(ChaCha8Rng);

impl Draw {
    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0.next_u64() % n.max(1)
    }

    /// A duration uniform in `lo..=hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PlanLimits {
        PlanLimits {
            horizon: Duration::from_secs(30),
            agents: 3,
            frameworks: 2,
            agent_removal_timeout: Duration::from_secs(20),
            failover_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_seed_gives_one_plan_and_every_kind_turns_up() {
        assert_eq!(
            plan(9, &FaultKind::ALL, 4, limits()),
            plan(9, &FaultKind::ALL, 4, limits())
        );
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..200 {
            for f in plan(seed, &FaultKind::ALL, 4, limits()) {
                assert!(f.at <= Time::ZERO + Duration::from_millis(30_500));
                seen.insert(f.kind);
            }
        }
        assert_eq!(seen.len(), FaultKind::ALL.len());
    }

    #[test]
    fn kinds_parse_from_a_list_and_unknown_ones_are_named() {
        assert_eq!(parse_kinds("all").expect("all").len(), FaultKind::ALL.len());
        assert_eq!(parse_kinds("none").expect("none"), vec![]);
        assert_eq!(
            parse_kinds("master-restart, slow-acks").expect("a list"),
            vec![FaultKind::MasterRestart, FaultKind::SlowAcks]
        );
        let e = parse_kinds("master-crash")
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("master-crash") && e.contains("master-restart"),
            "{e}"
        );
    }
}
