//! A cluster of several masters sharing a registry in a real etcd (run as
//! a child process on loopback), one of them elected leader, and real
//! agents that know every master.

use crate::{logs_in, spawn_agent, spawn_named_master, wait_for_file, wait_registered};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};
use stoa_client::ClientConfig;
use stoa_master::etcd_server::EtcdServer;
use stoa_master::registry::etcd::{EtcdStore, EtcdTimings};
use stoa_transport::Masters;

#[derive(Debug)]
pub struct HaCluster {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub etcd: EtcdServer,
    /// Each master's address, in order of start.
    pub addrs: Vec<SocketAddr>,
    masters: Vec<Option<Child>>,
    agents: Vec<Child>,
    registry: String,
}

/// The registry's prefix in the test's etcd.
const PREFIX: &str = "/stoa-test";

impl HaCluster {
    /// Starts etcd, `masters` masters on it and `agents` agents offering
    /// `resources` each; returns once a leader is elected and every agent
    /// has registered.
    pub fn start(masters: usize, agents: usize, resources: &str) -> anyhow::Result<HaCluster> {
        HaCluster::start_on("127.0.0.1", masters, agents, resources)
    }

    /// [`HaCluster::start`] with the masters listening on `host` (e.g. a
    /// veth address that a network namespace reaches).
    pub fn start_on(
        host: &str,
        masters: usize,
        agents: usize,
        resources: &str,
    ) -> anyhow::Result<HaCluster> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        stoa_transport::certs::init(&certs, "test")?;
        let etcd = EtcdServer::start_in(&dir.path().join("etcd"))?;
        let registry = format!("etcd://{}{PREFIX}", etcd.endpoint());
        let mut cluster = HaCluster {
            certs,
            etcd,
            addrs: Vec::new(),
            masters: Vec::new(),
            agents: Vec::new(),
            registry,
            dir,
        };
        for i in 1..=masters {
            let child = cluster.spawn_master(i, &format!("{host}:0"))?;
            cluster.masters.push(Some(child));
            let addr = wait_for_file(
                &cluster.dir.path().join(format!("master-{i}.addr")),
                Duration::from_secs(20),
            )
            .map_err(|e| e.context(cluster.logs()))?;
            cluster.addrs.push(addr.parse()?);
        }
        cluster.leader()?;
        let list = cluster.masters_arg();
        for i in 1..=agents {
            let child = spawn_agent(
                None,
                cluster.dir.path(),
                &cluster.certs,
                &list,
                resources,
                i,
                &[],
            )?;
            cluster.agents.push(child);
        }
        for i in 1..=agents {
            let work_dir = cluster.dir.path().join(format!("agent-{i}"));
            wait_registered(&work_dir, i).map_err(|e| e.context(cluster.logs()))?;
        }
        Ok(cluster)
    }

    fn spawn_master(&self, i: usize, listen: &str) -> anyhow::Result<Child> {
        let name = format!("master-{i}");
        spawn_named_master(
            self.dir.path(),
            &self.certs,
            listen,
            &name,
            &self.registry,
            &[],
        )
    }

    /// `a,b,c`, as `--master` takes it.
    pub fn masters_arg(&self) -> String {
        Masters::new(self.addrs.clone())
            .map(|m| m.to_string())
            .unwrap_or_default()
    }

    pub fn client(&self) -> ClientConfig {
        let masters = Masters::new(self.addrs.clone()).expect("masters were started");
        ClientConfig::new(masters, &self.certs)
    }

    /// The elected leader's index into `addrs`, waiting up to 20 s for
    /// one to be elected.
    pub fn leader(&self) -> anyhow::Result<usize> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let give_up = Instant::now() + Duration::from_secs(20);
        rt.block_on(async {
            let store = EtcdStore::open(&self.etcd.spec(PREFIX), EtcdTimings::default()).await?;
            loop {
                if let Some(leader) = store.leader().await? {
                    let addr: SocketAddr = leader.parse()?;
                    if let Some(i) = self.addrs.iter().position(|a| *a == addr) {
                        return Ok(i);
                    }
                }
                if Instant::now() > give_up {
                    anyhow::bail!("no master was elected within 20 s:\n{}", self.logs());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    /// Kills master `i` (an index into `addrs`) with SIGKILL.
    pub fn kill_master(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.masters[i]
            .take()
            .context("that master is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops master `i` with SIGTERM: it resigns.
    pub fn stop_master(&mut self, i: usize) -> anyhow::Result<()> {
        let mut child = self.masters[i]
            .take()
            .context("that master is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        child.wait()?;
        Ok(())
    }

    /// Starts master `i` again, on its old address, as a standby.
    pub fn restart_master(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = self.addrs[i].to_string();
        let file = self.dir.path().join(format!("master-{}.addr", i + 1));
        let _ = std::fs::remove_file(&file);
        let child = self.spawn_master(i + 1, &addr)?;
        self.masters[i] = Some(child);
        wait_for_file(&file, Duration::from_secs(20))?;
        Ok(())
    }

    pub fn logs(&self) -> String {
        let mut logs = logs_in(self.dir.path());
        let etcd = self.etcd.log();
        let tail = etcd.len().saturating_sub(4_000);
        logs.push_str("--- etcd (its last lines)\n");
        logs.push_str(etcd.get(tail..).unwrap_or(&etcd));
        logs
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for child in self
            .agents
            .iter_mut()
            .chain(self.masters.iter_mut().flatten())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 1..=self.agents.len() {
            let work_dir = self.dir.path().join(format!("agent-{i}"));
            stoa_agent::executors::stop_leftovers(&work_dir.join("executors"));
            stoa_agent::cgroups::remove_leftovers(&work_dir);
        }
    }
}
