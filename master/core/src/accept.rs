//! ACCEPT: validate the named offers and each launch against them, then
//! launch what is valid. Checks run cheapest first: the offers as a whole
//! (a bad offer invalidates every launch, TASK_DROPPED), then each task on
//! its own (a bad task gets TASK_ERROR and does not affect its siblings).
//! What the launches leave over goes back to the allocator, filtered from
//! this framework for `refuse_ms`.

use super::{Master, TaskEntry, Transmit};
use crate::acl;
use std::collections::BTreeMap;
use stoa_allocator::Allocation;
use stoa_proto::messages::Refusal;
use stoa_proto::{
    AgentId, Event, FrameworkId, MasterToAgent, OfferId, Operation, Reason, Resources, Role,
    TaskId, TaskInfo, TaskKind, TaskState, TaskStatus, Time,
};

/// Where an ACCEPT's tasks go.
struct Placement<'a> {
    agent: &'a AgentId,
    /// The agent's connection; tasks are dropped without one.
    conn: Option<crate::ConnId>,
    /// Launched on revocable offers: may be preempted.
    revocable: bool,
}

impl Master {
    pub(super) fn accept(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        offer_ids: Vec<OfferId>,
        operations: Vec<Operation>,
        refuse_ms: Option<u64>,
    ) {
        let revocable = offer_ids
            .iter()
            .any(|id| self.offers.get(id).is_some_and(|o| o.offer.revocable));
        let (agent, mut pool) = match self.take_offers(fw, &offer_ids) {
            Ok(Some(taken)) => {
                self.measures.push(crate::measures::Measure::OffersAccepted(
                    offer_ids.len() as u64
                ));
                taken
            }
            Ok(None) => {
                return self.drop_all(fw, launches(operations), "ACCEPT named no offers".into());
            }
            Err(message) => {
                self.request_allocation(now);
                return self.drop_all(fw, launches(operations), message);
            }
        };
        // Operations apply in order: a launch may use what a reserve made.
        // Each launch is (is it a group, its tasks).
        let mut tasks = Vec::new();
        for op in operations {
            match op {
                Operation::Launch { tasks: more } => tasks.push((false, more)),
                Operation::LaunchGroup { tasks: group } => tasks.push((true, group)),
                Operation::Reserve { role, resources } => {
                    if let Err(message) = self.reserve(fw, &agent, &mut pool, role, resources) {
                        self.send_to_framework(
                            fw,
                            Event::Error {
                                code: Refusal::OperationRefused,
                                message: format!("RESERVE refused: {message}"),
                            },
                        );
                    }
                }
                Operation::Unreserve { role, resources } => {
                    if let Err(message) = self.unreserve(&agent, &mut pool, role, resources) {
                        self.send_to_framework(
                            fw,
                            Event::Error {
                                code: Refusal::OperationRefused,
                                message: format!("UNRESERVE refused: {message}"),
                            },
                        );
                    }
                }
            }
        }
        let agent_conn = self.agents.get(&agent).and_then(|a| a.conn);
        let placement = Placement {
            agent: &agent,
            conn: agent_conn,
            revocable,
        };
        for (group, tasks) in tasks {
            if group {
                self.launch_group(fw, &placement, &mut pool, tasks);
            } else {
                for task in tasks {
                    match self.admit(fw, &task, &mut pool) {
                        Ok(allocation) => self.place(fw, &placement, task, allocation),
                        Err((reason, message)) => {
                            self.refuse_task(fw, &agent, task.task_id, reason, message)
                        }
                    }
                }
            }
        }
        if !pool.is_empty() {
            let until = self.refuse_until(now, refuse_ms);
            self.allocator.recover(fw, &agent, &pool, until);
        }
        self.request_allocation(now);
    }

    /// Checks one task against the books and the ACLs, and takes its
    /// resources from `pool`.
    fn admit(
        &self,
        fw: &FrameworkId,
        task: &TaskInfo,
        pool: &mut Allocation,
    ) -> Result<Allocation, (Reason, String)> {
        let invalid = |message: String| Err((Reason::TaskInvalid, message));
        if self.tasks.contains_key(&(fw.clone(), task.task_id.clone())) {
            return invalid(format!(
                "task id {} is already in use by this framework",
                task.task_id
            ));
        }
        if task.resources.mem_mib() == 0 {
            return invalid("a task needs mem (its memory limit), e.g. mem:32".into());
        }
        if crate::hosted::is_instance(&task.task_id) {
            return invalid(format!(
                "task ids starting with {} are the master's own",
                crate::hosted::INSTANCE_PREFIX
            ));
        }
        if matches!(task.kind, TaskKind::Scheduler(_)) {
            return invalid(
                "a framework cannot launch a hosted scheduler; submit it with `stoa submit`".into(),
            );
        }
        if matches!(&task.kind, TaskKind::Command(c) if c.argv.is_empty()) {
            return invalid("a command task needs argv[0], the program to run".into());
        }
        if let TaskKind::Wasm(w) = &task.kind
            && !w.files.is_empty()
            && !w.sandbox.preopens()
        {
            return invalid(
                "files are placed in the task's directory: give the task one (sandbox Directory)"
                    .into(),
            );
        }
        if let Some(message) = self.forbidden(fw, task) {
            return Err((Reason::NotAuthorized, message));
        }
        take_for_task(pool, task).ok_or_else(|| {
            (
                Reason::TaskInvalid,
                format!(
                    "task asks for {} but the offers have {} left (a task's resources must come from one pool: unreserved or one role's reservation)",
                    task.resources,
                    pool.total()
                ),
            )
        })
    }

