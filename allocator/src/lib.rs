//! Decides which framework is offered which agent's free resources.
//!
//! Pure: takes a [`Snapshot`] of the cluster and returns a plan of offers;
//! no I/O, no clock (time comes in as an argument), no randomness except
//! what the caller seeds. The master applies the plan.
//!
//! This first allocator offers each agent's whole free bundle to the
//! eligible framework with the lowest dominant share (DRF), recomputing
//! shares as it goes, so one cycle spreads agents fairly.

use stoa_proto::{AgentId, FrameworkId, Resources, Time};

pub mod drf;
pub use drf::dominant_share;

/// One agent as the allocator sees it.
#[derive(Debug, Clone)]
pub struct AgentSlot {
    pub id: AgentId,
    /// Resources neither offered nor used by a task.
    pub available: Resources,
}

/// One framework as the allocator sees it.
#[derive(Debug, Clone)]
pub struct FrameworkSlot {
    pub id: FrameworkId,
    /// Offered plus used by its tasks.
    pub allocated: Resources,
}

/// "Do not offer `agent` to `framework` before `until`" (a declined offer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub until: Time,
}

/// The cluster at one instant.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Sum of every agent's total resources: the denominator of shares.
    pub total: Resources,
    pub agents: Vec<AgentSlot>,
    /// Only frameworks that may receive offers (connected, not suppressed).
    pub frameworks: Vec<FrameworkSlot>,
    pub filters: Vec<Filter>,
}

/// One offer to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferPlan {
    pub framework: FrameworkId,
    pub agent: AgentId,
    pub resources: Resources,
}

/// Plans offers of every agent's available resources at time `now`.
///
/// Guarantees: each agent appears in at most one plan, each plan's
/// resources are exactly that agent's available resources, and no plan
/// goes to a framework filtered from that agent at `now`.
pub fn allocate(now: Time, snapshot: &Snapshot) -> Vec<OfferPlan> {
    let mut allocated: Vec<Resources> = snapshot
        .frameworks
        .iter()
        .map(|f| f.allocated.clone())
        .collect();
    let mut plans = Vec::new();
    for agent in &snapshot.agents {
        if agent.available.is_empty() {
            continue;
        }
        let filtered = |fw: &FrameworkId| {
            snapshot
                .filters
                .iter()
                .any(|f| &f.framework == fw && f.agent == agent.id && f.until > now)
        };
        let chosen = snapshot
            .frameworks
            .iter()
            .enumerate()
            .filter(|(_, f)| !filtered(&f.id))
            .map(|(i, f)| (dominant_share(&allocated[i], &snapshot.total), &f.id, i))
            .min_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let Some((_, id, i)) = chosen else { continue };
        // Adding can only fail on overflow, which a real cluster cannot reach;
        // saturate the share by keeping the old value rather than panic.
        if let Some(sum) = allocated[i].checked_add(&agent.available) {
            allocated[i] = sum;
        }
        plans.push(OfferPlan {
            framework: id.clone(),
            agent: agent.id.clone(),
            resources: agent.available.clone(),
        });
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, r: &str) -> AgentSlot {
        AgentSlot {
            id: AgentId::new(id).expect("id"),
            available: r.parse().expect("resources"),
        }
    }
    fn fw(id: &str, r: &str) -> FrameworkSlot {
        FrameworkSlot {
            id: FrameworkId::new(id).expect("id"),
            allocated: r.parse().expect("resources"),
        }
    }

    #[test]
    fn lowest_dominant_share_gets_the_next_agent() {
        let snap = Snapshot {
            total: "cpus:4;mem:4096".parse().expect("r"),
            agents: vec![
                agent("a1", "cpus:1;mem:1024"),
                agent("a2", "cpus:1;mem:1024"),
            ],
            frameworks: vec![fw("f1", "cpus:1"), fw("f2", "mem:512")],
            filters: vec![],
        };
        let plans = allocate(Time::ZERO, &snap);
        // f1 share .25, f2 share .125: f2 gets a1 (now .375), then f1 gets a2.
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].framework.as_str(), "f2");
        assert_eq!(plans[1].framework.as_str(), "f1");
    }

    #[test]
    fn filters_hold_until_they_expire() {
        let snap = Snapshot {
            total: "cpus:1".parse().expect("r"),
            agents: vec![agent("a1", "cpus:1")],
            frameworks: vec![fw("f1", "")],
            filters: vec![Filter {
                framework: FrameworkId::new("f1").expect("id"),
                agent: AgentId::new("a1").expect("id"),
                until: Time::from_micros(10),
            }],
        };
        assert!(allocate(Time::from_micros(9), &snap).is_empty());
        assert_eq!(allocate(Time::from_micros(10), &snap).len(), 1);
    }

    #[test]
    fn empty_agents_are_not_offered() {
        let snap = Snapshot {
            total: "cpus:1".parse().expect("r"),
            agents: vec![agent("a1", "")],
            frameworks: vec![fw("f1", "")],
            filters: vec![],
        };
        assert!(allocate(Time::ZERO, &snap).is_empty());
    }
}
