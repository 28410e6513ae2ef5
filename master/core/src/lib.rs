//! The Stoa master's state machine: admits agents, subscribes frameworks,
//! offers resources, validates accepts, relays status updates.
//!
//! Calling order, for drivers: feed every input through a `handle_*`
//! method with the current time, then take [`Master::ready`], persist its
//! writes, and send what [`Master::advance`] releases; then sleep until
//! [`Master::poll_timeout`] (or the next input) and call
//! [`Master::handle_timeout`]. The core never
//! reads a clock, so the same inputs at the same times give the same
//! outputs — which is what the simulator relies on.

mod accept;
pub mod acl;
mod agents;
mod allocation;
mod connections;
pub mod events;
mod frameworks;
pub mod hosted;
mod index;
pub mod measures;
mod offers;
mod operator;
mod recent;
pub mod registry;
mod restore;
mod status_updates;
mod tasks;
mod timers;
mod views;

use connections::{Connections, Peer};
use offers::{OfferEntry, Offers};
use recent::Recent;
use tasks::{TaskEntry, Tasks};
use timers::{Timer, Timers};

use registry::{Journal, QuotaSpec, Registry, Write};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use stoa_allocator::{
    Allocation, Allocator, AllocatorConfig, Constraint, FrameworkSpec, MinAllocatable,
};
use stoa_allocator::{Limit, Quota};
use stoa_proto::messages::{OfferConstraint, Refusal, RunningTask, message_too_large};
use stoa_proto::operator::EventKind;
use stoa_proto::operator::{OperatorCall, OperatorReply, RoleStatus};
use stoa_proto::{
    AgentId, AgentInfo, AgentToMaster, Call, Event, FrameworkId, FrameworkInfo, MasterToAgent,
    MessageSource, Offer, OfferId, Reason, Resources, Role, TaskId, TaskState, TaskStatus, Time,
    UpdateId,
};

/// A connection, as numbered by the driver. Never reused within a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// The channel a connection was opened on (its ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Agent,
    Scheduler,
}

/// Something for the driver to do on a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Transmit {
    ToAgent(ConnId, MasterToAgent),
    ToScheduler(ConnId, Event),
    /// Close the connection, telling the peer why.
    Close(ConnId, String),
}

#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// An agent silent for this long is unreachable.
    pub agent_timeout: Duration,
    /// An agent unreachable for this long is removed: its tasks are GONE
    /// (`agent-removed`), and if it comes back it must kill them and
    /// register anew.
    pub agent_removal_timeout: Duration,
    /// After a restart or a failover: how long agents admitted before may
    /// take to register again. Past it, those still away are treated as
    /// lost: frameworks hear FAILURE for them, and reconciliation stops
    /// waiting for them (their tasks are UNKNOWN until they return or are
    /// removed).
    pub agent_reregister_timeout: Duration,
    /// Changes arriving within this window share one allocation run. The
    /// default is none: the driver handles every input already queued
    /// before it looks at timers, so changes that arrive together share a
    /// run anyway, and a quiet master offers freed resources at once (a
    /// millisecond here was a quarter of a short task's turnaround).
    pub allocation_delay: Duration,
    /// How long declined resources stay away from a framework by default.
    pub default_refuse: Duration,
    /// Offers unanswered for this long are rescinded; never when `None`.
    pub offer_timeout: Option<Duration>,
    pub allocator: AllocatorConfig,
    /// Who may do what beyond the defaults.
    pub acls: acl::Acls,
    /// Keys the tokens of hosted scheduler instances. Must be secret and
    /// the same across master restarts (the driver keeps it with the
    /// registry).
    pub secret: [u8; 32],
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            heartbeat_interval: Duration::from_secs(1),
            agent_timeout: Duration::from_secs(5),
            agent_removal_timeout: Duration::from_secs(120),
            agent_reregister_timeout: Duration::from_secs(10),
            allocation_delay: Duration::ZERO,
            default_refuse: Duration::from_secs(5),
            offer_timeout: None,
            allocator: AllocatorConfig::default(),
            acls: acl::Acls::default(),
            secret: [0; 32],
        }
    }
}

