//! Native command tasks: a program on the host, run by the framework's
//! executor in a cgroup the agent made and limited from the task's
//! resources.
//!
//! The program joins its cgroup before it execs, so nothing it forks can
//! escape. Its working directory is the task's sandbox; its stdout and
//! stderr are copied into the task's capped logs. A kill is SIGTERM to
//! its process group, the task's grace period, then SIGKILL to everything
//! in the cgroup. Whatever is left when the program exits is killed too:
//! a task ends with all of its processes. A task with a health check has
//! it run beside it, in its sandbox and cgroup; too many failures in a row
//! kill it by the same policy.

use crate::cgroups::{Cgroup, enter_on_exec};
use crate::core::TaskEvent;
use crate::exec::kill::Kill;
use crate::exec::task_dir::TaskDir;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use stoa_proto::side::LogStream;
use stoa_proto::{CommandTask, DEFAULT_KILL_GRACE_MS, HealthCheck, Reason, TaskInfo, TaskState};
use tokio::io::AsyncWriteExt as _;

/// How long the end of a task waits for its logs to drain.
const LOG_DRAIN: Duration = Duration::from_secs(5);

/// Health checks run at most this often, whatever a task asks.
const MIN_HEALTH_INTERVAL_MS: u64 = 100;

/// Why a task stopped before its program exited.
enum Stop {
    Killed,
    Timeout(Duration),
    /// This many health checks failed in a row.
    Unhealthy(u32),
}

/// Runs `command` to its end. `report` gets RUNNING once the program
/// started, then each change of its health; `kill` ends it by the task's
/// kill policy.
pub async fn run(
    task: &TaskInfo,
    command: &CommandTask,
    dir: &TaskDir,
    cgroup: Option<Cgroup>,
    log_limit: u64,
    kill: &Kill,
    report: impl Fn(TaskEvent),
) -> TaskEvent {
    let Some(cgroup) = cgroup else {
        return TaskEvent::ended(
            TaskState::Error,
            Reason::IsolationUnavailable,
            "native tasks need cgroups, and this agent has none",
        );
    };
    let Some((program, args)) = command.argv.split_first() else {
        return TaskEvent::ended(
            TaskState::Error,
            Reason::TaskInvalid,
            "a command task needs argv[0], the program to run",
        );
    };
    let entry = match cgroup.entry() {
        Ok(entry) => entry,
        Err(e) => {
            return TaskEvent::ended(
                TaskState::Error,
                Reason::IsolationUnavailable,
                format!("cannot join the task's cgroup: {e}"),
            );
        }
    };
    let logs = (
        dir.open_log(LogStream::Stdout, log_limit),
        dir.open_log(LogStream::Stderr, log_limit),
    );
    let (Ok(mut stdout_log), Ok(mut stderr_log)) = logs else {
        return TaskEvent::ended(
            TaskState::Error,
            Reason::TaskInvalid,
            "cannot create the task's log files",
        );
    };
    let mut std_command = std::process::Command::new(program);
    std_command
        .args(args)
        .env_clear()
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.sandbox())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, for SIGTERM to reach the whole tree first.
        .process_group(0);
    enter_on_exec(&mut std_command, entry);
    let mut child = match tokio::process::Command::from(std_command)
        .kill_on_drop(false)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
            return TaskEvent::ended(
                TaskState::Failed,
                Reason::TaskFailed,
                format!("cannot start {program}: {e}"),
            );
        }
    };
    report(TaskEvent::Running);
    let pid = child.id().and_then(|p| i32::try_from(p).ok());

    let mut drains = Vec::new();
    if let Some(mut stdin) = child.stdin.take() {
        let input = command.input.clone();
        tokio::spawn(async move {
            // A program that never reads its stdin is not an error.
            let _ = stdin.write_all(&input).await;
        });
    }
    if let Some(mut out) = child.stdout.take() {
        drains.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut out, &mut stdout_log).await;
        }));
    }
    if let Some(mut err) = child.stderr.take() {
        drains.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut err, &mut stderr_log).await;
        }));
    }

    let timeout = task.limits.timeout_ms.map(Duration::from_millis);
    let health = async {
        match &command.health_check {
            Some(check) => watch_health(check, &command.env, dir, &cgroup, &report).await,
            None => std::future::pending().await,
        }
    };
    let stopped = tokio::select! {
        status = child.wait() => Ok(status),
        () = kill.triggered() => Err(Stop::Killed),
        failures = health => Err(Stop::Unhealthy(failures)),
        () = crate::deadline::sleep_until(timeout.map(|t| std::time::Instant::now() + t)) => {
            Err(Stop::Timeout(timeout.unwrap_or_default()))
        }
    };
    let status = match &stopped {
        Ok(status) => status.as_ref().ok().copied(),
        Err(_) => {
            if let Some(pid) = pid {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let grace =
                Duration::from_millis(command.kill_grace_ms.unwrap_or(DEFAULT_KILL_GRACE_MS));
            tokio::time::timeout(grace, child.wait())
                .await
                .ok()
                .and_then(Result::ok)
        }
    };
    // Nothing of the task outlives it: not its program past the grace
    // period, not what it left running in the background.
    let killed = {
        let cgroup = cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.kill_all()).await
    };
    if let Ok(Err(e)) | Err(e) = killed.map_err(anyhow::Error::from) {
        tracing::error!(task = %task.task_id, error = format!("{e:#}"), "cannot empty the task's cgroup");
    }
    let status = match status {
        Some(status) => Some(status),
        None => child.wait().await.ok(),
    };
    for drain in drains {
        let _ = tokio::time::timeout(LOG_DRAIN, drain).await;
    }
    verdict(task, stopped.err(), status, cgroup.oom_killed())
}

