//! What the operator API shows: the cluster's summary, agents, tasks and
//! offers, each as the caller may see it.

use super::*;
use stoa_proto::operator::{
    AgentStatus, Caller, ClusterSummary, OfferStatus, TaskPage, TaskQuery, TaskView,
};

impl Master {
    /// May `caller` see framework `fw`? Its own, and others' where the
    /// ACLs let it view their owner's (the operator sees all).
    pub fn visible(&self, caller: &Caller, fw: &FrameworkId) -> bool {
        *caller == Caller::Operator
            || self
                .frameworks
                .get(fw)
                .is_some_and(|f| self.may_view(caller, f.info.principal.as_deref()))
    }

    /// May `caller` see what a framework of `owner` does?
    pub fn may_view(&self, caller: &Caller, owner: Option<&str>) -> bool {
        self.config
            .acls
            .check(
                Some(caller.principal()),
                acl::Action::View,
                acl::Object::Owner(owner),
            )
            .is_ok()
    }

    /// Tokens and certificates revoked ([`Revocation::key`]): refused by
    /// the drivers from now on.
    ///
    /// [`Revocation::key`]: stoa_proto::operator::Revocation::key
    pub fn revoked(&self) -> &BTreeMap<String, u64> {
        &self.registry.state().revoked
    }

    /// The ACLs in force.
    pub fn acls(&self) -> &acl::Acls {
        &self.config.acls
    }

    /// Puts new ACLs in force (a reload of `--acls`); they decide every
    /// call from now on.
    pub fn set_acls(&mut self, acls: acl::Acls) {
        self.config.acls = acls;
    }

    pub(super) fn cluster_summary(&self, caller: &Caller) -> ClusterSummary {
        // From the book's counts: the cost follows frameworks, not tasks.
        let mut by_state: BTreeMap<TaskState, usize> = BTreeMap::new();
        let mut unacknowledged = 0;
        for fw in self.tasks.frameworks() {
            if !self.visible(caller, fw) {
                continue;
            }
            for (state, n) in self.tasks.states_of(fw) {
                if state.is_terminal() {
                    unacknowledged += n;
                } else {
                    *by_state.entry(state).or_default() += n;
                }
            }
        }
        // The operator counts every task since this master began to lead;
        // a tenant, the tasks of its frameworks still known.
        let counts = match caller {
            Caller::Operator => self.counts,
            Caller::Principal(_) => self
                .frameworks
                .iter()
                .filter(|(id, _)| self.visible(caller, id))
                .fold(TaskCounts::default(), |sum, (_, f)| sum.add(f.counts)),
        };
        let (mut total, mut free) = (Resources::new(), Resources::new());
        for id in self.agents.keys() {
            if let Some((t, f)) = self.allocator.agent_books(id) {
                total = total.checked_add(&t).unwrap_or(total);
                free = free.checked_add(&f).unwrap_or(free);
            }
        }
        ClusterSummary {
            instance: self.instance.clone(),
            agents: self.agents.len(),
            connected_agents: self.agents.values().filter(|a| a.conn.is_some()).count(),
            frameworks: self
                .frameworks
                .keys()
                .filter(|f| self.visible(caller, f))
                .count(),
            tasks: by_state.into_iter().collect(),
            offers: match caller {
                Caller::Operator => self.offers.len(),
                Caller::Principal(_) => self
                    .offers
                    .values()
                    .filter(|o| self.visible(caller, &o.offer.framework_id))
                    .count(),
            },
            total,
            free,
            schedulers_connected: self
                .frameworks
                .iter()
                .filter(|(id, f)| f.conn.is_some() && self.visible(caller, id))
                .count(),
            unacknowledged,
            tasks_launched: counts.launched,
            tasks_ended: counts.ended,
        }
    }

    pub(super) fn agent_list(&self) -> Vec<AgentStatus> {
        self.agents
            .iter()
            .map(|(id, a)| {
                let (total, free) = self
                    .allocator
                    .agent_books(id)
                    .unwrap_or_else(|| (a.info.resources.clone(), Resources::new()));
                AgentStatus {
                    id: id.clone(),
                    hostname: a.info.hostname.clone(),
                    connected: a.conn.is_some(),
                    unreachable: a.unreachable_since.is_some(),
                    total,
                    free,
                    tasks: self.tasks.live_on(id),
                }
            })
            .collect()
    }

    /// A page of tasks in (framework, task) order.
    pub(super) fn task_page(&self, caller: &Caller, query: &TaskQuery) -> TaskPage {
        let limit = match query.limit {
            0 => TaskQuery::DEFAULT_LIMIT,
            n => n.min(TaskQuery::MAX_LIMIT),
        } as usize;
        // In (framework, task) order from the page's start, taking only
        // what the page needs: a first page costs the same whatever the
        // number of tasks.
        let start = query.after.as_ref();
        let mut keys: Vec<(&FrameworkId, &TaskId)> = Vec::with_capacity(limit + 1);
        'frameworks: for fw in self.tasks.frameworks() {
            if start.is_some_and(|(after, _)| fw < after)
                || query.framework.as_ref().is_some_and(|f| f != fw)
                || !self.visible(caller, fw)
            {
                continue;
            }
            let from = match start {
                Some((after, id)) if after == fw => std::ops::Bound::Excluded(id.clone()),
                _ => std::ops::Bound::Unbounded,
            };
            for id in self.tasks.ids_of(fw, from) {
                let Some(t) = self.tasks.get(&(fw.clone(), id.clone())) else {
                    continue;
                };
                if query.agent.as_ref().is_none_or(|a| *a == t.agent)
                    && query.state.is_none_or(|s| s == t.state)
                {
                    keys.push((fw, id));
                    if keys.len() > limit {
                        break 'frameworks;
                    }
                }
            }
        }
        let more = keys.len() > limit;
        keys.truncate(limit);
        let tasks: Vec<TaskView> = keys
            .iter()
            .filter_map(|(fw, id)| {
                let t = self.tasks.get(&((*fw).clone(), (*id).clone()))?;
                Some(TaskView {
                    framework_id: (*fw).clone(),
                    task_id: (*id).clone(),
                    agent_id: t.agent.clone(),
                    state: t.state,
                    revocable: t.revocable,
                })
            })
            .collect();
        let next = more
            .then(|| {
                tasks
                    .last()
                    .map(|t| (t.framework_id.clone(), t.task_id.clone()))
            })
            .flatten();
        TaskPage { tasks, next }
    }

    pub(super) fn offer_list(&self, now: Time) -> Vec<OfferStatus> {
        self.offers
            .values()
            .map(|o| OfferStatus {
                id: o.offer.id,
                framework_id: o.offer.framework_id.clone(),
                agent_id: o.offer.agent_id.clone(),
                resources: o.offer.resources.clone(),
                age_ms: u64::try_from(now.saturating_since(o.made_at).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect()
    }
}
