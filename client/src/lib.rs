//! Talking to a Stoa master from native Rust: the scheduler session used by
//! native frameworks and the CLI.
//!
//! A [`SchedulerSession`] is one subscribed framework on one QUIC
//! connection (channel `stoa-sched/1`): read [`Event`]s with
//! [`SchedulerSession::next_event`], send [`Call`]s with
//! [`SchedulerSession::call`].

mod acks;
pub mod scheduler;

pub use scheduler::{Calls, DriverOptions, Scheduler};
pub use stoa_transport::Masters;

use anyhow::{Context as _, bail};
use std::path::PathBuf;
use stoa_proto::{
    AgentId, Call, Event, FrameworkId, FrameworkInfo, OfferId, Operation, TaskId, UpdateId,
};
use stoa_transport::{ALPN_SCHEDULER, FrameReceiver, FrameSender, Identity};

/// Where the masters are and which certificates to present.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The cluster's masters; calls go to the one that leads.
    pub master: Masters,
    /// Directory with `ca.pem` and the client's `NAME.pem`/`NAME.key`.
    pub certs: PathBuf,
    /// Certificate name in `certs` (default `client`).
    pub identity: String,
    /// Set for a cluster-hosted scheduler instance: its task id and the
    /// token the master gave it. It then subscribes with
    /// SUBSCRIBE_HOSTED, as the principal that submitted the framework.
    pub hosted: Option<(TaskId, stoa_proto::Digest)>,
}

impl ClientConfig {
    pub fn new(master: impl Into<Masters>, certs: impl Into<PathBuf>) -> Self {
        ClientConfig {
            master: master.into(),
            certs: certs.into(),
            identity: "client".into(),
            hosted: None,
        }
    }
}

/// The master refused a SUBSCRIBE (a bad framework, a principal that does
/// not match, a torn-down id): trying again will not help. `code` says
/// which kind of refusal it is.
#[derive(Debug, thiserror::Error)]
#[error("the master refused the subscription ({code}): {message}")]
pub struct Refused {
    pub code: stoa_proto::Refusal,
    pub message: String,
}

/// A subscribed framework.
#[derive(Debug)]
pub struct SchedulerSession {
    // Kept so the endpoint's socket lives as long as the session.
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    sender: FrameSender,
    receiver: FrameReceiver,
    framework_id: FrameworkId,
    /// Events [`SchedulerSession::ready_event`] gave since the last wait.
    burst: usize,
}

/// Most events [`SchedulerSession::ready_event`] gives in a row, so that a
/// steady stream of events cannot hold back the calls they cause.
pub const MAX_BURST: usize = 256;

impl SchedulerSession {
    /// Connects and subscribes; returns once SUBSCRIBED arrives.
    pub async fn subscribe(
        config: &ClientConfig,
        framework: FrameworkInfo,
    ) -> anyhow::Result<Self> {
        let identity = Identity::load(&config.certs, &config.identity)?;
        let tls = stoa_transport::client_config(&identity, ALPN_SCHEDULER)?;
        let endpoint = stoa_transport::client_endpoint(config.master.first())?;
        let (conn, mut sender, mut receiver) =
            stoa_transport::connect_leader(&endpoint, &config.master, tls.clone()).await?;
        stoa_transport::watch_leader(&endpoint, &config.master, &tls, &conn);
        let call = match &config.hosted {
            None => Call::Subscribe { framework },
            Some((task_id, token)) => Call::SubscribeHosted {
                framework,
                task_id: task_id.clone(),
                token: *token,
            },
        };
        sender.send(&call).await.context("cannot send SUBSCRIBE")?;
        match receiver.recv::<Event>().await {
            Ok(Some(Event::Subscribed { framework_id, .. })) => Ok(SchedulerSession {
                endpoint,
                conn,
                sender,
                receiver,
                framework_id,
                burst: 0,
            }),
            Ok(Some(Event::Error { code, message })) => Err(Refused { code, message }.into()),
            Ok(Some(other)) => bail!("expected SUBSCRIBED, the master sent {other:?}"),
            Ok(None) => bail!(
                "the master closed the connection during SUBSCRIBE ({:?})",
                conn.close_reason()
            ),
            Err(e) => bail!("SUBSCRIBE failed: {e}"),
        }
    }

    pub fn framework_id(&self) -> &FrameworkId {
        &self.framework_id
    }

