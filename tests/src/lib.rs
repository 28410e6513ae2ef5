//! Harness for end-to-end tests: starts real `stoa master` and `stoa agent`
//! processes on loopback with fresh certificates, and stops them on drop.
//!
//! Needs the `stoa` binary (`cargo build --workspace`) and the hello task
//! component (`cargo build --release --target wasm32-wasip2 -p hello-task`);
//! `.ci/run` builds both first.

use anyhow::{Context as _, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stoa_client::ClientConfig;

pub mod framework;
pub mod ha;
pub mod http;
pub mod netns;
pub use framework::TestFramework;
pub use ha::HaCluster;

/// The directory holding this test binary's sibling executables
/// (`target/debug`).
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/debug/deps/TEST-HASH → target/debug
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("cannot locate the target directory")
}

pub fn stoa_bin() -> anyhow::Result<PathBuf> {
    let bin = profile_dir()?.join("stoa");
    if !bin.exists() {
        bail!(
            "{} is missing; run `cargo build --workspace` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// The hello task component, built for wasm32-wasip2.
pub fn hello_wasm() -> anyhow::Result<Vec<u8>> {
    component("hello_task", "hello-task", "STOA_HELLO_WASM")
}

/// The misbehaving test component (`frameworks/fixtures/misbehave`).
pub fn misbehave_wasm() -> anyhow::Result<Vec<u8>> {
    component("misbehave_task", "misbehave-task", "STOA_MISBEHAVE_WASM")
}

/// A task component from `target/wasm32-wasip2/release`, or from the path
/// in `env` when set.
fn component(file: &str, package: &str, env: &str) -> anyhow::Result<Vec<u8>> {
    match std::env::var_os(env) {
        Some(p) => std::fs::read(&p).with_context(|| format!("cannot read {}", p.display())),
        None => built("wasm32-wasip2", file, package),
    }
}

/// A task of the misbehaving component (`artifact`) that sleeps `ms`
/// milliseconds in its own directory, then finishes.
pub fn sleeper(i: usize, artifact: &stoa_proto::Artifact, ms: u64) -> stoa_proto::TaskInfo {
    use stoa_proto::{Sandbox, TaskId, TaskInfo, TaskKind, TaskLimits, WasmTask};
    TaskInfo {
        task_id: TaskId::new(format!("sleeper-{i}")).expect("valid id"),
        name: format!("sleeper {i}"),
        resources: "cpus:0.1;mem:32".parse().expect("valid resources"),
        kind: TaskKind::Wasm(WasmTask {
            artifact: artifact.clone(),
            input: format!("sleep:{ms}").into_bytes(),
            args: Vec::new(),
            env: Vec::new(),
            sandbox: Sandbox::Directory,
            files: Vec::new(),
        }),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some(60_000),
        },
    }
}

/// A master and agents, each a real process.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub certs: PathBuf,
    master: Child,
    agents: Vec<Child>,
    resources: String,
}

impl Cluster {
    /// Starts a master and `agents` agents offering `resources` each, and
    /// waits until every agent has registered.
    pub fn start(agents: usize, resources: &str) -> anyhow::Result<Cluster> {
        Cluster::start_with_acls(agents, resources, None)
    }

    /// [`Cluster::start`] with the master's ACL (JSON) set.
    pub fn start_with_acls(
        agents: usize,
        resources: &str,
        acls: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        Cluster::start_with(agents, resources, acls, &[])
    }

    /// [`Cluster::start_with_acls`], every agent started with `agent_flags`.
    pub fn start_with(
        agents: usize,
        resources: &str,
        acls: Option<&str>,
        agent_flags: &[&str],
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        if let Some(acls) = acls {
            std::fs::write(dir.path().join("acls.json"), acls)?;
        }
        let certs = dir.path().join("certs");
        stoa_transport::certs::init(&certs, "test")?;
        let master = spawn_master(dir.path(), &certs)?;
        let mut cluster = Cluster {
            addr: "127.0.0.1:0".parse()?,
            certs,
            master,
            agents: Vec::new(),
            resources: resources.to_string(),
            dir,
        };
        let addr = wait_for_file(
            &cluster.dir.path().join("master.addr"),
            Duration::from_secs(20),
        )?;
        cluster.addr = addr.parse()?;
        for i in 1..=agents {
            let child = cluster.spawn_agent(i, agent_flags)?;
            cluster.agents.push(child);
        }
        for i in 1..=agents {
            cluster.wait_registered(i)?;
        }
        Ok(cluster)
    }

    /// Agent `i`'s work directory (agents count from 1).
    pub fn agent_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{i}"))
    }

    fn spawn_agent(&self, i: usize, extra: &[&str]) -> anyhow::Result<Child> {
        let masters = self.addr.to_string();
        let (dir, resources) = (self.dir.path(), &self.resources);
        spawn_agent(None, dir, &self.certs, &masters, resources, i, extra)
    }

    fn wait_registered(&self, i: usize) -> anyhow::Result<()> {
        wait_registered(&self.agent_dir(i), i).map_err(|e| e.context(self.logs()))
    }

    /// Kills agent `i` (SIGKILL: no goodbye, as in a crash); its executors
    /// keep running.
    pub fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let child = self.agents.get_mut(i - 1).context("no such agent")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Loses agent `i` as a crashed machine would be lost: the agent and
    /// every executor it started are killed.
    pub fn lose_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill_agent(i)?;
        stoa_agent::executors::stop_leftovers(&self.agent_dir(i).join("executors"));
        Ok(())
    }

    /// The id agent `i` registered with.
    pub fn agent_id(&self, i: usize) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.agent_dir(i).join("agent_id"))?
            .trim()
            .to_string())
    }

    /// Starts agent `i` again on its work directory (and agent id), with
    /// `extra` flags. It re-registers on its own; tests wait for what they
    /// need to see.
    pub fn restart_agent(&mut self, i: usize, extra: &[&str]) -> anyhow::Result<()> {
        let _ = self.kill_agent(i);
        let child = self.spawn_agent(i, extra)?;
        self.agents[i - 1] = child;
        Ok(())
    }

    /// Stops the master and starts a new one on the same registry. Its
    /// address changes; agents started before keep the old one.
    pub fn restart_master(&mut self) -> anyhow::Result<()> {
        let _ = self.master.kill();
        let _ = self.master.wait();
        let addr_file = self.dir.path().join("master.addr");
        std::fs::remove_file(&addr_file)?;
        self.master = spawn_master(self.dir.path(), &self.certs)?;
        self.addr = wait_for_file(&addr_file, Duration::from_secs(20))?.parse()?;
        Ok(())
    }

    /// Kills the master (SIGKILL, as a crash), waits `down`, and starts a
    /// new one on the same address and registry, so that agents and
    /// schedulers find it again.
    pub fn crash_master_in_place(&mut self, down: Duration) -> anyhow::Result<()> {
        let _ = self.master.kill();
        let _ = self.master.wait();
        std::thread::sleep(down);
        let addr_file = self.dir.path().join("master.addr");
        std::fs::remove_file(&addr_file)?;
        self.master = spawn_master_on(self.dir.path(), &self.certs, &self.addr.to_string())?;
        wait_for_file(&addr_file, Duration::from_secs(20))?;
        Ok(())
    }

    /// `stoa ARGS --master ADDR --certs DIR`, ready to run.
    pub fn stoa_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut command = Command::new(stoa_bin()?);
        command
            .args(args)
            .arg("--master")
            .arg(self.addr.to_string())
            .arg("--certs")
            .arg(&self.certs);
        Ok(command)
    }

    /// Runs `stoa ARGS --master ADDR --certs DIR` and returns its output.
    pub fn stoa(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(self.stoa_command(args)?.output()?)
    }

    /// Starts `stoa ARGS --master ADDR --certs DIR` with its output piped.
    pub fn stoa_child(&self, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self
            .stoa_command(args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    pub fn client(&self) -> ClientConfig {
        ClientConfig::new(self.addr, &self.certs)
    }

    /// The master's HTTP API, calling as `principal` (a token made with
    /// `stoa token create`).
    pub fn api(&self, principal: &str) -> anyhow::Result<http::Api> {
        let addr = wait_for_file(
            &self.dir.path().join("master.http"),
            Duration::from_secs(20),
        )?;
        let token = http::create_token(&self.addr.to_string(), &self.certs, principal)?;
        Ok(http::Api::new(&addr, Some(&token)))
    }

    /// Sends `signal` to the master process (SIGHUP: read the ACLs again).
    pub fn signal_master(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.master.id())?);
        nix::sys::signal::kill(pid, signal)?;
        Ok(())
    }

    /// True while the master process runs.
    pub fn master_alive(&mut self) -> bool {
        matches!(self.master.try_wait(), Ok(None))
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }
}

