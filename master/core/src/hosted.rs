//! Cluster-hosted schedulers (`stoa submit`): the master runs a framework's
//! scheduler component as a task on an agent, and keeps one instance of it
//! alive for as long as the framework lives.
//!
//! An instance is a task of its own framework with a reserved id
//! (`stoa-scheduler-N`); its resources are claimed from an agent directly,
//! not offered. It subscribes with SUBSCRIBE_HOSTED, proving with a token
//! (an HMAC of the framework and task ids under the master's secret) that
//! it is the instance the master launched last; it then acts as the
//! principal that submitted the framework. A new instance is started when
//! the current one ends badly (with backoff), or when its agent is lost and
//! its scheduler has been silent for the agent timeout. It subscribes with
//! the same framework id (a failover), so the framework's tasks carry on,
//! and reconciles. An instance ending well (FINISHED) ends the hosting; a
//! scheduler that subscribes from elsewhere takes the framework off hosting.

use super::{Master, TaskCounts, TaskEntry, Transmit};
use crate::registry::{HostedRecord, Write};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use std::time::Duration;
use stoa_allocator::Allocation;
use stoa_proto::messages::Refusal;
use stoa_proto::{
    AgentId, Artifact, Digest, Event, FrameworkId, FrameworkInfo, HostedScheduler, MasterToAgent,
    Resources, RunningTask, Submission, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState, Time,
};

/// Task ids of hosted scheduler instances start with this; frameworks may
/// not use it.
pub const INSTANCE_PREFIX: &str = "stoa-scheduler-";

/// Backoff after the first failure of an instance, doubled per failure in
/// a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How soon placing an instance is tried again when no agent had room
/// (allocation runs also try, whenever resources come back).
const PLACEMENT_RETRY: Duration = Duration::from_secs(1);

/// Whether `task` names a hosted scheduler instance.
pub fn is_instance(task: &TaskId) -> bool {
    task.as_str().starts_with(INSTANCE_PREFIX)
}

/// The ids of `fw`'s tasks that are instances of its hosted scheduler:
/// they sort together, so only they are visited.
pub(crate) fn instance_ids_of<'a>(
    tasks: &'a crate::tasks::Tasks,
    fw: &FrameworkId,
) -> impl Iterator<Item = &'a TaskId> + 'a {
    let from =
        TaskId::new(INSTANCE_PREFIX).map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included);
    tasks.ids_of(fw, from).take_while(|id| is_instance(id))
}

/// A hosted framework's supervision state.
#[derive(Debug)]
pub(crate) struct Hosted {
    pub record: HostedRecord,
    /// Instances that ended badly in a row: sets the backoff.
    pub failures: u32,
    /// No instance is started before this.
    pub not_before: Time,
    /// Since when the current instance has been out of reach: its agent
    /// gone and its scheduler not connected.
    pub unreachable_since: Option<Time>,
}

impl Hosted {
    pub fn new(record: HostedRecord, unreachable_since: Option<Time>) -> Hosted {
        Hosted {
            record,
            failures: 0,
            not_before: Time::ZERO,
            unreachable_since,
        }
    }
}

/// The token instance `task` of framework `fw` presents.
pub fn token(secret: &[u8; 32], fw: &FrameworkId, task: &TaskId) -> Digest {
    Digest(token_mac(secret, fw, task).finalize().into_bytes().into())
}

/// Whether `presented` is the token of instance `task` of `fw`, compared
/// in constant time so that the time a refusal takes tells nothing of how
/// much of a guess was right.
pub fn token_matches(
    secret: &[u8; 32],
    fw: &FrameworkId,
    task: &TaskId,
    presented: &Digest,
) -> bool {
    token_mac(secret, fw, task)
        .verify_slice(&presented.0)
        .is_ok()
}

