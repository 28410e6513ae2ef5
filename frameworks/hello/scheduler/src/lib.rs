//! The hello framework's scheduler: launches N hello tasks (wasm components)
//! on whatever offers arrive, checks that each greets its input, and tears
//! the framework down when all have finished.

use anyhow::{Context as _, bail};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use stoa_client::{ClientConfig, SchedulerSession};
use stoa_proto::{
    AgentId, Artifact, Event, FrameworkInfo, Resources, Role, TaskId, TaskInfo, TaskKind,
    TaskLimits, TaskState,
};

#[derive(Debug, Clone)]
pub struct HelloOptions {
    pub client: ClientConfig,
    pub tasks: usize,
    /// The hello task component (`hello_task.wasm`).
    pub wasm: Vec<u8>,
    /// What each task asks for.
    pub task_resources: Resources,
    /// The role to subscribe in.
    pub role: Role,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HelloReport {
    pub framework_id: String,
    pub finished: usize,
    /// Tasks run per agent.
    pub per_agent: BTreeMap<String, usize>,
    pub elapsed_ms: u128,
}

/// The output a hello task must give for task number `i`.
pub fn expected_output(i: usize) -> String {
    format!("hello, task-{i}")
}

/// Runs the framework to completion.
pub async fn run(opts: HelloOptions) -> anyhow::Result<HelloReport> {
    let started = Instant::now();
    let framework = FrameworkInfo::new("hello", opts.role.clone());
    let mut session = SchedulerSession::subscribe(&opts.client, framework).await?;
    let artifact = Artifact::inline(opts.wasm.clone());
    let mut pending: VecDeque<usize> = (0..opts.tasks).collect();
    let mut finished: BTreeSet<usize> = BTreeSet::new();
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    let index_of = |id: &TaskId| {
        id.as_str()
            .strip_prefix("task-")
            .and_then(|n| n.parse::<usize>().ok())
    };

    while finished.len() < opts.tasks {
        let event = session
            .next_event()
            .await?
            .context("the master closed the connection")?;
        match event {
            Event::Offers { offers } => {
                for offer in offers {
                    let mut left = offer.resources.clone();
                    let mut tasks = Vec::new();
                    while let Some(&i) = pending.front() {
                        let Some(rest) = left.checked_sub(&opts.task_resources) else {
                            break;
                        };
                        left = rest;
                        pending.pop_front();
                        tasks.push(TaskInfo {
                            task_id: TaskId::new(format!("task-{i}"))?,
                            name: format!("hello {i}"),
                            resources: opts.task_resources.clone(),
                            kind: TaskKind::wasm(
                                artifact.clone(),
                                format!("task-{i}").into_bytes(),
                            ),
                            limits: TaskLimits {
                                fuel: Some(1_000_000_000),
                                timeout_ms: Some(30_000),
                            },
                        });
                    }
                    if tasks.is_empty() {
                        session.decline(vec![offer.id], Some(1_000)).await?;
                    } else {
                        session.launch(vec![offer.id], tasks).await?;
                    }
                }
            }
            Event::Update { status, ack } => {
                if let (Some(update_id), Some(agent)) = (ack, status.agent_id.clone()) {
                    session
                        .acknowledge(agent, status.task_id.clone(), update_id)
                        .await?;
                }
                let i = index_of(&status.task_id)
                    .context("an update for a task hello did not launch")?;
                match status.state {
                    TaskState::Finished => {
                        let output =
                            String::from_utf8_lossy(status.output.as_deref().unwrap_or_default())
                                .into_owned();
                        if output != expected_output(i) {
                            bail!(
                                "task-{i} answered {output:?}, expected {:?}",
                                expected_output(i)
                            );
                        }
                        if finished.insert(i) {
                            let agent = status
                                .agent_id
                                .as_ref()
                                .map(AgentId::to_string)
                                .unwrap_or_default();
                            *per_agent.entry(agent).or_default() += 1;
                        }
                    }
                    state if state.is_terminal() => {
                        let reason = status.reason.map(|r| r.to_string()).unwrap_or_default();
                        bail!("task-{i} ended {state} ({reason}): {}", status.message);
                    }
                    _ => {}
                }
            }
            Event::Error { code, message } => {
                bail!("the master reported an error ({code}): {message}")
            }
            Event::Rescind { .. }
            | Event::Subscribed { .. }
            | Event::Heartbeat
            | Event::Failure { .. }
            | Event::Submitted { .. }
            | Event::Message { .. }
            | Event::Delivered => {}
        }
    }
    let framework_id = session.framework_id().to_string();
    session.teardown().await?;
    Ok(HelloReport {
        framework_id,
        finished: finished.len(),
        per_agent,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// Default per-task resources: a tenth of a cpu and 32 MiB.
pub fn default_task_resources() -> Resources {
    Resources::new().with_millicpus(100).with_mem_mib(32)
}

/// Gives up after `limit` with a clear message instead of hanging.
pub async fn run_with_timeout(opts: HelloOptions, limit: Duration) -> anyhow::Result<HelloReport> {
    tokio::time::timeout(limit, run(opts))
        .await
        .with_context(|| format!("hello did not finish within {limit:?}"))?
}
