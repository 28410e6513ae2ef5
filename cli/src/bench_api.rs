//! `stoa bench api`: the operator API with a cluster of 100,000 tasks. A
//! real master (as `stoa up` runs it) holds N agents (each the real agent
//! core over its own QUIC connection, many to this process, executors
//! simulated: a launched task runs until killed) and a framework whose
//! tasks fill them. Measured over HTTP, as the CLI and the UI call it:
//!
//! * a page of the task list (100 and 1,000 tasks, first and deep) and
//!   the summary: latency p50 / p99;
//! * the web UI's poll (summary, frameworks, roles, agents: what an open
//!   page asks each second): its latency, and the master's CPU time per
//!   poll, read from /proc before and after, beside the master's CPU at
//!   rest over the same span;
//! * the event stream: every task killed at once while one follower
//!   reads `/api/v1/events`: the events it got per second against the
//!   ends the framework got per second, and whether it fell behind (a
//!   `gap`).

use crate::bench_failover::FakeAgents;
use crate::up::LocalCluster;
use anyhow::{Context as _, bail};
use std::io::BufRead as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stoa_client::{ClientConfig, SchedulerSession};
use stoa_proto::{
    Artifact, Call, Event, FrameworkInfo, Resources, TaskId, TaskInfo, TaskKind, TaskLimits,
    TaskState,
};
use stoa_transport::Masters;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Tasks running in the cluster while the API is measured.
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// Agents they run on (each the real agent core, held by this process).
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Calls per latency figure.
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Directory for the cluster's state (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Latencies of one kind of call, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
struct Latency {
    call: String,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Figures {
    tasks: usize,
    agents: usize,
    latencies: Vec<Latency>,
    /// Master CPU per UI poll, and at rest per second.
    ui_poll_cpu_ms: f64,
    idle_cpu_ms_per_s: f64,
    /// Ends the framework heard per second killing every task with nobody
    /// following the event stream, and with one follower; the events the
    /// follower got per second.
    baseline_ends_per_s: f64,
    ends_per_s: f64,
    events_per_s: f64,
    events_seen: u64,
    follower_gap: bool,
}

pub async fn run(args: ApiArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.agents > 0 && args.tasks > 0,
        "--agents and --tasks must be above 0"
    );
    let temp = tempfile::tempdir()?;
    let dir = match &args.dir {
        Some(d) => std::path::absolute(d)?,
        None => temp.path().to_path_buf(),
    };
    let cluster =
        LocalCluster::start(&dir, 1, 0, "127.0.0.1:0".parse()?, &Resources::new()).await?;
    let result = measure(&args, &cluster).await;
    cluster.stop().await;
    report(&args, &result?)
}

