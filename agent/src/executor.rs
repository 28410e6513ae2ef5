//! An executor: the process that runs one framework's tasks on an agent
//! (`stoa executor`, started by the agent): wasm as futures on a few threads,
//! native programs as its children, each in the cgroup the agent made.
//!
//! It listens on a Unix socket in its directory, writes its pid beside it,
//! and keeps every task — and the task's latest event — until the agent
//! says the master has the end of it. The agent may go away and come back
//! (an upgrade, a crash): the executor keeps running its tasks and tells
//! the new agent everything in its first message. If no agent comes back
//! within the recovery timeout, it kills its tasks and exits.

use crate::cgroups::Cgroup;
use crate::deadline::sleep_until;
use crate::exec::kill::Kill;
use crate::exec::link::AgentLink;
use crate::exec::mailbox::{Inbox, Mailbox, OUTBOX_LEN, Outgoing, mailbox};
use crate::exec::native;
use crate::exec::spares::Spares;
use crate::exec::task_dir::TaskDir;
use crate::exec::wasm::{RuntimeConfig, WasmRuntime};
use crate::executor_dir::{pid_path, socket_path};
use anyhow::Context as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stoa_proto::executor::{
    AgentToExecutor, CgroupPaths, ExecutorStats, ExecutorTask, ExecutorToAgent, TaskEvent,
};
use stoa_proto::{FrameworkId, Reason, TaskId, TaskInfo, TaskKind, TaskState};
use stoa_transport::framed::io;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// How often the executor reports its runtime's numbers to the agent.
const STATS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub framework_id: FrameworkId,
    /// Holds the socket, the pid file and the executor's log.
    pub dir: PathBuf,
    pub runtime: RuntimeConfig,
    /// How long to keep tasks running without an agent.
    pub recovery_timeout: Duration,
    /// How hosted scheduler instances reach the master (with the agent's
    /// certificate); they cannot run without it.
    pub master: Option<stoa_client::ClientConfig>,
}

/// How long an executor that must stop waits for its tasks' kill policies.
const STOP_WAIT: Duration = Duration::from_secs(30);

struct Task {
    info: TaskInfo,
    kill: Kill,
    /// Where the scheduler's messages go; wasm tasks only.
    inbox: Option<Inbox>,
}

/// Runs the executor until told to shut down or left alone too long.
pub async fn run(config: ExecutorConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.dir)
        .with_context(|| format!("cannot create {}", config.dir.display()))?;
    let socket = socket_path(&config.dir);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::write(pid_path(&config.dir), std::process::id().to_string())?;
    let runtime = Arc::new(
        WasmRuntime::with_config(config.runtime.clone())
            .map_err(|e| anyhow::anyhow!("cannot start wasmtime: {e:#}"))?,
    );
    // Wasm tasks are futures on one worker thread per core: a thread per
    // task cost a wake-up and a context switch at every launch, and with
    // hundreds of tasks the kernel spent more time switching between them
    // than running them. Each task yields at every epoch tick, so tasks
    // share the workers as they would share cores. Cluster-hosted
    // schedulers, which block, take threads of the runtime's blocking pool.
    let threads = TaskThreads::new(
        crate::exec::wasm::task_runtime(cores()).context("cannot start the task threads")?,
    );
    tracing::info!(framework = %config.framework_id, allocation = ?runtime.allocation(), "executor ready");
    // The loop runs on the task runtime too: a task it starts goes to the
    // same worker's queue and runs as soon as the loop waits again, where
    // starting it from another thread cost a wake-up of a worker at every
    // launch.
    let handle = threads.handle.clone();
    let served = handle
        .spawn(serve(config, listener, runtime, handle.clone()))
        .await;
    drop(threads);
    served.context("the executor's loop failed")?
}

