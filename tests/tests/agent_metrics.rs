//! The agent's Prometheus metrics (`stoa agent --metrics`) against a real
//! cluster: each family moves when its event happens, and status update
//! retries are counted on both sides.

use std::time::{Duration, Instant};
use stoa_proto::{
    Artifact, Event, FrameworkInfo, Operation, Sandbox, TaskId, TaskInfo, TaskKind, TaskLimits,
    TaskState, WasmTask,
};
use stoa_tests::http::metric;
use stoa_tests::{Cluster, TestFramework, misbehave_wasm};

/// A task of the misbehaving component doing `input`.
fn task(id: &str, input: &str, mem_mib: u64, limits: TaskLimits, artifact: &Artifact) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new(id).expect("valid id"),
        name: id.into(),
        resources: format!("cpus:0.1;mem:{mem_mib}")
            .parse()
            .expect("resources"),
        kind: TaskKind::Wasm(WasmTask {
            artifact: artifact.clone(),
            input: input.as_bytes().to_vec(),
            args: Vec::new(),
            env: Vec::new(),
            sandbox: Sandbox::Directory,
            files: Vec::new(),
        }),
        limits,
    }
}

struct Scraper(String);

impl Scraper {
    fn text(&self) -> anyhow::Result<String> {
        Ok(ureq::get(&format!("http://{}/metrics", self.0))
            .call()?
            .into_string()?)
    }

