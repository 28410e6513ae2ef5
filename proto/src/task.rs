//! Tasks: what a framework asks an agent to run, and the states it goes
//! through (the Mesos 1.x set, partition-aware).

use crate::ids::{AgentId, TaskId};
use crate::resources::Resources;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Largest task output carried back in a status update.
pub const MAX_TASK_OUTPUT: usize = 1 << 20;

/// A sha256 content address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::str::FromStr for Digest {
    type Err = String;

    /// Parses `sha256:<64 hex digits>` (the prefix may be left out).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| format!("{s:?} is not a sha256 digest (sha256:<64 hex digits>)"))?;
        Ok(Digest(out))
    }
}

/// The binary a task runs, named by its sha256 digest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Artifact {
    /// Carried in the launch itself: for small binaries and tests.
    Inline {
        digest: Digest,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Uploaded once to the master's artifact store; an agent that does not
    /// have it fetches it from there.
    Stored(Digest),
}

impl Artifact {
    pub fn inline(bytes: Vec<u8>) -> Artifact {
        Artifact::Inline {
            digest: Digest::of(&bytes),
            bytes,
        }
    }

    pub fn digest(&self) -> Digest {
        match self {
            Artifact::Inline { digest, .. } | Artifact::Stored(digest) => *digest,
        }
    }
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Artifact::Inline { digest, bytes } => {
                write!(f, "Artifact({digest}, {} bytes inline)", bytes.len())
            }
            Artifact::Stored(digest) => write!(f, "Artifact({digest}, stored)"),
        }
    }
}

/// What kind of program a task is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// A wasm binary; which kind is read from the binary itself:
    /// a `stoa:task` component gets `input` and returns its output bytes;
    /// a `wasi:cli/run` command component or a WASI preview-1 module with
    /// `_start` gets `args`, `env` and `input` as its stdin, and ends with
    /// an exit code.
    Wasm(WasmTask),
    /// A native program run on the agent's host, in a cgroup sized from the
    /// task's resources. Only frameworks the master's ACL allows may launch
    /// one.
    Command(CommandTask),
    /// A scheduler component the master runs for a framework submitted
    /// with `stoa submit`. Only the master launches these; an ACCEPT that
    /// names one is refused.
    Scheduler(HostedScheduler),
}

/// A cluster-hosted scheduler: the component, how to configure it, and the
/// proof that this instance is the one the master launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostedScheduler {
    pub artifact: Artifact,
    /// The framework it subscribes as; its id is always set.
    pub framework: crate::messages::FrameworkInfo,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Fuel for each handler call.
    pub fuel_per_call: u64,
    /// Presented with SUBSCRIBE_HOSTED: the master accepts only the
    /// instance it launched last, and only from an agent.
    pub token: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasmTask {
    pub artifact: Artifact,
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// Arguments after the program name (`argv[1..]`).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub sandbox: Sandbox,
    /// Placed in the task's directory before it starts: needs
    /// [`Sandbox::Directory`].
    pub files: Vec<TaskFile>,
}

/// A file placed in a task's directory before it starts, as Mesos's
/// fetcher places a URI: an artifact of the master's store, copied to
/// `path` under the sandbox, or with `extract` unpacked into the
/// directory `path` (a tar archive, gzip-compressed or not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    pub path: SandboxPath,
    pub artifact: Digest,
    pub extract: bool,
}

/// A path inside a task's sandbox: relative, of plain names only (no
/// `..`, no `.`, no root), so it cannot point outside.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxPath(String);

/// Longest [`SandboxPath`], in bytes.
pub const MAX_SANDBOX_PATH: usize = 1024;

impl TryFrom<String> for SandboxPath {
    type Error = String;

