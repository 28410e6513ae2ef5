//! What the master counts for its metrics: the core reports each thing
//! as it happens, and the driver, which owns the metrics library and the
//! clock, drains and exports them.

use std::time::Duration;
use stoa_proto::TaskState;

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
    /// An agent sent a status update again (its acknowledgement had not
    /// reached it).
    UpdateResent,
}

/// What the core holds for its driver.
pub(crate) type Measures = stoa_proto::measures::Measures<Measure>;
