//! Frameworks: subscription and failover of their schedulers,
//! reconciliation, updates of their info, teardown, and messages to them.

use super::*;

impl Master {
    /// SEND_MESSAGE: bytes for a framework's scheduler, from its own
    /// principal. Answered on `conn`, which then closes.
    pub(super) fn send_message(&mut self, conn: ConnId, fw: &FrameworkId, data: Vec<u8>) {
        let principal = self.connections.principal(conn);
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

    /// SUBSCRIBE, or SUBSCRIBE_HOSTED once the instance is checked
    /// (`hosted`).
    pub(super) fn subscribe(
        &mut self,
        now: Time,
        conn: ConnId,
        mut info: FrameworkInfo,
        hosted: bool,
    ) {
        let spec = match (self.connections.principal(conn), &info.principal) {
            (Some(proven), Some(claimed)) if proven != claimed => Err((
                Refusal::NotAuthorized,
                format!(
                    "the framework claims principal {claimed:?} but its certificate names {proven:?}"
                ),
            )),
            _ => check_framework(&info).map_err(|why| (Refusal::Invalid, why)),
        };
        if let Some(proven) = self.connections.principal(conn) {
            info.principal = Some(proven.clone());
        }
        if let Err((code, message)) = spec {
            self.refuse_scheduler(conn, code, message);
            return;
        }
        let Ok(spec) = spec else {
            return;
        };
        if let Err(denied) = self.config.acls.check(
            info.principal.as_deref(),
            crate::acl::Action::RegisterFramework,
            crate::acl::Object::Role(&info.role),
        ) {
            self.refuse_scheduler(conn, Refusal::NotAuthorized, denied.to_string());
            return;
        }
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
        let subscribed = EventKind::FrameworkSubscribed {
            framework_id: id.clone(),
            name: info.name.clone(),
            role: info.role.clone(),
        };
        self.connections.bind(conn, Peer::Framework(id.clone()));
        self.frameworks.insert(
            id.clone(),
            FrameworkEntry {
                conn: Some(conn),
                info,
                disconnected_at: None,
                counts: TaskCounts::default(),
            },
        );
        self.event_of(&id, subscribed);
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
            self.connections.close(old);
        }
        // Offers made to the old scheduler go back to the pool.
        self.rescind_framework_offers(&id);
        self.allocator.update_framework(&id, spec);
        self.allocator.set_framework_active(&id, true);
        tracing::info!(framework = %id, "scheduler failed over");
        self.event_of(
            &id,
            EventKind::FrameworkFailedOver {
                framework_id: id.clone(),
            },
        );
        self.connections.bind(conn, Peer::Framework(id.clone()));
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
    pub(super) fn reconcile(&mut self, fw: &FrameworkId, tasks: Vec<TaskId>) {
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
                    if self.reregister_passed {
                        self.send_unreachable_while_away(fw, task_id.clone());
                    }
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
    pub(super) fn update_framework(
        &mut self,
        now: Time,
        conn: ConnId,
        fw: &FrameworkId,
        info: FrameworkInfo,
    ) {
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

    pub(super) fn scheduler_lost(&mut self, now: Time, id: &FrameworkId) {
        let Some(fw) = self.frameworks.get_mut(id) else {
            return;
        };
        fw.conn = None;
        fw.disconnected_at = Some(now);
        tracing::info!(framework = %id, failover_timeout_ms = fw.info.failover_timeout_ms, "scheduler disconnected");
        self.event_of(
            id,
            EventKind::FrameworkDisconnected {
                framework_id: id.clone(),
            },
        );
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
    /// deadline goes into the timer table.
    pub(super) fn arm_failover(&mut self, id: &FrameworkId) {
        let Some(f) = self.frameworks.get(id) else {
            return;
        };
        if let Some(left) = f.disconnected_at {
            let due = left + Duration::from_millis(f.info.failover_timeout_ms);
            self.timers.set(Timer::Failover(id.clone()), due);
        }
    }

    fn disarm_failover(&mut self, id: &FrameworkId) {
        self.timers.cancel(&Timer::Failover(id.clone()));
    }

    /// Forgets a framework: its offers go back, its tasks are killed.
    pub(super) fn remove_framework(&mut self, now: Time, id: &FrameworkId) {
        self.event_of(
            id,
            EventKind::FrameworkRemoved {
                framework_id: id.clone(),
            },
        );
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
}