#[derive(Debug)]
struct AgentEntry {
    conn: Option<ConnId>,
    info: AgentInfo,
    last_heartbeat: Time,
    /// When it became unreachable; it is removed once the removal timeout
    /// has passed since.
    unreachable_since: Option<Time>,
}

#[derive(Debug)]
struct FrameworkEntry {
    conn: Option<ConnId>,
    info: FrameworkInfo,
    /// Set while the scheduler is away; the framework is torn down once
    /// `failover_timeout_ms` has passed since.
    disconnected_at: Option<Time>,
    counts: TaskCounts,
}

/// Tasks launched and ended, counted up since this master began to lead:
/// rates for the operator's views come from their growth.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TaskCounts {
    launched: u64,
    ended: u64,
}

impl TaskCounts {
    fn add(self, other: TaskCounts) -> TaskCounts {
        TaskCounts {
            launched: self.launched + other.launched,
            ended: self.ended + other.ended,
        }
    }
}

/// What one round of inputs produced, for the driver (after raft-rs
/// `Ready`): registry writes, and transmits that may tell peers about them.
///
/// The driver MUST persist every write of [`Ready::writes`], in order,
/// durably, before it calls [`Master::advance`] for the transmits; those
/// may tell a peer that the written state exists (a framework id, a
/// reservation). If a write fails, the driver must stop: sending the
/// transmits would make visible what is not durable.
#[derive(Debug, Default)]
#[must_use = "a Ready holds writes to persist and transmits to send"]
pub struct Ready {
    writes: Vec<Write>,
    transmits: Vec<Transmit>,
}

impl Ready {
    /// The registry writes to persist, in order, before the transmits go.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.transmits.is_empty()
    }
}

/// The master's state machine. See the module docs for the calling order.
#[derive(Debug)]
pub struct Master {
    config: MasterConfig,
    /// Prefix of ids this master run assigns, unique across runs.
    instance: String,
    next_id: u64,
    connections: Connections,
    agents: BTreeMap<AgentId, AgentEntry>,
    frameworks: BTreeMap<FrameworkId, FrameworkEntry>,
    tasks: Tasks,
    offers: Offers,
    /// Who holds what; owns filters and fairness.
    allocator: Allocator,
    registry: Journal,
    /// Recent events for the operator API's stream.
    events: events::EventLog,
    /// What happened since the driver last looked, for its metrics.
    measures: measures::Measures,
    /// Every framework's [`TaskCounts`] together, those gone included.
    counts: TaskCounts,
    /// The time of the input being handled, for stamping events.
    clock: Time,
    /// Agents' heartbeat and removal deadlines, frameworks' failover
    /// deadlines.
    timers: Timers,
    /// Agents admitted before this master started that have not registered
    /// with it yet nor been removed. While there are any, the master may
    /// not know a task that runs, so it holds back answering UNKNOWN.
    recovering: std::collections::BTreeSet<AgentId>,
    /// The re-registration timeout has passed with agents still in
    /// `recovering`.
    reregister_passed: bool,
    /// Explicit reconciliations of tasks unknown while `recovering`,
    /// answered once it is empty.
    deferred_reconciles: Vec<(FrameworkId, TaskId)>,
    /// How recent tasks ended, for reconciliation after their end was
    /// acknowledged and the task forgotten.
    ended: Recent<(FrameworkId, TaskId), TaskStatus>,
    allocation_due: Option<Time>,
    outbox: VecDeque<Transmit>,
    /// Where recent tasks ran, ended ones included: their sandboxes and
    /// logs outlive them on the agent.
    /// Where each recent task ran, and its framework's principal: its
    /// logs stay readable by its owner after the framework is gone.
    placements: Recent<(FrameworkId, TaskId), (AgentId, Option<String>)>,
    /// When connected schedulers are next sent HEARTBEAT.
    next_scheduler_heartbeat: Option<Time>,
    /// Frameworks whose schedulers the master runs (`stoa submit`).
    hosted: BTreeMap<FrameworkId, hosted::Hosted>,
}

