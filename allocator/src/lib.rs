//! Decides which framework is offered which agent's free resources: the
//! first level of Mesos's two-level scheduling.
//!
//! Pure: no I/O, no clock (time comes in as an argument), no randomness but
//! a seeded one. The master tells the [`Allocator`] about agents,
//! frameworks and what they hand back, and calls [`Allocator::allocate`]
//! when something changed; it gets a plan of offers and makes them.
//!
//! ```text
//! allocate(now)
//!   ├─ agents to visit: those changed since the last run (all on the first)
//!   ├─ stage 1, guarantees: roles below their quota guarantee, lowest share
//!   │    first, get what they still need of each agent
//!   └─ stage 2, fair share: every agent's rest goes to the eligible
//!        framework found by walking the role tree, lowest key first at each
//!        level (weighted DRF by default), within quota limits and leaving
//!        enough free for unmet guarantees (headroom)
//! ```
//!
//! A framework is eligible for an agent when it is active and not
//! suppressed, has no filter on the agent, its constraints admit the
//! agent's attributes, and what it would get is at least one of its minimum
//! allocatable bundles. Checks run cheapest first: flags, then the filter
//! lookup, then constraints (regexes), then sizing the offer.
//!
//! Not here (yet): revocable resources and preemption plans.

mod constraints;
mod quantities;
mod sorter;
mod tree;

pub use constraints::Constraint;
pub use quantities::Quantities;
pub use sorter::{Drf, Random, Sorter};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use stoa_proto::{AgentId, Attributes, FrameworkId, Resources, Role, Time};
use tree::{NodeKind, Tree};

/// "Offer nothing smaller": an offer must contain at least one of these
/// bundles (by quantity). Mesos's default is `cpus:0.01` or `mem:32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinAllocatable(Vec<Quantities>);

impl MinAllocatable {
    pub fn any_of(bundles: &[Resources]) -> MinAllocatable {
        MinAllocatable(bundles.iter().map(Quantities::of).collect())
    }

    pub fn admits(&self, offer: &Allocation) -> bool {
        if offer.is_empty() {
            return false;
        }
        let have = |kind: &str| -> u64 {
            let of = |r: &Resources| {
                r.quantities()
                    .find(|(k, _)| *k == kind)
                    .map_or(0, |(_, v)| v)
            };
            offer.reserved.values().map(of).sum::<u64>() + of(&offer.unreserved)
        };
        self.0.is_empty() || self.0.iter().any(|m| m.iter().all(|(k, v)| have(k) >= v))
    }
}

impl Default for MinAllocatable {
    fn default() -> Self {
        MinAllocatable::any_of(&[
            Resources::new().with_millicpus(10),
            Resources::new().with_mem_mib(32),
        ])
    }
}

/// A role's quota: `guarantee` is met before fair sharing; `limit` (if any)
/// is never exceeded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    pub guarantee: Resources,
    pub limit: Option<Limit>,
}

/// Most a role may hold, per resource kind. Unlike [`Resources`], a kind
/// may be limited to zero; kinds not named are unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limit(BTreeMap<String, u64>);

impl Limit {
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// True when `q` is within the limit in every kind it names.
    pub fn admits(&self, q: &Quantities) -> bool {
        self.iter().all(|(k, v)| q.get(k) <= v)
    }
}

/// Parses the resource syntax (`cpus:2;mem:1024;gpus:0`), keeping zeros.
impl std::str::FromStr for Limit {
    type Err = stoa_proto::ParseError;
    fn from_str(s: &str) -> Result<Limit, Self::Err> {
        let mut out = BTreeMap::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = part.split_once(':').map(|(k, _)| k.trim()).unwrap_or(part);
            // One pair at a time through the resource parser, for its units.
            let amount = part
                .parse::<Resources>()?
                .quantities()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, v)| v);
            out.insert(kind.to_string(), amount);
        }
        Ok(Limit(out))
    }
}

#[derive(Debug, Clone)]
pub enum SorterKind {
    /// Weighted DRF; kinds listed are left out of shares.
    Drf { excluded: BTreeSet<String> },
    /// Weighted random order, seeded.
    Random { seed: u64 },
}

#[derive(Debug, Clone)]
pub struct AllocatorConfig {
    pub sorter: SorterKind,
    /// Used for frameworks that do not set their own.
    pub min_allocatable: MinAllocatable,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        AllocatorConfig {
            sorter: SorterKind::Drf {
                excluded: BTreeSet::new(),
            },
            min_allocatable: MinAllocatable::default(),
        }
    }
}

/// What a framework registers with the allocator.
#[derive(Debug, Clone)]
pub struct FrameworkSpec {
    pub role: Role,
    pub min_allocatable: Option<MinAllocatable>,
    pub constraints: Vec<Constraint>,
}

