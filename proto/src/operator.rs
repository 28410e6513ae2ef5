//! The operator channel (`stoa-op/1`): requests from `stoa` commands run by
//! operators, each answered by one reply. Only a certificate issued as
//! `operator` may use it.

use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::resources::Resources;
use crate::role::Role;
use crate::side::{LogChunk, LogStream};
use crate::task::TaskState;
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
    /// `wait_ms` (at most [`crate::side::MAX_LOG_WAIT_MS`]): how long the
    /// agent may hold a read that finds nothing new on a running task.
    ReadLog {
        framework_id: Option<FrameworkId>,
        task_id: TaskId,
        stream: LogStream,
        offset: u64,
        max_len: u32,
        wait_ms: u32,
    },
    GetFrameworks,
    /// Ends a framework: its tasks (and its hosted scheduler) are killed.
    Teardown {
        framework_id: FrameworkId,
    },
    /// The cluster at a glance.
    GetSummary,
    GetAgents,
    /// Tasks the master holds, in (framework, task) order, filtered and
    /// paged.
    GetTasks(TaskQuery),
    /// Offers made and not yet answered.
    GetOffers,
    /// Kills one task, as its scheduler could. `framework_id` is needed
    /// only when two frameworks use the task id.
    KillTask {
        framework_id: Option<FrameworkId>,
        task_id: TaskId,
    },
    /// Events after `after` (a sequence number of this leader's), oldest
    /// first, at most `limit`.
    GetEvents {
        after: Option<u64>,
        limit: u32,
    },
    /// A bearer token for the HTTP API, acting as `principal`, valid for
    /// `ttl_secs`.
    CreateToken {
        principal: String,
        ttl_secs: u64,
    },
    /// From now on, refuse a token or a certificate (by its serial), on
    /// every master.
    Revoke(Revocation),
}

/// What [`OperatorCall::Revoke`] refuses from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Revocation {
    /// A bearer token of the HTTP API, whole.
    Token(String),
    /// A certificate of the cluster CA, by its serial number (hex).
    CertificateSerial(String),
}

impl Revocation {
    /// The key the registry keeps it under, or why it is no revocation:
    /// `token:<signature>` (a token's last part, which only its master
    /// could make) or `serial:<lowercase hex>`.
    pub fn key(&self) -> Result<String, String> {
        match self {
            Revocation::Token(token) => {
                let signature = token
                    .rsplit_once('.')
                    .map(|(_, sig)| sig)
                    .filter(|sig| sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or("not a token of the API (stoa1.PRINCIPAL.EXPIRY.SIGNATURE)")?;
                Ok(format!("token:{}", signature.to_ascii_lowercase()))
            }
            Revocation::CertificateSerial(serial) => {
                let serial = serial.trim().trim_start_matches("0x").replace(':', "");
                if serial.is_empty()
                    || serial.len() > 64
                    || !serial.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(format!("{serial:?} is not a certificate serial in hex"));
                }
                // As a number: leading zeros do not count.
                let digits = serial.trim_start_matches('0');
                let digits = if digits.is_empty() { "0" } else { digits };
                Ok(format!("serial:{}", digits.to_ascii_lowercase()))
            }
        }
    }
}

impl OperatorCall {
    /// What the call does, for messages ("set a role's weight").
    pub fn what(&self) -> &'static str {
        match self {
            OperatorCall::SetWeight { .. } => "set a role's weight",
            OperatorCall::SetQuota { .. } => "set a role's quota",
            OperatorCall::GetRoles => "list roles",
            OperatorCall::Reserve { .. } => "reserve resources",
            OperatorCall::Unreserve { .. } => "unreserve resources",
            OperatorCall::ReadLog { .. } => "read a task's log",
            OperatorCall::GetFrameworks => "list frameworks",
            OperatorCall::Teardown { .. } => "tear a framework down",
            OperatorCall::GetSummary => "see the cluster's summary",
            OperatorCall::GetAgents => "list agents",
            OperatorCall::GetTasks(_) => "list tasks",
            OperatorCall::GetOffers => "list offers",
            OperatorCall::KillTask { .. } => "kill a task",
            OperatorCall::GetEvents { .. } => "follow events",
            OperatorCall::CreateToken { .. } => "create tokens",
            OperatorCall::Revoke(_) => "revoke tokens and certificates",
        }
    }
}

/// Who makes a call: the operator sees and does everything; any other
/// principal (a tenant, as its frameworks subscribe) sees and ends its
/// own frameworks and tasks, and what else the master's ACLs give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Caller {
    Operator,
    Principal(String),
}

impl Caller {
    /// The principal that the operator certificate and tokens name.
    pub const OPERATOR: &'static str = "operator";

    pub fn from_principal(name: &str) -> Caller {
        if name == Caller::OPERATOR {
            Caller::Operator
        } else {
            Caller::Principal(name.to_string())
        }
    }

    /// The principal the caller acts as.
    pub fn principal(&self) -> &str {
        match self {
            Caller::Operator => Caller::OPERATOR,
            Caller::Principal(p) => p,
        }
    }
}

/// A page of tasks: filters, and where the previous page ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskQuery {
    pub framework: Option<FrameworkId>,
    pub agent: Option<AgentId>,
    pub state: Option<TaskState>,
    /// The last task of the previous page.
    pub after: Option<(FrameworkId, TaskId)>,
    /// At most this many (capped at [`TaskQuery::MAX_LIMIT`]).
    pub limit: u32,
}