/// How many ended tasks the master remembers for reconciliation.
const MAX_ENDED: usize = 10_000;

/// How many task placements the master remembers for log reads.
const MAX_PLACEMENTS: usize = 10_000;

/// Counts for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub agents: usize,
    pub connected_agents: usize,
    pub frameworks: usize,
    pub tasks: usize,
    pub offers: usize,
}

impl Master {
    /// `instance` prefixes every id this master assigns; give each master
    /// run a different one (the driver uses its start time).
    pub fn new(config: MasterConfig, instance: &str) -> Self {
        Master {
            allocator: Allocator::new(config.allocator.clone()),
            config,
            instance: instance.to_string(),
            next_id: 1,
            connections: Connections::default(),
            agents: BTreeMap::new(),
            frameworks: BTreeMap::new(),
            tasks: Tasks::default(),
            offers: Offers::default(),
            registry: Journal::default(),
            events: events::EventLog::default(),
            measures: measures::Measures::default(),
            counts: TaskCounts::default(),
            clock: Time::ZERO,
            timers: Timers::default(),
            recovering: std::collections::BTreeSet::new(),
            reregister_passed: false,
            deferred_reconciles: Vec::new(),
            ended: Recent::new(MAX_ENDED),
            next_scheduler_heartbeat: None,
            allocation_due: None,
            outbox: VecDeque::new(),
            placements: Recent::new(MAX_PLACEMENTS),
            hosted: BTreeMap::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            agents: self.agents.len(),
            connected_agents: self.agents.values().filter(|a| a.conn.is_some()).count(),
            frameworks: self.frameworks.len(),
            tasks: self.tasks.len(),
            offers: self.offers.len(),
        }
    }

    /// What was measured since the last call, for the driver's metrics.
    pub fn take_measures(&mut self) -> Vec<measures::Measure> {
        self.measures.take()
    }

    /// The last event's sequence number (0 before any).
    pub fn last_event(&self) -> u64 {
        self.events.last()
    }

    /// Events after `after`, each with who may see it, for the driver to
    /// pass to the event stream's followers.
    pub fn events_since(
        &self,
        after: u64,
    ) -> impl Iterator<Item = &(stoa_proto::operator::ClusterEvent, events::Audience)> {
        self.events.since(after)
    }

    /// The run this master leads (event ids are unique within it).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The registry as this master holds it: what is durable once the
    /// writes handed out so far are persisted.
    pub fn registry(&self) -> &Registry {
        self.registry.state()
    }

    /// What the driver must do now: the registry writes and the
    /// transmits that may depend on them. See [`Ready`].
    pub fn ready(&mut self) -> Ready {
        Ready {
            writes: self.registry.take(),
            transmits: self.outbox.drain(..).collect(),
        }
    }

    /// Releases `ready`'s transmits, to be sent in order. Call only once
    /// every write of `ready` is durable.
    pub fn advance(&mut self, ready: Ready) -> Vec<Transmit> {
        ready.transmits
    }