/// A bundle of one agent's resources split by where it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub unreserved: Resources,
    /// Parts reserved for a role (the framework's role or an ancestor).
    pub reserved: BTreeMap<Role, Resources>,
}

impl Allocation {
    /// Everything, unreserved and reserved, as one bundle.
    pub fn total(&self) -> Resources {
        self.reserved
            .values()
            .fold(self.unreserved.clone(), |acc, r| {
                acc.checked_add(r).unwrap_or(acc)
            })
    }

    pub fn is_empty(&self) -> bool {
        self.unreserved.is_empty() && self.reserved.values().all(Resources::is_empty)
    }
}

/// One offer to make. In one run an agent may go to a framework in two
/// offers: the part within its role's guarantee and a revocable rest, so
/// the scheduler can tell which of its tasks may be preempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferPlan {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Allocation,
    /// Beyond every guarantee: tasks on these resources may be preempted
    /// for a role below its guarantee.
    pub revocable: bool,
}

/// A running task the allocator may choose to preempt.
#[derive(Debug, Clone)]
pub struct PreemptionCandidate {
    pub framework: FrameworkId,
    pub resources: Resources,
    /// Only tasks on revocable resources are ever chosen.
    pub revocable: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AllocatorError {
    #[error("unknown agent {0}")]
    UnknownAgent(AgentId),
    #[error("unknown framework {0}")]
    UnknownFramework(FrameworkId),
    #[error("agent {agent} does not have {wanted} {what}")]
    NotAvailable {
        agent: AgentId,
        wanted: Resources,
        what: &'static str,
    },
    #[error("the agent was removed")]
    RemovedAgent,
    #[error("weights must be finite and positive, got {0}")]
    BadWeight(f64),
    #[error("the quota's guarantee {guarantee} exceeds its limit")]
    GuaranteeAboveLimit { guarantee: Resources },
}

#[derive(Debug)]
struct AgentState {
    id: AgentId,
    attributes: Attributes,
    active: bool,
    total: Resources,
    /// Reserved totals per role; the rest of `total` is unreserved.
    reserved_total: BTreeMap<Role, Resources>,
    /// Not allocated to anyone.
    free: Allocation,
}

/// A refusal: `refused` (everything when `None`) of an agent is not
/// offered to a framework again before `until`.
#[derive(Debug, Clone)]
struct Filter {
    until: Time,
    refused: Option<Resources>,
}

#[derive(Debug)]
struct FrameworkState {
    node: usize,
    spec: FrameworkSpec,
    active: bool,
    suppressed: bool,
}

/// The hierarchical allocator. See the crate docs.
#[derive(Debug)]
pub struct Allocator {
    config: AllocatorConfig,
    sorter: Box<dyn Sorter>,
    tree: Tree,
    agents: Vec<Option<AgentState>>,
    agent_index: HashMap<AgentId, usize>,
    frameworks: HashMap<FrameworkId, FrameworkState>,
    /// (framework node, agent index) → refused until.
    filters: HashMap<(usize, usize), Filter>,
    /// The same filters ordered by expiry, so finding the next one is not
    /// a scan (a cluster can hold a filter per framework per agent).
    filter_expiries: BTreeSet<(Time, (usize, usize))>,
    /// Sum of active agents' totals: the denominator of shares.
    total: Quantities,
    /// Every key must be recomputed before the next run: the total changed,
    /// or a weight, or the sorter is random.
    rekey: bool,
    /// Unreserved and unallocated, over active agents: what headroom is
    /// measured against.
    free_unreserved: Quantities,
    dirty: BTreeSet<usize>,
    /// Agents a run left with free resources nobody could take. They are
    /// visited again when something happens that could change that (a
    /// guarantee met, a limit freed, a new or revived framework).
    waiting: BTreeSet<usize>,
}

impl Allocator {
    pub fn new(config: AllocatorConfig) -> Allocator {
        let sorter: Box<dyn Sorter> = match &config.sorter {
            SorterKind::Drf { excluded } => Box::new(Drf {
                excluded: excluded.clone(),
            }),
            SorterKind::Random { seed } => Box::new(Random::new(*seed)),
        };
        Allocator {
            config,
            sorter,
            tree: Tree::new(),
            agents: Vec::new(),
            agent_index: HashMap::new(),
            frameworks: HashMap::new(),
            filters: HashMap::new(),
            filter_expiries: BTreeSet::new(),
            total: Quantities::default(),
            rekey: true,
            free_unreserved: Quantities::default(),
            dirty: BTreeSet::new(),
            waiting: BTreeSet::new(),
        }
    }

    // ---- agents ----------------------------------------------------------

