//! The master's durable state: what operators set (weights, quotas,
//! reservations), what a restarted master needs to decide correctly
//! (admitted and removed agents, frameworks and the ids of torn-down ones)
//! and the frameworks whose schedulers it hosts. Tasks and offers are soft
//! state, rebuilt from agents and schedulers after a restart, as in the
//! paper.
//!
//! The core never hands out the whole registry to write: each change is one
//! [`Write`] of one entity, which a store applies to that entity's table.
//! [`Registry::apply`] is the meaning of every write; stores and the
//! simulator use it, so they cannot disagree about it.
//!
//! Calling order, for drivers: see [`crate::Ready`]. Writes come out of
//! [`crate::Master::ready`] together with the transmits that may depend on
//! them, and the transmits are only released by [`crate::Master::advance`]
//! once the writes are durable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stoa_proto::{
    AgentId, AgentInfo, FrameworkId, FrameworkInfo, Resources, Role, Submission, TaskId,
};

/// The version of the registry's layout. A store refuses a registry
/// written by a newer layout rather than misread it.
pub const SCHEMA_VERSION: u32 = 2;

/// How many removed agents and torn-down frameworks the registry keeps:
/// enough to recognise any that come back within days, bounded so the
/// registry does not grow for good.
pub const MAX_TOMBSTONES: usize = 10_000;

/// A role's quota as operators set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaSpec {
    pub guarantee: Resources,
    /// In resource syntax, zeros allowed (`cpus:8;gpus:0`); none for no limit.
    pub limit: Option<String>,
}

/// Everything durable, as one value: what a store loads, and what the
/// master restores from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub weights: BTreeMap<Role, f64>,
    pub quotas: BTreeMap<Role, QuotaSpec>,
    /// Dynamic reservations per agent and role.
    pub reservations: BTreeMap<AgentId, BTreeMap<Role, Resources>>,
    /// Frameworks whose schedulers the master hosts.
    pub hosted: BTreeMap<FrameworkId, HostedRecord>,
    /// Agents admitted to the cluster and not removed, as they registered.
    pub agents: BTreeMap<AgentId, AgentInfo>,
    /// Agents removed (unreachable past the removal timeout), in order of
    /// removal (a sequence number): if one comes back it must start anew.
    pub removed_agents: BTreeMap<AgentId, u64>,
    /// The certificate name each admitted agent registered with: only it
    /// may reclaim the agent's id.
    pub agent_principals: BTreeMap<AgentId, String>,
    /// Revoked tokens and certificates ([`Revocation::key`]), with when
    /// (unix seconds): refused from then on.
    ///
    /// [`Revocation::key`]: stoa_proto::operator::Revocation::key
    pub revoked: BTreeMap<String, u64>,
    /// Subscribed frameworks: id, principal, role, failover timeout.
    pub frameworks: BTreeMap<FrameworkId, FrameworkInfo>,
    /// Torn-down frameworks, in order of teardown: they may not subscribe
    /// again, and their tasks are killed wherever they turn up.
    pub torn_down: BTreeMap<FrameworkId, u64>,
}

/// A hosted framework as the registry keeps it: enough to keep hosting it
/// after a master restart, and to recognise the instance that should be
/// running when its agent re-registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedRecord {
    /// With `framework.id` and `framework.principal` set.
    pub submission: Submission,
    /// Instances launched so far: names the next one.
    pub launched: u64,
    /// The instance that should be running, and its agent.
    pub current: Option<(TaskId, AgentId)>,
}

/// One change to one entity of the registry. `None` removes the entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Write {
    Weight(Role, Option<f64>),
    Quota(Role, Option<QuotaSpec>),
    /// An agent's dynamic reservations, whole; empty removes them.
    Reservations(AgentId, BTreeMap<Role, Resources>),
    Hosted(FrameworkId, Option<Box<HostedRecord>>),
    Agent(AgentId, Option<Box<AgentInfo>>),
    /// The certificate name an agent registered with.
    AgentPrincipal(AgentId, String),
    /// A token or certificate revoked, and when.
    Revoked(String, u64),
    /// The agent is removed: forgotten as admitted, remembered as removed
    /// (with a sequence number that orders removals).
    AgentRemoved(AgentId, u64),
    Framework(FrameworkId, Option<Box<FrameworkInfo>>),
    /// The framework is torn down: forgotten, its id kept as a tombstone.
    TornDown(FrameworkId, u64),
}

