//! Cluster-hosted schedulers (`stoa submit`): the master runs a
//! framework's scheduler component on an agent, as the principal that
//! submitted it, and keeps it running.

use anyhow::{Context as _, bail};
use std::time::{Duration, Instant};
use stoa_tests::{Cluster, wasm_path};

fn path(file: &str, package: &str) -> anyhow::Result<String> {
    Ok(wasm_path(file, package)?.display().to_string())
}

/// `stoa frameworks --json`.
fn frameworks(cluster: &Cluster) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = cluster.stoa(&["frameworks", "--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls `stoa frameworks` until `done` holds for the list.
fn wait_frameworks(
    cluster: &Cluster,
    what: &str,
    limit: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let start = Instant::now();
    loop {
        let list = frameworks(cluster)?;
        if done(&list) {
            return Ok(list);
        }
        if start.elapsed() > limit {
            bail!(
                "{what} did not happen within {limit:?}; frameworks: {list:#?}\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `stoa submit` of `scheduler` with `args`; returns the framework id.
fn submit(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let out = cluster.stoa(&[&["submit"], args, &["--json"]].concat())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "submit failed: {stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(line["framework_id"]
        .as_str()
        .context("no framework_id")?
        .to_string())
}

#[test]
fn a_submitted_scheduler_runs_on_an_agent_until_its_framework_ends() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let scheduler = path("hello_wasm_scheduler", "hello-wasm-scheduler")?;
    let task = format!("task={}", path("hello_task", "hello-task")?);
    let id = submit(
        &cluster,
        &[&scheduler, "--artifact", &task, "--env", "HELLO_TASKS=12"],
    )?;
    // While it runs, operators see where; it subscribed as the submitter.
    let seen = wait_frameworks(
        &cluster,
        "the framework's listing",
        Duration::from_secs(30),
        |l| l.iter().any(|f| f["id"] == id.as_str()) || l.is_empty(),
    )?;
    if let Some(f) = seen.iter().find(|f| f["id"] == id.as_str()) {
        assert_eq!(f["principal"], "client", "{f}");
        assert!(f["hosted"]["launched"].as_u64() >= Some(1), "{f}");
    }
    // hello tears its framework down once its tasks finish; hosting ends.
    wait_frameworks(
        &cluster,
        "the framework's end",
        Duration::from_secs(60),
        |l| !l.iter().any(|f| f["id"] == id.as_str()),
    )?;
    let out = cluster.stoa(&["logs", "stoa-scheduler-1", "--stderr"])?;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("all 12 tasks finished"),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_hosted_scheduler_survives_the_loss_of_its_agent() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3, "cpus:1;mem:1024")?;
    let scheduler = path("service_scheduler", "service-scheduler")?;
    let task = format!("task={}", path("misbehave_task", "misbehave-task")?);
    // Two 0.5-cpu instances: the scheduler's agent (0.9 cpus left after
    // the scheduler's 0.1) holds one, another agent the other.
    let id = submit(
        &cluster,
        &[
            &scheduler,
            "--artifact",
            &task,
            "--env",
            "SERVICE_INPUT=sleep:600000",
            "--env",
            "SERVICE_INSTANCES=2",
            "--env",
            "SERVICE_CPUS=0.5",
            "--failover-timeout",
            "120",
        ],
    )?;
    let ours = |l: &[serde_json::Value]| l.iter().find(|f| f["id"] == id.as_str()).cloned();
    let before = wait_frameworks(
        &cluster,
        "two running instances",
        Duration::from_secs(30),
        |l| ours(l).is_some_and(|f| f["tasks"] == 2 && f["connected"] == true),
    )?;
    let host = ours(&before).context("listed")?["hosted"]["agent"]
        .as_str()
        .context("hosted on an agent")?
        .to_string();
    let lost = (1..=3)
        .find(|i| cluster.agent_id(*i).is_ok_and(|a| a == host))
        .context("the scheduler's agent is one of ours")?;
    cluster.lose_agent(lost)?;

    // A second instance starts elsewhere, as the same framework.
    let after = wait_frameworks(
        &cluster,
        "a new scheduler instance",
        Duration::from_secs(60),
        |l| {
            ours(l).is_some_and(|f| {
                f["hosted"]["launched"] == 2
                    && f["connected"] == true
                    && f["hosted"]["agent"].as_str().is_some_and(|a| a != host)
            })
        },
    )?;
    let f = ours(&after).context("listed")?;
    assert_eq!(f["principal"], "client", "{f}");
    assert_eq!(f["hosted"]["instance"], "stoa-scheduler-2", "{f}");

    // It reconciled: the instance on a surviving agent was adopted, not
    // launched again; only the one on the lost agent is replaced.
    let start = Instant::now();
    let log = loop {
        let out = cluster.stoa(&["logs", "stoa-scheduler-2", "--stderr"])?;
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        if log.contains("launching 1 instances") {
            break log;
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the new scheduler did not take over; its log:\n{log}\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(log.matches("adopted svc-").count(), 1, "{log}");
    assert!(log.contains("reconciled: 1 instances running"), "{log}");
    Ok(())
}
