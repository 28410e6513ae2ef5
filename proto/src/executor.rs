//! Between an agent and its executors: one process per framework, on a
//! Unix socket, in the same frames as every other link.
//!
//! An executor outlives its agent: it keeps each task's last event until the
//! agent says the master has it ([`AgentToExecutor::Forget`]), so a
//! restarted agent learns everything again from [`ExecutorToAgent::Hello`].

use crate::ids::{FrameworkId, TaskId};
use crate::task::{Reason, TaskInfo, TaskState};
use serde::{Deserialize, Serialize};

/// What an executor reports about a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskEvent {
    Running,
    /// A health check's verdict changed; the task still runs.
    Health {
        healthy: bool,
    },
    /// Ended well: a `stoa:task` returned its output, or a command exited 0.
    Finished {
        #[serde(with = "serde_bytes")]
        output: Vec<u8>,
        exit_code: Option<i32>,
    },
    /// Ended badly; `state` is FAILED, KILLED or ERROR.
    Ended {
        state: TaskState,
        reason: Reason,
        message: String,
        exit_code: Option<i32>,
    },
}

impl TaskEvent {
    pub fn ended(state: TaskState, reason: Reason, message: impl Into<String>) -> TaskEvent {
        TaskEvent::Ended {
            state,
            reason,
            message: message.into(),
            exit_code: None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        !matches!(self, TaskEvent::Running | TaskEvent::Health { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentToExecutor {
    /// Run a task. `dir` is the task's directory on this host: the executor
    /// makes `dir/sandbox` (the only path the task sees) and writes
    /// `dir/stdout` and `dir/stderr`, unless the task is ephemeral
    /// ([`crate::Sandbox::Ephemeral`]) and has no directory.
    Launch {
        task: Box<TaskInfo>,
        dir: String,
        /// The cgroup a native task runs in, made and limited by the agent.
        cgroup: Option<CgroupPaths>,
    },
    Kill {
        task_id: TaskId,
    },
    /// Bytes from the scheduler for the task's inbox.
    Message {
        task_id: TaskId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The master has the task's terminal update: the executor may drop it.
    Forget {
        task_id: TaskId,
    },
    /// Kill every task and exit.
    Shutdown,
}

/// One cgroup, in every hierarchy it spans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupPaths {
    /// cgroup v2: one directory in the unified hierarchy.
    V2(String),
    /// cgroup v1: a directory in each controller's hierarchy. The freezer
    /// makes a kill atomic where it is mounted.
    V1 {
        cpu: String,
        memory: String,
        pids: String,
        freezer: Option<String>,
    },
}

/// A task as an executor knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorTask {
    pub task: TaskInfo,
    /// The latest event, if the task got as far as one.
    pub last: Option<TaskEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutorToAgent {
    /// First message on every connection: who this is and every task not
    /// yet forgotten.
    Hello {
        framework_id: FrameworkId,
        pid: u32,
        tasks: Vec<ExecutorTask>,
    },
    Event {
        task_id: TaskId,
        event: TaskEvent,
    },
    /// The task sent bytes to its scheduler.
    Message {
        task_id: TaskId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A message for the task was dropped, and why.
    Undelivered {
        task_id: TaskId,
        message: String,
    },
    /// What the executor's wasm runtime has done, for the agent's
    /// metrics: sent about once a second while it changes.
    Stats(ExecutorStats),
}

/// An executor's wasm runtime in numbers. Counters count up from the
/// executor's start; gauges are as of sending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorStats {
    /// Pooled instance slots (one per running component task) in use.
    pub pool_slots_in_use: u64,
    /// Pooled linear memories in use.
    pub pool_memories_in_use: u64,
    /// Binaries compiled (misses of the compiled-code cache).
    pub compiled: u64,
    /// Binaries loaded from the compiled-code cache (hits).
    pub loaded: u64,
    /// Cache entries evicted to keep it under its size.
    pub evicted: u64,
    /// Cache entries found corrupt and rebuilt.
    pub corrupt: u64,
    /// Fuel burnt by the tasks that ended.
    pub fuel_consumed: u64,
}
