//! `stoa`: one binary for the master, the agent, certificates and a local
//! cluster.

mod machine;
mod operator;
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
    Roles(operator::RolesArgs),
    /// Set a role's weight (its fair share relative to its siblings).
    Weight(operator::WeightArgs),
    /// Set or remove a role's quota (guarantee and limit).
    Quota(operator::QuotaArgs),
    /// Reserve free resources of an agent for a role.
    Reserve(operator::ReserveArgs),
    /// Give a dynamic reservation back to the unreserved pool.
    Unreserve(operator::ReserveArgs),
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
    /// Seconds of agent silence before it is unreachable.
    #[arg(long, default_value_t = 5)]
    agent_timeout: u64,
    /// The registry file: weights, quotas and dynamic reservations survive
    /// restarts here.
    #[arg(long, default_value = ".stoa/registry.redb")]
    registry: PathBuf,
    /// Rescind offers not answered within this many seconds.
    #[arg(long)]
    offer_timeout: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct AgentArgs {
    /// The master's address.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: SocketAddr,
    /// Directory with ca.pem, agent.pem and agent.key.
    #[arg(long, default_value = ".stoa/certs")]
    certs: PathBuf,
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

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::Master(a) => {
                let core = stoa_master::core::MasterConfig {
                    agent_timeout: Duration::from_secs(a.agent_timeout.max(1)),
                    offer_timeout: a.offer_timeout.map(Duration::from_secs),
                    ..Default::default()
                };
                let config = stoa_master::driver::DriverConfig {
                    listen: a.listen,
                    certs: a.certs,
                    addr_file: a.addr_file,
                    registry: a.registry,
                    core,
                };
                stoa_master::driver::run(config, shutdown_signal()).await
            }
            Command::Agent(a) => {
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
                let config = stoa_agent::driver::DriverConfig {
                    master: a.master,
                    certs: a.certs,
                    info,
                    work_dir: a.work_dir,
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
        }
    })
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
