//! Offers: allocation runs, preemption for unmet guarantees, declines
//! and their filters, and rescinds.

use super::*;

impl Master {
    /// Withdraws every outstanding offer of `agent`.
    pub(super) fn rescind_agent_offers(&mut self, agent: &AgentId) {
        for id in self.offers.of_agent(agent) {
            self.rescind(id);
        }
    }

    /// Withdraws every outstanding offer made to `fw`.
    pub(super) fn rescind_framework_offers(&mut self, fw: &FrameworkId) {
        for id in self.offers.of_framework(fw) {
            self.rescind(id);
        }
    }

    /// Withdraws an offer, returning its resources to the allocator.
    pub(super) fn rescind(&mut self, offer_id: OfferId) {
        let Some(entry) = self.offers.remove(&offer_id) else {
            return;
        };
        let (fw, agent) = (&entry.offer.framework_id, &entry.offer.agent_id);
        self.allocator.recover(fw, agent, &entry.allocation, None);
        self.measures.push(crate::measures::Measure::OfferRescinded);
        self.send_to_framework(&entry.offer.framework_id, Event::Rescind { offer_id });
    }

    pub(super) fn decline(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        offer_ids: Vec<OfferId>,
        refuse_ms: Option<u64>,
    ) {
        self.measures.push(crate::measures::Measure::OffersDeclined(
            offer_ids.len() as u64
        ));
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
    pub(super) fn refuse_until(&self, now: Time, refuse_ms: Option<u64>) -> Option<Time> {
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

    pub(super) fn allocate(&mut self, now: Time) {
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
        let made = batches.values().map(|o| o.len() as u64).sum();
        self.measures
            .push(crate::measures::Measure::AllocationRun { offers: made });
        let mut roles = std::collections::BTreeSet::new();
        for (fw, offers) in batches {
            roles.extend(self.frameworks.get(&fw).map(|f| f.info.role.clone()));
            self.send_to_framework(&fw, Event::Offers { offers });
        }
        for role in roles {
            let allocated = self
                .allocator
                .role_allocation(&role)
                .iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            self.event(EventKind::Allocated { role, allocated });
        }
        self.preempt();
    }
}