/// The executor's loop: launches, kills and messages from the agent,
/// messages from tasks to their schedulers, and the agent's connection.
async fn serve(
    config: ExecutorConfig,
    listener: UnixListener,
    runtime: Arc<WasmRuntime>,
    threads: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let mut tasks: HashMap<TaskId, Task> = HashMap::new();
    // Made at the first launch, which says where task directories go.
    let mut spares: Option<Arc<Spares>> = None;
    // Tasks report their events through this, from the task runtime.
    let link = Arc::new(AgentLink::default());
    let (msgs_tx, mut msgs_rx) = mpsc::channel::<(u64, Option<AgentToExecutor>)>(1024);
    let (outbox_tx, mut outbox_rx) = mpsc::channel::<Outgoing>(OUTBOX_LEN);
    let mut generation = 0u64;
    let mut alone_since = Some(std::time::Instant::now());
    // The runtime's numbers, reported to the agent while they change.
    let mut reported = ExecutorStats::default();
    let mut report = tokio::time::interval(STATS_EVERY);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let give_up = alone_since.map(|t| t + config.recovery_timeout);
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                generation += 1;
                // One socket, two handles: the loop reads with tokio, tasks
                // write through the link.
                let Some((read, write)) = split(stream) else { continue };
                let hello = |last: &HashMap<TaskId, TaskEvent>| ExecutorToAgent::Hello {
                    framework_id: config.framework_id.clone(),
                    pid: std::process::id(),
                    tasks: tasks.values().map(|t| ExecutorTask { task: t.info.clone(), last: last.get(&t.info.task_id).cloned() }).collect(),
                };
                if !link.attach(generation, write, hello) {
                    continue;
                }
                tracing::info!(tasks = tasks.len(), "agent connected");
                // A new agent process starts from nothing: tell it all.
                reported = ExecutorStats::default();
                tokio::spawn(read_agent(generation, read, msgs_tx.clone()));
                alone_since = None;
            }
            Some((from, msg)) = msgs_rx.recv() => {
                if from != generation {
                    continue; // from a connection already replaced
                }
                match msg {
                    None => {
                        tracing::warn!("agent went away; tasks keep running");
                        link.detach(from);
                        alone_since = Some(std::time::Instant::now());
                    }
                    Some(AgentToExecutor::Launch { task, dir, cgroup }) => {
                        // An executor of ephemeral tasks alone keeps no spares.
                        let spares = task.kind.has_sandbox().then(|| spares_for(&mut spares, Path::new(&dir))).flatten();
                        let started = Started { runtime: &runtime, threads: &threads, spares, link: &link, outbox: &outbox_tx, log_limit: config.runtime.log_limit, master: config.master.as_ref() };
                        launch(&started, &mut tasks, *task, Path::new(&dir), cgroup);
                    }
                    Some(AgentToExecutor::Kill { task_id }) => {
                        if let Some(t) = tasks.get(&task_id) {
                            t.kill.trigger();
                        }
                    }
                    Some(AgentToExecutor::Message { task_id, data }) => {
                        let delivered = match tasks.get(&task_id) {
                            None => Err("this executor has no such task".to_string()),
                            Some(Task { inbox: None, .. }) => Err("only wasm tasks receive messages".to_string()),
                            Some(Task { inbox: Some(inbox), .. }) => inbox.deliver(data),
                        };
                        if let Err(message) = delivered {
                            link.send(&ExecutorToAgent::Undelivered { task_id, message });
                        }
                    }
                    Some(AgentToExecutor::Forget { task_id }) => {
                        tasks.remove(&task_id);
                        link.forget(&task_id);
                    }
                    Some(AgentToExecutor::Shutdown) => {
                        tracing::info!("shutting down");
                        stop_all(&tasks, &link).await;
                        return Ok(());
                    }
                }
            }
            Some((task_id, data)) = outbox_rx.recv(), if link.is_attached() => {
                link.send(&ExecutorToAgent::Message { task_id, data });
            }
            _ = report.tick(), if link.is_attached() => {
                let stats = runtime.executor_stats();
                if stats != reported {
                    link.send(&ExecutorToAgent::Stats(stats));
                    reported = stats;
                }
            }
            _ = sleep_until(give_up) => {
                tracing::warn!(timeout = ?config.recovery_timeout, "no agent came back; killing tasks and exiting");
                stop_all(&tasks, &link).await;
                return Ok(());
            }
        }
    }
}

/// Kills every task and waits (bounded) until each has ended, so no
/// native program outlives its executor.
async fn stop_all(tasks: &HashMap<TaskId, Task>, link: &AgentLink) {
    for t in tasks.values() {
        t.kill.trigger();
    }
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    while tasks
        .keys()
        .any(|id| !link.last(id).as_ref().is_some_and(TaskEvent::is_terminal))
    {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The connection's reading half for the loop and a handle the link
/// writes through; `None` if the socket cannot be shared.
fn split(
    stream: tokio::net::UnixStream,
) -> Option<(tokio::net::UnixStream, std::os::unix::net::UnixStream)> {
    let shared = || {
        let std = stream.into_std()?;
        let write = std.try_clone()?;
        Ok::<_, std::io::Error>((tokio::net::UnixStream::from_std(std)?, write))
    };
    shared()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot use the agent's connection"))
        .ok()
}

async fn read_agent(
    generation: u64,
    read: tokio::net::UnixStream,
    tx: mpsc::Sender<(u64, Option<AgentToExecutor>)>,
) {
    // Buffered: a frame's header and body, and launches sent together,
    // come in one read.
    let mut read = tokio::io::BufReader::new(read);
    loop {
        let msg = match io::recv::<AgentToExecutor>(&mut read).await {
            Ok(Some(msg)) => Some(msg),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "bad data from the agent; dropping the connection");
                None
            }
        };
        let end = msg.is_none();
        if tx.send((generation, msg)).await.is_err() || end {
            return;
        }
    }
}

