//! Finding the master that leads among several.
//!
//! A standby master serves only the [`ALPN_STANDBY`] channel, which every
//! client offers after its own: a client that reaches a standby learns it
//! in the handshake (no guessing from a closed stream), and the standby
//! then closes the connection with [`close::NOT_LEADER`] and the leader's
//! address, if one is elected, as the reason. [`connect_leader`] follows
//! that to the leader, and [`Masters`] remembers it for the next time.

use crate::{FrameReceiver, FrameSender, MASTER_NAME, close};
use anyhow::Context as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};

/// How long a master may take to answer a handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The channel a standby master serves: nothing but "not the leader".
pub const ALPN_STANDBY: &[u8] = b"stoa-standby/1";

/// The masters of a cluster, as `--master a:5050,b:5050,c:5050` names
/// them, and the one last found leading. Clones share what they learn.
#[derive(Debug, Clone)]
pub struct Masters {
    addrs: Arc<[SocketAddr]>,
    leader: Arc<Mutex<Option<SocketAddr>>>,
}

impl Masters {
    pub fn new(addrs: Vec<SocketAddr>) -> anyhow::Result<Masters> {
        anyhow::ensure!(!addrs.is_empty(), "no master given");
        Ok(Masters {
            addrs: addrs.into(),
            leader: Arc::new(Mutex::new(None)),
        })
    }

    /// Every master given, in order.
    pub fn all(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The master to try first: the one last found leading, else the
    /// first given (a client endpoint binds to its address family).
    pub fn first(&self) -> SocketAddr {
        self.known_leader().unwrap_or(self.addrs[0])
    }

    fn known_leader(&self) -> Option<SocketAddr> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn found(&self, leader: Option<SocketAddr>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// The order to try them in: the known leader, then the rest.
    fn candidates(&self) -> Vec<SocketAddr> {
        let known = self.known_leader();
        known
            .into_iter()
            .chain(self.addrs.iter().copied().filter(|a| Some(*a) != known))
            .collect()
    }
}

impl From<SocketAddr> for Masters {
    fn from(addr: SocketAddr) -> Masters {
        Masters {
            addrs: Arc::new([addr]),
            leader: Arc::new(Mutex::new(None)),
        }
    }
}

impl std::str::FromStr for Masters {
    type Err = String;

    /// `host:port[,host:port…]`; names are resolved now.
    fn from_str(s: &str) -> Result<Masters, String> {
        let mut addrs = Vec::new();
        for one in s.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let resolved = one
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve master {one:?} (give HOST:PORT): {e}"))?;
            let first = resolved
                .into_iter()
                .next()
                .ok_or_else(|| format!("master {one:?} resolves to no address"))?;
            addrs.push(first);
        }
        Masters::new(addrs).map_err(|_| {
            "give at least one master, e.g. --master 10.0.0.1:5050,10.0.0.2:5050".to_string()
        })
    }
}

impl std::fmt::Display for Masters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        f.write_str(&all.join(","))
    }
}

/// The master reached is a standby; `leader` is where the leader serves,
/// if one is elected.
#[derive(Debug, thiserror::Error)]
#[error("the master at {at} is a standby; {}", match leader {
    Some(l) => format!("the leader is {l}"),
    None => "no master leads yet".to_string(),
})]
pub struct NotLeader {
    pub at: SocketAddr,
    pub leader: Option<SocketAddr>,
}

/// The reason a standby (or a master that stopped leading) gives when it
/// closes: the leader's address, or nothing.
pub fn not_leader_reason(leader: Option<&str>) -> Vec<u8> {
    leader.unwrap_or_default().as_bytes().to_vec()
}

/// Connects to one master on one channel and opens the connection's
/// stream; a standby is a [`NotLeader`] error.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    master: SocketAddr,
    config: quinn::ClientConfig,
) -> anyhow::Result<(quinn::Connection, FrameSender, FrameReceiver)> {
    with_stream(connect_one(endpoint, master, config).await?).await
}

async fn with_stream(
    conn: quinn::Connection,
) -> anyhow::Result<(quinn::Connection, FrameSender, FrameReceiver)> {
    let (send, recv) = conn
        .open_bi()
        .await
        .context("cannot open a stream to the master")?;
    Ok((conn, FrameSender::new(send), FrameReceiver::new(recv)))
}

