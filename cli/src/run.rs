//! `stoa run`: one wasm program as one task or N, without a scheduler of
//! the user's own, as `docker run` or Mesos's `mesos-execute`. The program
//! is uploaded (unless the master holds it), a framework of this command's
//! own takes offers and launches the tasks, one task's stdout and stderr
//! stream here, and the command exits with the task's exit code. N tasks
//! show a progress bar and a summary instead.
//!
//! The program runs as under `wasmtime run`: its arguments and environment
//! are exactly the ones given, nothing is preopened unless asked (`--dir`),
//! and a command's exit code comes back as it left the program.

use crate::logs::Log;
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stoa_client::scheduler::{Calls, DriverOptions, Scheduler};
use stoa_client::{ClientConfig, OperatorSession};
use stoa_proto::side::LogStream;
use stoa_proto::{
    Artifact, Digest, FrameworkId, FrameworkInfo, Offer, Reason, Resources, Role, Sandbox,
    SandboxPath, TaskFile, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState, TaskStatus, UpdateId,
    WasmTask,
};
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The program: a stoa:task component, a wasi:cli command component or
    /// a WASI preview-1 module (.wasm).
    program: PathBuf,
    #[command(flatten)]
    client: crate::connect::ClientArgs,
    /// Run this many copies (tasks named NAME-0 … NAME-(N-1)).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// CPUs each task holds.
    #[arg(long, default_value_t = 0.1)]
    cpus: f64,
    /// Memory of each task in MiB: the limit on its linear memories.
    #[arg(long, default_value_t = 64)]
    mem: u64,
    /// Fuel (instructions, roughly) each task may burn; unlimited if unset.
    #[arg(long)]
    fuel: Option<u64>,
    /// Seconds each task may run; unlimited if unset.
    #[arg(long)]
    timeout: Option<f64>,
    /// KEY=VALUE: an environment variable (repeatable). The environment
    /// holds these and nothing else.
    #[arg(long = "env", value_parser = crate::framework::key_value)]
    env: Vec<(String, String)>,
    /// The task's stdin (a command) or input (a stoa:task): a file, or `-`
    /// for this command's stdin. Empty if unset.
    #[arg(long)]
    input: Option<PathBuf>,
    /// The role to run in.
    #[arg(long, default_value = "default")]
    role: Role,
    /// A name for the tasks (default: the program's file name).
    #[arg(long)]
    name: Option<String>,
    /// Give each task a private directory, preopened as `/`, as `wasmtime
    /// run --dir` does. Without it the program sees no files; its stdout
    /// and stderr are kept either way.
    #[arg(long)]
    dir: bool,
    /// NAME=PATH: upload the file PATH and place it at NAME in each task's
    /// directory before the task starts (repeatable; implies --dir).
    #[arg(long = "file", value_parser = crate::framework::key_value)]
    files: Vec<(String, String)>,
    /// DIR=ARCHIVE: upload a tar archive (gzip-compressed or not) and
    /// unpack it into DIR in each task's directory before the task starts
    /// (repeatable; implies --dir).
    #[arg(long = "extract", value_parser = crate::framework::key_value)]
    archives: Vec<(String, String)>,
    /// Launch and return at once, printing the framework and task ids; the
    /// run goes on in the background (follow it with `stoa logs -f`).
    #[arg(long)]
    detach: bool,
    /// Print one JSON object when the run ends (or, with --detach, once
    /// it is launched) instead of the task's output.
    #[arg(long)]
    json: bool,
    /// Set on the background half of a detached run.
    #[arg(long, hide = true)]
    detached: bool,
    /// Arguments for the program (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// Exit code when the run was interrupted (as a shell reports SIGINT).
const INTERRUPTED: i32 = 130;
/// Exit code when a task failed without an exit code of its own (a trap,
/// a limit, a lost agent).
const TASK_FAILED: i32 = 1;
/// How long without an offer that fits before saying so.
const WAIT_HINT: Duration = Duration::from_secs(5);

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    if a.detach {
        return detach(&a);
    }
    let code = run_attached(&a).await?;
    std::process::exit(code);
}

