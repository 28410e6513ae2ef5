//! Finding the master that leads among several.
//!
//! A standby master serves only the [`ALPN_STANDBY`] channel, which every
//! client offers after its own: a client that reaches a standby learns it
//! in the handshake (no guessing from a closed stream), asks it who leads
//! ([`LeaderQuery`]), and the standby answers by closing the connection
//! with [`close::NOT_LEADER`] and the leader's address as the reason.
//! [`connect_leader`] follows that to the leader, and [`Masters`]
//! remembers it for the next time; [`watch_leader`] keeps a query open
//! while connected, to hear of the next election at once.

use crate::{FrameReceiver, FrameSender, MASTER_NAME, close};
use anyhow::Context as _;
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;
pub use stoa_proto::standby::LeaderQuery;

/// How long a master may take to answer a handshake. A dead one is
/// given up on sooner, at QUIC's idle timeout; this bounds a live one
/// that is slow, as a new leader is while a fleet reconnects (a shorter
/// bound there makes clients retry and the crowd larger).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel a standby master serves: who leads (see [`LeaderQuery`]).
pub const ALPN_STANDBY: &[u8] = b"stoa-standby/2";

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

/// How long a standby holds a query while a client looks for the leader:
/// about an election (a lease's time and etcd's check of it).
const FIND_HOLD: Duration = Duration::from_secs(3);
/// How long a watching client's query is held before it is asked anew.
const WATCH_HOLD: Duration = Duration::from_secs(30);
/// The longest hold a standby grants.
const MAX_HOLD: Duration = Duration::from_secs(60);
/// How long a standby waits for the query once the handshake is done.
const QUERY_WAIT: Duration = Duration::from_secs(1);

/// Answers one connection on the standby channel (the master's side of
/// [`LeaderQuery`]): once `leader` names a master other than the query's
/// `not`, or the hold has passed, closes the connection with the leader's
/// address as the reason.
pub async fn answer_query(
    conn: quinn::Connection,
    mut leader: tokio::sync::watch::Receiver<Option<SocketAddr>>,
) {
    let asked = async {
        let recv = conn.accept_uni().await.ok()?;
        FrameReceiver::new(recv)
            .recv::<LeaderQuery>()
            .await
            .ok()
            .flatten()
    };
    // A client that asks nothing gets what is known now.
    let query = tokio::time::timeout(QUERY_WAIT, asked)
        .await
        .ok()
        .flatten()
        .unwrap_or(LeaderQuery {
            not: None,
            hold_ms: 0,
        });
    let hold = Duration::from_millis(query.hold_ms.into()).min(MAX_HOLD);
    let news = async {
        let found = tokio::time::timeout(hold, leader.wait_for(|l| l.is_some() && *l != query.not))
            .await
            .ok()
            .and_then(|l| l.ok().map(|l| *l));
        found.unwrap_or_else(|| *leader.borrow())
    };
    let answer = tokio::select! {
        answer = news => answer,
        // The client went away.
        _ = conn.closed() => return,
    };
    let reason = answer.map(|a| a.to_string());
    conn.close(close::NOT_LEADER, &not_leader_reason(reason.as_deref()));
    // Keep the connection until the close is sent.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
}

/// Connects to one master on one channel and opens the connection's
/// stream; a standby is a [`NotLeader`] error.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    master: SocketAddr,
    config: quinn::ClientConfig,
) -> anyhow::Result<(quinn::Connection, FrameSender, FrameReceiver)> {
    let ask = LeaderQuery {
        not: None,
        hold_ms: 0,
    };
    with_stream(connect_one(endpoint, master, config, &ask).await?).await
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

/// Connects to one master; a standby is asked `ask` and is a [`NotLeader`]
/// error with its answer.
async fn connect_one(
    endpoint: &quinn::Endpoint,
    master: SocketAddr,
    config: quinn::ClientConfig,
    ask: &LeaderQuery,
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
        let sent = async {
            let mut query = FrameSender::new(conn.open_uni().await?);
            query.send(ask).await?;
            query.finish();
            anyhow::Ok(())
        };
        if let Err(e) = sent.await {
            tracing::debug!(error = %e, %master, "cannot ask a standby who leads");
        }
        let wait = Duration::from_millis(ask.hold_ms.into()) + QUERY_WAIT + HANDSHAKE_TIMEOUT;
        let closed = tokio::time::timeout(wait, conn.closed()).await;
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
/// word on who leads to a master not in the list. The standbys are asked
/// for a leader other than the one last known, and hold the answer until
/// one is elected: a client that lost its leader is told of the next the
/// moment it is elected, not sent back to the dead one. One pass; callers
/// retry with [`crate::reconnect_delays`].
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
    // The last known leader is tried directly too: if it still leads, it
    // answers first.
    let ask = Arc::new(LeaderQuery {
        not: masters.known_leader(),
        hold_ms: hold_ms(FIND_HOLD),
    });
    let mut attempts = tokio::task::JoinSet::new();
    // Attempts per master in this pass, and those under way.
    let mut tries: HashMap<SocketAddr, u32> = HashMap::new();
    let mut under_way = HashSet::new();
    let mut attempt = |attempts: &mut tokio::task::JoinSet<_>,
                       under_way: &mut HashSet<SocketAddr>,
                       addr: SocketAddr| {
        let n = tries.entry(addr).or_insert(0);
        if *n >= ASKS_PER_PASS || !under_way.insert(addr) {
            return;
        }
        *n += 1;
        let (endpoint, config, ask) = (endpoint.clone(), config.clone(), ask.clone());
        attempts.spawn(async move { (addr, connect_one(&endpoint, addr, config, &ask).await) });
    };
    for addr in masters.candidates() {
        attempt(&mut attempts, &mut under_way, addr);
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
                    }) => attempt(&mut attempts, &mut under_way, *leader),
                    // No leader within the hold: ask this standby again
                    // (it may be the one elected).
                    Some(NotLeader { leader: None, .. }) => {
                        attempt(&mut attempts, &mut under_way, addr)
                    }
                    None => {}
                }
                last = Some(e);
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no master given"))
        .context(format!(
            "no master leads among {masters} yet; check that they run and reach their registry (an election takes up to a lease's time)"
        )))
}

