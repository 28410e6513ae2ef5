//! A restarted master takes back its registry; and the check that the
//! allocator's books balance with the master's (for the simulator and
//! tests).

use super::*;

impl Master {
    /// Takes back what a previous run persisted. Call once, before any
    /// other input. Entries the allocator refuses are logged and dropped.
    ///
    /// Admitted agents come back unreachable until they register again;
    /// frameworks come back with their schedulers away, their failover
    /// timeouts counted from `now`.
    pub fn restore(&mut self, now: Time, registry: Registry) {
        self.clock = now;
        self.events.push(
            now,
            crate::events::Audience::Everyone,
            EventKind::LeaderElected {
                instance: self.instance.clone(),
            },
        );
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
                            counts: TaskCounts::default(),
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
            let due = now + self.config.agent_removal_timeout;
            self.timers.set(Timer::Removal(id.clone()), due);
            self.recovering.insert(id.clone());
        }
        if !self.recovering.is_empty() {
            let due = now + self.config.agent_reregister_timeout;
            self.timers.set(Timer::Reregister, due);
        }
        self.registry = Journal::restore(registry);
        self.restore_hosted();
    }

    /// Checks that the allocator's books balance with the master's: on
    /// every agent, what offers and live tasks hold plus what is free is
    /// the agent's total. For the simulator and tests; walks the cluster.
    pub fn check_books(&self) -> Result<(), String> {
        self.tasks.counts_hold()?;
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
}
