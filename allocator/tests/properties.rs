//! Invariants under random sequences of operations: nothing allocated twice,
//! never more than an agent has, quota limits never exceeded, and equal
//! frameworks converge to equal shares.

use proptest::prelude::*;
use std::collections::BTreeMap;
use stoa_allocator::{Allocation, Allocator, AllocatorConfig, FrameworkSpec, OfferPlan, Quota};
use stoa_proto::{AgentId, Attributes, FrameworkId, Resources, Role, Time};

#[derive(Debug, Clone)]
enum Op {
    AddAgent {
        cpus: u64,
        mem: u64,
        ports: u16,
        reserve_cpus: u64,
    },
    AddFramework {
        role: u8,
    },
    Allocate,
    /// Give back the n-th outstanding allocation, maybe with a filter.
    Recover {
        n: usize,
        filter_ms: Option<u64>,
    },
    SetLimit {
        role: u8,
        cpus: u64,
    },
    Suppress {
        n: usize,
    },
    Revive {
        n: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..8, 64u64..4096, 0u16..20, 0u64..3).prop_map(|(cpus, mem, ports, reserve_cpus)| {
            Op::AddAgent {
                cpus,
                mem,
                ports,
                reserve_cpus,
            }
        }),
        (0u8..4).prop_map(|role| Op::AddFramework { role }),
        Just(Op::Allocate),
        Just(Op::Allocate),
        (0usize..64, proptest::option::of(0u64..5_000))
            .prop_map(|(n, filter_ms)| Op::Recover { n, filter_ms }),
        (0u8..4, 0u64..6).prop_map(|(role, cpus)| Op::SetLimit { role, cpus }),
        (0usize..8).prop_map(|n| Op::Suppress { n }),
        (0usize..8).prop_map(|n| Op::Revive { n }),
        (0u64..3_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn role(i: u8) -> Role {
    // Roles 2 and 3 sit under role 0, so limits apply hierarchically.
    match i {
        0 => "r0".parse(),
        1 => "r1".parse(),
        2 => "r0/a".parse(),
        _ => "r0/b".parse(),
    }
    .expect("role")
}

fn held_on(held: &[OfferPlan], agent: &AgentId) -> Option<Resources> {
    held.iter()
        .filter(|p| &p.agent == agent)
        .try_fold(Resources::new(), |acc, p| {
            acc.checked_add(&p.resources.total())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn allocation_invariants_hold(ops in proptest::collection::vec(op(), 1..80)) {
        let mut a = Allocator::new(AllocatorConfig::default());
        let mut agents: BTreeMap<AgentId, Resources> = BTreeMap::new();
        let mut frameworks: Vec<FrameworkId> = Vec::new();
        let mut limits: BTreeMap<u8, u64> = BTreeMap::new();
        let mut held: Vec<OfferPlan> = Vec::new();
        let mut now = Time::ZERO;
        for op in ops {
            match op {
                Op::AddAgent { cpus, mem, ports, reserve_cpus } => {
                    let id = AgentId::new(format!("a{}", agents.len())).expect("id");
                    let mut total = Resources::new().with_millicpus(cpus * 1000).with_mem_mib(mem);
                    if ports > 0 {
                        total = total.with_ports(vec![stoa_proto::PortRange::new(31000, 31000 + ports).expect("range")]);
                    }
                    let reserved = if reserve_cpus > 0 && reserve_cpus <= cpus {
                        BTreeMap::from([(role(2), Resources::new().with_millicpus(reserve_cpus * 1000))])
                    } else {
                        BTreeMap::new()
                    };
                    a.add_agent(id.clone(), total.clone(), reserved, Attributes::default()).expect("agent");
                    agents.insert(id, total);
                }
                Op::AddFramework { role: r } => {
                    let id = FrameworkId::new(format!("f{}", frameworks.len())).expect("id");
                    a.add_framework(id.clone(), FrameworkSpec { role: role(r), min_allocatable: None, constraints: vec![] });
                    frameworks.push(id);
                }
                Op::Allocate => held.extend(a.allocate(now)),
                Op::Recover { n, filter_ms } => {
                    if !held.is_empty() {
                        let p = held.remove(n % held.len());
                        let until = filter_ms.map(|ms| now + std::time::Duration::from_millis(ms));
                        a.recover(&p.framework, &p.agent, &p.resources, until);
                    }
                }
                Op::SetLimit { role: r, cpus } => {
                    let quota = Quota { guarantee: Resources::new(), limit: Some(format!("cpus:{cpus}").parse().expect("limit")) };
                    // A limit below what is already held is legal; it only stops growth.
                    a.set_quota(&role(r), quota).expect("quota");
                    limits.insert(r, cpus * 1000);
                }
                Op::Suppress { n } => if let Some(f) = frameworks.get(n) { a.suppress(f) },
                Op::Revive { n } => if let Some(f) = frameworks.get(n) { a.revive(f) },
                Op::Advance { ms } => now = now + std::time::Duration::from_millis(ms),
            }
            // Never more on an agent than it has, and no port in two offers.
            for (id, total) in &agents {
                let on = held_on(&held, id);
                prop_assert!(on.is_some(), "two outstanding offers share a port on {id}");
                let on = on.unwrap_or_default();
                prop_assert!(total.contains(&on), "{id} has {total} but {on} is allocated");
            }
            // Every allocation sits in a role allowed to use its reservations.
            for p in &held {
                for r in p.resources.reserved.keys() {
                    prop_assert_eq!(r, &role(2));
                }
            }
        }
        // Limits bound what is newly allocated: a role never grows past its
        // limit through allocation (it may start above one set later).
        let before: BTreeMap<u8, u64> = limits.keys().map(|r| (*r, a.role_allocation(&role(*r)).get("cpus"))).collect();
        held.extend(a.allocate(now));
        for (r, limit) in &limits {
            let after = a.role_allocation(&role(*r)).get("cpus");
            prop_assert!(after <= (*limit).max(before[r]), "role {} holds {} cpus over its limit {}", role(*r), after, limit);
        }
    }

    #[test]
    fn equal_frameworks_converge_to_equal_shares(frameworks in 2usize..12, per in 1usize..20) {
        let mut a = Allocator::new(AllocatorConfig::default());
        for f in 0..frameworks {
            let spec = FrameworkSpec { role: format!("r{f}").parse().expect("role"), min_allocatable: None, constraints: vec![] };
            a.add_framework(FrameworkId::new(format!("f{f}")).expect("id"), spec);
        }
        for i in 0..frameworks * per {
            a.add_agent(AgentId::new(format!("a{i}")).expect("id"), "cpus:1;mem:256".parse().expect("r"), BTreeMap::new(), Attributes::default()).expect("agent");
        }
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for p in a.allocate(Time::ZERO) {
            *count.entry(p.framework.to_string()).or_default() += 1;
        }
        prop_assert_eq!(count.len(), frameworks);
        prop_assert!(count.values().all(|&n| n == per), "{:?}", count);
        let _ = Allocation::default();
    }
}