    /// All of a group's tasks are admitted, or none is: each task of a
    /// refused group gets TASK_ERROR, naming the task that failed it.
    fn launch_group(
        &mut self,
        fw: &FrameworkId,
        placement: &Placement<'_>,
        pool: &mut Allocation,
        tasks: Vec<TaskInfo>,
    ) {
        let mut trial = pool.clone();
        let mut admitted = Vec::new();
        let mut failure = None;
        let mut ids = std::collections::BTreeSet::new();
        for task in &tasks {
            let verdict = if ids.insert(task.task_id.clone()) {
                self.admit(fw, task, &mut trial)
            } else {
                Err((
                    Reason::TaskInvalid,
                    format!("task id {} appears twice in the group", task.task_id),
                ))
            };
            match verdict {
                Ok(allocation) => admitted.push(allocation),
                Err(refusal) => {
                    failure = Some((task.task_id.clone(), refusal));
                    break;
                }
            }
        }
        match failure {
            None => {
                *pool = trial;
                for (task, allocation) in tasks.into_iter().zip(admitted) {
                    self.place(fw, placement, task, allocation);
                }
            }
            Some((culprit, (reason, message))) => {
                for task in tasks {
                    let (reason, message) = if task.task_id == culprit {
                        (reason, message.clone())
                    } else {
                        (
                            Reason::TaskInvalid,
                            format!("its group was refused: task {culprit}: {message}"),
                        )
                    };
                    self.refuse_task(fw, placement.agent, task.task_id, reason, message);
                }
            }
        }
    }

    /// Books an admitted task and sends it to its agent.
    fn place(
        &mut self,
        fw: &FrameworkId,
        placement: &Placement<'_>,
        task: TaskInfo,
        allocation: Allocation,
    ) {
        let key = (fw.clone(), task.task_id.clone());
        let agent = placement.agent.clone();
        let Some(conn) = placement.conn else {
            self.allocator.recover(fw, &agent, &allocation, None);
            let status = TaskStatus::new(task.task_id, TaskState::Dropped)
                .because(Reason::AgentDisconnected, "the agent is not connected")
                .on(agent);
            self.send_to_framework(fw, Event::Update { status, ack: None });
            return;
        };
        self.book_task(
            key,
            TaskEntry {
                agent,
                allocation,
                state: TaskState::Staging,
                revocable: placement.revocable,
                preempting: false,
                terminal_update: None,
                kill_requested: false,
                launched_at: self.clock,
            },
        );
        self.count_task(fw, |c| c.launched += 1);
        self.outbox.push_back(Transmit::ToAgent(
            conn,
            MasterToAgent::RunTask {
                framework_id: fw.clone(),
                task: Box::new(task),
            },
        ));
    }

    fn refuse_task(
        &mut self,
        fw: &FrameworkId,
        agent: &AgentId,
        task_id: TaskId,
        reason: Reason,
        message: String,
    ) {
        let status = TaskStatus::new(task_id, TaskState::Error)
            .because(reason, message)
            .on(agent.clone());
        self.send_to_framework(fw, Event::Update { status, ack: None });
    }

    /// Why the ACLs forbid `fw` to launch `task`, if they do.
    fn forbidden(&self, fw: &FrameworkId, task: &TaskInfo) -> Option<String> {
        let action = match task.kind {
            TaskKind::Command(_) => acl::Action::LaunchNative,
            TaskKind::Wasm(_) => acl::Action::LaunchWasm,
            // The master's own (a hosted scheduler), refused elsewhere.
            TaskKind::Scheduler(_) => return None,
        };
        let info = &self.frameworks.get(fw)?.info;
        self.config
            .acls
            .check(
                info.principal.as_deref(),
                action,
                acl::Object::Role(&info.role),
            )
            .err()
            .map(|denied| denied.to_string())
    }

    fn reserve(
        &mut self,
        fw: &FrameworkId,
        agent: &AgentId,
        pool: &mut Allocation,
        role: Role,
        resources: Resources,
    ) -> Result<(), String> {
        let fw_role = self
            .frameworks
            .get(fw)
            .map(|f| f.info.role.clone())
            .ok_or("unknown framework")?;
        if !role.contains(&fw_role) {
            return Err(format!(
                "a framework in {fw_role} may only reserve for {fw_role} or a role above it, not {role}"
            ));
        }
        let left = pool
            .unreserved
            .checked_sub(&resources)
            .ok_or_else(|| format!("{resources} is not among the offered unreserved resources"))?;
        self.allocator
            .reserve(agent, &role, &resources)
            .map_err(|e| e.to_string())?;
        pool.unreserved = left;
        let slot = pool.reserved.entry(role.clone()).or_default();
        *slot = slot
            .checked_add(&resources)
            .ok_or("reservation overflows")?;
        self.dynamic_reservation(agent, &role, &resources, true);
        Ok(())
    }