    fn try_from(path: String) -> Result<Self, String> {
        if path.is_empty() || path.len() > MAX_SANDBOX_PATH || path.contains('\0') {
            return Err(format!(
                "a sandbox path must be 1 to {MAX_SANDBOX_PATH} bytes without NUL, not {path:?}"
            ));
        }
        let plain = std::path::Path::new(&path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || path.starts_with('/') || path.split('/').any(|part| part == ".") {
            return Err(format!(
                "{path:?} is not a plain relative path inside the sandbox (no `/` at the start, no `.` or `..`)"
            ));
        }
        Ok(SandboxPath(path))
    }
}

impl std::str::FromStr for SandboxPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SandboxPath::try_from(s.to_string())
    }
}

impl From<SandboxPath> for String {
    fn from(p: SandboxPath) -> String {
        p.0
    }
}

impl SandboxPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a wasm task gets a directory on its agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sandbox {
    /// A directory of its own, preopened as `/`, with stdout and stderr
    /// kept as files beside it (for `stoa logs`) until the agent collects
    /// it.
    #[default]
    Directory,
    /// No files at all, as a wasmCloud component has: nothing is
    /// preopened, stdout is dropped, and the last
    /// [`EPHEMERAL_STDERR_TAIL`] bytes of stderr are added to the message
    /// of an update that ends the task in failure. Such a task costs its
    /// agent no file-system work, which for a task of a few tens of
    /// microseconds is most of what running it costs.
    Ephemeral,
    /// A directory that holds only the task's stdout and stderr (for
    /// `stoa logs`): nothing is preopened, so the task sees no files, as
    /// a program run by `wasmtime run` without `--dir`.
    LogsOnly,
}

impl Sandbox {
    /// Whether the task gets a directory preopened as `/`.
    pub fn preopens(self) -> bool {
        self == Sandbox::Directory
    }
}

/// Bytes of an ephemeral task's stderr kept for its failure message.
pub const EPHEMERAL_STDERR_TAIL: usize = 2048;

/// Default time between SIGTERM and SIGKILL when a native task is killed.
pub const DEFAULT_KILL_GRACE_MS: u64 = 3_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandTask {
    /// The program and its arguments; a program without a `/` is looked up
    /// in `PATH`. Runs with the task's sandbox directory as its working
    /// directory.
    pub argv: Vec<String>,
    /// The whole environment: nothing is inherited from the agent.
    pub env: Vec<(String, String)>,
    /// Written to the program's stdin, which is then closed.
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    /// How long a kill waits between SIGTERM and SIGKILL;
    /// [`DEFAULT_KILL_GRACE_MS`] when `None`.
    pub kill_grace_ms: Option<u64>,
    /// At most this many processes and threads at once; the agent's limit
    /// when `None` or higher.
    pub max_pids: Option<u32>,
    /// Checked while the program runs; the task is killed (TASK_KILLED,
    /// reason `unhealthy`) after too many failed checks in a row.
    pub health_check: Option<HealthCheck>,
}

/// A command health check, as in Mesos: `argv` runs in the task's sandbox
/// and cgroup, with the task's environment, every `interval_ms`; it passes
/// when it exits 0 within `timeout_ms`. Failures in the first
/// `grace_period_ms` of the task do not count; `max_failures` in a row
/// kill it. Each change of verdict is a TASK_RUNNING update with
/// `healthy` set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub argv: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub grace_period_ms: u64,
    pub max_failures: u32,
}

/// Builds a [`CommandTask`] from the WIT `command-program` record of any
/// binding generator (host and guest bindings are different types with the
/// same fields).
#[macro_export]
macro_rules! command_from_wit {
    ($c:expr) => {{
        let c = $c;
        $crate::CommandTask {
            argv: c.argv.clone(),
            env: c.env.clone(),
            input: c.input.clone(),
            kill_grace_ms: c.kill_grace_ms,
            max_pids: None,
            health_check: c.health_check.as_ref().map(|h| $crate::HealthCheck {
                argv: h.argv.clone(),
                interval_ms: h.interval_ms,
                timeout_ms: h.timeout_ms,
                grace_period_ms: h.grace_period_ms,
                max_failures: h.max_failures,
            }),
        }
    }};
}

