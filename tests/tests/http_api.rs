//! The operator API over HTTP against a real cluster: each endpoint,
//! tokens and what a tenant may see and do, the event stream and its
//! resumption, and the OpenAPI description checked against the routes.

use serde_json::{Value, json};
use stoa_proto::{Artifact, TaskState};
use stoa_tests::http::metric;
use stoa_tests::{Cluster, TestFramework, misbehave_wasm, sleeper};

/// The framework's principal: the name in the test client certificate.
const TENANT: &str = "client";

#[test]
fn the_api_shows_the_cluster_and_acts_on_it_as_each_caller_may() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:2;mem:1024")?;
    let operator = cluster.api("operator")?;
    let tenant = cluster.api(TENANT)?;
    let other = cluster.api("someone-else")?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut events = operator.events(None)?;

    // Without a token, or with a bad one: 401 and what to do.
    for api in [
        operator.with_token(None),
        operator.with_token(Some("stoa1.00.1.00")),
    ] {
        let (status, body) = api.get("/api/v1/summary")?;
        assert_eq!(status, 401, "{body}");
        assert!(
            body["hint"]
                .as_str()
                .is_some_and(|h| h.contains("stoa token create")),
            "{body}"
        );
    }
    // A tenant may not ask an operator's questions.
    let (status, body) = tenant.get("/api/v1/agents")?;
    assert_eq!(status, 403, "{body}");
    let (status, _) = tenant.send(
        "POST",
        "/api/v1/weights",
        json!({"role": "test", "weight": 3.0}),
    )?;
    assert_eq!(status, 403);

    let mut fw = rt.block_on(async {
        let digest = stoa_client::upload_artifact(&cluster.client(), &misbehave_wasm()?).await?;
        let mut fw = TestFramework::subscribe(&cluster.client(), "api").await?;
        let artifact = Artifact::Stored(digest);
        fw.launch_all((0..3).map(|i| sleeper(i, &artifact, 60_000)).collect())
            .await?;
        for i in 0..3 {
            fw.wait_for(&format!("sleeper-{i}"), TaskState::Running)
                .await?;
        }
        anyhow::Ok(fw)
    })?;
    let fw_id = fw.id().to_string();

    let summary = operator.ok("/api/v1/summary")?;
    assert_eq!(summary["agents"], 1, "{summary}");
    assert_eq!(summary["frameworks"], 1, "{summary}");
    assert_eq!(summary["tasks"], json!([["Running", 3]]), "{summary}");
    let agents = operator.ok("/api/v1/agents")?;
    assert_eq!(agents[0]["tasks"], 3, "{agents}");
    assert_eq!(agents[0]["connected"], true);
    assert_eq!(operator.ok("/api/v1/frameworks")?[0]["id"], fw_id);
    assert_eq!(tenant.ok("/api/v1/frameworks")?[0]["id"], fw_id);
    assert_eq!(
        operator.ok("/api/v1/offers")?.as_array().map(Vec::len),
        Some(
            operator.ok("/api/v1/summary")?["offers"]
                .as_u64()
                .unwrap_or(99) as usize
        )
    );

    // Tasks, filtered and paged.
    let page = tenant.ok("/api/v1/tasks?state=running&limit=2")?;
    assert_eq!(page["tasks"].as_array().map(Vec::len), Some(2), "{page}");
    let next = &page["next"];
    let rest = tenant.ok(&format!(
        "/api/v1/tasks?state=running&limit=2&after_framework={}&after_task={}",
        next["after_framework"].as_str().unwrap_or(""),
        next["after_task"].as_str().unwrap_or("")
    ))?;
    assert_eq!(rest["tasks"][0]["task_id"], "sleeper-2", "{rest}");
    assert_eq!(rest["next"], Value::Null);
    assert_eq!(
        tenant.ok(&format!("/api/v1/tasks?framework={fw_id}"))?["tasks"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    let (status, body) = tenant.get("/api/v1/tasks?state=sleepy")?;
    assert_eq!(status, 400, "{body}");

    // Another tenant learns nothing of them, and cannot end them.
    assert_eq!(other.ok("/api/v1/frameworks")?, json!([]));
    assert_eq!(other.ok("/api/v1/tasks")?["tasks"], json!([]));
    assert_eq!(other.ok("/api/v1/summary")?["tasks"], json!([]));
    let (status, body) = other.send("POST", "/api/v1/tasks/sleeper-0/kill", json!({}))?;
    assert_eq!(status, 404, "{body}");
    let (status, _) = other.bare("DELETE", &format!("/api/v1/frameworks/{fw_id}"))?;
    assert_eq!(status, 404);
    let (status, _) = other.get("/api/v1/tasks/sleeper-0/log")?;
    assert_eq!(status, 404);

    // The tenant kills its own task; its scheduler hears KILLED.
    let (status, body) = tenant.send("POST", "/api/v1/tasks/sleeper-0/kill", json!({}))?;
    assert_eq!(status, 200, "{body}");
    rt.block_on(fw.wait_for("sleeper-0", TaskState::Killed))?;

    // The operator's actions.
    let (status, body) = operator.send(
        "POST",
        "/api/v1/weights",
        json!({"role": "test", "weight": 3.0}),
    )?;
    assert_eq!(status, 200, "{body}");
    let roles = operator.ok("/api/v1/roles")?;
    let test = roles
        .as_array()
        .and_then(|r| r.iter().find(|r| r["role"] == "test"))
        .cloned();
    assert_eq!(
        test.map(|r| r["weight"].clone()),
        Some(json!(3.0)),
        "{roles}"
    );
    let (status, body) = operator.send(
        "POST",
        "/api/v1/quotas",
        json!({"role": "test", "limit": "cpus=1"}),
    )?;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");

    // The stream told of all of it, in order.
    events.until("leader_elected", |_| true)?;
    events.until("agent_registered", |_| true)?;
    events.until("framework_subscribed", |k| {
        k["framework_id"] == fw_id.as_str()
    })?;
    let killed = events.until("task_updated", |k| {
        k["task_id"] == "sleeper-0" && k["state"] == "Killed"
    })?;

    // Resumed after an event: what follows it, and no gap.
    let id = killed.id.clone().unwrap_or_default();
    let (run, seq) = id.rsplit_once('.').unwrap_or_default();
    let mut resumed = operator.events(Some(&id))?;
    let next = resumed.next_event()?;
    assert_eq!(
        next.id,
        Some(format!("{run}.{}", seq.parse::<u64>()? + 1)),
        "{next:?}"
    );
    // From another leader's run: told of the gap first.
    let mut stale = operator.events(Some("0.5"))?;
    assert_eq!(stale.next_event()?.event, "gap");
    // A tenant's stream carries its own framework's events, not agents'.
    let mut mine = tenant.events(None)?;
    let first = mine.next_event()?;
    assert_eq!(first.event, "leader_elected");
    let second = mine.next_event()?;
    assert_eq!(second.event, "framework_subscribed", "{second:?}");

    // Teardown by its tenant.
    let (status, body) = tenant.bare("DELETE", &format!("/api/v1/frameworks/{fw_id}"))?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(operator.ok("/api/v1/frameworks")?, json!([]));
    Ok(())
}

#[test]
fn the_openapi_description_names_every_route_and_each_answers() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:256")?;
    let operator = cluster.api("operator")?;
    let spec = operator.with_token(None).ok("/api/v1/openapi.json")?;
    assert_eq!(
        spec["openapi"].as_str().map(|v| v.starts_with("3.")),
        Some(true)
    );
    let paths = spec["paths"].as_object().cloned().unwrap_or_default();
    let documented: std::collections::BTreeSet<String> = paths.keys().cloned().collect();
    let routes: std::collections::BTreeSet<String> = stoa_master::http::ROUTES
        .iter()
        .map(|r| r.replace("{*", "{"))
        .collect();
    assert_eq!(documented, routes, "the description and the router differ");
    for (path, methods) in &paths {
        let concrete = path
            .replace("{framework_id}", "no-such-framework")
            .replace("{task_id}", "no-such-task");
        for method in methods
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_else(Vec::new)
        {
            if concrete.ends_with("/events") {
                continue; // a stream; tested above
            }
            // A body only where the route reads one.
            let method_name = method.to_uppercase();
            let takes_body = method_name == "POST" || concrete.ends_with("/reservations");
            let (status, body) = if takes_body {
                operator.send(&method_name, &concrete, json!({}))?
            } else {
                operator.bare(&method_name, &concrete)?
            };
            // Every documented route exists: a refusal names the thing,
            // never "no such endpoint".
            assert!(
                body["error"] != "no such endpoint" && status != 405,
                "{method} {path}: {status} {body}"
            );
            let documented: Vec<String> = methods[&method]["responses"]
                .as_object()
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default();
            assert!(
                documented.contains(&status.to_string()),
                "{method} {path} answered {status}, not among {documented:?}: {body}"
            );
        }
    }
    Ok(())
}