async fn measure(args: &ApiArgs, cluster: &LocalCluster) -> anyhow::Result<Figures> {
    let masters: Masters = cluster.addr.parse().map_err(anyhow::Error::msg)?;
    let master_pid = cluster.master_pid(0).context("no master process")?;
    let http = cluster
        .http
        .first()
        .context("the master serves no API")?
        .clone();
    let token = crate::up::operator_token(cluster).await?;

    // Agents big enough for their share of the tasks.
    let per_agent = args.tasks.div_ceil(args.agents);
    let agent_resources = format!("cpus:{};mem:{}", per_agent, per_agent);
    let FakeAgents {
        handles: agents,
        registered,
        ..
    } = FakeAgents::spawn(args.agents, &masters, &cluster.certs, &agent_resources)?;
    let progress = crate::bench::progress(args.agents as u64, "agents");
    loop {
        let n = registered
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) > 0)
            .count();
        progress.set_position(n as u64);
        if n == args.agents {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish_and_clear();

    // The tasks, on whatever offers come, until all run.
    let client = ClientConfig::new(masters.clone(), &cluster.certs);
    let info = FrameworkInfo::new("api-bench", "bench".parse()?);
    let mut session = SchedulerSession::subscribe(&client, info).await?;
    fill(&mut session, "t", args.tasks).await?;

    // Latencies, over HTTP as the CLI and the UI call.
    let api = Api {
        base: format!("http://{http}"),
        token: token.clone(),
    };
    let deep = {
        // The page after half the tasks: its `next` is found by paging.
        let page = api.get_json(&format!("/api/v1/tasks?limit={}", args.tasks / 2))?;
        page["next"].clone()
    };
    let deep_query = format!(
        "/api/v1/tasks?limit=1000&after_framework={}&after_task={}",
        deep["after_framework"].as_str().unwrap_or_default(),
        deep["after_task"].as_str().unwrap_or_default()
    );
    let api_for = api.clone();
    let calls = args.calls;
    let latencies = tokio::task::spawn_blocking(move || {
        [
            ("summary", "/api/v1/summary".to_string()),
            ("tasks, first 100", "/api/v1/tasks?limit=100".to_string()),
            ("tasks, first 1,000", "/api/v1/tasks?limit=1000".to_string()),
            ("tasks, 1,000 from the middle", deep_query),
            ("frameworks", "/api/v1/frameworks".to_string()),
            ("agents", "/api/v1/agents".to_string()),
        ]
        .into_iter()
        .map(|(name, path)| api_for.latency(name, &path, calls))
        .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;

    // The UI's poll, and the master's CPU for it against its CPU at rest.
    let api_for = api.clone();
    let (ui_poll_cpu_ms, idle_cpu_ms_per_s, ui_latency) = tokio::task::spawn_blocking(move || {
        let rest = Duration::from_secs(3);
        let before = cpu_ms(master_pid)?;
        std::thread::sleep(rest);
        let idle = (cpu_ms(master_pid)? - before) / rest.as_secs_f64();
        let polls = calls.max(20);
        let mut took = Vec::with_capacity(polls);
        let before = cpu_ms(master_pid)?;
        for _ in 0..polls {
            let start = Instant::now();
            for path in [
                "/api/v1/summary",
                "/api/v1/frameworks",
                "/api/v1/roles",
                "/api/v1/agents",
            ] {
                api_for.get_json(path)?;
            }
            took.push(start.elapsed());
        }
        let spent = cpu_ms(master_pid)? - before;
        let elapsed: Duration = took.iter().sum();
        // Less what the master spends at rest over the same time.
        let per_poll = (spent - idle * elapsed.as_secs_f64()).max(0.0) / polls as f64;
        anyhow::Ok((per_poll, idle, percentiles("UI poll (4 calls)", &mut took)))
    })
    .await??;
    let mut latencies = latencies;
    latencies.push(ui_latency);

    // Killing every task, first with nobody following the event stream
    // (the baseline), then again, filled anew, with one follower.
    let baseline_ends_per_s = kill_all(&mut session, "t", args.tasks).await?;
    fill(&mut session, "u", args.tasks).await?;
    let seen = Arc::new(AtomicU64::new(0));
    let gap = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last_event = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let follower = {
        let (api, seen, gap, last_event) =
            (api.clone(), seen.clone(), gap.clone(), last_event.clone());
        std::thread::spawn(move || api.follow_events(&seen, &gap, &last_event))
    };
    // Let the follower catch up with what is kept before the kills.
    let start_seen = wait_quiet(&seen).await;
    let killed_at = Instant::now();
    let ends_per_s = kill_all(&mut session, "u", args.tasks).await?;
    let end_seen = wait_quiet(&seen).await;
    let events_seen = end_seen - start_seen;
    let last = (*last_event.lock().unwrap_or_else(|p| p.into_inner())).unwrap_or(killed_at);
    let events_per_s = events_seen as f64 / last.duration_since(killed_at).as_secs_f64().max(1e-3);
    drop(follower);
    session.teardown().await?;
    for agent in agents {
        agent.abort();
    }
    Ok(Figures {
        tasks: args.tasks,
        agents: args.agents,
        latencies,
        ui_poll_cpu_ms,
        idle_cpu_ms_per_s,
        baseline_ends_per_s,
        ends_per_s,
        events_per_s,
        events_seen,
        follower_gap: gap.load(Ordering::Relaxed),
    })
}

/// The events that have come: the next one, and every one already here
/// (up to the session's burst), so they are answered in one write.
async fn burst(session: &mut SchedulerSession) -> anyhow::Result<Vec<Event>> {
    let first = session
        .next_event()
        .await?
        .context("the master closed the connection")?;
    let mut events = vec![first];
    while let Some(next) = session.ready_event()? {
        events.push(next);
    }
    Ok(events)
}

/// The acknowledgement an update asks for, if any.
fn acknowledgement(
    status: stoa_proto::TaskStatus,
    ack: Option<stoa_proto::UpdateId>,
) -> Option<Call> {
    Some(Call::Acknowledge {
        agent_id: status.agent_id?,
        task_id: status.task_id,
        update_id: ack?,
    })
}

/// Launches `n` tasks named `<prefix><i>` on whatever offers come, and
/// waits until all run.
async fn fill(session: &mut SchedulerSession, prefix: &str, n: usize) -> anyhow::Result<()> {
    let progress = crate::bench::progress(n as u64, "tasks running");
    // Offers again, after a kill_all.
    session.call(&Call::Revive).await?;
    let (mut launched, mut running) = (0usize, 0usize);
    while running < n {
        let mut calls = Vec::new();
        for event in burst(session).await? {
            match event {
                Event::Offers { offers } => {
                    for offer in offers {
                        let fit = (offer.resources.millicpus() / 1000) as usize;
                        let take = fit.min(n - launched);
                        let tasks: Vec<TaskInfo> = (launched..launched + take)
                            .map(|i| task(prefix, i))
                            .collect::<anyhow::Result<_>>()?;
                        launched += take;
                        calls.push(Call::Accept {
                            offer_ids: vec![offer.id],
                            operations: vec![stoa_proto::Operation::Launch { tasks }],
                            refuse_ms: None,
                        });
                    }
                }
                Event::Update { status, ack } => {
                    if status.state == TaskState::Running {
                        running += 1;
                    }
                    calls.extend(acknowledgement(status, ack));
                }
                _ => {}
            }
        }
        progress.set_position(running as u64);
        session.calls(calls).await?;
    }
    progress.finish_and_clear();
    Ok(())
}

/// Kills the `n` tasks named `<prefix><i>` at once; returns the ends the
/// framework heard per second.
async fn kill_all(session: &mut SchedulerSession, prefix: &str, n: usize) -> anyhow::Result<f64> {
    // No offers meanwhile: what the kills free waits for the next fill.
    session.call(&Call::Suppress).await?;
    let killed_at = Instant::now();
    session
        .calls((0..n).map(|i| Call::Kill {
            task_id: TaskId::new(format!("{prefix}{i}")).expect("a valid id"),
        }))
        .await?;
    let (mut ended, mut last_end) = (0usize, killed_at);
    let give_up = killed_at + Duration::from_secs(120);
    while ended < n {
        let events = tokio::time::timeout_at(give_up.into(), burst(session))
            .await
            .context("the kills did not all end within 120 s")??;
        let mut calls = Vec::new();
        for event in events {
            match event {
                Event::Update { status, ack } => {
                    if status.state.is_terminal() {
                        ended += 1;
                        last_end = Instant::now();
                    }
                    calls.extend(acknowledgement(status, ack));
                }
                // Made before the suppression took hold.
                Event::Offers { offers } => calls.push(Call::Decline {
                    offer_ids: offers.iter().map(|o| o.id).collect(),
                    refuse_ms: Some(0),
                }),
                _ => {}
            }
        }
        session.calls(calls).await?;
    }
    Ok(ended as f64 / last_end.duration_since(killed_at).as_secs_f64().max(1e-3))
}

fn task(prefix: &str, i: usize) -> anyhow::Result<TaskInfo> {
    Ok(TaskInfo {
        task_id: TaskId::new(format!("{prefix}{i}"))?,
        name: String::new(),
        resources: Resources::new().with_millicpus(1000).with_mem_mib(1),
        kind: TaskKind::wasm(Artifact::inline(Vec::new()), Vec::new()),
        limits: TaskLimits::default(),
    })
}

/// Waits until the follower's count stops moving for half a second.
async fn wait_quiet(seen: &AtomicU64) -> u64 {
    let mut last = seen.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = seen.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        last = now;
    }
}

/// A process's CPU time (user and system) in milliseconds, from
/// `/proc/PID/stat`.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("a malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("a short stat")?.parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name), in
    // clock ticks of USER_HZ, which Linux fixes at 100 for /proc.
    Ok((ticks(11)? + ticks(12)?) * 10.0)
}