/// How widely agents spread their return to a master after losing it
/// (a new leader, or the same one restarted): a random delay up to this
/// long before reconnecting. A master answers some 700 handshakes a
/// second on this project's 2-core machines; a thousand agents in one
/// instant queue the scheduler's handshake behind theirs, and the first
/// offer with it. Schedulers return at once.
pub const AGENT_RETURN_SPREAD: Duration = Duration::from_secs(2);

/// A random delay up to `max`.
pub fn spread(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

/// The longest a client waits after connecting before it watches for
/// the next election.
const WATCH_START: Duration = Duration::from_secs(2);

/// A standby is asked at most this often in one pass.
const ASKS_PER_PASS: u32 = 2;

fn hold_ms(hold: Duration) -> u32 {
    u32::try_from(hold.as_millis()).unwrap_or(u32::MAX)
}

/// Watches for a new leader while `conn`, a connection to the leader,
/// lives: a query held open on a standby (see [`LeaderQuery`]) hears of
/// an election the moment it ends, and `conn` is then closed with
/// [`close::NOT_LEADER`], so its owner reconnects (to the new leader,
/// which `masters` now names) without waiting out the idle timeout of a
/// leader that died. Mesos's clients watch ZooKeeper for the same news;
/// Stoa's ask the standbys, which watch etcd. Ends with `conn`; does
/// nothing with a single master.
///
/// The watch begins after a random delay of up to [`WATCH_START`], so
/// that its handshakes do not join those of a fleet reconnecting.
pub fn watch_leader(
    endpoint: &quinn::Endpoint,
    masters: &Masters,
    config: &quinn::ClientConfig,
    conn: &quinn::Connection,
) {
    let leader = conn.remote_address();
    let standbys: Vec<SocketAddr> = masters
        .all()
        .iter()
        .copied()
        .filter(|a| *a != leader)
        .collect();
    if standbys.is_empty() {
        return;
    }
    let mut config = config.clone();
    config.transport_config(crate::tls::watch_transport());
    let (endpoint, masters, conn) = (endpoint.clone(), masters.clone(), conn.clone());
    let ask = LeaderQuery {
        not: Some(leader),
        hold_ms: hold_ms(WATCH_HOLD),
    };
    tokio::spawn(async move {
        let watch = async {
            tokio::time::sleep(spread(WATCH_START)).await;
            let mut turn = 0;
            loop {
                let standby = &standbys[turn % standbys.len()];
                turn += 1;
                let asked = tokio::time::Instant::now();
                let elected = match connect_one(&endpoint, *standby, config.clone(), &ask).await {
                    // It serves the client's own channel: it leads now.
                    Ok(c) => {
                        c.close(close::NORMAL, b"");
                        Some(*standby)
                    }
                    Err(e) => match e.downcast_ref::<NotLeader>() {
                        Some(NotLeader { leader: named, .. }) => {
                            named.filter(|named| *named != leader)
                        }
                        None => {
                            // Down or unreachable: the next one, shortly.
                            tokio::time::sleep(HANDSHAKE_TIMEOUT).await;
                            None
                        }
                    },
                };
                if let Some(new) = elected {
                    return new;
                }
                // A standby that answers at once without news (it could
                // not hold the question: stopping, or of another version)
                // is not asked again in a tight loop.
                if asked.elapsed() < Duration::from_secs(1) {
                    tokio::time::sleep(HANDSHAKE_TIMEOUT).await;
                }
            }
        };
        tokio::select! {
            new = watch => {
                tracing::debug!(old = %leader, %new, "a new master leads; reconnecting");
                masters.found(Some(new));
                conn.close(close::NOT_LEADER, new.to_string().as_bytes());
            }
            _ = conn.closed() => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ALPN_SCHEDULER, Identity};
    use tokio::sync::watch;

    /// A standby on loopback answering with `leader`.
    struct Standby {
        addr: SocketAddr,
        leader: watch::Sender<Option<SocketAddr>>,
        _endpoint: quinn::Endpoint,
        _accept: tokio::task::JoinHandle<()>,
    }

    fn standby(master: &Identity) -> anyhow::Result<Standby> {
        let config = crate::standby_server_config(master)?;
        let endpoint = crate::server_endpoint(config, "127.0.0.1:0".parse()?, &[7; 32])?;
        let (leader, rx) = watch::channel(None);
        let accepting = endpoint.clone();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let rx = rx.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        answer_query(conn, rx).await;
                    }
                });
            }
        });
        Ok(Standby {
            addr: endpoint.local_addr()?,
            leader,
            _endpoint: endpoint,
            _accept: accept,
        })
    }

    /// A leader on loopback that accepts scheduler connections and holds
    /// them open.
    fn leader(master: &Identity) -> anyhow::Result<(SocketAddr, quinn::Endpoint)> {
        let config = crate::server_config(master, &[ALPN_SCHEDULER])?;
        let endpoint = crate::server_endpoint(config, "127.0.0.1:0".parse()?, &[8; 32])?;
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        conn.closed().await;
                    }
                });
            }
        });
        Ok((endpoint.local_addr()?, endpoint))
    }

    fn identities() -> anyhow::Result<(tempfile::TempDir, Identity, Identity)> {
        let dir = tempfile::tempdir()?;
        crate::certs::init(dir.path(), "test")?;
        let master = Identity::load(dir.path(), "master")?;
        let client = Identity::load(dir.path(), "client")?;
        Ok((dir, master, client))
    }

    async fn ask(
        config: quinn::ClientConfig,
        at: SocketAddr,
        query: LeaderQuery,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let endpoint = crate::client_endpoint(at)?;
        let e = connect_one(&endpoint, at, config, &query)
            .await
            .err()
            .context("a standby does not serve")?;
        let said = e.downcast_ref::<NotLeader>().context("not a NotLeader")?;
        Ok(said.leader)
    }

    #[tokio::test]
    async fn a_standby_holds_its_answer_until_another_leader_is_elected() -> anyhow::Result<()> {
        let (_dir, master, client) = identities()?;
        let client = crate::client_config(&client, ALPN_SCHEDULER)?;
        let standby = standby(&master)?;
        let old: SocketAddr = "127.0.0.1:1".parse()?;
        let new: SocketAddr = "127.0.0.1:2".parse()?;
        standby.leader.send_replace(Some(old));
        // Asked plainly: what it knows, at once.
        let plain = LeaderQuery {
            not: None,
            hold_ms: 5_000,
        };
        assert_eq!(ask(client.clone(), standby.addr, plain).await?, Some(old));
        // Asked for another than the one the client lost: held until the
        // election ends, then the new leader.
        let other = LeaderQuery {
            not: Some(old),
            hold_ms: 5_000,
        };
        let asked = tokio::time::Instant::now();
        let answer = tokio::spawn(ask(client.clone(), standby.addr, other));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!answer.is_finished(), "answered before an election");
        standby.leader.send_replace(Some(new));
        assert_eq!(answer.await??, Some(new));
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "held past the news"
        );
        // A hold that runs out answers with what is known.
        let short = LeaderQuery {
            not: Some(new),
            hold_ms: 200,
        };
        assert_eq!(ask(client, standby.addr, short).await?, Some(new));
        Ok(())
    }

    #[tokio::test]
    async fn a_watching_client_drops_its_leader_when_a_standby_names_another() -> anyhow::Result<()>
    {
        let (_dir, master, client) = identities()?;
        let (old, _old_endpoint) = leader(&master)?;
        let standby = standby(&master)?;
        standby.leader.send_replace(Some(old));
        let masters = Masters::new(vec![old, standby.addr])?;
        let endpoint = crate::client_endpoint(old)?;
        let config = crate::client_config(&client, ALPN_SCHEDULER)?;
        let conn = connect_leader_conn(&endpoint, &masters, config.clone()).await?;
        assert_eq!(masters.known_leader(), Some(old));
        watch_leader(&endpoint, &masters, &config, &conn);
        // The old leader is alive and its link healthy: nothing happens.
        tokio::time::sleep(WATCH_START + Duration::from_millis(500)).await;
        assert!(conn.close_reason().is_none(), "dropped a healthy leader");
        // An election elsewhere: the link is closed at once, not at its
        // idle timeout, and the new leader is the one to try.
        let new: SocketAddr = "127.0.0.1:3".parse()?;
        let elected = tokio::time::Instant::now();
        standby.leader.send_replace(Some(new));
        let why = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await?;
        assert!(
            elected.elapsed() < crate::tls::IDLE_TIMEOUT,
            "heard of the election only after {:?}",
            elected.elapsed()
        );
        assert!(
            matches!(why, quinn::ConnectionError::LocallyClosed),
            "{why:?}"
        );
        assert_eq!(masters.known_leader(), Some(new));
        Ok(())
    }

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