/// Builds a [`WasmTask`] from the WIT `wasm-program` record of any binding
/// generator, with the artifact already parsed from its digest.
#[macro_export]
macro_rules! wasm_from_wit {
    ($w:expr, $artifact:expr, $sandbox:expr) => {{
        let w = $w;
        $crate::WasmTask {
            artifact: $artifact,
            input: w.input.clone(),
            args: w.args.clone(),
            env: w.env.clone(),
            sandbox: $sandbox,
            files: Vec::new(),
        }
    }};
}

impl CommandTask {
    /// `argv` with an empty environment and the default kill policy.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> CommandTask {
        CommandTask {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            input: Vec::new(),
            kill_grace_ms: None,
            max_pids: None,
            health_check: None,
        }
    }
}

impl TaskKind {
    /// The wasm binary the task runs in its executor; `None` for a native
    /// program.
    pub fn artifact(&self) -> Option<&Artifact> {
        match self {
            TaskKind::Wasm(w) => Some(&w.artifact),
            TaskKind::Scheduler(s) => Some(&s.artifact),
            TaskKind::Command(_) => None,
        }
    }

    /// A wasm task with `input`, no arguments or environment, and a
    /// sandbox directory.
    pub fn wasm(artifact: Artifact, input: Vec<u8>) -> TaskKind {
        TaskKind::Wasm(WasmTask {
            artifact,
            input,
            args: Vec::new(),
            env: Vec::new(),
            sandbox: Sandbox::Directory,
            files: Vec::new(),
        })
    }

    /// The first artifact of the master's store the task needs (its
    /// program, then its files) that `here` says is not at hand.
    pub fn missing_artifact(&self, here: impl Fn(Digest) -> bool) -> Option<Digest> {
        let program = match self.artifact() {
            Some(Artifact::Stored(digest)) => Some(*digest),
            _ => None,
        };
        let files = match self {
            TaskKind::Wasm(w) => w.files.as_slice(),
            _ => &[],
        };
        program
            .into_iter()
            .chain(files.iter().map(|f| f.artifact))
            .find(|d| !here(*d))
    }

    /// Whether the task has a directory on its agent: every task but an
    /// ephemeral wasm one.
    pub fn has_sandbox(&self) -> bool {
        !matches!(
            self,
            TaskKind::Wasm(WasmTask {
                sandbox: Sandbox::Ephemeral,
                ..
            })
        )
    }
}

/// Limits beyond the task's resources. Memory is always the task's `mem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Deterministic instruction budget; unlimited when `None`.
    pub fuel: Option<u64>,
    /// Wall-clock limit in milliseconds; unlimited when `None`.
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task_id: TaskId,
    pub name: String,
    pub resources: Resources,
    pub kind: TaskKind,
    pub limits: TaskLimits,
}

/// Task states of Mesos 1.x (`mesos.proto`), partition-aware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Staging,
    Starting,
    Running,
    Killing,
    Finished,
    Failed,
    Killed,
    Error,
    Lost,
    Dropped,
    Unreachable,
    Gone,
    Unknown,
}

impl std::str::FromStr for TaskState {
    type Err = String;

    /// A state as people write it: `running`, `RUNNING` or `Running`.
    fn from_str(s: &str) -> Result<TaskState, String> {
        const ALL: [TaskState; 13] = [
            TaskState::Staging,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Killing,
            TaskState::Finished,
            TaskState::Failed,
            TaskState::Killed,
            TaskState::Error,
            TaskState::Lost,
            TaskState::Dropped,
            TaskState::Unreachable,
            TaskState::Gone,
            TaskState::Unknown,
        ];
        ALL.into_iter()
            .find(|state| format!("{state:?}").eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "invalid task state {s:?}: give staging, starting, running, killing, finished, failed, killed, error, lost, dropped, unreachable, gone or unknown"
                )
            })
    }
}

impl TaskState {
    /// A terminal state is final: the task's resources are free again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished
                | TaskState::Failed
                | TaskState::Killed
                | TaskState::Error
                | TaskState::Lost
                | TaskState::Dropped
                | TaskState::Gone
        )
    }
}

