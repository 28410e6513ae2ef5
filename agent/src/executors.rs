//! The agent's side of its executors: one process per framework, started
//! on the first launch, found again after an agent restart, stopped when
//! idle. Where the host has cgroups, each executor runs in one of its own
//! (`<framework>/executor-<stamp>`), bounding what its wasm tasks use
//! together.

use crate::cgroups::{Cgroups, Entry, Limits, enter_on_exec};
use crate::executor_dir::{pid_path, socket_path};
use anyhow::Context as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use stoa_proto::FrameworkId;
use stoa_proto::executor::{AgentToExecutor, ExecutorTask, ExecutorToAgent};
use stoa_transport::framed::io;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// How long a new executor has to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What executors tell the agent.
#[derive(Debug)]
pub enum FromExecutor {
    /// What the executor said after its hello: a task event or message.
    Said {
        framework_id: FrameworkId,
        msg: ExecutorToAgent,
    },
    /// The executor's connection ended: it exited or crashed.
    Gone {
        framework_id: FrameworkId,
        generation: u64,
    },
}

/// How to start an executor process.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `stoa` binary.
    pub program: PathBuf,
    /// Arguments after `executor --framework ID --dir DIR`.
    pub args: Vec<String>,
}

/// The cgroups executors run in, and what each may use beyond its tasks.
#[derive(Debug, Clone)]
pub struct Containment {
    pub cgroups: Cgroups,
    /// The executor's own share beyond its tasks: the runtime,
    /// compilation, its threads.
    pub overhead_millicpus: u64,
    pub overhead_mem_mib: u64,
}

#[derive(Debug)]
pub struct Executors {
    dir: PathBuf,
    launcher: Launcher,
    events: mpsc::UnboundedSender<FromExecutor>,
    /// Each connection's generation tells a late `Gone` of a replaced
    /// executor from one of the executor now running.
    running: HashMap<FrameworkId, (u64, mpsc::UnboundedSender<AgentToExecutor>)>,
    generation: u64,
    containment: Option<Containment>,
    /// The cgroup leaf of each executor generation, until it is gone.
    leaves: HashMap<u64, (FrameworkId, String)>,
    /// The limits last written to each leaf.
    applied: HashMap<String, Limits>,
}

/// The limits to write to an executor's cgroup, `applied` now, for a need
/// of `millicpus` and `mem_bytes`; `None` when nothing is to be written.
///
/// Memory only grows while an executor lives, because lowering a limit
/// under use makes the kernel reclaim or OOM-kill the executor and every
/// task in it. CPU grows at once when tasks start, but shrinks only when
/// `shrink` is asked (the agent asks a while after tasks end) and the need
/// has halved: each wasm task is held to its own share by the runtime, so
/// the cgroup is a ceiling over the executor, and rewriting it on every
/// task's start and end would cost cgroup writes per task on the agent's
/// loop. A grow goes half again over the need, so a ramp of small tasks
/// costs a few writes, not one each.
fn next_limits(applied: Limits, millicpus: u64, mem_bytes: u64, shrink: bool) -> Option<Limits> {
    let millicpus = if millicpus > applied.millicpus {
        millicpus.max(applied.millicpus.saturating_add(applied.millicpus / 2))
    } else if shrink && millicpus.saturating_mul(2) <= applied.millicpus {
        millicpus
    } else {
        applied.millicpus
    };
    let next = Limits {
        millicpus,
        mem_bytes: applied.mem_bytes.max(mem_bytes),
        max_pids: None,
    };
    (next != applied).then_some(next)
}

/// An executor found running after an agent restart.
#[derive(Debug)]
pub struct Recovered {
    pub framework_id: FrameworkId,
    pub pid: u32,
    pub tasks: Vec<ExecutorTask>,
}

impl Executors {
    pub fn new(
        dir: PathBuf,
        launcher: Launcher,
        events: mpsc::UnboundedSender<FromExecutor>,
        containment: Option<Containment>,
    ) -> Self {
        Executors {
            dir,
            launcher,
            events,
            running: HashMap::new(),
            generation: 0,
            containment,
            leaves: HashMap::new(),
            applied: HashMap::new(),
        }
    }

