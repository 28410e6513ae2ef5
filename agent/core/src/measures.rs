//! What the agent counts for its metrics: the core reports each thing as
//! it happens, and the driver, which owns the metrics library, drains and
//! exports them.

use stoa_proto::{Reason, TaskState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// A task ended, as the agent reported it.
    TaskEnded {
        /// A native command (in a cgroup) rather than a wasm task.
        native: bool,
        state: TaskState,
        reason: Option<Reason>,
    },
    /// Status updates sent again, their acknowledgement not having come.
    UpdatesResent(u64),
}

/// What the core holds for its driver.
pub(crate) type Measures = stoa_proto::measures::Measures<Measure>;