/// Maps a [`TaskState`] to the same-named variant of another enum: the
/// WIT `task-state` as each binding generator names it (host and guest
/// bindings are different types with the same variants).
#[macro_export]
macro_rules! map_task_state {
    ($state:expr, $target:ident) => {
        match $state {
            $crate::TaskState::Staging => $target::Staging,
            $crate::TaskState::Starting => $target::Starting,
            $crate::TaskState::Running => $target::Running,
            $crate::TaskState::Killing => $target::Killing,
            $crate::TaskState::Finished => $target::Finished,
            $crate::TaskState::Failed => $target::Failed,
            $crate::TaskState::Killed => $target::Killed,
            $crate::TaskState::Error => $target::Error,
            $crate::TaskState::Lost => $target::Lost,
            $crate::TaskState::Dropped => $target::Dropped,
            $crate::TaskState::Unreachable => $target::Unreachable,
            $crate::TaskState::Gone => $target::Gone,
            $crate::TaskState::Unknown => $target::Unknown,
        }
    };
}

/// Builds the WIT `offer` record from an [`crate::Offer`] in the types of
/// one binding generator: `$offer` and `$scalar` are its `Offer` and
/// `Scalar` (host and guest bindings are different types, same fields).
#[macro_export]
macro_rules! wit_offer {
    ($o:expr, $offer:ident, $scalar:ident) => {{
        let o: &$crate::Offer = $o;
        $offer {
            id: o.id.0,
            agent_id: o.agent_id.as_str().to_string(),
            hostname: o.hostname.clone(),
            resources: o
                .resources
                .to_amounts()
                .into_iter()
                .map(|(name, value)| $scalar { name, value })
                .collect(),
            attributes: o
                .attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            revocable: o.revocable,
        }
    }};
}

/// Builds the WIT `task-status` record from a [`TaskStatus`] and the
/// update id to acknowledge, in one binding generator's types.
#[macro_export]
macro_rules! wit_task_status {
    ($s:expr, $ack:expr, $status:ident, $state:ident) => {{
        let s: &$crate::TaskStatus = $s;
        $status {
            task_id: s.task_id.as_str().to_string(),
            state: $crate::map_task_state!(s.state, $state),
            reason: s.reason.map(|r| r.to_string()),
            message: s.message.clone(),
            output: s.output.clone(),
            exit_code: s.exit_code,
            agent_id: s.agent_id.as_ref().map(|a| a.as_str().to_string()),
            update_id: $ack.map(|u: $crate::UpdateId| u.0),
            healthy: s.healthy,
        }
    }};
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = format!("{self:?}").to_uppercase();
        write!(f, "TASK_{s}")
    }
}