    /// Adds (or replaces) an agent with `total` resources, of which
    /// `reserved` are statically reserved for roles.
    pub fn add_agent(
        &mut self,
        id: AgentId,
        total: Resources,
        reserved: BTreeMap<Role, Resources>,
        attributes: Attributes,
    ) -> Result<(), AllocatorError> {
        let reserved_sum = reserved
            .values()
            .try_fold(Resources::new(), |acc, r| acc.checked_add(r));
        let unreserved = reserved_sum
            .as_ref()
            .and_then(|s| total.checked_sub(s))
            .ok_or_else(|| AllocatorError::NotAvailable {
                agent: id.clone(),
                wanted: reserved_sum.unwrap_or_default(),
                what: "to reserve",
            })?;
        self.remove_agent(&id);
        let state = AgentState {
            id: id.clone(),
            attributes,
            active: true,
            total: total.clone(),
            reserved_total: reserved.clone(),
            free: Allocation {
                unreserved: unreserved.clone(),
                reserved,
            },
        };
        let idx = self.agents.len();
        self.agents.push(Some(state));
        self.agent_index.insert(id, idx);
        self.total.add(&total);
        self.free_unreserved.add(&unreserved);
        self.dirty.insert(idx);
        self.rekey = true;
        Ok(())
    }

    /// Forgets an agent. What frameworks held on it is released from their
    /// shares.
    pub fn remove_agent(&mut self, id: &AgentId) {
        let Some(idx) = self.agent_index.remove(id) else {
            return;
        };
        if let Some(agent) = self.agents[idx].take()
            && agent.active
        {
            self.total.sub(&agent.total);
            self.free_unreserved.sub(&agent.free.unreserved);
            self.rekey = true;
        }
        self.drop_filters(|_, a| a == idx);
        self.dirty.remove(&idx);
        self.waiting.remove(&idx);
    }

    /// An agent that lost its connection is not offered until it returns.
    pub fn set_agent_active(&mut self, id: &AgentId, active: bool) {
        let Some(&idx) = self.agent_index.get(id) else {
            return;
        };
        let Some(agent) = self.agents[idx].as_mut() else {
            return;
        };
        if agent.active == active {
            return;
        }
        agent.active = active;
        self.rekey = true;
        if active {
            self.total.add(&agent.total);
            self.free_unreserved.add(&agent.free.unreserved);
            self.dirty.insert(idx);
        } else {
            self.total.sub(&agent.total);
            self.free_unreserved.sub(&agent.free.unreserved);
        }
    }

    // ---- frameworks ------------------------------------------------------

    pub fn add_framework(&mut self, id: FrameworkId, spec: FrameworkSpec) {
        self.remove_framework(&id);
        let node = self.tree.add_framework(&id, &spec.role);
        self.frameworks.insert(
            id,
            FrameworkState {
                node,
                spec,
                active: true,
                suppressed: false,
            },
        );
        self.mark_all_dirty();
    }

    /// Replaces a framework's minimum offer size and constraints. Its role
    /// cannot change here: its allocations are booked under that role.
    pub fn update_framework(&mut self, id: &FrameworkId, spec: FrameworkSpec) -> bool {
        match self.frameworks.get_mut(id) {
            Some(fw) if fw.spec.role == spec.role => {
                fw.spec = spec;
                self.mark_all_dirty();
                true
            }
            _ => false,
        }
    }

    /// Forgets a framework. Its allocations must have been recovered first.
    pub fn remove_framework(&mut self, id: &FrameworkId) {
        if let Some(fw) = self.frameworks.remove(id) {
            self.drop_filters(|f, _| f == fw.node);
            self.tree.remove(fw.node);
        }
    }

    /// A framework whose scheduler is away gets no offers.
    pub fn set_framework_active(&mut self, id: &FrameworkId, active: bool) {
        if let Some(fw) = self.frameworks.get_mut(id) {
            fw.active = active;
            if active {
                self.mark_all_dirty();
            }
        }
    }

    /// SUPPRESS: no offers until REVIVE.
    pub fn suppress(&mut self, id: &FrameworkId) {
        if let Some(fw) = self.frameworks.get_mut(id) {
            fw.suppressed = true;
        }
    }

    /// REVIVE: offers again, and every filter the framework set is cleared.
    pub fn revive(&mut self, id: &FrameworkId) {
        if let Some(fw) = self.frameworks.get_mut(id) {
            fw.suppressed = false;
            let node = fw.node;
            self.drop_filters(|f, _| f == node);
            self.mark_all_dirty();
        }
    }

