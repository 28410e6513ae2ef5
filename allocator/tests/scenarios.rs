//! Scenarios ported from Mesos's hierarchical allocator tests
//! (`src/tests/hierarchical_allocator_tests.cpp`), each asserting the same
//! outcome, plus hierarchical-role and constraint scenarios of our own.

use std::collections::{BTreeMap, BTreeSet};
use stoa_allocator::{
    Allocation, Allocator, AllocatorConfig, Constraint, FrameworkSpec, MinAllocatable, OfferPlan,
    Quota, SorterKind,
};
use stoa_proto::{AgentId, Attributes, FrameworkId, Resources, Role, Time};

fn r(s: &str) -> Resources {
    s.parse().expect("resources")
}
fn role(s: &str) -> Role {
    s.parse().expect("role")
}
fn fid(s: &str) -> FrameworkId {
    FrameworkId::new(s).expect("id")
}
fn aid(s: &str) -> AgentId {
    AgentId::new(s).expect("id")
}
fn secs(s: u64) -> Time {
    Time::from_micros(s * 1_000_000)
}

struct Cluster {
    a: Allocator,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            a: Allocator::new(AllocatorConfig::default()),
        }
    }
    fn agent(&mut self, id: &str, res: &str) {
        self.a
            .add_agent(aid(id), r(res), BTreeMap::new(), Attributes::default())
            .expect("agent");
    }
    fn agent_with(&mut self, id: &str, res: &str, reserved: &[(&str, &str)], attrs: &str) {
        let reserved = reserved.iter().map(|(ro, re)| (role(ro), r(re))).collect();
        self.a
            .add_agent(
                aid(id),
                r(res),
                reserved,
                attrs.parse().expect("attributes"),
            )
            .expect("agent");
    }
    fn framework(&mut self, id: &str, ro: &str) {
        self.a.add_framework(
            fid(id),
            FrameworkSpec {
                role: role(ro),
                min_allocatable: None,
                constraints: vec![],
            },
        );
    }
    /// Runs an allocation and returns (framework, agent, resources) triples.
    fn allocate(&mut self, at: Time) -> Vec<(String, String, String)> {
        self.a
            .allocate(at)
            .into_iter()
            .map(|p| {
                (
                    p.framework.to_string(),
                    p.agent.to_string(),
                    p.resources.total().to_string(),
                )
            })
            .collect()
    }
    fn plans(&mut self, at: Time) -> Vec<OfferPlan> {
        self.a.allocate(at)
    }
    fn recover(&mut self, fw: &str, agent: &str, res: &str, refuse_until: Option<Time>) {
        let alloc = Allocation {
            unreserved: r(res),
            reserved: BTreeMap::new(),
        };
        self.a.recover(&fid(fw), &aid(agent), &alloc, refuse_until);
    }
}

fn triple(f: &str, a: &str, res: &str) -> (String, String, String) {
    (f.into(), a.into(), res.into())
}

#[test]
fn unreserved_drf() {
    let mut c = Cluster::new();
    c.agent("agent1", "cpus:2;mem:1024");
    c.framework("framework1", "role1");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("framework1", "agent1", "cpus:2;mem:1024")]
    );

    c.framework("framework2", "role2");
    c.agent("agent2", "cpus:1;mem:512");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("framework2", "agent2", "cpus:1;mem:512")]
    );

    // role1 share = 2/3 (cpus), role2 share = 1/3: role2 gets agent3.
    c.agent("agent3", "cpus:3;mem:2048");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("framework2", "agent3", "cpus:3;mem:2048")]
    );

    // role1 share = .2, role2 share = .4: role1 gets it; in role1, framework3 (0) < framework1.
    c.framework("framework3", "role1");
    c.agent("agent4", "cpus:4;mem:4096");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("framework3", "agent4", "cpus:4;mem:4096")]
    );

    // role1 share = .625 (mem), role2 share = .36 (cpus): role2; framework4 (0) < framework2.
    c.framework("framework4", "role2");
    c.agent("agent5", "cpus:1;mem:512");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("framework4", "agent5", "cpus:1;mem:512")]
    );
}

#[test]
fn same_share_fairness() {
    let mut c = Cluster::new();
    c.framework("f1", "role1");
    c.framework("f2", "role1");
    c.agent("agent", "cpus:2;mem:1024");
    let mut counts = BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let offers = c.allocate(secs(0));
        assert_eq!(offers.len(), 1);
        *counts.entry(offers[0].0.clone()).or_default() += 1;
        c.recover(&offers[0].0, "agent", "cpus:2;mem:1024", None);
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [5, 5],
        "{counts:?}"
    );
}

