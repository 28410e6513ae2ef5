//! A deterministic, in-process Stoa cluster: the real master core and agent
//! cores, scripted schedulers and a simulated executor, joined by a
//! simulated network with seeded latency. No sockets, no threads, no clock.
//!
//! The same seed gives the same trace, so a failing seed is a reproducible
//! bug report.

pub mod guest;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use stoa_agent_core::{Action, Agent, TaskEvent};
use stoa_master_core::{Channel, ConnId, Master, MasterConfig, Transmit};
use stoa_proto::{
    AgentInfo, AgentToMaster, Artifact, Attributes, Call, Event, FrameworkId, FrameworkInfo,
    MasterToAgent, Operation, Resources, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState, Time,
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
        }
    }
}

#[derive(Debug, Clone)]
enum Packet {
    AgentToMaster(usize, AgentToMaster),
    MasterToAgent(usize, MasterToAgent),
    SchedulerToMaster(usize, Call),
    MasterToScheduler(usize, Event),
}

/// A scheduler that launches its tasks wherever they fit and acknowledges
/// every update.
#[derive(Debug)]
struct Scheduler {
    id: Option<FrameworkId>,
    pending: VecDeque<usize>,
    finished: BTreeSet<usize>,
    failed: Vec<String>,
    /// A framework driven in place of the built-in logic.
    guest: Option<Box<dyn guest::Framework>>,
    torn_down: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Tasks finished with the right output, per framework.
    pub finished: Vec<usize>,
    /// Tasks that ended in any other terminal state, with why.
    pub failed: Vec<String>,
    pub end: Time,
}

#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    master: Master,
    agents: Vec<Agent>,
    schedulers: Vec<Scheduler>,
    /// In flight: (delivery time, sequence) → packet. The sequence keeps
    /// equal times in send order.
    network: BTreeMap<(Time, u64), Packet>,
    /// Simulated executions: (end time, sequence) → (agent, framework, task, event).
    executions: BTreeMap<(Time, u64), (usize, FrameworkId, TaskId, TaskEvent)>,
    trace: Vec<String>,
    /// Each agent's next timeout, ordered, so a step does not scan every
    /// agent (the simulator runs thousands).
    agent_timers: BTreeSet<(Time, usize)>,
    agent_timer_of: Vec<Option<Time>>,
    /// Frameworks' timers: (due, sequence, framework, its timer id).
    framework_timers: BTreeSet<(Time, u64, usize, u64)>,
}

