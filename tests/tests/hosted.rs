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

/// Submits the service framework with `misbehave` sleeping as its
/// instances, `env` (KEY=VALUE) and `extra` flags.
fn submit_service(cluster: &Cluster, env: &[&str], extra: &[&str]) -> anyhow::Result<String> {
    let scheduler = path("service_scheduler", "service-scheduler")?;
    let task = format!("task={}", path("misbehave_task", "misbehave-task")?);
    let mut args = vec![
        scheduler.as_str(),
        "--artifact",
        &task,
        "--env",
        "SERVICE_INPUT=sleep:600000",
    ];
    for pair in env {
        args.extend(["--env", pair]);
    }
    args.extend(extra);
    submit(cluster, &args)
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
    // hello tears its framework down once its tasks finish; hosting ends.
    wait_frameworks(
        &cluster,
        "the framework's end",
        Duration::from_secs(60),
        |l| !l.iter().any(|f| f["id"] == id.as_str()),
    )?;
    let out = cluster.stoa(&["logs", "stoa-scheduler-1", "--stderr"])?;
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("hello: subscribed as"), "WASI stderr: {log}");
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
    // Two 0.5-cpu instances: the scheduler's agent (0.9 cpus left after
    // the scheduler's 0.1) holds one, another agent the other.
    let id = submit_service(
        &cluster,
        &["SERVICE_INSTANCES=2", "SERVICE_CPUS=0.5"],
        &["--failover-timeout", "120"],
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
    let log = wait_log_until(&cluster, "stoa-scheduler-2", |log| {
        log.contains("launching 1 instances")
    })?;
    assert_eq!(log.matches("adopted svc-").count(), 1, "{log}");
    assert!(log.contains("reconciled: 1 instances running"), "{log}");
    Ok(())
}

/// `stoa framework message ID TEXT` as the test client.
fn message(cluster: &Cluster, id: &str, text: &str) -> anyhow::Result<()> {
    let out = cluster.stoa(&["framework", "message", id, text])?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Polls a hosted scheduler's log until it holds every one of `needles`.
fn wait_log(cluster: &Cluster, instance: &str, needles: &[&str]) -> anyhow::Result<String> {
    wait_log_until(cluster, instance, |log| {
        needles.iter().all(|n| log.contains(n))
    })
}

/// Polls a hosted scheduler's log (stderr) until `done` holds for it.
fn wait_log_until(
    cluster: &Cluster,
    instance: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let out = cluster.stoa(&["logs", instance, "--stderr"])?;
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        if done(&log) {
            return Ok(log);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the log of {instance} is not there yet:\n{log}\n{}",
                cluster.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_hosted_service_scales_up_and_down_when_told() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let id = submit_service(&cluster, &["SERVICE_INSTANCES=1"], &[])?;
    let tasks = |n: u64| {
        let id = id.clone();
        move |l: &[serde_json::Value]| {
            l.iter()
                .any(|f| f["id"] == id.as_str() && f["tasks"] == n && f["connected"] == true)
        }
    };
    wait_frameworks(&cluster, "one instance", Duration::from_secs(30), tasks(1))?;
    message(&cluster, &id, "scale 4")?;
    wait_frameworks(
        &cluster,
        "four instances",
        Duration::from_secs(30),
        tasks(4),
    )?;
    message(&cluster, &id, "scale 2")?;
    wait_frameworks(&cluster, "two instances", Duration::from_secs(30), tasks(2))?;
    wait_log(
        &cluster,
        "stoa-scheduler-1",
        &["scaling from 1 to 4", "scaling from 4 to 2"],
    )?;
    // The same log, named by its framework rather than its instance.
    let by_framework = cluster.stoa(&["logs", "--framework", &id, "--stderr"])?;
    assert!(
        String::from_utf8_lossy(&by_framework.stdout).contains("scaling from 4 to 2"),
        "{}",
        String::from_utf8_lossy(&by_framework.stderr)
    );
    // Only the framework's principal may message it.
    let out = cluster.stoa(&[
        "framework",
        "message",
        &id,
        "scale 9",
        "--identity",
        "operator",
    ])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to principal client"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn an_unhealthy_service_instance_is_killed_after_its_grace_and_replaced() -> anyhow::Result<()> {
    let acls = r#"{"launch_native": [{"principals": ["client"]}]}"#;
    let cluster = Cluster::start_with_acls(1, "cpus:2;mem:1024", Some(acls))?;
    let scheduler = path("service_scheduler", "service-scheduler")?;
    // Healthy for a second, then sick; it ignores SIGTERM, so each kill
    // waits out the grace period.
    submit(
        &cluster,
        &[
            &scheduler,
            "--env",
            "SERVICE_COMMAND=trap '' TERM; sleep 1; touch sick; exec sleep 600",
            "--env",
            "SERVICE_HEALTH=test ! -e sick",
            "--env",
            "SERVICE_HEALTH_INTERVAL_MS=200",
            "--env",
            "SERVICE_HEALTH_FAILURES=2",
            "--env",
            "SERVICE_GRACE_MS=500",
            "--env",
            "SERVICE_INSTANCES=1",
        ],
    )?;
    let log = wait_log(
        &cluster,
        "stoa-scheduler-1",
        &["is healthy", "is unhealthy", "ended Killed (unhealthy)"],
    )?;
    assert!(log.contains("killed after 2 failed health checks"), "{log}");
    // Killed is not a failure of the program: replaced after the first
    // backoff, by a fresh instance.
    wait_log_until(&cluster, "stoa-scheduler-1", |log| {
        log.contains("replacing it") && log.matches("launching 1 instances").count() >= 2
    })?;
    Ok(())
}