#[test]
fn offer_filter() {
    let mut c = Cluster::new();
    c.framework("f", "role1");
    c.agent("agent", "cpus:1;mem:512");
    assert_eq!(c.allocate(secs(0)).len(), 1);
    // Declined with a 5 s filter: not offered again before it expires.
    c.recover("f", "agent", "cpus:1;mem:512", Some(secs(5)));
    assert_eq!(c.a.next_filter_expiry(), Some(secs(5)));
    assert!(c.allocate(secs(1)).is_empty());
    assert!(c.allocate(secs(4)).is_empty());
    assert_eq!(
        c.allocate(secs(5)),
        [triple("f", "agent", "cpus:1;mem:512")]
    );
}

/// A filter covers what was refused, as Mesos's refuse filters do: when a
/// task on the agent ends and frees more, the agent is offered again at
/// once (the framework may now have a use for it).
#[test]
fn resources_freed_after_a_decline_are_offered_at_once() {
    let mut c = Cluster::new();
    c.framework("f", "role1");
    c.agent("agent", "cpus:1;mem:512");
    assert_eq!(c.allocate(secs(0)).len(), 1);
    // The framework runs a task on half, refuses the rest for 5 s.
    c.recover("f", "agent", "cpus:0.5;mem:256", Some(secs(5)));
    assert!(c.allocate(secs(1)).is_empty());
    // The task ends: all of the agent is free, more than was refused.
    c.recover("f", "agent", "cpus:0.5;mem:256", None);
    assert_eq!(
        c.allocate(secs(2)),
        [triple("f", "agent", "cpus:1;mem:512")]
    );
}

#[test]
fn small_offer_filter_timeout() {
    let mut c = Cluster::new();
    c.framework("f1", "role1");
    c.framework("f2", "role2");
    c.agent("agent1", "cpus:1;mem:512");
    let first = c.allocate(Time::ZERO);
    assert_eq!(first.len(), 1);
    // A 1 ms filter: the agent goes to the other framework while it holds,
    // and comes back to this one as soon as it has expired.
    let fw = first[0].0.clone();
    let other = if fw == "f1" { "f2" } else { "f1" };
    c.recover(
        &fw,
        "agent1",
        "cpus:1;mem:512",
        Some(Time::from_micros(1_000)),
    );
    assert_eq!(
        c.allocate(Time::from_micros(500)),
        [triple(other, "agent1", "cpus:1;mem:512")]
    );
    c.recover(other, "agent1", "cpus:1;mem:512", Some(secs(60)));
    assert_eq!(
        c.allocate(Time::from_micros(1_000)),
        [triple(&fw, "agent1", "cpus:1;mem:512")]
    );
}

#[test]
fn suppress_and_revive_offers() {
    let mut c = Cluster::new();
    c.framework("f", "role1");
    c.agent("agent", "cpus:1;mem:512");
    assert_eq!(c.allocate(secs(0)).len(), 1);
    c.a.suppress(&fid("f"));
    c.recover("f", "agent", "cpus:1;mem:512", None);
    assert!(
        c.allocate(secs(1)).is_empty(),
        "a suppressed framework gets no offers"
    );
    c.a.revive(&fid("f"));
    assert_eq!(
        c.allocate(secs(2)),
        [triple("f", "agent", "cpus:1;mem:512")]
    );
}

#[test]
fn revive_offers_clears_filters() {
    let mut c = Cluster::new();
    c.framework("f", "role1");
    c.agent("agent", "cpus:1;mem:512");
    assert_eq!(c.allocate(secs(0)).len(), 1);
    c.recover("f", "agent", "cpus:1;mem:512", Some(secs(1000)));
    assert!(c.allocate(secs(1)).is_empty());
    c.a.revive(&fid("f"));
    assert_eq!(c.allocate(secs(2)).len(), 1);
}

#[test]
fn quota_provides_guarantee() {
    let mut c = Cluster::new();
    c.a.set_quota(
        &role("quota-role"),
        Quota {
            guarantee: r("cpus:2;mem:1024"),
            limit: None,
        },
    )
    .expect("quota");
    c.framework("f1", "quota-role");
    c.framework("f2", "no-quota-role");
    c.agent("agent1", "cpus:1;mem:512");
    c.agent("agent2", "cpus:1;mem:512");
    // Both agents go to the quota role although f2 has the lower share after the first.
    let mut got = c.allocate(secs(0));
    got.sort();
    assert_eq!(
        got,
        [
            triple("f1", "agent1", "cpus:1;mem:512"),
            triple("f1", "agent2", "cpus:1;mem:512")
        ]
    );
    // f1 declines agent2 with a filter: the guarantee is unmet again, so the
    // freed resources are held back as headroom, not offered to f2.
    c.recover("f1", "agent2", "cpus:1;mem:512", Some(secs(5)));
    assert!(c.allocate(secs(1)).is_empty());
    // A third agent meets the guarantee (stage 1), which releases the held
    // back agent2 to f2 in the same run (stage 2).
    c.agent("agent3", "cpus:1;mem:512");
    assert_eq!(
        c.allocate(secs(2)),
        [
            triple("f1", "agent3", "cpus:1;mem:512"),
            triple("f2", "agent2", "cpus:1;mem:512")
        ]
    );
}

