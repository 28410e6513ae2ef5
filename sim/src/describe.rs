//! One line per message, for the simulator's trace.

use stoa_proto::{AgentToMaster, Call, Event, MasterToAgent, Operation};

pub fn describe_agent_msg(m: &AgentToMaster) -> String {
    match m {
        AgentToMaster::Register { agent_id, .. } => format!("Register {agent_id:?}"),
        AgentToMaster::Heartbeat => "Heartbeat".into(),
        AgentToMaster::StatusUpdate {
            update_id, status, ..
        } => {
            format!(
                "StatusUpdate {} {} #{}",
                status.task_id, status.state, update_id.0
            )
        }
        AgentToMaster::FrameworkMessage { task_id, data, .. } => {
            format!("FrameworkMessage {} bytes from {task_id}", data.len())
        }
        AgentToMaster::Undelivered {
            task_id, message, ..
        } => format!("Undelivered to {task_id}: {message}"),
    }
}

pub fn describe_master_msg(m: &MasterToAgent) -> String {
    match m {
        MasterToAgent::Registered { agent_id, .. } => format!("Registered {agent_id}"),
        MasterToAgent::Refused { message } => format!("Refused {message}"),
        MasterToAgent::RunTask { task, .. } => format!("RunTask {}", task.task_id),
        MasterToAgent::KillTask { task_id, .. } => format!("KillTask {task_id}"),
        MasterToAgent::AcknowledgeUpdate { task_id, update_id } => {
            format!("Ack {task_id} #{}", update_id.0)
        }
        MasterToAgent::FrameworkMessage { task_id, data, .. } => {
            format!("FrameworkMessage {} bytes to {task_id}", data.len())
        }
    }
}

pub fn describe_call(c: &Call) -> String {
    match c {
        Call::Subscribe { framework } => format!("Subscribe {}", framework.name),
        Call::Accept {
            offer_ids,
            operations,
            ..
        } => {
            let n: usize = operations
                .iter()
                .map(|op| match op {
                    Operation::Launch { tasks } | Operation::LaunchGroup { tasks } => tasks.len(),
                    Operation::Reserve { .. } | Operation::Unreserve { .. } => 0,
                })
                .sum();
            format!("Accept {offer_ids:?} launching {n}")
        }
        Call::Decline { offer_ids, .. } => format!("Decline {offer_ids:?}"),
        Call::Kill { task_id } => format!("Kill {task_id}"),
        Call::Acknowledge {
            task_id, update_id, ..
        } => format!("Ack {task_id} #{}", update_id.0),
        Call::Suppress => "Suppress".into(),
        Call::Revive => "Revive".into(),
        Call::Teardown => "Teardown".into(),
        Call::Reconcile { tasks } => format!("Reconcile {} tasks", tasks.len()),
        Call::UpdateFramework { framework } => format!("UpdateFramework {}", framework.name),
        Call::SubscribeHosted {
            framework, task_id, ..
        } => format!("SubscribeHosted {} as {task_id}", framework.name),
        Call::Submit { submission } => format!("Submit {}", submission.framework.name),
        Call::SendMessage { framework_id, data } => {
            format!("SendMessage {} bytes to {framework_id}", data.len())
        }
        Call::Message { task_id, data } => format!("Message {} bytes to {task_id}", data.len()),
    }
}

pub fn describe_event(e: &Event) -> String {
    match e {
        Event::Subscribed { framework_id, .. } => format!("Subscribed {framework_id}"),
        Event::Offers { offers } => {
            let list: Vec<String> = offers
                .iter()
                .map(|o| format!("{}@{} {}", o.id, o.agent_id, o.resources))
                .collect();
            format!("Offers [{}]", list.join(", "))
        }
        Event::Rescind { offer_id } => format!("Rescind {offer_id}"),
        Event::Update { status, ack } => format!(
            "Update {} {} {:?} ack={:?}",
            status.task_id,
            status.state,
            status.reason,
            ack.map(|a| a.0)
        ),
        Event::Error { code, message } => format!("Error {code}: {message}"),
        Event::Heartbeat => "Heartbeat".into(),
        Event::Failure { agent_id } => format!("Failure {agent_id}"),
        Event::Submitted { framework_id } => format!("Submitted {framework_id}"),
        Event::Message { from: None, data } => format!("Message {} bytes", data.len()),
        Event::Message {
            from: Some(from),
            data,
        } => format!("Message {} bytes from {}", data.len(), from.task_id),
        Event::Delivered => "Delivered".into(),
    }
}
