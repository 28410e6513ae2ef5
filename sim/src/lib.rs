//! A deterministic, in-process Stoa cluster: the real master core and agent
//! cores, scripted schedulers and simulated executors, joined by a
//! simulated network with seeded latency, and broken on purpose by a
//! seeded fault plan. No sockets, no threads, no clock.
//!
//! After every step the simulator checks the invariants DESIGN.md names:
//! the master's books (no resource in two offers, never more allocated on
//! an agent than it has, the allocator's books equal live tasks plus
//! offers), no task runs twice, every task ends exactly once as its
//! scheduler sees it and is not running when its scheduler hears it ended,
//! and, at the end, that every launched task was heard to end and every
//! status update was acknowledged. The same seed gives the same trace, so
//! a failing seed is a reproducible bug report.

mod describe;
pub mod faults;
pub mod guest;
pub mod ledger;
mod scheduler;
pub mod sweep;

use describe::{describe_agent_msg, describe_call, describe_event, describe_master_msg};
use faults::{Fault, FaultKind};
use ledger::{Executions, Violation};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use scheduler::BuiltIn;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use stoa_agent_core::{Action, Agent, TaskEvent};
use stoa_master_core::registry::Registry;
use stoa_master_core::{Channel, ConnId, Master, MasterConfig, Transmit};
use stoa_proto::{
    AgentInfo, AgentToMaster, Attributes, Call, Event, FrameworkId, FrameworkInfo, MasterToAgent,
    Reason, Resources, TaskId, TaskInfo, TaskKind, TaskState, Time,
};

/// What the simulation is made of.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub agents: usize,
    pub agent_resources: Resources,
    /// Each framework launches this many tasks of `task_resources`.
    pub frameworks: usize,
    pub tasks_per_framework: usize,
    pub task_resources: Resources,
    /// One-way network latency is uniform in this range.
    pub latency: (Duration, Duration),
    /// Simulated task run time is uniform in this range.
    pub task_time: (Duration, Duration),
    /// Each framework's scheduler: the built-in one when `None`, else what
    /// this makes (a guest-SDK scheduler through [`guest::Guest`]).
    pub framework: Option<fn(usize) -> Box<dyn guest::Framework>>,
    /// The master's timings.
    pub master: MasterConfig,
    /// The failover timeout every framework subscribes with.
    pub failover_timeout: Duration,
    /// What may break; nothing when empty.
    pub faults: Vec<FaultKind>,
    /// These faults instead of a plan drawn from the seed: a scenario.
    pub plan: Option<Vec<Fault>>,
    /// At most this many faults per run, all starting within the horizon.
    pub max_faults: usize,
    pub fault_horizon: Duration,
    /// How long after a connection breaks each end notices (QUIC keep-alive
    /// and idle timeout).
    pub detect: Duration,
    /// Check the master's books after every step (costs a walk over the
    /// cluster per step; off for the largest runs).
    pub check_books: bool,
    /// Keep the whole trace, not only its tail.
    pub full_trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            agents: 3,
            agent_resources: Resources::new().with_millicpus(1000).with_mem_mib(1024),
            frameworks: 2,
            tasks_per_framework: 20,
            task_resources: Resources::new().with_millicpus(250).with_mem_mib(64),
            latency: (Duration::from_micros(100), Duration::from_millis(2)),
            task_time: (Duration::from_millis(1), Duration::from_millis(50)),
            framework: None,
            master: MasterConfig::default(),
            failover_timeout: Duration::from_secs(10),
            faults: Vec::new(),
            plan: None,
            max_faults: 4,
            fault_horizon: Duration::from_secs(30),
            detect: Duration::from_secs(1),
            check_books: true,
            full_trace: false,
        }
    }
}

impl SimConfig {
    /// A run shaped for fault sweeps: tasks long enough for faults to land
    /// on them, and every fault kind.
    pub fn faulty(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            task_time: (Duration::from_millis(200), Duration::from_secs(6)),
            faults: FaultKind::ALL.to_vec(),
            master: MasterConfig {
                agent_removal_timeout: Duration::from_secs(20),
                ..MasterConfig::default()
            },
            ..SimConfig::default()
        }
    }
}

/// Who is at the far end of a connection to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Agent(usize),
    Scheduler(usize),
}

#[derive(Debug, Clone)]
enum Packet {
    AgentToMaster(ConnId, AgentToMaster),
    MasterToAgent(ConnId, MasterToAgent),
    SchedulerToMaster(ConnId, Call),
    MasterToScheduler(ConnId, Event),
}

/// Everything that happens at a time: the one queue the run walks.
#[derive(Debug, Clone)]
enum Ev {
    Packet(Packet),
    /// A simulated executor reports on a task.
    Exec(usize, FrameworkId, TaskId, TaskEvent),
    Fault(Fault),
    /// A peer tries to connect to the master.
    Connect(Peer),
    /// The master notices a connection is gone.
    MasterNotices(ConnId),
    /// A peer notices its connection is gone.
    PeerNotices(Peer, ConnId),
    MasterUp,
    /// A connection the master closed is gone at both ends.
    Closed(ConnId),
    /// A crashed agent process starts again.
    AgentUp(usize),
    /// A crashed scheduler starts again and subscribes with its id.
    SchedulerUp(usize),
    /// A scheduler's acknowledgement, held back by a slow-acks window.
    LateAck(usize, Call),
    /// A guest framework's timer.
    Timer(usize, u64),
    /// An artifact fetch of agent `.0` (in its incarnation `.1`) ends.
    Fetched(usize, u64, stoa_proto::Digest),
}

