//! Native command tasks through a real cluster, in this host's real
//! cgroups: sandbox, logs and exit codes; OOM, pids and cpu limits; a kill
//! that takes down a whole process tree; an agent restart; the ACL.

use nix::time::{clock_getcpuclockid, clock_gettime};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};
use stoa_agent::cgroups::{Cgroup, Cgroups, Hierarchy, default_root};
use stoa_proto::{
    CommandTask, HealthCheck, Reason, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState,
};
use stoa_tests::{Cluster, TestFramework};

/// The test client's certificate is `client`; only it may run natively.
const ACLS: &str = r#"{"launch_native": [{"principals": ["client"]}]}"#;

fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with_acls(1, "cpus:2;mem:2048", Some(ACLS))
}

fn command(id: &str, resources: &str, script: &str) -> anyhow::Result<TaskInfo> {
    let mut command = CommandTask::new(["/bin/sh", "-c", script]);
    command.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    Ok(TaskInfo {
        task_id: TaskId::new(id)?,
        name: id.into(),
        resources: resources.parse()?,
        kind: TaskKind::Command(command),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some(60_000),
        },
    })
}

fn with(mut task: TaskInfo, edit: impl FnOnce(&mut CommandTask)) -> TaskInfo {
    if let TaskKind::Command(command) = &mut task.kind {
        edit(command);
    }
    task
}

/// The cgroup the agent made for `task` (it need not exist any more).
fn task_cgroup(cluster: &Cluster, fw: &TestFramework, task: &str) -> anyhow::Result<Cgroup> {
    let agent = cluster.agent_dir(1);
    let hierarchy = Hierarchy::detect().map_err(anyhow::Error::msg)?;
    let cgroups = Cgroups::new(hierarchy, &default_root(&agent), agent.join("cgroups"))?;
    Ok(cgroups.open(fw.id().as_str(), &format!("task-{task}")))
}

fn cgroup_dir(cgroup: &Cgroup) -> String {
    match cgroup.paths() {
        stoa_proto::executor::CgroupPaths::V2(dir) => dir.clone(),
        stoa_proto::executor::CgroupPaths::V1 { pids, .. } => pids.clone(),
    }
}

