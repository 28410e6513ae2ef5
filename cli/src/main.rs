//! `stoa`: one binary for the master, the agent, certificates and a local
//! cluster.

mod artifact;
mod bench;
mod bench_api;
mod bench_failover;
mod cluster;
mod connect;
mod framework;
mod logs;
mod machine;
mod operator;
mod revoke;
mod run;
mod scaffold;
mod sim;
mod token;
mod top;
mod up;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Stoa shares a cluster between frameworks at fine grain: the master
/// offers resources, frameworks' schedulers decide what to run, agents run
/// tasks as wasm components.
#[derive(Debug, Parser)]
#[command(name = "stoa", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a master.
    Master(MasterArgs),
    /// Run an agent on this machine.
    Agent(AgentArgs),
    /// Create the cluster CA and node certificates, or issue one more.
    Certs(CertsArgs),
    /// Run a local cluster (a master and agents) with all state in one directory.
    Up(up::UpArgs),
    /// Show every role: weight, quota and what it holds.
    Roles(operator::ListArgs),
    /// Set a role's weight (its fair share relative to its siblings).
    Weight(operator::WeightArgs),
    /// Set or remove a role's quota (guarantee and limit).
    Quota(operator::QuotaArgs),
    /// Reserve free resources of an agent for a role.
    Reserve(operator::ReserveArgs),
    /// Give a dynamic reservation back to the unreserved pool.
    Unreserve(operator::ReserveArgs),
    /// Upload wasm binaries to the master's artifact store.
    Artifact(artifact::ArtifactArgs),
    /// Run a wasm program as one task (or N) and stream its output, without
    /// a scheduler of your own; exits with the program's exit code.
    Run(run::RunArgs),
    /// Print a task's stdout or stderr, optionally following it.
    Logs(logs::LogsArgs),
    /// Run one framework's tasks (started by an agent, not by hand).
    Executor(ExecutorArgs),
    /// Run a wasm framework: its scheduler component hosted here.
    Framework(framework::FrameworkArgs),
    /// Hand a wasm framework to the cluster: the master runs its scheduler
    /// component on an agent and restarts it elsewhere if that agent is
    /// lost. Prints the framework's id.
    Submit(framework::SubmitArgs),
    /// Show every framework: its role, scheduler and tasks.
    Frameworks(operator::ListArgs),
    /// End a framework: its tasks and hosted scheduler are killed.
    Teardown(operator::TeardownArgs),
    /// Bearer tokens for the HTTP API.
    Token(token::TokenArgs),
    /// Refuse a token or a certificate from now on, on every master.
    Revoke(revoke::RevokeArgs),
    /// List tasks, filtered (and redrawn with --watch).
    Ps(cluster::PsArgs),
    /// A live terminal view: allocation by role and framework, task rates,
    /// agents.
    Top(top::TopArgs),
    /// List agents: state, tasks, free and total resources.
    Agents(cluster::AgentsArgs),
    /// Kill one task.
    Kill(cluster::KillArgs),
    /// Follow the cluster's events.
    Events(cluster::EventsArgs),
    /// Measure launch latency and throughput of wasm tasks on this machine.
    Bench(bench::BenchArgs),
    /// Sweep seeds of the deterministic simulator with injected faults,
    /// checking the cluster's invariants after every step.
    Sim(sim::SimArgs),
    /// Create a task or scheduler crate that builds into a component.
    New(scaffold::NewArgs),
    /// Build a task or scheduler crate into a wasm32-wasip2 component.
    Build(scaffold::BuildArgs),
    /// Print a shell's completion script, e.g. `stoa completions bash >
    /// /etc/bash_completion.d/stoa`, or `source <(stoa completions zsh)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
