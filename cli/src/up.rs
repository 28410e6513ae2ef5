//! `stoa up`: a master (or several on an etcd of their own) and agents on
//! this machine, as child processes of this one, with certificates, state
//! and logs under one directory.

use anyhow::{Context as _, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory for certificates, agent state and logs.
    #[arg(long, default_value = ".stoa")]
    dir: PathBuf,
    /// How many agents to start.
    #[arg(long, default_value_t = 2)]
    agents: usize,
    /// Master address; with several masters, the first's (the others take
    /// the ports after it).
    #[arg(long, default_value = "127.0.0.1:5050")]
    listen: SocketAddr,
    /// How many masters to start. More than one share a registry in an
    /// etcd this command starts too (Debian: etcd-server); one leads, the
    /// others stand by.
    #[arg(long, default_value_t = 1)]
    masters: usize,
    /// Print what is running as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Write this file once every agent has registered (for scripts).
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

struct Node {
    name: String,
    child: Child,
    log: PathBuf,
    /// How it was started, to start it again.
    args: Vec<String>,
    /// An agent's work directory.
    work_dir: Option<PathBuf>,
}

/// Masters and agents running as children of this process.
pub struct LocalCluster {
    /// The masters' addresses, as `--master` takes them.
    pub addr: String,
    pub certs: PathBuf,
    /// The first `masters` nodes are the masters.
    nodes: Vec<Node>,
    masters: usize,
    agent_ids: Vec<String>,
    /// The masters' registry, when there are several; stopped after them.
    etcd: Option<stoa_master::etcd_server::EtcdServer>,
    /// Each master's HTTP API (host:port), in the order of `addr`.
    pub http: Vec<String>,
}

impl LocalCluster {
    /// The process id of master `i` (in the order of `addr`).
    pub fn master_pid(&self, i: usize) -> Option<u32> {
        self.nodes[..self.masters].get(i).and_then(|n| n.child.id())
    }

    /// Starts `masters` masters from `listen` on and `agents` agents
    /// offering `per_agent` each, state under `dir`; returns once every
    /// agent has registered.
    pub async fn start(
        dir: &Path,
        masters: usize,
        agents: usize,
        listen: SocketAddr,
        per_agent: &stoa_proto::Resources,
    ) -> anyhow::Result<LocalCluster> {
        let certs = dir.join("certs");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        if stoa_transport::certs::init(&certs, "local")? {
            eprintln!("created cluster certificates in {}", certs.display());
        }
        let exe = std::env::current_exe().context("cannot find the stoa binary")?;
        let (registry, etcd) = if masters > 1 {
            let etcd_dir = dir.join("etcd");
            let etcd = tokio::task::spawn_blocking(move || {
                stoa_master::etcd_server::EtcdServer::start_in(&etcd_dir)
            })
            .await??;
            eprintln!("etcd serving the masters' registry at {}", etcd.endpoint());
            (format!("etcd://{}/stoa", etcd.endpoint()), Some(etcd))
        } else {
            (path(&dir.join("registry.redb"))?.to_string(), None)
        };
        let mut nodes = Vec::new();
        let mut addr_files = Vec::new();
        let mut http_files = Vec::new();
        for i in 0..masters {
            let name = if masters == 1 {
                "master".to_string()
            } else {
                format!("master-{}", i + 1)
            };
            let addr_file = dir.join(format!("{name}.addr"));
            let _ = std::fs::remove_file(&addr_file);
            let http_file = dir.join(format!("{name}.http"));
            let _ = std::fs::remove_file(&http_file);
            let port = u16::try_from(usize::from(listen.port()) + i)
                .ok()
                .filter(|_| listen.port() != 0)
                .unwrap_or(0);
            let master = spawn(
                &exe,
                &name,
                &logs,
                &[
                    "master",
                    "--listen",
                    &SocketAddr::new(listen.ip(), port).to_string(),
                    "--certs",
                    path(&certs)?,
                    "--addr-file",
                    path(&addr_file)?,
                    "--registry",
                    &registry,
                    "--artifacts",
                    path(&dir.join("artifacts"))?,
                    // The API on the same port number, over TCP, as Mesos
                    // serves its HTTP API beside its own protocol; on
                    // loopback, since it is plain HTTP.
                    "--http",
                    &SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port).to_string(),
                    "--http-addr-file",
                    path(&http_file)?,
                ],
            )?;
            nodes.push(master);
            addr_files.push(addr_file);
            http_files.push(http_file);
        }
        let started = async {
            let mut addrs = Vec::new();
            for file in &addr_files {
                addrs.push(wait_for(file, &mut nodes, Duration::from_secs(20)).await?);
            }
            let addr = addrs.join(",");
            let mut http = Vec::new();
            for file in &http_files {
                http.push(wait_for(file, &mut nodes, Duration::from_secs(20)).await?);
            }
            for i in 1..=agents {
                let name = format!("agent-{i}");
                let work = dir.join(&name);
                let _ = std::fs::remove_file(work.join("agent_id"));
                let mut node = spawn(
                    &exe,
                    &name,
                    &logs,
                    &[
                        "agent",
                        "--master",
                        &addr,
                        "--certs",
                        path(&certs)?,
                        "--work-dir",
                        path(&work)?,
                        "--resources",
                        &per_agent.to_string(),
                        "--attributes",
                        &format!("name:{name}"),
                        "--hostname",
                        &format!("{}-{name}", crate::machine::hostname()),
                    ],
                )?;
                node.work_dir = Some(work);
                nodes.push(node);
            }
            let mut agent_ids = Vec::new();
            for i in 1..=agents {
                agent_ids.push(
                    wait_for(
                        &dir.join(format!("agent-{i}/agent_id")),
                        &mut nodes,
                        Duration::from_secs(30),
                    )
                    .await?,
                );
            }
            anyhow::Ok((addr, agent_ids, http))
        }
        .await;
        match started {
            Ok((addr, agent_ids, http)) => Ok(LocalCluster {
                http,
                addr,
                certs,
                nodes,
                masters,
                agent_ids,
                etcd,
            }),
            Err(e) => {
                stop(&mut nodes).await;
                Err(e)
            }
        }
    }

    /// The etcd the masters share, if there are several.
    pub fn etcd_endpoint(&self) -> Option<String> {
        self.etcd.as_ref().map(|e| e.endpoint())
    }

    fn master_at(&mut self, addr: SocketAddr) -> anyhow::Result<&mut Node> {
        let i = self
            .addr
            .split(',')
            .position(|a| a == addr.to_string())
            .with_context(|| format!("no master at {addr}"))?;
        Ok(&mut self.nodes[i])
    }

    /// Stops the master at `addr`: SIGTERM (it resigns) when `graceful`,
    /// else SIGKILL (as a crash).
    pub async fn stop_master(&mut self, addr: SocketAddr, graceful: bool) -> anyhow::Result<()> {
        let node = self.master_at(addr)?;
        if graceful {
            if let Some(pid) = node.child.id().and_then(|p| i32::try_from(p).ok()) {
                use nix::sys::signal::{Signal, kill};
                kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM)?;
            }
        } else {
            node.child.start_kill()?;
        }
        node.child.wait().await?;
        Ok(())
    }

    /// Starts the master that was at `addr` again, on that address.
    pub async fn restart_master(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the stoa binary")?;
        let node = self.master_at(addr)?;
        let mut args = node.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = addr.to_string();
        }
        let logs = node.log.parent().map(Path::to_path_buf).unwrap_or_default();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = node.name.clone();
        *node = spawn(&exe, &name, &logs, &args)?;
        Ok(())
    }

    /// Stops every process of the cluster, executors included (etcd
    /// last: a stopping leader resigns through it).
    pub async fn stop(mut self) {
        stop(&mut self.nodes).await;
        drop(self.etcd.take());
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    if args.masters == 0 {
        bail!("--masters must be at least 1");
    }
    let dir = std::path::absolute(&args.dir)?;
    if let Some(ready) = &args.ready_file {
        let _ = std::fs::remove_file(ready);
    }
    let per_agent = share_of_machine(args.agents)?;
    let mut cluster =
        LocalCluster::start(&dir, args.masters, args.agents, args.listen, &per_agent).await?;
    let token = operator_token(&cluster).await;
    let reported = (|| {
        let token = token?;
        report(&args, &dir, &cluster, &per_agent, &token)?;
        // For scripts (./dev up) that point people at the page.
        if let Some(http) = cluster.http.first() {
            let ui = dir.join("ui.url");
            std::fs::write(&ui, ui_url(http, &token))
                .with_context(|| format!("cannot write {}", ui.display()))?;
        }
        if let Some(ready) = &args.ready_file {
            std::fs::write(ready, &cluster.addr)
                .with_context(|| format!("cannot write {}", ready.display()))?;
        }
        anyhow::Ok(())
    })();
    if let Err(e) = reported {
        cluster.stop().await;
        return Err(e);
    }
    let exited = tokio::select! {
        _ = crate::shutdown_signal() => None,
        name = first_exit(&mut cluster.nodes) => Some(name),
    };
    if let Some(name) = &exited {
        eprintln!(
            "{name} exited; stopping the cluster (see {})",
            dir.join("logs").display()
        );
    }
    cluster.stop().await;
    eprintln!("cluster stopped");
    if exited.is_some() {
        bail!("a cluster process exited unexpectedly")
    } else {
        Ok(())
    }
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// Splits this machine between `n` agents.
pub fn share_of_machine(n: usize) -> anyhow::Result<stoa_proto::Resources> {
    let all = crate::machine::detect_resources()?;
    let n = n as u64;
    Ok(stoa_proto::Resources::new()
        .with_millicpus((all.millicpus() / n).max(100))
        .with_mem_mib((all.mem_mib() / 2 / n).max(256))
        .with_disk_mib(4096))
}

fn spawn(exe: &Path, name: &str, logs: &Path, args: &[&str]) -> anyhow::Result<Node> {
    let log = logs.join(format!("{name}.log"));
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Node {
        name: name.to_string(),
        child,
        log,
        args: args.iter().map(|a| a.to_string()).collect(),
        work_dir: None,
    })
}

