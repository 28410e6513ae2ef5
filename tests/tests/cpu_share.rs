//! Two tenants through a real cluster: each framework's spinning task gets
//! the CPU it was offered, measured on its executor process, even with a
//! core left idle. (Its own test binary, so no other test competes for the
//! cores while it measures.)

use nix::time::{ClockId, clock_getcpuclockid, clock_gettime};
use nix::unistd::Pid;
use std::time::{Duration, Instant};
use stoa_proto::{Artifact, Reason, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState};
use stoa_tests::{Cluster, TestFramework, misbehave_wasm};

fn spinner(id: &str, cpus: &str, wasm: &[u8]) -> anyhow::Result<TaskInfo> {
    Ok(TaskInfo {
        task_id: TaskId::new(id)?,
        name: id.into(),
        resources: format!("cpus:{cpus};mem:64").parse()?,
        kind: TaskKind::wasm(Artifact::inline(wasm.to_vec()), b"spin".to_vec()),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some(5_000),
        },
    })
}

/// The CPU clock of a framework's executor process on agent 1.
fn executor_clock(cluster: &Cluster, fw: &TestFramework) -> anyhow::Result<ClockId> {
    let path = cluster
        .agent_dir(1)
        .join("executors")
        .join(fw.id().as_str())
        .join("pid");
    let pid: i32 = std::fs::read_to_string(&path)?.trim().parse()?;
    Ok(clock_getcpuclockid(Pid::from_raw(pid))?)
}

fn cpu_seconds(clock: ClockId) -> anyhow::Result<f64> {
    let t = clock_gettime(clock)?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

#[test]
fn competing_frameworks_each_get_the_cpu_they_were_offered() -> anyhow::Result<()> {
    // Two cores to offer, so the quarter-cpu tenant could take a whole one
    // if nothing held it back.
    let cluster = Cluster::start(1, "cpus:2;mem:2048")?;
    let wasm = misbehave_wasm()?;
    tokio::runtime::Runtime::new()?
        .block_on(async {
            let mut small = TestFramework::subscribe(&cluster.client(), "quarter").await?;
            let mut large = TestFramework::subscribe(&cluster.client(), "whole").await?;
            small
                .launch_all(vec![spinner("small", "0.25", &wasm)?])
                .await?;
            large
                .launch_all(vec![spinner("large", "1", &wasm)?])
                .await?;
            small.wait_for("small", TaskState::Running).await?;
            large.wait_for("large", TaskState::Running).await?;

            let clocks = [
                executor_clock(&cluster, &small)?,
                executor_clock(&cluster, &large)?,
            ];
            let before = [cpu_seconds(clocks[0])?, cpu_seconds(clocks[1])?];
            let start = Instant::now();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = [cpu_seconds(clocks[0])?, cpu_seconds(clocks[1])?];
            let wall = start.elapsed().as_secs_f64();
            let share = |i: usize| (after[i] - before[i]) / wall;
            let (quarter, whole) = (share(0), share(1));
            assert!(
                (0.15..=0.35).contains(&quarter),
                "the tenant offered 0.25 cpus used {quarter:.2} of a core"
            );
            assert!(
                whole > 0.7,
                "the tenant offered a whole core used only {whole:.2} of one"
            );

            for (fw, task) in [(&mut small, "small"), (&mut large, "large")] {
                let end = fw.wait_for(task, TaskState::Failed).await?;
                assert_eq!(end.reason, Some(Reason::Timeout));
            }
            small.teardown().await?;
            large.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}
