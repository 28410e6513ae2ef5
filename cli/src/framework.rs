//! Wasm frameworks: `stoa framework run` hosts a scheduler component on
//! this machine (self-hosted); `stoa submit` hands it to the master, which
//! runs it on an agent and keeps it running (cluster-hosted). Artifacts
//! named on the command line are uploaded first and handed to the
//! scheduler as `STOA_ARTIFACT_<NAME>` environment variables.

use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;
use stoa_agent::exec::scheduler::{ComponentScheduler, SchedulerLimits};
use stoa_client::{ClientConfig, DriverOptions};
use stoa_proto::{FrameworkId, FrameworkInfo, Resources, Role, Submission};

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
    /// Send a message to a running framework's scheduler (its `message`
    /// handler), e.g. `scale 5` to the service framework.
    Message(MessageArgs),
}

#[derive(Debug, clap::Args)]
struct MessageArgs {
    /// The framework (see `stoa frameworks`).
    framework_id: FrameworkId,
    /// The message, as text.
    text: String,
    #[command(flatten)]
    client: crate::connect::ClientArgs,
}

/// What every way of hosting a scheduler component takes.
#[derive(Debug, clap::Args)]
struct ComponentArgs {
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
    /// NAME=PATH: upload PATH and set STOA_ARTIFACT_<NAME> to its digest.
    #[arg(long = "artifact", value_parser = key_value)]
    artifacts: Vec<(String, String)>,
    /// KEY=VALUE: an environment variable for the scheduler.
    #[arg(long = "env", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// An argument for the scheduler (repeatable).
    #[arg(long = "arg")]
    args: Vec<String>,
    /// Fuel for each handler call: a scheduler that runs out traps and
    /// stops instead of hanging the framework.
    #[arg(long, default_value_t = 10_000_000_000)]
    fuel_per_call: u64,
    /// Print JSON (the framework's id and how it ended).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    component: ComponentArgs,
    /// Take over a framework the master knows (after a scheduler restart).
    #[arg(long)]
    framework_id: Option<FrameworkId>,
    /// Memory limit of the scheduler instance, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: usize,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    component: ComponentArgs,
    /// What the scheduler holds on its agent; its `mem` is the instance's
    /// memory limit.
    #[arg(long, default_value = "cpus:0.1;mem:128")]
    resources: Resources,
}

pub(crate) fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

impl ComponentArgs {
    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.scheduler
                .file_stem()
                .map_or("framework".into(), |s| s.to_string_lossy().into_owned())
        })
    }

    fn framework(&self) -> FrameworkInfo {
        let mut info = FrameworkInfo::new(self.name(), self.role.clone());
        info.failover_timeout_ms = self.failover_timeout.saturating_mul(1000);
        info
    }

    /// The component's bytes and its environment, with every artifact
    /// uploaded and named in it.
    async fn prepare(
        &self,
        config: &ClientConfig,
    ) -> anyhow::Result<(Vec<u8>, Vec<(String, String)>)> {
        let wasm = std::fs::read(&self.scheduler)
            .with_context(|| format!("cannot read {}", self.scheduler.display()))?;
        check_scheduler(&wasm).with_context(|| {
            format!(
                "{} is not a stoa:scheduler component",
                self.scheduler.display()
            )
        })?;
        let mut env = self.env.clone();
        for (name, path) in &self.artifacts {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
            let digest = stoa_client::upload_artifact(config, &bytes)
                .await
                .with_context(|| format!("cannot upload {path}"))?;
            let var = format!(
                "STOA_ARTIFACT_{}",
                name.to_ascii_uppercase().replace(['-', '.'], "_")
            );
            tracing::info!(%var, %digest, "uploaded {path}");
            env.push((var, digest.to_string()));
        }
        Ok((wasm, env))
    }
}

/// The functions every scheduler component exports (the `stoa:scheduler`
/// world's event handlers).
const SCHEDULER_EXPORTS: [&str; 3] = ["subscribed", "offers", "update"];