/// Waits for a node to write `file`, failing early if any node dies.
async fn wait_for(file: &Path, nodes: &mut [Node], limit: Duration) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(file)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_string());
        }
        for node in nodes.iter_mut() {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "{} exited ({status}) during start-up; see {}",
                    node.name,
                    node.log.display()
                );
            }
        }
        if start.elapsed() > limit {
            bail!(
                "{} did not appear within {limit:?}; see the logs",
                file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn first_exit(nodes: &mut [Node]) -> String {
    loop {
        for node in nodes.iter_mut() {
            if let Ok(Some(_)) = node.child.try_wait() {
                return node.name.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every node, then SIGKILL to any still running after 5 s.
async fn stop(nodes: &mut [Node]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for node in nodes.iter() {
        if let Some(pid) = node.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(5), node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
    // Agents leave their executors running for the next agent; `up` owns
    // the whole cluster, so it stops them too.
    for node in nodes.iter() {
        if let Some(work) = &node.work_dir {
            stoa_agent::executors::stop_leftovers(&work.join("executors"));
            stoa_agent::cgroups::remove_leftovers(work);
        }
    }
}

/// The web UI's address, with the operator's token for the page to use.
fn ui_url(http: impl std::fmt::Display, token: &str) -> String {
    format!("http://{http}{}#token={token}", stoa_master::http::UI_PATH)
}

/// How long the token `stoa up` prints stays valid.
const LOCAL_TOKEN_TTL_SECS: u64 = 30 * 86_400;

/// A token for the local operator, to call the HTTP API with.
pub(crate) async fn operator_token(cluster: &LocalCluster) -> anyhow::Result<String> {
    let masters: stoa_transport::Masters = cluster.addr.parse().map_err(anyhow::Error::msg)?;
    let mut client = stoa_client::ClientConfig::new(masters, &cluster.certs);
    client.identity = stoa_transport::OPERATOR_NAME.into();
    let call = stoa_proto::operator::OperatorCall::CreateToken {
        principal: stoa_proto::operator::Caller::OPERATOR.into(),
        ttl_secs: LOCAL_TOKEN_TTL_SECS,
    };
    match stoa_client::operator_call(&client, &call).await? {
        stoa_proto::operator::OperatorReply::Token { token, .. } => Ok(token),
        other => bail!("the master answered {other:?} when asked for a token"),
    }
}

fn report(
    args: &UpArgs,
    dir: &Path,
    cluster: &LocalCluster,
    per_agent: &stoa_proto::Resources,
    token: &str,
) -> anyhow::Result<()> {
    let (addr, nodes, agent_ids) = (&cluster.addr, &cluster.nodes, &cluster.agent_ids);
    let (masters, agents) = nodes.split_at(cluster.masters);
    let addrs: Vec<&str> = addr.split(',').collect();
    let certs = &cluster.certs;
    if args.json {
        let agents: Vec<_> = agents
            .iter()
            .zip(agent_ids)
            .map(|(n, id)| serde_json::json!({"name": n.name, "pid": n.child.id(), "agent_id": id, "resources": per_agent.to_string(), "log": n.log}))
            .collect();
        let masters: Vec<_> = masters
            .iter()
            .zip(&addrs)
            .map(|(n, a)| serde_json::json!({"name": n.name, "address": a, "pid": n.child.id(), "log": n.log}))
            .collect();
        let out = serde_json::json!({
            "master": masters.first(),
            "masters": masters,
            "etcd": cluster.etcd.as_ref().map(|e| e.endpoint()),
            "agents": agents,
            "certs": certs,
            "http": cluster.http.first().map(|h| format!("http://{h}/api/v1/")),
            "ui": cluster.http.first().map(|h| ui_url(h, token)),
            "token": token,
        });
        println!("{out}");
    } else {
        println!("stoa cluster up (state in {})", dir.display());
        for (n, a) in masters.iter().zip(&addrs) {
            println!(
                "  {:<8} {a}  pid {}  log {}",
                n.name,
                n.child.id().unwrap_or(0),
                n.log.display()
            );
        }
        if let Some(etcd) = &cluster.etcd {
            println!(
                "  etcd     {}  (the masters' registry; one master leads)",
                etcd.endpoint()
            );
        }
        for (n, id) in agents.iter().zip(agent_ids) {
            println!(
                "  {}  {id}  {per_agent}  pid {}  log {}",
                n.name,
                n.child.id().unwrap_or(0),
                n.log.display()
            );
        }
        println!("  certs    {}", certs.display());
        if let Some(http) = cluster.http.first() {
            println!("  ui       {}", ui_url(http, token));
            println!(
                "  api      http://{http}/api/v1/  (every master serves one; the leader answers)"
            );
            println!("  token    {token}");
        }
        let certs = certs.display();
        println!("next:");
        println!("  open the ui above in a browser, or look from here:");
        println!("  stoa ps --master {addr} --certs {certs}");
        println!("  run a program on the cluster:");
        println!("  stoa run PROGRAM.wasm --master {addr} --certs {certs} -- ARGS");
        println!("stop with Ctrl-C");
    }
    Ok(())
}
