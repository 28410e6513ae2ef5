//! The master's Prometheus metrics (`GET /metrics`): what the core
//! measured (drained after every input), what the driver times itself
//! (registry writes, allocation runs), and gauges read from the core at
//! each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Duration;
use stoa_master_core::measures::Measure;
use stoa_proto::operator::ClusterSummary;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OfferLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndLabels {
    state: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// Every metric the master exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    offers: Family<OfferLabels, Counter>,
    tasks_ended: Family<EndLabels, Counter>,
    launch_latency: Histogram,
    allocation_runs: Counter,
    allocation_seconds: Histogram,
    registry_write_seconds: Histogram,
    leader_changes: Counter,
    updates_resent: Counter,
    agents: Gauge,
    agents_connected: Gauge,
    frameworks: Gauge,
    tasks: Family<StateLabels, Gauge>,
    offers_outstanding: Gauge,
    schedulers_connected: Gauge,
    unacknowledged: Gauge,
}

/// Buckets from 100 µs to about 26 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("stoa_master")),
            offers: Family::default(),
            tasks_ended: Family::default(),
            launch_latency: seconds(),
            allocation_runs: Counter::default(),
            allocation_seconds: seconds(),
            registry_write_seconds: seconds(),
            leader_changes: Counter::default(),
            updates_resent: Counter::default(),
            agents: Gauge::default(),
            agents_connected: Gauge::default(),
            frameworks: Gauge::default(),
            tasks: Family::default(),
            offers_outstanding: Gauge::default(),
            schedulers_connected: Gauge::default(),
            unacknowledged: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "offers",
                "Offers by outcome: sent, accepted, declined, rescinded",
                m.offers.clone(),
            );
            r.register(
                "tasks_ended",
                "Tasks that reached a terminal state, by state and reason",
                m.tasks_ended.clone(),
            );
            r.register(
                "launch_latency_seconds",
                "From the accept that launched a task to its RUNNING",
                m.launch_latency.clone(),
            );
            r.register(
                "allocation_runs",
                "Allocation runs",
                m.allocation_runs.clone(),
            );
            r.register(
                "allocation_run_seconds",
                "How long an input that ran an allocation took the master",
                m.allocation_seconds.clone(),
            );
            r.register(
                "registry_write_seconds",
                "How long a (group-committed) registry write took",
                m.registry_write_seconds.clone(),
            );
            r.register(
                "leader_changes",
                "Times this master began to lead",
                m.leader_changes.clone(),
            );
            r.register(
                "status_update_retries",
                "Status updates an agent sent again, their acknowledgement not having reached it",
                m.updates_resent.clone(),
            );
            r.register("agents", "Agents admitted", m.agents.clone());
            r.register(
                "agents_connected",
                "Agents connected now",
                m.agents_connected.clone(),
            );
            r.register("frameworks", "Frameworks known", m.frameworks.clone());
            r.register("tasks", "Tasks not yet ended, by state", m.tasks.clone());
            r.register(
                "offers_outstanding",
                "Offers made and not yet answered",
                m.offers_outstanding.clone(),
            );
            r.register(
                "schedulers_connected",
                "Frameworks whose scheduler is connected",
                m.schedulers_connected.clone(),
            );
            r.register(
                "updates_unacknowledged",
                "Task ends not yet acknowledged by their scheduler",
                m.unacknowledged.clone(),
            );
        }
        m
    }

    fn offer(&self, outcome: &'static str, n: u64) {
        self.offers
            .get_or_create(&OfferLabels { outcome })
            .inc_by(n);
    }

    /// Applies what the core measured; `took` is how long the input that
    /// produced them took, for allocation runs.
    pub fn apply(&self, measures: Vec<Measure>, took: Duration) {
        for m in measures {
            match m {
                Measure::AllocationRun { offers } => {
                    self.allocation_runs.inc();
                    self.allocation_seconds.observe(took.as_secs_f64());
                    self.offer("sent", offers);
                }
                Measure::OffersAccepted(n) => self.offer("accepted", n),
                Measure::OffersDeclined(n) => self.offer("declined", n),
                Measure::OfferRescinded => self.offer("rescinded", 1),
                Measure::TaskEnded { state, reason } => {
                    let labels = EndLabels {
                        state: format!("{state:?}").to_lowercase(),
                        reason: reason.unwrap_or_default(),
                    };
                    self.tasks_ended.get_or_create(&labels).inc();
                }
                Measure::LaunchLatency(d) => self.launch_latency.observe(d.as_secs_f64()),
                Measure::UpdateResent => {
                    self.updates_resent.inc();
                }
            }
        }
    }

    pub fn registry_write(&self, took: Duration) {
        self.registry_write_seconds.observe(took.as_secs_f64());
    }

    pub fn leader_change(&self) {
        self.leader_changes.inc();
    }

    /// The exposition text, with the gauges set from `summary`.
    pub fn render(&self, summary: Option<&ClusterSummary>) -> String {
        if let Some(s) = summary {
            let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
            self.agents.set(n(s.agents));
            self.agents_connected.set(n(s.connected_agents));
            self.frameworks.set(n(s.frameworks));
            self.offers_outstanding.set(n(s.offers));
            self.schedulers_connected.set(n(s.schedulers_connected));
            self.unacknowledged.set(n(s.unacknowledged));
            self.tasks.clear();
            for (state, count) in &s.tasks {
                let labels = StateLabels {
                    state: format!("{state:?}").to_lowercase(),
                };
                self.tasks.get_or_create(&labels).set(n(*count));
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}