/// A framework's scheduler as the simulator runs it.
#[derive(Debug)]
struct Scheduler {
    id: Option<FrameworkId>,
    conn: Option<ConnId>,
    up: bool,
    builtin: BuiltIn,
    /// A framework driven in place of the built-in logic.
    guest: Option<Box<dyn guest::Framework>>,
    torn_down: bool,
    slow_acks_until: Time,
}

/// A task held by a simulated executor, as a restarted agent recovers it.
#[derive(Debug, Clone)]
struct Held {
    task: TaskInfo,
    last: Option<TaskEvent>,
}

#[derive(Debug)]
struct AgentSlot {
    core: Option<Agent>,
    conn: Option<ConnId>,
    info: AgentInfo,
    /// What its executors hold, surviving the agent process.
    held: BTreeMap<(FrameworkId, TaskId), Held>,
    /// Its timer in the simulator's set of agent timers.
    timer: Option<Time>,
    incarnation: u64,
    /// The id it registered under, as an agent keeps it on disk.
    known_id: Option<stoa_proto::AgentId>,
    /// Artifacts in its store (on disk: they survive its crashes).
    artifacts: BTreeSet<stoa_proto::Digest>,
    /// Until when its fetches fail.
    fetch_fails_until: Time,
    /// Task directories on its disk (they survive its crashes), until
    /// collected.
    dirs: BTreeSet<(FrameworkId, TaskId)>,
}

/// How long a simulated agent keeps a forgotten task's directory, and how
/// many at most: short and few, so runs collect some both ways.
const SANDBOX_DELAY: Duration = Duration::from_secs(10);
const SANDBOX_MAX_DIRS: usize = 40;

fn agent_core(info: AgentInfo, known_id: Option<stoa_proto::AgentId>, first_update: u64) -> Agent {
    let mut core = Agent::new(info, known_id, first_update);
    core.set_sandbox_collection(SANDBOX_DELAY, SANDBOX_MAX_DIRS);
    core
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Units of work finished with the right output, per framework.
    pub finished: Vec<usize>,
    /// Units that ended in any other way, with why.
    pub failed: Vec<String>,
    pub end: Time,
    /// Steps taken: events handled.
    pub steps: u64,
    /// Invariants broken; the run stops at the first.
    pub violations: Vec<Violation>,
    /// The faults the run injected.
    pub faults: Vec<Fault>,
}

#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    steps: u64,
    master: Option<Master>,
    master_runs: u64,
    /// What the master persisted: survives its crashes.
    registry: Registry,
    agents: Vec<AgentSlot>,
    schedulers: Vec<Scheduler>,
    conns: HashMap<ConnId, Peer>,
    /// When the last packet each way on each connection arrives.
    stream_tail: HashMap<(ConnId, bool), Time>,
    next_conn: u64,
    agent_cut_until: Vec<Time>,
    scheduler_cut_until: Vec<Time>,
    queue: BTreeMap<(Time, u64), Ev>,
    /// Agents' next timeouts, ordered, so a step does not scan every agent.
    agent_timers: BTreeSet<(Time, usize)>,
    truth: Executions,
    violations: Vec<Violation>,
    faults: Vec<Fault>,
    trace: VecDeque<String>,
}