fn token_mac(secret: &[u8; 32], fw: &FrameworkId, task: &TaskId) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(fw.as_str().as_bytes());
    // A separator that ids cannot contain, so (fw, task) pairs never collide.
    mac.update(&[0]);
    mac.update(task.as_str().as_bytes());
    mac
}

impl Master {
    /// SUBMIT: checks the submission, names the framework and starts
    /// hosting it. The framework exists from now on, without a scheduler,
    /// until its first instance subscribes.
    pub(super) fn submit(&mut self, now: Time, conn: crate::ConnId, submission: Submission) {
        let mut submission = submission;
        let proven = self.connections.principal(conn).cloned();
        let checked = check_submission(&submission, proven.as_deref())
            .and_then(|()| super::check_framework(&submission.framework));
        let spec = match checked {
            Ok(spec) => spec,
            Err(message) => {
                let message = format!("SUBMIT refused: {message}");
                return self.refuse_scheduler(conn, Refusal::Invalid, message);
            }
        };
        let principal = proven
            .as_deref()
            .or(submission.framework.principal.as_deref());
        if let Err(denied) = self.config.acls.check(
            principal,
            crate::acl::Action::RegisterFramework,
            crate::acl::Object::Role(&submission.framework.role),
        ) {
            let message = format!("SUBMIT refused: {denied}");
            return self.refuse_scheduler(conn, Refusal::NotAuthorized, message);
        }
        let Ok(id) = FrameworkId::new(self.fresh_id("f")) else {
            return self.refuse_scheduler(
                conn,
                Refusal::Invalid,
                "cannot name the framework".into(),
            );
        };
        submission.framework.id = Some(id.clone());
        if proven.is_some() {
            submission.framework.principal = proven;
        }
        self.allocator.add_framework(id.clone(), spec);
        self.allocator.set_framework_active(&id, false);
        self.frameworks.insert(
            id.clone(),
            super::FrameworkEntry {
                conn: None,
                info: submission.framework.clone(),
                disconnected_at: None,
                counts: TaskCounts::default(),
            },
        );
        tracing::info!(framework = %id, name = %submission.framework.name, "framework submitted; hosting its scheduler");
        let record = HostedRecord {
            submission,
            launched: 0,
            current: None,
        };
        self.registry.write(Write::Framework(
            id.clone(),
            Some(Box::new(record.submission.framework.clone())),
        ));
        self.registry
            .write(Write::Hosted(id.clone(), Some(Box::new(record.clone()))));
        self.hosted.insert(id.clone(), Hosted::new(record, None));
        self.send_to_scheduler(conn, Event::Submitted { framework_id: id });
        self.outbox
            .push_back(Transmit::Close(conn, "submitted".into()));
        self.request_allocation(now);
    }

    /// SUBSCRIBE_HOSTED: the instance must be the current one, on an
    /// agent's connection, with the right token. It then subscribes as
    /// the submitter.
    pub(super) fn subscribe_hosted(
        &mut self,
        now: Time,
        conn: crate::ConnId,
        info: FrameworkInfo,
        task_id: TaskId,
        presented: Digest,
    ) {
        let from_agent = self
            .connections
            .principal(conn)
            .is_some_and(|p| stoa_proto::messages::is_agent_principal(p));
        let refusal = match info.id.as_ref().map(|id| (id, self.hosted.get(id))) {
            _ if !from_agent => Some("only an agent may host a scheduler".to_string()),
            None => Some("a hosted scheduler must name its framework".into()),
            Some((id, None)) => Some(format!("framework {id} is not hosted by this master")),
            Some((id, Some(h))) => {
                let current = h.record.current.as_ref().map(|(t, _)| t);
                if current != Some(&task_id) {
                    Some(format!(
                        "{task_id} is not the current scheduler instance of framework {id}"
                    ))
                } else if !token_matches(&self.config.secret, id, &task_id, &presented) {
                    Some(format!("wrong token for {task_id} of framework {id}"))
                } else {
                    None
                }
            }
        };
        if let Some(message) = refusal {
            tracing::warn!(%task_id, "refused a hosted scheduler: {message}");
            return self.refuse_scheduler(conn, Refusal::NotAuthorized, message);
        }
        let Some(id) = info.id.clone() else { return };
        let principal = self
            .hosted
            .get(&id)
            .and_then(|h| h.record.submission.framework.principal.clone());
        self.connections.set_principal(conn, principal);
        if let Some(h) = self.hosted.get_mut(&id) {
            h.failures = 0;
            h.unreachable_since = None;
        }
        self.subscribe(now, conn, info, true);
    }

