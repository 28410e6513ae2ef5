//! The master's I/O: accepts QUIC connections, decodes frames into the
//! core's `handle_*` calls and sends what the core emits. It holds no
//! cluster state of its own.

use crate::core::acl::{Acls, Action, Object};
use crate::core::{Channel, ConnId, Master, MasterConfig, Transmit};
use crate::http::{ApiState, Published, TokenKey, token};
use crate::metrics::Metrics;
use crate::peer_queue::{Outgoing, PeerQueue, PeerQueueRx, peer_queue};
use crate::refusal_log::RefusalLog;
use crate::registry::etcd::{EtcdStore, EtcdTimings, Leadership, Lease};
use crate::registry::file::FileStore;
use crate::registry::{RegistrySpec, RegistryStore};
use anyhow::Context as _;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stoa_proto::operator::{Caller, OperatorCall, OperatorReply};
use stoa_proto::side::SideRequest;
use stoa_proto::{AgentToMaster, Call, Time, framing};
use stoa_transport::side::{ArtifactStore, serve_artifacts};
use stoa_transport::{
    ALPN_AGENT, ALPN_ARTIFACTS, ALPN_OPERATOR, ALPN_SCHEDULER, FrameReceiver, FrameSender,
    Identity, close,
};
use tokio::sync::{mpsc, oneshot};

/// Inputs queued for the master's loop (connections wait beyond it).
const INPUT_QUEUE: usize = 16 * 1024;
/// Bytes of queued frames a peer's writer gathers into one write.
const WRITE_BATCH: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub listen: SocketAddr,
    /// Where the other masters' standbys send clients while this one
    /// leads: the address clients reach it at (default: `listen`'s bound
    /// address, which must then not be unspecified).
    pub advertise: Option<SocketAddr>,
    /// Directory with `ca.pem`, `master.pem`, `master.key`.
    pub certs: PathBuf,
    /// Where to write the bound address (useful with port 0).
    pub addr_file: Option<PathBuf>,
    /// The registry: a file for one master, etcd for several.
    pub registry: RegistrySpec,
    /// The leader's lease and etcd's timeouts (etcd registries only).
    pub etcd: EtcdTimings,
    /// The artifact store's directory.
    pub artifacts: PathBuf,
    /// Largest artifact accepted.
    pub max_artifact: u64,
    /// Where to serve the HTTP API (plain HTTP: loopback addresses only).
    pub http: Option<SocketAddr>,
    /// Where to write the HTTP API's bound address (useful with port 0).
    pub http_addr_file: Option<PathBuf>,
    /// Where to serve the API over HTTPS (the master's certificate; any
    /// address).
    pub https: Option<SocketAddr>,
    /// Where to write the HTTPS API's bound address.
    pub https_addr_file: Option<PathBuf>,
    /// Where the ACLs come from (reloaded on SIGHUP); they replace
    /// `core.acls`.
    pub acls: crate::acl_file::AclSource,
    pub core: MasterConfig,
}

/// Where the HTTP API hands calls to the core of the term being led.
#[derive(Clone)]
pub struct OperatorPort(mpsc::Sender<Input>);

impl std::fmt::Debug for OperatorPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorPort")
    }
}

impl OperatorPort {
    /// The core's reply to `call` made as `caller`; `None` if the term
    /// ended meanwhile.
    pub async fn call(&self, caller: Caller, call: OperatorCall) -> Option<OperatorReply> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.0
            .send(Input::Operator(caller, call, reply_tx))
            .await
            .ok()?;
        reply_rx.await.ok()
    }
}

/// What a term publishes for the HTTP API: its core, and its events.
struct Publish {
    port: tokio::sync::watch::Sender<Option<OperatorPort>>,
    /// The ACLs in force, for each new term's core and for uploads.
    acls: Arc<tokio::sync::watch::Sender<Arc<Acls>>>,
    /// Revoked tokens and certificates, as the registry holds them: for
    /// the connections and the API, which refuse them.
    revoked: tokio::sync::watch::Sender<Arc<Revoked>>,
    events: tokio::sync::broadcast::Sender<Arc<Published>>,
    tokens: TokenKey,
    metrics: Arc<Metrics>,
}

/// Keys of revoked tokens and certificates ([`Revocation::key`]).
///
/// [`Revocation::key`]: stoa_proto::operator::Revocation::key
pub type Revoked = std::collections::BTreeSet<String>;