async fn run_attached(a: &RunArgs) -> anyhow::Result<i32> {
    let config = a.client.config();
    let (launch, digest) = prepare(a, &config).await?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let mut runner = Runner {
        launch,
        count: a.count,
        next: 0,
        notes: notes_tx,
    };
    let mut info = FrameworkInfo::new(format!("run {}", runner.launch.name), a.role.clone());
    // Without failover the framework ends as soon as this command's
    // connection does: Ctrl-C kills the tasks, as it would a local program.
    info.failover_timeout_ms = 0;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async {
        tokio::select! {
            _ = stop_rx => {}
            () = crate::shutdown_signal() => {}
        }
    };
    let options = DriverOptions {
        implicit_acks: true,
        reconnect_for: Duration::from_secs(30),
    };
    let driver = stoa_client::scheduler::run_until(&config, info, &mut runner, options, stop);
    let watch = Watch::new(a, digest, &config);
    let watching = watch.follow(&mut notes);
    tokio::pin!(driver, watching);
    let outcome = tokio::select! {
        ended = &mut driver => {
            ended?;
            eprintln!("interrupted: the run's framework ended and its tasks were killed");
            return Ok(INTERRUPTED);
        }
        outcome = &mut watching => outcome?,
    };
    let _ = stop_tx.send(());
    driver.await?;
    Ok(outcome)
}

/// What each task of the run is launched with.
struct Launch {
    name: String,
    resources: Resources,
    wasm: WasmTask,
    limits: TaskLimits,
    /// Tasks are named `<prefix>` (one) or `<prefix>-<i>` (several).
    prefix: String,
    single: bool,
}

impl Launch {
    fn task_id(&self, i: u32) -> TaskId {
        let id = if self.single {
            self.prefix.clone()
        } else {
            format!("{}-{i}", self.prefix)
        };
        TaskId::new(id).unwrap_or_else(|_| TaskId::new(format!("run-{i}")).expect("a valid id"))
    }

    fn task(&self, i: u32) -> TaskInfo {
        TaskInfo {
            task_id: self.task_id(i),
            name: self.name.clone(),
            resources: self.resources.clone(),
            kind: TaskKind::Wasm(self.wasm.clone()),
            limits: self.limits,
        }
    }
}

/// Reads and checks the program, uploads it, and makes the launch.
async fn prepare(a: &RunArgs, config: &ClientConfig) -> anyhow::Result<(Launch, Digest)> {
    let bytes = std::fs::read(&a.program)
        .with_context(|| format!("cannot read {}", a.program.display()))?;
    if !bytes.starts_with(b"\0asm") {
        bail!(
            "{} is not a wasm binary (it does not start with \\0asm); give a component or a module built for wasm32-wasip2 or wasm32-wasip1",
            a.program.display()
        );
    }
    let input = match &a.input {
        None => Vec::new(),
        Some(path) if path.as_os_str() == "-" => {
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
                .context("cannot read stdin for --input -")?;
            input
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
    };
    if !(a.cpus.is_finite() && a.cpus > 0.0) {
        bail!("--cpus must be above 0, not {}", a.cpus);
    }
    let timeout_ms = match a.timeout {
        Some(s) if !(s.is_finite() && s > 0.0) => bail!("--timeout must be above 0 seconds"),
        Some(s) => Some((s * 1000.0).ceil() as u64),
        None => None,
    };
    let digest = stoa_client::upload_artifact(config, &bytes)
        .await
        .with_context(|| format!("cannot upload {}", a.program.display()))?;
    let mut files = Vec::new();
    let wanted = a.files.iter().map(|f| (f, false));
    for ((name, path), extract) in wanted.chain(a.archives.iter().map(|f| (f, true))) {
        let path_in_sandbox: SandboxPath = name
            .parse()
            .map_err(|e| anyhow::anyhow!("--file {name}={path}: {e}"))?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        let artifact = stoa_client::upload_artifact(config, &bytes)
            .await
            .with_context(|| format!("cannot upload {path}"))?;
        files.push(TaskFile {
            path: path_in_sandbox,
            artifact,
            extract,
        });
    }
    let name = a.name.clone().unwrap_or_else(|| {
        a.program
            .file_stem()
            .map_or("run".into(), |s| s.to_string_lossy().into_owned())
    });
    let launch = Launch {
        prefix: format!("{}-{}", id_safe(&name), short_random()),
        single: a.count == 1,
        name,
        resources: Resources::new()
            .with_millicpus((a.cpus * 1000.0).round() as u64)
            .with_mem_mib(a.mem),
        wasm: WasmTask {
            artifact: Artifact::Stored(digest),
            input,
            args: a.args.clone(),
            env: a.env.clone(),
            sandbox: if a.dir || !files.is_empty() {
                Sandbox::Directory
            } else {
                Sandbox::LogsOnly
            },
            files,
        },
        limits: TaskLimits {
            fuel: a.fuel,
            timeout_ms,
        },
    };
    Ok((launch, digest))
}

/// `name` with what a task id may not hold replaced by `-`.
fn id_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if safe.is_empty() { "run".into() } else { safe }
}