async fn procs_at_least(cgroup: &Cgroup, n: usize) -> anyhow::Result<Vec<i32>> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = cgroup.procs()?;
        if procs.len() >= n {
            return Ok(procs);
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the task has {} processes, waited for {n}",
            procs.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The agent removes a task's cgroup once the task ended.
async fn removed(cgroup: &Cgroup) -> anyhow::Result<()> {
    let dir = cgroup_dir(cgroup);
    let until = Instant::now() + Duration::from_secs(10);
    while Path::new(&dir).exists() {
        anyhow::ensure!(Instant::now() < until, "{dir} is still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie waits for a parent outside the task to reap it.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

#[test]
fn a_command_runs_in_its_sandbox_with_its_logs_and_exit_code() -> anyhow::Result<()> {
    let cluster = cluster()?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "native").await?;
            let script = "pwd; echo \"HOME=${HOME:-unset}\"; cat; echo oops >&2; exit 3";
            let mut failing = command("fails", "cpus:0.1;mem:64", script)?;
            failing = with(failing, |c| c.input = b"from stdin\n".to_vec());
            let fine = command("works", "cpus:0.1;mem:64", "echo fine > here; cat here")?;
            let missing = with(command("missing", "cpus:0.1;mem:64", "")?, |c| {
                c.argv = vec!["/no/such/program".into()];
            });
            fw.launch_all(vec![failing, fine, missing]).await?;

            let failed = fw.wait_for("fails", TaskState::Failed).await?;
            assert_eq!(failed.reason, Some(Reason::NonZeroExit));
            assert_eq!(failed.exit_code, Some(3));
            let out = cluster.stoa(&["logs", "fails"])?;
            let sandbox = cluster
                .agent_dir(1)
                .join("tasks")
                .join(fw.id().as_str())
                .join("fails")
                .join("sandbox")
                .canonicalize()?;
            assert_eq!(
                String::from_utf8(out.stdout)?,
                format!("{}\nHOME=unset\nfrom stdin\n", sandbox.display()),
                "runs in its sandbox, with only the environment it was given"
            );
            let err = cluster.stoa(&["logs", "fails", "--stderr"])?;
            assert_eq!(String::from_utf8(err.stdout)?, "oops\n");

            let done = fw.wait_for("works", TaskState::Finished).await?;
            assert_eq!(done.exit_code, Some(0));
            let out = cluster.stoa(&["logs", "works"])?;
            assert_eq!(String::from_utf8(out.stdout)?, "fine\n");

            let missing = fw.wait_for("missing", TaskState::Failed).await?;
            assert!(
                missing.message.contains("/no/such/program"),
                "{}",
                missing.message
            );
            for task in ["fails", "works", "missing"] {
                removed(&task_cgroup(&cluster, &fw, task)?).await?;
            }
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn over_its_memory_a_task_fails_with_memory_limit() -> anyhow::Result<()> {
    // The agent counts the kernel's kill in its metrics.
    let files = tempfile::tempdir()?;
    let metrics_file = files.path().join("agent.metrics");
    let metrics_arg = metrics_file.to_string_lossy().into_owned();
    let cluster = Cluster::start_with(
        1,
        "cpus:2;mem:2048",
        Some(ACLS),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--metrics-addr-file",
            &metrics_arg,
        ],
    )?;
    let oom_kills = || -> anyhow::Result<Option<f64>> {
        let addr = std::fs::read_to_string(&metrics_file)?;
        let text = ureq::get(&format!("http://{}/metrics", addr.trim()))
            .call()?
            .into_string()?;
        Ok(stoa_tests::http::metric(
            &text,
            "stoa_agent_cgroup_oom_kills_total",
            &[],
        ))
    };
    assert_eq!(oom_kills()?, Some(0.0));
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "hungry").await?;
            // `tail` keeps a line with no end in memory: 512 MiB in 64.
            let task = command(
                "hungry",
                "cpus:0.5;mem:64",
                "head -c 536870912 /dev/zero | tail > /dev/null",
            )?;
            fw.launch_all(vec![task]).await?;
            let failed = fw.wait_for("hungry", TaskState::Failed).await?;
            assert_eq!(failed.reason, Some(Reason::MemoryLimit), "{failed:?}");
            assert!(failed.message.contains("64 MiB"), "{}", failed.message);
            assert_eq!(oom_kills()?, Some(1.0));
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_fork_bomb_is_held_at_the_pids_limit_and_cleaned_up() -> anyhow::Result<()> {
    let cluster = cluster()?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "bomb").await?;
            let bomb = "b() { b | b & }; b; exec sleep 6";
            let task = with(command("bomb", "cpus:0.5;mem:256", bomb)?, |c| {
                c.max_pids = Some(40);
            });
            fw.launch_all(vec![task]).await?;
            fw.wait_for("bomb", TaskState::Running).await?;
            let cgroup = task_cgroup(&cluster, &fw, "bomb")?;
            // Processes come and go too fast to list: count what the pids
            // controller charges (exiting ones included).
            let current = Path::new(&cgroup_dir(&cgroup)).join("pids.current");
            // Sample until the bomb has pressed on its limit for a while (a
            // loaded machine forks slowly), for at most 3 s by the clock
            // (not by a count of samples, which a loaded machine stretches
            // past the task's end): it runs 6.
            let (mut most, mut near) = (0, 0);
            let until = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < until {
                let now: usize = std::fs::read_to_string(&current)?.trim().parse()?;
                most = most.max(now);
                near += usize::from(now >= 30);
                if near >= 25 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(most <= 40, "{most} processes under a limit of 40");
            assert!(most >= 30, "the bomb never neared its limit: {most}");
            // The shell's own end leaves the bomb running: the task's end
            // takes it down.
            fw.wait_for("bomb", TaskState::Finished).await?;
            removed(&cgroup).await?;
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_cpu_quota_throttles_a_busy_task() -> anyhow::Result<()> {
    let cluster = cluster()?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "busy").await?;
            let mut task = command("busy", "cpus:0.2;mem:64", "while :; do :; done")?;
            task.limits.timeout_ms = Some(4_000);
            fw.launch_all(vec![task]).await?;
            fw.wait_for("busy", TaskState::Running).await?;
            let cgroup = task_cgroup(&cluster, &fw, "busy")?;
            let pid = procs_at_least(&cgroup, 1).await?[0];
            let clock = clock_getcpuclockid(Pid::from_raw(pid))?;
            let seconds = || -> anyhow::Result<f64> {
                let t = clock_gettime(clock)?;
                Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
            };
            let (cpu0, wall0) = (seconds()?, Instant::now());
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let share = (seconds()? - cpu0) / wall0.elapsed().as_secs_f64();
            assert!(
                share <= 0.3,
                "a task given 0.2 cpus used {share:.2} of a core"
            );
            assert!(share >= 0.05, "the busy task barely ran: {share:.2}");
            assert!(cgroup.throttled_periods() > 0, "never throttled");
            let end = fw.wait_for("busy", TaskState::Failed).await?;
            assert_eq!(end.reason, Some(Reason::Timeout));
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_kill_takes_down_the_whole_process_tree() -> anyhow::Result<()> {
    let cluster = cluster()?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "stubborn").await?;
            // Everything ignores SIGTERM, and one process left the session.
            let script = "trap '' TERM; sleep 100 & sleep 100 & (setsid sleep 100 &); wait";
            let task = with(command("tree", "cpus:0.1;mem:64", script)?, |c| {
                c.kill_grace_ms = Some(500);
            });
            fw.launch_all(vec![task]).await?;
            fw.wait_for("tree", TaskState::Running).await?;
            let cgroup = task_cgroup(&cluster, &fw, "tree")?;
            let procs = procs_at_least(&cgroup, 4).await?;

            let asked = Instant::now();
            fw.kill("tree").await?;
            let killed = fw.wait_for("tree", TaskState::Killed).await?;
            assert_eq!(killed.reason, Some(Reason::KilledByScheduler));
            assert!(
                asked.elapsed() >= Duration::from_millis(500),
                "SIGKILL came before the grace period ended"
            );
            for pid in &procs {
                assert!(dead(*pid), "process {pid} of a killed task survived");
            }
            removed(&cgroup).await?;
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_task_failing_its_health_check_is_reported_unhealthy_then_killed() -> anyhow::Result<()> {
    let cluster = cluster()?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "checked").await?;
            // Healthy for a second, then its check fails; it ignores
            // SIGTERM, so the kill waits out the grace period.
            let script = "trap '' TERM; sleep 1; touch sick; sleep 100";
            let task = with(command("svc", "cpus:0.1;mem:64", script)?, |c| {
                c.kill_grace_ms = Some(300);
                c.health_check = Some(HealthCheck {
                    argv: vec!["/bin/sh".into(), "-c".into(), "test ! -e sick".into()],
                    interval_ms: 200,
                    timeout_ms: 1_000,
                    grace_period_ms: 0,
                    max_failures: 3,
                });
            });
            fw.launch_all(vec![task]).await?;
            let mut seen = Vec::new();
            let end = loop {
                let status = fw.next_update().await?;
                if status.task_id.as_str() != "svc" {
                    continue;
                }
                if status.state.is_terminal() {
                    break status;
                }
                if status.state == TaskState::Running {
                    seen.push(status.healthy);
                }
            };
            assert_eq!(
                seen,
                [None, Some(true), Some(false)],
                "RUNNING, then each verdict once"
            );
            assert_eq!(end.state, TaskState::Killed, "{end:?}");
            assert_eq!(end.reason, Some(Reason::Unhealthy), "{end:?}");
            assert!(end.message.contains("3 failed health checks"), "{end:?}");
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_native_task_survives_an_agent_restart_once() -> anyhow::Result<()> {
    let mut cluster = cluster()?;
    let marks = cluster.dir.path().join("marks");
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "steady").await?;
            let task = with(
                command(
                    "steady",
                    "cpus:0.1;mem:64",
                    "echo $$ >> \"$MARKS\"; sleep 3",
                )?,
                |c| c.env.push(("MARKS".into(), marks.display().to_string())),
            );
            fw.launch_all(vec![task]).await?;
            fw.wait_for("steady", TaskState::Running).await?;
            let cgroup = task_cgroup(&cluster, &fw, "steady")?;
            // RUNNING can come before the shell has forked its `sleep`:
            // wait until the task's processes stop changing.
            let mut before = procs_at_least(&cgroup, 1).await?;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = cgroup.procs()?;
                if now == before {
                    break;
                }
                before = now;
            }

            cluster.kill_agent(1)?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.restart_agent(1, &[])?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            // Re-adopted: the restarted agent left its cgroup and processes be.
            assert_eq!(cgroup.procs()?, before, "the task's processes changed");

            fw.wait_for("steady", TaskState::Finished).await?;
            let started = std::fs::read_to_string(&marks)?;
            assert_eq!(started.lines().count(), 1, "started more than once");
            removed(&cgroup).await?;
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn only_frameworks_the_acl_allows_launch_native_tasks() -> anyhow::Result<()> {
    let cluster = cluster()?;
    stoa_transport::certs::issue(&cluster.certs, "tenant", &[])?;
    let marks = cluster.dir.path().join("tenant-ran");
    runtime()?
        .block_on(async {
            let mut client = cluster.client();
            client.identity = "tenant".into();
            let mut fw = TestFramework::subscribe(&client, "tenant").await?;
            let task = with(
                command("escape", "cpus:0.1;mem:64", "touch \"$MARKS\"")?,
                |c| c.env.push(("MARKS".into(), marks.display().to_string())),
            );
            fw.launch_all(vec![task]).await?;
            let refused = fw.wait_for("escape", TaskState::Error).await?;
            assert_eq!(refused.reason, Some(Reason::NotAuthorized));
            assert!(refused.message.contains("tenant"), "{}", refused.message);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!marks.exists(), "the refused task ran");
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

/// The memory and cpu cgroup directories a process is in (cgroup v1).
fn v1_cgroups_of(pid: i32) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let find = |controller: &str| {
        text.lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers) = (parts.next()?, parts.next()?);
                Some((controllers, parts.next()?))
            })
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .map(|(_, path)| path.to_string())
            .ok_or_else(|| anyhow::anyhow!("{pid} has no {controller} cgroup: {text}"))
    };
    Ok((find("memory")?, find("cpu")?))
}

#[test]
fn an_executor_is_contained_to_its_tasks_plus_its_overhead() -> anyhow::Result<()> {
    let cluster = cluster()?;
    let wasm = stoa_proto::Artifact::inline(stoa_tests::misbehave_wasm()?);
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "contained").await?;
            let mut task = command("sleepy", "cpus:0.5;mem:128", "")?;
            task.kind = TaskKind::wasm(wasm, b"sleep:2000".to_vec());
            fw.launch_all(vec![task]).await?;
            fw.wait_for("sleepy", TaskState::Running).await?;
            let pid_file = cluster
                .agent_dir(1)
                .join("executors")
                .join(fw.id().as_str())
                .join("pid");
            let pid: i32 = std::fs::read_to_string(pid_file)?.trim().parse()?;
            let (memory, cpu) = v1_cgroups_of(pid)?;
            let root = default_root(&cluster.agent_dir(1));
            let expected = format!("/{}/{}/executor-", root.display(), fw.id().as_str());
            assert!(memory.starts_with(&expected), "{memory}");
            let read = |controller: &str, path: &str, file: &str| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{file}"))
                    .map(|s| s.trim().to_string())
            };
            // The task's 0.5 cpus and 128 MiB, plus the default 0.5 cpus and
            // 256 MiB of overhead.
            assert_eq!(
                read("memory", &memory, "memory.limit_in_bytes")?,
                "402653184"
            );
            assert_eq!(read("cpu", &cpu, "cpu.cfs_quota_us")?, "100000");
            fw.wait_for("sleepy", TaskState::Finished).await?;
            // A while after its last task ends, the executor's CPU comes
            // back to its overhead; its memory stays.
            let until = Instant::now() + Duration::from_secs(10);
            while read("cpu", &cpu, "cpu.cfs_quota_us")? != "50000" {
                anyhow::ensure!(Instant::now() < until, "the executor's CPU never came down");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                read("memory", &memory, "memory.limit_in_bytes")?,
                "402653184"
            );
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_restarted_agent_removes_the_cgroups_it_made_and_only_those() -> anyhow::Result<()> {
    let mut cluster = cluster()?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "orphaned").await?;
            let task = command("orphan", "cpus:0.1;mem:64", "sleep 100 & sleep 100")?;
            fw.launch_all(vec![task]).await?;
            fw.wait_for("orphan", TaskState::Running).await?;
            let cgroup = task_cgroup(&cluster, &fw, "orphan")?;
            let procs = procs_at_least(&cgroup, 2).await?;

            // The agent and the executor both die: the task's processes
            // are left in their cgroup with nobody watching.
            let pid_file = cluster
                .agent_dir(1)
                .join("executors")
                .join(fw.id().as_str())
                .join("pid");
            let executor: i32 = std::fs::read_to_string(pid_file)?.trim().parse()?;
            cluster.kill_agent(1)?;
            nix::sys::signal::kill(Pid::from_raw(executor), nix::sys::signal::Signal::SIGKILL)?;
            // Someone else's cgroup beside the task's.
            let foreign = Path::new(&cgroup_dir(&cgroup))
                .with_file_name("not-the-agents")
                .to_path_buf();
            std::fs::create_dir(&foreign)?;

            cluster.restart_agent(1, &[])?;
            removed(&cgroup).await?;
            for pid in &procs {
                assert!(dead(*pid), "process {pid} of a lost task survived");
            }
            assert!(
                foreign.exists(),
                "the agent removed a cgroup it did not make"
            );
            std::fs::remove_dir(&foreign)?;
            if let Some(group) = foreign.parent() {
                std::fs::remove_dir(group)?;
            }
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn an_agent_without_cgroups_refuses_native_tasks() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(1, "cpus:2;mem:2048", Some(ACLS), &["--cgroups", "off"])?;
    let marks = cluster.dir.path().join("uncontained-ran");
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "uncontained").await?;
            let task = with(
                command("loose", "cpus:0.1;mem:64", "touch \"$MARKS\"")?,
                |c| c.env.push(("MARKS".into(), marks.display().to_string())),
            );
            let empty = with(command("empty", "cpus:0.1;mem:64", "")?, |c| c.argv.clear());
            fw.launch_all(vec![task, empty]).await?;
            let refused = fw.wait_for("loose", TaskState::Error).await?;
            assert_eq!(refused.reason, Some(Reason::IsolationUnavailable));
            assert!(
                refused.message.contains("--cgroups off"),
                "{}",
                refused.message
            );
            let invalid = fw.wait_for("empty", TaskState::Error).await?;
            assert_eq!(invalid.reason, Some(Reason::TaskInvalid));
            assert!(!marks.exists(), "the refused task ran");
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}