/// The pool wasm tasks run on. Dropped inside the executor's async loop,
/// where a runtime cannot block to wait for its threads: they are left to
/// end on their own as the process exits.
struct TaskThreads {
    handle: tokio::runtime::Handle,
    /// Taken only on drop.
    pool: Option<tokio::runtime::Runtime>,
}

impl TaskThreads {
    fn new(pool: tokio::runtime::Runtime) -> TaskThreads {
        TaskThreads {
            handle: pool.handle().clone(),
            pool: Some(pool),
        }
    }
}

impl Drop for TaskThreads {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.shutdown_background();
        }
    }
}

/// The spare directories beside `dir`, a task's directory, started on
/// first use; `None` where they cannot be (task directories are then
/// made at launch).
fn spares_for(spares: &mut Option<Arc<Spares>>, dir: &Path) -> Option<Arc<Spares>> {
    if spares.is_none() {
        let tasks = dir.parent()?;
        match Spares::start(tasks) {
            Ok(started) => *spares = Some(Arc::new(started)),
            Err(e) => tracing::warn!(error = %e, "cannot keep spare task directories"),
        }
    }
    spares.clone()
}

/// What launching a task needs from the executor.
struct Started<'a> {
    runtime: &'a Arc<WasmRuntime>,
    threads: &'a tokio::runtime::Handle,
    spares: Option<Arc<Spares>>,
    link: &'a Arc<AgentLink>,
    outbox: &'a mpsc::Sender<Outgoing>,
    log_limit: u64,
    master: Option<&'a stoa_client::ClientConfig>,
}

/// Starts a task: wasm as a future on the task runtime (see
/// [`crate::exec::wasm::task_runtime`]); a cluster-hosted scheduler on a
/// thread of that runtime's blocking pool; a native program as a child
/// watched by a tokio task.
fn launch(
    started: &Started<'_>,
    tasks: &mut HashMap<TaskId, Task>,
    info: TaskInfo,
    dir: &Path,
    cgroup: Option<CgroupPaths>,
) {
    let task_id = info.task_id.clone();
    if tasks.contains_key(&task_id) {
        tracing::warn!(task = %task_id, "ignoring a second launch of a running task");
        return;
    }
    let kill = Kill::default();
    let (inbox, mail) = match &info.kind {
        TaskKind::Wasm(_) => {
            let (inbox, mail) = mailbox(task_id.clone(), started.outbox.clone());
            (Some(inbox), Some(mail))
        }
        TaskKind::Command(_) | TaskKind::Scheduler(_) => (None, None),
    };
    tasks.insert(
        task_id.clone(),
        Task {
            info: info.clone(),
            kill: kill.clone(),
            inbox,
        },
    );
    let link = started.link.clone();
    // The directory is made by the task's own future (or thread), not here:
    // the file system is a launch's largest cost, and this loop serves
    // every task of the framework.
    let dir = NewDir {
        spares: started.spares.clone(),
        path: dir.to_path_buf(),
    };
    if let TaskKind::Command(command) = &info.kind {
        let (command, log_limit) = (command.clone(), started.log_limit);
        tokio::spawn(async move {
            let dir = match tokio::task::spawn_blocking(move || dir.make()).await {
                Ok(Ok(dir)) => dir,
                Ok(Err(event)) => return link.report(task_id, event),
                Err(e) => {
                    let message = format!("the task directory's set-up failed: {e}");
                    let event = TaskEvent::ended(TaskState::Error, Reason::TaskInvalid, message);
                    return link.report(task_id, event);
                }
            };
            let report = |event| link.report(task_id.clone(), event);
            let cgroup = cgroup.map(Cgroup::from_paths);
            let end = native::run(&info, &command, &dir, cgroup, log_limit, &kill, report).await;
            link.report(task_id, end);
        });
        return;
    }
    let runtime = started.runtime.clone();
    if let TaskKind::Scheduler(hosted) = &info.kind {
        let (hosted, master, log_limit) =
            (hosted.clone(), started.master.cloned(), started.log_limit);
        started.threads.spawn_blocking(move || {
            let dir = match dir.make() {
                Ok(dir) => dir,
                Err(event) => return link.report(task_id, event),
            };
            let running = || link.report(task_id.clone(), TaskEvent::Running);
            let instance = crate::exec::hosted::Instance {
                info,
                hosted,
                dir: TaskDir::existing(dir.root()),
                runtime,
                master,
                log_limit,
            };
            let end = crate::exec::hosted::run(instance, &kill, running);
            link.report(task_id, end);
        });
        return;
    }
    started.threads.spawn(async move {
        let dir = match info.kind.has_sandbox().then(|| dir.make()).transpose() {
            Ok(dir) => dir,
            Err(event) => return link.report(task_id, event),
        };
        if let (TaskKind::Wasm(wasm), Some(dir)) = (&info.kind, &dir)
            && !wasm.files.is_empty()
            && let Err(message) = place_files(&runtime, &wasm.files, dir).await
        {
            let event = TaskEvent::ended(TaskState::Error, Reason::ArtifactUnavailable, message);
            return link.report(task_id, event);
        }
        let end = run_wasm(&runtime, &info, dir.as_ref(), &kill, mail, &link).await;
        end.report(&link, task_id);
    });
}

