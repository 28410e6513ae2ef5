//! The accounting of who holds what: every change to an agent's or a
//! framework's `used`/`offered` goes through here, so the two sides cannot
//! drift apart.

use super::{AgentEntry, FrameworkEntry};
use std::collections::BTreeMap;
use stoa_proto::{AgentId, FrameworkId, Resources};

pub(super) struct Books<'a> {
    pub agents: &'a mut BTreeMap<AgentId, AgentEntry>,
    pub frameworks: &'a mut BTreeMap<FrameworkId, FrameworkEntry>,
}

/// `*total += r`, logging instead of panicking if the books would overflow.
fn add(total: &mut Resources, r: &Resources, what: &str) {
    match total.checked_add(r) {
        Some(sum) => *total = sum,
        None => tracing::error!(%what, "books overflow adding {r}"),
    }
}

/// `*total -= r`; an underflow means a bookkeeping bug, logged, and the
/// total is clamped to empty rather than going negative.
fn sub(total: &mut Resources, r: &Resources, what: &str) {
    match total.checked_sub(r) {
        Some(left) => *total = left,
        None => {
            tracing::error!(%what, "books underflow removing {r} from {total}");
            *total = Resources::new();
        }
    }
}

impl Books<'_> {
    pub fn offer(&mut self, agent: &AgentId, fw: &FrameworkId, r: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            add(&mut a.offered, r, "agent offered");
        }
        if let Some(f) = self.frameworks.get_mut(fw) {
            add(&mut f.offered, r, "framework offered");
        }
    }

    pub fn unoffer(&mut self, agent: &AgentId, fw: &FrameworkId, r: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            sub(&mut a.offered, r, "agent offered");
        }
        if let Some(f) = self.frameworks.get_mut(fw) {
            sub(&mut f.offered, r, "framework offered");
        }
    }

    /// Resources start being used by a task.
    pub fn hold(&mut self, agent: &AgentId, fw: &FrameworkId, r: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            add(&mut a.used, r, "agent used");
        }
        if let Some(f) = self.frameworks.get_mut(fw) {
            add(&mut f.used, r, "framework used");
        }
    }

    /// A task's resources are free again.
    pub fn release(&mut self, agent: &AgentId, fw: &FrameworkId, r: &Resources) {
        if let Some(a) = self.agents.get_mut(agent) {
            sub(&mut a.used, r, "agent used");
        }
        if let Some(f) = self.frameworks.get_mut(fw) {
            sub(&mut f.used, r, "framework used");
        }
    }
}
