//! Agents: registration and re-registration with the tasks they hold,
//! heartbeats, unreachable agents and their removal.

use super::*;

impl Master {
    /// Adds an agent's resources, static and dynamic reservations to the
    /// allocator.
    pub(super) fn add_agent_to_allocator(
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

    /// Tells an agent why it is refused and closes its connection.
    fn refuse_agent(&mut self, conn: ConnId, message: String) {
        self.outbox.push_back(Transmit::ToAgent(
            conn,
            MasterToAgent::Refused {
                message: message.clone(),
            },
        ));
        self.outbox.push_back(Transmit::Close(conn, message));
    }

    pub(super) fn register_agent(
        &mut self,
        now: Time,
        conn: ConnId,
        info: AgentInfo,
        agent_id: Option<AgentId>,
        tasks: Vec<RunningTask>,
    ) {
        if let Err(message) = check_hostname(&info.hostname) {
            self.refuse_agent(conn, message);
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
        // An agent id is its certificate's: another agent certificate may
        // not take it over (with its tasks and reservations).
        let principal = self.connections.principal(conn).cloned();
        if let (Some(bound), Some(presented)) = (
            self.registry.state().agent_principals.get(&id),
            principal.as_ref(),
        ) && bound != presented
        {
            let message = format!(
                "agent id {id} was registered with certificate {bound}; certificate {presented} may not take it over (remove its work directory's agent_id to register anew)"
            );
            tracing::warn!(agent = %id, %bound, %presented, "refused an agent certificate reclaiming another's id");
            self.refuse_agent(conn, message);
            self.connections.close(conn);
            return;
        }
        if let Some(principal) = principal
            && self.registry.state().agent_principals.get(&id) != Some(&principal)
        {
            self.registry
                .write(Write::AgentPrincipal(id.clone(), principal));
        }
        // A second connection for the same agent replaces the first.
        if let Some(old) = self.agents.get(&id).and_then(|a| a.conn) {
            self.connections.close(old);
            self.outbox.push_back(Transmit::Close(
                old,
                "agent registered on a new connection".into(),
            ));
        }
        self.connections.bind(conn, Peer::Agent(id.clone()));
        if self.agents.contains_key(&id) {
            self.allocator.set_agent_active(&id, true);
        } else {
            let dynamic =
                (self.registry.state().reservations.get(&id).cloned()).unwrap_or_default();
            if let Err(message) = self.add_agent_to_allocator(&id, &info, &dynamic) {
                self.refuse_agent(conn, message);
                self.connections.close(conn);
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
        entry.unreachable_since = None;
        self.timers.cancel(&Timer::Removal(id.clone()));
        entry.conn = Some(conn);
        entry.info = info;
        self.heard_from(&id, now);
        let due = now + self.config.agent_timeout;
        self.timers.set(Timer::Heartbeat(id.clone()), due);
        tracing::info!(agent = %id, hostname = %self.agents[&id].info.hostname, resources = %self.agents[&id].info.resources, "agent registered");
        self.event(EventKind::AgentRegistered {
            agent_id: id.clone(),
            hostname: self.agents[&id].info.hostname.clone(),
        });
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
    /// The re-registration timeout passed: agents admitted before this
    /// master started that are still away are treated as lost, as any
    /// unreachable agent is. Frameworks hear FAILURE for each, and tasks
    /// being reconciled that may run on one are UNREACHABLE: not UNKNOWN,
    /// which would let a framework launch again what may still run. Their
    /// final answer waits until every such agent is back or removed.
    pub(super) fn reregister_timed_out(&mut self) {
        if self.recovering.is_empty() {
            return;
        }
        self.reregister_passed = true;
        tracing::warn!(
            agents = self.recovering.len(),
            "agents admitted before this master started did not register again in time; treating them as lost"
        );
        let frameworks: Vec<FrameworkId> = self.frameworks.keys().cloned().collect();
        let away: Vec<AgentId> = self.recovering.iter().cloned().collect();
        for agent_id in away {
            for fw in &frameworks {
                let agent_id = agent_id.clone();
                self.send_to_framework(fw, Event::Failure { agent_id });
            }
        }
        // Only those still unknown: a task heard of since (its agent came
        // back) has had its answer.
        for (fw, task) in self.deferred_reconciles.clone() {
            if self.task_status(&fw, task.clone()).state == TaskState::Unknown {
                self.send_unreachable_while_away(&fw, task);
            }
        }
    }

    /// A task being reconciled that may run on an agent not back since
    /// this master started, past the re-registration timeout.
    pub(super) fn send_unreachable_while_away(&mut self, fw: &FrameworkId, task: TaskId) {
        let status = TaskStatus::new(task, TaskState::Unreachable).because(
            Reason::AgentDisconnected,
            "it may run on an agent that has not registered with this master since it started",
        );
        self.send_to_framework(fw, Event::Update { status, ack: None });
    }

    fn recovered_one(&mut self) {
        if !self.recovering.is_empty() {
            return;
        }
        self.timers.cancel(&Timer::Reregister);
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
    pub(super) fn book_reported(&mut self, agent: &AgentId, r: &RunningTask) -> bool {
        let key = (r.framework_id.clone(), r.task_id.clone());
        if let Some(task) = self.tasks.get(&key) {
            let back = task.state == TaskState::Unreachable;
            if back {
                self.tasks.set_state(&key, r.state);
            }
            return back;
        }
        let allocation = self.claim_running(agent, r);
        self.book_task(
            key,
            TaskEntry {
                agent: agent.clone(),
                allocation,
                state: r.state,
                revocable: false,
                preempting: false,
                terminal_update: None,
                kill_requested: false,
                launched_at: self.clock,
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

    /// An agent spoke. Its heartbeat timer is not moved now (that would
    /// be two tree updates on every message of every agent): when it
    /// fires, it is set again from the last time the agent spoke.
    pub(super) fn heard_from(&mut self, id: &AgentId, now: Time) {
        if let Some(agent) = self.agents.get_mut(id) {
            agent.last_heartbeat = now;
        }
    }

    /// An agent's heartbeat timer fired: it has been silent for the
    /// timeout, and is unreachable; or it spoke since, and the timer is
    /// set again from then.
    pub(super) fn heartbeat_due(&mut self, now: Time, id: AgentId) {
        let Some(agent) = self.agents.get(&id) else {
            return;
        };
        let Some(conn) = agent.conn else { return };
        let due = agent.last_heartbeat + self.config.agent_timeout;
        if due > now {
            self.timers.set(Timer::Heartbeat(id), due);
            return;
        }
        tracing::warn!(agent = %id, "agent missed its heartbeats; marking it unreachable");
        self.outbox
            .push_back(Transmit::Close(conn, "missed heartbeats".into()));
        self.handle_disconnected(now, conn);
    }

    pub(super) fn agent_lost(&mut self, now: Time, id: &AgentId) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        agent.conn = None;
        if agent.unreachable_since.is_none() {
            agent.unreachable_since = Some(now);
            let due = now + self.config.agent_removal_timeout;
            self.timers.set(Timer::Removal(id.clone()), due);
        }
        self.timers.cancel(&Timer::Heartbeat(id.clone()));
        tracing::warn!(agent = %id, "agent disconnected; its tasks are unreachable");
        self.event(EventKind::AgentUnreachable {
            agent_id: id.clone(),
        });
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
            self.tasks.set_state(&key, TaskState::Unreachable);
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
    pub(super) fn remove_agent(&mut self, now: Time, id: &AgentId) {
        if self.agents.get(id).is_none_or(|a| a.conn.is_some()) {
            return;
        }
        tracing::warn!(agent = %id, "agent unreachable past the removal timeout; removing it");
        self.event(EventKind::AgentRemoved {
            agent_id: id.clone(),
        });
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
        self.timers.cancel(&Timer::Heartbeat(id.clone()));
        self.timers.cancel(&Timer::Removal(id.clone()));
        let seq = self.registry.next_seq();
        self.registry.write(Write::AgentRemoved(id.clone(), seq));
        if self.recovering.remove(id) {
            self.recovered_one();
        }
        self.check_instances(now);
        self.request_allocation(now);
    }
}