/// `stoa ps`, `stoa agents`, `stoa kill` and `stoa events` over the
/// operator channel's same calls.
#[test]
fn the_everyday_commands_list_kill_and_follow() -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let cluster = Cluster::start(1, "cpus:2;mem:1024")?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut events = cluster.stoa_child(&["events", "--json"])?;
    let mut fw = rt.block_on(async {
        let digest = stoa_client::upload_artifact(&cluster.client(), &misbehave_wasm()?).await?;
        let mut fw = TestFramework::subscribe(&cluster.client(), "cli").await?;
        fw.launch_all(vec![sleeper(0, &Artifact::Stored(digest), 60_000)])
            .await?;
        fw.wait_for("sleeper-0", TaskState::Running).await?;
        anyhow::Ok(fw)
    })?;
    let stdout = |out: std::process::Output| -> anyhow::Result<Value> {
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let ps = stdout(cluster.stoa(&["ps", "--json", "--state", "running"])?)?;
    assert_eq!(ps[0]["task_id"], "sleeper-0", "{ps}");
    let none = stdout(cluster.stoa(&["ps", "--json", "--state", "finished"])?)?;
    assert_eq!(none, json!([]));
    let bad = cluster.stoa(&["ps", "--state", "sleepy"])?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("give staging"));
    let agents = stdout(cluster.stoa(&["agents", "--json"])?)?;
    assert_eq!(agents[0]["tasks"], 1, "{agents}");
    let table = cluster.stoa(&["agents"])?;
    assert!(String::from_utf8_lossy(&table.stdout).contains("connected"));

    let killed = cluster.stoa(&["kill", "sleeper-0"])?;
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    rt.block_on(fw.wait_for("sleeper-0", TaskState::Killed))?;
    let again = cluster.stoa(&["kill", "sleeper-0"])?;
    assert!(
        !again.status.success(),
        "a task that ended cannot be killed"
    );

    // The follower saw the task go from RUNNING to KILLED.
    let lines = std::io::BufReader::new(
        events
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    );
    let mut states = Vec::new();
    for line in lines.lines() {
        let e: Value = serde_json::from_str(&line?)?;
        if e["task_id"] == "sleeper-0" {
            states.push(e["state"].as_str().unwrap_or("").to_string());
            if states.last().map(String::as_str) == Some("Killed") {
                break;
            }
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(states.contains(&"Running".to_string()), "{states:?}");
    Ok(())
}

#[test]
fn each_metric_family_moves_when_its_event_happens() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:2;mem:1024")?;
    let operator = cluster.api("operator")?;
    let scrape = || -> anyhow::Result<String> {
        let addr = std::fs::read_to_string(cluster.dir.path().join("master.http"))?;
        Ok(ureq::get(&format!("http://{addr}/metrics"))
            .call()?
            .into_string()?)
    };
    let before = scrape()?;
    assert_eq!(
        metric(&before, "stoa_master_leader_changes_total", &[]),
        Some(1.0),
        "{before}"
    );
    assert_eq!(
        metric(&before, "stoa_master_agents_connected", &[]),
        Some(1.0)
    );
    assert_eq!(metric(&before, "stoa_master_tasks_ended_total", &[]), None);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let digest = stoa_client::upload_artifact(&cluster.client(), &misbehave_wasm()?).await?;
        let artifact = Artifact::Stored(digest);
        let mut fw = TestFramework::subscribe(&cluster.client(), "metrics").await?;
        fw.launch_all(vec![
            sleeper(0, &artifact, 60_000),
            sleeper(1, &artifact, 10),
        ])
        .await?;
        fw.wait_for("sleeper-0", TaskState::Running).await?;
        fw.wait_for("sleeper-1", TaskState::Finished).await?;
        let during = scrape()?;
        assert_eq!(
            metric(&during, "stoa_master_schedulers_connected", &[]),
            Some(1.0),
            "{during}"
        );
        fw.kill("sleeper-0").await?;
        fw.wait_for("sleeper-0", TaskState::Killed).await?;
        anyhow::Ok(())
    })?;
    // The framework is gone (once the master has seen its connection
    // close); while it ran, its scheduler counted.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let now = scrape()?;
        if metric(&now, "stoa_master_schedulers_connected", &[]) == Some(0.0) {
            break now;
        }
        anyhow::ensure!(
            std::time::Instant::now() < give_up,
            "the scheduler still counts as connected:\n{now}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        metric(&after, "stoa_master_updates_unacknowledged", &[]),
        Some(0.0)
    );
    let at_least = |name: &str, labels: &[&str], n: f64| {
        let v = metric(&after, name, labels);
        assert!(
            v.is_some_and(|v| v >= n),
            "{name}{labels:?} = {v:?}:\n{after}"
        );
    };
    at_least("stoa_master_offers_total", &["outcome=\"sent\""], 1.0);
    at_least("stoa_master_offers_total", &["outcome=\"accepted\""], 1.0);
    at_least(
        "stoa_master_tasks_ended_total",
        &["state=\"finished\""],
        1.0,
    );
    at_least("stoa_master_tasks_ended_total", &["state=\"killed\""], 1.0);
    at_least("stoa_master_launch_latency_seconds_count", &[], 2.0);
    at_least("stoa_master_allocation_runs_total", &[], 1.0);
    at_least("stoa_master_allocation_run_seconds_count", &[], 1.0);
    at_least("stoa_master_registry_write_seconds_count", &[], 1.0);
    drop(operator);
    Ok(())
}