/// Runs `check` every interval until it fails `max_failures` times in a
/// row (failures in the grace period aside); returns that count. Reports
/// each change of verdict.
async fn watch_health(
    check: &HealthCheck,
    env: &[(String, String)],
    dir: &TaskDir,
    cgroup: &Cgroup,
    report: &impl Fn(TaskEvent),
) -> u32 {
    let started = tokio::time::Instant::now();
    let interval = Duration::from_millis(check.interval_ms.max(MIN_HEALTH_INTERVAL_MS));
    let timeout = Duration::from_millis(check.timeout_ms.max(1));
    let grace = Duration::from_millis(check.grace_period_ms);
    let (mut failures, mut last) = (0, None);
    loop {
        tokio::time::sleep(interval).await;
        let passed = check_once(check, env, dir, cgroup, timeout).await;
        let counts = started.elapsed() >= grace;
        if passed {
            failures = 0;
        } else if counts {
            failures += 1;
        }
        // A failure in the grace period is not news.
        if (passed || counts) && last != Some(passed) {
            report(TaskEvent::Health { healthy: passed });
            last = Some(passed);
        }
        if failures >= check.max_failures.max(1) {
            return failures;
        }
    }
}

/// One health check: passes when the command exits 0 within `timeout`.
async fn check_once(
    check: &HealthCheck,
    env: &[(String, String)],
    dir: &TaskDir,
    cgroup: &Cgroup,
    timeout: Duration,
) -> bool {
    let Some((program, args)) = check.argv.split_first() else {
        return false;
    };
    let Ok(entry) = cgroup.entry() else {
        return false;
    };
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir.sandbox())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    enter_on_exec(&mut command, entry);
    let Ok(mut child) = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
    else {
        return false;
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            false
        }
    }
}

/// The terminal event from how the task stopped.
fn verdict(
    task: &TaskInfo,
    stop: Option<Stop>,
    status: Option<ExitStatus>,
    oom_killed: bool,
) -> TaskEvent {
    let exit_code = status.and_then(|s| s.code());
    let end = |state, reason, message: String| TaskEvent::Ended {
        state,
        reason,
        message,
        exit_code,
    };
    match stop {
        Some(Stop::Killed) => end(
            TaskState::Killed,
            Reason::KilledByScheduler,
            "killed".into(),
        ),
        Some(Stop::Unhealthy(failures)) => end(
            TaskState::Killed,
            Reason::Unhealthy,
            format!("killed after {failures} failed health checks in a row"),
        ),
        Some(Stop::Timeout(after)) => end(
            TaskState::Failed,
            Reason::Timeout,
            format!("still running after {after:?}"),
        ),
        None if oom_killed && !status.is_some_and(|s| s.success()) => end(
            TaskState::Failed,
            Reason::MemoryLimit,
            format!(
                "the kernel's OOM killer stopped the task at its memory limit ({} MiB)",
                task.resources.mem_mib()
            ),
        ),
        None => match status {
            Some(s) if s.success() => TaskEvent::Finished {
                output: Vec::new(),
                exit_code: Some(0),
            },
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => end(
                    TaskState::Failed,
                    Reason::NonZeroExit,
                    format!("exited with code {code}"),
                ),
                (None, Some(signal)) => end(
                    TaskState::Failed,
                    Reason::TaskFailed,
                    format!(
                        "killed by {}",
                        Signal::try_from(signal)
                            .map_or_else(|_| signal.to_string(), |s| s.to_string())
                    ),
                ),
                (None, None) => end(TaskState::Failed, Reason::TaskFailed, format!("{s}")),
            },
            None => end(
                TaskState::Failed,
                Reason::TaskFailed,
                "the program's exit status is lost".into(),
            ),
        },
    }
}