/// Connection ids: agents are 1..=n, schedulers follow.
fn agent_conn(i: usize) -> ConnId {
    ConnId(1 + i as u64)
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        let mut sim = Sim {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            now: Time::ZERO,
            seq: 0,
            master: Master::new(MasterConfig::default(), "sim"),
            agents: Vec::new(),
            schedulers: Vec::new(),
            network: BTreeMap::new(),
            executions: BTreeMap::new(),
            trace: Vec::new(),
            agent_timers: BTreeSet::new(),
            agent_timer_of: Vec::new(),
            framework_timers: BTreeSet::new(),
            config,
        };
        for i in 0..sim.config.agents {
            let info = AgentInfo {
                reservations: Vec::new(),
                hostname: format!("host-{i}"),
                resources: sim.config.agent_resources.clone(),
                attributes: Attributes::default(),
            };
            let mut agent = Agent::new(info, None, 0);
            sim.master
                .handle_connected(sim.now, agent_conn(i), Channel::Agent);
            agent.handle_connected(sim.now);
            sim.agents.push(agent);
            sim.agent_timer_of.push(None);
            sim.drain_agent(i);
        }
        for f in 0..sim.config.frameworks {
            sim.schedulers.push(Scheduler {
                id: None,
                pending: (0..sim.config.tasks_per_framework).collect(),
                finished: BTreeSet::new(),
                failed: Vec::new(),
                guest: sim.config.framework.map(|make| make(f)),
                torn_down: false,
            });
            sim.master
                .handle_connected(sim.now, sim.sched_conn(f), Channel::Scheduler);
            let framework = FrameworkInfo::new(
                format!("fw-{f}"),
                format!("role-{f}").parse().expect("role"),
            );
            sim.send(Packet::SchedulerToMaster(f, Call::Subscribe { framework }));
        }
        sim
    }

    fn sched_conn(&self, f: usize) -> ConnId {
        ConnId(1 + self.config.agents as u64 + f as u64)
    }

    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    fn uniform(&mut self, (lo, hi): (Duration, Duration)) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(if span == 0 {
            0
        } else {
            self.rng.next_u64() % (span + 1)
        })
    }

    fn send(&mut self, packet: Packet) {
        let at = self.now + self.uniform(self.config.latency);
        self.seq += 1;
        self.network.insert((at, self.seq), packet);
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("{} {line}", self.now));
    }

    /// Runs until every task has ended or `limit` of simulated time passed.
    pub fn run(&mut self, limit: Duration) -> Outcome {
        let end = Time::ZERO + limit;
        while !self.done() {
            let next = [
                self.network.keys().next().map(|k| k.0),
                self.executions.keys().next().map(|k| k.0),
                self.master.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .chain(self.agent_timers.first().map(|(t, _)| *t))
            .chain(self.framework_timers.first().map(|t| t.0))
            .min();
            let Some(next) = next.filter(|t| *t <= end) else {
                break;
            };
            self.now = self.now.max(next);
            self.step();
        }
        Outcome {
            finished: self.schedulers.iter().map(|s| s.finished.len()).collect(),
            failed: self
                .schedulers
                .iter()
                .flat_map(|s| s.failed.clone())
                .collect(),
            end: self.now,
        }
    }

    fn done(&self) -> bool {
        self.schedulers.iter().all(|s| {
            s.torn_down || s.finished.len() + s.failed.len() == self.config.tasks_per_framework
        })
    }

    /// Handles everything due at `self.now`.
    fn step(&mut self) {
        let now = self.now;
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let packet = entry.remove();
            self.deliver(packet);
        }
        while let Some(entry) = self.executions.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (i, fw, task, event) = entry.remove();
            self.log(format!("agent-{i} executor {task} {event:?}"));
            self.agents[i].handle_task_event(now, fw, task, event);
            self.drain_agent(i);
        }
        if self.master.poll_timeout().is_some_and(|t| t <= now) {
            self.master.handle_timeout(now);
            self.drain_master();
        }
        while let Some(&(t, i)) = self.agent_timers.first() {
            if t > now {
                break;
            }
            self.agents[i].handle_timeout(now);
            self.drain_agent(i);
        }
        while let Some(&(t, seq, f, id)) = self.framework_timers.first() {
            if t > now {
                break;
            }
            self.framework_timers.remove(&(t, seq, f, id));
            if let Some(mut g) = self.schedulers[f].guest.take() {
                let reaction = g.timer(id);
                self.schedulers[f].guest = Some(g);
                self.apply(f, reaction);
            }
        }
    }

    /// Sends what a framework asked for and sets its timers.
    fn apply(&mut self, f: usize, reaction: guest::Reaction) {
        for call in reaction.calls {
            self.send(Packet::SchedulerToMaster(f, call));
        }
        for (id, after) in reaction.timers {
            self.seq += 1;
            let at = self.now + after;
            self.framework_timers.insert((at, self.seq, f, id));
        }
        if reaction.torn_down {
            self.schedulers[f].torn_down = true;
        }
    }

    fn deliver(&mut self, packet: Packet) {
        let now = self.now;
        match packet {
            Packet::AgentToMaster(i, msg) => {
                self.log(format!("agent-{i} -> master {}", describe_agent_msg(&msg)));
                self.master.handle_agent_message(now, agent_conn(i), msg);
                self.drain_master();
            }
            Packet::SchedulerToMaster(f, call) => {
                self.log(format!("fw-{f} -> master {}", describe_call(&call)));
                let conn = self.sched_conn(f);
                self.master.handle_scheduler_call(now, conn, call);
                self.drain_master();
            }
            Packet::MasterToAgent(i, msg) => {
                self.log(format!("master -> agent-{i} {}", describe_master_msg(&msg)));
                self.agents[i].handle_master_message(now, msg);
                self.drain_agent(i);
            }
            Packet::MasterToScheduler(f, event) => {
                self.log(format!("master -> fw-{f} {}", describe_event(&event)));
                self.scheduler_event(f, event);
            }
        }
    }

    fn drain_master(&mut self) {
        while let Some(t) = self.master.poll_transmit() {
            match t {
                Transmit::ToAgent(conn, msg) => {
                    let i = (conn.0 - 1) as usize;
                    self.send(Packet::MasterToAgent(i, msg));
                }
                Transmit::ToScheduler(conn, event) => {
                    let f = (conn.0 - 1) as usize - self.config.agents;
                    self.send(Packet::MasterToScheduler(f, event));
                }
                Transmit::Close(conn, reason) => {
                    self.log(format!("master closes conn {} ({reason})", conn.0))
                }
            }
        }
    }

    fn drain_agent(&mut self, i: usize) {
        // Every input to an agent ends here: refresh its timer.
        if let Some(old) = self.agent_timer_of[i].take() {
            self.agent_timers.remove(&(old, i));
        }
        if let Some(t) = self.agents[i].poll_timeout() {
            self.agent_timers.insert((t, i));
            self.agent_timer_of[i] = Some(t);
        }
        while let Some(msg) = self.agents[i].poll_transmit() {
            self.send(Packet::AgentToMaster(i, msg));
        }
        while let Some(action) = self.agents[i].poll_action() {
            match action {
                Action::Launch { framework_id, task } => {
                    // The simulated executor echoes a wasm task's input and
                    // a command's argv.
                    let input = match &task.kind {
                        TaskKind::Wasm(wasm) => wasm.input.clone(),
                        TaskKind::Command(command) => command.argv.join(" ").into_bytes(),
                        TaskKind::Scheduler(hosted) => hosted.framework.name.clone().into_bytes(),
                    };
                    let input = &input;
                    let output = [b"hello, ".as_slice(), input].concat();
                    let started = self.now
                        + self.uniform((Duration::from_micros(10), Duration::from_micros(100)));
                    let ended = started + self.uniform(self.config.task_time);
                    self.seq += 1;
                    self.executions.insert(
                        (started, self.seq),
                        (
                            i,
                            framework_id.clone(),
                            task.task_id.clone(),
                            TaskEvent::Running,
                        ),
                    );
                    self.seq += 1;
                    self.executions.insert(
                        (ended, self.seq),
                        (
                            i,
                            framework_id,
                            task.task_id,
                            TaskEvent::Finished {
                                output,
                                exit_code: None,
                            },
                        ),
                    );
                }
                Action::Kill {
                    framework_id,
                    task_id,
                } => {
                    self.executions.retain(|_, (a, fw, t, _)| {
                        !(*a == i && *fw == framework_id && *t == task_id)
                    });
                    let event = TaskEvent::ended(
                        TaskState::Killed,
                        stoa_proto::Reason::KilledByScheduler,
                        "killed",
                    );
                    self.agents[i].handle_task_event(self.now, framework_id, task_id, event);
                    self.drain_agent(i);
                }
                // A simulated task answers every message with it.
                Action::Deliver {
                    framework_id,
                    task_id,
                    data,
                } => {
                    self.agents[i].handle_task_message(framework_id, task_id, data);
                    self.drain_agent(i);
                }
                // Simulated executors keep nothing to forget.
                Action::Forget { .. } => {}
            }
        }
    }

    /// Counts a task's end for the outcome: finished with the greeting a
    /// hello task gives, or ended otherwise.
    fn tally(&mut self, f: usize, status: &stoa_proto::TaskStatus) {
        let n = status
            .task_id
            .as_str()
            .strip_prefix("task-")
            .and_then(|n| n.parse::<usize>().ok());
        let Some(n) = n else { return };
        let s = &mut self.schedulers[f];
        match status.state {
            TaskState::Finished => {
                let want = format!("hello, task-{n}").into_bytes();
                if status.output.as_deref() == Some(want.as_slice()) {
                    s.finished.insert(n);
                } else {
                    s.failed.push(format!("task-{n}: wrong output"));
                }
            }
            st if st.is_terminal() => s.failed.push(format!("task-{n}: {st} {:?}", status.reason)),
            _ => {}
        }
    }

    fn scheduler_event(&mut self, f: usize, event: Event) {
        if let Event::Update { status, .. } = &event {
            self.tally(f, status);
        }
        if let Some(mut g) = self.schedulers[f].guest.take() {
            if let Event::Subscribed { framework_id, .. } = &event {
                self.schedulers[f].id = Some(framework_id.clone());
            }
            let reaction = g.event(&event);
            self.schedulers[f].guest = Some(g);
            self.apply(f, reaction);
            return;
        }
        match event {
            Event::Subscribed { framework_id, .. } => self.schedulers[f].id = Some(framework_id),
            Event::Offers { offers } => {
                for offer in offers {
                    let mut left = offer.resources.clone();
                    let mut tasks = Vec::new();
                    while let Some(&n) = self.schedulers[f].pending.front() {
                        let Some(rest) = left.checked_sub(&self.config.task_resources) else {
                            break;
                        };
                        left = rest;
                        self.schedulers[f].pending.pop_front();
                        tasks.push(sim_task(n, &self.config.task_resources));
                    }
                    let call = if tasks.is_empty() {
                        Call::Decline {
                            offer_ids: vec![offer.id],
                            refuse_ms: Some(1000),
                        }
                    } else {
                        Call::Accept {
                            offer_ids: vec![offer.id],
                            operations: vec![Operation::Launch { tasks }],
                            refuse_ms: None,
                        }
                    };
                    self.send(Packet::SchedulerToMaster(f, call));
                }
            }
            Event::Update { status, ack } => {
                if let (Some(update_id), Some(agent_id)) = (ack, status.agent_id.clone()) {
                    let call = Call::Acknowledge {
                        agent_id,
                        task_id: status.task_id.clone(),
                        update_id,
                    };
                    self.send(Packet::SchedulerToMaster(f, call));
                }
            }
            Event::Rescind { .. }
            | Event::Error { .. }
            | Event::Heartbeat
            | Event::Submitted { .. }
            | Event::Message { .. }
            | Event::Delivered
            | Event::Failure { .. } => {}
        }
    }
}

