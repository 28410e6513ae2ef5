//! `stoa bench failover`: three masters on an etcd of their own, N agents
//! (each the real agent core over its own QUIC connection, held many to
//! this process, their executors simulated: a launched task runs until
//! the end of the bench), and a framework with a task on every agent.
//! Each round stops the leader (SIGKILL, or SIGTERM with `--graceful`)
//! and times, from the stop: (a) a new leader elected, (b) every agent
//! registered with it, (c) the framework's first offer from it. The
//! stopped master comes back as a standby before the next round.

use crate::up::LocalCluster;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use stoa_agent::core::{Action, Agent, TaskEvent};
use stoa_client::{ClientConfig, SchedulerSession};
use stoa_master::registry::etcd::{EtcdSpec, EtcdStore, EtcdTimings};
use stoa_proto::{
    AgentInfo, Artifact, Attributes, Event, FrameworkInfo, MasterToAgent, TaskId, TaskInfo,
    TaskKind, TaskLimits, Time,
};
use stoa_transport::{ALPN_AGENT, Identity, Masters};
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Agents held by this process.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Leaders stopped, one per round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Stop the leader with SIGTERM (it resigns) instead of SIGKILL.
    #[arg(long)]
    graceful: bool,
    /// Directory for the cluster's state (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

/// One round's times from the leader's stop.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Round {
    elected_ms: f64,
    agents_back_ms: f64,
    first_offer_ms: f64,
}

pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.agents > 0, "--agents must be at least 1");
    let temp = tempfile::tempdir()?;
    let dir = match &args.dir {
        Some(d) => std::path::absolute(d)?,
        None => temp.path().to_path_buf(),
    };
    let per_agent = stoa_proto::Resources::new()
        .with_millicpus(1_000)
        .with_mem_mib(1_024);
    let mut cluster = LocalCluster::start(&dir, 3, 0, "127.0.0.1:0".parse()?, &per_agent).await?;
    let result = measure(&args, &mut cluster).await;
    cluster.stop().await;
    let rounds = result?;
    report(&args, &rounds)
}

