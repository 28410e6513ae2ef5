//! Executors, artifacts, logs and sandboxes across real processes: a
//! master, agents, and the executor processes the agents start.

use std::time::{Duration, Instant};
use stoa_proto::{
    Artifact, Digest, Reason, Sandbox, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState, WasmTask,
};
use stoa_tests::{Cluster, TestFramework, cli_component_wasm, hello_wasm, misbehave_wasm};

const AGENT_RESOURCES: &str = "cpus:4;mem:4096";

fn task(id: &str, artifact: Artifact, input: &str, args: &[&str]) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new(id).expect("valid id"),
        name: id.into(),
        resources: "cpus:0.1;mem:64".parse().expect("valid resources"),
        kind: TaskKind::Wasm(WasmTask {
            artifact,
            input: input.as_bytes().to_vec(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            sandbox: Sandbox::Directory,
            files: Vec::new(),
        }),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some(60_000),
        },
    }
}

fn executor_pid(cluster: &Cluster, agent: usize, fw: &TestFramework) -> anyhow::Result<i32> {
    let path = cluster
        .agent_dir(agent)
        .join("executors")
        .join(fw.id().as_str())
        .join("pid");
    Ok(std::fs::read_to_string(&path)?.trim().parse()?)
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

#[test]
fn a_running_task_survives_an_agent_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, AGENT_RESOURCES)?;
    let sleeper = Artifact::inline(misbehave_wasm()?);
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "survivor").await?;
            fw.launch_all(vec![task("long", sleeper, "sleep:4000", &[])])
                .await?;
            fw.wait_for("long", TaskState::Running).await?;
            let pid = executor_pid(&cluster, 1, &fw)?;

            // The agent dies without a word; its executor does not.
            cluster.kill_agent(1)?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(alive(pid), "the executor died with its agent");
            cluster.restart_agent(1, &[])?;

            // The new agent finds the executor, and the task ends as it would have.
            let done = fw.wait_for("long", TaskState::Finished).await?;
            assert_eq!(done.output.as_deref(), Some(b"slept".as_slice()));
            assert_eq!(executor_pid(&cluster, 1, &fw)?, pid, "no second executor");
            let executors = std::fs::read_dir(cluster.agent_dir(1).join("executors"))?.count();
            assert_eq!(executors, 1);
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn one_frameworks_executor_crash_leaves_others_alone() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, AGENT_RESOURCES)?;
    let sleeper = Artifact::inline(misbehave_wasm()?);
    runtime()?
        .block_on(async {
            let mut a = TestFramework::subscribe(&cluster.client(), "tenant-a").await?;
            let mut b = TestFramework::subscribe(&cluster.client(), "tenant-b").await?;
            a.launch_all(vec![task("a1", sleeper.clone(), "sleep:3000", &[])])
                .await?;
            b.launch_all(vec![task("b1", sleeper, "sleep:3000", &[])])
                .await?;
            a.wait_for("a1", TaskState::Running).await?;
            b.wait_for("b1", TaskState::Running).await?;
            let (pa, pb) = (
                executor_pid(&cluster, 1, &a)?,
                executor_pid(&cluster, 1, &b)?,
            );
            assert_ne!(pa, pb, "each framework has its own executor");

            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pa),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let failed = a.wait_for("a1", TaskState::Failed).await?;
            assert_eq!(failed.reason, Some(Reason::ExecutorTerminated));
            let done = b.wait_for("b1", TaskState::Finished).await?;
            assert_eq!(done.output.as_deref(), Some(b"slept".as_slice()));
            assert!(alive(pb));
            a.teardown().await?;
            b.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

/// Uploads `wasm` with `stoa artifact put --json`; returns its digest.
fn upload(cluster: &Cluster, wasm: &[u8]) -> anyhow::Result<Digest> {
    let file = cluster.dir.path().join("upload.wasm");
    std::fs::write(&file, wasm)?;
    let out = cluster.stoa(&["artifact", "put", "--json", &file.to_string_lossy()])?;
    anyhow::ensure!(
        out.status.success(),
        "stoa artifact put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let digest: Digest = line["digest"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no digest in {line}"))?
        .parse()
        .map_err(anyhow::Error::msg)?;
    assert_eq!(digest, Digest::of(wasm));
    Ok(digest)
}