/// Places a task's files in its sandbox, off the task threads (copies
/// and unpacking are file-system work).
async fn place_files(
    runtime: &WasmRuntime,
    files: &[stoa_proto::TaskFile],
    dir: &TaskDir,
) -> Result<(), String> {
    let store = runtime
        .artifacts()
        .ok_or("this executor has no artifact store to take files from")?
        .to_path_buf();
    let (files, sandbox) = (files.to_vec(), dir.sandbox());
    tokio::task::spawn_blocking(move || crate::exec::files::place(&files, &store, &sandbox))
        .await
        .map_err(|e| format!("placing the task's files failed: {e}"))?
}

/// Runs a wasm task and returns its end, reporting RUNNING when the task
/// first waits (for a host call, its CPU share or an epoch tick: at most a
/// tick after it starts). A task that ends without ever waiting, as most
/// short ones do, has its RUNNING left for [`Ended::report`] to send with
/// its end, in one write.
async fn run_wasm(
    runtime: &WasmRuntime,
    info: &TaskInfo,
    dir: Option<&TaskDir>,
    kill: &Kill,
    mail: Option<Mailbox>,
    link: &AgentLink,
) -> Ended {
    let started = AtomicBool::new(false);
    let run = runtime.run_async(info, dir, kill, mail, || {
        started.store(true, Ordering::Relaxed);
    });
    let mut run = std::pin::pin!(run);
    let mut told = false;
    let event = std::future::poll_fn(|cx| {
        let poll = run.as_mut().poll(cx);
        if poll.is_pending() && !told && started.load(Ordering::Relaxed) {
            told = true;
            link.report(info.task_id.clone(), TaskEvent::Running);
        }
        poll
    })
    .await;
    Ended {
        event,
        running_untold: !told && started.load(Ordering::Relaxed),
    }
}

/// A wasm task's end, and whether its RUNNING is still to be sent.
struct Ended {
    event: TaskEvent,
    running_untold: bool,
}

/// Cores this process may run on (not its CPU quota, which the agent
/// changes as tasks come and go).
fn cores() -> usize {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0));
    let n = set.map_or(0, |set| {
        (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .count()
    });
    n.max(1)
}

/// Where a task's directory goes, and the spares to make it from.
struct NewDir {
    spares: Option<Arc<Spares>>,
    path: PathBuf,
}

impl NewDir {
    /// A fresh task directory (a spare moved into place, when one is
    /// ready), or the terminal event of a task without one.
    fn make(&self) -> Result<TaskDir, TaskEvent> {
        match &self.spares {
            Some(spares) => spares.take(&self.path),
            None => TaskDir::create(&self.path),
        }
        .map_err(|e| {
            TaskEvent::ended(
                TaskState::Error,
                Reason::TaskInvalid,
                format!(
                    "cannot create the task directory {}: {e}",
                    self.path.display()
                ),
            )
        })
    }
}

impl Ended {
    fn report(self, link: &AgentLink, task_id: TaskId) {
        if self.running_untold {
            link.report_running_and_end(task_id, self.event);
        } else {
            link.report(task_id, self.event);
        }
    }
}