impl Registry {
    /// Applies one write: the meaning every store shares.
    pub fn apply(&mut self, write: &Write) {
        fn set<K: Ord + Clone, V: Clone>(map: &mut BTreeMap<K, V>, k: &K, v: Option<V>) {
            match v {
                Some(v) => map.insert(k.clone(), v),
                None => map.remove(k),
            };
        }
        match write {
            Write::Weight(role, w) => set(&mut self.weights, role, *w),
            Write::Quota(role, q) => set(&mut self.quotas, role, q.clone()),
            Write::Reservations(agent, r) => set(
                &mut self.reservations,
                agent,
                (!r.is_empty()).then(|| r.clone()),
            ),
            Write::Hosted(fw, h) => set(&mut self.hosted, fw, h.as_deref().cloned()),
            Write::Agent(agent, info) => set(&mut self.agents, agent, info.as_deref().cloned()),
            Write::AgentPrincipal(agent, principal) => {
                set(&mut self.agent_principals, agent, Some(principal.clone()))
            }
            Write::Revoked(key, at) => {
                self.revoked.insert(key.clone(), *at);
            }
            Write::AgentRemoved(agent, seq) => {
                self.agents.remove(agent);
                self.reservations.remove(agent);
                self.agent_principals.remove(agent);
                self.removed_agents.insert(agent.clone(), *seq);
                trim(&mut self.removed_agents);
            }
            Write::Framework(fw, info) => set(&mut self.frameworks, fw, info.as_deref().cloned()),
            Write::TornDown(fw, seq) => {
                self.frameworks.remove(fw);
                self.hosted.remove(fw);
                self.torn_down.insert(fw.clone(), *seq);
                trim(&mut self.torn_down);
            }
        }
    }

    /// The highest sequence number of any tombstone, so a restarted master
    /// numbers new ones above it.
    pub fn last_tombstone(&self) -> u64 {
        self.removed_agents
            .values()
            .chain(self.torn_down.values())
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// Keeps the newest [`MAX_TOMBSTONES`] tombstones.
fn trim<K: Ord + Clone>(tombstones: &mut BTreeMap<K, u64>) {
    while tombstones.len() > MAX_TOMBSTONES {
        let Some(oldest) = tombstones
            .iter()
            .min_by_key(|(_, seq)| **seq)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        tombstones.remove(&oldest);
    }
}

/// The registry as the master holds it: the current state, and the writes
/// not yet handed to the driver.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    state: Registry,
    pending: Vec<Write>,
    /// Numbers tombstones.
    seq: u64,
}

impl Journal {
    pub(crate) fn restore(registry: Registry) -> Journal {
        Journal {
            seq: registry.last_tombstone(),
            state: registry,
            pending: Vec::new(),
        }
    }

    pub(crate) fn state(&self) -> &Registry {
        &self.state
    }

    pub(crate) fn write(&mut self, write: Write) {
        self.state.apply(&write);
        self.pending.push(write);
    }

    /// The next tombstone's sequence number.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(crate) fn take(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_bounded_and_the_oldest_go_first() {
        let mut r = Registry::default();
        for i in 0..(MAX_TOMBSTONES as u64 + 5) {
            let id: FrameworkId = format!("f{i}").parse().expect("id");
            r.apply(&Write::TornDown(id, i + 1));
        }
        assert_eq!(r.torn_down.len(), MAX_TOMBSTONES);
        assert!(!r.torn_down.contains_key(&"f0".parse().expect("id")));
        assert!(
            r.torn_down
                .contains_key(&format!("f{}", MAX_TOMBSTONES + 4).parse().expect("id"))
        );
        assert_eq!(r.last_tombstone(), MAX_TOMBSTONES as u64 + 5);
    }

    #[test]
    fn removing_an_agent_drops_its_reservations() {
        let mut r = Registry::default();
        let a: AgentId = "a1".parse().expect("id");
        let role: Role = "eng".parse().expect("role");
        r.apply(&Write::Reservations(
            a.clone(),
            BTreeMap::from([(role, "cpus:1".parse().expect("r"))]),
        ));
        r.apply(&Write::AgentRemoved(a.clone(), 1));
        assert!(r.reservations.is_empty());
        assert_eq!(r.removed_agents.get(&a), Some(&1));
    }
}