    /// When [`Master::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        // Ordered sets and maps, not scans: this runs after every input,
        // and a cluster has tens of thousands of agents and offers.
        let offer_expiry = self
            .config
            .offer_timeout
            .and_then(|t| self.offers.oldest().map(|made| made + t));
        self.timers
            .next()
            .into_iter()
            // An expired filter is purged by the next allocation; once one
            // is due, the filter's time no longer matters.
            .chain(
                self.allocator
                    .next_filter_expiry()
                    .filter(|_| self.allocation_due.is_none()),
            )
            .chain(offer_expiry)
            .chain(self.allocation_due)
            .chain(self.next_scheduler_heartbeat)
            .chain(self.next_instance_due())
            .min()
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.clock = now;
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Heartbeat(id) => self.heartbeat_due(now, id),
                Timer::Removal(id) => self.remove_agent(now, &id),
                Timer::Reregister => self.reregister_timed_out(),
                Timer::Failover(id) => {
                    tracing::info!(framework = %id, "failover timeout passed; tearing the framework down");
                    self.remove_framework(now, &id);
                }
            }
        }
        if self.next_scheduler_heartbeat.is_some_and(|t| t <= now) {
            let connected: Vec<ConnId> = self.frameworks.values().filter_map(|f| f.conn).collect();
            for conn in &connected {
                self.send_to_scheduler(*conn, Event::Heartbeat);
            }
            self.next_scheduler_heartbeat =
                (!connected.is_empty()).then(|| now + self.config.heartbeat_interval);
        }
        if let Some(timeout) = self.config.offer_timeout {
            let stale = match now.as_micros().checked_sub(timeout.as_micros() as u64) {
                Some(us) => self.offers.made_by(Time::from_micros(us)),
                None => Vec::new(),
            };
            for id in stale {
                self.rescind(id);
            }
        }
        // An expired filter makes its agent offerable again.
        if self
            .allocator
            .next_filter_expiry()
            .is_some_and(|t| t <= now)
        {
            self.request_allocation(now);
        }
        if self.next_instance_due().is_some_and(|t| t <= now) {
            self.check_instances(now);
            self.place_instances(now);
        }
        if self.allocation_due.is_some_and(|t| t <= now) {
            self.allocation_due = None;
            self.allocate(now);
        }
    }

    pub fn handle_connected(&mut self, _now: Time, conn: ConnId, channel: Channel) {
        self.connections.opened(conn, channel);
    }

    /// `conn`'s peer proved it is `principal` (the name in its client
    /// certificate). A framework subscribing on it is that principal.
    pub fn handle_authenticated(&mut self, conn: ConnId, principal: String) {
        self.connections.set_principal(conn, Some(principal));
    }

    pub fn handle_disconnected(&mut self, now: Time, conn: ConnId) {
        self.clock = now;
        match self.connections.close(conn) {
            Some(Peer::Agent(id)) => self.agent_lost(now, &id),
            Some(Peer::Framework(id)) => self.scheduler_lost(now, &id),
            Some(Peer::Pending(_)) | None => {}
        }
    }

    /// A message from an agent. `conn` must have been opened on
    /// [`Channel::Agent`].
    pub fn handle_agent_message(&mut self, now: Time, conn: ConnId, msg: AgentToMaster) {
        self.clock = now;
        let peer = self.connections.peer(conn).cloned();
        match (peer, msg) {
            (
                Some(Peer::Pending(Channel::Agent)),
                AgentToMaster::Register {
                    info,
                    agent_id,
                    tasks,
                },
            ) => self.register_agent(now, conn, info, agent_id, tasks),
            (Some(Peer::Agent(id)), AgentToMaster::Heartbeat) => self.heard_from(&id, now),
            (
                Some(Peer::Agent(agent_id)),
                AgentToMaster::StatusUpdate {
                    framework_id,
                    update_id,
                    status,
                },
            ) => {
                self.heard_from(&agent_id, now);
                self.status_update(now, conn, agent_id, framework_id, update_id, status);
            }
            (
                Some(Peer::Agent(_)),
                AgentToMaster::FrameworkMessage {
                    framework_id,
                    task_id,
                    data,
                },
            ) => {
                let Some(agent_id) = self.runs_on(conn, &framework_id, &task_id) else {
                    return;
                };
                if let Some(why) = message_too_large(&data) {
                    tracing::warn!(%agent_id, task = %task_id, "dropping a task's message: {why}");
                    return;
                }
                let from = Some(MessageSource { agent_id, task_id });
                self.send_to_framework(&framework_id, Event::Message { from, data });
            }
            (
                Some(Peer::Agent(_)),
                AgentToMaster::Undelivered {
                    framework_id,
                    task_id,
                    message,
                },
            ) => {
                if self.runs_on(conn, &framework_id, &task_id).is_some() {
                    let message = format!("MESSAGE to task {task_id} not delivered: {message}");
                    let code = Refusal::Unavailable;
                    self.send_to_framework(&framework_id, Event::Error { code, message });
                }
            }
            (Some(Peer::Agent(_)), AgentToMaster::Register { .. }) => {
                self.outbox.push_back(Transmit::Close(
                    conn,
                    "already registered on this connection".into(),
                ));
            }
            (_, _) => {
                self.outbox
                    .push_back(Transmit::Close(conn, "an agent must register first".into()));
            }
        }
    }

    /// A call from a scheduler. `conn` must have been opened on
    /// [`Channel::Scheduler`].
    pub fn handle_scheduler_call(&mut self, now: Time, conn: ConnId, call: Call) {
        self.clock = now;
        let peer = self.connections.peer(conn).cloned();
        match (peer, call) {
            (Some(Peer::Pending(Channel::Scheduler)), Call::Subscribe { framework }) => {
                self.subscribe(now, conn, framework, false)
            }
            (
                Some(Peer::Pending(Channel::Scheduler)),
                Call::SubscribeHosted {
                    framework,
                    task_id,
                    token,
                },
            ) => self.subscribe_hosted(now, conn, framework, task_id, token),
            (Some(Peer::Pending(Channel::Scheduler)), Call::Submit { submission }) => {
                self.submit(now, conn, *submission)
            }
            (Some(Peer::Pending(Channel::Scheduler)), Call::SendMessage { framework_id, data }) => {
                self.send_message(conn, &framework_id, data)
            }
            (
                Some(Peer::Framework(_)),
                Call::Subscribe { .. }
                | Call::SubscribeHosted { .. }
                | Call::Submit { .. }
                | Call::SendMessage { .. },
            ) => {
                self.send_to_scheduler(
                    conn,
                    Event::Error {
                        code: Refusal::OutOfOrder,
                        message: "already subscribed on this connection".into(),
                    },
                );
            }
            (Some(Peer::Framework(fw)), call) => match call {
                Call::Accept {
                    offer_ids,
                    operations,
                    refuse_ms,
                } => self.accept(now, &fw, offer_ids, operations, refuse_ms),
                Call::Decline {
                    offer_ids,
                    refuse_ms,
                } => self.decline(now, &fw, offer_ids, refuse_ms),
                Call::Kill { task_id } => self.kill(&fw, task_id),
                Call::Suppress => self.allocator.suppress(&fw),
                Call::Revive => {
                    self.allocator.revive(&fw);
                    self.request_allocation(now);
                }
                Call::Acknowledge {
                    agent_id,
                    task_id,
                    update_id,
                } => self.acknowledge(&fw, agent_id, task_id, update_id),
                Call::Teardown => {
                    self.remove_framework(now, &fw);
                    self.outbox
                        .push_back(Transmit::Close(conn, "framework torn down".into()));
                }
                Call::Reconcile { tasks } => self.reconcile(&fw, tasks),
                Call::Message { task_id, data } => self.message_task(&fw, task_id, data),
                Call::UpdateFramework { framework } => {
                    self.update_framework(now, conn, &fw, framework)
                }
                Call::Subscribe { .. }
                | Call::SubscribeHosted { .. }
                | Call::Submit { .. }
                | Call::SendMessage { .. } => {}
            },
            (_, _) => {
                self.refuse_scheduler(
                    conn,
                    Refusal::OutOfOrder,
                    "the first call must be SUBSCRIBE, SUBMIT or SEND_MESSAGE".into(),
                );
            }
        }
    }

    fn fresh_id(&mut self, kind: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("{}-{kind}{n}", self.instance)
    }

    /// Tells a scheduler why it is refused, then closes its connection.
    fn refuse_scheduler(&mut self, conn: ConnId, code: Refusal, message: String) {
        self.send_to_scheduler(
            conn,
            Event::Error {
                code,
                message: message.clone(),
            },
        );
        self.outbox.push_back(Transmit::Close(conn, message));
    }

    fn send_to_scheduler(&mut self, conn: ConnId, event: Event) {
        self.outbox.push_back(Transmit::ToScheduler(conn, event));
    }

    /// Sends an event to a framework's scheduler if it is connected.
    fn send_to_framework(&mut self, fw: &FrameworkId, event: Event) {
        if let Event::Update { status, .. } = &event {
            if status.state.is_terminal() {
                self.measures.push(measures::Measure::TaskEnded {
                    state: status.state,
                    reason: status.reason.map(|r| r.to_string()),
                });
            }
            self.event_of(
                fw,
                EventKind::TaskUpdated {
                    framework_id: fw.clone(),
                    task_id: status.task_id.clone(),
                    agent_id: status.agent_id.clone(),
                    state: status.state,
                    reason: status.reason.map(|r| r.to_string()),
                },
            );
        }
        if let Some(conn) = self.frameworks.get(fw).and_then(|f| f.conn) {
            self.send_to_scheduler(conn, event);
        }
    }

    /// Records an event that the operator sees.
    fn event(&mut self, kind: EventKind) {
        self.events
            .push(self.clock, events::Audience::Operator, kind);
    }

    /// Records an event about framework `fw`, seen by the operator and
    /// by the framework's principal.
    fn event_of(&mut self, fw: &FrameworkId, kind: EventKind) {
        let principal = self
            .frameworks
            .get(fw)
            .and_then(|f| f.info.principal.clone());
        self.events
            .push(self.clock, events::Audience::Principal(principal), kind);
    }

    fn request_allocation(&mut self, now: Time) {
        if self.allocation_due.is_none() {
            self.allocation_due = Some(now + self.config.allocation_delay);
        }
    }
}