impl Publish {
    /// Passes the core's revocations on when there are new ones (they only
    /// grow); true if there were.
    fn revocations(&self, master: &Master) -> bool {
        if master.revoked().len() == self.revoked.borrow().len() {
            return false;
        }
        let all: Revoked = master.revoked().keys().cloned().collect();
        self.revoked.send_replace(Arc::new(all));
        true
    }

    /// Passes the core's events after `*sent` to the stream's followers.
    fn events(&self, master: &Master, sent: &mut u64) {
        if master.last_event() == *sent {
            return;
        }
        if self.events.receiver_count() == 0 {
            // Nobody follows: a follower that comes reads what is kept.
            *sent = master.last_event();
            return;
        }
        let instance: Arc<str> = master.instance().into();
        // The rules in force when the events happened decide who sees them.
        let acls = Arc::new(master.acls().clone());
        for (event, audience) in master.events_since(*sent) {
            // No follower is no error.
            let _ = self.events.send(Arc::new(Published {
                instance: instance.clone(),
                event: event.clone(),
                audience: audience.clone(),
                acls: acls.clone(),
            }));
        }
        *sent = master.last_event();
    }
}

/// What side streams need: the store and its limit.
#[derive(Debug, Clone)]
struct Artifacts {
    store: ArtifactStore,
    max: u64,
    /// Who may upload: the ACLs in force.
    acls: tokio::sync::watch::Receiver<Arc<Acls>>,
    /// Certificates refused from now on.
    revoked: tokio::sync::watch::Receiver<Arc<Revoked>>,
}

enum Input {
    Connected(ConnId, Channel, Peer),
    /// The ACL file was read again.
    Acls(Arc<Acls>),
    Agent(ConnId, AgentToMaster),
    Scheduler(ConnId, Call),
    Operator(Caller, OperatorCall, oneshot::Sender<OperatorReply>),
    /// The peer broke the protocol; close it with this reason.
    Failed(ConnId, String),
    Disconnected(ConnId),
}

struct Peer {
    out: PeerQueue,
    conn: quinn::Connection,
}

/// How a term of leadership ended.
enum Ended {
    /// The process is stopping.
    Shutdown,
    /// Leadership was lost (lease, etcd session, fenced write); the master
    /// stands by again.
    Deposed(anyhow::Error),
}