    /// The next event; `None` once the master has closed the connection.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        self.burst = 0;
        match self.receiver.recv::<Event>().await {
            Ok(event) => Ok(event),
            Err(e) if e.is_connection_lost() => {
                tracing::info!(error = %e, reason = ?self.conn.close_reason(), "connection to the master lost");
                Ok(None)
            }
            Err(e) => Err(e).context("bad data from the master"),
        }
    }

    /// The next event if it has already arrived, without waiting: handle
    /// a burst of events before answering them (see [`Calls`]). `None`
    /// also after [`MAX_BURST`] in a row: time to send what is owed before
    /// [`SchedulerSession::next_event`].
    pub fn ready_event(&mut self) -> anyhow::Result<Option<Event>> {
        if self.burst >= MAX_BURST {
            return Ok(None);
        }
        let event = match self.receiver.try_recv::<Event>() {
            Ok(event) => event,
            Err(e) if e.is_connection_lost() => {
                return Err(e).context("connection to the master lost");
            }
            Err(e) => return Err(e).context("bad data from the master"),
        };
        self.burst += usize::from(event.is_some());
        Ok(event)
    }

    pub async fn call(&mut self, call: &Call) -> anyhow::Result<()> {
        self.sender
            .send(call)
            .await
            .context("cannot send a call to the master")
    }

    /// Sends calls in one write.
    pub async fn calls(&mut self, calls: impl IntoIterator<Item = Call>) -> anyhow::Result<()> {
        self.sender
            .send_many(calls)
            .await
            .context("cannot send a call to the master")
    }

    pub async fn launch(
        &mut self,
        offer_ids: Vec<OfferId>,
        tasks: Vec<stoa_proto::TaskInfo>,
    ) -> anyhow::Result<()> {
        self.call(&Call::Accept {
            offer_ids,
            operations: vec![Operation::Launch { tasks }],
            refuse_ms: None,
        })
        .await
    }

    pub async fn decline(
        &mut self,
        offer_ids: Vec<OfferId>,
        refuse_ms: Option<u64>,
    ) -> anyhow::Result<()> {
        self.call(&Call::Decline {
            offer_ids,
            refuse_ms,
        })
        .await
    }

    pub async fn acknowledge(
        &mut self,
        agent_id: AgentId,
        task_id: TaskId,
        update_id: UpdateId,
    ) -> anyhow::Result<()> {
        self.call(&Call::Acknowledge {
            agent_id,
            task_id,
            update_id,
        })
        .await
    }

    /// Ends the framework (its tasks are killed) and closes the connection.
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        self.call(&Call::Teardown).await?;
        self.finish().await;
        Ok(())
    }

    /// Closes the connection once what was sent has arrived. Without a
    /// TEARDOWN before it, the framework stays for its failover timeout.
    pub async fn finish(mut self) {
        self.sender
            .finish_and_flush(std::time::Duration::from_secs(1))
            .await;
        self.conn.close(stoa_transport::close::NORMAL, b"done");
        // The close is sent by the endpoint: give it the moment it takes,
        // as the process may exit next.
        let _ = tokio::time::timeout(CLOSE_WAIT, self.endpoint.wait_idle()).await;
    }
}

/// Longest a closing client waits for its close to go out.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// One request to the master's operator channel, answered by one reply.
/// The operator certificate may make every call; any other certificate
/// of the cluster is a tenant, answered about its own frameworks only.
pub async fn operator_call(
    config: &ClientConfig,
    call: &stoa_proto::operator::OperatorCall,
) -> anyhow::Result<stoa_proto::operator::OperatorReply> {
    let mut session = OperatorSession::connect(config).await?;
    let reply = session.call(call).await;
    session.close();
    reply
}

/// A connection to the operator channel for several calls in turn (a log
/// follower's reads, a run's views), so each costs no handshake.
#[derive(Debug)]
pub struct OperatorSession {
    // Kept so the endpoint's socket lives as long as the session.
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    sender: FrameSender,
    receiver: FrameReceiver,
    certs: PathBuf,
}

