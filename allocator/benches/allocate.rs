//! Shaped like Mesos's `HierarchicalAllocator_BENCHMARK_Test.DeclineOffers`
//! grid: agents ∈ {1k, 10k, 50k} × frameworks ∈ {10, 100, 1000}, each
//! framework in its own role.
//!
//! * `full/A×F` — one allocation run over every agent of a fresh cluster.
//! * `incremental/A×F` — after that, one task finishes (one agent's
//!   allocation is recovered) and the next run offers it again.
//!
//! Run: `cargo bench -p stoa-allocator --bench allocate`. Figures and method
//! in docs/benchmarks.md.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;
use stoa_allocator::{Allocator, AllocatorConfig, FrameworkSpec, OfferPlan};
use stoa_proto::{AgentId, Attributes, FrameworkId, Resources, Time};

fn cluster(agents: usize, frameworks: usize) -> Allocator {
    let mut a = Allocator::new(AllocatorConfig::default());
    for f in 0..frameworks {
        let spec = FrameworkSpec {
            role: format!("role{f}").parse().expect("role"),
            min_allocatable: None,
            constraints: vec![],
        };
        a.add_framework(FrameworkId::new(format!("framework{f}")).expect("id"), spec);
    }
    let total: Resources = "cpus:24;mem:4096;disk:4096;ports:[31000-32000]"
        .parse()
        .expect("resources");
    for i in 0..agents {
        a.add_agent(
            AgentId::new(format!("agent{i}")).expect("id"),
            total.clone(),
            BTreeMap::new(),
            Attributes::default(),
        )
        .expect("agent");
    }
    a
}

fn bench(c: &mut Criterion) {
    let sizes: Vec<(usize, usize)> = [1_000, 10_000, 50_000]
        .into_iter()
        .flat_map(|a| [10, 100, 1_000].into_iter().map(move |f| (a, f)))
        .filter(|(a, _)| {
            std::env::var("STOA_BENCH_MAX_AGENTS")
                .ok()
                .and_then(|m| m.parse().ok())
                .is_none_or(|m: usize| *a <= m)
        })
        .collect();
    let mut group = c.benchmark_group("allocator");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(2));
    for &(agents, frameworks) in &sizes {
        group.bench_function(format!("full/{agents}x{frameworks}"), |b| {
            b.iter_batched(
                || cluster(agents, frameworks),
                // Returned, so dropping the cluster is not timed.
                |mut a| {
                    let plans = black_box(a.allocate(Time::ZERO));
                    (a, plans)
                },
                BatchSize::PerIteration,
            )
        });
        let mut a = cluster(agents, frameworks);
        let offers: Vec<OfferPlan> = a.allocate(Time::ZERO);
        assert_eq!(offers.len(), agents, "every agent is offered once");
        let one = offers[offers.len() / 2].clone();
        group.bench_function(format!("incremental/{agents}x{frameworks}"), |b| {
            b.iter(|| {
                a.recover(&one.framework, &one.agent, &one.resources, None);
                let again = a.allocate(Time::ZERO);
                assert_eq!(again.len(), 1);
                black_box(again)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
