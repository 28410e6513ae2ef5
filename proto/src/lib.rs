//! Stoa's wire vocabulary: identifiers, resources, tasks and every message that
//! crosses a link between agent, master and scheduler, plus the frame format
//! they travel in.
//!
//! This crate does no I/O, reads no clock and starts no threads. Types here
//! cannot hold bad values: ids are never empty, [`Resources`] never go
//! negative, and every decoder returns an error value instead of panicking
//! on malformed peer data.

pub mod executor;
pub mod framing;
pub mod ids;
pub mod measures;
pub mod messages;
pub mod operator;
pub mod resources;
pub mod role;
pub mod side;
pub mod standby;
pub mod task;
pub mod time;

pub use framing::{FrameError, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use ids::{AgentId, FrameworkId, IdError, OfferId, TaskId, UpdateId};
pub use messages::{
    AgentInfo, AgentToMaster, Call, Event, FrameworkInfo, MasterToAgent, MessageSource, Offer,
    OfferConstraint, Operation, Refusal, RunningTask, Submission,
};
pub use resources::{Attributes, ParseError, PortRange, Resources};
pub use role::{Role, RoleError};
pub use task::{
    Artifact, CommandTask, DEFAULT_KILL_GRACE_MS, Digest, EPHEMERAL_STDERR_TAIL, HealthCheck,
    HostedScheduler, Reason, Sandbox, SandboxPath, TaskFile, TaskInfo, TaskKind, TaskLimits,
    TaskState, TaskStatus, WasmTask,
};
pub use time::Time;