#[test]
fn quota_provides_limit() {
    let mut c = Cluster::new();
    c.a.set_quota(
        &role("limited"),
        Quota {
            guarantee: r(""),
            limit: Some("cpus:1;mem:512".parse().expect("limit")),
        },
    )
    .expect("quota");
    c.framework("f1", "limited");
    c.agent("agent1", "cpus:2;mem:1024");
    // Only up to the limit, however much is free.
    assert_eq!(
        c.allocate(secs(0)),
        [triple("f1", "agent1", "cpus:1;mem:512")]
    );
    c.agent("agent2", "cpus:2;mem:1024");
    assert!(c.allocate(secs(0)).is_empty(), "the limit is reached");
    // Another role takes the rest.
    c.framework("f2", "other");
    let mut got = c.allocate(secs(0));
    got.sort();
    assert_eq!(
        got,
        [
            triple("f2", "agent1", "cpus:1;mem:512"),
            triple("f2", "agent2", "cpus:2;mem:1024")
        ]
    );
    assert_eq!(c.a.role_allocation(&role("limited")).get("cpus"), 1000);
}

#[test]
fn remove_quota() {
    let mut c = Cluster::new();
    c.a.set_quota(
        &role("q"),
        Quota {
            guarantee: r("cpus:2;mem:1024"),
            limit: None,
        },
    )
    .expect("quota");
    c.framework("f1", "q");
    c.framework("f2", "other");
    c.agent("agent1", "cpus:1;mem:512");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("f1", "agent1", "cpus:1;mem:512")]
    );
    // f1 suppresses; agent2 is held back for q's unmet guarantee.
    c.a.suppress(&fid("f1"));
    c.agent("agent2", "cpus:1;mem:512");
    assert!(c.allocate(secs(1)).is_empty());
    // Without the quota, nothing is held back.
    c.a.set_quota(&role("q"), Quota::default()).expect("quota");
    assert_eq!(
        c.allocate(secs(2)),
        [triple("f2", "agent2", "cpus:1;mem:512")]
    );
}

#[test]
fn update_weight() {
    let mut c = Cluster::new();
    c.a.set_weight(&role("heavy"), 2.0).expect("weight");
    c.framework("fh", "heavy");
    c.framework("fl", "light");
    for i in 0..6 {
        c.agent(&format!("agent{i}"), "cpus:1;mem:512");
    }
    let mut per = BTreeMap::<String, u32>::new();
    for (f, _, _) in c.allocate(secs(0)) {
        *per.entry(f).or_default() += 1;
    }
    assert_eq!(
        per,
        BTreeMap::from([("fh".to_string(), 4), ("fl".to_string(), 2)])
    );
    assert!(c.a.set_weight(&role("heavy"), 0.0).is_err());
    assert!(c.a.set_weight(&role("heavy"), f64::NAN).is_err());
}

#[test]
fn reservations_go_only_to_the_role_and_its_sub_roles() {
    let mut c = Cluster::new();
    c.agent_with(
        "agent",
        "cpus:4;mem:2048",
        &[("eng", "cpus:2;mem:1024")],
        "",
    );
    c.framework("ops-fw", "ops");
    // ops sees only the unreserved half.
    let plans = c.plans(secs(0));
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].resources.unreserved, r("cpus:2;mem:1024"));
    assert!(plans[0].resources.reserved.is_empty());
    // A framework in a sub-role of eng gets the reservation.
    c.framework("ml-fw", "eng/ml");
    let plans = c.plans(secs(0));
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].framework.as_str(), "ml-fw");
    assert_eq!(
        plans[0].resources.reserved,
        BTreeMap::from([(role("eng"), r("cpus:2;mem:1024"))])
    );
    // Recovered reserved resources return to the reservation, not the pool.
    c.a.recover(
        &fid("ml-fw"),
        &aid("agent"),
        &plans[0].resources.clone(),
        Some(secs(100)),
    );
    c.recover("ops-fw", "agent", "cpus:2;mem:1024", None);
    let plans = c.plans(secs(1));
    assert_eq!(plans.len(), 1);
    assert_eq!(
        (plans[0].framework.as_str(), plans[0].resources.total()),
        ("ops-fw", r("cpus:2;mem:1024"))
    );
}