    /// Bounds `framework`'s executor to its overhead plus what its running
    /// wasm tasks were given (see [`next_limits`]; `shrink` allows its CPU
    /// to come down).
    pub fn resize(
        &mut self,
        framework: &FrameworkId,
        (millicpus, mem_mib): (u64, u64),
        shrink: bool,
    ) {
        let Some(containment) = &self.containment else {
            return;
        };
        let Some((generation, _)) = self.running.get(framework) else {
            return;
        };
        let Some((_, leaf)) = self.leaves.get(generation) else {
            return;
        };
        let mem = mem_mib
            .saturating_add(containment.overhead_mem_mib)
            .saturating_mul(1 << 20);
        let cpu = millicpus.saturating_add(containment.overhead_millicpus);
        // Made with its first limits (`contain`); recorded again only once
        // written, so a failed write is tried again at the next change.
        // Most launches change nothing, and find that out before any path
        // is built.
        let applied = self.applied.get(leaf).copied();
        let limits = match applied {
            Some(applied) => {
                let Some(limits) = next_limits(applied, cpu, mem, shrink) else {
                    return;
                };
                limits
            }
            None => Limits {
                millicpus: cpu,
                mem_bytes: mem,
                max_pids: None,
            },
        };
        let cgroup = containment.cgroups.open(framework.as_str(), leaf);
        let written = match &applied {
            Some(applied) => cgroup.change_limits(applied, &limits),
            None => cgroup.set_limits(&limits),
        }
        .map(|()| limits);
        match written {
            Ok(limits) => {
                self.applied.insert(leaf.clone(), limits);
            }
            Err(e) => {
                tracing::warn!(framework = %framework, error = format!("{e:#}"), "cannot resize the executor's cgroup")
            }
        }
    }

    /// A new executor's cgroup, made before the process starts.
    fn contain(&mut self, framework: &FrameworkId, generation: u64) -> Option<Entry> {
        let containment = self.containment.as_ref()?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let leaf = format!("executor-{stamp}");
        let limits = Limits {
            millicpus: containment.overhead_millicpus,
            mem_bytes: containment.overhead_mem_mib.saturating_mul(1 << 20),
            max_pids: None,
        };
        let made = containment
            .cgroups
            .create(framework.as_str(), &leaf, &limits)
            .and_then(|cgroup| Ok(cgroup.entry()?));
        match made {
            Ok(entry) => {
                self.applied.insert(leaf.clone(), limits);
                self.leaves.insert(generation, (framework.clone(), leaf));
                Some(entry)
            }
            Err(e) => {
                tracing::error!(framework = %framework, error = format!("{e:#}"), "cannot make the executor's cgroup; it runs uncontained");
                None
            }
        }
    }

    /// The cgroup leaf of an executor found running after a restart: the
    /// recorded one holding its pid.
    fn adopt(&mut self, framework: &FrameworkId, generation: u64, pid: u32) {
        let Some(containment) = &self.containment else {
            return;
        };
        let found = containment
            .cgroups
            .recorded()
            .into_iter()
            .filter(|(group, leaf)| group == framework.as_str() && leaf.starts_with("executor-"))
            .find(|(group, leaf)| {
                let procs = containment.cgroups.open(group, leaf).procs();
                procs.is_ok_and(|p| p.contains(&(pid as i32)))
            });
        if let Some((_, leaf)) = found {
            self.leaves.insert(generation, (framework.clone(), leaf));
        }
    }

    /// Whether `(group, leaf)` is the cgroup of an executor still served.
    pub fn holds_cgroup(&self, group: &str, leaf: &str) -> bool {
        self.leaves
            .values()
            .any(|(f, l)| f.as_str() == group && l == leaf)
    }

    /// The directory of `framework`'s executor.
    pub fn dir_of(&self, framework: &FrameworkId) -> PathBuf {
        self.dir.join(framework.as_str())
    }

    pub fn is_running(&self, framework: &FrameworkId) -> bool {
        self.running.contains_key(framework)
    }

    /// How many executors run.
    pub fn count(&self) -> usize {
        self.running.len()
    }