    /// Scrapes until `check` holds (executors report once a second).
    fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let give_up = Instant::now() + Duration::from_secs(15);
        loop {
            let text = self.text()?;
            if check(&text) {
                return Ok(text);
            }
            anyhow::ensure!(Instant::now() < give_up, "{what} never held:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A cluster of one agent serving its metrics, and the agent's scraper
/// (the directory holds its address file).
fn cluster_with_agent_metrics(
    resources: &str,
) -> anyhow::Result<(Cluster, Scraper, tempfile::TempDir)> {
    let files = tempfile::tempdir()?;
    let addr_file = files.path().join("agent.metrics");
    let addr_arg = addr_file.to_string_lossy().into_owned();
    let c = Cluster::start_with(
        1,
        resources,
        None,
        // No room in the compiled-code cache: a second program evicts the
        // first.
        &[
            "--metrics",
            "127.0.0.1:0",
            "--metrics-addr-file",
            &addr_arg,
            "--cache-mib",
            "0",
        ],
    )?;
    let agent = Scraper(std::fs::read_to_string(&addr_file)?.trim().to_string());
    Ok((c, agent, files))
}

fn at_least(text: &str, name: &str, labels: &[&str], n: f64) -> bool {
    metric(text, name, labels).is_some_and(|v| v >= n)
}

#[test]
fn each_agent_metric_family_moves_when_its_event_happens() -> anyhow::Result<()> {
    let (c, agent, _files) = cluster_with_agent_metrics("cpus:4;mem:4096")?;
    let before = agent.text()?;
    assert_eq!(
        metric(&before, "stoa_agent_executors", &[]),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        metric(&before, "stoa_agent_fetch_bytes_total", &[]),
        Some(0.0)
    );
    assert_eq!(metric(&before, "stoa_agent_tasks_ended_total", &[]), None);

    let rt = tokio::runtime::Runtime::new()?;
    let fw = rt.block_on(async {
        let digest = stoa_client::upload_artifact(&c.client(), &misbehave_wasm()?).await?;
        let artifact = Artifact::Stored(digest);
        let hello = Artifact::inline(stoa_tests::hello_wasm()?);
        let mut fw = TestFramework::subscribe(&c.client(), "metrics").await?;
        let limits = |fuel, timeout_ms| TaskLimits { fuel, timeout_ms };
        fw.launch_all(vec![
            task("sleeps", "sleep:60000", 32, limits(None, None), &artifact),
            task("greets", "world", 32, limits(None, None), &hello),
            task("finishes", "sleep:10", 32, limits(None, None), &artifact),
            task(
                "spins",
                "spin",
                32,
                limits(Some(5_000_000), None),
                &artifact,
            ),
            task("grows", "grow:256", 32, limits(None, None), &artifact),
            task(
                "waits",
                "sleep:60000",
                32,
                limits(None, Some(300)),
                &artifact,
            ),
        ])
        .await?;
        fw.wait_for("sleeps", TaskState::Running).await?;
        for (id, state) in [
            ("greets", TaskState::Finished),
            ("finishes", TaskState::Finished),
            ("spins", TaskState::Failed),
            ("grows", TaskState::Failed),
            ("waits", TaskState::Failed),
        ] {
            fw.wait_for(id, state).await?;
        }
        anyhow::Ok(fw)
    })?;
    // While one runs: an executor, its task, a pooled slot.
    agent.until("a running executor and pool slot", |t| {
        metric(t, "stoa_agent_executors", &[]) == Some(1.0)
            && at_least(t, "stoa_agent_tasks", &[], 1.0)
            && at_least(t, "stoa_agent_wasm_pool_slots_in_use", &[], 1.0)
    })?;
    let after = agent.until("the executor's report", |t| {
        at_least(t, "stoa_agent_fuel_consumed_total", &[], 5_000_000.0)
    })?;
    for (name, labels) in [
        ("stoa_agent_task_limit_kills_total", &["limit=\"fuel\""][..]),
        ("stoa_agent_task_limit_kills_total", &["limit=\"memory\""]),
        ("stoa_agent_task_limit_kills_total", &["limit=\"timeout\""]),
        (
            "stoa_agent_tasks_ended_total",
            &["kind=\"wasm\"", "state=\"finished\""],
        ),
        ("stoa_agent_fetches_total", &["outcome=\"done\""]),
        ("stoa_agent_compile_cache_evictions_total", &[]),
    ] {
        assert!(
            at_least(&after, name, labels, 1.0),
            "{name}{labels:?}:\n{after}"
        );
    }
    assert!(
        at_least(&after, "stoa_agent_compile_cache_misses_total", &[], 2.0),
        "{after}"
    );
    assert!(
        at_least(&after, "stoa_agent_fetch_bytes_total", &[], 10_000.0),
        "{after}"
    );
    rt.block_on(fw.teardown())?;
    agent.until("no executor once its framework is gone", |t| {
        metric(t, "stoa_agent_wasm_pool_slots_in_use", &[]) == Some(0.0)
    })?;
    // Another framework's executor finds the last program compiled in
    // the cache (the one entry it has room for).
    rt.block_on(async {
        let mut fw = TestFramework::subscribe(&c.client(), "again").await?;
        let hello = Artifact::inline(stoa_tests::hello_wasm()?);
        let misbehave = Artifact::inline(misbehave_wasm()?);
        let none = TaskLimits::default();
        fw.launch_all(vec![
            task("hello-again", "world", 32, none, &hello),
            task("misbehave-again", "sleep:10", 32, none, &misbehave),
        ])
        .await?;
        for id in ["hello-again", "misbehave-again"] {
            fw.wait_for(id, TaskState::Finished).await?;
        }
        fw.teardown().await
    })?;
    agent.until("a hit in the compiled-code cache", |t| {
        at_least(t, "stoa_agent_compile_cache_hits_total", &[], 1.0)
    })?;
    Ok(())
}

/// A scheduler that does not acknowledge: its agent sends the update
/// again, and both the agent and the master count it.
#[test]
fn status_update_retries_are_counted_by_agent_and_master() -> anyhow::Result<()> {
    let (c, agent, _files) = cluster_with_agent_metrics("cpus:2;mem:1024")?;
    let master = Scraper(std::fs::read_to_string(c.dir.path().join("master.http"))?);
    let rt = tokio::runtime::Runtime::new()?;
    let finished_seen = rt.block_on(async {
        let artifact = Artifact::inline(misbehave_wasm()?);
        let info = FrameworkInfo::new("forgetful", "test".parse()?);
        let mut session = stoa_client::SchedulerSession::subscribe(&c.client(), info).await?;
        let mut finished = 0;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
        while finished < 2 {
            let event = tokio::time::timeout_at(give_up, session.next_event())
                .await
                .map_err(|_| anyhow::anyhow!("the end came {finished} times"))??
                .ok_or_else(|| anyhow::anyhow!("the master closed the connection"))?;
            match event {
                Event::Offers { offers } if finished == 0 => {
                    let t = task("once", "sleep:10", 32, TaskLimits::default(), &artifact);
                    session
                        .call(&stoa_proto::Call::Accept {
                            offer_ids: offers.iter().map(|o| o.id).collect(),
                            operations: vec![Operation::Launch { tasks: vec![t] }],
                            refuse_ms: Some(60_000),
                        })
                        .await?;
                }
                // Never acknowledged: it comes again, and the master
                // counts it as not yet acknowledged meanwhile.
                Event::Update { status, .. } if status.state == TaskState::Finished => {
                    finished += 1;
                    let text = master.text()?;
                    anyhow::ensure!(
                        metric(&text, "stoa_master_updates_unacknowledged", &[]) == Some(1.0),
                        "the end is not counted as unacknowledged:\n{text}"
                    );
                }
                _ => {}
            }
        }
        session.teardown().await?;
        anyhow::Ok(finished)
    })?;
    assert_eq!(finished_seen, 2);
    agent.until("the agent's retry count", |t| {
        at_least(t, "stoa_agent_status_update_retries_total", &[], 1.0)
    })?;
    master.until("the master's retry count", |t| {
        at_least(t, "stoa_master_status_update_retries_total", &[], 1.0)
    })?;
    Ok(())
}