#[test]
fn artifacts_are_uploaded_once_and_fetched_by_agents() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, AGENT_RESOURCES)?;
    let wasm = hello_wasm()?;
    let digest = upload(&cluster, &wasm)?;
    // Uploading again is harmless.
    assert_eq!(upload(&cluster, &wasm)?, digest);
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "stored").await?;
            let tasks = (0..6)
                .map(|i| task(&format!("t{i}"), Artifact::Stored(digest), "stored", &[]))
                .collect();
            fw.launch_all(tasks).await?;
            for i in 0..6 {
                let done = fw.wait_for(&format!("t{i}"), TaskState::Finished).await?;
                assert_eq!(done.output.as_deref(), Some(b"hello, stored".as_slice()));
            }
            let missing = Digest::of(b"never uploaded");
            fw.launch_all(vec![task("ghost", Artifact::Stored(missing), "", &[])])
                .await?;
            let error = fw.wait_for("ghost", TaskState::Error).await?;
            assert_eq!(error.reason, Some(Reason::ArtifactUnavailable));
            assert!(
                error.message.contains("upload it first"),
                "{}",
                error.message
            );
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))?;
    let copies = (1..=2)
        .filter(|i| {
            cluster
                .agent_dir(*i)
                .join("artifacts")
                .join(hex(digest))
                .is_file()
        })
        .count();
    assert!(copies >= 1, "the agents keep what they fetched");
    Ok(())
}

/// Waits up to 15 s for `done`, failing with `what` if it never holds.
async fn eventually(done: impl Fn() -> bool, what: impl Fn() -> String) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(15), "{}", what());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn hex(d: Digest) -> String {
    d.to_string().trim_start_matches("sha256:").to_string()
}

#[test]
fn logs_can_be_read_and_followed_and_sandboxes_are_collected() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, AGENT_RESOURCES)?;
    cluster.restart_agent(1, &["--gc-delay", "2"])?;
    let cli = Artifact::inline(cli_component_wasm()?);
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "logger").await?;
            fw.launch_all(vec![
                task("ticker", cli.clone(), "", &["ticks", "8"]),
                task("echo", cli, "", &["echo", "one"]),
            ])
            .await?;
            fw.wait_for("ticker", TaskState::Running).await?;
            // Follow from while it runs to its end.
            let follow = cluster.stoa_child(&["logs", "ticker", "--follow"])?;
            let out = tokio::task::spawn_blocking(move || follow.wait_with_output()).await??;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let expected: String = (0..8).map(|i| format!("tick {i}\n")).collect();
            assert_eq!(String::from_utf8(out.stdout)?, expected);

            fw.wait_for("echo", TaskState::Finished).await?;
            let err = cluster.stoa(&["logs", "echo", "--stderr"])?;
            assert_eq!(String::from_utf8(err.stdout)?, "echoed 1 words\n");
            let unknown = cluster.stoa(&["logs", "nobody"])?;
            assert!(!unknown.status.success());
            assert!(String::from_utf8(unknown.stderr)?.contains("no task nobody"));

            // Once acknowledged and past the delay, the task's directory goes.
            let dir = cluster
                .agent_dir(1)
                .join("tasks")
                .join(fw.id().as_str())
                .join("echo");
            assert!(dir.join("stdout").is_file());
            eventually(
                || !dir.exists(),
                || format!("{} was not collected", dir.display()),
            )
            .await?;
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

/// `task` with no directory.
fn ephemeral(mut task: TaskInfo) -> TaskInfo {
    if let TaskKind::Wasm(wasm) = &mut task.kind {
        wasm.sandbox = Sandbox::Ephemeral;
    }
    task
}