/// Runs a master until `shutdown` resolves. With a file registry it leads
/// alone; with etcd it stands by until elected, leads until it loses the
/// election or stops (resigning, so a standby takes over at once), and
/// stands by again after losing it.
pub async fn run(
    config: DriverConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let identity = Identity::load(&config.certs, "master")?;
    let store = match &config.registry {
        RegistrySpec::File(path) => RegistryStore::File(FileStore::open(path)?),
        RegistrySpec::Etcd(spec) => {
            RegistryStore::Etcd(Box::new(EtcdStore::open(spec, config.etcd).await?))
        }
    };
    let leader_config = stoa_transport::server_config(
        &identity,
        &[ALPN_AGENT, ALPN_SCHEDULER, ALPN_OPERATOR, ALPN_ARTIFACTS],
    )?;
    let standby_config = stoa_transport::standby_server_config(&identity)?;
    let secret = store.secret().await?;
    let endpoint = stoa_transport::server_endpoint(standby_config.clone(), config.listen, &secret)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = endpoint.local_addr()?;
    if let Some(path) = &config.addr_file {
        std::fs::write(path, addr.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let advertise = config.advertise.unwrap_or(addr);
    tracing::info!(%addr, registry = %config.registry, "master listening");
    // Who leads: etcd's word, for standbys' answers on either channel.
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None);
    let (port, port_rx) = tokio::sync::watch::channel(None);
    let (events, _) = tokio::sync::broadcast::channel(EVENTS_QUEUE);
    let acls = config.acls.load()?;
    let (acls_tx, _) = tokio::sync::watch::channel(Arc::new(acls));
    let acls_tx = Arc::new(acls_tx);
    let (revoked_tx, revoked_rx) = tokio::sync::watch::channel(Arc::new(Revoked::new()));
    let publish = Publish {
        port,
        acls: acls_tx,
        revoked: revoked_tx,
        events: events.clone(),
        tokens: TokenKey::derive(&secret),
        metrics: Arc::new(Metrics::new()),
    };
    let api = ApiState {
        revoked: revoked_rx,
        core: port_rx,
        leader: leader_rx.clone(),
        events,
        tokens: publish.tokens.clone(),
        metrics: publish.metrics.clone(),
    };
    let mut _apis = Vec::new();
    if let Some(addr) = config.http {
        let file = config.http_addr_file.as_deref();
        _apis.push(serve_api(addr, file, api.clone(), None)?);
    }
    if let Some(addr) = config.https {
        let tls = stoa_transport::https_server_config(&identity)?;
        let file = config.https_addr_file.as_deref();
        _apis.push(serve_api(addr, file, api, Some(tls))?);
    }
    let _reload = config.acls.file.is_some().then(|| {
        AbortOnDrop(tokio::spawn(reload_acls_on_sighup(
            config.acls.clone(),
            publish.acls.clone(),
            publish.port.subscribe(),
        )))
    });
    tokio::pin!(shutdown);
    let process = Process {
        config: &config,
        store: &store,
        endpoint: &endpoint,
        publish: &publish,
        secret,
    };
    match &store {
        RegistryStore::File(_) => {
            endpoint.set_server_config(Some(leader_config));
            let never = std::future::pending();
            lead(&process, None, never, &mut shutdown).await?;
        }
        RegistryStore::Etcd(etcd) => {
            if advertise.ip().is_unspecified() {
                anyhow::bail!(
                    "with an etcd registry, give --advertise (the address clients reach this master at): {addr} is not one"
                );
            }
            // Who leads, as etcd proclaims it, for the standby channel's
            // answers (kept through terms: a query held while this master
            // is elected hears that it leads).
            let follower = {
                let etcd = etcd.clone();
                tokio::spawn(async move { etcd.follow_leader(leader_tx).await })
            };
            let _follower = AbortOnDrop(follower);
            let mut delays = stoa_transport::reconnect_delays();
            loop {
                endpoint.set_server_config(Some(standby_config.clone()));
                tracing::info!(%advertise, "standing by: campaigning to lead");
                let term = tokio::select! {
                    term = stand_by(&endpoint, etcd, advertise, leader_rx.clone()) => term,
                    _ = &mut shutdown => break,
                };
                let (mut lease, leadership) = match term {
                    Ok(won) => won,
                    Err(e) => {
                        // etcd unreachable or restarting, or the lease
                        // lost while waiting: stand by and campaign again.
                        let retry = delays.next().unwrap_or(Duration::from_secs(5));
                        tracing::warn!(error = format!("{e:#}"), retry_in = ?retry, "campaign failed");
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => continue,
                            _ = &mut shutdown => break,
                        }
                    }
                };
                delays = stoa_transport::reconnect_delays();
                tracing::info!(%advertise, "elected leader");
                endpoint.set_server_config(Some(leader_config.clone()));
                let lost = lease.lost();
                let ended = lead(&process, Some(&leadership), lost, &mut shutdown).await?;
                match ended {
                    Ended::Shutdown => {
                        // New handshakes hear "not the leader" from now
                        // on (none is served any more), the lease goes,
                        // and a standby takes over at once.
                        endpoint.set_server_config(Some(standby_config.clone()));
                        etcd.resign(&leadership).await;
                        break;
                    }
                    Ended::Deposed(why) => {
                        endpoint.set_server_config(Some(standby_config.clone()));
                        tracing::error!(
                            error = format!("{why:#}"),
                            "no longer the leader; every connection closed, standing by"
                        );
                    }
                }
            }
        }
    }
    endpoint.close(close::SHUTDOWN, b"master shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}

/// Answers every connection with who leads until this master is
/// elected; returns its lease (renewed all along) and leadership.
async fn stand_by(
    endpoint: &quinn::Endpoint,
    etcd: &EtcdStore,
    advertise: SocketAddr,
    leader: tokio::sync::watch::Receiver<Option<SocketAddr>>,
) -> anyhow::Result<(Lease, Leadership)> {
    let redirects = tokio::spawn(redirect_loop(endpoint.clone(), leader));
    let won = async {
        let mut lease = etcd.grant_lease().await?;
        let address = advertise.to_string();
        let campaign = etcd.campaign(lease.id(), &address);
        let won = tokio::select! {
            won = campaign => won?,
            why = lease.lost() => return Err(why.context("lost the lease while standing by")),
        };
        anyhow::Ok((lease, won))
    }
    .await;
    redirects.abort();
    won
}

/// A standby's accept loop: each connection is answered with who leads
/// (see [`stoa_transport::leader::LeaderQuery`]).
async fn redirect_loop(
    endpoint: quinn::Endpoint,
    leader: tokio::sync::watch::Receiver<Option<SocketAddr>>,
) {
    let refusals = Arc::new(RefusalLog::default());
    while let Some(incoming) = endpoint.accept().await {
        let (refusals, leader) = (refusals.clone(), leader.clone());
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => stoa_transport::leader::answer_query(conn, leader).await,
                Err(e) => {
                    if let Some(unlogged) = refusals.note(Instant::now()) {
                        tracing::info!(error = %e, refused_since_last_line = unlogged, "handshake refused");
                    }
                }
            }
        });
    }
}

