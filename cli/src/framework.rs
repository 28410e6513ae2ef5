//! `stoa framework run`: hosts a scheduler component on this machine (the
//! self-hosted way to run a wasm framework). Artifacts named on the command
//! line are uploaded first and handed to the scheduler as
//! `STOA_ARTIFACT_<NAME>` environment variables.

use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;
use stoa_agent::exec::scheduler::{ComponentScheduler, SchedulerLimits};
use stoa_client::DriverOptions;
use stoa_proto::{FrameworkId, FrameworkInfo, Role};

#[derive(Debug, clap::Args)]
pub struct FrameworkArgs {
    #[command(subcommand)]
    command: FrameworkCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FrameworkCommand {
    /// Run a scheduler component (stoa:scheduler) here until it tears its
    /// framework down.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The scheduler component (.wasm).
    scheduler: PathBuf,
    #[command(flatten)]
    client: crate::connect::ClientArgs,
    /// Framework name (default: the component's file name).
    #[arg(long)]
    name: Option<String>,
    /// The framework's role.
    #[arg(long, default_value = "default")]
    role: Role,
    /// Seconds the framework's tasks outlive a lost scheduler.
    #[arg(long, default_value_t = 60)]
    failover_timeout: u64,
    /// Take over a framework the master knows (after a scheduler restart).
    #[arg(long)]
    framework_id: Option<FrameworkId>,
    /// NAME=PATH: upload PATH and set STOA_ARTIFACT_<NAME> to its digest.
    #[arg(long = "artifact", value_parser = key_value)]
    artifacts: Vec<(String, String)>,
    /// KEY=VALUE: an environment variable for the scheduler.
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// An argument for the scheduler (repeatable).
    #[arg(long = "arg")]
    args: Vec<String>,
    /// Memory limit of the scheduler instance, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: usize,
    /// Fuel for each handler call: a scheduler that runs out traps and
    /// stops instead of hanging the framework.
    #[arg(long, default_value_t = 10_000_000_000)]
    fuel_per_call: u64,
    /// Print a JSON line when the framework ends.
    #[arg(long)]
    json: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub async fn run(a: FrameworkArgs) -> anyhow::Result<()> {
    let FrameworkCommand::Run(a) = a.command;
    let config = a.client.config();
    let wasm = std::fs::read(&a.scheduler)
        .with_context(|| format!("cannot read {}", a.scheduler.display()))?;
    let mut env = a.env.clone();
    for (name, path) in &a.artifacts {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        let digest = stoa_client::upload_artifact(&config, &bytes)
            .await
            .with_context(|| format!("cannot upload {path}"))?;
        let var = format!(
            "STOA_ARTIFACT_{}",
            name.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        tracing::info!(%var, %digest, "uploaded {path}");
        env.push((var, digest.to_string()));
    }
    let name = a.name.clone().unwrap_or_else(|| {
        a.scheduler
            .file_stem()
            .map_or("framework".into(), |s| s.to_string_lossy().into_owned())
    });
    let limits = SchedulerLimits {
        memory: a.memory_mib << 20,
        fuel_per_call: a.fuel_per_call,
    };
    let mut scheduler = ComponentScheduler::new(&wasm, &name, &a.args, &env, limits)
        .with_context(|| format!("cannot load {}", a.scheduler.display()))?;
    let mut info = FrameworkInfo::new(name, a.role.clone());
    info.id = a.framework_id.clone();
    info.failover_timeout_ms = a.failover_timeout.saturating_mul(1000);
    let options = DriverOptions {
        // The component acknowledges (the Rust SDK does it for its authors).
        implicit_acks: false,
        reconnect_for: Duration::from_secs(a.failover_timeout.max(10)),
    };
    let framework_id = stoa_client::scheduler::run(&config, info, &mut scheduler, options).await?;
    if let Some(failure) = scheduler.failure() {
        anyhow::bail!("framework {framework_id}: {failure}");
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "framework_id": framework_id.to_string(), "ended": "teardown" })
        );
    } else {
        eprintln!("framework {framework_id} ended");
    }
    Ok(())
}