#[test]
fn ephemeral_tasks_touch_no_files_and_fail_with_their_stderr() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, AGENT_RESOURCES)?;
    let misbehave = Artifact::inline(misbehave_wasm()?);
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "ephemeral").await?;
            let tasks = [("plain", "hi"), ("panics", "trap"), ("reads", "read:/etc")];
            fw.launch_all(
                tasks
                    .iter()
                    .map(|(id, input)| ephemeral(task(id, misbehave.clone(), input, &[])))
                    .collect(),
            )
            .await?;
            let done = fw.wait_for("plain", TaskState::Finished).await?;
            assert_eq!(done.output.as_deref(), Some(b"hi".as_slice()));
            // The panic message went to stderr, which no file keeps: its
            // end comes back in the failure.
            let panicked = fw.wait_for("panics", TaskState::Failed).await?;
            assert!(panicked.message.contains("asked to trap"), "{panicked:?}");
            // Nothing is preopened.
            let read = fw.wait_for("reads", TaskState::Failed).await?;
            assert!(read.message.contains("cannot read /etc"), "{read:?}");

            // No directory was made for any of them, nor spares for later.
            let tasks_dir = cluster.agent_dir(1).join("tasks").join(fw.id().as_str());
            let made: Vec<_> = std::fs::read_dir(&tasks_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(made.is_empty(), "{made:?} in {}", tasks_dir.display());
            let logs = cluster.stoa(&["logs", "plain"])?;
            assert!(!logs.status.success());
            let why = String::from_utf8(logs.stderr)?;
            assert!(why.contains("ephemeral"), "{why}");
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn past_the_count_the_oldest_finished_sandboxes_go_first() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, AGENT_RESOURCES)?;
    cluster.restart_agent(1, &["--gc-max-dirs", "3"])?;
    let cli = Artifact::inline(cli_component_wasm()?);
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "collected").await?;
            let tasks_dir = cluster.agent_dir(1).join("tasks").join(fw.id().as_str());
            let kept = || -> Vec<String> {
                let mut names: Vec<String> = std::fs::read_dir(&tasks_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // The executor's spare directories, not tasks'.
                    .filter(|name| !name.starts_with('.'))
                    .collect();
                names.sort();
                names
            };
            let trash = cluster.agent_dir(1).join("trash");
            // Two rounds, so that which directories are older is certain.
            for (i, round) in [0..5, 5..8].into_iter().enumerate() {
                let ids: Vec<String> = round.map(|n| format!("echo{n}")).collect();
                fw.launch_all(
                    ids.iter()
                        .map(|id| task(id, cli.clone(), "", &["echo", id]))
                        .collect(),
                )
                .await?;
                for id in &ids {
                    fw.wait_for(id, TaskState::Finished).await?;
                }
                eventually(
                    || kept().len() <= 3,
                    || format!("more than three sandboxes kept: {:?}", kept()),
                )
                .await?;
                if i == 0 {
                    // An operator clearing the trash by hand stops nothing:
                    // the second round still has to be collected.
                    let _ = std::fs::remove_dir_all(&trash);
                }
            }
            assert_eq!(kept(), ["echo5", "echo6", "echo7"]);
            // What was collected is deleted, not just moved aside.
            eventually(
                || std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none()),
                || "the trash was not emptied".to_string(),
            )
            .await?;
            let logs = cluster.stoa(&["logs", "echo7"])?;
            let out = String::from_utf8(logs.stdout)?;
            assert!(out.starts_with("echo7"), "{out}");
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_thousand_concurrent_tasks_on_one_agent() -> anyhow::Result<()> {
    const TASKS: usize = 1000;
    let cluster = Cluster::start(1, "cpus:16;mem:8192")?;
    let digest = upload(&cluster, &misbehave_wasm()?)?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "thousand").await?;
            let tasks = (0..TASKS)
                .map(|i| {
                    let mut t = task(
                        &format!("t{i}"),
                        Artifact::Stored(digest),
                        "sleep:6000",
                        &[],
                    );
                    t.resources = "cpus:0.01;mem:4".parse().expect("valid resources");
                    t
                })
                .collect();
            fw.launch_all(tasks).await?;
            let (mut running, mut most, mut finished) = (0usize, 0usize, 0usize);
            while finished < TASKS {
                let status = fw.next_update().await?;
                match status.state {
                    TaskState::Running => running += 1,
                    TaskState::Finished => {
                        running -= 1;
                        finished += 1;
                    }
                    TaskState::Starting => {}
                    other => anyhow::bail!("{} ended {other}: {status:?}", status.task_id),
                }
                most = most.max(running);
            }
            assert_eq!(most, TASKS, "all tasks ran at the same time");
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}