async fn measure(args: &FailoverArgs, cluster: &mut LocalCluster) -> anyhow::Result<Vec<Round>> {
    let masters: Masters = cluster.addr.parse().map_err(anyhow::Error::msg)?;
    let etcd = EtcdStore::open(
        &EtcdSpec {
            endpoints: vec![cluster.etcd_endpoint().context("no etcd")?],
            prefix: "/stoa".into(),
        },
        EtcdTimings::default(),
    )
    .await?;
    let progress = crate::bench::progress(args.agents as u64, "agents");
    let FakeAgents {
        handles: agents,
        registered: registrations,
        epoch,
    } = FakeAgents::spawn(args.agents, &masters, &cluster.certs, "cpus:1;mem:1024")?;
    let all_since = |since: Instant| {
        let floor = u64::try_from(since.duration_since(epoch).as_micros()).unwrap_or(0);
        registrations
            .iter()
            .filter(|r| r.load(Ordering::Relaxed) > floor)
            .count()
    };
    while all_since(epoch) < args.agents {
        progress.set_position(all_since(epoch) as u64);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish_and_clear();
    // A framework with a task on every agent.
    let client = ClientConfig::new(masters.clone(), &cluster.certs);
    let mut info = FrameworkInfo::new("failover-bench", "bench".parse()?);
    info.failover_timeout_ms = 600_000;
    let mut session = SchedulerSession::subscribe(&client, info.clone()).await?;
    info.id = Some(session.framework_id().clone());
    let mut launched = 0;
    while launched < args.agents {
        let Some(Event::Offers { offers }) = session.next_event().await? else {
            continue;
        };
        for offer in offers {
            let task = TaskInfo {
                task_id: TaskId::new(format!("held-{launched}"))?,
                name: String::new(),
                resources: "cpus:0.1;mem:32".parse()?,
                kind: TaskKind::wasm(Artifact::inline(Vec::new()), Vec::new()),
                limits: TaskLimits::default(),
            };
            session.launch(vec![offer.id], vec![task]).await?;
            launched += 1;
        }
    }
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let leader: SocketAddr = etcd.leader().await?.context("no master leads")?.parse()?;
        let stopped = Instant::now();
        // Timed from the signal, not from the process's exit (a stopping
        // master lets its connections drain first).
        let stop = cluster.stop_master(leader, args.graceful);
        let elected = async {
            loop {
                if let Ok(Some(now)) = etcd.leader().await
                    && now != leader.to_string()
                {
                    return stopped.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let agents_back = async {
            while all_since(stopped) < args.agents {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stopped.elapsed()
        };
        let old = session;
        let first_offer = async {
            // The scheduler learns of the failover as a real one does: its
            // link ends (closed by the watch on the standbys, or timed
            // out), and it subscribes again.
            let mut old = old;
            while let Ok(Some(_)) = old.next_event().await {}
            drop(old);
            let mut session = loop {
                match SchedulerSession::subscribe(&client, info.clone()).await {
                    Ok(s) => break s,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            loop {
                if let Some(Event::Offers { .. }) = session.next_event().await? {
                    return anyhow::Ok((stopped.elapsed(), session));
                }
            }
        };
        let limit = Duration::from_secs(60);
        let (stopped_ok, elected, agents_back, offered) = tokio::time::timeout(limit, async {
            tokio::join!(stop, elected, agents_back, first_offer)
        })
        .await
        .context("the cluster did not recover within 60 s")?;
        stopped_ok?;
        let (first_offer, next) = offered?;
        session = next;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let r = Round {
            elected_ms: ms(elected),
            agents_back_ms: ms(agents_back),
            first_offer_ms: ms(first_offer),
        };
        if !args.json {
            eprintln!(
                "round {}: elected {:.0} ms, {} agents back {:.0} ms, first offer {:.0} ms",
                round + 1,
                r.elected_ms,
                args.agents,
                r.agents_back_ms,
                r.first_offer_ms
            );
        }
        rounds.push(r);
        cluster.restart_master(leader).await?;
    }
    for agent in agents {
        agent.abort();
    }
    Ok(rounds)
}

/// Agents held by this process, each the real agent core over its own
/// QUIC connection to the leader (one endpoint, one socket, for all).
pub(crate) struct FakeAgents {
    pub handles: Vec<tokio::task::JoinHandle<()>>,
    /// When each last registered (µs since `epoch`; 0 before the first).
    pub registered: Arc<Vec<AtomicU64>>,
    pub epoch: Instant,
}

impl FakeAgents {
    /// Starts `n` agents offering `resources` each, with the agent
    /// certificate in `certs`.
    pub(crate) fn spawn(
        n: usize,
        masters: &Masters,
        certs: &std::path::Path,
        resources: &str,
    ) -> anyhow::Result<FakeAgents> {
        let identity = Identity::load(certs, "agent")?;
        let tls = stoa_transport::client_config(&identity, ALPN_AGENT)?;
        let endpoint = stoa_transport::client_endpoint(masters.first())?;
        let registered = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let epoch = Instant::now();
        let handles = (0..n)
            .map(|i| {
                tokio::spawn(fake_agent(
                    i,
                    endpoint.clone(),
                    masters.clone(),
                    tls.clone(),
                    (registered.clone(), epoch),
                    resources.to_string(),
                ))
            })
            .collect();
        Ok(FakeAgents {
            handles,
            registered,
            epoch,
        })
    }
}

/// An agent offering `resources`: the real core over its own connection
/// to the leader, its executor simulated (a launched task runs until it
/// is killed). Stamps `registered[i]` (µs since `epoch`) at each
/// registration.
async fn fake_agent(
    i: usize,
    endpoint: quinn::Endpoint,
    masters: Masters,
    tls: quinn::ClientConfig,
    (registered, epoch): (Arc<Vec<AtomicU64>>, Instant),
    resources: String,
) {
    let info = AgentInfo {
        reservations: Vec::new(),
        hostname: format!("bench-{i}"),
        resources: resources.parse().unwrap_or_default(),
        attributes: Attributes::default(),
    };
    let now = move || Time::from_micros(u64::try_from(epoch.elapsed().as_micros()).unwrap_or(0));
    let mut core = Agent::new(info, None, 1 + (i as u64) * 1_000_000);
    let mut delays = stoa_transport::reconnect_delays();
    loop {
        let Ok((conn, mut sender, mut receiver)) =
            stoa_transport::connect_leader(&endpoint, &masters, tls.clone()).await
        else {
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
            continue;
        };
        delays = stoa_transport::reconnect_delays();
        stoa_transport::watch_leader(&endpoint, &masters, &tls, &conn);
        let (tx, mut rx) = mpsc::channel::<MasterToAgent>(256);
        let reader = tokio::spawn(async move {
            while let Ok(Some(msg)) = receiver.recv::<MasterToAgent>().await {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
        core.handle_connected(now());
        let mut was_registered = false;
        loop {
            while let Some(action) = core.poll_action() {
                match action {
                    Action::Launch { framework_id, task } => core.handle_task_event(
                        now(),
                        framework_id,
                        task.task_id,
                        TaskEvent::Running,
                    ),
                    Action::Kill {
                        framework_id,
                        task_id,
                    } => {
                        let killed = TaskEvent::ended(
                            stoa_proto::TaskState::Killed,
                            stoa_proto::Reason::KilledByScheduler,
                            "killed",
                        );
                        core.handle_task_event(now(), framework_id, task_id, killed)
                    }
                    _ => {}
                }
            }
            let out: Vec<_> = std::iter::from_fn(|| core.poll_transmit()).collect();
            if sender.send_many(out).await.is_err() {
                break;
            }
            if core.is_registered() && !was_registered {
                was_registered = true;
                let at = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                registered[i].store(at, Ordering::Relaxed);
            }
            let deadline = core
                .poll_timeout()
                .map(|t| epoch + Duration::from_micros(t.as_micros()));
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => core.handle_master_message(now(), msg),
                    None => break,
                },
                _ = sleep_until(deadline) => core.handle_timeout(now()),
            }
        }
        reader.abort();
        conn.close(stoa_transport::close::NORMAL, b"");
        core.handle_disconnected(now());
        // As the agent daemon does.
        let back_in = stoa_transport::leader::spread(stoa_transport::leader::AGENT_RETURN_SPREAD);
        tokio::time::sleep(back_in).await;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn report(args: &FailoverArgs, rounds: &[Round]) -> anyhow::Result<()> {
    let stats = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let p50 = v.get(v.len() / 2).copied().unwrap_or(0.0);
        let worst = v.last().copied().unwrap_or(0.0);
        (p50, worst)
    };
    let elected = stats(|r| r.elected_ms);
    let back = stats(|r| r.agents_back_ms);
    let offer = stats(|r| r.first_offer_ms);
    if args.json {
        let out = serde_json::json!({
            "agents": args.agents,
            "rounds": rounds,
            "stop": if args.graceful { "SIGTERM" } else { "SIGKILL" },
            "elected_ms": {"p50": elected.0, "worst": elected.1},
            "agents_back_ms": {"p50": back.0, "worst": back.1},
            "first_offer_ms": {"p50": offer.0, "worst": offer.1},
        });
        println!("{out}");
    } else {
        let how = if args.graceful { "SIGTERM" } else { "SIGKILL" };
        println!(
            "failover of 3 masters on etcd, {} agents, {} rounds, leader stopped by {how}",
            args.agents,
            rounds.len()
        );
        println!("                      p50        worst");
        for (what, (p50, worst)) in [
            ("new leader elected", elected),
            ("every agent back", back),
            ("framework's offer", offer),
        ] {
            println!("  {what:<18} {p50:>7.0} ms {worst:>9.0} ms");
        }
    }
    Ok(())
}
