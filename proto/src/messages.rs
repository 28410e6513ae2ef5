//! Every message between agent and master (channel `stoa-agent/1`) and
//! between scheduler and master (channel `stoa-sched/1`), in the Mesos v1
//! vocabulary.

use crate::ids::{AgentId, FrameworkId, OfferId, TaskId, UpdateId};
use crate::resources::{Attributes, Resources};
use crate::role::Role;
use crate::task::{Digest, TaskInfo, TaskState, TaskStatus};
use serde::{Deserialize, Serialize};

/// What an agent tells the master about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub hostname: String,
    /// Everything the agent has, reserved parts included.
    pub resources: Resources,
    /// Static reservations: parts of `resources` only offered to a role
    /// (and its sub-roles).
    pub reservations: Vec<(Role, Resources)>,
    pub attributes: Attributes,
}

/// A task an agent holds, reported when it re-registers so that a master
/// can rebuild its books: running, or ended with its last update not yet
/// acknowledged (`state` terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    pub resources: Resources,
    pub state: TaskState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentToMaster {
    /// First message on every connection. `agent_id` is set when the agent
    /// registered before (re-registration), with the tasks it still runs.
    Register {
        info: AgentInfo,
        agent_id: Option<AgentId>,
        tasks: Vec<RunningTask>,
    },
    Heartbeat,
    /// A task's state changed. Resent until acknowledged.
    StatusUpdate {
        framework_id: FrameworkId,
        update_id: UpdateId,
        status: TaskStatus,
    },
    /// A task sent bytes to its framework's scheduler. Best effort, like
    /// every framework message: not resent, dropped if nobody listens.
    FrameworkMessage {
        framework_id: FrameworkId,
        task_id: TaskId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A scheduler's message could not reach `task_id`: why, for the
    /// scheduler.
    Undelivered {
        framework_id: FrameworkId,
        task_id: TaskId,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterToAgent {
    /// The agent is admitted as `agent_id`. An agent that asked for
    /// another id was removed while it was away: it kills every task it
    /// holds and starts anew under the new id.
    Registered {
        agent_id: AgentId,
        heartbeat_interval_ms: u64,
        /// Past this long out of touch with the master, the master removes
        /// the agent and reports its tasks GONE; the agent stops them
        /// itself before then, so a task reported GONE is not running.
        removal_timeout_ms: u64,
    },
    /// Registration refused; the agent should not retry with the same data.
    Refused { message: String },
    RunTask {
        framework_id: FrameworkId,
        task: Box<TaskInfo>,
    },
    KillTask {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
    /// The scheduler acknowledged this update; stop resending it.
    AcknowledgeUpdate {
        task_id: TaskId,
        update_id: UpdateId,
    },
    /// Bytes from the scheduler for a running task's inbox.
    FrameworkMessage {
        framework_id: FrameworkId,
        task_id: TaskId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkInfo {
    /// Set to subscribe again as a framework the master knows (after a
    /// scheduler restart or a lost connection): its tasks and unacknowledged
    /// updates carry over, and a scheduler still connected as it is
    /// replaced (it gets ERROR).
    pub id: Option<FrameworkId>,
    pub name: String,
    pub role: Role,
    pub principal: Option<String>,
    /// How long the master keeps the framework's tasks after its scheduler
    /// disconnects; 0 tears it down at once.
    pub failover_timeout_ms: u64,
    /// Offers must hold at least one of these bundles; the master's
    /// default when empty.
    pub min_allocatable: Vec<Resources>,
    /// Only agents whose attributes satisfy all of these are offered.
    pub constraints: Vec<OfferConstraint>,
}

impl FrameworkInfo {
    /// A framework in `role` with the defaults for everything else.
    pub fn new(name: impl Into<String>, role: Role) -> FrameworkInfo {
        FrameworkInfo {
            id: None,
            name: name.into(),
            role,
            principal: None,
            failover_timeout_ms: 0,
            min_allocatable: Vec::new(),
            constraints: Vec::new(),
        }
    }
}

/// A condition on an agent attribute for offers to a framework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferConstraint {
    Exists {
        attribute: String,
    },
    Equals {
        attribute: String,
        value: String,
    },
    NotEquals {
        attribute: String,
        value: String,
    },
    /// The whole value matches this regular expression.
    Matches {
        attribute: String,
        pattern: String,
    },
}

/// Resources of one agent offered to one framework.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub hostname: String,
    /// Everything offered, reserved parts included.
    pub resources: Resources,
    /// The parts of `resources` reserved for a role.
    pub reservations: Vec<(Role, Resources)>,
    /// Beyond every guarantee: tasks launched on this offer may be
    /// preempted (TASK_KILLED, reason `preempted`) for a role below its
    /// guarantee.
    pub revocable: bool,
    pub attributes: Attributes,
}

/// What an ACCEPT does with the offered resources.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Launch {
        tasks: Vec<TaskInfo>,
    },
    /// Launches all of `tasks` or none: one invalid task fails the group,
    /// each task with TASK_ERROR.
    LaunchGroup {
        tasks: Vec<TaskInfo>,
    },
    /// Turns offered unreserved resources into resources reserved for
    /// `role` (the framework's role or an ancestor of it) on that agent.
    Reserve {
        role: Role,
        resources: Resources,
    },
    /// Gives reserved resources of the offer back to the unreserved pool.
    Unreserve {
        role: Role,
        resources: Resources,
    },
}

/// Scheduler → master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Subscribe {
        framework: FrameworkInfo,
    },
    /// Use offers (all of one agent). Resources not used return to the pool
    /// and are not offered to this framework again on that agent for
    /// `refuse_ms` (default 5 s).
    Accept {
        offer_ids: Vec<OfferId>,
        operations: Vec<Operation>,
        refuse_ms: Option<u64>,
    },
    Decline {
        offer_ids: Vec<OfferId>,
        refuse_ms: Option<u64>,
    },
    Kill {
        task_id: TaskId,
    },
    /// No more offers until REVIVE.
    Suppress,
    /// Offers again, and every filter this framework set is cleared.
    Revive,
    Acknowledge {
        agent_id: AgentId,
        task_id: TaskId,
        update_id: UpdateId,
    },
    /// Ends the framework: kills its tasks and forgets it.
    Teardown,
    /// Asks for the latest state of `tasks`, or of every task the master
    /// knows for this framework when empty. Answered with UPDATEs that need
    /// no acknowledgement; an unknown task is TASK_UNKNOWN.
    Reconcile {
        tasks: Vec<TaskId>,
    },
    /// Changes the framework's name, failover timeout, minimum offer size
    /// or constraints. Its role and principal stay.
    UpdateFramework {
        framework: FrameworkInfo,
    },
    /// SUBSCRIBE from a cluster-hosted scheduler instance (task `task_id`
    /// of the framework, launched by the master): it subscribes as the
    /// principal that submitted the framework.
    SubscribeHosted {
        framework: FrameworkInfo,
        task_id: TaskId,
        token: Digest,
    },
    /// Asks the master to host a scheduler (`stoa submit`); the only call
    /// besides SUBSCRIBE that may open a connection. Answered with
    /// SUBMITTED or ERROR.
    Submit {
        submission: Box<Submission>,
    },
    /// Sends `data` to the scheduler of `framework_id` (as a MESSAGE
    /// event); only the framework's principal may. May open a connection
    /// like SUBMIT; answered with DELIVERED or ERROR.
    SendMessage {
        framework_id: FrameworkId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// MESSAGE: sends `data` to one of this framework's running tasks (a
    /// `stoa:task` component, which reads it from its inbox). Best effort:
    /// nothing is resent; a task that is not running or cannot receive
    /// gets the scheduler an ERROR saying so.
    Message {
        task_id: TaskId,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// Largest MESSAGE payload.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Why `data` cannot travel as a message, if it cannot: the one size rule
/// for messages to schedulers and to tasks.
pub fn message_too_large(data: &[u8]) -> Option<String> {
    (data.len() > MAX_MESSAGE).then(|| {
        format!(
            "a message may hold at most {MAX_MESSAGE} bytes, not {}; send large data as an artifact and name its digest",
            data.len()
        )
    })
}

/// A framework whose scheduler the master runs on an agent, restarting it
/// (on another agent if its own is lost) until the framework ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submission {
    /// The framework; `id` must be unset (the master names it) and
    /// `principal` is the submitter's certificate.
    pub framework: FrameworkInfo,
    /// The scheduler component, already in the master's artifact store.
    pub artifact: Digest,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// What the scheduler instance holds on its agent: `mem` is its
    /// memory limit.
    pub resources: Resources,
    /// Fuel for each handler call.
    pub fuel_per_call: u64,
}

/// Whether a certificate name is an agent's (`agent` or `agent-*`): only
/// agents may register resources, report task states and host schedulers.
pub fn is_agent_principal(name: &str) -> bool {
    name == "agent" || name.starts_with("agent-")
}

/// The message of the ERROR a scheduler gets when another takes its
/// framework over (its code is [`Refusal::FailedOver`]).
pub const FAILED_OVER: &str = "framework failed over to a new scheduler";

/// Why the master refused a scheduler's call or ended its connection.
/// Clients act on this code, never on the message, which is for people.
/// The variant's index is its wire code (postcard encodes enums by index):
/// new refusals go at the end, and none is ever renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Refusal {
    /// Another scheduler took the framework over: stop, do not subscribe
    /// again.
    FailedOver,
    /// The framework was torn down (by its scheduler, an operator, or its
    /// failover timeout): subscribe without an id to start afresh.
    TornDown,
    /// No framework with that id is known to this master.
    UnknownFramework,
    /// The caller's principal may not do this (another tenant's framework,
    /// a claim its certificate contradicts, a hosted instance's token).
    NotAuthorized,
    /// What was sent is invalid: a framework description, a submission, a
    /// message too large. The message says what to change.
    Invalid,
    /// A call out of order: before SUBSCRIBE, or a second SUBSCRIBE.
    OutOfOrder,
    /// What the call needs is not there now (a task ended, an agent away,
    /// no scheduler connected): trying again later may work.
    Unavailable,
    /// An operation of an ACCEPT (RESERVE, UNRESERVE) was refused.
    OperationRefused,
}

impl Refusal {
    /// The stable number that stands for this refusal on the wire.
    pub fn code(self) -> u16 {
        match self {
            Refusal::FailedOver => 0,
            Refusal::TornDown => 1,
            Refusal::UnknownFramework => 2,
            Refusal::NotAuthorized => 3,
            Refusal::Invalid => 4,
            Refusal::OutOfOrder => 5,
            Refusal::Unavailable => 6,
            Refusal::OperationRefused => 7,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::FailedOver => "failed-over",
            Refusal::TornDown => "torn-down",
            Refusal::UnknownFramework => "unknown-framework",
            Refusal::NotAuthorized => "not-authorized",
            Refusal::Invalid => "invalid",
            Refusal::OutOfOrder => "out-of-order",
            Refusal::Unavailable => "unavailable",
            Refusal::OperationRefused => "operation-refused",
        })
    }
}

