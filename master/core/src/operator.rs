//! Operators' calls and views: weights, quotas, dynamic reservations,
//! teardown, the role and framework lists, and where a task's logs are.

use super::*;
use stoa_proto::operator::Caller;

impl Master {
    /// An operator's request. The reply is only to be sent after the
    /// writes of the next [`Master::ready`] are durable.
    /// The framework of `task` and the connection of the agent it runs (or
    /// ran) on, for reading its logs. `framework` picks one when several
    /// frameworks used the same task id.
    pub fn locate_task(
        &self,
        caller: &Caller,
        task: &TaskId,
        framework: Option<&FrameworkId>,
    ) -> Result<(FrameworkId, ConnId), String> {
        // Only frameworks the caller may see count: another tenant's task
        // of the same id neither answers nor makes the id ambiguous. A
        // framework that is gone is judged by the owner it had.
        let wanted = |(f, t): &(FrameworkId, TaskId)| t == task && framework.is_none_or(|w| w == f);
        let mut found: Vec<(FrameworkId, AgentId)> = Vec::new();
        let placed = self
            .placements
            .newest_first()
            .filter(|(key, (_, owner))| {
                wanted(key)
                    && match self.frameworks.get(&key.0) {
                        Some(_) => self.visible(caller, &key.0),
                        None => self.may_view(caller, owner.as_deref()),
                    }
            })
            .map(|(key, (agent, _))| (key, agent));
        let held = self
            .tasks
            .iter()
            .filter(|(key, _)| wanted(key) && self.visible(caller, &key.0))
            .map(|(key, t)| (key, &t.agent));
        for ((f, _), agent) in placed.chain(held) {
            if !found.iter().any(|(known, _)| known == f) {
                found.push((f.clone(), agent.clone()));
            }
        }
        let (framework_id, agent) = match found.len() {
            0 => return Err(format!("no task {task} is known to this master")),
            1 => found.swap_remove(0),
            _ => {
                let names: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
                return Err(format!(
                    "task id {task} is used by {} frameworks ({}): name one with --framework",
                    names.len(),
                    names.join(", ")
                ));
            }
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
        // From the book's counts, less the hosted scheduler's own
        // instances (their ids sort together, so only they are visited).
        let running = |fw: &FrameworkId| {
            let live: usize = self
                .tasks
                .states_of(fw)
                .filter(|(s, _)| !s.is_terminal())
                .map(|(_, n)| n)
                .sum();
            let instances = hosted::instance_ids_of(&self.tasks, fw)
                .filter(|id| {
                    self.tasks
                        .get(&(fw.clone(), (*id).clone()))
                        .is_some_and(|t| !t.state.is_terminal())
                })
                .count();
            live - instances
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
                allocated: self
                    .allocator
                    .framework_allocation(id)
                    .iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
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

    pub fn handle_operator_call(
        &mut self,
        now: Time,
        caller: &Caller,
        call: OperatorCall,
    ) -> OperatorReply {
        self.clock = now;
        // What the caller may ask: reads are filtered to what it may view
        // below; changes to roles go by the ACLs; ending another's
        // framework or task needs a kill rule (and reads as unknown where
        // the caller cannot even view it).
        let principal = Some(caller.principal());
        let acls = &self.config.acls;
        let gate = match &call {
            OperatorCall::GetFrameworks
            | OperatorCall::GetSummary
            | OperatorCall::GetTasks(_)
            | OperatorCall::GetEvents { .. }
            | OperatorCall::ReadLog { .. }
            | OperatorCall::KillTask { .. } => Ok(()),
            OperatorCall::SetWeight { role, .. } => {
                acls.check(principal, acl::Action::SetWeight, acl::Object::Role(role))
            }
            OperatorCall::SetQuota { role, .. } => {
                acls.check(principal, acl::Action::SetQuota, acl::Object::Role(role))
            }
            OperatorCall::Reserve { role, .. } | OperatorCall::Unreserve { role, .. } => {
                acls.check(principal, acl::Action::Reserve, acl::Object::Role(role))
            }
            OperatorCall::Teardown { framework_id } => {
                if !self.visible(caller, framework_id) {
                    return OperatorReply::Refused {
                        message: format!("no framework {framework_id} is known to this master"),
                    };
                }
                let owner = self
                    .frameworks
                    .get(framework_id)
                    .and_then(|f| f.info.principal.as_deref());
                acls.check(principal, acl::Action::Kill, acl::Object::Owner(owner))
            }
            OperatorCall::GetRoles
            | OperatorCall::GetAgents
            | OperatorCall::GetOffers
            | OperatorCall::CreateToken { .. }
            | OperatorCall::Revoke(_) => {
                if *caller != Caller::Operator {
                    return OperatorReply::Forbidden {
                        message: format!(
                            "{} may not {}: only the operator may; a tenant sees and ends its own frameworks and tasks",
                            caller.principal(),
                            call.what()
                        ),
                    };
                }
                Ok(())
            }
        };
        if let Err(denied) = gate {
            return OperatorReply::Forbidden {
                message: denied.to_string(),
            };
        }
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
            OperatorCall::GetFrameworks => {
                let mut all = self.framework_list();
                all.retain(|f| self.may_view(caller, f.principal.as_deref()));
                return OperatorReply::Frameworks(all);
            }
            OperatorCall::GetSummary => {
                return OperatorReply::Summary(self.cluster_summary(caller));
            }
            OperatorCall::GetAgents => return OperatorReply::Agents(self.agent_list()),
            OperatorCall::GetTasks(query) => {
                return OperatorReply::Tasks(self.task_page(caller, &query));
            }
            OperatorCall::GetOffers => return OperatorReply::Offers(self.offer_list(now)),
            OperatorCall::GetEvents { after, limit } => {
                let limit = usize::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
                return OperatorReply::Events(self.events.page(
                    &self.instance,
                    (caller, &self.config.acls),
                    after,
                    limit,
                ));
            }
            OperatorCall::KillTask {
                framework_id,
                task_id,
            } => {
                let candidates: Vec<FrameworkId> = self
                    .tasks
                    .iter()
                    .filter(|((f, t), task)| {
                        *t == task_id
                            && !task.state.is_terminal()
                            && framework_id.as_ref().is_none_or(|w| w == f)
                            && self.visible(caller, f)
                    })
                    .map(|((f, _), _)| f.clone())
                    .collect();
                match candidates.as_slice() {
                    [fw] => {
                        let owner = self
                            .frameworks
                            .get(fw)
                            .and_then(|f| f.info.principal.as_deref());
                        if let Err(denied) = self.config.acls.check(
                            principal,
                            acl::Action::Kill,
                            acl::Object::Owner(owner),
                        ) {
                            return OperatorReply::Forbidden {
                                message: denied.to_string(),
                            };
                        }
                        tracing::info!(framework = %fw, task = %task_id, by = %caller.principal(), "a task killed through the operator API");
                        let fw = fw.clone();
                        self.kill(&fw, task_id);
                        Ok(())
                    }
                    [] => Err(format!("no running task {task_id} is known to this master")),
                    several => Err(format!(
                        "{} frameworks run a task {task_id}; name one (framework ids: {})",
                        several.len(),
                        several
                            .iter()
                            .map(|f| f.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            OperatorCall::Revoke(revocation) => revocation.key().map(|key| {
                if !self.registry.state().revoked.contains_key(&key) {
                    tracing::warn!(%key, "revoked");
                    let seq = self.registry.state().revoked.len() as u64 + 1;
                    self.registry.write(Write::Revoked(key, seq));
                }
            }),
            OperatorCall::CreateToken { .. } => {
                return OperatorReply::Refused {
                    message: "tokens are made by the master's driver, not its core".into(),
                };
            }
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
    pub(super) fn dynamic_reservation(
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
}