#[test]
fn dynamic_reservation_and_unreservation() {
    let mut c = Cluster::new();
    c.agent("agent", "cpus:2;mem:1024");
    c.framework("f", "eng");
    let plan = c.plans(secs(0)).remove(0);
    // RESERVE half of what f holds for eng, then give it all back.
    c.a.reserve(&aid("agent"), &role("eng"), &r("cpus:1;mem:512"))
        .expect("reserve");
    assert!(
        c.a.reserve(&aid("agent"), &role("eng"), &r("cpus:2"))
            .is_err(),
        "only unreserved resources can be reserved"
    );
    let back = Allocation {
        unreserved: r("cpus:1;mem:512"),
        reserved: BTreeMap::from([(role("eng"), r("cpus:1;mem:512"))]),
    };
    assert_eq!(back.total(), plan.resources.total());
    c.a.recover(&fid("f"), &aid("agent"), &back, None);
    c.framework("other", "ops");
    c.recover("f", "agent", "", None);
    let mut got = c.allocate(secs(1));
    got.sort();
    // The reservation stays with eng; ops gets only the unreserved half.
    assert_eq!(
        got,
        [
            triple("f", "agent", "cpus:1;mem:512"),
            triple("other", "agent", "cpus:1;mem:512")
        ]
    );
    c.a.unreserve(&aid("agent"), &role("eng"), &r("cpus:1;mem:512"))
        .expect("unreserve");
    assert!(
        c.a.unreserve(&aid("agent"), &role("eng"), &r("cpus:1"))
            .is_err()
    );
}

#[test]
fn framework_min_allocatable() {
    let mut c = Cluster::new();
    let big = MinAllocatable::any_of(&[r("cpus:2")]);
    c.a.add_framework(
        fid("big"),
        FrameworkSpec {
            role: role("r1"),
            min_allocatable: Some(big),
            constraints: vec![],
        },
    );
    c.agent("small", "cpus:1;mem:512");
    assert!(
        c.allocate(secs(0)).is_empty(),
        "1 cpu is below big's minimum"
    );
    c.framework("any", "r2");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("any", "small", "cpus:1;mem:512")]
    );
    c.agent("large", "cpus:4;mem:512");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("big", "large", "cpus:4;mem:512")]
    );
    // The global default keeps crumbs out: 5 millicpus and 1 MiB is below it.
    c.agent("crumb", "cpus:0.005;mem:1");
    assert!(c.allocate(secs(0)).is_empty());
}

#[test]
fn hierarchical_roles_share_at_each_level() {
    let mut c = Cluster::new();
    // eng has two sub-roles, ops one framework: eng and ops split first.
    c.framework("a", "eng/a");
    c.framework("b", "eng/b");
    c.framework("o", "ops");
    for i in 0..4 {
        c.agent(&format!("agent{i}"), "cpus:1;mem:512");
    }
    let mut per = BTreeMap::<String, u32>::new();
    for (f, _, _) in c.allocate(secs(0)) {
        *per.entry(f).or_default() += 1;
    }
    assert_eq!(
        per,
        BTreeMap::from([
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("o".to_string(), 2)
        ])
    );
    assert_eq!(c.a.role_allocation(&role("eng")).get("cpus"), 2000);
}

#[test]
fn constraints_select_agents() {
    let mut c = Cluster::new();
    let spec = FrameworkSpec {
        role: role("r"),
        min_allocatable: None,
        constraints: vec![
            Constraint::Equals("rack".into(), "r1".into()),
            Constraint::matches("zone", "eu-.*").expect("regex"),
        ],
    };
    c.a.add_framework(fid("picky"), spec);
    c.agent_with("a1", "cpus:1;mem:512", &[], "rack:r1;zone:eu-1");
    c.agent_with("a2", "cpus:1;mem:512", &[], "rack:r2;zone:eu-1");
    c.agent_with("a3", "cpus:1;mem:512", &[], "rack:r1;zone:us-1");
    assert_eq!(
        c.allocate(secs(0)),
        [triple("picky", "a1", "cpus:1;mem:512")]
    );
}

#[test]
fn inactive_agents_and_frameworks_get_nothing() {
    let mut c = Cluster::new();
    c.framework("f", "r");
    c.agent("a", "cpus:1;mem:512");
    c.a.set_agent_active(&aid("a"), false);
    assert!(c.allocate(secs(0)).is_empty());
    c.a.set_framework_active(&fid("f"), false);
    c.a.set_agent_active(&aid("a"), true);
    assert!(c.allocate(secs(0)).is_empty());
    c.a.set_framework_active(&fid("f"), true);
    assert_eq!(c.allocate(secs(0)).len(), 1);
}