/// The task a MESSAGE event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSource {
    pub agent_id: AgentId,
    pub task_id: TaskId,
}

/// Master → scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Subscribed {
        framework_id: FrameworkId,
        heartbeat_interval_ms: u64,
    },
    Offers {
        offers: Vec<Offer>,
    },
    Rescind {
        offer_id: OfferId,
    },
    /// A task's state. When `ack` is set the scheduler must ACKNOWLEDGE it,
    /// or it is delivered again.
    Update {
        status: TaskStatus,
        ack: Option<UpdateId>,
    },
    /// The master refused a call (the connection stays open unless the
    /// master closes it after this). `code` says what kind of refusal it
    /// is, for programs; `message` says why, for people.
    Error {
        code: Refusal,
        message: String,
    },
    /// Sent every heartbeat interval: a scheduler that hears nothing for a
    /// few intervals should reconnect.
    Heartbeat,
    /// An agent was lost: its tasks are being reported LOST or UNREACHABLE.
    Failure {
        agent_id: AgentId,
    },
    /// The answer to SUBMIT: the master hosts the framework's scheduler.
    Submitted {
        framework_id: FrameworkId,
    },
    /// Bytes sent to this framework: by one of its tasks (`from`), or
    /// from outside with SEND_MESSAGE (`from` unset).
    Message {
        from: Option<MessageSource>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The answer to SEND_MESSAGE: the scheduler was sent the message.
    Delivered,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte fields travel as bytes (one copy, not one call per byte: a
    /// 2.6 MB inline component took 130 ms a hop in a debug build, enough
    /// to stall a daemon's loop past its keep-alives), with the wire
    /// encoding of a sequence of u8, so peers of either kind agree.
    #[test]
    fn byte_fields_keep_the_wire_encoding_of_a_sequence() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct AsSequence {
            data: Vec<u8>,
        }
        let bytes: Vec<u8> = (0..=255).cycle().take(1_000).collect();
        let new = AgentToMaster::FrameworkMessage {
            framework_id: FrameworkId::new("f").expect("id"),
            task_id: TaskId::new("t").expect("id"),
            data: bytes.clone(),
        };
        let wire = postcard::to_stdvec(&new).expect("encodes");
        let old = postcard::to_stdvec(&AsSequence {
            data: bytes.clone(),
        })
        .expect("encodes");
        assert!(wire.ends_with(&old), "the bytes are encoded as before");
        let artifact = crate::Artifact::inline(bytes.clone());
        let wire = postcard::to_stdvec(&artifact).expect("encodes");
        assert!(wire.ends_with(&old));
        let back: crate::Artifact = postcard::from_bytes(&wire).expect("decodes");
        assert_eq!(back, artifact);
    }

    /// A refusal's wire code is its variant index; renumbering one would
    /// make old clients misread new masters.
    #[test]
    fn refusal_codes_are_their_wire_encoding_and_never_move() {
        let all = [
            Refusal::FailedOver,
            Refusal::TornDown,
            Refusal::UnknownFramework,
            Refusal::NotAuthorized,
            Refusal::Invalid,
            Refusal::OutOfOrder,
            Refusal::Unavailable,
            Refusal::OperationRefused,
        ];
        for (i, r) in all.into_iter().enumerate() {
            assert_eq!(r.code() as usize, i, "{r}");
            let wire = postcard::to_stdvec(&r).expect("encodes");
            assert_eq!(wire, vec![i as u8], "{r}");
            assert_eq!(postcard::from_bytes::<Refusal>(&wire).expect("decodes"), r);
        }
        assert!(
            postcard::from_bytes::<Refusal>(&[200]).is_err(),
            "an unknown code is an error"
        );
    }
}
