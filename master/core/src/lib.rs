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
pub mod hosted;
mod index;
mod offers;
pub mod registry;
mod tasks;

use offers::{OfferEntry, Offers};
use tasks::{TaskEntry, Tasks};

use registry::{Journal, QuotaSpec, Registry, Write};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use stoa_allocator::{
    Allocation, Allocator, AllocatorConfig, Constraint, FrameworkSpec, MinAllocatable,
};
use stoa_allocator::{Limit, Quota};
use stoa_proto::messages::{OfferConstraint, Refusal, RunningTask, message_too_large};
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
            allocation_delay: Duration::ZERO,
            default_refuse: Duration::from_secs(5),
            offer_timeout: None,
            allocator: AllocatorConfig::default(),
            acls: acl::Acls::default(),
            secret: [0; 32],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// Connected, first message not yet seen.
    Pending(Channel),
    Agent,
    Framework,
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
    peers: HashMap<ConnId, Peer>,
    /// The principal each connection authenticated as (its certificate).
    principals: HashMap<ConnId, String>,
    agent_of: HashMap<ConnId, AgentId>,
    framework_of: HashMap<ConnId, FrameworkId>,
    agents: BTreeMap<AgentId, AgentEntry>,
    frameworks: BTreeMap<FrameworkId, FrameworkEntry>,
    tasks: Tasks,
    offers: Offers,
    /// Who holds what; owns filters and fairness.
    allocator: Allocator,
    registry: Journal,
    /// When each connected agent is due to be heard from.
    heartbeat_deadlines: std::collections::BTreeSet<(Time, AgentId)>,
    /// When each unreachable agent is due to be removed.
    removal_deadlines: std::collections::BTreeSet<(Time, AgentId)>,
    /// When each framework whose scheduler is away is due to be torn down.
    failover_deadlines: std::collections::BTreeSet<(Time, FrameworkId)>,
    /// Agents admitted before this master started that have not registered
    /// with it yet nor been removed. While there are any, the master may
    /// not know a task that runs, so it holds back answering UNKNOWN.
    recovering: std::collections::BTreeSet<AgentId>,
    /// Explicit reconciliations of tasks unknown while `recovering`,
    /// answered once it is empty.
    deferred_reconciles: Vec<(FrameworkId, TaskId)>,
    /// How recent tasks ended, for reconciliation after their end was
    /// acknowledged and the task forgotten; newest last.
    ended: VecDeque<(FrameworkId, TaskId)>,
    ended_status: HashMap<(FrameworkId, TaskId), TaskStatus>,
    allocation_due: Option<Time>,
    outbox: VecDeque<Transmit>,
    /// Where recent tasks ran, ended ones included, newest last: their
    /// sandboxes and logs outlive them on the agent.
    placements: VecDeque<((FrameworkId, TaskId), AgentId)>,
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
            peers: HashMap::new(),
            principals: HashMap::new(),
            agent_of: HashMap::new(),
            framework_of: HashMap::new(),
            agents: BTreeMap::new(),
            frameworks: BTreeMap::new(),
            tasks: Tasks::default(),
            offers: Offers::default(),
            registry: Journal::default(),
            heartbeat_deadlines: std::collections::BTreeSet::new(),
            removal_deadlines: std::collections::BTreeSet::new(),
            failover_deadlines: std::collections::BTreeSet::new(),
            recovering: std::collections::BTreeSet::new(),
            deferred_reconciles: Vec::new(),
            ended: VecDeque::new(),
            ended_status: HashMap::new(),
            next_scheduler_heartbeat: None,
            allocation_due: None,
            outbox: VecDeque::new(),
            placements: VecDeque::new(),
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

    /// Takes back what a previous run persisted. Call once, before any
    /// other input. Entries the allocator refuses are logged and dropped.
    ///
    /// Admitted agents come back unreachable until they register again;
    /// frameworks come back with their schedulers away, their failover
    /// timeouts counted from `now`.
    pub fn restore(&mut self, now: Time, registry: Registry) {
        for (role, weight) in &registry.weights {
            if let Err(e) = self.allocator.set_weight(role, *weight) {
                tracing::error!(%role, "registry holds a bad weight: {e}");
            }
        }
        for (role, spec) in &registry.quotas {
            if let Err(e) = quota_of(spec)
                .and_then(|q| self.allocator.set_quota(role, q).map_err(|e| e.to_string()))
            {
                tracing::error!(%role, "registry holds a bad quota: {e}");
            }
        }
        for (id, info) in &registry.frameworks {
            if registry.hosted.contains_key(id) {
                continue;
            }
            match check_framework(info) {
                Ok(spec) => {
                    self.allocator.add_framework(id.clone(), spec);
                    self.allocator.set_framework_active(id, false);
                    self.frameworks.insert(
                        id.clone(),
                        FrameworkEntry {
                            conn: None,
                            info: info.clone(),
                            disconnected_at: Some(now),
                        },
                    );
                    self.arm_failover(id);
                }
                Err(e) => tracing::error!(framework = %id, "registry holds a bad framework: {e}"),
            }
        }
        for (id, info) in &registry.agents {
            let dynamic = registry.reservations.get(id).cloned().unwrap_or_default();
            if self.add_agent_to_allocator(id, info, &dynamic).is_err() {
                continue;
            }
            self.allocator.set_agent_active(id, false);
            self.agents.insert(
                id.clone(),
                AgentEntry {
                    conn: None,
                    info: info.clone(),
                    last_heartbeat: now,
                    unreachable_since: Some(now),
                },
            );
            self.removal_deadlines
                .insert((now + self.config.agent_removal_timeout, id.clone()));
            self.recovering.insert(id.clone());
        }
        self.registry = Journal::restore(registry);
        self.restore_hosted();
    }

    /// Adds an agent's resources, static and dynamic reservations to the
    /// allocator.
    fn add_agent_to_allocator(
        &mut self,
        id: &AgentId,
        info: &AgentInfo,
        dynamic: &BTreeMap<Role, Resources>,
    ) -> Result<(), String> {
        let reserved = info.reservations.iter().cloned().collect();
        self.allocator
            .add_agent(
                id.clone(),
                info.resources.clone(),
                reserved,
                info.attributes.clone(),
            )
            .map_err(|e| format!("invalid resources: {e}"))?;
        // Dynamic reservations made before a master restart.
        for (role, r) in dynamic {
            if let Err(e) = self.allocator.reserve(id, role, r) {
                tracing::error!(agent = %id, %role, "cannot restore a dynamic reservation: {e}");
            }
        }
        Ok(())
    }

    /// Checks that the allocator's books balance with the master's: on
    /// every agent, what offers and live tasks hold plus what is free is
    /// the agent's total. For the simulator and tests; walks the cluster.
    pub fn check_books(&self) -> Result<(), String> {
        let mut held: BTreeMap<&AgentId, Resources> = BTreeMap::new();
        let offers = self.offers.values().map(|o| {
            (
                &o.offer.agent_id,
                o.allocation.total(),
                format!("offer {}", o.offer.id),
            )
        });
        let tasks = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.state.is_terminal())
            .map(|((f, id), t)| (&t.agent, t.allocation.total(), format!("task {f}/{id}")));
        for (agent, r, what) in offers.chain(tasks) {
            let sum = held.entry(agent).or_default();
            *sum = sum
                .checked_add(&r)
                .ok_or_else(|| format!("agent {agent}: {what} overflows the sum"))?;
        }
        for id in self.agents.keys() {
            let Some((total, free)) = self.allocator.agent_books(id) else {
                return Err(format!(
                    "agent {id} is in the master's books but not the allocator's"
                ));
            };
            let used = held.remove(id).unwrap_or_default();
            let Some(sum) = used.checked_add(&free) else {
                return Err(format!(
                    "agent {id}: held {used} plus free {free} overflows"
                ));
            };
            if !(sum.contains(&total) && total.contains(&sum)) {
                return Err(format!(
                    "agent {id} has {total}; offers and live tasks hold {used} and {free} is free"
                ));
            }
        }
        if let Some((agent, r)) = held.into_iter().next() {
            return Err(format!(
                "offers or tasks hold {r} on agent {agent}, which the master does not know"
            ));
        }
        Ok(())
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

    /// An operator's request. The reply is only to be sent after the
    /// writes of the next [`Master::ready`] are durable.
    /// The framework of `task` and the connection of the agent it runs (or
    /// ran) on, for reading its logs. `framework` picks one when several
    /// frameworks used the same task id.
    pub fn locate_task(
        &self,
        task: &TaskId,
        framework: Option<&FrameworkId>,
    ) -> Result<(FrameworkId, ConnId), String> {
        let matches =
            |(f, t): &(FrameworkId, TaskId)| t == task && framework.is_none_or(|w| w == f);
        let found = self
            .placements
            .iter()
            .rev()
            .find(|(key, _)| matches(key))
            .map(|((f, _), a)| (f.clone(), a.clone()))
            .or_else(|| {
                self.tasks
                    .iter()
                    .find(|(key, _)| matches(key))
                    .map(|((f, _), t)| (f.clone(), t.agent.clone()))
            });
        let Some((framework_id, agent)) = found else {
            return Err(format!("no task {task} is known to this master"));
        };
        match self.agents.get(&agent).and_then(|a| a.conn) {
            Some(conn) => Ok((framework_id, conn)),
            None => Err(format!(
                "task {task} ran on agent {agent}, which is not connected"
            )),
        }
    }

    /// Every framework, as `stoa frameworks` shows it.
    pub fn framework_list(&self) -> Vec<stoa_proto::operator::FrameworkStatus> {
        let running = |fw: &FrameworkId| {
            self.tasks
                .of_framework(fw, |t| !t.state.is_terminal())
                .iter()
                .filter(|(_, task)| !hosted::is_instance(task))
                .count()
        };
        self.frameworks
            .iter()
            .map(|(id, f)| stoa_proto::operator::FrameworkStatus {
                id: id.clone(),
                name: f.info.name.clone(),
                role: f.info.role.clone(),
                principal: f.info.principal.clone(),
                connected: f.conn.is_some(),
                tasks: running(id),
                hosted: self
                    .hosted
                    .get(id)
                    .map(|h| stoa_proto::operator::HostedStatus {
                        instance: h.record.current.clone(),
                        launched: h.record.launched,
                    }),
            })
            .collect()
    }

    fn remember_placement(&mut self, key: &(FrameworkId, TaskId), agent: &AgentId) {
        if self.placements.len() >= MAX_PLACEMENTS {
            self.placements.pop_front();
        }
        self.placements.push_back((key.clone(), agent.clone()));
    }

    pub fn handle_operator_call(&mut self, now: Time, call: OperatorCall) -> OperatorReply {
        let result = match call {
            OperatorCall::SetWeight { role, weight } => self
                .allocator
                .set_weight(&role, weight)
                .map_err(|e| e.to_string())
                .map(|()| self.registry.write(Write::Weight(role, Some(weight)))),
            OperatorCall::SetQuota {
                role,
                guarantee,
                limit,
            } => {
                let spec = QuotaSpec { guarantee, limit };
                quota_of(&spec)
                    .and_then(|q| {
                        self.allocator
                            .set_quota(&role, q)
                            .map_err(|e| e.to_string())
                    })
                    .map(|()| {
                        let spec = (spec != QuotaSpec::default()).then_some(spec);
                        self.registry.write(Write::Quota(role, spec));
                    })
            }
            OperatorCall::GetRoles => return OperatorReply::Roles(self.roles()),
            OperatorCall::Reserve {
                agent,
                role,
                resources,
            } => {
                self.rescind_agent_offers(&agent);
                self.allocator
                    .reserve_free(&agent, &role, &resources)
                    .map_err(|e| e.to_string())
                    .map(|()| {
                        self.dynamic_reservation(&agent, &role, &resources, true);
                    })
            }
            OperatorCall::Unreserve {
                agent,
                role,
                resources,
            } => {
                let dynamic = self
                    .registry
                    .state()
                    .reservations
                    .get(&agent)
                    .and_then(|r| r.get(&role))
                    .is_some_and(|r| r.contains(&resources));
                if dynamic {
                    self.rescind_agent_offers(&agent);
                    self.allocator
                        .unreserve_free(&agent, &role, &resources)
                        .map_err(|e| e.to_string())
                        .map(|()| {
                            self.dynamic_reservation(&agent, &role, &resources, false);
                        })
                } else {
                    Err(format!(
                        "{agent} has no dynamic reservation of {resources} for {role} (static reservations change with the agent's --resources)"
                    ))
                }
            }
            OperatorCall::GetFrameworks => return OperatorReply::Frameworks(self.framework_list()),
            OperatorCall::Teardown { framework_id } => {
                if self.frameworks.contains_key(&framework_id) {
                    tracing::info!(framework = %framework_id, "an operator tore the framework down");
                    if let Some(conn) = self.frameworks.get(&framework_id).and_then(|f| f.conn) {
                        self.refuse_scheduler(
                            conn,
                            Refusal::TornDown,
                            "an operator tore the framework down".into(),
                        );
                        self.handle_disconnected(now, conn);
                    }
                    self.remove_framework(now, &framework_id);
                    Ok(())
                } else {
                    Err(format!(
                        "no framework {framework_id} is known to this master"
                    ))
                }
            }
            OperatorCall::ReadLog { .. } => {
                return OperatorReply::Refused {
                    message: "log reads are served by the master's driver, not its core".into(),
                };
            }
        };
        match result {
            Ok(()) => {
                self.request_allocation(now);
                OperatorReply::Done
            }
            Err(message) => OperatorReply::Refused { message },
        }
    }

    /// Every role with a weight, a quota or a framework, with what it holds.
    pub fn roles(&self) -> Vec<RoleStatus> {
        let mut roles: std::collections::BTreeSet<Role> =
            self.registry.state().weights.keys().cloned().collect();
        roles.extend(self.registry.state().quotas.keys().cloned());
        roles.extend(self.frameworks.values().map(|f| f.info.role.clone()));
        let mut reserved: BTreeMap<Role, Vec<(AgentId, Resources)>> = BTreeMap::new();
        for (agent, a) in &self.agents {
            for (role, r) in &a.info.reservations {
                reserved
                    .entry(role.clone())
                    .or_default()
                    .push((agent.clone(), r.clone()));
            }
        }
        for (agent, by_role) in &self.registry.state().reservations {
            for (role, r) in by_role {
                reserved
                    .entry(role.clone())
                    .or_default()
                    .push((agent.clone(), r.clone()));
            }
        }
        roles.extend(reserved.keys().cloned());
        roles
            .into_iter()
            .map(|role| {
                let registry = self.registry.state();
                let quota = registry.quotas.get(&role).cloned().unwrap_or_default();
                RoleStatus {
                    weight: registry.weights.get(&role).copied().unwrap_or(1.0),
                    guarantee: quota.guarantee,
                    limit: quota.limit,
                    allocated: self
                        .allocator
                        .role_allocation(&role)
                        .iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                    frameworks: self
                        .frameworks
                        .values()
                        .filter(|f| role.contains(&f.info.role))
                        .count(),
                    reservations: reserved.remove(&role).unwrap_or_default(),
                    role,
                }
            })
            .collect()
    }

    /// Records a dynamic reservation change for the registry.
    fn dynamic_reservation(
        &mut self,
        agent: &AgentId,
        role: &Role,
        resources: &Resources,
        add: bool,
    ) {
        let mut roles = self
            .registry
            .state()
            .reservations
            .get(agent)
            .cloned()
            .unwrap_or_default();
        let current = roles.get(role).cloned().unwrap_or_default();
        let next = if add {
            current.checked_add(resources)
        } else {
            current.checked_sub(resources)
        };
        match next {
            Some(r) if r.is_empty() => {
                roles.remove(role);
            }
            Some(r) => {
                roles.insert(role.clone(), r);
            }
            None => tracing::error!(%agent, %role, "dynamic reservation books out of step"),
        }
        self.registry
            .write(Write::Reservations(agent.clone(), roles));
    }

    /// When [`Master::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        // Ordered sets and maps, not scans: this runs after every input,
        // and a cluster has tens of thousands of agents and offers.
        let agent_deadlines = self
            .heartbeat_deadlines
            .first()
            .into_iter()
            .chain(self.removal_deadlines.first())
            .map(|(t, _)| *t)
            .min();
        let failovers = self.failover_deadlines.first().map(|(t, _)| *t);
        let offer_expiry = self
            .config
            .offer_timeout
            .and_then(|t| self.offers.oldest().map(|made| made + t));
        agent_deadlines
            .into_iter()
            .chain(failovers)
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
        let silent: Vec<AgentId> = self
            .heartbeat_deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in silent {
            if let Some(conn) = self.agents.get(&id).and_then(|a| a.conn) {
                tracing::warn!(agent = %id, "agent missed its heartbeats; marking it unreachable");
                self.outbox
                    .push_back(Transmit::Close(conn, "missed heartbeats".into()));
                self.handle_disconnected(now, conn);
            }
        }
        let removed: Vec<AgentId> = self
            .removal_deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in removed {
            if let Some(since) = self.agents.get(&id).and_then(|a| a.unreachable_since) {
                self.removal_deadlines
                    .remove(&(since + self.config.agent_removal_timeout, id.clone()));
            }
            self.remove_agent(now, &id);
        }
        let expired: Vec<FrameworkId> = self
            .failover_deadlines
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in expired {
            tracing::info!(framework = %id, "failover timeout passed; tearing the framework down");
            self.remove_framework(now, &id);
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
        self.peers.insert(conn, Peer::Pending(channel));
    }

    /// `conn`'s peer proved it is `principal` (the name in its client
    /// certificate). A framework subscribing on it is that principal.
    pub fn handle_authenticated(&mut self, conn: ConnId, principal: String) {
        self.principals.insert(conn, principal);
    }

    pub fn handle_disconnected(&mut self, now: Time, conn: ConnId) {
        self.principals.remove(&conn);
        match self.peers.remove(&conn) {
            Some(Peer::Agent) => {
                if let Some(id) = self.agent_of.remove(&conn) {
                    self.agent_lost(now, &id);
                }
            }
            Some(Peer::Framework) => {
                if let Some(id) = self.framework_of.remove(&conn) {
                    self.scheduler_lost(now, &id);
                }
            }
            Some(Peer::Pending(_)) | None => {}
        }
    }

    /// A message from an agent. `conn` must have been opened on
    /// [`Channel::Agent`].
    pub fn handle_agent_message(&mut self, now: Time, conn: ConnId, msg: AgentToMaster) {
        let peer = self.peers.get(&conn).copied();
        match (peer, msg) {
            (
                Some(Peer::Pending(Channel::Agent)),
                AgentToMaster::Register {
                    info,
                    agent_id,
                    tasks,
                },
            ) => self.register_agent(now, conn, info, agent_id, tasks),
            (Some(Peer::Agent), AgentToMaster::Heartbeat) => {
                if let Some(id) = self.agent_of.get(&conn).cloned() {
                    self.heard_from(&id, now);
                }
            }
            (
                Some(Peer::Agent),
                AgentToMaster::StatusUpdate {
                    framework_id,
                    update_id,
                    status,
                },
            ) => {
                if let Some(agent_id) = self.agent_of.get(&conn).cloned() {
                    self.heard_from(&agent_id, now);
                    self.status_update(now, conn, agent_id, framework_id, update_id, status);
                }
            }
            (
                Some(Peer::Agent),
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
                Some(Peer::Agent),
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
            (Some(Peer::Agent), AgentToMaster::Register { .. }) => {
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
        let peer = self.peers.get(&conn).copied();
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
                Some(Peer::Framework),
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
            (Some(Peer::Framework), call) => {
                let Some(fw) = self.framework_of.get(&conn).cloned() else {
                    return;
                };
                match call {
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
                }
            }
            (_, _) => {
                self.refuse_scheduler(
                    conn,
                    Refusal::OutOfOrder,
                    "the first call must be SUBSCRIBE, SUBMIT or SEND_MESSAGE".into(),
                );
            }
        }
    }

    /// SEND_MESSAGE: bytes for a framework's scheduler, from its own
    /// principal. Answered on `conn`, which then closes.
    fn send_message(&mut self, conn: ConnId, fw: &FrameworkId, data: Vec<u8>) {
        let principal = self.principals.get(&conn);
        let refusal = match self.frameworks.get(fw) {
            None => Some((
                Refusal::UnknownFramework,
                format!("no framework {fw} is known to this master"),
            )),
            Some(f) if f.info.principal.as_ref() != principal => Some((
                Refusal::NotAuthorized,
                format!(
                    "framework {fw} belongs to principal {}",
                    f.info.principal.as_deref().unwrap_or("(none)")
                ),
            )),
            Some(f) if f.conn.is_none() => Some((
                Refusal::Unavailable,
                format!("framework {fw} has no scheduler connected now; try again shortly"),
            )),
            Some(_) => message_too_large(&data).map(|why| (Refusal::Invalid, why)),
        };
        match refusal {
            Some((code, message)) => {
                self.refuse_scheduler(conn, code, format!("SEND_MESSAGE refused: {message}"))
            }
            None => {
                self.send_to_framework(fw, Event::Message { from: None, data });
                self.send_to_scheduler(conn, Event::Delivered);
                self.outbox
                    .push_back(Transmit::Close(conn, "delivered".into()));
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
        if let Some(conn) = self.frameworks.get(fw).and_then(|f| f.conn) {
            self.send_to_scheduler(conn, event);
        }
    }

    fn request_allocation(&mut self, now: Time) {
        if self.allocation_due.is_none() {
            self.allocation_due = Some(now + self.config.allocation_delay);
        }
    }

    fn register_agent(
        &mut self,
        now: Time,
        conn: ConnId,
        info: AgentInfo,
        agent_id: Option<AgentId>,
        tasks: Vec<RunningTask>,
    ) {
        if let Err(message) = check_hostname(&info.hostname) {
            self.outbox.push_back(Transmit::ToAgent(
                conn,
                MasterToAgent::Refused {
                    message: message.clone(),
                },
            ));
            self.outbox.push_back(Transmit::Close(conn, message));
            return;
        }
        // A removed agent starts anew under a new id; what it reports
        // running belongs to its old self, whose tasks are GONE: it kills
        // them when it sees its new id.
        let (agent_id, tasks) = match agent_id {
            Some(id) if self.registry.state().removed_agents.contains_key(&id) => {
                tracing::warn!(agent = %id, "a removed agent came back; it registers anew and kills what it ran");
                (None, Vec::new())
            }
            other => (other, tasks),
        };
        let id = match agent_id {
            Some(id) => id,
            None => match AgentId::new(self.fresh_id("a")) {
                Ok(id) => id,
                Err(e) => {
                    self.outbox
                        .push_back(Transmit::Close(conn, format!("cannot name agent: {e}")));
                    return;
                }
            },
        };
        // A second connection for the same agent replaces the first.
        if let Some(old) = self.agents.get(&id).and_then(|a| a.conn) {
            self.peers.remove(&old);
            self.agent_of.remove(&old);
            self.outbox.push_back(Transmit::Close(
                old,
                "agent registered on a new connection".into(),
            ));
        }
        self.peers.insert(conn, Peer::Agent);
        self.agent_of.insert(conn, id.clone());
        if self.agents.contains_key(&id) {
            self.allocator.set_agent_active(&id, true);
        } else {
            let dynamic =
                (self.registry.state().reservations.get(&id).cloned()).unwrap_or_default();
            if let Err(message) = self.add_agent_to_allocator(&id, &info, &dynamic) {
                self.outbox.push_back(Transmit::ToAgent(
                    conn,
                    MasterToAgent::Refused {
                        message: message.clone(),
                    },
                ));
                self.outbox.push_back(Transmit::Close(conn, message));
                self.peers.remove(&conn);
                self.agent_of.remove(&conn);
                return;
            }
        }
        if self.registry.state().agents.get(&id) != Some(&info) {
            self.registry
                .write(Write::Agent(id.clone(), Some(Box::new(info.clone()))));
        }
        let entry = self.agents.entry(id.clone()).or_insert_with(|| AgentEntry {
            conn: None,
            info: info.clone(),
            last_heartbeat: now,
            unreachable_since: None,
        });
        if let Some(since) = entry.unreachable_since.take() {
            self.removal_deadlines
                .remove(&(since + self.config.agent_removal_timeout, id.clone()));
        }
        entry.conn = Some(conn);
        entry.info = info;
        self.heard_from(&id, now);
        tracing::info!(agent = %id, hostname = %self.agents[&id].info.hostname, resources = %self.agents[&id].info.resources, "agent registered");
        self.outbox.push_back(Transmit::ToAgent(
            conn,
            MasterToAgent::Registered {
                agent_id: id.clone(),
                heartbeat_interval_ms: u64::try_from(self.config.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
                removal_timeout_ms: u64::try_from(self.config.agent_removal_timeout.as_millis())
                    .unwrap_or(u64::MAX),
            },
        ));
        self.reconcile_agent_tasks(now, conn, &id, tasks);
        if self.recovering.remove(&id) {
            self.recovered_one();
        }
        self.check_instances(now);
        self.request_allocation(now);
    }

    /// An agent admitted before this master started registered again or
    /// was removed: once none are left, reconciliations held back get
    /// their answers.
    fn recovered_one(&mut self) {
        if !self.recovering.is_empty() {
            return;
        }
        tracing::info!("every agent admitted before this master started is back or removed");
        for (fw, task) in std::mem::take(&mut self.deferred_reconciles) {
            let status = self.task_status(&fw, task);
            self.send_to_framework(&fw, Event::Update { status, ack: None });
        }
    }

    /// Brings the books for `agent` in line with what it reports running.
    fn reconcile_agent_tasks(
        &mut self,
        now: Time,
        conn: ConnId,
        agent: &AgentId,
        reported: Vec<RunningTask>,
    ) {
        let known = self.tasks.on_agent(agent, |t| !t.state.is_terminal());
        for key in known {
            if !reported
                .iter()
                .any(|r| r.framework_id == key.0 && r.task_id == key.1)
            {
                let status = TaskStatus::new(key.1.clone(), TaskState::Lost)
                    .because(
                        Reason::AgentRestarted,
                        "the agent came back without this task",
                    )
                    .on(agent.clone());
                self.release_task(&key, TaskState::Lost, None);
                if hosted::is_instance(&key.1) {
                    self.instance_update(now, &key.0, &key.1, TaskState::Lost);
                    continue;
                }
                self.tasks.remove(&key);
                self.send_to_framework(&key.0, Event::Update { status, ack: None });
            }
        }
        for r in reported {
            // An ended task's update follows, resent until acknowledged; it
            // holds nothing meanwhile, but reconciliation must not call it
            // unknown.
            if r.state.is_terminal() {
                let key = (r.framework_id.clone(), r.task_id.clone());
                if !self.tasks.contains_key(&key) {
                    let status = TaskStatus::new(r.task_id, r.state).on(agent.clone());
                    self.remember_end(&key, &status);
                }
                continue;
            }
            if hosted::is_instance(&r.task_id) {
                self.reported_instance(agent, &r);
                continue;
            }
            let key = (r.framework_id.clone(), r.task_id.clone());
            // Killed while out of reach, or of a framework torn down
            // meanwhile: the kill is carried out now.
            let doomed = self
                .registry
                .state()
                .torn_down
                .contains_key(&r.framework_id)
                || self.tasks.get(&key).is_some_and(|t| t.kill_requested);
            if self.book_reported(agent, &r) {
                let status = TaskStatus::new(r.task_id.clone(), r.state).on(agent.clone());
                self.send_to_framework(&r.framework_id, Event::Update { status, ack: None });
            }
            if doomed {
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.kill_requested = true;
                }
                self.outbox.push_back(Transmit::ToAgent(
                    conn,
                    MasterToAgent::KillTask {
                        framework_id: r.framework_id,
                        task_id: r.task_id,
                    },
                ));
            }
        }
    }

    /// Takes a task a registering agent reports into the books: one that
    /// was unreachable is reachable again (true is returned, for its
    /// framework to hear it); one this master does not know (from before
    /// it started) is booked with what it holds.
    fn book_reported(&mut self, agent: &AgentId, r: &RunningTask) -> bool {
        let key = (r.framework_id.clone(), r.task_id.clone());
        if let Some(task) = self.tasks.get_mut(&key) {
            let back = task.state == TaskState::Unreachable;
            if back {
                task.state = r.state;
            }
            return back;
        }
        let allocation = self.claim_running(agent, r);
        self.remember_placement(&key, agent);
        self.tasks.insert(
            key,
            TaskEntry {
                agent: agent.clone(),
                allocation,
                state: r.state,
                revocable: false,
                preempting: false,
                terminal_update: None,
                kill_requested: false,
            },
        );
        false
    }

    /// Books a task reported by a re-registering agent as held, from the
    /// agent's unreserved resources or else one of its reservations. A
    /// framework not (yet) subscribed is held for as an inactive one, so the
    /// task's resources are not offered to anyone else meanwhile.
    fn claim_running(&mut self, agent: &AgentId, task: &RunningTask) -> Allocation {
        // A framework the registry knows is in the allocator under its own
        // role (restored inactive), so the task counts against that role's
        // share, quota and limit. Only a framework nobody knows (torn down
        // long ago, or from a registry that did not keep frameworks) is
        // held for under a placeholder role until its task is killed.
        if !self.frameworks.contains_key(&task.framework_id) {
            let role = Role::new("recovered").unwrap_or_else(|_| unreachable!("a valid role"));
            let spec = FrameworkSpec {
                role,
                min_allocatable: None,
                constraints: Vec::new(),
            };
            self.allocator
                .add_framework(task.framework_id.clone(), spec);
            self.allocator
                .set_framework_active(&task.framework_id, false);
        }
        let roles: Vec<Role> = self
            .agents
            .get(agent)
            .map(|a| a.info.reservations.iter().map(|(r, _)| r.clone()).collect())
            .unwrap_or_default();
        let candidates = std::iter::once(Allocation {
            unreserved: task.resources.clone(),
            reserved: BTreeMap::new(),
        })
        .chain(roles.into_iter().map(|role| Allocation {
            unreserved: Resources::new(),
            reserved: BTreeMap::from([(role, task.resources.clone())]),
        }));
        for candidate in candidates {
            if self
                .allocator
                .claim(&task.framework_id, agent, &candidate)
                .is_ok()
            {
                return candidate;
            }
        }
        tracing::error!(agent = %agent, task = %task.task_id, "a reported task holds more than the agent has free; not booking it");
        Allocation::default()
    }

    /// An agent spoke: its heartbeat deadline moves to `now` plus the
    /// timeout.
    fn heard_from(&mut self, id: &AgentId, now: Time) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        let timeout = self.config.agent_timeout;
        self.heartbeat_deadlines
            .remove(&(agent.last_heartbeat + timeout, id.clone()));
        agent.last_heartbeat = now;
        if agent.conn.is_some() {
            self.heartbeat_deadlines.insert((now + timeout, id.clone()));
        }
    }

    fn agent_lost(&mut self, now: Time, id: &AgentId) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.conn = None;
        if agent.unreachable_since.is_none() {
            agent.unreachable_since = Some(now);
            self.removal_deadlines
                .insert((now + self.config.agent_removal_timeout, id.clone()));
        }
        let deadline = agent.last_heartbeat + self.config.agent_timeout;
        self.heartbeat_deadlines.remove(&(deadline, id.clone()));
        tracing::warn!(agent = %id, "agent disconnected; its tasks are unreachable");
        self.rescind_agent_offers(id);
        self.allocator.set_agent_active(id, false);
        let keys = self.tasks.on_agent(id, |t| !t.state.is_terminal());
        let affected: std::collections::BTreeSet<FrameworkId> =
            keys.iter().map(|(f, _)| f.clone()).collect();
        for fw in affected {
            self.send_to_framework(
                &fw,
                Event::Failure {
                    agent_id: id.clone(),
                },
            );
        }
        for key in keys {
            if let Some(task) = self.tasks.get_mut(&key) {
                task.state = TaskState::Unreachable;
            }
            let status = TaskStatus::new(key.1.clone(), TaskState::Unreachable)
                .because(Reason::AgentDisconnected, "lost contact with the agent")
                .on(id.clone());
            self.send_to_framework(&key.0, Event::Update { status, ack: None });
        }
        self.check_instances(now);
        self.request_allocation(now);
    }

    /// An agent unreachable past the removal timeout leaves the cluster:
    /// its tasks are GONE, its resources leave the allocator, and the
    /// registry remembers it was removed so that, if it comes back, it
    /// starts anew and kills what it still runs.
    fn remove_agent(&mut self, now: Time, id: &AgentId) {
        if self.agents.get(id).is_none_or(|a| a.conn.is_some()) {
            return;
        }
        tracing::warn!(agent = %id, "agent unreachable past the removal timeout; removing it");
        let keys = self.tasks.on_agent(id, |_| true);
        for key in keys {
            let Some(task) = self.tasks.get(&key) else {
                continue;
            };
            if task.state.is_terminal() {
                // Its end was sent; the acknowledgement can no longer reach
                // the agent.
                self.forget_task(&key);
                continue;
            }
            self.release_task(&key, TaskState::Gone, None);
            if hosted::is_instance(&key.1) {
                self.instance_update(now, &key.0, &key.1, TaskState::Gone);
                self.tasks.remove(&key);
                continue;
            }
            let status = TaskStatus::new(key.1.clone(), TaskState::Gone)
                .because(
                    Reason::AgentRemoved,
                    "the agent was unreachable past the removal timeout",
                )
                .on(id.clone());
            self.remember_end(&key, &status);
            self.tasks.remove(&key);
            self.send_to_framework(&key.0, Event::Update { status, ack: None });
        }
        self.rescind_agent_offers(id);
        self.allocator.remove_agent(id);
        self.agents.remove(id);
        let seq = self.registry.next_seq();
        self.registry.write(Write::AgentRemoved(id.clone(), seq));
        if self.recovering.remove(id) {
            self.recovered_one();
        }
        self.check_instances(now);
        self.request_allocation(now);
    }

    /// Keeps how a task ended for reconciliation after it is forgotten.
    fn remember_end(&mut self, key: &(FrameworkId, TaskId), status: &TaskStatus) {
        if self
            .ended_status
            .insert(key.clone(), status.clone())
            .is_none()
        {
            self.ended.push_back(key.clone());
        }
        while self.ended.len() > MAX_ENDED {
            if let Some(old) = self.ended.pop_front() {
                self.ended_status.remove(&old);
            }
        }
    }

    /// Drops an ended task from the books; its id may be used again.
    fn forget_task(&mut self, key: &(FrameworkId, TaskId)) {
        if let Some(task) = self.tasks.remove(key) {
            let status = TaskStatus::new(key.1.clone(), task.state).on(task.agent);
            self.remember_end(key, &status);
        }
    }

    /// What the master can say of a task now: its state, how it ended if
    /// that is remembered, or UNKNOWN.
    fn task_status(&self, fw: &FrameworkId, task_id: TaskId) -> TaskStatus {
        let key = (fw.clone(), task_id);
        if let Some(t) = self.tasks.get(&key) {
            return TaskStatus::new(key.1, t.state).on(t.agent.clone());
        }
        if let Some(status) = self.ended_status.get(&key) {
            return status.clone();
        }
        TaskStatus::new(key.1, TaskState::Unknown)
            .because(Reason::TaskUnknown, "the master does not know this task")
    }

    /// SUBSCRIBE, or SUBSCRIBE_HOSTED once the instance is checked
    /// (`hosted`).
    fn subscribe(&mut self, now: Time, conn: ConnId, mut info: FrameworkInfo, hosted: bool) {
        let spec = match (self.principals.get(&conn), &info.principal) {
            (Some(proven), Some(claimed)) if proven != claimed => Err((
                Refusal::NotAuthorized,
                format!(
                    "the framework claims principal {claimed:?} but its certificate names {proven:?}"
                ),
            )),
            _ => check_framework(&info).map_err(|why| (Refusal::Invalid, why)),
        };
        if let Some(proven) = self.principals.get(&conn) {
            info.principal = Some(proven.clone());
        }
        if let Err((code, message)) = spec {
            self.refuse_scheduler(conn, code, message);
            return;
        }
        let Ok(spec) = spec else {
            return;
        };
        let id = match info.id.clone() {
            Some(id) if self.frameworks.contains_key(&id) => {
                return self.fail_over(now, conn, id, info, spec, hosted);
            }
            Some(id) if self.registry.state().torn_down.contains_key(&id) => {
                let message = format!(
                    "framework {id} was torn down; subscribe without an id to start afresh"
                );
                self.refuse_scheduler(conn, Refusal::TornDown, message);
                return;
            }
            // The registry keeps every framework: an id it does not know was
            // never given out here, and taking it would take another
            // tenant's tasks.
            Some(id) => {
                let message = format!(
                    "framework {id} is not known to this master; subscribe without an id to start afresh"
                );
                self.refuse_scheduler(conn, Refusal::UnknownFramework, message);
                return;
            }
            None => match FrameworkId::new(self.fresh_id("f")) {
                Ok(id) => id,
                Err(_) => {
                    self.outbox
                        .push_back(Transmit::Close(conn, "cannot name the framework".into()));
                    return;
                }
            },
        };
        info.id = Some(id.clone());
        self.registry
            .write(Write::Framework(id.clone(), Some(Box::new(info.clone()))));
        self.allocator.add_framework(id.clone(), spec);
        tracing::info!(framework = %id, name = %info.name, role = %info.role, "framework subscribed");
        self.peers.insert(conn, Peer::Framework);
        self.framework_of.insert(conn, id.clone());
        self.frameworks.insert(
            id.clone(),
            FrameworkEntry {
                conn: Some(conn),
                info,
                disconnected_at: None,
            },
        );
        self.subscribed(now, conn, id);
    }

    /// A scheduler subscribes as a framework the master knows: it takes
    /// the framework over, and a scheduler still connected as it gets
    /// ERROR and is disconnected.
    fn fail_over(
        &mut self,
        now: Time,
        conn: ConnId,
        id: FrameworkId,
        info: FrameworkInfo,
        spec: FrameworkSpec,
        hosted: bool,
    ) {
        let Some(entry) = self.frameworks.get(&id) else {
            return;
        };
        let refusal = if entry.info.principal != info.principal {
            Some((
                Refusal::NotAuthorized,
                format!(
                    "framework {id} belongs to principal {}",
                    entry.info.principal.as_deref().unwrap_or("(none)")
                ),
            ))
        } else if entry.info.role != info.role {
            Some((
                Refusal::Invalid,
                format!(
                    "framework {id} is in role {}; a failover cannot change it",
                    entry.info.role
                ),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.refuse_scheduler(conn, code, message);
            return;
        }
        if !hosted {
            self.stop_hosting(&id, "a scheduler subscribed to it from elsewhere");
        }
        if let Some(old) = self.frameworks.get(&id).and_then(|e| e.conn) {
            self.refuse_scheduler(
                old,
                Refusal::FailedOver,
                stoa_proto::messages::FAILED_OVER.to_string(),
            );
            self.peers.remove(&old);
            self.framework_of.remove(&old);
            self.principals.remove(&old);
        }
        // Offers made to the old scheduler go back to the pool.
        self.rescind_framework_offers(&id);
        self.allocator.update_framework(&id, spec);
        self.allocator.set_framework_active(&id, true);
        tracing::info!(framework = %id, "scheduler failed over");
        self.peers.insert(conn, Peer::Framework);
        self.framework_of.insert(conn, id.clone());
        if self.registry.state().frameworks.get(&id) != Some(&info) {
            self.registry
                .write(Write::Framework(id.clone(), Some(Box::new(info.clone()))));
        }
        self.disarm_failover(&id);
        if let Some(entry) = self.frameworks.get_mut(&id) {
            entry.conn = Some(conn);
            entry.disconnected_at = None;
            entry.info = info;
        }
        self.subscribed(now, conn, id);
    }

    fn subscribed(&mut self, now: Time, conn: ConnId, id: FrameworkId) {
        let heartbeat_interval_ms =
            u64::try_from(self.config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        self.send_to_scheduler(
            conn,
            Event::Subscribed {
                framework_id: id,
                heartbeat_interval_ms,
            },
        );
        if self.next_scheduler_heartbeat.is_none() {
            self.next_scheduler_heartbeat = Some(now + self.config.heartbeat_interval);
        }
        self.request_allocation(now);
    }

    /// RECONCILE: the latest state of the named tasks, or of all of them.
    /// A named task the master does not know is UNKNOWN, but only once
    /// every agent admitted before a restart is back or removed: until
    /// then it may be running on one of them, and the answer waits.
    fn reconcile(&mut self, fw: &FrameworkId, tasks: Vec<TaskId>) {
        let statuses: Vec<TaskStatus> = if tasks.is_empty() {
            self.tasks
                .of_framework(fw, |t| !t.state.is_terminal())
                .into_iter()
                .filter(|(_, id)| !hosted::is_instance(id))
                .filter_map(|key| {
                    let t = self.tasks.get(&key)?;
                    Some(TaskStatus::new(key.1, t.state).on(t.agent.clone()))
                })
                .collect()
        } else {
            let mut known = Vec::new();
            for task_id in tasks {
                let status = self.task_status(fw, task_id.clone());
                if status.state == TaskState::Unknown && !self.recovering.is_empty() {
                    self.deferred_reconciles.push((fw.clone(), task_id));
                } else {
                    known.push(status);
                }
            }
            known
        };
        for mut status in statuses {
            if status.reason.is_none() {
                status.message = "reconciliation".into();
            }
            self.send_to_framework(fw, Event::Update { status, ack: None });
        }
    }

    /// UPDATE_FRAMEWORK: a new name, failover timeout, minimum offer size
    /// or constraints; the role and principal stay.
    fn update_framework(&mut self, now: Time, conn: ConnId, fw: &FrameworkId, info: FrameworkInfo) {
        let Some(entry) = self.frameworks.get(fw) else {
            return;
        };
        let checked = check_framework(&info).and_then(|spec| {
            if info.role != entry.info.role {
                Err(format!(
                    "the role of a framework cannot change (it is {})",
                    entry.info.role
                ))
            } else {
                Ok(spec)
            }
        });
        match checked {
            Ok(spec) => {
                self.allocator.update_framework(fw, spec);
                if let Some(entry) = self.frameworks.get_mut(fw) {
                    let (id, principal) = (entry.info.id.clone(), entry.info.principal.clone());
                    entry.info = FrameworkInfo {
                        id,
                        principal,
                        ..info
                    };
                    let info = Box::new(entry.info.clone());
                    self.registry
                        .write(Write::Framework(fw.clone(), Some(info)));
                }
                self.request_allocation(now);
            }
            Err(message) => self.send_to_scheduler(
                conn,
                Event::Error {
                    code: Refusal::Invalid,
                    message: format!("UPDATE_FRAMEWORK refused: {message}"),
                },
            ),
        }
    }

    fn scheduler_lost(&mut self, now: Time, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get_mut(id) else {
            return;
        };
        fw.conn = None;
        fw.disconnected_at = Some(now);
        tracing::info!(framework = %id, failover_timeout_ms = fw.info.failover_timeout_ms, "scheduler disconnected");
        self.arm_failover(id);
        self.rescind_framework_offers(id);
        self.allocator.set_framework_active(id, false);
        if fw_failover_now(self.frameworks.get(id)) {
            self.remove_framework(now, id);
        }
        self.check_instances(now);
        self.request_allocation(now);
    }

    /// When the framework's scheduler left and its timeout: its teardown
    /// deadline goes into the ordered set `poll_timeout` reads.
    fn arm_failover(&mut self, id: &FrameworkId) {
        if let Some(due) = self.failover_due(id) {
            self.failover_deadlines.insert((due, id.clone()));
        }
    }

    fn disarm_failover(&mut self, id: &FrameworkId) {
        if let Some(due) = self.failover_due(id) {
            self.failover_deadlines.remove(&(due, id.clone()));
        }
    }

    fn failover_due(&self, id: &FrameworkId) -> Option<Time> {
        let f = self.frameworks.get(id)?;
        f.disconnected_at
            .map(|t| t + Duration::from_millis(f.info.failover_timeout_ms))
    }

    /// Forgets a framework: its offers go back, its tasks are killed.
    fn remove_framework(&mut self, now: Time, id: &FrameworkId) {
        self.rescind_framework_offers(id);
        let keys = self.tasks.of_framework(id, |_| true);
        for key in keys {
            let Some(task) = self.tasks.get(&key) else {
                continue;
            };
            if !task.state.is_terminal() {
                if let Some(task) = self.tasks.get_mut(&key) {
                    task.kill_requested = true;
                }
                let Some(task) = self.tasks.get(&key) else {
                    continue;
                };
                let agent_conn = self.agents.get(&task.agent).and_then(|a| a.conn);
                if let Some(conn) = agent_conn {
                    self.outbox.push_back(Transmit::ToAgent(
                        conn,
                        MasterToAgent::KillTask {
                            framework_id: key.0.clone(),
                            task_id: key.1.clone(),
                        },
                    ));
                }
            }
        }
        // Tasks stay in the books until their agents report them terminal,
        // so their resources are not offered while still in use.
        let finished = self.tasks.of_framework(id, |t| t.state.is_terminal());
        for key in finished {
            self.forget_task(&key);
        }
        self.disarm_failover(id);
        self.frameworks.remove(id);
        // Its scheduler instance, if hosted, was killed with its tasks.
        self.hosted.remove(id);
        let seq = self.registry.next_seq();
        self.registry.write(Write::TornDown(id.clone(), seq));
        // Running tasks keep their resources held on their agents until
        // they end; only the framework's place in the role tree goes.
        self.allocator.remove_framework(id);
        self.request_allocation(now);
    }

    /// Withdraws every outstanding offer of `agent`.
    fn rescind_agent_offers(&mut self, agent: &AgentId) {
        for id in self.offers.of_agent(agent) {
            self.rescind(id);
        }
    }

    /// Withdraws every outstanding offer made to `fw`.
    fn rescind_framework_offers(&mut self, fw: &FrameworkId) {
        for id in self.offers.of_framework(fw) {
            self.rescind(id);
        }
    }

    /// Withdraws an offer, returning its resources to the allocator.
    fn rescind(&mut self, offer_id: OfferId) {
        let Some(entry) = self.offers.remove(&offer_id) else {
            return;
        };
        let (fw, agent) = (&entry.offer.framework_id, &entry.offer.agent_id);
        self.allocator.recover(fw, agent, &entry.allocation, None);
        self.send_to_framework(&entry.offer.framework_id, Event::Rescind { offer_id });
    }

    fn status_update(
        &mut self,
        now: Time,
        conn: ConnId,
        agent: AgentId,
        framework_id: FrameworkId,
        update_id: UpdateId,
        mut status: TaskStatus,
    ) {
        status.agent_id = Some(agent.clone());
        let key = (framework_id.clone(), status.task_id.clone());
        if hosted::is_instance(&status.task_id) {
            // The master's own task: acknowledged here, never relayed.
            if self.tasks.get(&key).is_some_and(|t| t.agent == agent) {
                self.release_task(&key, status.state, Some(update_id));
                self.instance_update(now, &framework_id, &status.task_id, status.state);
                if status.state.is_terminal() {
                    self.request_allocation(now);
                }
            }
            self.acknowledge_to(conn, status.task_id, update_id);
            return;
        }
        // Agents send a task's updates without waiting for acknowledgements,
        // so after a retry an older update can come after the task's end.
        // The scheduler has been sent the end: acknowledge the stale update
        // here rather than show the task running again.
        if !status.state.is_terminal()
            && (self
                .tasks
                .get(&key)
                .is_some_and(|t| t.agent == agent && t.state.is_terminal())
                || self.ended_status.contains_key(&key))
        {
            self.acknowledge_to(conn, status.task_id, update_id);
            return;
        }
        if let Some(task) = self.tasks.get(&key)
            && task.agent == agent
            && !task.state.is_terminal()
        {
            if task.preempting && status.state.is_terminal() {
                status.reason = Some(Reason::Preempted);
                status.message = "preempted for a role below its quota guarantee".into();
            }
            let state = status.state;
            self.release_task(&key, state, Some(update_id));
            if state.is_terminal() {
                self.request_allocation(now);
            }
        }
        if self.frameworks.contains_key(&framework_id) {
            self.send_to_framework(
                &framework_id,
                Event::Update {
                    status,
                    ack: Some(update_id),
                },
            );
        } else {
            // Nobody will acknowledge an update for a framework that is gone;
            // acknowledge it here so the agent stops resending it.
            if self.tasks.get(&key).is_some_and(|t| t.state.is_terminal()) {
                self.tasks.remove(&key);
            }
            self.acknowledge_to(conn, status.task_id, update_id);
        }
    }

    /// Moves a task to `state`, giving its resources back if that is terminal.
    fn release_task(
        &mut self,
        key: &(FrameworkId, TaskId),
        state: TaskState,
        update: Option<UpdateId>,
    ) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let was_terminal = task.state.is_terminal();
        task.state = state;
        if state.is_terminal() && !was_terminal {
            task.terminal_update = update;
            let (agent, allocation) = (task.agent.clone(), std::mem::take(&mut task.allocation));
            self.allocator.recover(&key.0, &agent, &allocation, None);
        }
    }

    /// KILL: sent to the task's agent now, or when it comes back if it is
    /// unreachable (`kill_requested`).
    fn kill(&mut self, fw: &FrameworkId, task_id: TaskId) {
        let key = (fw.clone(), task_id.clone());
        match self.tasks.get_mut(&key) {
            Some(task) if !task.state.is_terminal() => {
                task.kill_requested = true;
                if let Some(conn) = self.agents.get(&task.agent).and_then(|a| a.conn) {
                    self.outbox.push_back(Transmit::ToAgent(
                        conn,
                        MasterToAgent::KillTask {
                            framework_id: fw.clone(),
                            task_id,
                        },
                    ));
                }
            }
            Some(_) => {}
            None => {
                let status = TaskStatus::new(task_id, TaskState::Unknown)
                    .because(Reason::TaskUnknown, "the master does not know this task");
                self.send_to_framework(fw, Event::Update { status, ack: None });
            }
        }
    }

    /// The agent on `conn`, if it runs `task` of `fw`: only such an agent
    /// may speak for the task (anything else is dropped, with a warning).
    fn runs_on(&self, conn: ConnId, fw: &FrameworkId, task: &TaskId) -> Option<AgentId> {
        let agent = self.agent_of.get(&conn)?;
        let key = (fw.clone(), task.clone());
        if self.tasks.get(&key).is_some_and(|t| &t.agent == agent) {
            return Some(agent.clone());
        }
        tracing::warn!(%agent, %task, "dropping word from an agent about a task it does not run");
        None
    }

    /// MESSAGE: to the agent of a running task, which hands it to the
    /// task's executor. What cannot be sent is an ERROR now; what the
    /// executor cannot deliver is one later (UNDELIVERED).
    fn message_task(&mut self, fw: &FrameworkId, task_id: TaskId, data: Vec<u8>) {
        let key = (fw.clone(), task_id.clone());
        let refusal = match (message_too_large(&data), self.tasks.get(&key)) {
            (Some(why), _) => Some(why),
            (None, None) => Some("the master knows no such task of this framework".to_string()),
            (None, Some(task)) if task.state.is_terminal() => {
                Some(format!("the task has ended ({})", task.state))
            }
            (None, Some(task)) => match self.agents.get(&task.agent).and_then(|a| a.conn) {
                None => Some(format!("its agent {} is not connected", task.agent)),
                Some(conn) => {
                    self.outbox.push_back(Transmit::ToAgent(
                        conn,
                        MasterToAgent::FrameworkMessage {
                            framework_id: fw.clone(),
                            task_id: task_id.clone(),
                            data,
                        },
                    ));
                    None
                }
            },
        };
        if let Some(why) = refusal {
            let message = format!("MESSAGE to task {task_id} not delivered: {why}");
            let code = Refusal::Unavailable;
            self.send_to_framework(fw, Event::Error { code, message });
        }
    }

    fn acknowledge(
        &mut self,
        fw: &FrameworkId,
        agent: AgentId,
        task_id: TaskId,
        update_id: UpdateId,
    ) {
        let key = (fw.clone(), task_id.clone());
        if self
            .tasks
            .get(&key)
            .is_some_and(|t| t.terminal_update == Some(update_id))
        {
            self.forget_task(&key);
        }
        if let Some(conn) = self.agents.get(&agent).and_then(|a| a.conn) {
            self.acknowledge_to(conn, task_id, update_id);
        }
    }

    /// Tells the agent on `conn` that an update of its needs no resending.
    fn acknowledge_to(&mut self, conn: ConnId, task_id: TaskId, update_id: UpdateId) {
        self.outbox.push_back(Transmit::ToAgent(
            conn,
            MasterToAgent::AcknowledgeUpdate { task_id, update_id },
        ));
    }

    fn decline(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        offer_ids: Vec<OfferId>,
        refuse_ms: Option<u64>,
    ) {
        for id in offer_ids {
            if self
                .offers
                .get(&id)
                .is_some_and(|o| &o.offer.framework_id == fw)
                && let Some(entry) = self.offers.remove(&id)
            {
                let until = self.refuse_until(now, refuse_ms);
                self.allocator
                    .recover(fw, &entry.offer.agent_id, &entry.allocation, until);
            }
        }
        self.request_allocation(now);
    }

    /// When a filter set with `refuse_ms` (or the default) ends; `None` for
    /// no filter.
    fn refuse_until(&self, now: Time, refuse_ms: Option<u64>) -> Option<Time> {
        let refuse = refuse_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.default_refuse);
        (!refuse.is_zero()).then(|| now + refuse)
    }

    /// Kills what the allocator chooses so that a role below its guarantee
    /// can be served. One round at a time: while earlier victims are still
    /// dying, their resources are already on their way back.
    fn preempt(&mut self) {
        // Planning needs the revocable tasks; it runs only while some
        // guarantee is unmet, and not while earlier victims are dying.
        if !self.allocator.needs_preemption() || self.tasks.preempting() {
            return;
        }
        let keys = self.tasks.revocable_live();
        let candidates: Vec<stoa_allocator::PreemptionCandidate> = keys
            .iter()
            .filter_map(|k| {
                let t = self.tasks.get(k)?;
                Some(stoa_allocator::PreemptionCandidate {
                    framework: k.0.clone(),
                    resources: t.allocation.total(),
                    revocable: true,
                })
            })
            .collect();
        for i in self.allocator.preemption_plan(&candidates) {
            let Some(key) = keys.get(i) else { continue };
            let Some(task) = self.tasks.get_mut(key) else {
                continue;
            };
            task.preempting = true;
            tracing::info!(framework = %key.0, task = %key.1, "preempting a task for a role below its guarantee");
            if let Some(conn) = self.agents.get(&task.agent).and_then(|a| a.conn) {
                self.outbox.push_back(Transmit::ToAgent(
                    conn,
                    MasterToAgent::KillTask {
                        framework_id: key.0.clone(),
                        task_id: key.1.clone(),
                    },
                ));
            }
        }
    }

    fn allocate(&mut self, now: Time) {
        self.place_instances(now);
        let mut batches: BTreeMap<FrameworkId, Vec<Offer>> = BTreeMap::new();
        for plan in self.allocator.allocate(now) {
            let Some(agent) = self.agents.get(&plan.agent) else {
                // The allocator only plans for agents the master added.
                tracing::error!(agent = %plan.agent, "allocator planned an offer of an unknown agent");
                continue;
            };
            let offer = Offer {
                id: OfferId(self.next_id),
                framework_id: plan.framework.clone(),
                agent_id: plan.agent.clone(),
                hostname: agent.info.hostname.clone(),
                resources: plan.resources.total(),
                reservations: plan
                    .resources
                    .reserved
                    .iter()
                    .map(|(r, x)| (r.clone(), x.clone()))
                    .collect(),
                attributes: agent.info.attributes.clone(),
                revocable: plan.revocable,
            };
            self.next_id += 1;
            self.offers.insert(OfferEntry {
                offer: offer.clone(),
                allocation: plan.resources,
                made_at: now,
            });
            batches.entry(plan.framework).or_default().push(offer);
        }
        for (fw, offers) in batches {
            self.send_to_framework(&fw, Event::Offers { offers });
        }
        self.preempt();
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