impl OperatorSession {
    pub async fn connect(config: &ClientConfig) -> anyhow::Result<Self> {
        let identity = Identity::load(&config.certs, &config.identity)?;
        let tls = stoa_transport::client_config(&identity, stoa_transport::ALPN_OPERATOR)?;
        let endpoint = stoa_transport::client_endpoint(config.master.first())?;
        let (conn, sender, receiver) =
            stoa_transport::connect_leader(&endpoint, &config.master, tls).await?;
        Ok(OperatorSession {
            _endpoint: endpoint,
            conn,
            sender,
            receiver,
            certs: config.certs.clone(),
        })
    }

    pub async fn call(
        &mut self,
        call: &stoa_proto::operator::OperatorCall,
    ) -> anyhow::Result<stoa_proto::operator::OperatorReply> {
        self.sender
            .send(call)
            .await
            .context("cannot send the request")?;
        match self.receiver.recv().await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) | Err(_) => bail!(
                "the master closed the operator connection ({:?}); give a certificate of the cluster ({}) with --identity",
                self.conn.close_reason(),
                self.certs.display()
            ),
        }
    }

    pub fn close(self) {
        self.conn.close(stoa_transport::close::NORMAL, b"done");
    }
}

/// Asks the master to host a scheduler (`stoa submit`); returns the id
/// the master gave the framework. The component must already be in the
/// artifact store ([`upload_artifact`]).
pub async fn submit(
    config: &ClientConfig,
    submission: stoa_proto::Submission,
) -> anyhow::Result<FrameworkId> {
    let call = Call::Submit {
        submission: Box::new(submission),
    };
    match request(config, "SUBMIT", &call).await? {
        Event::Submitted { framework_id } => Ok(framework_id),
        other => bail!("expected SUBMITTED, the master sent {other:?}"),
    }
}

/// Sends `data` to the scheduler of `framework_id` (its MESSAGE event);
/// the client must be the framework's principal.
pub async fn send_message(
    config: &ClientConfig,
    framework_id: FrameworkId,
    data: Vec<u8>,
) -> anyhow::Result<()> {
    let call = Call::SendMessage { framework_id, data };
    match request(config, "SEND_MESSAGE", &call).await? {
        Event::Delivered => Ok(()),
        other => bail!("expected DELIVERED, the master sent {other:?}"),
    }
}

/// One call on a fresh scheduler-channel connection, answered by one
/// event; an ERROR answer is a [`Refused`].
async fn request(config: &ClientConfig, what: &str, call: &Call) -> anyhow::Result<Event> {
    let identity = Identity::load(&config.certs, &config.identity)?;
    let tls = stoa_transport::client_config(&identity, ALPN_SCHEDULER)?;
    let endpoint = stoa_transport::client_endpoint(config.master.first())?;
    let (conn, mut sender, mut receiver) =
        stoa_transport::connect_leader(&endpoint, &config.master, tls).await?;
    sender
        .send(call)
        .await
        .with_context(|| format!("cannot send {what}"))?;
    let reply = receiver.recv::<Event>().await;
    conn.close(stoa_transport::close::NORMAL, b"done");
    match reply {
        Ok(Some(Event::Error { code, message })) => Err(Refused { code, message }.into()),
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!(
            "the master closed the connection during {what} ({:?})",
            conn.close_reason()
        ),
        Err(e) => bail!("{what} failed: {e}"),
    }
}

/// Uploads a binary to the master's artifact store (channel
/// `stoa-artifacts/1`); returns its digest, for `Artifact::Stored`.
/// What the store already has is not sent again: the master is asked
/// first.
pub async fn upload_artifact(
    config: &ClientConfig,
    bytes: &[u8],
) -> anyhow::Result<stoa_proto::Digest> {
    let identity = Identity::load(&config.certs, &config.identity)?;
    let tls = stoa_transport::client_config(&identity, stoa_transport::ALPN_ARTIFACTS)?;
    let endpoint = stoa_transport::client_endpoint(config.master.first())?;
    let conn = stoa_transport::connect_leader_conn(&endpoint, &config.master, tls).await?;
    // What the store holds already is not sent again.
    let digest = stoa_proto::Digest::of(bytes);
    let result = match stoa_transport::side::has_artifact(&conn, digest).await {
        Ok(Some(_)) => Ok(digest),
        _ => stoa_transport::side::put_artifact(&conn, bytes).await,
    };
    conn.close(stoa_transport::close::NORMAL, b"done");
    endpoint.wait_idle().await;
    result
}

/// Sleeps until `deadline`, or forever without one (a `select!` arm that
/// never fires).
pub(crate) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