    /// Whether framework `fw` is hosted. A scheduler subscribing to it
    /// from elsewhere takes it off hosting first.
    pub(super) fn stop_hosting(&mut self, fw: &FrameworkId, why: &str) {
        let Some(h) = self.hosted.remove(fw) else {
            return;
        };
        tracing::info!(framework = %fw, "no longer hosting the scheduler: {why}");
        self.registry.write(Write::Hosted(fw.clone(), None));
        if let Some((task, agent)) = h.record.current {
            self.kill_instance(fw, &task, &agent);
        }
    }

    fn kill_instance(&mut self, fw: &FrameworkId, task: &TaskId, agent: &AgentId) {
        if let Some(conn) = self.agents.get(agent).and_then(|a| a.conn) {
            self.outbox.push_back(Transmit::ToAgent(
                conn,
                MasterToAgent::KillTask {
                    framework_id: fw.clone(),
                    task_id: task.clone(),
                },
            ));
        }
    }

    /// A hosted instance's state changed. Its updates are the master's
    /// own: acknowledged here, never shown to the framework.
    pub(super) fn instance_update(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        task: &TaskId,
        state: TaskState,
    ) {
        let is_current = self
            .hosted
            .get(fw)
            .and_then(|h| h.record.current.as_ref())
            .is_some_and(|(t, _)| t == task);
        if !state.is_terminal() {
            if !is_current && state == TaskState::Running {
                // An instance replaced while its agent was away came back.
                if let Some(agent) = self
                    .tasks
                    .get(&(fw.clone(), task.clone()))
                    .map(|t| t.agent.clone())
                {
                    self.kill_instance(fw, task, &agent);
                }
            }
            return;
        }
        self.tasks.remove(&(fw.clone(), task.clone()));
        if !is_current {
            return;
        }
        let framework_gone = !self.frameworks.contains_key(fw);
        if state == TaskState::Finished || framework_gone {
            let why = if framework_gone {
                "the framework ended"
            } else {
                "the scheduler finished"
            };
            self.stop_hosting(fw, why);
            return;
        }
        if let Some(h) = self.hosted.get_mut(fw) {
            h.failures = h.failures.saturating_add(1);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << h.failures.saturating_sub(1).min(16))
                .min(MAX_BACKOFF);
            h.not_before = now + backoff;
            h.record.current = None;
            h.unreachable_since = None;
            tracing::warn!(framework = %fw, instance = %task, ?state, retry_in = ?backoff, "hosted scheduler ended; starting another");
            let record = Box::new(h.record.clone());
            self.registry.write(Write::Hosted(fw.clone(), Some(record)));
        }
    }

    /// A re-registering agent reports an instance. The current one is
    /// taken back into the books; any other is booked until it ends, and
    /// killed.
    pub(super) fn reported_instance(&mut self, agent: &AgentId, r: &RunningTask) {
        let is_current = self
            .hosted
            .get(&r.framework_id)
            .and_then(|h| h.record.current.as_ref())
            .is_some_and(|(t, a)| t == &r.task_id && a == agent);
        self.book_reported(agent, r);
        if !is_current {
            tracing::info!(framework = %r.framework_id, instance = %r.task_id, "killing a hosted scheduler instance that was replaced");
            self.kill_instance(&r.framework_id, &r.task_id, agent);
        }
    }

    /// Notes which current instances are out of reach: their agent gone
    /// and their scheduler not connected. Call after any change to either.
    pub(super) fn check_instances(&mut self, now: Time) {
        for (fw, h) in &mut self.hosted {
            let Some((_, agent)) = &h.record.current else {
                continue;
            };
            let connected = self.frameworks.get(fw).is_some_and(|f| f.conn.is_some());
            let agent_up = self.agents.get(agent).is_some_and(|a| a.conn.is_some());
            if connected || agent_up {
                h.unreachable_since = None;
            } else if h.unreachable_since.is_none() {
                tracing::warn!(framework = %fw, %agent, "hosted scheduler out of reach");
                h.unreachable_since = Some(now);
            }
        }
    }

    /// When a hosted framework next needs an instance started, if ever.
    pub(super) fn next_instance_due(&self) -> Option<Time> {
        self.hosted
            .values()
            .filter_map(|h| self.instance_due(h))
            .min()
    }

    fn instance_due(&self, h: &Hosted) -> Option<Time> {
        match &h.record.current {
            None => Some(h.not_before),
            Some(_) => h
                .unreachable_since
                .map(|t| (t + self.config.agent_timeout).max(h.not_before)),
        }
    }

    /// Starts an instance for every hosted framework that needs one now
    /// and fits on a connected agent. Runs before offers are made, so an
    /// instance is not starved by offers outstanding.
    pub(super) fn place_instances(&mut self, now: Time) {
        let due: Vec<FrameworkId> = self
            .hosted
            .iter()
            .filter(|(_, h)| self.instance_due(h).is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for fw in due {
            let Some(h) = self.hosted.get(&fw) else {
                continue;
            };
            let avoid = h.record.current.as_ref().map(|(_, a)| a.clone());
            let resources = h.record.submission.resources.clone();
            match self.claim_anywhere(&fw, &resources, avoid.as_ref()) {
                Some((agent, allocation)) => self.launch_instance(&fw, agent, allocation),
                None => {
                    tracing::debug!(framework = %fw, %resources, "no agent has room for the hosted scheduler yet");
                    if let Some(h) = self.hosted.get_mut(&fw) {
                        h.not_before = now + PLACEMENT_RETRY;
                    }
                }
            }
        }
    }

    /// Takes `resources` for `fw` on some connected agent other than
    /// `avoid`, rescinding an agent's outstanding offers if that makes room.
    fn claim_anywhere(
        &mut self,
        fw: &FrameworkId,
        resources: &Resources,
        avoid: Option<&AgentId>,
    ) -> Option<(AgentId, Allocation)> {
        let candidates: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(id, a)| a.conn.is_some() && Some(*id) != avoid)
            .map(|(id, _)| id.clone())
            .collect();
        let allocation = Allocation {
            unreserved: resources.clone(),
            reserved: Default::default(),
        };
        for agent in &candidates {
            if self.allocator.claim(fw, agent, &allocation).is_ok() {
                return Some((agent.clone(), allocation));
            }
        }
        // Rescind one agent's offers, and only where that makes room:
        // while an instance waits for space, other frameworks' offers are
        // not withdrawn again and again for nothing.
        let fits = |master: &Master, agent: &AgentId| {
            let offered = master
                .offers
                .values()
                .filter(|o| &o.offer.agent_id == agent)
                .try_fold(Resources::new(), |sum, o| {
                    sum.checked_add(&o.allocation.unreserved)
                });
            let free = master.allocator.free_unreserved(agent);
            match (offered, free) {
                (Some(offered), Some(free)) => offered
                    .checked_add(free)
                    .is_some_and(|room| room.contains(resources)),
                _ => false,
            }
        };
        let agent = candidates.into_iter().find(|a| fits(self, a))?;
        self.rescind_agent_offers(&agent);
        self.allocator
            .claim(fw, &agent, &allocation)
            .ok()
            .map(|()| (agent, allocation))
    }

    fn launch_instance(&mut self, fw: &FrameworkId, agent: AgentId, allocation: Allocation) {
        let Some(h) = self.hosted.get_mut(fw) else {
            return;
        };
        h.record.launched += 1;
        let Ok(task_id) = TaskId::new(format!("{INSTANCE_PREFIX}{}", h.record.launched)) else {
            return;
        };
        let old = h.record.current.replace((task_id.clone(), agent.clone()));
        h.unreachable_since = None;
        let submission = &h.record.submission;
        let task = TaskInfo {
            task_id: task_id.clone(),
            name: format!("scheduler of {}", submission.framework.name),
            resources: allocation.total(),
            kind: TaskKind::Scheduler(HostedScheduler {
                artifact: Artifact::Stored(submission.artifact),
                framework: submission.framework.clone(),
                args: submission.args.clone(),
                env: submission.env.clone(),
                fuel_per_call: submission.fuel_per_call,
                token: token(&self.config.secret, fw, &task_id),
            }),
            limits: TaskLimits::default(),
        };
        let record = Box::new(h.record.clone());
        self.registry.write(Write::Hosted(fw.clone(), Some(record)));
        tracing::info!(framework = %fw, instance = %task_id, %agent, "starting the hosted scheduler");
        // The instance it replaces may still be alive where nobody can
        // reach it; it is killed if its agent comes back, and could not
        // subscribe anyway (its token is no longer current).
        if let Some((old_task, old_agent)) = old {
            self.kill_instance(fw, &old_task, &old_agent);
        }
        let key = (fw.clone(), task_id);
        self.book_task(
            key,
            TaskEntry {
                agent: agent.clone(),
                allocation,
                state: TaskState::Staging,
                revocable: false,
                preempting: false,
                terminal_update: None,
                kill_requested: false,
                launched_at: self.clock,
            },
        );
        if let Some(conn) = self.agents.get(&agent).and_then(|a| a.conn) {
            self.outbox.push_back(Transmit::ToAgent(
                conn,
                MasterToAgent::RunTask {
                    framework_id: fw.clone(),
                    task: Box::new(task),
                },
            ));
        }
    }

    /// Takes back the hosted frameworks a previous run kept. Their current
    /// instances count as out of reach until their agents re-register or
    /// they subscribe again.
    pub(super) fn restore_hosted(&mut self) {
        let records: Vec<HostedRecord> = self.registry.state().hosted.values().cloned().collect();
        for record in records {
            let Some(id) = record.submission.framework.id.clone() else {
                continue;
            };
            match super::check_framework(&record.submission.framework) {
                Ok(spec) => {
                    self.allocator.add_framework(id.clone(), spec);
                    self.allocator.set_framework_active(&id, false);
                }
                Err(e) => {
                    tracing::error!(framework = %id, "registry holds a bad hosted framework: {e}");
                    continue;
                }
            }
            self.frameworks.insert(
                id.clone(),
                super::FrameworkEntry {
                    conn: None,
                    info: record.submission.framework.clone(),
                    disconnected_at: None,
                    counts: TaskCounts::default(),
                },
            );
            let since = record.current.is_some().then_some(Time::ZERO);
            self.hosted.insert(id, Hosted::new(record, since));
        }
    }
}

/// What a submission must be before the master names its framework.
fn check_submission(s: &Submission, proven: Option<&str>) -> Result<(), String> {
    if s.framework.id.is_some() {
        return Err("a submitted framework is new: leave its id unset".into());
    }
    if let (Some(proven), Some(claimed)) = (proven, &s.framework.principal)
        && proven != claimed
    {
        return Err(format!(
            "the framework claims principal {claimed:?} but its certificate names {proven:?}"
        ));
    }
    if s.resources.mem_mib() == 0 {
        return Err("the scheduler needs mem (its memory limit), e.g. mem:128".into());
    }
    if s.fuel_per_call == 0 {
        return Err("fuel per call must be above zero".into());
    }
    Ok(())
}