fn percentiles(call: &str, took: &mut [Duration]) -> Latency {
    took.sort();
    let at = |q: f64| {
        let i = ((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1));
        took.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Latency {
        call: call.to_string(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

#[derive(Debug, Clone)]
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let reply = ureq::get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        Ok(reply.into_json()?)
    }

    fn latency(&self, name: &str, path: &str, calls: usize) -> anyhow::Result<Latency> {
        let mut took = Vec::with_capacity(calls);
        for _ in 0..calls.max(1) {
            let start = Instant::now();
            self.get_json(path)?;
            took.push(start.elapsed());
        }
        Ok(percentiles(name, &mut took))
    }

    /// Reads the event stream until the process ends, counting events.
    fn follow_events(
        &self,
        seen: &AtomicU64,
        gap: &std::sync::atomic::AtomicBool,
        last: &std::sync::Mutex<Option<Instant>>,
    ) -> anyhow::Result<()> {
        let reply = ureq::get(&format!("{}/api/v1/events", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .map_err(|e| anyhow::anyhow!("GET /api/v1/events: {e}"))?;
        let reader = std::io::BufReader::new(reply.into_reader());
        for line in reader.lines() {
            let line = line?;
            if line == "event: gap" {
                gap.store(true, Ordering::Relaxed);
            }
            if line.starts_with("data:") {
                seen.fetch_add(1, Ordering::Relaxed);
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
        }
        bail!("the event stream ended")
    }
}

fn report(args: &ApiArgs, f: &Figures) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(f)?);
        return Ok(());
    }
    let build = if cfg!(debug_assertions) {
        "a debug build: measure a release one"
    } else {
        "release build"
    };
    println!(
        "operator API with {} tasks running on {} agents (one master, {build})",
        f.tasks, f.agents
    );
    println!("  {:<32} {:>9} {:>9}", "call", "p50", "p99");
    for l in &f.latencies {
        println!("  {:<32} {:>6.2} ms {:>6.2} ms", l.call, l.p50_ms, l.p99_ms);
    }
    println!(
        "  master CPU per UI poll: {:.2} ms (at rest: {:.1} ms per second)",
        f.ui_poll_cpu_ms, f.idle_cpu_ms_per_s
    );
    println!(
        "  kill every task, nobody following the events: ends {:.0}/s to the framework",
        f.baseline_ends_per_s
    );
    println!(
        "  kill every task, one follower: ends {:.0}/s to the framework, events {:.0}/s to the follower ({} events{})",
        f.ends_per_s,
        f.events_per_s,
        f.events_seen,
        if f.follower_gap { ", with a gap" } else { "" }
    );
    Ok(())
}