/// Connects to one master; a standby is a [`NotLeader`] error.
async fn connect_one(
    endpoint: &quinn::Endpoint,
    master: SocketAddr,
    config: quinn::ClientConfig,
) -> anyhow::Result<quinn::Connection> {
    let connecting = endpoint
        .connect_with(config, master, MASTER_NAME)
        .context("cannot start a connection")?;
    // A master that does not answer is not waited for longer than this
    // (QUIC's own limit is the idle timeout, twice over): the others are
    // being tried meanwhile, and a failover waits on the slowest.
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {HANDSHAKE_TIMEOUT:?}"))
        .and_then(|c| c.map_err(anyhow::Error::from))
        .with_context(|| format!("QUIC handshake with the master at {master} failed"))?;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(ALPN_STANDBY) {
        // The standby closes at once, saying who leads.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(2), conn.closed()).await;
        let leader = match closed {
            Ok(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == close::NOT_LEADER =>
            {
                std::str::from_utf8(&c.reason)
                    .ok()
                    .and_then(|r| r.parse().ok())
            }
            _ => None,
        };
        conn.close(close::NORMAL, b"");
        return Err(NotLeader { at: master, leader }.into());
    }
    Ok(conn)
}

/// Connects to the master that leads, trying every master at once (a
/// dead one costs a handshake timeout; tried in turn, a dead leader
/// first would add that to every failover) and following a standby's
/// word on who leads to a master not in the list. One pass; callers
/// retry with [`crate::reconnect_delays`] (an election takes a moment).
pub async fn connect_leader(
    endpoint: &quinn::Endpoint,
    masters: &Masters,
    config: quinn::ClientConfig,
) -> anyhow::Result<(quinn::Connection, FrameSender, FrameReceiver)> {
    with_stream(connect_leader_conn(endpoint, masters, config).await?).await
}

/// [`connect_leader`] without opening a stream (for channels whose
/// streams are opened per request, as artifact uploads are).
pub async fn connect_leader_conn(
    endpoint: &quinn::Endpoint,
    masters: &Masters,
    config: quinn::ClientConfig,
) -> anyhow::Result<quinn::Connection> {
    let mut attempts = tokio::task::JoinSet::new();
    // Attempts per master in this pass, and those under way.
    let mut tries: std::collections::HashMap<SocketAddr, u32> = Default::default();
    let mut under_way = std::collections::HashSet::new();
    let mut attempt = |attempts: &mut tokio::task::JoinSet<_>,
                       under_way: &mut std::collections::HashSet<SocketAddr>,
                       addr: SocketAddr,
                       after: std::time::Duration| {
        let n = tries.entry(addr).or_insert(0);
        if *n >= ASKS_PER_PASS || !under_way.insert(addr) {
            return;
        }
        *n += 1;
        let (endpoint, config) = (endpoint.clone(), config.clone());
        attempts.spawn(async move {
            tokio::time::sleep(after).await;
            (addr, connect_one(&endpoint, addr, config).await)
        });
    };
    for addr in masters.candidates() {
        attempt(
            &mut attempts,
            &mut under_way,
            addr,
            std::time::Duration::ZERO,
        );
    }
    let mut last = None;
    while let Some(joined) = attempts.join_next().await {
        let Ok((addr, result)) = joined else { continue };
        under_way.remove(&addr);
        match result {
            // The others are dropped with `attempts`: their connections
            // close.
            Ok(conn) => {
                masters.found(Some(addr));
                return Ok(conn);
            }
            Err(e) => {
                match e.downcast_ref::<NotLeader>() {
                    // Follow the word on who leads, at once.
                    Some(NotLeader {
                        leader: Some(leader),
                        ..
                    }) => attempt(
                        &mut attempts,
                        &mut under_way,
                        *leader,
                        std::time::Duration::ZERO,
                    ),
                    // An election is under way: ask this standby again
                    // shortly (it may be the one elected).
                    Some(NotLeader { leader: None, .. }) => {
                        attempt(&mut attempts, &mut under_way, addr, ASK_AGAIN)
                    }
                    None => {}
                }
                last = Some(e);
            }
        }
    }
    masters.found(None);
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no master given"))
        .context(format!(
            "no master leads among {masters} yet; check that they run and reach their registry (an election takes up to a lease's time)"
        )))
}

/// While no master leads, a standby is asked again this often, at most
/// [`ASKS_PER_PASS`] times in one pass (about a handshake timeout).
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_millis(50);
const ASKS_PER_PASS: u32 = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_parse_and_try_the_known_leader_first() {
        let m: Masters = "127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3"
            .parse()
            .expect("parses");
        assert_eq!(m.to_string(), "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3");
        let two: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        m.clone().found(Some(two));
        assert_eq!(m.first(), two, "clones share what they learn");
        assert_eq!(
            m.candidates(),
            ["127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:3"]
                .map(|a| a.parse::<SocketAddr>().expect("addr"))
        );
        for bad in ["", "nohost", "127.0.0.1"] {
            assert!(bad.parse::<Masters>().is_err(), "{bad}");
        }
    }
}