impl TaskQuery {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1_000;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    pub agent_id: AgentId,
    pub state: TaskState,
    /// Launched on revocable resources: may be preempted.
    pub revocable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// Give as `after` for the next page; `None` on the last.
    pub next: Option<(FrameworkId, TaskId)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub id: AgentId,
    pub hostname: String,
    pub connected: bool,
    pub unreachable: bool,
    /// Everything it offers the cluster.
    pub total: Resources,
    /// What nobody holds (neither offered nor used).
    pub free: Resources,
    /// Tasks not yet ended on it.
    pub tasks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferStatus {
    pub id: OfferId,
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub resources: Resources,
    /// Milliseconds since it was made.
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSummary {
    /// This leader's run (event ids are unique within it).
    pub instance: String,
    pub agents: usize,
    pub connected_agents: usize,
    pub frameworks: usize,
    /// Tasks not yet ended, by state.
    pub tasks: Vec<(TaskState, usize)>,
    pub offers: usize,
    pub total: Resources,
    /// What nobody holds.
    pub free: Resources,
    /// Frameworks whose scheduler is connected now.
    pub schedulers_connected: usize,
    /// Tasks that ended and whose end their scheduler has not yet
    /// acknowledged (the agent keeps resending it until it does).
    pub unacknowledged: usize,
    /// Tasks launched and ended so far (for rates): the operator counts
    /// all since this master began to lead; a tenant, those of its
    /// frameworks.
    pub tasks_launched: u64,
    pub tasks_ended: u64,
}

/// Something that happened in the cluster, as the event stream tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Increasing within one leader's run ([`ClusterSummary::instance`]).
    pub seq: u64,
    /// Milliseconds since the leader's run began.
    pub at_ms: u64,
    pub kind: EventKind,
}

/// On the wire, externally tagged (postcard needs that); in JSON, as
/// [`ClusterEvent::to_json`] gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// This master began to lead (the first event of its run).
    LeaderElected {
        instance: String,
    },
    TaskUpdated {
        framework_id: FrameworkId,
        task_id: TaskId,
        agent_id: Option<AgentId>,
        state: TaskState,
        reason: Option<String>,
    },
    AgentRegistered {
        agent_id: AgentId,
        hostname: String,
    },
    AgentUnreachable {
        agent_id: AgentId,
    },
    AgentRemoved {
        agent_id: AgentId,
    },
    FrameworkSubscribed {
        framework_id: FrameworkId,
        name: String,
        role: Role,
    },
    FrameworkFailedOver {
        framework_id: FrameworkId,
    },
    FrameworkDisconnected {
        framework_id: FrameworkId,
    },
    FrameworkRemoved {
        framework_id: FrameworkId,
    },
    /// A role's share changed: what its frameworks hold, by kind, after
    /// an allocation run that gave it offers.
    Allocated {
        role: Role,
        allocated: Vec<(String, u64)>,
    },
}

impl ClusterEvent {
    /// The event as the HTTP API and `stoa events --json` give it:
    /// `{"seq", "at_ms", "type": "task_updated", …the kind's fields}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::json!({ "seq": self.seq, "at_ms": self.at_ms });
        // Externally tagged: `{"TaskUpdated": {…}}`.
        if let Ok(serde_json::Value::Object(tagged)) = serde_json::to_value(&self.kind) {
            for (variant, fields) in tagged {
                out["type"] = serde_json::Value::String(snake_case(&variant));
                if let serde_json::Value::Object(fields) = fields {
                    for (k, v) in fields {
                        out[k] = v;
                    }
                }
            }
        }
        out
    }
}

/// `TaskUpdated` → `task_updated`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Events after a point, and what the master still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub instance: String,
    pub events: Vec<ClusterEvent>,
    /// The oldest sequence number still held: a client that asked for an
    /// older point has missed events.
    pub oldest: u64,
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
    /// What it holds (offered or used), by kind.
    pub allocated: Vec<(String, u64)>,
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
    Refused {
        message: String,
    },
    Summary(ClusterSummary),
    Agents(Vec<AgentStatus>),
    Tasks(TaskPage),
    Offers(Vec<OfferStatus>),
    Events(EventPage),
    Token {
        token: String,
        expires_unix: u64,
    },
    /// The caller may not do this (a tenant asking for an operator's
    /// call, or about another tenant's framework).
    Forbidden {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_cross_the_wire_and_read_flat_in_json() {
        let event = ClusterEvent {
            seq: 7,
            at_ms: 1_500,
            kind: EventKind::TaskUpdated {
                framework_id: FrameworkId::new("f").expect("id"),
                task_id: TaskId::new("t").expect("id"),
                agent_id: None,
                state: TaskState::Running,
                reason: None,
            },
        };
        let page = OperatorReply::Events(EventPage {
            instance: "i".into(),
            events: vec![event.clone()],
            oldest: 1,
        });
        let bytes = postcard::to_allocvec(&page).expect("encodes");
        assert_eq!(
            postcard::from_bytes::<OperatorReply>(&bytes).expect("decodes"),
            page
        );
        let json = event.to_json();
        assert_eq!(json["type"], "task_updated");
        assert_eq!(json["task_id"], "t");
        assert_eq!(json["state"], "Running");
        assert_eq!(json["seq"], 7);
    }
}