/// Events queued for each follower of the event stream; one that falls
/// further behind is told it missed some. Enough for a burst of tens of
/// thousands of task ends (each event is shared, not copied, per follower).
const EVENTS_QUEUE: usize = 1 << 16;

/// Binds the API to `addr` and serves it on a thread of its own: over
/// TLS with `tls`, else over plain HTTP (then on a loopback address only).
///
/// Its own thread, not the core's: encoding JSON for pages and event
/// streams would otherwise take the one thread the core runs on (a
/// follower of the event stream cost a burst of task ends 40 % of the
/// master's throughput when it shared it). The core is reached through
/// the same queue either way.
fn serve_api(
    addr: SocketAddr,
    addr_file: Option<&std::path::Path>,
    api: ApiState,
    tls: Option<rustls::ServerConfig>,
) -> anyhow::Result<ApiThread> {
    if tls.is_none() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--http {addr}: plain HTTP is served only on a loopback address (e.g. 127.0.0.1:5051); serve other addresses over TLS with --https {addr}"
        );
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot serve the API on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    if let Some(path) = addr_file {
        std::fs::write(path, bound.to_string())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%bound, "serving the API at {scheme}://{bound}/api/v1/ and the UI at {scheme}://{bound}/ui/");
    let (stop, stopped) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the API's runtime")?;
    std::thread::Builder::new()
        .name(format!("stoa-{scheme}"))
        .spawn(move || {
            runtime.block_on(async move {
                let served = async {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    match tls {
                        Some(tls) => crate::http::tls::serve(listener, tls, api).await,
                        None => crate::http::serve(listener, api).await,
                    }
                };
                tokio::select! {
                    served = served => if let Err(e) = served {
                        tracing::error!(error = format!("{e:#}"), "the {scheme} API stopped");
                    },
                    _ = stopped => {}
                }
            });
        })
        .context("cannot start the API's thread")?;
    Ok(ApiThread { _stop: stop })
}

/// The API's thread, stopped when this is dropped.
struct ApiThread {
    _stop: oneshot::Sender<()>,
}

/// Closes the connections of peers whose certificate was just revoked.
fn close_revoked(peers: &HashMap<ConnId, Peer>, revoked: &Revoked) {
    for (id, peer) in peers {
        if let Some(serial) = stoa_transport::peer_serial(&peer.conn)
            && revoked.contains(&format!("serial:{serial}"))
        {
            tracing::warn!(conn = id.0, %serial, "closing the connection of a revoked certificate");
            peer.conn
                .close(close::REFUSED, b"this certificate was revoked");
        }
    }
}