fn sim_task(n: usize, resources: &Resources) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new(format!("task-{n}"))
            .unwrap_or_else(|_| unreachable!("task-N is a valid id")),
        name: format!("task {n}"),
        resources: resources.clone(),
        kind: TaskKind::wasm(
            Artifact::inline(Vec::new()),
            format!("task-{n}").into_bytes(),
        ),
        limits: TaskLimits::default(),
    }
}

fn describe_agent_msg(m: &AgentToMaster) -> String {
    match m {
        AgentToMaster::Register { agent_id, .. } => format!("Register {agent_id:?}"),
        AgentToMaster::Heartbeat => "Heartbeat".into(),
        AgentToMaster::StatusUpdate {
            update_id, status, ..
        } => {
            format!(
                "StatusUpdate {} {} #{}",
                status.task_id, status.state, update_id.0
            )
        }
        AgentToMaster::FrameworkMessage { task_id, data, .. } => {
            format!("FrameworkMessage {} bytes from {task_id}", data.len())
        }
        AgentToMaster::Undelivered {
            task_id, message, ..
        } => format!("Undelivered to {task_id}: {message}"),
    }
}

fn describe_master_msg(m: &MasterToAgent) -> String {
    match m {
        MasterToAgent::Registered { agent_id, .. } => format!("Registered {agent_id}"),
        MasterToAgent::Refused { message } => format!("Refused {message}"),
        MasterToAgent::RunTask { task, .. } => format!("RunTask {}", task.task_id),
        MasterToAgent::KillTask { task_id, .. } => format!("KillTask {task_id}"),
        MasterToAgent::AcknowledgeUpdate { task_id, update_id } => {
            format!("Ack {task_id} #{}", update_id.0)
        }
        MasterToAgent::FrameworkMessage { task_id, data, .. } => {
            format!("FrameworkMessage {} bytes to {task_id}", data.len())
        }
    }
}

