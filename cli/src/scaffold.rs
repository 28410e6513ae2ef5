//! `stoa new task|scheduler NAME` writes a crate that builds into a
//! component; `stoa build [DIR]` builds one for wasm32-wasip2 and says
//! where the component is.

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// What to create.
    #[arg(value_enum)]
    kind: Kind,
    /// The crate's name (letters, digits, '-' and '_').
    name: String,
    /// Where to create it (default: ./NAME).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The Stoa guest SDK to depend on (default: the one this stoa was
    /// built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// A `stoa:task` component.
    Task,
    /// A `stoa:scheduler` component.
    Scheduler,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The crate to build (default: the current directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Print {"component": PATH} instead of text.
    #[arg(long)]
    json: bool,
}

const TARGET: &str = "wasm32-wasip2";

pub fn new(a: NewArgs) -> anyhow::Result<()> {
    if a.name.is_empty()
        || !a
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        || a.name.starts_with(|c: char| c.is_ascii_digit())
    {
        bail!(
            "{:?} is not a crate name: use letters, digits, '-' and '_', not starting with a digit",
            a.name
        );
    }
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    if dir.exists() {
        bail!("{} already exists; choose another --dir", dir.display());
    }
    let sdk = match &a.sdk {
        Some(sdk) => sdk.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "cannot find the guest SDK at {}; pass --sdk PATH/guest-sdk",
            sdk.display()
        )
    })?;
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[dependencies]
stoa-guest = {{ path = "{sdk}" }}

[lib]
crate-type = ["cdylib", "rlib"]

[profile.release]
opt-level = "s"
strip = "debuginfo"

# A crate of its own, not a member of any workspace above it.
[workspace]
"#,
        name = a.name,
        sdk = sdk.display(),
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    let source = match a.kind {
        Kind::Task => TASK_TEMPLATE.to_string(),
        Kind::Scheduler => SCHEDULER_TEMPLATE.to_string(),
    };
    std::fs::write(dir.join("src/lib.rs"), source)?;
    println!(
        "created {} {} in {}; build it with `stoa build {}`",
        match a.kind {
            Kind::Task => "task",
            Kind::Scheduler => "scheduler",
        },
        a.name,
        dir.display(),
        dir.display()
    );
    Ok(())
}

pub fn build(a: BuildArgs) -> anyhow::Result<()> {
    let manifest = a.dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("no crate at {} (no Cargo.toml)", a.dir.display()))?;
    let name = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = "))
        .map(|n| n.trim_matches('"').replace('-', "_"))
        .context("Cargo.toml has no package name")?;
    // The target is part of the set-up, not something to install by hand.
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .output();
    if let Ok(out) = &added
        && !out.status.success()
    {
        eprintln!(
            "warning: `rustup target add {TARGET}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(&manifest)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => a.dir.join("target"),
    };
    let component = target_dir.join(format!("{TARGET}/release/{name}.wasm"));
    let bytes = std::fs::read(&component)
        .with_context(|| format!("cargo built no {}", component.display()))?;
    if !is_component(&bytes) {
        bail!("{} is not a component", component.display());
    }
    if a.json {
        println!("{}", serde_json::json!({ "component": component }));
    } else {
        println!("{}", component.display());
    }
    Ok(())
}

/// A component starts with the wasm magic and a component-layer version.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

const TASK_TEMPLATE: &str = r#"//! A Stoa task: input bytes in, output bytes (or an error) out.

struct Task;

impl stoa_guest::Task for Task {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let text = String::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
        // stdout and stderr go to the task's logs (`stoa logs TASK`).
        println!("got {} bytes", text.len());
        Ok(text.to_uppercase().into_bytes())
    }
}

stoa_guest::export_task!(Task);
"#;

const SCHEDULER_TEMPLATE: &str = r#"//! A Stoa scheduler: launches `TASKS` tasks (default 10) of the artifact
//! uploaded as `task` (`stoa framework run --artifact task=PATH.wasm`),
//! and ends the framework when all have finished.

use stoa_guest::scheduler::{
    Driver, Level, Offer, Program, Scheduler, TaskSpec, TaskState, TaskStatus, WasmProgram,
    artifact, cpus_mem, env_or, fits,
};

#[derive(Debug, Default)]
struct Framework {
    artifact: String,
    to_launch: Vec<usize>,
    total: usize,
    finished: usize,
}

impl Scheduler for Framework {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        if !self.artifact.is_empty() {
            return; // resubscribed after a failover
        }
        match artifact("task").and_then(|a| Ok((a, env_or("TASKS", 10)?))) {
            Ok((artifact, total)) => {
                (self.artifact, self.total) = (artifact, total);
                self.to_launch = (0..total).rev().collect();
                driver.log(Level::Info, &format!("{framework_id}: {total} tasks"));
            }
            Err(message) => {
                driver.log(Level::Error, &message);
                driver.teardown();
            }
        }
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            let n = fits(&offer, 0.1, 32.0, self.to_launch.len());
            let tasks: Vec<TaskSpec> = (0..n)
                .filter_map(|_| self.to_launch.pop())
                .map(|i| TaskSpec {
                    id: format!("task-{i}"),
                    name: format!("task {i}"),
                    resources: cpus_mem(0.1, 32.0),
                    program: Program::Wasm(WasmProgram {
                        artifact: self.artifact.clone(),
                        input: format!("input {i}").into_bytes(),
                        args: Vec::new(),
                        env: Vec::new(),
                    }),
                    timeout_ms: Some(60_000),
                    fuel: None,
                })
                .collect();
            if tasks.is_empty() {
                driver.decline(&[offer.id], Some(5_000));
            } else {
                driver.accept(&[offer.id], tasks, None);
            }
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        match status.state {
            TaskState::Finished => {
                self.finished += 1;
                if self.finished == self.total {
                    driver.log(Level::Info, "all tasks finished");
                    driver.teardown();
                }
            }
            TaskState::Failed | TaskState::Error | TaskState::Lost | TaskState::Dropped => {
                driver.log(Level::Warn, &format!("{}: {}", status.task_id, status.message));
                if let Some(i) = status.task_id.strip_prefix("task-").and_then(|i| i.parse().ok()) {
                    self.to_launch.push(i);
                    driver.revive();
                }
            }
            _ => {}
        }
    }
}

stoa_guest::export_scheduler!(Framework);
"#;