/// Reads the ACL file again at each SIGHUP: the new rules go to the core
/// of the term being led and to the next term's; a file that does not
/// parse is refused whole, and the rules in force stay.
async fn reload_acls_on_sighup(
    source: crate::acl_file::AclSource,
    acls: Arc<tokio::sync::watch::Sender<Arc<Acls>>>,
    port: tokio::sync::watch::Receiver<Option<OperatorPort>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: the ACLs are not reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match source.load() {
            Ok(new) => {
                let new = Arc::new(new);
                acls.send_replace(new.clone());
                let current = port.borrow().clone();
                if let Some(OperatorPort(tx)) = current {
                    let _ = tx.send(Input::Acls(new)).await;
                }
                tracing::info!("ACLs reloaded");
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "the ACLs in force stay");
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What outlives a term: the master's configuration, registry, endpoint,
/// what the HTTP API is given, and the masters' shared secret.
#[derive(Clone, Copy)]
struct Process<'a> {
    config: &'a DriverConfig,
    store: &'a RegistryStore,
    endpoint: &'a quinn::Endpoint,
    publish: &'a Publish,
    secret: [u8; 32],
}

/// Leads: a fresh core restored from the registry, fed by every
/// connection, until `shutdown` or `lost` (then every connection is
/// closed, telling peers to find the new leader).
async fn lead(
    process: &Process<'_>,
    leader: Option<&Leadership>,
    lost: impl std::future::Future<Output = anyhow::Error>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<Ended> {
    let Process {
        config,
        store,
        endpoint,
        publish,
        secret,
    } = *process;
    let registry = store.load().await?;
    let artifacts = Artifacts {
        store: ArtifactStore::open(&config.artifacts).with_context(|| {
            format!(
                "cannot open the artifact store {}",
                config.artifacts.display()
            )
        })?,
        max: config.max_artifact,
        acls: publish.acls.subscribe(),
        revoked: publish.revoked.subscribe(),
    };
    let start = Instant::now();
    let now =
        move || Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    let instance = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let mut core = config.core.clone();
    core.secret = secret;
    core.acls = (**process.publish.acls.borrow()).clone();
    let mut master = Master::new(core, &instance);
    tracing::info!(
        registry = %config.registry,
        agents = registry.agents.len(),
        frameworks = registry.frameworks.len(),
        weights = registry.weights.len(),
        quotas = registry.quotas.len(),
        "registry loaded"
    );
    master.restore(now(), registry);
    let (tx, mut rx) = mpsc::channel::<Input>(INPUT_QUEUE);
    publish.port.send_replace(Some(OperatorPort(tx.clone())));
    let acceptor = tokio::spawn(accept_loop(endpoint.clone(), tx, artifacts));
    let mut peers: HashMap<ConnId, Peer> = HashMap::new();
    tokio::pin!(lost);
    let out = Out {
        store,
        leader,
        tokens: &publish.tokens,
        metrics: &publish.metrics,
    };
    publish.metrics.leader_change();
    let mut published = 0;
    publish.events(&master, &mut published);
    publish.revocations(&master);

    let ended = loop {
        let step_began = Instant::now();
        let deadline = master
            .poll_timeout()
            .map(|t| start + Duration::from_micros(t.as_micros()));
        let step: anyhow::Result<()> = tokio::select! {
            // Inputs first: timers (a due allocation above all) wait until
            // what is queued has been handled, so changes that arrive
            // together share one allocation run. Tokio's task budget still
            // lets a timer through under a flood of inputs.
            biased;
            input = rx.recv() => {
                let Some(input) = input else { break Ended::Shutdown };
                handle_batch(&mut master, &mut peers, &out, input, &mut rx, now).await
            }
            _ = sleep_until(deadline) => {
                master.handle_timeout(now());
                Ok(())
            }
            why = &mut lost => break Ended::Deposed(why),
            _ = &mut *shutdown => break Ended::Shutdown,
        };
        let written = match step {
            Ok(()) => {
                let written = out.write(&mut master, &mut peers, now).await;
                publish.events(&master, &mut published);
                if publish.revocations(&master) {
                    close_revoked(&peers, &publish.revoked.borrow());
                }
                publish
                    .metrics
                    .apply(master.take_measures(), step_began.elapsed());
                written
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            // Not durable: nothing more may be said. On etcd another master
            // takes over; a file registry that cannot be written stops
            // this one.
            if leader.is_none() {
                return Err(e);
            }
            break Ended::Deposed(e);
        }
    };
    acceptor.abort();
    publish.port.send_replace(None);
    if let Ended::Deposed(_) = &ended {
        // Peers reconnect to whoever leads next.
        for (_, peer) in peers.drain() {
            peer.conn.close(close::NOT_LEADER, b"");
        }
    }
    Ok(ended)
}

/// Inputs handled together before their registry writes go out as one.
/// While one write is in flight the next inputs queue up; handling them
/// together makes their writes one transaction (a group commit), so a
/// thousand agents re-registering with a new leader cost a few writes,
/// not a thousand in a row.
const INPUT_BATCH: usize = 1024;

/// Handles `first` and whatever else is already queued, up to
/// [`INPUT_BATCH`] inputs.
async fn handle_batch(
    master: &mut Master,
    peers: &mut HashMap<ConnId, Peer>,
    out: &Out<'_>,
    first: Input,
    rx: &mut mpsc::Receiver<Input>,
    now: impl Fn() -> Time + Copy,
) -> anyhow::Result<()> {
    handle(master, peers, out, first, now).await?;
    for _ in 1..INPUT_BATCH {
        let Ok(input) = rx.try_recv() else { break };
        handle(master, peers, out, input, now).await?;
    }
    Ok(())
}

/// Handles one input from a connection.
async fn handle(
    master: &mut Master,
    peers: &mut HashMap<ConnId, Peer>,
    out: &Out<'_>,
    input: Input,
    now: impl Fn() -> Time + Copy,
) -> anyhow::Result<()> {
    match input {
        Input::Acls(acls) => master.set_acls((*acls).clone()),
        Input::Connected(id, channel, peer) => {
            let principal = stoa_transport::peer_name(&peer.conn);
            peers.insert(id, peer);
            master.handle_connected(now(), id, channel);
            if let Some(principal) = principal {
                master.handle_authenticated(id, principal);
            }
        }
        Input::Agent(id, msg) => master.handle_agent_message(now(), id, msg),
        Input::Scheduler(id, call) => master.handle_scheduler_call(now(), id, call),
        Input::Operator(
            caller,
            OperatorCall::ReadLog {
                framework_id,
                task_id,
                stream,
                offset,
                max_len,
                wait_ms,
            },
            reply,
        ) => match master.locate_task(&caller, &task_id, framework_id.as_ref()) {
            Ok((framework_id, agent)) => match peers.get(&agent) {
                Some(peer) => {
                    let request = SideRequest::ReadLog {
                        framework_id,
                        task_id,
                        stream,
                        offset,
                        max_len,
                        wait_ms: wait_ms.min(stoa_proto::side::MAX_LOG_WAIT_MS),
                    };
                    tokio::spawn(read_log(peer.conn.clone(), request, reply));
                }
                None => {
                    let _ = reply.send(OperatorReply::Refused {
                        message: "the task's agent is not connected".into(),
                    });
                }
            },
            Err(message) => {
                let _ = reply.send(OperatorReply::Refused { message });
            }
        },
        Input::Operator(
            Caller::Operator,
            OperatorCall::CreateToken {
                principal,
                ttl_secs,
            },
            reply,
        ) => {
            let expires_unix = token::unix_now().saturating_add(ttl_secs);
            let answer = match out.tokens.mint(&principal, expires_unix) {
                Ok(token) => {
                    tracing::info!(%principal, expires_unix, "API token created");
                    OperatorReply::Token {
                        token,
                        expires_unix,
                    }
                }
                Err(e) => OperatorReply::Refused {
                    message: e.to_string(),
                },
            };
            let _ = reply.send(answer);
        }
        Input::Operator(caller, call, reply) => {
            let answer = master.handle_operator_call(now(), &caller, call);
            // The reply may tell of a registry change: it waits for the
            // change to be durable.
            out.write(master, peers, now).await?;
            let _ = reply.send(answer);
        }
        Input::Failed(id, reason) => {
            tracing::warn!(conn = id.0, %reason, "closing connection: protocol error");
            if let Some(peer) = peers.remove(&id) {
                peer.conn.close(close::PROTOCOL_ERROR, reason.as_bytes());
            }
            master.handle_disconnected(now(), id);
        }
        Input::Disconnected(id) => {
            peers.remove(&id);
            master.handle_disconnected(now(), id);
        }
    }
    Ok(())
}

/// Where the core's output goes: the registry (as this leader), then the
/// peers.
struct Out<'a> {
    store: &'a RegistryStore,
    leader: Option<&'a Leadership>,
    /// Signs the HTTP API's tokens (an operator's call the driver
    /// answers: the core holds no secrets).
    tokens: &'a TokenKey,
    metrics: &'a Metrics,
}

impl Out<'_> {
    /// Durable before visible: persists what the core wrote to the
    /// registry, then sends what it released. A failed write returns an
    /// error and sends nothing: carrying on would tell peers about state
    /// that is not durable.
    async fn write(
        &self,
        master: &mut Master,
        peers: &mut HashMap<ConnId, Peer>,
        now: impl Fn() -> Time,
    ) -> anyhow::Result<()> {
        loop {
            let ready = master.ready();
            if ready.is_empty() {
                return Ok(());
            }
            if !ready.writes().is_empty() {
                let began = Instant::now();
                self.store
                    .apply(self.leader, ready.writes())
                    .await
                    .context("cannot write the registry")?;
                self.metrics.registry_write(began.elapsed());
            }
            let dropped = flush(master.advance(ready), peers);
            for id in dropped {
                master.handle_disconnected(now(), id);
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends what the core released; returns the peers dropped for not
/// reading, for the core to hear of.
fn flush(transmits: Vec<Transmit>, peers: &mut HashMap<ConnId, Peer>) -> Vec<ConnId> {
    let mut dropped = Vec::new();
    for t in transmits {
        let (id, out) = match t {
            Transmit::ToAgent(id, msg) => (id, encode(&msg)),
            Transmit::ToScheduler(id, event) => (id, encode(&event)),
            Transmit::Close(id, reason) => (id, Outgoing::Close(reason)),
        };
        let Some(peer) = peers.get(&id) else { continue };
        let closing = matches!(out, Outgoing::Close(_));
        if !peer.out.push(out) && !closing {
            tracing::warn!(conn = id.0, "peer is not reading; dropping it");
            if let Some(peer) = peers.remove(&id) {
                peer.conn.close(close::REFUSED, b"too slow");
            }
            dropped.push(id);
        } else if closing {
            peers.remove(&id);
        }
    }
    dropped
}

fn encode<T: Serialize>(msg: &T) -> Outgoing {
    match framing::encode(msg) {
        Ok(frame) => Outgoing::Frame(frame),
        // Only a message beyond the frame limit fails to encode; the peer
        // cannot be told anything useful on this stream, so close it.
        Err(e) => Outgoing::Close(format!("cannot send a message: {e}")),
    }
}

/// Relays a log read to the task's agent.
async fn read_log(
    agent: quinn::Connection,
    request: SideRequest,
    reply: oneshot::Sender<OperatorReply>,
) {
    let answer = match stoa_transport::side::read_log(&agent, &request).await {
        Ok(chunk) => OperatorReply::Log(chunk),
        Err(e) => OperatorReply::Refused {
            message: format!("{e:#}"),
        },
    };
    let _ = reply.send(answer);
}

async fn accept_loop(endpoint: quinn::Endpoint, tx: mpsc::Sender<Input>, artifacts: Artifacts) {
    let mut next = 1u64;
    let refusals = Arc::new(RefusalLog::default());
    while let Some(incoming) = endpoint.accept().await {
        let id = ConnId(next);
        next += 1;
        tokio::spawn(serve(
            incoming,
            id,
            tx.clone(),
            artifacts.clone(),
            refusals.clone(),
        ));
    }
}

/// Serves the side streams a peer opens after its control stream (or, on
/// the artifact channel, instead of one). Agents may only fetch; others
/// upload as the ACLs in force let their principal.
async fn serve_side_streams(conn: quinn::Connection, artifacts: Artifacts, may_upload: bool) {
    let principal = stoa_transport::peer_name(&conn);
    while let Ok((send, recv)) = conn.accept_bi().await {
        let artifacts = artifacts.clone();
        let upload = if may_upload {
            artifacts
                .acls
                .borrow()
                .check(principal.as_deref(), Action::Upload, Object::Nothing)
                .map_err(|denied| denied.to_string())
        } else {
            Err("an agent's connection only fetches artifacts".to_string())
        };
        tokio::spawn(async move {
            if let Err(e) =
                serve_artifacts(send, recv, &artifacts.store, artifacts.max, upload).await
            {
                tracing::debug!(error = format!("{e:#}"), "artifact stream ended badly");
            }
        });
    }
}

/// One connection: handshake, then read frames until it ends.
async fn serve(
    incoming: quinn::Incoming,
    id: ConnId,
    tx: mpsc::Sender<Input>,
    artifacts: Artifacts,
    refusals: Arc<RefusalLog>,
) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            if let Some(unlogged) = refusals.note(Instant::now()) {
                tracing::info!(conn = id.0, error = %e, refused_since_last_line = unlogged, "handshake refused");
            }
            return;
        }
    };
    if let Some(serial) = stoa_transport::peer_serial(&conn)
        && artifacts
            .revoked
            .borrow()
            .contains(&format!("serial:{serial}"))
    {
        tracing::warn!(conn = id.0, %serial, peer = ?stoa_transport::peer_name(&conn), "refused a revoked certificate");
        conn.close(close::REFUSED, b"this certificate was revoked");
        return;
    }
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let channel = match alpn.as_deref() {
        Some(ALPN_AGENT) => Channel::Agent,
        Some(ALPN_SCHEDULER) => Channel::Scheduler,
        Some(ALPN_OPERATOR) => return serve_operator(conn, id, tx).await,
        Some(ALPN_ARTIFACTS) => return serve_side_streams(conn, artifacts, true).await,
        // rustls already refuses unknown ALPNs; this is defence in depth.
        _ => {
            conn.close(close::REFUSED, b"unknown channel");
            return;
        }
    };
    // Any cluster certificate passes the TLS check; only an agent's may
    // register resources and report task states.
    if channel == Channel::Agent {
        let name = stoa_transport::peer_name(&conn);
        if !name
            .as_deref()
            .is_some_and(stoa_proto::messages::is_agent_principal)
        {
            tracing::warn!(conn = id.0, peer = ?name, "refused an agent connection without an agent certificate");
            conn.close(
                close::REFUSED,
                b"the agent channel needs an agent certificate",
            );
            return;
        }
    }
    let (send, recv) = match conn.accept_bi().await {
        Ok(streams) => streams,
        Err(e) => {
            tracing::debug!(conn = id.0, error = %e, "connection ended before opening a stream");
            return;
        }
    };
    let (out_tx, out_rx) = peer_queue();
    tokio::spawn(write_loop(conn.clone(), FrameSender::new(send), out_rx));
    let side = tokio::spawn(serve_side_streams(
        conn.clone(),
        artifacts,
        channel == Channel::Scheduler,
    ));
    if tx
        .send(Input::Connected(
            id,
            channel,
            Peer {
                out: out_tx,
                conn: conn.clone(),
            },
        ))
        .await
        .is_err()
    {
        return;
    }
    let mut recv = FrameReceiver::new(recv);
    let end = loop {
        let input = match channel {
            Channel::Agent => recv
                .recv::<AgentToMaster>()
                .await
                .map(|m| m.map(|m| Input::Agent(id, m))),
            Channel::Scheduler => recv
                .recv::<Call>()
                .await
                .map(|m| m.map(|c| Input::Scheduler(id, c))),
        };
        match input {
            Ok(Some(input)) => {
                if tx.send(input).await.is_err() {
                    return;
                }
            }
            Ok(None) => break Input::Disconnected(id),
            Err(stoa_transport::RecvError::Read(e)) => {
                tracing::debug!(conn = id.0, error = %e, "connection lost");
                break Input::Disconnected(id);
            }
            Err(e) => break Input::Failed(id, e.to_string()),
        }
    };
    side.abort();
    let _ = tx.send(end).await;
}

/// An operator connection: one reply per request, only for the holder of
/// the operator certificate.
/// The operator channel: typed calls from the CLI. Any certificate the
/// cluster CA signed may call; the core answers a principal other than the
/// operator as a tenant (its own frameworks and tasks only), as the HTTP
/// API does for tokens.
async fn serve_operator(conn: quinn::Connection, id: ConnId, tx: mpsc::Sender<Input>) {
    let Some(name) = stoa_transport::peer_name(&conn) else {
        tracing::warn!(
            conn = id.0,
            "refused an operator connection without a certificate name"
        );
        conn.close(
            close::REFUSED,
            b"the operator channel needs a certificate from the cluster CA",
        );
        return;
    };
    let caller = Caller::from_principal(&name);
    let Ok((send, recv)) = conn.accept_bi().await else {
        return;
    };
    let (mut send, mut recv) = (FrameSender::new(send), FrameReceiver::new(recv));
    loop {
        let call = match recv.recv::<OperatorCall>().await {
            Ok(Some(call)) => call,
            Ok(None) | Err(stoa_transport::RecvError::Read(_)) => return,
            Err(e) => {
                conn.close(close::PROTOCOL_ERROR, e.to_string().as_bytes());
                return;
            }
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx
            .send(Input::Operator(caller.clone(), call, reply_tx))
            .await
            .is_err()
        {
            return;
        }
        let Ok(reply) = reply_rx.await else { return };
        if send.send(&reply).await.is_err() {
            return;
        }
    }
}

async fn write_loop(conn: quinn::Connection, mut send: FrameSender, mut rx: PeerQueueRx) {
    while let Some(first) = rx.recv().await {
        // Whatever else is queued goes in the same write.
        let mut frames = Vec::new();
        let mut next = Some(first);
        let close = loop {
            match next {
                Some(Outgoing::Frame(frame)) => frames.extend_from_slice(&frame),
                Some(Outgoing::Close(reason)) => break Some(reason),
                None => break None,
            }
            next = (frames.len() < WRITE_BATCH)
                .then(|| rx.try_recv())
                .flatten();
        };
        if !frames.is_empty() && send.send_raw(&frames).await.is_err() {
            return;
        }
        if let Some(reason) = close {
            send.finish_and_flush(Duration::from_millis(500)).await;
            conn.close(close::REFUSED, reason.as_bytes());
            return;
        }
    }
}