/// Every `*.log` in `dir`, for failure messages.
pub(crate) fn logs_in(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "log") {
                out.push_str(&format!("--- {}\n", e.path().display()));
                out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

/// Starts agent `i` of the cluster in `dir` (its work directory
/// `dir/agent-I`, its log `dir/agent-I.log`), registering with `masters`;
/// inside network namespace `netns` when given.
pub(crate) fn spawn_agent(
    netns: Option<&str>,
    dir: &Path,
    certs: &Path,
    masters: &str,
    resources: &str,
    i: usize,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("agent-{i}.log")))?;
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(stoa_bin()?);
            c
        }
        None => Command::new(stoa_bin()?),
    };
    Ok(command
        .args([
            "agent",
            "--master",
            masters,
            "--resources",
            resources,
            "--hostname",
            &format!("host-{i}"),
            // Which agent is which, for frameworks that place by
            // attribute (data locality).
            "--attributes",
            &format!("node:{i}"),
        ])
        .arg("--certs")
        .arg(certs)
        .arg("--work-dir")
        .arg(dir.join(format!("agent-{i}")))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// Waits until the agent working in `work_dir` has registered.
pub(crate) fn wait_registered(work_dir: &Path, i: usize) -> anyhow::Result<()> {
    wait_for_file(&work_dir.join("agent_id"), Duration::from_secs(20))
        .with_context(|| format!("agent-{i} did not register"))?;
    Ok(())
}

/// Starts a master whose files (address, registry, log) live in `dir`.
fn spawn_master(dir: &Path, certs: &Path) -> anyhow::Result<Child> {
    spawn_master_on(dir, certs, "127.0.0.1:0")
}

fn spawn_master_on(dir: &Path, certs: &Path, listen: &str) -> anyhow::Result<Child> {
    let registry = dir.join("registry.redb");
    spawn_named_master(
        dir,
        certs,
        listen,
        "master",
        &registry.to_string_lossy(),
        &[],
    )
}

/// Starts a master whose address and log are `dir/NAME.addr` and
/// `dir/NAME.log`, on `registry`; masters of one cluster share
/// `dir/artifacts`.
pub(crate) fn spawn_named_master(
    dir: &Path,
    certs: &Path,
    listen: &str,
    name: &str,
    registry: &str,
    extra: &[&str],
) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    let mut command = Command::new(stoa_bin()?);
    command
        .args(["master", "--listen", listen, "--agent-timeout", "3"])
        .args(["--http", "127.0.0.1:0", "--http-addr-file"])
        .arg(dir.join(format!("{name}.http")))
        .args(["--https", "127.0.0.1:0", "--https-addr-file"])
        .arg(dir.join(format!("{name}.https")))
        .arg("--certs")
        .arg(certs)
        .arg("--addr-file")
        .arg(dir.join(format!("{name}.addr")))
        .arg("--registry")
        .arg(registry)
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .args(extra);
    let acls = dir.join("acls.json");
    if acls.exists() {
        command.arg("--acls").arg(acls);
    }
    Ok(command.stdout(Stdio::null()).stderr(log).spawn()?)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .chain(std::iter::once(&mut self.master))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 1..=self.agents.len() {
            stoa_agent::executors::stop_leftovers(&self.agent_dir(i).join("executors"));
            stoa_agent::cgroups::remove_leftovers(&self.agent_dir(i));
        }
    }
}