fn fw_failover_now(fw: Option<&FrameworkEntry>) -> bool {
    fw.is_some_and(|f| f.info.failover_timeout_ms == 0)
}

fn check_hostname(h: &str) -> Result<(), String> {
    if h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "invalid hostname {h:?}: give 1-253 printable characters without spaces"
        ));
    }
    Ok(())
}

fn quota_of(spec: &QuotaSpec) -> Result<Quota, String> {
    let limit = spec
        .limit
        .as_deref()
        .map(|l| {
            l.parse::<Limit>()
                .map_err(|e| format!("invalid limit {l:?}: {e}"))
        })
        .transpose()?;
    Ok(Quota {
        guarantee: spec.guarantee.clone(),
        limit,
    })
}

/// Checks what a scheduler subscribed with, and turns it into what the
/// allocator needs.
fn check_framework(info: &FrameworkInfo) -> Result<FrameworkSpec, String> {
    if info.name.is_empty() || info.name.len() > 256 {
        return Err("a framework needs a name of 1-256 bytes".into());
    }
    if info.min_allocatable.len() > 16 || info.constraints.len() > 64 {
        return Err("at most 16 minimum bundles and 64 constraints".into());
    }
    let constraints = info
        .constraints
        .iter()
        .map(|c| match c {
            OfferConstraint::Exists { attribute } => Ok(Constraint::Exists(attribute.clone())),
            OfferConstraint::Equals { attribute, value } => {
                Ok(Constraint::Equals(attribute.clone(), value.clone()))
            }
            OfferConstraint::NotEquals { attribute, value } => {
                Ok(Constraint::NotEquals(attribute.clone(), value.clone()))
            }
            OfferConstraint::Matches { attribute, pattern } if pattern.len() <= 1024 => {
                Constraint::matches(attribute, pattern).map_err(|e| {
                    format!("constraint on {attribute}: invalid regular expression: {e}")
                })
            }
            OfferConstraint::Matches { attribute, .. } => Err(format!(
                "constraint on {attribute}: pattern longer than 1024 bytes"
            )),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let min_allocatable =
        (!info.min_allocatable.is_empty()).then(|| MinAllocatable::any_of(&info.min_allocatable));
    Ok(FrameworkSpec {
        role: info.role.clone(),
        min_allocatable,
        constraints,
    })
}

#[cfg(test)]
mod tests;