fn describe_call(c: &Call) -> String {
    match c {
        Call::Subscribe { framework } => format!("Subscribe {}", framework.name),
        Call::Accept {
            offer_ids,
            operations,
            ..
        } => {
            let n: usize = operations
                .iter()
                .map(|op| match op {
                    Operation::Launch { tasks } | Operation::LaunchGroup { tasks } => tasks.len(),
                    Operation::Reserve { .. } | Operation::Unreserve { .. } => 0,
                })
                .sum();
            format!("Accept {offer_ids:?} launching {n}")
        }
        Call::Decline { offer_ids, .. } => format!("Decline {offer_ids:?}"),
        Call::Kill { task_id } => format!("Kill {task_id}"),
        Call::Acknowledge {
            task_id, update_id, ..
        } => format!("Ack {task_id} #{}", update_id.0),
        Call::Suppress => "Suppress".into(),
        Call::Revive => "Revive".into(),
        Call::Teardown => "Teardown".into(),
        Call::Reconcile { tasks } => format!("Reconcile {} tasks", tasks.len()),
        Call::UpdateFramework { framework } => format!("UpdateFramework {}", framework.name),
        Call::SubscribeHosted {
            framework, task_id, ..
        } => format!("SubscribeHosted {} as {task_id}", framework.name),
        Call::Submit { submission } => format!("Submit {}", submission.framework.name),
        Call::SendMessage { framework_id, data } => {
            format!("SendMessage {} bytes to {framework_id}", data.len())
        }
        Call::Message { task_id, data } => format!("Message {} bytes to {task_id}", data.len()),
    }
}

fn describe_event(e: &Event) -> String {
    match e {
        Event::Subscribed { framework_id, .. } => format!("Subscribed {framework_id}"),
        Event::Offers { offers } => {
            let list: Vec<String> = offers
                .iter()
                .map(|o| format!("{}@{} {}", o.id, o.agent_id, o.resources))
                .collect();
            format!("Offers [{}]", list.join(", "))
        }
        Event::Rescind { offer_id } => format!("Rescind {offer_id}"),
        Event::Update { status, ack } => format!(
            "Update {} {} {:?} ack={:?}",
            status.task_id,
            status.state,
            status.reason,
            ack.map(|a| a.0)
        ),
        Event::Error { message } => format!("Error {message}"),
        Event::Heartbeat => "Heartbeat".into(),
        Event::Failure { agent_id } => format!("Failure {agent_id}"),
        Event::Submitted { framework_id } => format!("Submitted {framework_id}"),
        Event::Message { from: None, data } => format!("Message {} bytes", data.len()),
        Event::Message {
            from: Some(from),
            data,
        } => format!("Message {} bytes from {}", data.len(), from.task_id),
        Event::Delivered => "Delivered".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_to_the_end_through_the_real_cores() {
        let mut sim = Sim::new(SimConfig::default());
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