    /// Do not offer `agent` to `framework` before `until`, whatever it has.
    pub fn filter(&mut self, framework: &FrameworkId, agent: &AgentId, until: Time) {
        if let (Some(fw), Some(&a)) = (self.frameworks.get(framework), self.agent_index.get(agent))
        {
            let key = (fw.node, a);
            self.set_filter(key, until, None);
        }
    }

    /// When the earliest filter expires; an allocation is due then.
    pub fn next_filter_expiry(&self) -> Option<Time> {
        self.filter_expiries.first().map(|(t, _)| *t)
    }

    // ---- roles -----------------------------------------------------------

    pub fn set_weight(&mut self, role: &Role, weight: f64) -> Result<(), AllocatorError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(AllocatorError::BadWeight(weight));
        }
        let node = self.tree.role(role);
        self.tree.set_weight(node, weight);
        self.rekey = true;
        self.mark_all_dirty();
        Ok(())
    }

    pub fn set_quota(&mut self, role: &Role, quota: Quota) -> Result<(), AllocatorError> {
        if let Some(limit) = &quota.limit
            && !limit.admits(&Quantities::of(&quota.guarantee))
        {
            return Err(AllocatorError::GuaranteeAboveLimit {
                guarantee: quota.guarantee,
            });
        }
        let node = self.tree.role(role);
        self.tree.set_quota(
            node,
            (!quota.guarantee.is_empty() || quota.limit.is_some()).then_some(quota),
        );
        self.mark_all_dirty();
        Ok(())
    }

    /// What a role and its sub-roles hold (offered or used).
    pub fn role_allocation(&self, role: &Role) -> Quantities {
        self.tree
            .find_role(role)
            .map(|n| self.tree.allocated(n).clone())
            .unwrap_or_default()
    }

    /// What a framework holds (offered or used).
    pub fn framework_allocation(&self, id: &FrameworkId) -> Quantities {
        self.frameworks
            .get(id)
            .map(|f| self.tree.allocated(f.node).clone())
            .unwrap_or_default()
    }

    // ---- allocations -----------------------------------------------------

    /// Resources on `agent` stop being held by `framework` (declined,
    /// rescinded, unused by an accept, or freed by a terminal task). With
    /// `refuse_until`, the agent is not offered to the framework before then.
    pub fn recover(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        resources: &Allocation,
        refuse_until: Option<Time>,
    ) {
        let fw_node = self.frameworks.get(framework).map(|f| f.node);
        if let Some(&idx) = self.agent_index.get(agent)
            && let Some(state) = self.agents[idx].as_mut()
        {
            state.free.unreserved = state
                .free
                .unreserved
                .checked_add(&resources.unreserved)
                .unwrap_or_else(|| state.free.unreserved.clone());
            for (role, r) in &resources.reserved {
                let slot = state.free.reserved.entry(role.clone()).or_default();
                *slot = slot.checked_add(r).unwrap_or_else(|| slot.clone());
            }
            if state.active {
                self.free_unreserved.add(&resources.unreserved);
            }
            self.dirty.insert(idx);
            if let (Some(node), Some(until)) = (fw_node, refuse_until) {
                self.set_filter((node, idx), until, Some(resources.total()));
            }
        }
        if let Some(node) = fw_node {
            self.tree
                .release(node, resources, self.sorter.as_mut(), &self.total);
            // Less held under a quota: a limit has room again, or a
            // guarantee needs more headroom held elsewhere.
            if self
                .tree
                .role_path(node)
                .any(|r| self.tree.quota(r).is_some())
            {
                self.wake_waiting();
            }
        }
    }

    /// Books resources as held by `framework` without an offer: tasks that
    /// were running before this allocator existed (master restart).
    pub fn claim(
        &mut self,
        framework: &FrameworkId,
        agent: &AgentId,
        resources: &Allocation,
    ) -> Result<(), AllocatorError> {
        let node = self
            .frameworks
            .get(framework)
            .map(|f| f.node)
            .ok_or_else(|| AllocatorError::UnknownFramework(framework.clone()))?;
        let idx = *self
            .agent_index
            .get(agent)
            .ok_or_else(|| AllocatorError::UnknownAgent(agent.clone()))?;
        self.take(idx, resources)?;
        self.tree
            .hold(node, resources, self.sorter.as_mut(), &self.total);
        Ok(())
    }

    /// RESERVE: turns unreserved resources `framework` holds on `agent` into
    /// resources reserved for `role`. They stay held; when recovered they
    /// return to the role's reserved pool.
    pub fn reserve(
        &mut self,
        agent: &AgentId,
        role: &Role,
        resources: &Resources,
    ) -> Result<(), AllocatorError> {
        let state = self.agent_mut(agent)?;
        let unreserved_total = reserved_sum(&state.reserved_total)
            .and_then(|s| state.total.checked_sub(&s))
            .unwrap_or_default();
        if !unreserved_total.contains(resources) {
            return Err(AllocatorError::NotAvailable {
                agent: agent.clone(),
                wanted: resources.clone(),
                what: "unreserved",
            });
        }
        let slot = state.reserved_total.entry(role.clone()).or_default();
        *slot = slot.checked_add(resources).unwrap_or_else(|| slot.clone());
        Ok(())
    }

    /// An operator's reservation: free unreserved resources of `agent`
    /// become free resources reserved for `role`.
    pub fn reserve_free(
        &mut self,
        agent: &AgentId,
        role: &Role,
        resources: &Resources,
    ) -> Result<(), AllocatorError> {
        let idx = self.agent_idx(agent)?;
        let state = self.agents[idx]
            .as_mut()
            .ok_or(AllocatorError::RemovedAgent)?;
        let left = state
            .free
            .unreserved
            .checked_sub(resources)
            .ok_or_else(|| AllocatorError::NotAvailable {
                agent: agent.clone(),
                wanted: resources.clone(),
                what: "free and unreserved",
            })?;
        state.free.unreserved = left;
        for pool in [
            state.free.reserved.entry(role.clone()).or_default(),
            state.reserved_total.entry(role.clone()).or_default(),
        ] {
            *pool = pool.checked_add(resources).unwrap_or_else(|| pool.clone());
        }
        if state.active {
            self.free_unreserved.sub(resources);
        }
        self.dirty.insert(idx);
        Ok(())
    }

    /// An operator's unreservation: the inverse of [`Allocator::reserve_free`].
    pub fn unreserve_free(
        &mut self,
        agent: &AgentId,
        role: &Role,
        resources: &Resources,
    ) -> Result<(), AllocatorError> {
        let idx = self.agent_idx(agent)?;
        let state = self.agents[idx]
            .as_mut()
            .ok_or(AllocatorError::RemovedAgent)?;
        let missing = || AllocatorError::NotAvailable {
            agent: agent.clone(),
            wanted: resources.clone(),
            what: "free and reserved for that role",
        };
        let free_left = state
            .free
            .reserved
            .get(role)
            .and_then(|r| r.checked_sub(resources))
            .ok_or_else(missing)?;
        let total_left = state
            .reserved_total
            .get(role)
            .and_then(|r| r.checked_sub(resources))
            .ok_or_else(missing)?;
        for (map, left) in [
            (&mut state.free.reserved, free_left),
            (&mut state.reserved_total, total_left),
        ] {
            if left.is_empty() {
                map.remove(role);
            } else {
                map.insert(role.clone(), left);
            }
        }
        state.free.unreserved = state
            .free
            .unreserved
            .checked_add(resources)
            .unwrap_or_else(|| state.free.unreserved.clone());
        if state.active {
            self.free_unreserved.add(resources);
        }
        self.dirty.insert(idx);
        Ok(())
    }

    /// UNRESERVE: the inverse of [`Allocator::reserve`].
    pub fn unreserve(
        &mut self,
        agent: &AgentId,
        role: &Role,
        resources: &Resources,
    ) -> Result<(), AllocatorError> {
        let state = self.agent_mut(agent)?;
        let Some(left) = state
            .reserved_total
            .get(role)
            .and_then(|r| r.checked_sub(resources))
        else {
            return Err(AllocatorError::NotAvailable {
                agent: agent.clone(),
                wanted: resources.clone(),
                what: "reserved for that role",
            });
        };
        if left.is_empty() {
            state.reserved_total.remove(role);
        } else {
            state.reserved_total.insert(role.clone(), left);
        }
        Ok(())
    }

    /// Runs one allocation over the agents changed since the last run and
    /// returns the offers to make. Everything offered is held by its
    /// framework until [`Allocator::recover`]ed.
    pub fn allocate(&mut self, now: Time) -> Vec<OfferPlan> {
        while let Some(&(until, key)) = self.filter_expiries.first() {
            if until > now {
                break;
            }
            self.filter_expiries.pop_first();
            self.filters.remove(&key);
            self.dirty.insert(key.1);
        }
        let mut visit: Vec<usize> = std::mem::take(&mut self.dirty).into_iter().collect();
        if self.rekey || matches!(self.config.sorter, SorterKind::Random { .. }) {
            self.tree.rekey_all(self.sorter.as_mut(), &self.total);
            self.rekey = false;
        }
        let mut plans = Vec::new();
        // Stage 1: guarantees.
        for &idx in &visit {
            while let Some((fw_node, alloc)) = self.pick_for_guarantee(idx, now) {
                self.commit(idx, fw_node, alloc, false, &mut plans);
            }
        }
        let revocable = self.tree.has_guarantees();
        // A guarantee met in stage 1 frees the headroom it held back.
        if !plans.is_empty() && !self.waiting.is_empty() {
            let visiting: BTreeSet<usize> = visit
                .iter()
                .copied()
                .chain(std::mem::take(&mut self.waiting))
                .collect();
            visit = visiting.into_iter().collect();
        }
        // Stage 2: fair share of the rest.
        for &idx in &visit {
            let mut served = Vec::new();
            while let Some((fw_node, alloc)) = self.pick_fair(idx, now, &served) {
                served.push(fw_node);
                self.commit(idx, fw_node, alloc, revocable, &mut plans);
                if self.agents[idx].as_ref().is_none_or(|a| a.free.is_empty()) {
                    break;
                }
            }
            if self.agents[idx]
                .as_ref()
                .is_some_and(|a| a.active && !a.free.is_empty())
            {
                self.waiting.insert(idx);
            } else {
                self.waiting.remove(&idx);
            }
        }
        plans
    }

    /// Visits every agent left with free resources in the next run.
    fn wake_waiting(&mut self) {
        self.dirty.append(&mut self.waiting);
    }

    /// Which of `running` to preempt so that roles below their guarantee
    /// can be served: what guarantees still need beyond what is free is
    /// taken from revocable tasks of frameworks outside the starving roles,
    /// from the roles with the largest share first, then the largest tasks.
    /// Returns indices into `running`; empty when every guarantee can be met
    /// from free resources, or when even preempting everything eligible
    /// would not meet them. Pure: nothing changes until the caller kills the
    /// tasks and recovers their resources.
    /// Whether some role's guarantee is unmet beyond what is free: only
    /// then is a preemption plan worth the candidates it needs.
    pub fn needs_preemption(&self) -> bool {
        !self
            .unmet_guarantees()
            .saturating_minus(&self.free_unreserved)
            .is_empty()
    }

    pub fn preemption_plan(&self, running: &[PreemptionCandidate]) -> Vec<usize> {
        let mut chosen: Vec<usize> = Vec::new();
        let mut shortfall = self
            .unmet_guarantees()
            .saturating_minus(&self.free_unreserved);
        if shortfall.is_empty() {
            return chosen;
        }
        let starving: Vec<Role> = self
            .tree
            .quota_roles_by_key()
            .into_iter()
            .filter(|&n| {
                self.tree.quota(n).is_some_and(|q| {
                    !Quantities::of(&q.guarantee)
                        .saturating_minus(self.tree.allocated(n))
                        .is_empty()
                })
            })
            .filter_map(|n| match self.tree.kind(n) {
                NodeKind::Role(r) => Some(r.clone()),
                _ => None,
            })
            .collect();
        let mut order: Vec<(u64, u64, usize)> = running
            .iter()
            .enumerate()
            .filter(|(_, c)| c.revocable)
            .filter_map(|(i, c)| {
                let fw = self.frameworks.get(&c.framework)?;
                if starving.iter().any(|r| r.contains(&fw.spec.role)) {
                    return None;
                }
                let share = self
                    .tree
                    .role_path(fw.node)
                    .last()
                    .map(|top| self.tree.key_order(top))
                    .unwrap_or(0);
                let size = Quantities::of(&c.resources)
                    .iter()
                    .map(|(_, v)| v)
                    .max()
                    .unwrap_or(0);
                Some((share, size, i))
            })
            .collect();
        // Largest share first, then largest task, then a stable order.
        order.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        for (_, _, i) in order {
            if shortfall.is_empty() {
                break;
            }
            let frees = Quantities::of(&running[i].resources);
            if shortfall.iter().any(|(k, _)| frees.get(k) > 0) {
                shortfall = shortfall.saturating_minus(&frees);
                chosen.push(i);
            }
        }
        if !shortfall.is_empty() {
            chosen.clear();
        }
        chosen
    }

    fn set_filter(&mut self, key: (usize, usize), until: Time, refused: Option<Resources>) {
        if let Some(old) = self.filters.insert(key, Filter { until, refused }) {
            self.filter_expiries.remove(&(old.until, key));
        }
        self.filter_expiries.insert((until, key));
    }

    /// Whether a filter keeps `offer` of agent `idx` from framework `node`:
    /// as in Mesos, only while the offer holds nothing beyond what was
    /// refused, so resources freed since are offered at once.
    fn filtered(&self, node: usize, idx: usize, offer: &Allocation, now: Time) -> bool {
        self.filters.get(&(node, idx)).is_some_and(|f| {
            f.until > now
                && f.refused
                    .as_ref()
                    .is_none_or(|refused| refused.contains(&offer.total()))
        })
    }

    /// Drops the filters of (framework node, agent index) pairs `pred`
    /// selects.
    fn drop_filters(&mut self, pred: impl Fn(usize, usize) -> bool) {
        self.filters.retain(|&(f, a), _| !pred(f, a));
        self.filter_expiries.retain(|(_, (f, a))| !pred(*f, *a));
    }

    /// Marks every agent for the next run (after a change that affects all).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(
            self.agents
                .iter()
                .enumerate()
                .filter(|(_, a)| a.is_some())
                .map(|(i, _)| i),
        );
    }

    fn agent_idx(&self, id: &AgentId) -> Result<usize, AllocatorError> {
        self.agent_index
            .get(id)
            .copied()
            .ok_or_else(|| AllocatorError::UnknownAgent(id.clone()))
    }

    /// An agent's total and what of it nobody holds, for checking the
    /// books against the master's offers and tasks.
    pub fn agent_books(&self, agent: &AgentId) -> Option<(Resources, Resources)> {
        let state = self.agents[*self.agent_index.get(agent)?].as_ref()?;
        Some((state.total.clone(), state.free.total()))
    }

    /// The unreserved resources of `agent` that nobody holds (neither
    /// offered nor used).
    pub fn free_unreserved(&self, agent: &AgentId) -> Option<&Resources> {
        self.agent_index
            .get(agent)
            .and_then(|&i| self.agents[i].as_ref())
            .map(|a| &a.free.unreserved)
    }

    fn agent_mut(&mut self, id: &AgentId) -> Result<&mut AgentState, AllocatorError> {
        self.agent_index
            .get(id)
            .and_then(|&i| self.agents[i].as_mut())
            .ok_or_else(|| AllocatorError::UnknownAgent(id.clone()))
    }

    /// Removes `alloc` from agent `idx`'s free pools.
    fn take(&mut self, idx: usize, alloc: &Allocation) -> Result<(), AllocatorError> {
        let state = self.agents[idx]
            .as_mut()
            .ok_or(AllocatorError::RemovedAgent)?;
        let missing = |what| AllocatorError::NotAvailable {
            agent: state.id.clone(),
            wanted: alloc.total(),
            what,
        };
        let unreserved = state
            .free
            .unreserved
            .checked_sub(&alloc.unreserved)
            .ok_or_else(|| missing("free"))?;
        let mut reserved = state.free.reserved.clone();
        for (role, r) in &alloc.reserved {
            let left = reserved
                .get(role)
                .and_then(|have| have.checked_sub(r))
                .ok_or_else(|| missing("free for the role"))?;
            reserved.insert(role.clone(), left);
        }
        reserved.retain(|_, r| !r.is_empty());
        state.free = Allocation {
            unreserved,
            reserved,
        };
        if state.active {
            self.free_unreserved.sub(&alloc.unreserved);
        }
        Ok(())
    }

    fn commit(
        &mut self,
        idx: usize,
        fw_node: usize,
        alloc: Allocation,
        revocable: bool,
        plans: &mut Vec<OfferPlan>,
    ) {
        if self.take(idx, &alloc).is_err() {
            return;
        }
        self.tree
            .hold(fw_node, &alloc, self.sorter.as_mut(), &self.total);
        let (NodeKind::Framework(framework), Some(agent)) =
            (self.tree.kind(fw_node), self.agents[idx].as_ref())
        else {
            return;
        };
        plans.push(OfferPlan {
            framework: framework.clone(),
            agent: agent.id.clone(),
            resources: alloc,
            revocable,
        });
    }

    /// The framework's basic eligibility for an agent, cheapest checks first.
    fn eligible(&self, fw: &FrameworkState, agent: &AgentState) -> bool {
        fw.active
            && !fw.suppressed
            && fw
                .spec
                .constraints
                .iter()
                .all(|c| c.admits(&agent.attributes))
    }

    /// Sizes an offer of agent `idx` for `fw`, within every cap: quota
    /// limits along the role path, `stage_cap` (the guarantee still unmet in
    /// stage 1) and, for unreserved resources in stage 2, the headroom that
    /// unmet guarantees need. `None` if it would be below minimum.
    fn size_offer(
        &self,
        fw: &FrameworkState,
        agent: &AgentState,
        stage_cap: Option<&Quantities>,
        headroom: Option<&Quantities>,
    ) -> Option<Allocation> {
        let mut cap: HashMap<String, u64> = HashMap::new();
        for node in self.tree.role_path(fw.node) {
            if let Some(limit) = self.tree.quota(node).and_then(|q| q.limit.as_ref()) {
                let held = self.tree.allocated(node);
                for (k, v) in limit.iter() {
                    tighten(&mut cap, k, v.saturating_sub(held.get(k)));
                }
            }
        }
        if let Some(stage) = stage_cap {
            for kind in ["cpus", "mem", "disk", "gpus", "ports"] {
                tighten(&mut cap, kind, stage.get(kind));
            }
            for (k, v) in stage.iter() {
                tighten(&mut cap, k, v);
            }
        }
        let mut offer = Allocation::default();
        let lineage = (!agent.free.reserved.is_empty())
            .then(|| fw.spec.role.lineage())
            .into_iter()
            .flatten();
        for role in lineage {
            if let Some(pool) = agent.free.reserved.get(&role) {
                let part = pool.capped(|k| cap.get(k).copied());
                for (k, v) in part.quantities() {
                    if let Some(c) = cap.get_mut(k) {
                        *c = c.saturating_sub(v);
                    }
                }
                if !part.is_empty() {
                    offer.reserved.insert(role, part);
                }
            }
        }
        let mut unreserved_cap = cap.clone();
        if let Some(h) = headroom {
            for (k, need) in h.iter() {
                let spare = self.free_unreserved.get(k).saturating_sub(need);
                let e = unreserved_cap.entry(k.to_string()).or_insert(spare);
                *e = (*e).min(spare);
            }
        }
        offer.unreserved = agent
            .free
            .unreserved
            .capped(|k| unreserved_cap.get(k).copied());
        let minimum = fw
            .spec
            .min_allocatable
            .as_ref()
            .unwrap_or(&self.config.min_allocatable);
        minimum.admits(&offer).then_some(offer)
    }

    fn pick_for_guarantee(&self, idx: usize, now: Time) -> Option<(usize, Allocation)> {
        let agent = self.agents[idx].as_ref().filter(|a| a.active)?;
        self.tree
            .quota_roles_by_key()
            .into_iter()
            .find_map(|role_node| {
                let quota = self.tree.quota(role_node)?;
                let need = Quantities::of(&quota.guarantee)
                    .saturating_minus(self.tree.allocated(role_node));
                if need.is_empty() {
                    return None;
                }
                self.tree.first_framework(role_node, &mut |fw_node| {
                    let fw = self.framework_at(fw_node)?;
                    if !self.eligible(fw, agent) {
                        return None;
                    }
                    self.size_offer(fw, agent, Some(&need), None)
                        .filter(|a| !self.filtered(fw_node, idx, a, now))
                        .map(|a| (fw_node, a))
                })
            })
    }

    fn pick_fair(&self, idx: usize, now: Time, served: &[usize]) -> Option<(usize, Allocation)> {
        let agent = self.agents[idx]
            .as_ref()
            .filter(|a| a.active && !a.free.is_empty())?;
        let headroom = self.unmet_guarantees();
        let headroom = (!headroom.is_empty()).then_some(headroom);
        self.tree.first_framework(self.tree.root(), &mut |fw_node| {
            if served.contains(&fw_node) {
                return None;
            }
            let fw = self.framework_at(fw_node)?;
            if !self.eligible(fw, agent) {
                return None;
            }
            self.size_offer(fw, agent, None, headroom.as_ref())
                .filter(|a| !self.filtered(fw_node, idx, a, now))
                .map(|a| (fw_node, a))
        })
    }

    fn framework_at(&self, node: usize) -> Option<&FrameworkState> {
        match self.tree.kind(node) {
            NodeKind::Framework(id) => self.frameworks.get(id),
            _ => None,
        }
    }

    /// What guarantees still need, summed over roles that have one.
    fn unmet_guarantees(&self) -> Quantities {
        let mut need = Quantities::default();
        for node in self.tree.quota_roles_by_key() {
            if let Some(q) = self.tree.quota(node) {
                for (k, v) in Quantities::of(&q.guarantee)
                    .saturating_minus(self.tree.allocated(node))
                    .iter()
                {
                    need.add(&single(k, v));
                }
            }
        }
        need
    }
}

/// Lowers the cap of `kind` to `v` (a missing cap is no cap).
fn tighten(cap: &mut HashMap<String, u64>, kind: &str, v: u64) {
    let e = cap.entry(kind.to_string()).or_insert(v);
    *e = (*e).min(v);
}

fn reserved_sum(reserved: &BTreeMap<Role, Resources>) -> Option<Resources> {
    reserved
        .values()
        .try_fold(Resources::new(), |acc, r| acc.checked_add(r))
}

/// A bundle of one scalar kind (ports counted are not representable; they
/// never take part in guarantees).
fn single(kind: &str, v: u64) -> Resources {
    let r = Resources::new();
    match kind {
        "cpus" => r.with_millicpus(v),
        "mem" => r.with_mem_mib(v),
        "disk" => r.with_disk_mib(v),
        "gpus" => r.with_gpus(v),
        "ports" => r,
        other => r.with_scalar(other, v).unwrap_or_default(),
    }
}
