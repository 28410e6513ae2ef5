//! `stoa bench`: end-to-end launch latency and throughput of trivial wasm
//! tasks through a real master, agent and scheduler on this machine, with
//! the bare-wasmtime instantiate rate measured in the same run as the
//! ceiling.
//!
//! Latency is ACCEPT sent → TASK_RUNNING seen by the scheduler, one task at
//! a time so nothing queues. Throughput is tasks finished per second while
//! the scheduler keeps every offer full.

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stoa_agent::exec::wasm::ceiling::Ceiling;
use stoa_client::{Calls, ClientConfig, SchedulerSession};
use stoa_proto::{
    Artifact, Digest, Event, FrameworkInfo, Offer, OfferId, Resources, Sandbox, TaskId, TaskInfo,
    TaskKind, TaskLimits, TaskState, TaskStatus, WasmTask,
};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Another benchmark than launches (default): `failover`, `api`.
    #[command(subcommand)]
    kind: Option<BenchKind>,
    /// The hello task component to launch.
    #[arg(long, default_value = "target/wasm32-wasip2/release/hello_task.wasm")]
    task: PathBuf,
    /// Launches timed one at a time, for latency.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Tasks launched as fast as offers allow, for throughput (enough for
    /// a few seconds: a shorter run is mostly start-up and varies).
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    /// What each task asks for. The default lets 200 trivial tasks run at
    /// once on this machine's agent (2 cpus), enough to keep both cores
    /// busy; with fewer at once, each slot's round trip (launch, run, end,
    /// offer again) bounds throughput instead. Its `cpus` is also the CPU
    /// share the task's wasm may use, so a tiny share slows a long task.
    #[arg(long, default_value = "cpus:0.01;mem:2")]
    task_resources: Resources,
    /// Whether each task gets a directory (`directory`) or runs with no
    /// files (`ephemeral`, as a trivial stateless task would be launched).
    #[arg(long, value_enum, default_value_t = SandboxArg::Ephemeral)]
    sandbox: SandboxArg,
    /// Directory for the cluster's state (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum BenchKind {
    /// Time a master failover: three masters on etcd, many agents, a
    /// framework; the leader stopped round after round.
    Failover(crate::bench_failover::FailoverArgs),
    /// The operator API with 100,000 tasks running: page latencies, the
    /// web UI's cost to the master, the event stream's rate.
    Api(crate::bench_api::ApiArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SandboxArg {
    Directory,
    Ephemeral,
}

impl From<SandboxArg> for Sandbox {
    fn from(arg: SandboxArg) -> Sandbox {
        match arg {
            SandboxArg::Directory => Sandbox::Directory,
            SandboxArg::Ephemeral => Sandbox::Ephemeral,
        }
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    match a.kind {
        Some(BenchKind::Failover(f)) => return crate::bench_failover::run(f).await,
        Some(BenchKind::Api(api)) => return crate::bench_api::run(api).await,
        None => {}
    }
    if a.samples == 0 || a.tasks == 0 {
        bail!("--samples and --tasks must be at least 1");
    }
    let wasm = std::fs::read(&a.task).with_context(|| {
        format!(
            "cannot read {}; build it with `cargo build --release --target wasm32-wasip2 -p hello-task`",
            a.task.display()
        )
    })?;

    eprintln!("measuring the bare-wasmtime ceiling …");
    let ceiling = {
        let wasm = wasm.clone();
        tokio::task::spawn_blocking(move || {
            let ceiling = Ceiling::new(&wasm, true)?;
            ceiling.rate(b"bench", Duration::from_secs(2))
        })
        .await?
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("the task is not a stoa:task component")?
    };

    let temp = tempfile::tempdir()?;
    let dir = match &a.dir {
        Some(dir) => std::path::absolute(dir)?,
        None => temp.path().to_path_buf(),
    };
    let per_agent = crate::up::share_of_machine(1)?;
    eprintln!("starting a master and an agent ({per_agent}) …");
    let cluster =
        crate::up::LocalCluster::start(&dir, 1, 1, "127.0.0.1:0".parse()?, &per_agent).await?;
    let result = measure(&a, &cluster, &wasm).await;
    cluster.stop().await;
    let (latencies, throughput) = result?;

    let pct = |p: f64| -> f64 {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i.min(latencies.len() - 1)].as_secs_f64() * 1e3
    };
    let (p50, p99) = (pct(0.50), pct(0.99));
    if a.json {
        let out = serde_json::json!({
            "latency_ms": {"p50": p50, "p99": p99, "samples": latencies.len()},
            "throughput_tasks_per_s": throughput,
            "tasks": a.tasks,
            "sandbox": format!("{:?}", a.sandbox).to_lowercase(),
            "task_resources": a.task_resources.to_string(),
            "ceiling_instantiations_per_s": ceiling,
            "throughput_over_ceiling": throughput / ceiling,
        });
        println!("{out}");
    } else {
        println!(
            "launch latency (ACCEPT → RUNNING), {} samples:",
            latencies.len()
        );
        println!("  p50 {p50:.3} ms   (target ≤ 0.5 ms)");
        println!("  p99 {p99:.3} ms   (target ≤ 2 ms)");
        println!("throughput, {} tasks:", a.tasks);
        println!("  {throughput:.0} tasks/s   (target ≥ 25,000)");
        println!("ceiling: bare wasmtime instantiate + run on one core:");
        println!(
            "  {ceiling:.0} tasks/s   (throughput is {:.2}× this)",
            throughput / ceiling
        );
    }
    Ok(())
}

/// Latency samples (sorted) and throughput in tasks per second.
async fn measure(
    a: &BenchArgs,
    cluster: &crate::up::LocalCluster,
    wasm: &[u8],
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let config = ClientConfig::new(
        cluster.addr.parse::<std::net::SocketAddr>()?,
        &cluster.certs,
    );
    let digest = stoa_client::upload_artifact(&config, wasm).await?;
    let info = FrameworkInfo::new("bench", "bench".parse()?);
    let mut session = SchedulerSession::subscribe(&config, info).await?;
    let mut bench = Bench {
        session: &mut session,
        digest,
        resources: a.task_resources.clone(),
        sandbox: a.sandbox.into(),
        next: 0,
        calls: Calls::default(),
        held: Vec::new(),
    };

    // One task first: the executor starts and the component compiles.
    bench.one_task().await?;

    let bar = progress(a.samples as u64, "latency");
    let mut latencies = Vec::with_capacity(a.samples);
    for _ in 0..a.samples {
        latencies.push(bench.one_task().await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    latencies.sort();

    let bar = progress(a.tasks as u64, "throughput");
    let throughput = bench.many_tasks(a.tasks, &bar).await?;
    bar.finish_and_clear();
    session.teardown().await?;
    Ok((latencies, throughput))
}

pub(crate) fn progress(n: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(n);
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} {bar:40} {pos}/{len} {per_sec}") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

struct Bench<'a> {
    session: &'a mut SchedulerSession,
    digest: Digest,
    resources: Resources,
    sandbox: Sandbox,
    next: u64,
    /// Calls made since the last wait, sent before the next.
    calls: Calls,
    /// Offers that arrived while waiting for something else: kept for the
    /// next launch, never left unanswered (an unanswered offer holds its
    /// resources).
    held: Vec<Offer>,
}

impl Bench<'_> {
    fn task(&mut self) -> anyhow::Result<TaskInfo> {
        self.next += 1;
        Ok(TaskInfo {
            task_id: TaskId::new(format!("b{}", self.next))?,
            name: "bench".into(),
            resources: self.resources.clone(),
            kind: TaskKind::Wasm(WasmTask {
                artifact: Artifact::Stored(self.digest),
                input: b"bench".to_vec(),
                args: Vec::new(),
                env: Vec::new(),
                sandbox: self.sandbox,
                files: Vec::new(),
            }),
            limits: TaskLimits {
                fuel: Some(100_000_000),
                timeout_ms: Some(60_000),
            },
        })
    }

    /// The next event, with updates acknowledged. Events that have
    /// already arrived are taken first; only before waiting for more do the
    /// calls made since go out, in one write, with one acknowledgement per
    /// task (as the client's driver does).
    async fn event(&mut self) -> anyhow::Result<Event> {
        let event = match self.session.ready_event()? {
            Some(event) => event,
            None => {
                self.session.calls(self.calls.take_calls()).await?;
                tokio::time::timeout(Duration::from_secs(60), self.session.next_event())
                    .await
                    .context("no event from the master for 60 s")??
                    .context("the master closed the connection")?
            }
        };
        if let Event::Update {
            status,
            ack: Some(update_id),
        } = &event
            && let Some(agent_id) = &status.agent_id
        {
            self.calls
                .acknowledge(agent_id.clone(), status.task_id.clone(), *update_id);
        }
        if let Event::Error { message, .. } = &event {
            bail!("the master refused a call: {message}");
        }
        if let Event::Rescind { offer_id } = &event {
            self.held.retain(|o| o.id != *offer_id);
        }
        Ok(event)
    }

    /// Offers held or, if none, the next to come.
    async fn offers(&mut self) -> anyhow::Result<Vec<Offer>> {
        while self.held.is_empty() {
            if let Event::Offers { offers } = self.event().await? {
                self.held = offers;
            }
        }
        Ok(std::mem::take(&mut self.held))
    }

    fn launch(&mut self, offer: &Offer, tasks: Vec<TaskInfo>) {
        self.calls.launch(vec![offer.id], tasks, Some(0));
    }

    fn decline(&mut self, offer_ids: Vec<OfferId>) {
        self.calls.decline(offer_ids, Some(0));
    }

    /// Launches one task and returns ACCEPT → RUNNING; waits for its end.
    async fn one_task(&mut self) -> anyhow::Result<Duration> {
        let offers = self.offers().await?;
        let task = self.task()?;
        let id = task.task_id.clone();
        let sent = Instant::now();
        self.launch(&offers[0], vec![task]);
        if offers.len() > 1 {
            self.decline(offers[1..].iter().map(|o| o.id).collect());
        }
        let mut running = None;
        loop {
            let event = self.event().await?;
            if let Event::Offers { offers } = event {
                self.held.extend(offers);
            } else if let Event::Update { status, .. } = event
                && status.task_id == id
            {
                if status.state == TaskState::Running {
                    running.get_or_insert(sent.elapsed());
                }
                if status.state.is_terminal() {
                    check(&status)?;
                    // A task can finish before its RUNNING is seen.
                    return Ok(running.unwrap_or_else(|| sent.elapsed()));
                }
            }
        }
    }

    /// Launches `n` tasks, filling every offer; returns tasks per second.
    async fn many_tasks(&mut self, n: usize, bar: &ProgressBar) -> anyhow::Result<f64> {
        let (mut launched, mut ended) = (0usize, HashSet::new());
        let start = Instant::now();
        let mut held = std::mem::take(&mut self.held);
        while ended.len() < n {
            let event = if held.is_empty() {
                self.event().await?
            } else {
                Event::Offers {
                    offers: std::mem::take(&mut held),
                }
            };
            match event {
                Event::Offers { offers } => {
                    for offer in offers {
                        let mut left = offer.resources.clone();
                        let mut tasks = Vec::new();
                        while launched + tasks.len() < n {
                            let Some(rest) = left.checked_sub(&self.resources) else {
                                break;
                            };
                            left = rest;
                            tasks.push(self.task()?);
                        }
                        launched += tasks.len();
                        if tasks.is_empty() {
                            self.decline(vec![offer.id]);
                        } else {
                            self.launch(&offer, tasks);
                        }
                    }
                }
                Event::Update { status, .. } if status.state.is_terminal() => {
                    check(&status)?;
                    if ended.insert(status.task_id) {
                        bar.inc(1);
                    }
                }
                _ => {}
            }
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }
}

fn check(status: &TaskStatus) -> anyhow::Result<()> {
    if status.state != TaskState::Finished {
        bail!(
            "task {} ended {} ({}): {}",
            status.task_id,
            status.state,
            status.reason.map(|r| r.to_string()).unwrap_or_default(),
            status.message
        );
    }
    Ok(())
}