struct MasterArgs {
    /// Address to listen on (UDP, QUIC).
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// Directory with ca.pem, master.pem and master.key.
    #[arg(long, default_value = ".stoa/certs")]
    certs: PathBuf,
    /// Write the bound address to this file (useful with port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Serve the operator API over HTTP here (a loopback address, e.g.
    /// 127.0.0.1:5051; port 0 picks one). Requests carry a bearer token
    /// from `stoa token create`.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Write the HTTP API's bound address to this file.
    #[arg(long)]
    http_addr_file: Option<PathBuf>,
    /// Serve the operator API and web UI over HTTPS here, with the
    /// master's certificate from the cluster CA (any address, e.g.
    /// 0.0.0.0:5443). Callers send a bearer token or present a client
    /// certificate of the CA.
    #[arg(long)]
    https: Option<SocketAddr>,
    /// Write the HTTPS API's bound address to this file.
    #[arg(long)]
    https_addr_file: Option<PathBuf>,
    /// Seconds of agent silence before it is unreachable.
    #[arg(long, default_value_t = 5)]
    agent_timeout: u64,
    /// Seconds an agent may stay unreachable before it is removed: its
    /// tasks are then reported GONE (reason agent-removed) and, if it comes
    /// back, it kills them and registers anew. The agent stops its tasks
    /// itself after three quarters of this while out of touch.
    #[arg(long, default_value_t = 120)]
    agent_removal_timeout: u64,
    /// Seconds agents admitted before a restart or a failover have to
    /// register with this master again; those still away are then treated
    /// as lost (frameworks hear FAILURE; reconciliation stops waiting).
    #[arg(long, default_value_t = 10)]
    agent_reregister_timeout: u64,
    /// Where the registry (admitted agents, frameworks, weights, quotas,
    /// reservations, hosted schedulers) survives restarts: `file:PATH` (or
    /// a bare path) for a single master, or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` for several masters
    /// sharing it, of which one is elected leader and the others stand by.
    #[arg(long, default_value = ".stoa/registry.redb")]
    registry: stoa_master::registry::RegistrySpec,
    /// The address clients reach this master at, announced while it leads
    /// (default: the bound --listen address). Needed with an etcd registry
    /// when listening on 0.0.0.0.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Milliseconds a leader's etcd lease lives without renewal: a leader
    /// that dies is replaced this long after (etcd raises it to 1.5 times
    /// its election timeout, 2 s with etcd's defaults).
    #[arg(long, default_value_t = 1_000)]
    etcd_lease_ttl_ms: u64,
    /// Milliseconds one call to etcd may take.
    #[arg(long, default_value_t = 1_000)]
    etcd_timeout_ms: u64,
    /// Rescind offers not answered within this many seconds.
    #[arg(long)]
    offer_timeout: Option<u64>,
    /// Access control lists (JSON; reloaded on SIGHUP, a bad file refused
    /// whole), e.g. {"default": "deny", "register_framework":
    /// [{"principals": ["web"], "roles": ["web"]}], "launch_native":
    /// [{"principals": ["ops"]}]}. See docs/security.md. Without one, any
    /// principal may register frameworks, launch wasm tasks and upload;
    /// nobody launches native tasks.
    #[arg(long)]
    acls: Option<PathBuf>,
    /// What no ACL rule matched decides: allow (as for a local cluster) or
    /// deny (for production: every framework, wasm launch and upload then
    /// needs a rule). Overrides the file's "default".
    #[arg(long, value_enum)]
    acls_default: Option<AclsDefault>,
    /// Where uploaded artifacts are kept.
    #[arg(long, default_value = ".stoa/artifacts")]
    artifacts: PathBuf,
    /// Largest artifact accepted, in MiB.
    #[arg(long, default_value_t = 64)]
    max_artifact_mib: u64,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The masters' addresses, comma-separated (HOST:PORT,...); the agent
    /// registers with the one that leads.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: stoa_transport::Masters,
    /// Directory with ca.pem and the agent's certificate.
    #[arg(long, default_value = ".stoa/certs")]
    certs: PathBuf,
    /// The agent's certificate (NAME.pem, NAME.key in --certs): `agent`,
    /// or one of its own from `stoa certs --issue agent-7`. The master
    /// binds the agent's id to it: another certificate cannot take the
    /// id over.
    #[arg(long, default_value = "agent")]
    identity: String,
    /// The agent's own state.
    #[arg(long, default_value = ".stoa/agent")]
    work_dir: PathBuf,
    /// Resources to offer, e.g. "cpus:4;mem:8192;disk:10000;ports:[31000-32000]";
    /// `NAME(ROLE):VALUE` reserves that much for a role: "cpus(eng):2".
    /// Detected from the machine when not given.
    #[arg(long)]
    resources: Option<String>,
    /// Attributes, e.g. "rack:a;zone:eu-1".
    #[arg(long, default_value = "")]
    attributes: stoa_proto::Attributes,
    /// Hostname to advertise (default: this machine's).
    #[arg(long)]
    hostname: Option<String>,
    /// Seconds a finished task's directory (sandbox and logs) is kept.
    #[arg(long, default_value_t = 3600)]
    gc_delay: u64,
    /// Most finished tasks' directories kept: past it the oldest are
    /// removed before their delay is up, so a framework running thousands
    /// of short tasks cannot fill the disk.
    #[arg(long, default_value_t = 10_000)]
    gc_max_dirs: usize,
    /// Seconds an executor without tasks is kept for the next launch.
    #[arg(long, default_value_t = 60)]
    executor_idle: u64,
    /// Seconds executors keep their tasks running while no agent is there
    /// (across an agent restart); then they kill them and exit.
    #[arg(long, default_value_t = 900)]
    recovery_timeout: u64,
    /// Cap on each task's stdout and stderr, in MiB.
    #[arg(long, default_value_t = 10)]
    log_limit_mib: u64,
    /// Cap on the compiled-code cache, in MiB.
    #[arg(long, default_value_t = 2048)]
    cache_mib: u64,
    /// Largest artifact fetched from the master, in MiB.
    #[arg(long, default_value_t = 64)]
    max_artifact_mib: u64,
    /// Contain native tasks and executors in cgroups (`auto`: v2 or v1,
    /// whichever the host has), or not at all (`off`: native tasks are
    /// then refused).
    #[arg(long, value_enum, default_value_t = CgroupsMode::Auto)]
    cgroups: CgroupsMode,
    /// The agent's cgroup, relative to each hierarchy's mount
    /// (default: stoa/<hash of the work directory>).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Processes and threads a native task may have at once.
    #[arg(long, default_value_t = 1024)]
    max_pids: u32,
    /// CPUs an executor may use beyond its wasm tasks' own.
    #[arg(long, default_value_t = 0.5)]
    executor_cpus: f64,
    /// Memory in MiB an executor may use beyond its wasm tasks' own.
    #[arg(long, default_value_t = 256)]
    executor_mem_mib: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 0.0.0.0:5052; port 0 picks one). They hold counts only, no ids.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Write the metrics server's bound address to this file.
    #[arg(long)]
    metrics_addr_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AclsDefault {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CgroupsMode {
    Auto,
    Off,
}

#[derive(Debug, clap::Args)]
struct ExecutorArgs {
    /// The framework whose tasks this executor runs.
    #[arg(long)]
    framework: stoa_proto::FrameworkId,
    /// Directory for the socket, pid file and log.
    #[arg(long)]
    dir: PathBuf,
    /// The agent's fetched artifacts.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// The compiled-code cache.
    #[arg(long)]
    cache: Option<PathBuf>,
    #[arg(long, default_value_t = 2048)]
    cache_mib: u64,
    #[arg(long, default_value_t = 10)]
    log_limit_mib: u64,
    /// Task slots in the instance pool (0: allocate on demand).
    #[arg(long, default_value_t = 0)]
    pool_tasks: u32,
    /// Linear memory per pool slot, in MiB.
    #[arg(long, default_value_t = 1024)]
    pool_memory_mib: u64,
    /// Seconds to keep tasks running without an agent.
    #[arg(long, default_value_t = 900)]
    recovery_timeout: u64,
    /// The agent's certificate, which hosted schedulers present.
    #[arg(long, default_value = "agent")]
    identity: String,
    /// The masters' addresses, for hosted schedulers.
    #[arg(long)]
    master: Option<stoa_transport::Masters>,
    /// Directory with ca.pem, agent.pem and agent.key: hosted schedulers
    /// reach the master as this agent.
    #[arg(long)]
    certs: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// Where the certificates live.
    #[arg(long, default_value = ".stoa/certs")]
    dir: PathBuf,
    /// Issue one more node certificate NAME.pem/NAME.key from the existing CA
    /// instead of creating a new CA.
    #[arg(long)]
    issue: Option<String>,
    /// Extra DNS names or IP addresses for the issued certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
}

fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// mimalloc rather than glibc's malloc: a master that has booked a million
/// tasks leaves glibc's heap fragmented, and each first free of a task's
/// books then cost four times as much (docs/benchmarks.md, master core).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors are printed as one line of causes; the backtrace only when
/// asked for with `STOA_BACKTRACE=1`.
fn main() -> std::process::ExitCode {
    match run_command(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if std::env::var_os("STOA_BACKTRACE").is_some_and(|v| v == "1") {
                eprintln!("{}", e.backtrace());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    // The simulator's own trace is its output; the cores' logs, a line per
    // event of thousands of simulated runs, would drown it. Commands whose
    // output is for people or scripts log only warnings (RUST_LOG still
    // turns the rest on).
    init_tracing(match cli.command {
        Command::Sim(_) | Command::Completions { .. } => "off",
        Command::Run(_)
        | Command::Logs(_)
        | Command::Ps(_)
        | Command::Agents(_)
        | Command::Top(_)
        | Command::Bench(_)
        | Command::Kill(_)
        | Command::Events(_)
        | Command::Token(_)
        | Command::Roles(_)
        | Command::Frameworks(_) => "warn",
        _ => "info",
    });
    // The daemons' cores are single-threaded state machines: one thread
    // serves each with no wake-ups across threads (a launch crosses
    // three processes, and each cross-thread wake-up costs a futex call).
    // Blocking work still goes to the blocking pool.
    let mut rt = match cli.command {
        Command::Master(_) | Command::Agent(_) | Command::Executor(_) | Command::Bench(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt.enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Command::Master(a) => {
                let acls = stoa_master::acl_file::AclSource {
                    file: a.acls.clone(),
                    default: a.acls_default.map(|d| match d {
                        AclsDefault::Allow => stoa_master::core::acl::DefaultMode::Allow,
                        AclsDefault::Deny => stoa_master::core::acl::DefaultMode::Deny,
                    }),
                };
                let core = stoa_master::core::MasterConfig {
                    agent_timeout: Duration::from_secs(a.agent_timeout.max(1)),
                    agent_removal_timeout: Duration::from_secs(a.agent_removal_timeout.max(1)),
                    agent_reregister_timeout: Duration::from_secs(a.agent_reregister_timeout),
                    offer_timeout: a.offer_timeout.map(Duration::from_secs),
                    ..Default::default()
                };
                let config = stoa_master::driver::DriverConfig {
                    acls,
                    listen: a.listen,
                    advertise: a.advertise,
                    certs: a.certs,
                    addr_file: a.addr_file,
                    registry: a.registry,
                    etcd: stoa_master::registry::etcd::EtcdTimings {
                        lease_ttl: Duration::from_millis(a.etcd_lease_ttl_ms.max(1)),
                        request_timeout: Duration::from_millis(a.etcd_timeout_ms.max(1)),
                    },
                    artifacts: a.artifacts,
                    max_artifact: a.max_artifact_mib << 20,
                    http: a.http,
                    http_addr_file: a.http_addr_file,
                    https: a.https,
                    https_addr_file: a.https_addr_file,
                    core,
                };
                stoa_master::driver::run(config, shutdown_signal()).await
            }
            Command::Agent(a) => {
                let cgroups = agent_cgroups(&a);
                let (resources, reservations) = match a.resources.as_deref() {
                    Some(text) => stoa_proto::resources::parse_with_reservations(text)
                        .with_context(|| format!("--resources {text:?}"))?,
                    None => (
                        machine::detect_resources()
                            .context("cannot detect this machine's resources; pass --resources")?,
                        Vec::new(),
                    ),
                };
                let hostname = a.hostname.unwrap_or_else(machine::hostname);
                let info = stoa_proto::AgentInfo {
                    reservations,
                    hostname,
                    resources,
                    attributes: a.attributes,
                };
                let work_dir = stoa_agent::driver::WorkDir(a.work_dir.clone());
                let pool = stoa_agent::exec::wasm::PoolSize::for_agent(&info.resources);
                // Executors may start in another directory than the agent's.
                let certs = std::path::absolute(&a.certs)
                    .with_context(|| format!("--certs {}", a.certs.display()))?;
                if !stoa_proto::messages::is_agent_principal(&a.identity) {
                    anyhow::bail!(
                        "--identity {}: an agent's certificate is named agent or agent-SOMETHING (stoa certs --issue agent-7)",
                        a.identity
                    );
                }
                let args = [
                    ("--master", a.master.to_string()),
                    ("--certs", certs.display().to_string()),
                    ("--identity", a.identity.clone()),
                    ("--artifacts", work_dir.artifacts().display().to_string()),
                    ("--cache", work_dir.compiled().display().to_string()),
                    ("--cache-mib", a.cache_mib.to_string()),
                    ("--log-limit-mib", a.log_limit_mib.to_string()),
                    ("--pool-tasks", pool.tasks.to_string()),
                    (
                        "--pool-memory-mib",
                        (pool.memory_per_task >> 20).to_string(),
                    ),
                    ("--recovery-timeout", a.recovery_timeout.to_string()),
                ];
                let executor = stoa_agent::executors::Launcher {
                    program: std::env::current_exe()
                        .context("cannot find this program to start executors")?,
                    args: args
                        .into_iter()
                        .flat_map(|(k, v)| [k.to_string(), v])
                        .collect(),
                };
                if !(0.0..=1e6).contains(&a.executor_cpus) {
                    anyhow::bail!("--executor-cpus must be between 0 and 1000000");
                }
                let metrics = std::sync::Arc::new(stoa_agent::metrics::AgentMetrics::new());
                if let Some(addr) = a.metrics {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot serve metrics on {addr}"))?;
                    let bound = listener.local_addr()?;
                    if let Some(file) = &a.metrics_addr_file {
                        std::fs::write(file, bound.to_string())
                            .with_context(|| format!("cannot write {}", file.display()))?;
                    }
                    tracing::info!(%bound, "serving metrics at /metrics");
                    tokio::spawn(stoa_agent::metrics::serve(listener, metrics.clone()));
                }
                let config = stoa_agent::driver::DriverConfig {
                    metrics,
                    identity: a.identity.clone(),
                    master: a.master,
                    certs: a.certs,
                    info,
                    work_dir: a.work_dir,
                    executor,
                    gc_delay: Duration::from_secs(a.gc_delay),
                    gc_max_dirs: a.gc_max_dirs,
                    executor_idle: Duration::from_secs(a.executor_idle),
                    max_artifact: a.max_artifact_mib << 20,
                    cgroups,
                    max_pids: a.max_pids,
                    executor_overhead: (
                        (a.executor_cpus * 1000.0).round() as u64,
                        a.executor_mem_mib,
                    ),
                };
                stoa_agent::driver::run(config, shutdown_signal()).await
            }
            Command::Certs(a) => certs(a),
            Command::Up(a) => up::run(a).await,
            Command::Roles(a) => operator::roles(a).await,
            Command::Weight(a) => operator::weight(a).await,
            Command::Quota(a) => operator::quota(a).await,
            Command::Reserve(a) => operator::reserve(a, true).await,
            Command::Unreserve(a) => operator::reserve(a, false).await,
            Command::Artifact(a) => artifact::run(a).await,
            Command::Run(a) => run::run(a).await,
            Command::Logs(a) => logs::logs(a).await,
            Command::Executor(a) => executor(a).await,
            Command::Framework(a) => framework::run(a).await,
            Command::Submit(a) => framework::submit(a).await,
            Command::Frameworks(a) => operator::frameworks(a).await,
            Command::Teardown(a) => operator::teardown(a).await,
            Command::Token(a) => token::run(a).await,
            Command::Revoke(a) => revoke::revoke(a).await,
            Command::Ps(a) => cluster::ps(a).await,
            Command::Agents(a) => cluster::agents(a).await,
            Command::Top(a) => top::top(a).await,
            Command::Kill(a) => cluster::kill(a).await,
            Command::Events(a) => cluster::events(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Sim(a) => sim::run(a),
            Command::New(a) => scaffold::new(a),
            Command::Build(a) => tokio::task::spawn_blocking(move || scaffold::build(a)).await?,
            Command::Completions { shell } => {
                use clap::CommandFactory as _;
                clap_complete::generate(shell, &mut Cli::command(), "stoa", &mut std::io::stdout());
                Ok(())
            }
        }
    })
}

/// The agent's cgroups, or why it has none.
fn agent_cgroups(a: &AgentArgs) -> Result<stoa_agent::cgroups::Cgroups, String> {
    use stoa_agent::cgroups::{Cgroups, Hierarchy, default_root};
    if a.cgroups == CgroupsMode::Off {
        return Err("turned off with --cgroups off".into());
    }
    let hierarchy = Hierarchy::detect()?;
    let root = a
        .cgroup_root
        .clone()
        .unwrap_or_else(|| default_root(&a.work_dir));
    Cgroups::new(hierarchy, &root, a.work_dir.join("cgroups")).map_err(|e| format!("{e:#}"))
}

async fn executor(a: ExecutorArgs) -> anyhow::Result<()> {
    use stoa_agent::exec::wasm::{PoolSize, RuntimeConfig, cache::CompiledCache};
    let cache = match &a.cache {
        Some(dir) => Some(
            CompiledCache::new(dir, a.cache_mib << 20)
                .with_context(|| format!("cannot open the cache {}", dir.display()))?,
        ),
        None => None,
    };
    let runtime = RuntimeConfig {
        pool: (a.pool_tasks > 0).then(|| PoolSize {
            tasks: a.pool_tasks,
            memory_per_task: usize::try_from(a.pool_memory_mib << 20).unwrap_or(usize::MAX),
        }),
        artifacts: a.artifacts,
        cache,
        log_limit: a.log_limit_mib << 20,
    };
    stoa_agent::executor::run(stoa_agent::executor::ExecutorConfig {
        framework_id: a.framework,
        dir: a.dir,
        runtime,
        recovery_timeout: Duration::from_secs(a.recovery_timeout),
        master: a.master.zip(a.certs).map(|(master, certs)| {
            let mut config = stoa_client::ClientConfig::new(master, certs);
            config.identity = a.identity.clone();
            config
        }),
    })
    .await
}

fn certs(a: CertsArgs) -> anyhow::Result<()> {
    match a.issue {
        Some(name) => {
            stoa_proto::TaskId::new(name.as_str())
                .context("a certificate name must be a simple word like agent-7")?;
            let path = stoa_transport::certs::issue(&a.dir, &name, &a.sans)?;
            println!("issued {}", path.display());
        }
        None => {
            stoa_transport::certs::create_ca(&a.dir, "stoa")?;
            for name in stoa_transport::certs::NODE_NAMES {
                stoa_transport::certs::issue(&a.dir, name, &a.sans)?;
            }
            println!(
                "created a cluster CA and master, agent and client certificates in {}",
                a.dir.display()
            );
        }
    }
    Ok(())
}
