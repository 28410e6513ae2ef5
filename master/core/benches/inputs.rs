//! The master core's cost per input as the cluster grows: 1k, 10k and 50k
//! agents, 1,000 frameworks, 1,000,000 tasks. An input about one task, one
//! offer or one agent must cost the same whatever the size of the rest.
//!
//! * `status update` — a running task's FINISHED, from its agent, relayed
//!   to its scheduler (resources freed, an allocation made due): first
//!   touch (1,000 updates, each on an agent no other touched, spread over
//!   the cluster) and steady (200,000, round after round over every
//!   agent).
//! * `accept` — one task launched on an outstanding offer.
//! * `agent lost` — an agent stops answering (the path of a missed
//!   heartbeat or a closed connection): its offers rescinded, its tasks
//!   UNREACHABLE. Its cost follows the agent's own tasks (1,000,000 / agents).
//!
//! Accepts and lost agents are the mean over 2,000 inputs (fewer where there are fewer
//! offers or agents to use once each), each followed by `ready` and
//! `advance` as a driver would. Run:
//! `cargo bench -p stoa-master-core --bench inputs` (`STOA_BENCH_MAX_AGENTS`
//! caps the sizes). Method and figures in docs/benchmarks.md.

// The allocator the `stoa` binary runs the master with: glibc's, after
// the set-up's millions of allocations, made each first update of an
// agent's task cost 12 µs at 50,000 agents (its frees coalescing across a
// fragmented heap), four times the cost with this one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::time::{Duration, Instant};
use stoa_master_core::{Channel, ConnId, Master, MasterConfig, Transmit};
use stoa_proto::messages::RunningTask;
use stoa_proto::{
    AgentId, AgentInfo, AgentToMaster, Artifact, Attributes, Call, Event, FrameworkId,
    FrameworkInfo, OfferId, Operation, Resources, TaskId, TaskInfo, TaskKind, TaskLimits,
    TaskState, TaskStatus, Time, UpdateId,
};

const FRAMEWORKS: usize = 1_000;
const TASKS: usize = 1_000_000;
const SAMPLES: usize = 2_000;
/// Status updates each on an agent of its own (as many as the smallest
/// cluster has agents).
const FIRST_TOUCH: usize = 1_000;
/// Status updates round after round over every agent.
const STEADY: usize = 200_000;

struct Cluster {
    master: Master,
    /// Each agent's connection and id.
    agents: Vec<(ConnId, AgentId)>,
    frameworks: Vec<(ConnId, FrameworkId)>,
    /// Outstanding offers, with the framework's connection.
    offers: Vec<(ConnId, OfferId)>,
    now: Time,
}

fn drain(m: &mut Master) -> Vec<Transmit> {
    let ready = m.ready();
    m.advance(ready)
}

fn task(id: String, r: &Resources) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new(id).expect("id"),
        name: String::new(),
        resources: r.clone(),
        kind: TaskKind::wasm(Artifact::inline(Vec::new()), Vec::new()),
        limits: TaskLimits::default(),
    }
}

fn cluster(agents: usize) -> Cluster {
    let config = MasterConfig {
        agent_timeout: Duration::from_secs(3_600),
        agent_removal_timeout: Duration::from_secs(36_000),
        ..MasterConfig::default()
    };
    let mut m = Master::new(config, "bench");
    let now = Time::ZERO;
    let mut next_conn = 1;
    let mut frameworks = Vec::new();
    for f in 0..FRAMEWORKS {
        let conn = ConnId(next_conn);
        next_conn += 1;
        m.handle_connected(now, conn, Channel::Scheduler);
        let info = FrameworkInfo::new(format!("fw{f}"), format!("role{f}").parse().expect("role"));
        m.handle_scheduler_call(now, conn, Call::Subscribe { framework: info });
        for t in drain(&mut m) {
            if let Transmit::ToScheduler(c, Event::Subscribed { framework_id, .. }) = t {
                frameworks.push((c, framework_id));
            }
        }
    }
    let each: Resources = "cpus:0.01;mem:1".parse().expect("r");
    let per_agent = TASKS / agents;
    let mut agent_list = Vec::new();
    for a in 0..agents {
        let conn = ConnId(next_conn);
        next_conn += 1;
        m.handle_connected(now, conn, Channel::Agent);
        let tasks = (0..per_agent)
            .map(|i| RunningTask {
                framework_id: frameworks[(a * per_agent + i) % FRAMEWORKS].1.clone(),
                task_id: TaskId::new(format!("t{a}-{i}")).expect("id"),
                resources: each.clone(),
                state: TaskState::Running,
            })
            .collect();
        let info = AgentInfo {
            reservations: Vec::new(),
            hostname: format!("host{a}"),
            resources: "cpus:64;mem:65536".parse().expect("r"),
            attributes: Attributes::default(),
        };
        m.handle_agent_message(
            now,
            conn,
            AgentToMaster::Register {
                info,
                agent_id: None,
                tasks,
            },
        );
        for t in drain(&mut m) {
            if let Transmit::ToAgent(c, stoa_proto::MasterToAgent::Registered { agent_id, .. }) = t
            {
                agent_list.push((c, agent_id));
            }
        }
    }
    let mut offers = Vec::new();
    if let Some(due) = m.poll_timeout() {
        m.handle_timeout(due);
    }
    for t in drain(&mut m) {
        if let Transmit::ToScheduler(c, Event::Offers { offers: batch }) = t {
            offers.extend(batch.into_iter().map(|o| (c, o.id)));
        }
    }
    Cluster {
        master: m,
        agents: agent_list,
        frameworks,
        offers,
        now,
    }
}