/// Why a task reached its state. Every terminal state carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// The task's own code reported an error.
    TaskFailed,
    /// The task tried to use more memory than its `mem`.
    MemoryLimit,
    /// The task spent its fuel budget.
    FuelExhausted,
    /// The task ran past its wall-clock limit.
    Timeout,
    /// The task trapped (e.g. `unreachable`, out-of-bounds access).
    Trap,
    /// The task tried to grow a table past the agent's per-task limit.
    TableLimit,
    /// The component holds more instances, tables or memories than a task
    /// may have.
    InstanceLimit,
    /// A command ended with a non-zero exit code.
    NonZeroExit,
    /// The executor running the task died.
    ExecutorTerminated,
    /// The agent could not fetch the task's artifact.
    ArtifactUnavailable,
    /// The task's output exceeded the limit carried in a status update.
    OutputTooLarge,
    /// The artifact did not match its digest or is not a valid binary.
    InvalidArtifact,
    /// An accept named an offer that does not exist (any more).
    InvalidOffers,
    /// The task description was invalid (duplicate id, resources not offered).
    TaskInvalid,
    /// The scheduler asked for the kill.
    KilledByScheduler,
    /// The framework was torn down or failed over past its timeout.
    FrameworkRemoved,
    /// The agent lost its connection to the master.
    AgentDisconnected,
    /// The agent was removed from the cluster.
    AgentRemoved,
    /// The agent restarted and did not find the task.
    AgentRestarted,
    /// The master does not know the task (reconciliation).
    TaskUnknown,
    /// Killed to give its resources to a role below its guarantee.
    Preempted,
    /// The master's ACL does not let the framework launch this kind of task.
    NotAuthorized,
    /// The agent cannot contain the task as its kind needs (native tasks
    /// need cgroups).
    IsolationUnavailable,
    /// Killed after failing its health check too many times in a row.
    Unhealthy,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::TaskFailed => "task-failed",
            Reason::Unhealthy => "unhealthy",
            Reason::MemoryLimit => "memory-limit",
            Reason::FuelExhausted => "fuel-exhausted",
            Reason::Timeout => "timeout",
            Reason::Trap => "trap",
            Reason::TableLimit => "table-limit",
            Reason::InstanceLimit => "instance-limit",
            Reason::NonZeroExit => "non-zero-exit",
            Reason::ExecutorTerminated => "executor-terminated",
            Reason::ArtifactUnavailable => "artifact-unavailable",
            Reason::OutputTooLarge => "output-too-large",
            Reason::InvalidArtifact => "invalid-artifact",
            Reason::InvalidOffers => "invalid-offers",
            Reason::TaskInvalid => "task-invalid",
            Reason::KilledByScheduler => "killed-by-scheduler",
            Reason::FrameworkRemoved => "framework-removed",
            Reason::AgentDisconnected => "agent-disconnected",
            Reason::AgentRemoved => "agent-removed",
            Reason::AgentRestarted => "agent-restarted",
            Reason::TaskUnknown => "task-unknown",
            Reason::Preempted => "preempted",
            Reason::NotAuthorized => "not-authorized",
            Reason::IsolationUnavailable => "isolation-unavailable",
        };
        f.write_str(s)
    }
}

/// A task's state as reported to its scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: TaskId,
    pub state: TaskState,
    pub reason: Option<Reason>,
    /// Human-readable detail: the trap message, the error the task returned.
    pub message: String,
    /// The task's output, on FINISHED.
    #[serde(with = "serde_bytes")]
    pub output: Option<Vec<u8>>,
    /// A command's exit code, once it exited.
    pub exit_code: Option<i32>,
    pub agent_id: Option<AgentId>,
    /// The last health check's verdict, for tasks that have one.
    pub healthy: Option<bool>,
}

impl TaskStatus {
    pub fn new(task_id: TaskId, state: TaskState) -> Self {
        TaskStatus {
            task_id,
            state,
            reason: None,
            message: String::new(),
            output: None,
            exit_code: None,
            agent_id: None,
            healthy: None,
        }
    }
    pub fn because(mut self, reason: Reason, message: impl Into<String>) -> Self {
        self.reason = Some(reason);
        self.message = message.into();
        self
    }
    pub fn on(mut self, agent_id: AgentId) -> Self {
        self.agent_id = Some(agent_id);
        self
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;

    #[test]
    fn the_program_is_fetched_before_the_files_and_what_is_here_is_skipped() {
        let (program, a, b) = (Digest::of(b"p"), Digest::of(b"a"), Digest::of(b"b"));
        let file = |d| TaskFile {
            path: "f".parse().expect("path"),
            artifact: d,
            extract: false,
        };
        let mut kind = TaskKind::wasm(Artifact::Stored(program), Vec::new());
        if let TaskKind::Wasm(w) = &mut kind {
            w.files = vec![file(a), file(b)];
        }
        assert_eq!(kind.missing_artifact(|_| false), Some(program));
        assert_eq!(kind.missing_artifact(|d| d == program), Some(a));
        assert_eq!(kind.missing_artifact(|d| d != b), Some(b));
        assert_eq!(kind.missing_artifact(|_| true), None);
    }
}