pub(crate) fn wait_for_file(path: &Path, limit: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_string());
        }
        if start.elapsed() > limit {
            bail!("{} did not appear within {limit:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `wasi-cli` fixture, an ordinary Rust program, as a `wasi:cli/run`
/// command component (built for wasm32-wasip2).
pub fn cli_component_wasm() -> anyhow::Result<Vec<u8>> {
    built("wasm32-wasip2", "wasi-cli", "wasi-cli")
}

/// The same program as a WASI preview-1 core module (wasm32-wasip1).
pub fn cli_module_wasm() -> anyhow::Result<Vec<u8>> {
    built("wasm32-wasip1", "wasi-cli", "wasi-cli")
}

/// Where a wasm32-wasip2 release build of `package` puts `file`.wasm,
/// checked to exist (for passing to `stoa` on its command line).
pub fn wasm_path(file: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = profile_dir()?
        .parent()
        .context("no target directory")?
        .join(format!("wasm32-wasip2/release/{file}.wasm"));
    if !path.exists() {
        bail!(
            "{} is missing; build it with `cargo build --release --target wasm32-wasip2 -p {package}`",
            path.display()
        );
    }
    Ok(path)
}

fn built(target: &str, file: &str, package: &str) -> anyhow::Result<Vec<u8>> {
    let path = profile_dir()?
        .parent()
        .context("no target directory")?
        .join(format!("{target}/release/{file}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {}; build it with `cargo build --release --target {target} -p {package}`",
            path.display()
        )
    })
}

/// A command component that calls `wasi:cli/exit.exit-with-code(N)`, as a
/// toolchain that carries exit codes builds one.
pub fn exit_with_code_component(code: u8) -> anyhow::Result<Vec<u8>> {
    let text = format!(
        r#"(component
            (import "wasi:cli/exit@0.2.12" (instance $exit
                (export "exit-with-code" (func (param "status-code" u8)))))
            (core func $exit_with_code (canon lower (func $exit "exit-with-code")))
            (core module $m
                (import "host" "exit-with-code" (func $exit (param i32)))
                (func (export "run") (result i32)
                    (call $exit (i32.const {code}))
                    (i32.const 0)))
            (core instance $i (instantiate $m
                (with "host" (instance (export "exit-with-code" (func $exit_with_code))))))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $run_instance (export "run" (func $run)))
            (export "wasi:cli/run@0.2.6" (instance $run_instance)))"#
    );
    Ok(wat::parse_str(text)?)
}
