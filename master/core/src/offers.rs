//! The master's book of outstanding offers, indexed by agent and by
//! framework, in the order they were made (offer ids grow with time), so
//! that rescinding an agent's or a framework's offers and finding expired
//! ones never walks every offer in the cluster.

use crate::index::{file, unfile};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use stoa_allocator::Allocation;
use stoa_proto::{AgentId, FrameworkId, Offer, OfferId, Time};

/// An outstanding offer and the allocation behind it.
#[derive(Debug)]
pub(crate) struct OfferEntry {
    pub(crate) offer: Offer,
    pub(crate) allocation: Allocation,
    pub(crate) made_at: Time,
}

#[derive(Debug, Default)]
pub(crate) struct Offers {
    /// By id; ids are handed out in increasing order as offers are made,
    /// so the first entry is the oldest.
    entries: BTreeMap<OfferId, OfferEntry>,
    by_agent: HashMap<AgentId, BTreeSet<OfferId>>,
    by_framework: HashMap<FrameworkId, BTreeSet<OfferId>>,
}

impl Offers {
    pub(crate) fn get(&self, id: &OfferId) -> Option<&OfferEntry> {
        self.entries.get(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &OfferEntry> {
        self.entries.values()
    }

    /// When the oldest outstanding offer was made.
    pub(crate) fn oldest(&self) -> Option<Time> {
        self.entries.values().next().map(|o| o.made_at)
    }

    /// Offers made at or before `t`, oldest first.
    pub(crate) fn made_by(&self, t: Time) -> Vec<OfferId> {
        self.entries
            .values()
            .take_while(|o| o.made_at <= t)
            .map(|o| o.offer.id)
            .collect()
    }

    pub(crate) fn insert(&mut self, entry: OfferEntry) {
        let id = entry.offer.id;
        file(&mut self.by_agent, entry.offer.agent_id.clone(), id);
        file(&mut self.by_framework, entry.offer.framework_id.clone(), id);
        self.entries.insert(id, entry);
    }

    pub(crate) fn remove(&mut self, id: &OfferId) -> Option<OfferEntry> {
        let entry = self.entries.remove(id)?;
        unfile(&mut self.by_agent, &entry.offer.agent_id, id);
        unfile(&mut self.by_framework, &entry.offer.framework_id, id);
        Some(entry)
    }

    pub(crate) fn of_agent(&self, agent: &AgentId) -> Vec<OfferId> {
        self.by_agent
            .get(agent)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }

    pub(crate) fn of_framework(&self, fw: &FrameworkId) -> Vec<OfferId> {
        self.by_framework
            .get(fw)
            .into_iter()
            .flatten()
            .copied()
            .collect()
    }
}