#[test]
fn random_sorter_is_seeded() {
    let run = |seed| {
        let mut a = Allocator::new(AllocatorConfig {
            sorter: SorterKind::Random { seed },
            ..Default::default()
        });
        for f in 0..5 {
            a.add_framework(
                fid(&format!("f{f}")),
                FrameworkSpec {
                    role: role(&format!("r{f}")),
                    min_allocatable: None,
                    constraints: vec![],
                },
            );
        }
        for i in 0..20 {
            a.add_agent(
                aid(&format!("a{i}")),
                r("cpus:1;mem:64"),
                BTreeMap::new(),
                Attributes::default(),
            )
            .expect("agent");
        }
        a.allocate(secs(0))
            .into_iter()
            .map(|p| p.framework.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    let got: BTreeSet<String> = run(3).into_iter().collect();
    assert_eq!(got.len(), 5, "every framework gets something: {got:?}");
}

#[test]
fn preemption_frees_what_a_starving_guarantee_needs_from_revocable_tasks_only() {
    use stoa_allocator::PreemptionCandidate;
    let mut c = Cluster::new();
    c.framework("big", "batch");
    c.agent("a1", "cpus:2;mem:1024");
    c.agent("a2", "cpus:2;mem:1024");
    // Without any guarantee, nothing is revocable and nothing is preempted.
    let plans = c.plans(secs(0));
    assert!(plans.iter().all(|p| !p.revocable));
    // Quota arrives after batch took everything.
    c.a.set_quota(
        &role("prod"),
        Quota {
            guarantee: r("cpus:2;mem:512"),
            limit: None,
        },
    )
    .expect("quota");
    c.framework("web", "prod");
    assert!(c.allocate(secs(1)).is_empty(), "nothing free to give");
    let running = |revocable| {
        vec![
            PreemptionCandidate {
                framework: fid("big"),
                resources: r("cpus:1;mem:256"),
                revocable,
            },
            PreemptionCandidate {
                framework: fid("big"),
                resources: r("cpus:1;mem:256"),
                revocable,
            },
            PreemptionCandidate {
                framework: fid("big"),
                resources: r("cpus:2;mem:512"),
                revocable,
            },
        ]
    };
    // Tasks on non-revocable resources are never taken.
    assert!(c.a.preemption_plan(&running(false)).is_empty());
    // The largest task alone covers the shortfall.
    assert_eq!(c.a.preemption_plan(&running(true)), vec![2]);
    // Tasks of the starving role itself are never victims.
    let own = vec![PreemptionCandidate {
        framework: fid("web"),
        resources: r("cpus:2;mem:512"),
        revocable: true,
    }];
    assert!(c.a.preemption_plan(&own).is_empty());
    // Once the victim's resources come back, the guarantee is met from them.
    c.recover("big", "a1", "cpus:2;mem:1024", None);
    // The guaranteed part and the revocable rest of a1 come as two offers,
    // so the scheduler can tell which tasks may be preempted.
    let got = c.plans(secs(2));
    let parts: Vec<(String, bool)> = got
        .iter()
        .map(|p| (p.resources.total().to_string(), p.revocable))
        .collect();
    assert_eq!(
        parts,
        [
            ("cpus:2;mem:512".to_string(), false),
            ("mem:512".to_string(), true)
        ]
    );
    assert!(
        c.a.preemption_plan(&running(true)).is_empty(),
        "nothing more to preempt"
    );
}

#[test]
fn operator_reservations_take_free_resources_for_a_role() {
    let mut c = Cluster::new();
    c.agent("a", "cpus:4;mem:1024");
    assert!(
        c.a.reserve_free(&aid("a"), &role("eng"), &r("cpus:8"))
            .is_err(),
        "more than the agent has"
    );
    c.a.reserve_free(&aid("a"), &role("eng"), &r("cpus:3;mem:512"))
        .expect("reserve");
    c.framework("ops", "ops");
    assert_eq!(c.allocate(secs(0)), [triple("ops", "a", "cpus:1;mem:512")]);
    c.framework("eng", "eng");
    assert_eq!(c.allocate(secs(0)), [triple("eng", "a", "cpus:3;mem:512")]);
    // Held by eng: not free, so it cannot be unreserved now.
    assert!(
        c.a.unreserve_free(&aid("a"), &role("eng"), &r("cpus:3;mem:512"))
            .is_err()
    );
}