/// Task `n` of agent `a` finishes (update number `k`), as its agent says;
/// the master relays it and frees its resources.
fn finish(c: &mut Cluster, a: usize, n: usize, k: usize) {
    let per_agent = TASKS / c.agents.len();
    let (conn, _) = c.agents[a];
    let fw = c.frameworks[(a * per_agent + n) % FRAMEWORKS].1.clone();
    let status = TaskStatus::new(
        TaskId::new(format!("t{a}-{n}")).expect("id"),
        TaskState::Finished,
    );
    c.master.handle_agent_message(
        c.now,
        conn,
        AgentToMaster::StatusUpdate {
            framework_id: fw,
            update_id: UpdateId(k as u64 + 1),
            status,
        },
    );
    black_box(drain(&mut c.master));
}

/// Mean time per call of `op` over `n` calls.
fn mean(n: usize, mut op: impl FnMut(usize)) -> Duration {
    let n = n.max(1);
    let start = Instant::now();
    for i in 0..n {
        op(i);
    }
    start.elapsed() / n as u32
}

fn main() {
    let max = std::env::var("STOA_BENCH_MAX_AGENTS")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(usize::MAX);
    println!(
        "| agents | frameworks | tasks | status update, first touch | status update, steady | accept | agent lost (its tasks) | set-up |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let each: Resources = "cpus:0.01;mem:1".parse().expect("r");
    for agents in [1_000, 10_000, 50_000].into_iter().filter(|a| *a <= max) {
        let built = Instant::now();
        let mut c = cluster(agents);
        let setup = built.elapsed();
        let per_agent = TASKS / agents;
        let now = c.now;

        // First touch: one update per agent, the agents spread evenly over
        // the cluster, so at every size each update lands on an agent no
        // other update of the run touched (its books cold in the cache).
        let stride = c.agents.len() / FIRST_TOUCH;
        let first = mean(FIRST_TOUCH, |i| finish(&mut c, i * stride, 0, i));
        // Steady: round after round over every agent, as a busy cluster's
        // updates come; what the books cost once the cache holds what it
        // can of them.
        let steady = mean(STEADY, |i| {
            let (a, n) = (i % agents, 1 + i / agents);
            finish(&mut c, a, n, FIRST_TOUCH + i)
        });

        let offers = std::mem::take(&mut c.offers);
        // Each offer is used once: an accept of a used offer is a refusal.
        let accept = mean(SAMPLES.min(offers.len()), |i| {
            let (conn, offer) = offers[i];
            c.master.handle_scheduler_call(
                now,
                conn,
                Call::Accept {
                    offer_ids: vec![offer],
                    operations: vec![Operation::Launch {
                        tasks: vec![task(format!("new{i}"), &each)],
                    }],
                    refuse_ms: None,
                },
            );
            black_box(drain(&mut c.master));
        });

        let lost = mean(SAMPLES.min(c.agents.len()), |i| {
            let (conn, _) = c.agents[i];
            c.master.handle_disconnected(now, conn);
            black_box(drain(&mut c.master));
        });

        println!(
            "| {agents} | {FRAMEWORKS} | {TASKS} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs ({per_agent}) | {:.1} s |",
            first.as_secs_f64() * 1e6,
            steady.as_secs_f64() * 1e6,
            accept.as_secs_f64() * 1e6,
            lost.as_secs_f64() * 1e6,
            setup.as_secs_f64()
        );
    }
}
