//! A single-member etcd run as a child process on loopback ports, for a
//! local cluster of several masters (`stoa up --masters 3`) and for tests.
//! Stopped (and its data removed) when dropped.
//!
//! It runs with a 50 ms heartbeat and a 500 ms election timeout: etcd
//! raises any lease TTL below 1.5 times its election timeout, so with its
//! defaults (100 ms, 1 s) a leader's lease could not be shorter than 2 s.

use crate::registry::etcd::EtcdSpec;
use anyhow::{Context as _, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long etcd may take to start serving.
const STARTUP: Duration = Duration::from_secs(20);

#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    /// Its data and log; removed with it unless kept by the caller.
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
}

impl EtcdServer {
    /// Starts etcd in a new temporary directory.
    pub fn start() -> anyhow::Result<EtcdServer> {
        let dir = tempfile::tempdir().context("cannot make a directory for etcd")?;
        let path = dir.path().to_path_buf();
        let mut server = EtcdServer::start_in(&path)?;
        server.dir = Some(dir);
        Ok(server)
    }

    /// Starts etcd with its data and log in `dir` (kept after it stops).
    pub fn start_in(dir: &Path) -> anyhow::Result<EtcdServer> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let log = dir.join("etcd.log");
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", "stoa"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("stoa={peer}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    anyhow::anyhow!("etcd is not installed; on Debian: apt-get install etcd-server")
                }
                _ => anyhow::Error::from(e).context("cannot start etcd"),
            })?;
        let mut server = EtcdServer {
            child,
            client_port,
            dir: None,
            log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let give_up = Instant::now() + STARTUP;
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("ready to serve client requests") {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited ({status}) while starting:\n{log}");
            }
            if Instant::now() > give_up {
                bail!("etcd did not start within {STARTUP:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `host:port` for clients.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// A registry under `prefix` in this etcd.
    pub fn spec(&self, prefix: &str) -> EtcdSpec {
        EtcdSpec {
            endpoints: vec![self.endpoint()],
            prefix: prefix.to_string(),
        }
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}
