//! Tasks' status updates from agents to schedulers and their
//! acknowledgements back, kills, messages to tasks, and the memory of
//! ended tasks for reconciliation.

use super::*;

impl Master {
    /// Keeps how a task ended for reconciliation after it is forgotten.
    pub(super) fn remember_end(&mut self, key: &(FrameworkId, TaskId), status: &TaskStatus) {
        self.ended.put(key.clone(), status.clone());
    }

    /// Books a task placed on `agent`. Its id may have been used before:
    /// how that task ended no longer stands for it.
    pub(super) fn book_task(&mut self, key: (FrameworkId, TaskId), entry: TaskEntry) {
        self.ended.remove(&key);
        let owner = self
            .frameworks
            .get(&key.0)
            .and_then(|f| f.info.principal.clone());
        self.placements
            .put(key.clone(), (entry.agent.clone(), owner));
        self.tasks.insert(key, entry);
    }

    /// Drops an ended task from the books; its id may be used again.
    pub(super) fn forget_task(&mut self, key: &(FrameworkId, TaskId)) {
        if let Some(task) = self.tasks.remove(key) {
            let status = TaskStatus::new(key.1.clone(), task.state).on(task.agent);
            self.remember_end(key, &status);
        }
    }

    /// What the master can say of a task now: its state, how it ended if
    /// that is remembered, or UNKNOWN.
    pub(super) fn task_status(&self, fw: &FrameworkId, task_id: TaskId) -> TaskStatus {
        let key = (fw.clone(), task_id);
        if let Some(t) = self.tasks.get(&key) {
            return TaskStatus::new(key.1, t.state).on(t.agent.clone());
        }
        if let Some(status) = self.ended.get(&key) {
            return status.clone();
        }
        TaskStatus::new(key.1, TaskState::Unknown)
            .because(Reason::TaskUnknown, "the master does not know this task")
    }

    pub(super) fn status_update(
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
        // An agent resends an update until its acknowledgement comes: the
        // end it already sent, or an older one that came after the end.
        if self.tasks.get(&key).is_some_and(|t| {
            t.agent == agent
                && t.state.is_terminal()
                && (t.terminal_update == Some(update_id) || !status.state.is_terminal())
        }) {
            self.measures.push(crate::measures::Measure::UpdateResent);
        }
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
                || self.ended.get(&key).is_some())
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
            if state == TaskState::Running
                && matches!(task.state, TaskState::Staging | TaskState::Starting)
            {
                self.measures.push(crate::measures::Measure::LaunchLatency(
                    now.saturating_since(task.launched_at),
                ));
            }
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
    pub(super) fn release_task(
        &mut self,
        key: &(FrameworkId, TaskId),
        state: TaskState,
        update: Option<UpdateId>,
    ) {
        let Some(was) = self.tasks.set_state(key, state) else {
            return;
        };
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        let was_terminal = was.is_terminal();
        if state.is_terminal() && !was_terminal {
            task.terminal_update = update;
            let (agent, allocation) = (task.agent.clone(), std::mem::take(&mut task.allocation));
            self.allocator.recover(&key.0, &agent, &allocation, None);
            self.count_task(&key.0, |c| c.ended += 1);
        }
    }

    /// Counts a launch or an end of one of `fw`'s tasks.
    pub(super) fn count_task(&mut self, fw: &FrameworkId, count: impl Fn(&mut TaskCounts)) {
        count(&mut self.counts);
        if let Some(f) = self.frameworks.get_mut(fw) {
            count(&mut f.counts);
        }
    }

    /// KILL: sent to the task's agent now, or when it comes back if it is
    /// unreachable (`kill_requested`).
    pub(super) fn kill(&mut self, fw: &FrameworkId, task_id: TaskId) {
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
    pub(super) fn runs_on(&self, conn: ConnId, fw: &FrameworkId, task: &TaskId) -> Option<AgentId> {
        let agent = self.connections.agent(conn)?;
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
    pub(super) fn message_task(&mut self, fw: &FrameworkId, task_id: TaskId, data: Vec<u8>) {
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

    pub(super) fn acknowledge(
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
}