/// How many trace lines a run keeps unless asked for all of them.
const TRACE_TAIL: usize = 400;

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let plan = config.plan.clone().unwrap_or_else(|| {
            faults::plan(
                config.seed,
                &config.faults,
                config.max_faults,
                faults::PlanLimits {
                    horizon: config.fault_horizon,
                    agents: config.agents,
                    frameworks: config.frameworks,
                    agent_removal_timeout: config.master.agent_removal_timeout,
                    failover_timeout: config.failover_timeout,
                },
            )
        });
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            now: Time::ZERO,
            seq: 0,
            steps: 0,
            master: None,
            master_runs: 0,
            registry: Registry::default(),
            agents: Vec::new(),
            schedulers: Vec::new(),
            conns: HashMap::new(),
            stream_tail: HashMap::new(),
            next_conn: 1,
            agent_cut_until: vec![Time::ZERO; config.agents],
            scheduler_cut_until: vec![Time::ZERO; config.frameworks],
            queue: BTreeMap::new(),
            agent_timers: BTreeSet::new(),
            truth: Executions::default(),
            violations: Vec::new(),
            faults: plan.clone(),
            trace: VecDeque::new(),
            config,
        };
        sim.master_up();
        for i in 0..sim.config.agents {
            let info = AgentInfo {
                reservations: Vec::new(),
                hostname: format!("host-{i}"),
                resources: sim.config.agent_resources.clone(),
                attributes: Attributes::default(),
            };
            sim.agents.push(AgentSlot {
                core: Some(agent_core(info.clone(), None, 0)),
                conn: None,
                info,
                held: BTreeMap::new(),
                timer: None,
                incarnation: 0,
                known_id: None,
                artifacts: BTreeSet::new(),
                fetch_fails_until: Time::ZERO,
                dirs: BTreeSet::new(),
            });
            sim.connect(Peer::Agent(i));
        }
        for f in 0..sim.config.frameworks {
            sim.schedulers.push(Scheduler {
                id: None,
                conn: None,
                up: true,
                builtin: BuiltIn::new(sim.config.tasks_per_framework),
                guest: sim.config.framework.map(|make| make(f)),
                torn_down: false,
                slow_acks_until: Time::ZERO,
            });
            sim.connect(Peer::Scheduler(f));
        }
        for fault in plan {
            sim.at(fault.at, Ev::Fault(fault));
        }
        sim
    }

    /// The trace kept so far (its last lines unless `full_trace`).
    pub fn trace(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    fn uniform(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 {
            0
        } else {
            self.rng.next_u64() % (span + 1)
        })
    }

    fn at(&mut self, when: Time, ev: Ev) {
        self.seq += 1;
        self.queue.insert((when, self.seq), ev);
    }

    fn after(&mut self, delay: Duration, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    /// Puts `packet` on the network. A connection is one ordered stream
    /// each way (as a QUIC stream is): a packet never overtakes an earlier
    /// one in the same direction.
    fn send(&mut self, packet: Packet) {
        let delay = self.uniform(self.config.latency);
        let (conn, to_master) = match &packet {
            Packet::AgentToMaster(c, _) | Packet::SchedulerToMaster(c, _) => (*c, true),
            Packet::MasterToAgent(c, _) | Packet::MasterToScheduler(c, _) => (*c, false),
        };
        let last = self
            .stream_tail
            .entry((conn, to_master))
            .or_insert(Time::ZERO);
        let at = (self.now + delay).max(*last);
        *last = at;
        self.at(at, Ev::Packet(packet));
    }

    fn log(&mut self, line: String) {
        self.trace.push_back(format!("{} {line}", self.now));
        if !self.config.full_trace && self.trace.len() > TRACE_TAIL {
            self.trace.pop_front();
        }
    }

    fn violate(&mut self, v: Violation) {
        self.log(format!("VIOLATION {}: {}", v.invariant, v.detail));
        self.violations.push(v);
    }

    /// Runs until every unit of work is done (then a quiet while more, for
    /// the last acknowledgements) or `limit` of simulated time passed, or an
    /// invariant breaks.
    pub fn run(&mut self, limit: Duration) -> Outcome {
        let end = Time::ZERO + limit;
        // After the last fault ends the cluster gets a minute to converge
        // (reconnections, removals, redeliveries) before the final checks;
        // a run without faults only waits for its last acknowledgements.
        let faults_over = self
            .faults
            .iter()
            .map(|f| f.at + f.lasts + Duration::from_secs(60))
            .max()
            .unwrap_or(Time::ZERO);
        let mut settle_until: Option<Time> = None;
        loop {
            if self.violations.is_empty() && settle_until.is_none() && self.done() {
                // Redeliveries and acknowledgements still in flight finish
                // within a few retry rounds.
                settle_until = Some(self.now.max(faults_over.min(end)) + Duration::from_secs(5));
            }
            let next = [
                self.queue.keys().next().map(|k| k.0),
                self.master.as_ref().and_then(Master::poll_timeout),
                self.agent_timers.first().map(|(t, _)| *t),
            ]
            .into_iter()
            .flatten()
            .min();
            let stop = settle_until.map_or(end, |s| s.min(end));
            let Some(next) = next.filter(|t| *t <= stop) else {
                break;
            };
            if !self.violations.is_empty() {
                break;
            }
            self.now = self.now.max(next);
            self.step();
        }
        if self.violations.is_empty() {
            self.final_checks();
        }
        Outcome {
            finished: self
                .schedulers
                .iter()
                .map(|s| s.builtin.finished.len())
                .collect(),
            failed: self
                .schedulers
                .iter()
                .flat_map(|s| {
                    s.builtin
                        .failed
                        .iter()
                        .map(|(n, why)| format!("unit {n}: {why}"))
                })
                .collect(),
            end: self.now,
            steps: self.steps,
            violations: self.violations.clone(),
            faults: self.faults.clone(),
        }
    }

    fn done(&self) -> bool {
        self.schedulers
            .iter()
            .all(|s| s.torn_down || s.builtin.units_done() == self.config.tasks_per_framework)
    }

    /// Liveness, once the run is over: every task its scheduler launched
    /// was heard to end, nothing still runs, nothing waits for an
    /// acknowledgement.
    fn final_checks(&mut self) {
        let now = self.now;
        if self.config.framework.is_some() {
            return;
        }
        for f in 0..self.schedulers.len() {
            let s = &self.schedulers[f];
            if s.torn_down {
                continue;
            }
            if !s.builtin.told.open.is_empty()
                || s.builtin.units_done() < self.config.tasks_per_framework
            {
                let open: Vec<String> = s.builtin.told.open.iter().map(|t| t.to_string()).collect();
                let detail = format!(
                    "fw-{f}: {} of {} units done; never heard to end: {open:?}",
                    s.builtin.units_done(),
                    self.config.tasks_per_framework
                );
                self.violate(Violation {
                    at: now,
                    invariant: "every launched task ends",
                    detail,
                });
                return;
            }
        }
        for i in 0..self.agents.len() {
            let Some(core) = &self.agents[i].core else {
                continue;
            };
            let (active, pending) = (core.active_tasks(), core.pending_updates());
            let running = self.agents[i]
                .held
                .iter()
                .filter(|(_, h)| !h.last.as_ref().is_some_and(TaskEvent::is_terminal))
                .map(|((f, t), _)| format!("{f}/{t}"))
                .collect::<Vec<_>>();
            if active > 0 || pending > 0 || !running.is_empty() {
                self.violate(Violation {
                    at: now,
                    invariant: "updates are redelivered until acknowledged",
                    detail: format!(
                        "agent-{i} at the end: {active} tasks active, {pending} updates unacknowledged, executors running {running:?}"
                    ),
                });
                return;
            }
        }
    }

    /// Handles everything due at `self.now`, then checks the books.
    fn step(&mut self) {
        let now = self.now;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ev = entry.remove();
            self.steps += 1;
            self.handle(ev);
        }
        if let Some(m) = self.master.as_mut()
            && m.poll_timeout().is_some_and(|t| t <= now)
        {
            m.handle_timeout(now);
            self.drain_master();
        }
        while let Some(&(t, i)) = self.agent_timers.first() {
            if t > now {
                break;
            }
            self.agent_timers.remove(&(t, i));
            self.agents[i].timer = None;
            if let Some(core) = self.agents[i].core.as_mut() {
                core.handle_timeout(now);
            }
            self.drain_agent(i);
        }
        if self.config.check_books
            && let Some(m) = &self.master
            && let Err(detail) = m.check_books()
        {
            self.violate(Violation {
                at: now,
                invariant: "the master's books balance",
                detail,
            });
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Packet(p) => self.deliver(p),
            Ev::Exec(i, fw, task, event) => self.executor_reports(i, fw, task, event),
            Ev::Fault(fault) => self.inject(fault),
            Ev::Connect(peer) => self.connect(peer),
            Ev::MasterNotices(conn) => {
                if let Some(m) = self.master.as_mut() {
                    m.handle_disconnected(now, conn);
                    self.drain_master();
                }
            }
            Ev::PeerNotices(peer, conn) => self.peer_notices(peer, conn),
            Ev::Closed(conn) => {
                if let Some(peer) = self.conns.remove(&conn) {
                    self.peer_notices(peer, conn);
                }
            }
            Ev::MasterUp => {
                self.log("master starts again from its registry".into());
                self.master_up();
            }
            Ev::AgentUp(i) => self.agent_up(i),
            Ev::SchedulerUp(f) => {
                self.log(format!("fw-{f} scheduler starts again"));
                self.schedulers[f].up = true;
                self.connect(Peer::Scheduler(f));
            }
            Ev::LateAck(f, call) => {
                if let Some(conn) = self.schedulers[f].conn {
                    self.send(Packet::SchedulerToMaster(conn, call));
                }
            }
            Ev::Fetched(i, incarnation, digest) => {
                let slot = &mut self.agents[i];
                // A fetch dies with the agent process that started it.
                if slot.incarnation != incarnation || slot.core.is_none() {
                    return;
                }
                let result = if slot.fetch_fails_until > now {
                    Err(format!(
                        "cannot fetch {digest}: the master's store is out of reach"
                    ))
                } else {
                    slot.artifacts.insert(digest);
                    Ok(())
                };
                self.log(format!("agent-{i} fetched {digest}: {result:?}"));
                if let Some(core) = self.agents[i].core.as_mut() {
                    core.handle_fetched(now, digest, result);
                }
                self.drain_agent(i);
            }
            Ev::Timer(f, id) => {
                if let Some(mut g) = self.schedulers[f].guest.take() {
                    let reaction = g.timer(id);
                    self.schedulers[f].guest = Some(g);
                    self.apply(f, reaction);
                }
            }
        }
    }

    // ---- the master ----------------------------------------------------

    fn master_up(&mut self) {
        self.master_runs += 1;
        let mut master = Master::new(
            self.config.master.clone(),
            &format!("sim{}", self.master_runs),
        );
        master.restore(self.now, self.registry.clone());
        self.master = Some(master);
        self.drain_master();
    }

    fn drain_master(&mut self) {
        let Some(master) = self.master.as_mut() else {
            return;
        };
        // Durable before visible: the registry is kept before anything the
        // same input produced goes out.
        let ready = master.ready();
        for write in ready.writes() {
            self.registry.apply(write);
        }
        for t in master.advance(ready) {
            match t {
                Transmit::ToAgent(conn, msg) => self.send(Packet::MasterToAgent(conn, msg)),
                Transmit::ToScheduler(conn, event) => {
                    self.send(Packet::MasterToScheduler(conn, event))
                }
                Transmit::Close(conn, reason) => {
                    self.log(format!("master closes conn {} ({reason})", conn.0));
                    // What was sent before the close still arrives.
                    let delay = self.config.latency.1 + Duration::from_micros(1);
                    self.after(delay, Ev::Closed(conn));
                    if let Some(m) = self.master.as_mut() {
                        m.handle_disconnected(self.now, conn);
                    }
                }
            }
        }
    }

    // ---- connections -----------------------------------------------------

    fn backoff(&mut self) -> Duration {
        self.uniform((Duration::from_millis(100), Duration::from_millis(600)))
    }

    fn link_cut(&self, peer: Peer) -> bool {
        match peer {
            Peer::Agent(i) => self.agent_cut_until[i] > self.now,
            Peer::Scheduler(f) => self.scheduler_cut_until[f] > self.now,
        }
    }

    fn connect(&mut self, peer: Peer) {
        let (up, connected) = match peer {
            Peer::Agent(i) => (self.agents[i].core.is_some(), self.agents[i].conn.is_some()),
            Peer::Scheduler(f) => {
                let s = &self.schedulers[f];
                (s.up && !s.torn_down, s.conn.is_some())
            }
        };
        if !up || connected {
            return;
        }
        if self.master.is_none() || self.link_cut(peer) {
            let wait = self.backoff();
            self.after(wait, Ev::Connect(peer));
            return;
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(conn, peer);
        let now = self.now;
        match peer {
            Peer::Agent(i) => {
                self.log(format!("agent-{i} connects on conn {}", conn.0));
                if let Some(m) = self.master.as_mut() {
                    m.handle_connected(now, conn, Channel::Agent);
                }
                self.agents[i].conn = Some(conn);
                if let Some(core) = self.agents[i].core.as_mut() {
                    core.handle_connected(now);
                }
                self.drain_agent(i);
            }
            Peer::Scheduler(f) => {
                self.log(format!("fw-{f} connects on conn {}", conn.0));
                if let Some(m) = self.master.as_mut() {
                    m.handle_connected(now, conn, Channel::Scheduler);
                }
                self.schedulers[f].conn = Some(conn);
                let mut framework = FrameworkInfo::new(
                    format!("fw-{f}"),
                    format!("role-{f}")
                        .parse()
                        .unwrap_or_else(|_| unreachable!("role-N is a valid role")),
                );
                framework.id = self.schedulers[f].id.clone();
                framework.failover_timeout_ms = self.config.failover_timeout.as_millis() as u64;
                self.send(Packet::SchedulerToMaster(
                    conn,
                    Call::Subscribe { framework },
                ));
            }
        }
    }

    /// Breaks `conn`: nothing more crosses it; each end notices after the
    /// detection delay.
    fn break_conn(&mut self, conn: ConnId, peer_notices: bool) {
        let Some(peer) = self.conns.remove(&conn) else {
            return;
        };
        let detect = self.config.detect;
        self.after(detect, Ev::MasterNotices(conn));
        if peer_notices {
            self.after(detect, Ev::PeerNotices(peer, conn));
        }
    }

    fn peer_notices(&mut self, peer: Peer, conn: ConnId) {
        let now = self.now;
        match peer {
            Peer::Agent(i) => {
                if self.agents[i].conn != Some(conn) {
                    return;
                }
                self.agents[i].conn = None;
                if let Some(core) = self.agents[i].core.as_mut() {
                    core.handle_disconnected(now);
                }
                self.drain_agent(i);
            }
            Peer::Scheduler(f) => {
                if self.schedulers[f].conn != Some(conn) {
                    return;
                }
                self.schedulers[f].conn = None;
            }
        }
        let wait = self.backoff();
        self.after(wait, Ev::Connect(peer));
    }

    // ---- faults ------------------------------------------------------------

    fn inject(&mut self, fault: Fault) {
        self.log(format!("FAULT {fault}"));
        let Fault {
            kind,
            target,
            lasts,
            ..
        } = fault;
        match kind {
            FaultKind::AgentPartition => {
                self.agent_cut_until[target] = self.now + lasts;
                if let Some(conn) = self.agents[target].conn {
                    self.break_conn(conn, true);
                }
            }
            FaultKind::SchedulerPartition => {
                self.scheduler_cut_until[target] = self.now + lasts;
                if let Some(conn) = self.schedulers[target].conn {
                    self.break_conn(conn, true);
                }
            }
            FaultKind::AgentRestart | FaultKind::AgentCrash => {
                let slot = &mut self.agents[target];
                if slot.core.is_none() {
                    return;
                }
                slot.core = None;
                if let Some(t) = slot.timer.take() {
                    self.agent_timers.remove(&(t, target));
                }
                if let Some(conn) = self.agents[target].conn.take() {
                    self.break_conn(conn, false);
                }
                if kind == FaultKind::AgentCrash {
                    let held = std::mem::take(&mut self.agents[target].held);
                    for (fw, task) in held.keys() {
                        self.truth.ended(target, fw, task);
                    }
                }
                self.after(lasts, Ev::AgentUp(target));
            }
            FaultKind::ExecutorCrash => {
                let (agent, f) = (
                    target / self.config.frameworks,
                    target % self.config.frameworks,
                );
                let Some(fw) = self.schedulers[f].id.clone() else {
                    return;
                };
                // The executor dies with every task it runs (the ground
                // truth), and the agent core decides what that means.
                let victims: Vec<TaskId> = self.agents[agent]
                    .held
                    .iter()
                    .filter(|((of, _), h)| {
                        of == &fw && !h.last.as_ref().is_some_and(TaskEvent::is_terminal)
                    })
                    .map(|((_, t), _)| t.clone())
                    .collect();
                for task in &victims {
                    let died =
                        TaskEvent::ended(TaskState::Failed, Reason::ExecutorTerminated, "died");
                    if let Some(held) = self.agents[agent].held.get_mut(&(fw.clone(), task.clone()))
                    {
                        held.last = Some(died);
                    }
                    self.truth.ended(agent, &fw, task);
                }
                self.log(format!(
                    "agent-{agent} executor of {fw} dies with {} tasks",
                    victims.len()
                ));
                let now = self.now;
                if let Some(core) = self.agents[agent].core.as_mut() {
                    core.handle_executor_gone(now, &fw);
                }
                self.drain_agent(agent);
            }
            FaultKind::MasterRestart => {
                if self.master.take().is_none() {
                    return;
                }
                let detect = self.config.detect.min(lasts);
                // In connection order: a HashMap's order would differ from
                // run to run and the seed would not replay.
                let mut conns: Vec<(ConnId, Peer)> = self.conns.drain().collect();
                conns.sort_by_key(|(c, _)| *c);
                for (conn, peer) in conns {
                    self.after(detect, Ev::PeerNotices(peer, conn));
                }
                self.after(lasts, Ev::MasterUp);
            }
            FaultKind::SchedulerFailover | FaultKind::SchedulerGone => {
                let s = &mut self.schedulers[target];
                if !s.up || s.torn_down {
                    return;
                }
                s.up = false;
                if let Some(conn) = s.conn.take() {
                    self.break_conn(conn, false);
                }
                self.after(lasts, Ev::SchedulerUp(target));
            }
            FaultKind::SlowAcks => self.schedulers[target].slow_acks_until = self.now + lasts,
            FaultKind::FetchFailure => {
                let slot = &mut self.agents[target];
                slot.artifacts.clear();
                slot.fetch_fails_until = self.now + lasts;
            }
        }
    }

    fn agent_up(&mut self, i: usize) {
        let now = self.now;
        let slot = &mut self.agents[i];
        slot.incarnation += 1;
        // A restarted agent numbers its updates above every earlier number.
        let mut core = agent_core(
            slot.info.clone(),
            slot.known_id.clone(),
            slot.incarnation << 40,
        );
        for ((fw, _), held) in &slot.held {
            core.recover_task(now, fw.clone(), &held.task, held.last.clone());
        }
        let left = slot.dirs.iter().filter(|key| !slot.held.contains_key(key));
        core.handle_left_behind(
            now,
            left.map(|(f, t)| (f.clone(), t.clone(), Duration::ZERO))
                .collect::<Vec<_>>(),
        );
        let held = slot.held.len();
        slot.core = Some(core);
        self.log(format!("agent-{i} starts again holding {held} tasks"));
        self.connect(Peer::Agent(i));
    }

    // ---- agents and executors ----------------------------------------------

    fn executor_reports(&mut self, i: usize, fw: FrameworkId, task: TaskId, event: TaskEvent) {
        let key = (fw.clone(), task.clone());
        let Some(held) = self.agents[i].held.get_mut(&key) else {
            return;
        };
        if held.last.as_ref().is_some_and(TaskEvent::is_terminal) {
            return;
        }
        held.last = Some(event.clone());
        if event.is_terminal() {
            self.truth.ended(i, &fw, &task);
        }
        self.log(format!("agent-{i} executor {task} {event:?}"));
        let now = self.now;
        if let Some(core) = self.agents[i].core.as_mut() {
            core.handle_task_event(now, fw, task, event);
            self.drain_agent(i);
        }
    }

    fn drain_agent(&mut self, i: usize) {
        let now = self.now;
        let slot = &mut self.agents[i];
        let Some(core) = slot.core.as_mut() else {
            return;
        };
        // Every input to an agent ends here: refresh its timer.
        if let Some(old) = slot.timer.take() {
            self.agent_timers.remove(&(old, i));
        }
        if let Some(t) = core.poll_timeout() {
            self.agent_timers.insert((t, i));
            slot.timer = Some(t);
        }
        if let Some(id) = core.agent_id() {
            slot.known_id = Some(id.clone());
        }
        let mut msgs = Vec::new();
        while let Some(msg) = core.poll_transmit() {
            msgs.push(msg);
        }
        let mut actions = Vec::new();
        while let Some(action) = core.poll_action() {
            actions.push(action);
        }
        if let Some(conn) = self.agents[i].conn {
            for msg in msgs {
                self.send(Packet::AgentToMaster(conn, msg));
            }
        }
        for action in actions {
            self.perform(i, now, action);
        }
    }

    fn perform(&mut self, i: usize, now: Time, action: Action) {
        match action {
            Action::Launch { framework_id, task } => {
                let artifacts = &self.agents[i].artifacts;
                if let Some(digest) = task.kind.missing_artifact(|d| artifacts.contains(&d)) {
                    if let Some(core) = self.agents[i].core.as_mut() {
                        core.artifact_missing(now, framework_id, task, digest);
                    }
                    self.drain_agent(i);
                    return;
                }
                if let Some(v) = self.truth.started(now, i, &framework_id, &task.task_id) {
                    self.violate(v);
                }
                if task.kind.has_sandbox() {
                    self.agents[i]
                        .dirs
                        .insert((framework_id.clone(), task.task_id.clone()));
                }
                // The simulated executor echoes a wasm task's input and a
                // command's argv.
                let input = match &task.kind {
                    TaskKind::Wasm(wasm) => wasm.input.clone(),
                    TaskKind::Command(command) => command.argv.join(" ").into_bytes(),
                    TaskKind::Scheduler(hosted) => hosted.framework.name.clone().into_bytes(),
                };
                let output = [b"hello, ".as_slice(), &input].concat();
                let started =
                    now + self.uniform((Duration::from_micros(10), Duration::from_micros(100)));
                let ended = started + self.uniform(self.config.task_time);
                let id = task.task_id.clone();
                self.agents[i].held.insert(
                    (framework_id.clone(), id.clone()),
                    Held {
                        task: *task,
                        last: None,
                    },
                );
                self.at(
                    started,
                    Ev::Exec(i, framework_id.clone(), id.clone(), TaskEvent::Running),
                );
                let finished = TaskEvent::Finished {
                    output,
                    exit_code: None,
                };
                self.at(ended, Ev::Exec(i, framework_id, id, finished));
            }
            Action::Kill {
                framework_id,
                task_id,
            } => {
                let event =
                    TaskEvent::ended(TaskState::Killed, Reason::KilledByScheduler, "killed");
                self.executor_reports(i, framework_id, task_id, event);
            }
            // A simulated task answers every message with it.
            Action::Deliver {
                framework_id,
                task_id,
                data,
            } => {
                if let Some(core) = self.agents[i].core.as_mut() {
                    core.handle_task_message(framework_id, task_id, data);
                }
                self.drain_agent(i);
            }
            Action::Forget {
                framework_id,
                task_id,
                ..
            } => {
                self.agents[i].held.remove(&(framework_id, task_id));
            }
            // The simulated executor has no cgroup to size.
            Action::ResizeExecutor { .. } => {}
            // An executor is stopped only when its framework has nothing
            // left on the agent: nothing of it may still run.
            Action::StopExecutor { framework_id } => {
                let running: Vec<String> = self.agents[i]
                    .held
                    .iter()
                    .filter(|((f, _), h)| {
                        *f == framework_id && !h.last.as_ref().is_some_and(TaskEvent::is_terminal)
                    })
                    .map(|((_, t), _)| t.to_string())
                    .collect();
                self.log(format!("agent-{i} stops the executor of {framework_id}"));
                if !running.is_empty() {
                    self.violate(Violation {
                        at: now,
                        invariant: "an idle executor is stopped only when idle",
                        detail: format!(
                            "agent-{i} stopped {framework_id}'s executor running {running:?}"
                        ),
                    });
                }
            }
            // A cgroup is removed once its task is over: removing it kills
            // whatever runs in it.
            Action::RemoveCgroup {
                framework_id,
                task_id,
            } => {
                let held = self.agents[i]
                    .held
                    .get(&(framework_id.clone(), task_id.clone()));
                if held.is_some_and(|h| !h.last.as_ref().is_some_and(TaskEvent::is_terminal)) {
                    self.violate(Violation {
                        at: now,
                        invariant: "a task's cgroup is removed only after it ends",
                        detail: format!("agent-{i} removed the cgroup of {framework_id}/{task_id}"),
                    });
                }
            }
            Action::CollectSandbox {
                framework_id,
                task_id,
            } => {
                let key = (framework_id, task_id);
                self.log(format!(
                    "agent-{i} collects the directory of {}/{}",
                    key.0, key.1
                ));
                let problem = if self.agents[i].held.contains_key(&key) {
                    Some("while its executor still holds the task")
                } else if !self.agents[i].dirs.remove(&key) {
                    Some("that is not there (collected twice?)")
                } else {
                    None
                };
                if let Some(problem) = problem {
                    self.violate(Violation {
                        at: now,
                        invariant: "a task's directory is collected once, after it is forgotten",
                        detail: format!(
                            "agent-{i} collected the directory of {}/{} {problem}",
                            key.0, key.1
                        ),
                    });
                }
            }
            Action::Fetch { digest } => {
                let took = self.uniform((Duration::from_millis(20), Duration::from_millis(300)));
                let incarnation = self.agents[i].incarnation;
                self.after(took, Ev::Fetched(i, incarnation, digest));
            }
        }
    }

    // ---- packets -------------------------------------------------------------

    fn deliver(&mut self, packet: Packet) {
        let now = self.now;
        let conn = match &packet {
            Packet::AgentToMaster(c, _)
            | Packet::MasterToAgent(c, _)
            | Packet::SchedulerToMaster(c, _)
            | Packet::MasterToScheduler(c, _) => *c,
        };
        // A broken connection delivers nothing more.
        let Some(peer) = self.conns.get(&conn).copied() else {
            return;
        };
        match packet {
            Packet::AgentToMaster(conn, msg) => {
                let Peer::Agent(i) = peer else { return };
                self.log(format!("agent-{i} -> master {}", describe_agent_msg(&msg)));
                if let Some(m) = self.master.as_mut() {
                    m.handle_agent_message(now, conn, msg);
                    self.drain_master();
                }
            }
            Packet::SchedulerToMaster(conn, call) => {
                let Peer::Scheduler(f) = peer else { return };
                self.log(format!("fw-{f} -> master {}", describe_call(&call)));
                if let Some(m) = self.master.as_mut() {
                    m.handle_scheduler_call(now, conn, call);
                    self.drain_master();
                }
            }
            Packet::MasterToAgent(_, msg) => {
                let Peer::Agent(i) = peer else { return };
                self.log(format!("master -> agent-{i} {}", describe_master_msg(&msg)));
                if let Some(core) = self.agents[i].core.as_mut() {
                    core.handle_master_message(now, msg);
                    self.drain_agent(i);
                }
            }
            Packet::MasterToScheduler(_, event) => {
                let Peer::Scheduler(f) = peer else { return };
                self.log(format!("master -> fw-{f} {}", describe_event(&event)));
                self.scheduler_event(f, event);
            }
        }
    }

    /// Sends what a guest framework asked for and sets its timers.
    fn apply(&mut self, f: usize, reaction: guest::Reaction) {
        for call in reaction.calls {
            self.call(f, call);
        }
        for (id, after) in reaction.timers {
            self.after(after, Ev::Timer(f, id));
        }
        if reaction.torn_down {
            self.schedulers[f].torn_down = true;
        }
    }

    fn call(&mut self, f: usize, call: Call) {
        if let Some(conn) = self.schedulers[f].conn {
            self.send(Packet::SchedulerToMaster(conn, call));
        }
    }

    fn scheduler_event(&mut self, f: usize, event: Event) {
        if !self.schedulers[f].up {
            return;
        }
        if let Some(mut g) = self.schedulers[f].guest.take() {
            if let Event::Subscribed { framework_id, .. } = &event {
                self.schedulers[f].id = Some(framework_id.clone());
            }
            if let Event::Update { status, .. } = &event {
                self.schedulers[f].builtin.tally_guest(status);
            }
            let reaction = g.event(&event);
            self.schedulers[f].guest = Some(g);
            self.apply(f, reaction);
            return;
        }
        match event {
            Event::Subscribed { framework_id, .. } => {
                self.schedulers[f].id = Some(framework_id);
                for call in self.schedulers[f].builtin.subscribed() {
                    self.call(f, call);
                }
            }
            Event::Offers { offers } => {
                let each = self.config.task_resources.clone();
                for offer in offers {
                    for call in self.schedulers[f].builtin.offer(&offer, &each) {
                        self.call(f, call);
                    }
                }
            }
            Event::Update { status, ack } => {
                let Some(fw) = self.schedulers[f].id.clone() else {
                    return;
                };
                let before = self.violations.len();
                let calls = self.schedulers[f].builtin.update(
                    self.now,
                    &fw,
                    &status,
                    &self.truth,
                    &mut self.violations,
                );
                let broken: Vec<String> = self.violations[before..]
                    .iter()
                    .map(|v| format!("VIOLATION {}: {}", v.invariant, v.detail))
                    .collect();
                for line in broken {
                    self.log(line);
                }
                for call in calls {
                    self.call(f, call);
                }
                if let (Some(update_id), Some(agent_id)) = (ack, status.agent_id.clone()) {
                    let call = Call::Acknowledge {
                        agent_id,
                        task_id: status.task_id.clone(),
                        update_id,
                    };
                    if self.schedulers[f].slow_acks_until > self.now {
                        // A slow scheduler: a third of its acknowledgements
                        // never go out, the rest go out late.
                        if !self.rng.next_u64().is_multiple_of(3) {
                            let late = self.uniform((Duration::ZERO, Duration::from_secs(3)));
                            self.after(late, Ev::LateAck(f, call));
                        }
                    } else {
                        self.call(f, call);
                    }
                }
            }
            Event::Error { code, message } => {
                if code == stoa_proto::Refusal::TornDown {
                    self.log(format!("fw-{f} gives up: {message}"));
                    let s = &mut self.schedulers[f];
                    s.torn_down = true;
                    s.builtin.abandon("the framework was torn down");
                }
            }
            Event::Rescind { .. }
            | Event::Heartbeat
            | Event::Submitted { .. }
            | Event::Message { .. }
            | Event::Delivered
            | Event::Failure { .. } => {}
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_to_the_end_through_the_real_cores() {
        let mut sim = Sim::new(SimConfig {
            full_trace: true,
            ..SimConfig::default()
        });
        let outcome = sim.run(Duration::from_secs(60));
        assert_eq!(outcome.failed, Vec::<String>::new());
        assert_eq!(
            outcome.finished,
            vec![20, 20],
            "trace tail: {:#?}",
            &sim.trace()[sim.trace().len().saturating_sub(30)..]
        );
        // The whole path shows in the trace: register, offer, accept, run, finish, ack.
        let trace = sim.trace().join("\n");
        for step in [
            "Register",
            "Registered",
            "Offers [",
            "Accept",
            "RunTask",
            "RUNNING",
            "TASK_FINISHED",
            "Ack",
        ] {
            assert!(trace.contains(step), "no {step} in the trace");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let run = |seed| {
            let mut sim = Sim::new(SimConfig {
                seed,
                ..SimConfig::default()
            });
            sim.run(Duration::from_secs(60));
            sim.trace().to_vec()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8), "different seeds should give different timings");
    }

    #[test]
    fn a_thousand_agents_and_ten_frameworks_share_fairly() {
        let config = SimConfig {
            seed: 3,
            agents: 1_000,
            frameworks: 10,
            tasks_per_framework: 200,
            check_books: false,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(config);
        let outcome = sim.run(Duration::from_secs(60));
        assert_eq!(outcome.failed, Vec::<String>::new());
        assert_eq!(outcome.finished, vec![200; 10]);
    }

    #[test]
    fn more_tasks_than_fit_at_once_wait_for_resources_to_come_back() {
        // 1 agent of 1 cpu, 4 tasks fit at a time; 50 tasks must reuse it.
        let config = SimConfig {
            agents: 1,
            frameworks: 1,
            tasks_per_framework: 50,
            ..SimConfig::default()
        };
        let outcome = Sim::new(config).run(Duration::from_secs(600));
        assert_eq!(outcome.finished, vec![50]);
    }
}
