//! What the master counts for its metrics: the core reports each thing
//! as it happens, and the driver, which owns the metrics library and the
//! clock, drains and exports them.

use std::time::Duration;
use stoa_proto::TaskState;

/// The most measures held between two drains (the driver drains after
/// every input; this bounds a driver that stopped doing so).
const HELD: usize = 1 << 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// An allocation run, and how many offers it made.
    AllocationRun {
        offers: u64,
    },
    OffersAccepted(u64),
    OffersDeclined(u64),
    OfferRescinded,
    /// A task reached a terminal state (as its framework is told).
    TaskEnded {
        state: TaskState,
        reason: Option<String>,
    },
    /// From the accept that launched a task to its agent's RUNNING.
    LaunchLatency(Duration),
}

#[derive(Debug, Default)]
pub(crate) struct Measures(Vec<Measure>);

impl Measures {
    pub(crate) fn push(&mut self, m: Measure) {
        if self.0.len() < HELD {
            self.0.push(m);
        }
    }

    pub(crate) fn take(&mut self) -> Vec<Measure> {
        std::mem::take(&mut self.0)
    }
}