    /// Reconnects to every executor still alive from an earlier agent
    /// process and returns what each holds. Directories whose executor is
    /// gone are removed.
    pub async fn recover(&mut self) -> anyhow::Result<Vec<Recovered>> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(found);
        };
        for entry in entries.filter_map(Result::ok) {
            let dir = entry.path();
            let connected = tokio::time::timeout(
                Duration::from_secs(2),
                UnixStream::connect(socket_path(&dir)),
            )
            .await;
            let mut stream = match connected {
                Ok(Ok(stream)) => stream,
                _ => {
                    tracing::info!(dir = %dir.display(), "removing the directory of an executor that is gone");
                    let _ = std::fs::remove_dir_all(&dir);
                    continue;
                }
            };
            match io::recv::<ExecutorToAgent>(&mut stream).await {
                Ok(Some(ExecutorToAgent::Hello {
                    framework_id,
                    pid,
                    tasks,
                })) => {
                    tracing::info!(framework = %framework_id, pid, tasks = tasks.len(), "recovered an executor");
                    let generation = self.attach(framework_id.clone(), stream);
                    self.adopt(&framework_id, generation, pid);
                    found.push(Recovered {
                        framework_id,
                        pid,
                        tasks,
                    });
                }
                other => {
                    tracing::warn!(dir = %dir.display(), ?other, "an executor did not say hello; ignoring it");
                }
            }
        }
        Ok(found)
    }

    /// Sends `msg` to `framework`'s executor, starting one if there is none.
    pub fn send(&mut self, framework: &FrameworkId, msg: AgentToExecutor) {
        if !self.running.contains_key(framework) {
            let (tx, rx) = mpsc::unbounded_channel();
            self.generation += 1;
            self.running
                .insert(framework.clone(), (self.generation, tx));
            let dir = self.dir_of(framework);
            let entry = self.contain(framework, self.generation);
            tokio::spawn(start(
                (framework.clone(), self.generation),
                dir,
                (self.launcher.clone(), entry),
                rx,
                self.events.clone(),
            ));
        }
        if let Some((_, tx)) = self.running.get(framework) {
            let _ = tx.send(msg);
        }
    }

    /// Tells `framework`'s executor to stop, if one runs.
    pub fn shut_down(&mut self, framework: &FrameworkId) {
        if let Some((_, tx)) = self.running.remove(framework) {
            let _ = tx.send(AgentToExecutor::Shutdown);
        }
    }

    /// An executor's connection ended. Returns whether it was the executor
    /// now serving `framework` (not one already replaced or stopped), and
    /// its cgroup leaf, now to be removed.
    pub fn ended(&mut self, framework: &FrameworkId, generation: u64) -> (bool, Option<String>) {
        let leaf = self.leaves.remove(&generation).map(|(_, leaf)| leaf);
        if let Some(leaf) = &leaf {
            self.applied.remove(leaf);
        }
        let current = self
            .running
            .get(framework)
            .is_some_and(|(g, _)| *g == generation);
        if current {
            self.running.remove(framework);
        }
        (current, leaf)
    }

    fn attach(&mut self, framework: FrameworkId, stream: UnixStream) -> u64 {
        let (tx, rx) = mpsc::unbounded_channel();
        self.generation += 1;
        self.running
            .insert(framework.clone(), (self.generation, tx));
        tokio::spawn(serve(
            (framework, self.generation),
            stream,
            rx,
            self.events.clone(),
        ));
        self.generation
    }
}

/// Starts an executor process, waits for its socket, then serves it.
async fn start(
    (framework, generation): (FrameworkId, u64),
    dir: PathBuf,
    (launcher, entry): (Launcher, Option<Entry>),
    rx: mpsc::UnboundedReceiver<AgentToExecutor>,
    events: mpsc::UnboundedSender<FromExecutor>,
) {
    match spawn_and_connect(&framework, &dir, &launcher, entry).await {
        Ok(stream) => serve((framework, generation), stream, rx, events).await,
        Err(e) => {
            tracing::error!(framework = %framework, error = format!("{e:#}"), "cannot start an executor");
            let _ = events.send(FromExecutor::Gone {
                framework_id: framework,
                generation,
            });
        }
    }
}