/// Refuses, before anything is uploaded or submitted, a binary that cannot
/// be a scheduler: not a component, or a component without the scheduler
/// world's exports (a task component, say). A master would otherwise start
/// it, see it fail, and start it again.
fn check_scheduler(wasm: &[u8]) -> anyhow::Result<()> {
    use wasmparser::{Parser, Payload};
    if !Parser::is_component(wasm) {
        anyhow::bail!(
            "it is not a wasm component (a core module or not wasm at all); build the scheduler for wasm32-wasip2, e.g. with `stoa build`"
        );
    }
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.context("it is not valid wasm")? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(
                        export
                            .context("it is not valid wasm")?
                            .name
                            .name
                            .to_string(),
                    );
                }
            }
            _ => {}
        }
    }
    let missing: Vec<&str> = SCHEDULER_EXPORTS
        .into_iter()
        .filter(|name| !exports.iter().any(|e| e == name))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "the component does not export the stoa:scheduler world (missing {}; it exports {}). A task component runs as a task, launched by a scheduler; see docs/framework-authors.md",
            missing.join(", "),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        );
    }
    Ok(())
}

pub async fn run(a: FrameworkArgs) -> anyhow::Result<()> {
    match a.command {
        FrameworkCommand::Run(a) => run_here(a).await,
        FrameworkCommand::Message(a) => {
            let config = a.client.config();
            stoa_client::send_message(&config, a.framework_id.clone(), a.text.into_bytes()).await?;
            eprintln!("delivered to the scheduler of {}", a.framework_id);
            Ok(())
        }
    }
}

async fn run_here(a: RunArgs) -> anyhow::Result<()> {
    let c = &a.component;
    let config = c.client.config();
    let (wasm, env) = c.prepare(&config).await?;
    let limits = SchedulerLimits {
        memory: a.memory_mib << 20,
        fuel_per_call: c.fuel_per_call,
    };
    let mut scheduler = ComponentScheduler::new(
        &wasm,
        &c.name(),
        (&c.args, &env),
        limits,
        Default::default(),
        None,
    )
    .with_context(|| format!("cannot load {}", c.scheduler.display()))?;
    let mut info = c.framework();
    info.id = a.framework_id.clone();
    let options = DriverOptions {
        // The component acknowledges (the Rust SDK does it for its authors).
        implicit_acks: false,
        reconnect_for: Duration::from_secs(c.failover_timeout.max(10)),
    };
    // Ctrl-C closes the connection at once; the framework fails over
    // (its tasks run on for its failover timeout).
    let framework_id = stoa_client::scheduler::run_until(
        &config,
        info,
        &mut scheduler,
        options,
        crate::shutdown_signal(),
    )
    .await?;
    if let Some(failure) = scheduler.failure() {
        anyhow::bail!("framework {framework_id}: {failure}");
    }
    if c.json {
        println!(
            "{}",
            serde_json::json!({ "framework_id": framework_id.to_string(), "ended": "teardown" })
        );
    } else {
        eprintln!("framework {framework_id} ended");
    }
    Ok(())
}

/// `stoa submit`: uploads the scheduler and its artifacts, and asks the
/// master to host it.
pub async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let c = &a.component;
    let config = c.client.config();
    let (wasm, env) = c.prepare(&config).await?;
    let artifact = stoa_client::upload_artifact(&config, &wasm)
        .await
        .with_context(|| format!("cannot upload {}", c.scheduler.display()))?;
    let submission = Submission {
        framework: c.framework(),
        artifact,
        args: c.args.clone(),
        env,
        resources: a.resources.clone(),
        fuel_per_call: c.fuel_per_call,
    };
    let framework_id = stoa_client::submit(&config, submission).await?;
    if c.json {
        println!(
            "{}",
            serde_json::json!({ "framework_id": framework_id.to_string(), "scheduler": artifact.to_string() })
        );
    } else {
        println!("{framework_id}");
        eprintln!(
            "submitted: the master runs the scheduler of framework {framework_id}; see `stoa frameworks`, end it with `stoa teardown {framework_id}`"
        );
    }
    Ok(())
}
