//! Everyday views of the cluster: `stoa ps`, `stoa agents`, `stoa kill`
//! and `stoa events`, over the operator channel's typed calls (the same
//! ones the HTTP API serves).

use crate::operator::{Target, call};
use anyhow::bail;
use std::time::Duration;
use stoa_proto::operator::{
    ClusterEvent, EventKind, OperatorCall, OperatorReply, TaskQuery, TaskView,
};
use stoa_proto::{AgentId, FrameworkId, TaskId, TaskState};

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    target: Target,
    /// Only this framework's tasks.
    #[arg(long)]
    framework: Option<FrameworkId>,
    /// Only tasks on this agent.
    #[arg(long)]
    agent: Option<AgentId>,
    /// Only tasks in this state (running, finished, failed, …).
    #[arg(long)]
    state: Option<TaskState>,
    /// Redraw every second until interrupted.
    #[arg(long)]
    watch: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Every task the filters let through, page after page.
async fn all_tasks(a: &PsArgs) -> anyhow::Result<Vec<TaskView>> {
    let mut tasks = Vec::new();
    let mut after = None;
    loop {
        let query = TaskQuery {
            framework: a.framework.clone(),
            agent: a.agent.clone(),
            state: a.state,
            after,
            limit: TaskQuery::MAX_LIMIT,
        };
        let OperatorReply::Tasks(page) = call(&a.target, OperatorCall::GetTasks(query)).await?
        else {
            bail!("the master answered something other than a task list");
        };
        tasks.extend(page.tasks);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(tasks),
        }
    }
}

pub async fn ps(a: PsArgs) -> anyhow::Result<()> {
    loop {
        let tasks = all_tasks(&a).await?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&tasks)?);
        } else {
            if a.watch {
                // Clear the screen and go home, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "{:<28} {:<24} {:<24} {:<12}",
                "FRAMEWORK", "TASK", "AGENT", "STATE"
            );
            for t in &tasks {
                println!(
                    "{:<28} {:<24} {:<24} {:<12}",
                    t.framework_id.as_str(),
                    t.task_id.as_str(),
                    t.agent_id.as_str(),
                    format!("{:?}", t.state).to_uppercase()
                );
            }
            eprintln!("{} tasks", tasks.len());
        }
        if !a.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn agents(a: AgentsArgs) -> anyhow::Result<()> {
    let OperatorReply::Agents(agents) = call(&a.target, OperatorCall::GetAgents).await? else {
        bail!("the master answered something other than an agent list");
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<20} {:<12} {:>6} {:>16} {:>20}",
        "ID", "HOSTNAME", "STATE", "TASKS", "CPUS FREE/ALL", "MEM MIB FREE/ALL"
    );
    for ag in agents {
        let state = match (ag.connected, ag.unreachable) {
            (true, _) => "connected",
            (false, true) => "unreachable",
            (false, false) => "away",
        };
        println!(
            "{:<24} {:<20} {:<12} {:>6} {:>16} {:>20}",
            ag.id.as_str(),
            ag.hostname,
            state,
            ag.tasks,
            format!(
                "{:.1}/{:.1}",
                ag.free.millicpus() as f64 / 1e3,
                ag.total.millicpus() as f64 / 1e3
            ),
            format!("{}/{}", ag.free.mem_mib(), ag.total.mem_mib()),
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    #[command(flatten)]
    target: Target,
    /// The task's id (see `stoa ps`).
    task_id: TaskId,
    /// The framework, when several use the task id.
    #[arg(long)]
    framework: Option<FrameworkId>,
}

pub async fn kill(a: KillArgs) -> anyhow::Result<()> {
    call(
        &a.target,
        OperatorCall::KillTask {
            framework_id: a.framework.clone(),
            task_id: a.task_id.clone(),
        },
    )
    .await?;
    eprintln!("kill of {} sent; `stoa ps` shows its state", a.task_id);
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    target: Target,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// Follows the cluster's events until interrupted: what the leader keeps
/// first, then each as it comes (asked for every 250 ms).
pub async fn events(a: EventsArgs) -> anyhow::Result<()> {
    let mut run: Option<String> = None;
    let mut after = None;
    loop {
        let reply = call(
            &a.target,
            OperatorCall::GetEvents {
                after,
                limit: 10_000,
            },
        )
        .await;
        let page = match reply {
            Ok(OperatorReply::Events(page)) => page,
            Ok(_) => bail!("the master answered something other than events"),
            // A failover: ask whoever leads next.
            Err(e) => {
                eprintln!("{e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if run.as_deref() != Some(page.instance.as_str()) {
            if run.is_some() {
                // Another leader: its events from the start.
                eprintln!(
                    "a new leader ({}); events may have been missed",
                    page.instance
                );
                run = Some(page.instance.clone());
                after = None;
                continue;
            }
            run = Some(page.instance.clone());
        }
        for e in &page.events {
            if a.json {
                let mut json = e.to_json();
                json["id"] = format!("{}.{}", page.instance, e.seq).into();
                println!("{json}");
            } else {
                println!("{}", describe(e));
            }
            after = Some(e.seq);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One line for people.
fn describe(e: &ClusterEvent) -> String {
    let what = match &e.kind {
        EventKind::LeaderElected { instance } => format!("leader elected (run {instance})"),
        EventKind::TaskUpdated {
            framework_id,
            task_id,
            state,
            reason,
            ..
        } => format!(
            "task {task_id} of {framework_id}: {}{}",
            format!("{state:?}").to_uppercase(),
            reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        EventKind::AgentRegistered { agent_id, hostname } => {
            format!("agent {agent_id} registered ({hostname})")
        }
        EventKind::AgentUnreachable { agent_id } => format!("agent {agent_id} unreachable"),
        EventKind::AgentRemoved { agent_id } => format!("agent {agent_id} removed"),
        EventKind::FrameworkSubscribed {
            framework_id,
            name,
            role,
        } => format!("framework {framework_id} ({name}) subscribed in {role}"),
        EventKind::FrameworkFailedOver { framework_id } => {
            format!("framework {framework_id} failed over to a new scheduler")
        }
        EventKind::FrameworkDisconnected { framework_id } => {
            format!("framework {framework_id}'s scheduler disconnected")
        }
        EventKind::FrameworkRemoved { framework_id } => {
            format!("framework {framework_id} removed")
        }
        EventKind::Allocated { role, allocated } => format!(
            "role {role} holds {}",
            allocated
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    };
    format!("{:>10.3}s  {what}", e.at_ms as f64 / 1e3)
}