async fn spawn_and_connect(
    framework: &FrameworkId,
    dir: &Path,
    launcher: &Launcher,
    entry: Option<Entry>,
) -> anyhow::Result<UnixStream> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let socket = socket_path(dir);
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(pid_path(dir));
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("executor.log"))?;
    let mut command = std::process::Command::new(&launcher.program);
    if let Some(entry) = entry {
        enter_on_exec(&mut command, entry);
    }
    let mut child = tokio::process::Command::from(command)
        .arg("executor")
        .arg("--framework")
        .arg(framework.as_str())
        .arg("--dir")
        .arg(dir)
        .args(&launcher.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a signal meant for the agent (Ctrl-C in a
        // terminal) does not take the tasks down with it.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("cannot run {}", launcher.program.display()))?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let stream = loop {
        if let Ok(stream) = UnixStream::connect(&socket).await {
            break stream;
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "the executor exited at start ({status}); see {}",
                dir.join("executor.log").display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.start_kill();
            anyhow::bail!("the executor did not open {} in time", socket.display());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Reap it when it exits, so it does not linger as a zombie.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(stream)
}

/// Relays messages both ways until the executor's connection ends. The
/// first message of a new connection (its hello) only matters after a
/// restart, where [`Executors::recover`] reads it; here it is skipped.
async fn serve(
    (framework, generation): (FrameworkId, u64),
    stream: UnixStream,
    mut rx: mpsc::UnboundedReceiver<AgentToExecutor>,
    events: mpsc::UnboundedSender<FromExecutor>,
) {
    let (read, mut write) = stream.into_split();
    // Buffered: a frame's header and body, and frames sent together, come
    // in one read.
    let mut read = tokio::io::BufReader::new(read);
    let reader = {
        let (framework, events) = (framework.clone(), events.clone());
        async move {
            loop {
                match io::recv::<ExecutorToAgent>(&mut read).await {
                    Ok(Some(ExecutorToAgent::Hello { .. })) => {}
                    Ok(Some(msg)) => {
                        let framework_id = framework.clone();
                        let _ = events.send(FromExecutor::Said { framework_id, msg });
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(framework = %framework, error = %e, "bad data from an executor");
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some(msg) = rx.recv().await {
            let batch = io::batch(msg, &mut rx, io::MAX_BATCH);
            if io::send_many(&mut write, &batch).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    let _ = events.send(FromExecutor::Gone {
        framework_id: framework,
        generation,
    });
}

/// Kills executors left running in `dir` (an agent's `executors`
/// directory) after their agent stopped for good: for tools that own a
/// whole cluster's lifetime (`stoa up`, test harnesses). Only processes
/// whose command line names their own directory are touched, so a reused
/// pid is never hit. Returns how many were killed.
pub fn stop_leftovers(dir: &Path) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut killed = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let exec_dir = entry.path();
        let Some(pid) = std::fs::read_to_string(pid_path(&exec_dir))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.iter().any(|a| *a == b"executor")
            && args
                .iter()
                .any(|a| Path::new(&*String::from_utf8_lossy(a)) == exec_dir);
        if ours && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::{Limits, next_limits};

    #[test]
    fn executor_limits_grow_at_once_and_shrink_only_when_halved_and_asked() {
        let at = |millicpus, mem_bytes| Limits {
            millicpus,
            mem_bytes,
            max_pids: None,
        };
        let start = at(500, 256);
        assert_eq!(next_limits(start, 500, 256, true), None, "nothing changed");
        assert_eq!(
            next_limits(start, 1500, 384, true),
            Some(at(1500, 384)),
            "grows to the need"
        );
        assert_eq!(
            next_limits(start, 600, 256, true),
            Some(at(750, 256)),
            "or half again"
        );
        let busy = at(1500, 384);
        assert_eq!(
            next_limits(busy, 1000, 256, true),
            None,
            "churn writes nothing"
        );
        assert_eq!(
            next_limits(busy, 1000, 512, true),
            Some(at(1500, 512)),
            "memory still grows"
        );
        assert_eq!(
            next_limits(busy, 750, 128, true),
            Some(at(750, 384)),
            "cpu shrinks once halved, memory never"
        );
        assert_eq!(
            next_limits(busy, 500, 128, false),
            None,
            "and only when the agent asks"
        );
    }
}