/// Six hex digits, different from run to run, so that two runs of one
/// program name their tasks apart.
fn short_random() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// What the scheduler tells the watcher.
enum Note {
    Subscribed(FrameworkId),
    Launched,
    Update(Box<TaskStatus>),
    Error(String),
}

/// The run's scheduler: launches the tasks on whatever offers fit them.
struct Runner {
    launch: Launch,
    count: u32,
    next: u32,
    notes: mpsc::UnboundedSender<Note>,
}

impl Scheduler for Runner {
    fn subscribed(&mut self, _calls: &mut Calls, framework_id: &FrameworkId) {
        let _ = self.notes.send(Note::Subscribed(framework_id.clone()));
    }

    fn offers(&mut self, calls: &mut Calls, offers: Vec<Offer>) {
        for offer in offers {
            let mut left = offer.resources.clone();
            let mut tasks = Vec::new();
            while self.next < self.count {
                let Some(rest) = left.checked_sub(&self.launch.resources) else {
                    break;
                };
                left = rest;
                tasks.push(self.launch.task(self.next));
                let _ = self.notes.send(Note::Launched);
                self.next += 1;
            }
            if tasks.is_empty() {
                // Too small, or nothing left to launch: not again soon.
                calls.decline(vec![offer.id], Some(5_000));
            } else {
                calls.launch(vec![offer.id], tasks, None);
            }
        }
        if self.next == self.count {
            calls.call(stoa_proto::Call::Suppress);
        }
    }

    fn update(&mut self, _calls: &mut Calls, status: &TaskStatus, _ack: Option<UpdateId>) {
        let _ = self.notes.send(Note::Update(Box::new(status.clone())));
    }

    fn error(&mut self, _calls: &mut Calls, message: &str) {
        let _ = self.notes.send(Note::Error(message.to_string()));
    }
}

/// How a task ended, for the summary.
#[derive(Debug, Clone)]
struct Ended {
    state: TaskState,
    reason: Option<Reason>,
    message: String,
    exit_code: Option<i32>,
    output: Option<Vec<u8>>,
}

/// The watching half of a run: streams one task's logs, or shows the
/// progress of many, until every task has ended.
struct Watch<'a> {
    args: &'a RunArgs,
    digest: Digest,
    config: &'a ClientConfig,
}

impl<'a> Watch<'a> {
    fn new(args: &'a RunArgs, digest: Digest, config: &'a ClientConfig) -> Self {
        Watch {
            args,
            digest,
            config,
        }
    }

