//! An agent on its own network: a network namespace joined to this one by
//! a veth pair on private addresses, whose link a test cuts and heals as
//! a partition between the agent and its master would.

use crate::{logs_in, spawn_agent, spawn_named_master, wait_for_file, wait_registered};
use anyhow::{Context as _, bail};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;
use stoa_client::ClientConfig;

/// A namespace and the veth pair into it, removed on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    host_if: String,
    /// This side's address (the master listens here).
    pub host_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetNs {
    /// A namespace named after this process and the how-manieth it is in
    /// it, on a /30 of 10.201.N.0/24 (N from the pid, the /30 from the
    /// count), so that test processes and tests running at once do not
    /// meet.
    pub fn create() -> anyhow::Result<NetNs> {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 60;
        let id = std::process::id();
        let subnet = id % 250 + 1;
        let name = format!("stoa-part-{id}-{n}");
        let (host_if, ns_if) = (format!("sph{id}x{n}"), format!("spn{id}x{n}"));
        let (host_ip, ns_ip) = (
            format!("10.201.{subnet}.{}", n * 4 + 1),
            format!("10.201.{subnet}.{}", n * 4 + 2),
        );
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if])?;
        inside(&["link", "set", &ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts the link: nothing passes either way until [`NetNs::heal`].
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "down"])
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "up"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A master on this side and one agent in a namespace of its own.
#[derive(Debug)]
pub struct PartitionedCluster {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub addr: SocketAddr,
    master: Child,
    agent: Child,
    /// Dropped after the processes: the agent runs inside it.
    pub net: NetNs,
}

impl PartitionedCluster {
    /// `master_flags` tune the master (e.g. its timeouts).
    pub fn start(resources: &str, master_flags: &[&str]) -> anyhow::Result<PartitionedCluster> {
        let net = NetNs::create()?;
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        stoa_transport::certs::init(&certs, "test")?;
        let registry = dir.path().join("registry.redb");
        let master = spawn_named_master(
            dir.path(),
            &certs,
            &format!("{}:0", net.host_ip),
            "master",
            &registry.to_string_lossy(),
            master_flags,
        )?;
        let addr: SocketAddr =
            wait_for_file(&dir.path().join("master.addr"), Duration::from_secs(20))?.parse()?;
        let agent = spawn_agent(
            Some(&net.name),
            dir.path(),
            &certs,
            &addr.to_string(),
            resources,
            1,
            &[],
        )?;
        let cluster = PartitionedCluster {
            certs,
            addr,
            master,
            agent,
            net,
            dir,
        };
        wait_registered(&cluster.dir.path().join("agent-1"), 1)
            .map_err(|e| e.context(cluster.logs()))?;
        Ok(cluster)
    }

    pub fn client(&self) -> ClientConfig {
        ClientConfig::new(self.addr, &self.certs)
    }

    pub fn logs(&self) -> String {
        logs_in(self.dir.path())
    }
}

impl Drop for PartitionedCluster {
    fn drop(&mut self) {
        let _ = self.net.heal();
        for child in [&mut self.agent, &mut self.master] {
            let _ = child.kill();
            let _ = child.wait();
        }
        let work_dir = self.dir.path().join("agent-1");
        stoa_agent::executors::stop_leftovers(&work_dir.join("executors"));
        stoa_agent::cgroups::remove_leftovers(&work_dir);
    }
}