    fn unreserve(
        &mut self,
        agent: &AgentId,
        pool: &mut Allocation,
        role: Role,
        resources: Resources,
    ) -> Result<(), String> {
        let held = pool.reserved.get(&role).cloned().unwrap_or_default();
        let left = held
            .checked_sub(&resources)
            .ok_or_else(|| format!("{resources} reserved for {role} is not in the offers"))?;
        self.allocator
            .unreserve(agent, &role, &resources)
            .map_err(|e| e.to_string())?;
        if left.is_empty() {
            pool.reserved.remove(&role);
        } else {
            pool.reserved.insert(role.clone(), left);
        }
        pool.unreserved = pool
            .unreserved
            .checked_add(&resources)
            .ok_or("resources overlap")?;
        self.dynamic_reservation(agent, &role, &resources, false);
        Ok(())
    }

    fn drop_all(&mut self, fw: &FrameworkId, tasks: Vec<TaskInfo>, message: String) {
        for task in tasks {
            let status = TaskStatus::new(task.task_id, TaskState::Dropped)
                .because(Reason::InvalidOffers, message.clone());
            self.send_to_framework(fw, Event::Update { status, ack: None });
        }
    }

    /// Removes the named offers and returns their agent and pooled
    /// allocation, or why they cannot be used. Valid offers are consumed
    /// even when another one is invalid, as in Mesos: their resources go
    /// back to the allocator.
    fn take_offers(
        &mut self,
        fw: &FrameworkId,
        ids: &[OfferId],
    ) -> Result<Option<(AgentId, Allocation)>, String> {
        let mut problem = None;
        let mut taken = Vec::new();
        for id in ids {
            match self.offers.get(id) {
                Some(o) if &o.offer.framework_id == fw => taken.extend(self.offers.remove(id)),
                Some(_) => problem = Some(format!("{id} was made to another framework")),
                None => {
                    problem = Some(format!(
                        "{id} is not outstanding (unknown, used, declined or rescinded)"
                    ))
                }
            }
        }
        if problem.is_none()
            && taken
                .windows(2)
                .any(|w| w[0].offer.agent_id != w[1].offer.agent_id)
        {
            problem = Some("an ACCEPT may only combine offers of one agent".into());
        }
        if let Some(p) = problem {
            for o in taken {
                self.allocator
                    .recover(fw, &o.offer.agent_id, &o.allocation, None);
            }
            return Err(p);
        }
        let Some(first) = taken.first() else {
            return Ok(None);
        };
        let agent = first.offer.agent_id.clone();
        match pooled(&taken) {
            Some(pool) => Ok(Some((agent, pool))),
            // Every refusal gives what it took back to the allocator.
            None => {
                for o in taken {
                    self.allocator
                        .recover(fw, &o.offer.agent_id, &o.allocation, None);
                }
                Err("offers overlap".into())
            }
        }
    }
}

/// The resources of several offers of one agent as one allocation; `None`
/// if adding them up overflows.
fn pooled(taken: &[super::OfferEntry]) -> Option<Allocation> {
    let mut pool = Allocation::default();
    for o in taken {
        pool.unreserved = pool.unreserved.checked_add(&o.allocation.unreserved)?;
        for (role, r) in &o.allocation.reserved {
            let slot = pool.reserved.entry(role.clone()).or_default();
            *slot = slot.checked_add(r)?;
        }
    }
    Some(pool)
}

fn launches(operations: Vec<Operation>) -> Vec<TaskInfo> {
    operations
        .into_iter()
        .flat_map(|op| match op {
            Operation::Launch { tasks } | Operation::LaunchGroup { tasks } => tasks,
            Operation::Reserve { .. } | Operation::Unreserve { .. } => Vec::new(),
        })
        .collect()
}

/// Takes a task's resources from one part of the pool: a reservation first
/// (reserved resources are the framework's to use), else unreserved.
fn take_for_task(pool: &mut Allocation, task: &TaskInfo) -> Option<Allocation> {
    for (role, part) in pool.reserved.iter_mut() {
        if let Some(left) = part.checked_sub(&task.resources) {
            *part = left;
            let role = role.clone();
            pool.reserved.retain(|_, r| !r.is_empty());
            return Some(Allocation {
                unreserved: Default::default(),
                reserved: BTreeMap::from([(role, task.resources.clone())]),
            });
        }
    }
    let left = pool.unreserved.checked_sub(&task.resources)?;
    pool.unreserved = left;
    Some(Allocation {
        unreserved: task.resources.clone(),
        reserved: BTreeMap::new(),
    })
}
