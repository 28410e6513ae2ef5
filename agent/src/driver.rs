//! The agent's I/O: keeps a QUIC connection to the master (reconnecting
//! with backoff), feeds the core, hands tasks to executor processes,
//! fetches artifacts the tasks need, serves log reads, and collects task
//! directories once their tasks are long over.

use crate::cgroups::{Cgroups, Limits};
use crate::core::{Action, Agent, TaskEvent};
use crate::deadline::sleep_until;
use crate::executors::{Containment, Executors, FromExecutor, Launcher};
use crate::log_server::{EndedQuery, serve_side_streams};
use crate::metrics::AgentMetrics;
use crate::trash::Trash;
pub use crate::work_dir::WorkDir;
use crate::work_dir::task_dirs;
use anyhow::Context as _;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoa_proto::executor::{AgentToExecutor, CgroupPaths, ExecutorToAgent};
use stoa_proto::{
    AgentId, AgentInfo, CommandTask, Digest, FrameworkId, MasterToAgent, Reason, TaskId, TaskInfo,
    TaskKind, TaskState, Time,
};
use stoa_transport::side::{ArtifactStore, fetch_artifact};
use stoa_transport::{ALPN_AGENT, FrameReceiver, FrameSender, Identity, Masters};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The cluster's masters; the agent registers with the one that leads.
    pub master: Masters,
    /// Directory with `ca.pem` and the agent's certificate.
    pub certs: PathBuf,
    /// The certificate's name (`agent`, or `agent-7`): the master binds
    /// the agent's id to it.
    pub identity: String,
    pub info: AgentInfo,
    /// The agent's state: its id, executors, task directories, artifacts
    /// and compiled code. Created if missing.
    pub work_dir: PathBuf,
    /// How executors are started.
    pub executor: Launcher,
    /// How long a finished task's directory (sandbox and logs) is kept.
    pub gc_delay: Duration,
    /// Most finished tasks' directories kept; past it the oldest go first.
    pub gc_max_dirs: usize,
    /// How long an executor without tasks is kept for the next launch.
    pub executor_idle: Duration,
    /// Largest artifact fetched from the master.
    pub max_artifact: u64,
    /// Where native tasks and executors are contained, or why they cannot
    /// be: native tasks are refused without cgroups.
    pub cgroups: Result<Cgroups, String>,
    /// Processes and threads a native task may have at once.
    pub max_pids: u32,
    /// CPU (thousandths) and memory (MiB) an executor may use beyond its
    /// wasm tasks' resources.
    pub executor_overhead: (u64, u64),
    /// What the agent counts, for `--metrics`.
    pub metrics: Arc<AgentMetrics>,
}

/// Everything the loop reacts to besides the master's messages.
struct State {
    agent: Agent,
    executors: Executors,
    layout: WorkDir,
    store: ArtifactStore,
    fetched_tx: mpsc::UnboundedSender<(Digest, Result<(), String>)>,
    trash: Trash,
    config: DriverConfig,
}