    /// Returns the command's exit code once every task has ended.
    async fn follow(&self, notes: &mut mpsc::UnboundedReceiver<Note>) -> anyhow::Result<i32> {
        let started = Instant::now();
        let count = self.args.count;
        let stream_logs = count == 1 && !self.args.json && !self.args.detached;
        let bar = (count > 1 && !self.args.json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(u64::from(count));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} ended, {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        let mut framework_id = None;
        let mut launched = 0u32;
        let mut running = 0u32;
        let mut ended: BTreeMap<TaskId, Ended> = BTreeMap::new();
        let mut followers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = Vec::new();
        let mut hinted = false;
        let mut errors = Vec::new();
        while ended.len() < count as usize {
            let note = tokio::select! {
                note = notes.recv() => note,
                () = tokio::time::sleep(WAIT_HINT), if launched == 0 && !hinted => {
                    hinted = true;
                    eprintln!(
                        "waiting for an offer of {} in role {} (see `stoa agents` for what is free)",
                        self.resources_text(),
                        self.args.role
                    );
                    continue;
                }
            };
            let Some(note) = note else {
                bail!("the run's scheduler stopped");
            };
            match note {
                Note::Subscribed(id) => {
                    if self.args.detached {
                        self.report_launch(&id)?;
                    }
                    framework_id = Some(id);
                }
                Note::Launched => launched += 1,
                Note::Error(message) => {
                    errors.push(message.clone());
                    eprintln!("the master refused a call: {message}");
                }
                Note::Update(status) => {
                    if status.state == TaskState::Running {
                        running += 1;
                    }
                    if stream_logs && followers.is_empty() && status.agent_id.is_some() {
                        followers = self.follow_logs(framework_id.clone(), &status.task_id);
                    }
                    if status.state.is_terminal() {
                        ended.insert(
                            status.task_id.clone(),
                            Ended {
                                state: status.state,
                                reason: status.reason,
                                message: status.message.clone(),
                                exit_code: status.exit_code,
                                output: status.output.clone(),
                            },
                        );
                    }
                }
            }
            if let Some(bar) = &bar {
                bar.set_position(ended.len() as u64);
                bar.set_message(format!("{launched} launched, {running} running"));
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        for follower in followers {
            // A task that never started has no logs to give.
            if let Ok(Err(e)) = follower.await
                && ended.values().all(|e| e.state != TaskState::Error)
            {
                eprintln!("cannot read the task's log: {e:#}");
            }
        }
        let elapsed = started.elapsed();
        let framework = framework_id.map(|f| f.to_string()).unwrap_or_default();
        if self.args.detached {
            // Nobody reads this half's output any more.
            return Ok(0);
        }
        if count == 1 {
            let (task_id, end) = ended.iter().next().context("no task ended")?;
            return self.single_end(&framework, task_id, end);
        }
        self.summary(&framework, &ended, elapsed)
    }

    fn resources_text(&self) -> String {
        format!("cpus:{};mem:{}", self.args.cpus, self.args.mem)
    }

    /// Starts copying the task's stdout and stderr here.
    fn follow_logs(
        &self,
        framework: Option<FrameworkId>,
        task: &TaskId,
    ) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
        [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .map(|stream| {
                let log = Log {
                    framework: framework.clone(),
                    task: task.clone(),
                    stream,
                };
                let config = self.config.clone();
                tokio::spawn(async move {
                    let mut session = OperatorSession::connect(&config).await?;
                    let result = match stream {
                        LogStream::Stdout => {
                            log.copy(&mut session, &mut std::io::stdout(), true).await
                        }
                        LogStream::Stderr => {
                            log.copy(&mut session, &mut std::io::stderr(), true).await
                        }
                    };
                    session.close();
                    result.map(|_| ())
                })
            })
            .collect()
    }

    /// Prints how the one task ended; its exit code is the command's.
    fn single_end(&self, framework: &str, task_id: &TaskId, end: &Ended) -> anyhow::Result<i32> {
        let code = match (end.state, end.exit_code) {
            (TaskState::Finished, _) => 0,
            (_, Some(code)) if code != 0 => code,
            _ => TASK_FAILED,
        };
        if self.args.json {
            let line = serde_json::json!({
                "framework_id": framework,
                "task_id": task_id.as_str(),
                "artifact": self.digest.to_string(),
                "state": end.state.to_string(),
                "reason": end.reason.map(|r| r.to_string()),
                "message": end.message,
                "exit_code": end.exit_code,
                "output": end.output.as_ref().map(|o| String::from_utf8_lossy(o).into_owned()),
            });
            println!("{line}");
            return Ok(code);
        }
        // A stoa:task's result is its output bytes.
        if let Some(output) = end.output.as_ref().filter(|o| !o.is_empty()) {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(output)?;
            if !output.ends_with(b"\n") && out.is_terminal() {
                out.write_all(b"\n")?;
            }
        }
        if end.state != TaskState::Finished && end.exit_code.is_none_or(|c| c == 0) {
            let reason = end.reason.map(|r| format!(" ({r})")).unwrap_or_default();
            eprintln!("task {task_id} {}{reason}: {}", end.state, end.message);
        }
        Ok(code)
    }

    /// Prints the summary of many tasks; 0 if all finished.
    fn summary(
        &self,
        framework: &str,
        ended: &BTreeMap<TaskId, Ended>,
        elapsed: Duration,
    ) -> anyhow::Result<i32> {
        let finished = ended
            .values()
            .filter(|e| e.state == TaskState::Finished)
            .count();
        let mut failed: BTreeMap<String, usize> = BTreeMap::new();
        for e in ended.values().filter(|e| e.state != TaskState::Finished) {
            let why = match (e.reason, e.exit_code) {
                (_, Some(code)) if code != 0 => format!("exit code {code}"),
                (Some(reason), _) => reason.to_string(),
                (None, _) => e.state.to_string(),
            };
            *failed.entry(why).or_default() += 1;
        }
        let secs = elapsed.as_secs_f64();
        if self.args.json {
            let line = serde_json::json!({
                "framework_id": framework,
                "artifact": self.digest.to_string(),
                "tasks": ended.len(),
                "finished": finished,
                "failed": failed,
                "seconds": secs,
            });
            println!("{line}");
        } else {
            println!(
                "{} tasks in {secs:.2} s ({:.0}/s): {finished} finished",
                ended.len(),
                ended.len() as f64 / secs.max(1e-9)
            );
            for (why, n) in &failed {
                println!("  {n} failed: {why}");
            }
        }
        Ok(if failed.is_empty() { 0 } else { TASK_FAILED })
    }

    /// The background half of a detached run tells the foreground half
    /// what it started, on its stdout, then stays quiet.
    fn report_launch(&self, framework_id: &FrameworkId) -> anyhow::Result<()> {
        use std::io::Write as _;
        let line = serde_json::json!({
            "framework_id": framework_id.to_string(),
            "artifact": self.digest.to_string(),
            "tasks": self.args.count,
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }
}

/// `--detach`: starts the run's other half in the background (its own
/// process group, so the terminal's Ctrl-C does not reach it), waits for
/// its framework to subscribe, and prints what it started.
fn detach(a: &RunArgs) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    if a.input.as_deref().is_some_and(|p| p.as_os_str() == "-") {
        bail!("--detach cannot read --input from stdin; give a file");
    }
    let exe = std::env::current_exe().context("cannot find the stoa binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|arg| arg != "--detach")
        .collect();
    let (before, after) = match args.iter().position(|arg| arg == "--") {
        Some(i) => args.split_at(i),
        None => (&args[..], &[][..]),
    };
    let mut child = std::process::Command::new(exe)
        .args(before)
        .arg("--detached")
        .args(after)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the background run")?;
    let stdout = child
        .stdout
        .take()
        .context("no pipe from the background run")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let report: serde_json::Value = serde_json::from_str(line.trim()).map_err(|_| {
        anyhow::anyhow!("the background run stopped before its framework subscribed; run without --detach to see why")
    })?;
    if a.json {
        println!("{report}");
    } else {
        let framework = report["framework_id"].as_str().unwrap_or_default();
        println!(
            "framework {framework} runs {} task(s) in the background",
            a.count
        );
        println!(
            "  see them:  stoa ps --framework {framework} --identity {}",
            a.client.identity()
        );
        println!(
            "  stop them: stoa teardown {framework} --identity {}",
            a.client.identity()
        );
    }
    Ok(())
}
