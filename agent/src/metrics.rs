//! The agent's Prometheus metrics (`stoa agent --metrics ADDR`, `GET
//! /metrics`): task ends the core measured (drained after every input),
//! what each executor's wasm runtime reports about itself, artifact
//! fetches, and gauges the driver sets as they change.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;
use stoa_agent_core::measures::Measure;
use stoa_proto::executor::ExecutorStats;
use stoa_proto::{FrameworkId, Reason};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndLabels {
    kind: &'static str,
    state: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Every metric the agent exports, and the registry that encodes them.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Mutex<Registry>,
    tasks_ended: Family<EndLabels, Counter>,
    limit_kills: Family<LimitLabels, Counter>,
    oom_kills: Counter,
    updates_resent: Counter,
    fetches: Family<OutcomeLabels, Counter>,
    fetch_bytes: Counter,
    executors: Gauge,
    tasks: Gauge,
    pool_slots: Gauge,
    pool_memories: Gauge,
    compile_hits: Counter,
    compile_misses: Counter,
    compile_evictions: Counter,
    compile_corrupt: Counter,
    fuel: Counter,
    /// Each executor's last report: counters grow by the difference.
    last: Mutex<HashMap<FrameworkId, ExecutorStats>>,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let m = AgentMetrics {
            registry: Mutex::new(Registry::with_prefix("stoa_agent")),
            tasks_ended: Family::default(),
            limit_kills: Family::default(),
            oom_kills: Counter::default(),
            updates_resent: Counter::default(),
            fetches: Family::default(),
            fetch_bytes: Counter::default(),
            executors: Gauge::default(),
            tasks: Gauge::default(),
            pool_slots: Gauge::default(),
            pool_memories: Gauge::default(),
            compile_hits: Counter::default(),
            compile_misses: Counter::default(),
            compile_evictions: Counter::default(),
            compile_corrupt: Counter::default(),
            fuel: Counter::default(),
            last: Mutex::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            let counters: [(&str, &str, &Counter); 8] = [
                (
                    "cgroup_oom_kills",
                    "Native tasks the kernel killed at their cgroup's memory limit",
                    &m.oom_kills,
                ),
                (
                    "status_update_retries",
                    "Status updates sent again, unacknowledged",
                    &m.updates_resent,
                ),
                (
                    "fetch_bytes",
                    "Artifact bytes fetched from the master",
                    &m.fetch_bytes,
                ),
                (
                    "compile_cache_hits",
                    "Wasm binaries loaded from the compiled-code cache",
                    &m.compile_hits,
                ),
                (
                    "compile_cache_misses",
                    "Wasm binaries compiled (not in the compiled-code cache)",
                    &m.compile_misses,
                ),
                (
                    "compile_cache_evictions",
                    "Compiled-code cache entries evicted to stay under its size",
                    &m.compile_evictions,
                ),
                (
                    "compile_cache_corrupt",
                    "Compiled-code cache entries found corrupt and rebuilt",
                    &m.compile_corrupt,
                ),
                (
                    "fuel_consumed",
                    "Fuel burnt by wasm tasks that ran to their own end",
                    &m.fuel,
                ),
            ];
            for (name, help, counter) in counters {
                r.register(name, help, counter.clone());
            }
            let gauges: [(&str, &str, &Gauge); 4] = [
                ("executors", "Executors running", &m.executors),
                ("tasks", "Tasks not yet ended", &m.tasks),
                (
                    "wasm_pool_slots_in_use",
                    "Pooled instance slots in use (one per running component task)",
                    &m.pool_slots,
                ),
                (
                    "wasm_pool_memories_in_use",
                    "Pooled linear memories in use",
                    &m.pool_memories,
                ),
            ];
            for (name, help, gauge) in gauges {
                r.register(name, help, gauge.clone());
            }
            r.register(
                "tasks_ended",
                "Tasks that ended, by kind (wasm, native), state and reason",
                m.tasks_ended.clone(),
            );
            r.register(
                "task_limit_kills",
                "Wasm tasks stopped by a limit: memory, fuel or timeout",
                m.limit_kills.clone(),
            );
            r.register(
                "fetches",
                "Artifact fetches from the master, by outcome",
                m.fetches.clone(),
            );
        }
        m
    }

    /// Applies what the core measured.
    pub fn apply(&self, measures: Vec<Measure>) {
        for m in measures {
            match m {
                Measure::TaskEnded {
                    native,
                    state,
                    reason,
                } => {
                    let labels = EndLabels {
                        kind: if native { "native" } else { "wasm" },
                        state: format!("{state:?}").to_lowercase(),
                        reason: reason.map(|r| r.to_string()).unwrap_or_default(),
                    };
                    self.tasks_ended.get_or_create(&labels).inc();
                    match (native, reason) {
                        (true, Some(Reason::MemoryLimit)) => {
                            self.oom_kills.inc();
                        }
                        (false, Some(Reason::MemoryLimit)) => self.limit_kill("memory"),
                        (false, Some(Reason::FuelExhausted)) => self.limit_kill("fuel"),
                        (false, Some(Reason::Timeout)) => self.limit_kill("timeout"),
                        _ => {}
                    }
                }
                Measure::UpdatesResent(n) => {
                    self.updates_resent.inc_by(n);
                }
            }
        }
    }

    fn limit_kill(&self, limit: &'static str) {
        self.limit_kills.get_or_create(&LimitLabels { limit }).inc();
    }

    /// A fetch ended: `bytes` fetched, or none if it failed.
    pub fn fetched(&self, bytes: Option<u64>) {
        let outcome = if bytes.is_some() { "done" } else { "failed" };
        self.fetches.get_or_create(&OutcomeLabels { outcome }).inc();
        self.fetch_bytes.inc_by(bytes.unwrap_or(0));
    }

    /// The executors and tasks there are now.
    pub fn set_counts(&self, executors: usize, tasks: usize) {
        self.executors
            .set(i64::try_from(executors).unwrap_or(i64::MAX));
        self.tasks.set(i64::try_from(tasks).unwrap_or(i64::MAX));
    }

    /// An executor's report: counters grow by what it did since its last
    /// one (all of it, if it is new or restarted), gauges are the sums.
    pub fn executor_stats(&self, framework_id: &FrameworkId, now: ExecutorStats) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let before = last.get(framework_id).copied().unwrap_or_default();
        let grew = |now: u64, before: u64| if now >= before { now - before } else { now };
        self.compile_hits.inc_by(grew(now.loaded, before.loaded));
        self.compile_misses
            .inc_by(grew(now.compiled, before.compiled));
        self.compile_evictions
            .inc_by(grew(now.evicted, before.evicted));
        self.compile_corrupt
            .inc_by(grew(now.corrupt, before.corrupt));
        self.fuel
            .inc_by(grew(now.fuel_consumed, before.fuel_consumed));
        last.insert(framework_id.clone(), now);
        self.set_pool(&last);
    }

    /// An executor exited: its slots are free.
    pub fn executor_gone(&self, framework_id: &FrameworkId) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.remove(framework_id).is_some() {
            self.set_pool(&last);
        }
    }

    fn set_pool(&self, last: &HashMap<FrameworkId, ExecutorStats>) {
        let sum = |f: fn(&ExecutorStats) -> u64| {
            i64::try_from(last.values().map(f).sum::<u64>()).unwrap_or(i64::MAX)
        };
        self.pool_slots.set(sum(|s| s.pool_slots_in_use));
        self.pool_memories.set(sum(|s| s.pool_memories_in_use));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<AgentMetrics>) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics server stopped");
    }
}