/// Runs an agent until `shutdown` resolves or the master refuses it.
/// Executors keep running after the agent stops; the next agent on this
/// work directory takes them over.
pub async fn run(
    config: DriverConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let layout = WorkDir(config.work_dir.clone());
    for dir in [layout.executors(), layout.tasks(), layout.compiled()] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let store = ArtifactStore::open(layout.artifacts())
        .with_context(|| format!("cannot create {}", layout.artifacts().display()))?;
    let identity = Identity::load(&config.certs, &config.identity)?;
    let client = stoa_transport::client_config(&identity, ALPN_AGENT)?;
    let endpoint = stoa_transport::client_endpoint(config.master.first())?;
    let id_file = config.work_dir.join("agent_id");
    let known_id = std::fs::read_to_string(&id_file)
        .ok()
        .and_then(|s| AgentId::new(s.trim()).ok());
    // The id on disk, to write it only when the master gives a new one.
    let mut saved_id = known_id.clone();
    let start = Instant::now();
    let now =
        move || Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    // Update numbers above any an earlier agent process used.
    let first_update = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let (exec_tx, mut exec_rx) = mpsc::unbounded_channel::<FromExecutor>();
    let (fetched_tx, mut fetched_rx) = mpsc::unbounded_channel();
    // Log readers ask the core whether a task has ended.
    let (ended_tx, mut ended_rx) = mpsc::channel::<EndedQuery>(64);
    let mut agent = Agent::new(config.info.clone(), known_id, first_update);
    agent.set_executor_idle(config.executor_idle);
    agent.set_sandbox_collection(config.gc_delay, config.gc_max_dirs);
    let mut state = State {
        agent,
        executors: Executors::new(
            layout.executors(),
            config.executor.clone(),
            exec_tx,
            config.cgroups.as_ref().ok().map(|cgroups| Containment {
                cgroups: cgroups.clone(),
                overhead_millicpus: config.executor_overhead.0,
                overhead_mem_mib: config.executor_overhead.1,
            }),
        ),
        layout: layout.clone(),
        store,
        fetched_tx,
        trash: Trash::open(layout.trash()),
        config: config.clone(),
    };
    match &config.cgroups {
        Ok(cgroups) => {
            tracing::info!(cgroups = %cgroups.describe(), "containing native tasks and executors")
        }
        Err(why) => {
            tracing::warn!(%why, "no usable cgroups: native tasks are refused and executors run uncontained")
        }
    }
    let mut live = BTreeSet::new();
    let mut running = BTreeSet::new();
    for recovered in state.executors.recover().await? {
        let fw = recovered.framework_id;
        for t in recovered.tasks {
            live.insert((fw.clone(), t.task.task_id.clone()));
            if !t.last.as_ref().is_some_and(TaskEvent::is_terminal) {
                running.insert((fw.clone(), t.task.task_id.clone()));
            }
            state.agent.recover_task(now(), fw.clone(), &t.task, t.last);
        }
        state.agent.recovered_executor(&fw);
    }
    state.schedule_old_dirs(now(), &live);
    state.collect_cgroups(&running).await;
    let mut delays = stoa_transport::reconnect_delays();
    tokio::pin!(shutdown);

    loop {
        let connected = tokio::select! {
            c = stoa_transport::connect_leader(&endpoint, &config.master, client.clone()) => c,
            _ = &mut shutdown => return Ok(()),
        };
        let (conn, mut sender, receiver) = match connected {
            Ok(c) => c,
            Err(e) => {
                let backoff = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "cannot reach the master");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                continue;
            }
        };
        delays = stoa_transport::reconnect_delays();
        stoa_transport::watch_leader(&endpoint, &config.master, &client, &conn);
        let (msgs_tx, mut msgs_rx) = mpsc::channel::<MasterToAgent>(1024);
        let reader = tokio::spawn(read_loop(receiver, msgs_tx));
        let side = tokio::spawn(serve_side_streams(
            conn.clone(),
            layout.clone(),
            ended_tx.clone(),
        ));
        state.agent.handle_connected(now());
        loop {
            if !state.flush(now(), &conn, &mut sender).await {
                break;
            }
            if let Some(message) = state.agent.refused() {
                conn.close(stoa_transport::close::NORMAL, b"refused");
                anyhow::bail!("the master refused this agent: {message}");
            }
            if let Some(id) = state.agent.agent_id()
                && saved_id.as_ref() != Some(id)
            {
                std::fs::write(&id_file, id.as_str())
                    .with_context(|| format!("cannot write {}", id_file.display()))?;
                tracing::info!(agent = %id, "registered with the master");
                saved_id = Some(id.clone());
            }
            let deadline = state
                .agent
                .poll_timeout()
                .map(|t| start + Duration::from_micros(t.as_micros()));
            tokio::select! {
                msg = msgs_rx.recv() => match msg {
                    Some(msg) => state.agent.handle_master_message(now(), msg),
                    None => break,
                },
                Some(input) = exec_rx.recv() => state.on_executor(now(), input),
                Some((digest, result)) = fetched_rx.recv() => state.fetched(now(), digest, result),
                Some((framework_id, task_id, reply)) = ended_rx.recv() => {
                    let _ = reply.send(state.agent.has_ended(&framework_id, &task_id));
                }
                _ = sleep_until(deadline) => state.agent.handle_timeout(now()),
                _ = &mut shutdown => {
                    conn.close(stoa_transport::close::SHUTDOWN, b"agent shutting down");
                    return Ok(());
                }
            }
        }
        reader.abort();
        side.abort();
        state.agent.handle_disconnected(now());
        let back_in = stoa_transport::leader::spread(stoa_transport::leader::AGENT_RETURN_SPREAD);
        tracing::warn!(reason = ?conn.close_reason(), ?back_in, "lost the master; reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(back_in) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

impl State {
    /// Sends what the core emitted and does what it asked for. Returns
    /// false when the connection broke.
    async fn flush(
        &mut self,
        now: Time,
        conn: &quinn::Connection,
        sender: &mut FrameSender,
    ) -> bool {
        while let Some(action) = self.agent.poll_action() {
            match action {
                Action::Launch { framework_id, task } => self.launch(now, framework_id, task),
                Action::Kill {
                    framework_id,
                    task_id,
                } => {
                    if self.executors.is_running(&framework_id) {
                        self.executors
                            .send(&framework_id, AgentToExecutor::Kill { task_id });
                    }
                }
                Action::Fetch { digest } => self.fetch(conn, digest),
                Action::ResizeExecutor {
                    framework_id,
                    millicpus,
                    mem_mib,
                    shrink,
                } => self
                    .executors
                    .resize(&framework_id, (millicpus, mem_mib), shrink),
                Action::StopExecutor { framework_id } => self.executors.shut_down(&framework_id),
                Action::Deliver {
                    framework_id,
                    task_id,
                    data,
                } => {
                    if self.executors.is_running(&framework_id) {
                        self.executors
                            .send(&framework_id, AgentToExecutor::Message { task_id, data });
                    } else {
                        let why = "the task has not started yet";
                        self.agent.undelivered(framework_id, task_id, why);
                    }
                }
                Action::Forget {
                    framework_id,
                    task_id,
                } => {
                    if self.executors.is_running(&framework_id) {
                        self.executors
                            .send(&framework_id, AgentToExecutor::Forget { task_id });
                    }
                }
                Action::RemoveCgroup {
                    framework_id,
                    task_id,
                } => self.remove_cgroup(framework_id.as_str(), &task_leaf(&task_id)),
                Action::CollectSandbox {
                    framework_id,
                    task_id,
                } => self.collect_dir(&framework_id, &task_id),
            }
        }
        self.trash.empty();
        let metrics = &self.config.metrics;
        metrics.apply(self.agent.take_measures());
        metrics.set_counts(self.executors.count(), self.agent.active_tasks());
        let msgs = std::iter::from_fn(|| self.agent.poll_transmit());
        if let Err(e) = sender.send_many(msgs).await {
            tracing::warn!(error = format!("{e:#}"), "cannot send to the master");
            return false;
        }
        true
    }

    /// Hands a task to its framework's executor, once its artifact is here.
    fn launch(&mut self, now: Time, framework_id: FrameworkId, task: Box<TaskInfo>) {
        if let Some(digest) = task.kind.missing_artifact(|d| self.store.contains(d)) {
            // The core queues it and asks for the fetch.
            self.agent.artifact_missing(now, framework_id, task, digest);
            return;
        }
        self.start(now, framework_id, task);
    }

    /// Fetches an artifact from the master off the loop; the result comes
    /// back through `fetched_tx` to the core.
    fn fetch(&self, conn: &quinn::Connection, digest: Digest) {
        let (conn, store, done) = (conn.clone(), self.store.clone(), self.fetched_tx.clone());
        let (max, metrics) = (self.config.max_artifact, self.config.metrics.clone());
        tracing::info!(%digest, "fetching an artifact from the master");
        tokio::spawn(async move {
            let result = fetch_artifact(&conn, digest, &store, max)
                .await
                .map_err(|e| format!("cannot fetch {digest} from the master: {e:#}"));
            let bytes = result
                .as_ref()
                .ok()
                .map(|()| std::fs::metadata(store.path(digest)).map_or(0, |m| m.len()));
            metrics.fetched(bytes);
            let _ = done.send((digest, result));
        });
    }

    /// Sends a task whose artifact is at hand to its executor, a native
    /// one with the cgroup made for it.
    fn start(&mut self, now: Time, framework_id: FrameworkId, task: Box<TaskInfo>) {
        let dir = self.layout.task(&framework_id, &task.task_id);
        let cgroup = match &task.kind {
            TaskKind::Command(command) => match self.task_cgroup(&framework_id, &task, command) {
                Ok(paths) => Some(paths),
                Err(message) => {
                    let event =
                        TaskEvent::ended(TaskState::Error, Reason::IsolationUnavailable, message);
                    self.agent
                        .handle_task_event(now, framework_id, task.task_id, event);
                    return;
                }
            },
            TaskKind::Wasm(_) | TaskKind::Scheduler(_) => None,
        };
        self.executors.send(
            &framework_id,
            AgentToExecutor::Launch {
                task,
                dir: dir.to_string_lossy().into_owned(),
                cgroup,
            },
        );
    }

    /// Makes a native task's cgroup, limited from its resources.
    fn task_cgroup(
        &self,
        framework_id: &FrameworkId,
        task: &TaskInfo,
        command: &CommandTask,
    ) -> Result<CgroupPaths, String> {
        let cgroups =
            self.config.cgroups.as_ref().map_err(|why| {
                format!("native tasks need cgroups, and this agent has none: {why}")
            })?;
        let limits = Limits {
            millicpus: task.resources.millicpus(),
            mem_bytes: task.resources.mem_mib().saturating_mul(1 << 20),
            max_pids: Some(
                command
                    .max_pids
                    .map_or(self.config.max_pids, |n| n.min(self.config.max_pids)),
            ),
        };
        let leaf = task_leaf(&task.task_id);
        cgroups
            .create(framework_id.as_str(), &leaf, &limits)
            .map(|cgroup| cgroup.paths().clone())
            .map_err(|e| format!("cannot make the task's cgroup: {e:#}"))
    }

    /// Removes a cgroup the agent made, off the loop: killing what is left
    /// in it may take a moment.
    fn remove_cgroup(&self, group: &str, leaf: &str) {
        let Ok(cgroups) = &self.config.cgroups else {
            return;
        };
        if !cgroups.is_ours(group, leaf) {
            return;
        }
        let (cgroups, group, leaf) = (cgroups.clone(), group.to_string(), leaf.to_string());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = cgroups.remove(&group, &leaf) {
                tracing::error!(cgroup = %format!("{group}/{leaf}"), error = format!("{e:#}"), "cannot remove a cgroup");
            }
        });
    }

    /// After a restart: removes every cgroup this agent made whose task or
    /// executor is no longer running.
    async fn collect_cgroups(&self, running: &BTreeSet<(FrameworkId, TaskId)>) {
        let Ok(cgroups) = &self.config.cgroups else {
            return;
        };
        let stale: Vec<(String, String)> = cgroups
            .recorded()
            .into_iter()
            .filter(|(group, leaf)| {
                let live_task = leaf.strip_prefix("task-").is_some_and(|task| {
                    running
                        .iter()
                        .any(|(f, t)| f.as_str() == group && t.as_str() == task)
                });
                !live_task && !self.executors.holds_cgroup(group, leaf)
            })
            .collect();
        if stale.is_empty() {
            return;
        }
        tracing::info!(
            cgroups = stale.len(),
            "removing cgroups left by an earlier agent"
        );
        let cgroups = cgroups.clone();
        let removed = tokio::task::spawn_blocking(move || {
            for (group, leaf) in stale {
                if let Err(e) = cgroups.remove(&group, &leaf) {
                    tracing::error!(cgroup = %format!("{group}/{leaf}"), error = format!("{e:#}"), "cannot remove a cgroup");
                }
            }
        });
        let _ = removed.await;
    }

    fn fetched(&mut self, now: Time, digest: Digest, result: Result<(), String>) {
        match &result {
            Ok(()) => tracing::info!(%digest, "artifact fetched"),
            Err(message) => tracing::warn!(%digest, %message, "artifact fetch failed"),
        }
        self.agent.handle_fetched(now, digest, result);
    }

    fn on_executor(&mut self, now: Time, input: FromExecutor) {
        match input {
            FromExecutor::Said { framework_id, msg } => match msg {
                ExecutorToAgent::Event { task_id, event } => {
                    self.agent
                        .handle_task_event(now, framework_id, task_id, event)
                }
                ExecutorToAgent::Message { task_id, data } => {
                    self.agent.handle_task_message(framework_id, task_id, data)
                }
                ExecutorToAgent::Undelivered { task_id, message } => {
                    self.agent.undelivered(framework_id, task_id, &message)
                }
                ExecutorToAgent::Stats(stats) => {
                    self.config.metrics.executor_stats(&framework_id, stats)
                }
                ExecutorToAgent::Hello { .. } => {}
            },
            FromExecutor::Gone {
                framework_id,
                generation,
            } => {
                let (current, leaf) = self.executors.ended(&framework_id, generation);
                if current {
                    self.config.metrics.executor_gone(&framework_id);
                }
                if let Some(leaf) = leaf {
                    self.remove_cgroup(framework_id.as_str(), &leaf);
                }
                // The core decides what the executor's death does to its
                // tasks.
                if current {
                    self.agent.handle_executor_gone(now, &framework_id);
                }
            }
        }
    }

    /// Moves a task's directory to the trash at once; the trash is
    /// emptied off the loop after each round of actions.
    fn collect_dir(&mut self, framework_id: &FrameworkId, task_id: &TaskId) {
        let dir = self.layout.task(framework_id, task_id);
        if let Err(e) = self.trash.put(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot collect a task directory; remove it by hand");
        }
    }

    /// Task directories left by an earlier agent process whose tasks are
    /// not running: the core collects them `gc_delay` after they were last
    /// written (or sooner, past the count).
    fn schedule_old_dirs(&mut self, now: Time, live: &BTreeSet<(FrameworkId, TaskId)>) {
        let now_sys = std::time::SystemTime::now();
        let old = task_dirs(&self.layout.tasks())
            .into_iter()
            .filter(|(f, t, _)| !live.contains(&(f.clone(), t.clone())))
            .map(|(f, t, dir)| {
                let age = std::fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now_sys.duration_since(t).ok())
                    .unwrap_or_default();
                (f, t, age)
            });
        self.agent.handle_left_behind(now, old);
    }
}

/// A native task's cgroup under its framework's: `task-<id>` never meets
/// an executor's `executor-<stamp>`.
fn task_leaf(task_id: &TaskId) -> String {
    format!("task-{}", task_id.as_str())
}

async fn read_loop(mut receiver: FrameReceiver, tx: mpsc::Sender<MasterToAgent>) {
    loop {
        match receiver.recv::<MasterToAgent>().await {
            Ok(Some(msg)) => {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) if e.is_connection_lost() => {
                tracing::warn!(error = %e, "connection to the master lost; reconnecting");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "bad data from the master; dropping the connection");
                return;
            }
        }
    }
}
