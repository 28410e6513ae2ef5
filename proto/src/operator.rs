//! The operator channel (`stoa-op/1`): requests from `stoa` commands run by
//! operators, each answered by one reply. Only a certificate issued as
//! `operator` may use it.

use crate::ids::{AgentId, FrameworkId, TaskId};
use crate::resources::Resources;
use crate::role::Role;
use crate::side::{LogChunk, LogStream};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorCall {
    SetWeight {
        role: Role,
        weight: f64,
    },
    /// `limit` in resource syntax with zeros allowed; `None` for no limit.
    /// An empty guarantee and no limit removes the quota.
    SetQuota {
        role: Role,
        guarantee: Resources,
        limit: Option<String>,
    },
    GetRoles,
    /// Reserves free resources of an agent for a role (outstanding offers
    /// of that agent are rescinded first).
    Reserve {
        agent: AgentId,
        role: Role,
        resources: Resources,
    },
    Unreserve {
        agent: AgentId,
        role: Role,
        resources: Resources,
    },
    /// Part of a task's stdout or stderr, read from its agent.
    /// `framework_id` is needed only when two frameworks used the task id.
    ReadLog {
        framework_id: Option<FrameworkId>,
        task_id: TaskId,
        stream: LogStream,
        offset: u64,
        max_len: u32,
    },
    GetFrameworks,
    /// Ends a framework: its tasks (and its hosted scheduler) are killed.
    Teardown {
        framework_id: FrameworkId,
    },
}

/// One framework as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkStatus {
    pub id: FrameworkId,
    pub name: String,
    pub role: Role,
    pub principal: Option<String>,
    /// Its scheduler is subscribed now.
    pub connected: bool,
    /// Tasks not yet ended, its hosted scheduler's excluded.
    pub tasks: usize,
    /// Set when the master hosts its scheduler.
    pub hosted: Option<HostedStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedStatus {
    /// The instance that should be running, and its agent.
    pub instance: Option<(TaskId, AgentId)>,
    /// Instances started so far.
    pub launched: u64,
}

/// One role as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleStatus {
    pub role: Role,
    pub weight: f64,
    pub guarantee: Resources,
    pub limit: Option<String>,
    /// What the role and its sub-roles hold (offered or used), by kind.
    pub allocated: Vec<(String, u64)>,
    pub frameworks: usize,
    /// Reservations for exactly this role: (agent, resources), static and
    /// dynamic.
    pub reservations: Vec<(AgentId, Resources)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperatorReply {
    Done,
    Roles(Vec<RoleStatus>),
    Log(LogChunk),
    Frameworks(Vec<FrameworkStatus>),
    Refused { message: String },
}
