//! `hello`: runs the hello framework against a Stoa master.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;
use stoa_client::ClientConfig;

/// Launch N hello tasks (wasm components) on a Stoa cluster and check
/// their outputs. Exits 0 when all finished with the right greeting.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The masters' addresses, comma-separated; the framework subscribes
    /// with the one that leads.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: stoa_client::Masters,
    /// Directory with the cluster certificates (ca.pem, client.pem, client.key).
    #[arg(long, default_value = ".stoa/certs", env = "STOA_CERTS")]
    certs: PathBuf,
    /// How many tasks to run.
    #[arg(long, default_value_t = 10)]
    tasks: usize,
    /// The hello task component.
    #[arg(long, default_value = "target/wasm32-wasip2/release/hello_task.wasm")]
    wasm: PathBuf,
    /// Resources each task asks for.
    #[arg(long, default_value = "cpus:0.1;mem:32")]
    task_resources: stoa_proto::Resources,
    /// The role to run in.
    #[arg(long, default_value = "default")]
    role: stoa_proto::Role,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let wasm = std::fs::read(&args.wasm).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {}: {e}; build it with `cargo build --release --target wasm32-wasip2 -p hello-task`",
            args.wasm.display()
        )
    })?;
    let opts = hello_scheduler::HelloOptions {
        client: ClientConfig::new(args.master, args.certs),
        tasks: args.tasks,
        wasm,
        task_resources: args.task_resources,
        role: args.role,
    };
    let report = hello_scheduler::run_with_timeout(opts, Duration::from_secs(args.timeout)).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "hello: {} tasks finished with the right greeting in {} ms (framework {})",
            report.finished, report.elapsed_ms, report.framework_id
        );
        for (agent, n) in &report.per_agent {
            println!("  {n:>5} on agent {agent}");
        }
    }
    Ok(())
}
