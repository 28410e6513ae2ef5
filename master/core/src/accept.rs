//! ACCEPT: validate the named offers and each launch against them, then
//! launch what is valid. Checks run cheapest first: the offers as a whole
//! (a bad offer invalidates every launch, TASK_DROPPED), then each task on
//! its own (a bad task gets TASK_ERROR and does not affect its siblings).

use super::{Master, TaskEntry, Transmit};
use stoa_proto::{
    AgentId, Event, FrameworkId, MasterToAgent, OfferId, Operation, Reason, Resources, TaskInfo,
    TaskState, TaskStatus, Time,
};

impl Master {
    pub(super) fn accept(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        offer_ids: Vec<OfferId>,
        operations: Vec<Operation>,
        refuse_ms: Option<u64>,
    ) {
        let tasks: Vec<TaskInfo> = operations
            .into_iter()
            .flat_map(|op| match op {
                Operation::Launch { tasks } => tasks,
            })
            .collect();
        let pool = match self.take_offers(fw, &offer_ids) {
            Ok(pool) => pool,
            Err(message) => {
                for task in tasks {
                    let status = TaskStatus::new(task.task_id, TaskState::Dropped)
                        .because(Reason::InvalidOffers, message.clone());
                    self.send_to_framework(fw, Event::Update { status, ack: None });
                }
                self.request_allocation(now);
                return;
            }
        };
        let Some((agent, mut remaining)) = pool else {
            // No offers named: nothing to launch on.
            for task in tasks {
                let status = TaskStatus::new(task.task_id, TaskState::Dropped)
                    .because(Reason::InvalidOffers, "ACCEPT named no offers");
                self.send_to_framework(fw, Event::Update { status, ack: None });
            }
            return;
        };
        let agent_conn = self.agents.get(&agent).and_then(|a| a.conn);
        for task in tasks {
            let key = (fw.clone(), task.task_id.clone());
            let verdict = if self.tasks.contains_key(&key) {
                Err(format!(
                    "task id {} is already in use by this framework",
                    task.task_id
                ))
            } else if task.resources.mem_mib() == 0 {
                Err("a task needs mem (its memory limit), e.g. mem:32".to_string())
            } else {
                remaining.checked_sub(&task.resources).ok_or_else(|| {
                    format!(
                        "task asks for {} but only {} is left in the offers",
                        task.resources, remaining
                    )
                })
            };
            match (verdict, agent_conn) {
                (Ok(left), Some(conn)) => {
                    remaining = left;
                    self.books().hold(&agent, fw, &task.resources);
                    self.tasks.insert(
                        key,
                        TaskEntry {
                            agent: agent.clone(),
                            resources: task.resources.clone(),
                            state: TaskState::Staging,
                            terminal_update: None,
                        },
                    );
                    self.outbox.push_back(Transmit::ToAgent(
                        conn,
                        MasterToAgent::RunTask {
                            framework_id: fw.clone(),
                            task: Box::new(task),
                        },
                    ));
                }
                (Ok(_), None) => {
                    let status = TaskStatus::new(task.task_id, TaskState::Dropped)
                        .because(Reason::AgentDisconnected, "the agent is not connected")
                        .on(agent.clone());
                    self.send_to_framework(fw, Event::Update { status, ack: None });
                }
                (Err(message), _) => {
                    let status = TaskStatus::new(task.task_id, TaskState::Error)
                        .because(Reason::TaskInvalid, message)
                        .on(agent.clone());
                    self.send_to_framework(fw, Event::Update { status, ack: None });
                }
            }
        }
        if !remaining.is_empty() {
            self.add_filter(now, fw, &agent, refuse_ms);
        }
        self.request_allocation(now);
    }

    /// Removes the named offers and returns their agent and summed
    /// resources, or why they cannot be used. Valid offers are consumed
    /// even when another one is invalid, as in Mesos: their resources go
    /// back to the pool.
    fn take_offers(
        &mut self,
        fw: &FrameworkId,
        ids: &[OfferId],
    ) -> Result<Option<(AgentId, Resources)>, String> {
        let mut problem = None;
        let mut taken = Vec::new();
        for id in ids {
            match self.offers.get(id) {
                Some(o) if &o.framework_id == fw => {
                    if let Some(o) = self.offers.remove(id) {
                        taken.push(o);
                    }
                }
                Some(_) => problem = Some(format!("{id} was made to another framework")),
                None => {
                    problem = Some(format!(
                        "{id} is not outstanding (unknown, used, declined or rescinded)"
                    ))
                }
            }
        }
        for o in &taken {
            self.books().unoffer(&o.agent_id, fw, &o.resources);
        }
        if problem.is_none() && taken.windows(2).any(|w| w[0].agent_id != w[1].agent_id) {
            problem = Some("an ACCEPT may only combine offers of one agent".into());
        }
        if problem.is_none() && ids.len() != taken.len() {
            problem = Some("the same offer is named twice".into());
        }
        if let Some(p) = problem {
            return Err(p);
        }
        let Some(first) = taken.first() else {
            return Ok(None);
        };
        let agent = first.agent_id.clone();
        let mut pool = Resources::new();
        for o in &taken {
            pool = pool.checked_add(&o.resources).ok_or("offers overlap")?;
        }
        Ok(Some((agent, pool)))
    }
}
