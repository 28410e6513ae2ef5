//! A real master and agents on loopback, driven by real schedulers.

use anyhow::Context as _;
use std::time::Duration;
use stoa_proto::framing::{self, MAX_FRAME_LEN, PROTOCOL_VERSION};
use stoa_proto::{Event, OfferId, Reason, TaskState};
use stoa_tests::{Cluster, hello_wasm};
use stoa_transport::{ALPN_AGENT, ALPN_SCHEDULER, Identity};

const AGENT_RESOURCES: &str = "cpus:1;mem:512";

fn hello(cluster: &Cluster, tasks: usize) -> anyhow::Result<hello_scheduler::HelloReport> {
    let opts = hello_scheduler::HelloOptions {
        client: cluster.client(),
        tasks,
        wasm: hello_wasm()?,
        task_resources: hello_scheduler::default_task_resources(),
        role: "default".parse()?,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(hello_scheduler::run_with_timeout(
        opts,
        Duration::from_secs(60),
    ))
}

#[test]
fn hello_tasks_all_finish_with_the_right_outputs_on_both_agents() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, AGENT_RESOURCES)?;
    // 20 tasks of cpus:0.1 do not fit on one agent of cpus:1: both must work.
    let report = hello(&cluster, 20).map_err(|e| e.context(cluster.logs()))?;
    assert_eq!(report.finished, 20);
    assert_eq!(
        report.per_agent.len(),
        2,
        "tasks ran on {:?}",
        report.per_agent
    );
    assert_eq!(report.per_agent.values().sum::<usize>(), 20);
    // Resources come back: a second run on the same cluster works too.
    let again = hello(&cluster, 20)?;
    assert_eq!(again.finished, 20);
    Ok(())
}

/// Opens a raw connection on `alpn` with `identity`, for sending bad data.
async fn raw_connection(
    cluster: &Cluster,
    identity: &Identity,
    alpn: &[u8],
) -> anyhow::Result<(
    quinn::Endpoint,
    quinn::Connection,
    stoa_transport::FrameSender,
)> {
    let endpoint = stoa_transport::client_endpoint(cluster.addr)?;
    let config = stoa_transport::client_config(identity, alpn)?;
    let (conn, sender, _receiver) =
        stoa_transport::connect(&endpoint, cluster.addr, config).await?;
    Ok((endpoint, conn, sender))
}

/// Sends `bytes` and returns how the master closed the connection.
fn close_reason_after_sending(
    cluster: &Cluster,
    alpn: &[u8],
    bytes: Vec<u8>,
) -> anyhow::Result<quinn::ConnectionError> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let name = if alpn == ALPN_AGENT {
            "agent"
        } else {
            "client"
        };
        let identity = Identity::load(&cluster.certs, name)?;
        let (_endpoint, conn, mut sender) = raw_connection(cluster, &identity, alpn).await?;
        sender.send_raw(&bytes).await?;
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?;
        Ok(closed)
    })
}

fn assert_protocol_error(err: quinn::ConnectionError) {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                stoa_transport::close::PROTOCOL_ERROR,
                "{close:?}"
            )
        }
        other => panic!("expected the master to close with a protocol error, got {other:?}"),
    }
}

#[test]
fn malformed_and_oversized_frames_are_refused_and_the_master_keeps_serving() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, AGENT_RESOURCES)?;
    // A well-framed body that is not a message.
    let mut garbage = 9u32.to_be_bytes().to_vec();
    garbage.push(PROTOCOL_VERSION);
    garbage.extend_from_slice(&[0xff; 8]);
    assert_protocol_error(close_reason_after_sending(
        &cluster,
        ALPN_AGENT,
        garbage.clone(),
    )?);
    assert_protocol_error(close_reason_after_sending(
        &cluster,
        ALPN_SCHEDULER,
        garbage,
    )?);
    // A frame announcing more than the limit: refused from its header alone.
    let oversized = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    assert_protocol_error(close_reason_after_sending(&cluster, ALPN_AGENT, oversized)?);
    // A frame from a future protocol version.
    let mut future = framing::encode(&stoa_proto::AgentToMaster::Heartbeat)?;
    future[framing::HEADER_LEN] = PROTOCOL_VERSION + 1;
    assert_protocol_error(close_reason_after_sending(&cluster, ALPN_AGENT, future)?);

    assert!(cluster.master_alive());
    assert_eq!(hello(&cluster, 3)?.finished, 3);
    Ok(())
}

#[test]
fn wrong_alpn_and_foreign_certificates_are_refused_in_the_handshake() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, AGENT_RESOURCES)?;
    let rt = tokio::runtime::Runtime::new()?;
    let ours = Identity::load(&cluster.certs, "client")?;
    let wrong_alpn = rt.block_on(raw_connection(&cluster, &ours, b"h3"));
    assert!(wrong_alpn.is_err(), "a connection on ALPN h3 was accepted");

    // A client certificate from another CA, while trusting ours.
    let foreign = tempfile::tempdir()?;
    stoa_transport::certs::init(foreign.path(), "foreign")?;
    std::fs::copy(cluster.certs.join("ca.pem"), foreign.path().join("ca.pem"))?;
    let stranger = Identity::load(foreign.path(), "client")?;
    let refused = rt.block_on(async {
        let (_ep, conn, mut sender) = raw_connection(&cluster, &stranger, ALPN_SCHEDULER).await?;
        // With TLS 1.3 the client may finish its side before the server
        // rejects the certificate: the connection must then die at once.
        sender.send(&stoa_proto::Call::Teardown).await?;
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?;
        anyhow::Ok(closed)
    });
    match refused {
        Err(_) => {}
        Ok(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert!(
                format!("{c:?}").to_lowercase().contains("certificate"),
                "{c:?}"
            )
        }
        Ok(other) => panic!("foreign certificate: expected a TLS alert, got {other:?}"),
    }
    // A scheduler's certificate cannot pose as an agent.
    let posing = rt.block_on(async {
        let (_ep, conn, mut sender) = raw_connection(&cluster, &ours, ALPN_AGENT).await?;
        let info = stoa_proto::AgentInfo {
            hostname: "fake".into(),
            resources: "cpus:64;mem:65536".parse()?,
            reservations: Vec::new(),
            attributes: Default::default(),
        };
        sender
            .send(&stoa_proto::AgentToMaster::Register {
                info,
                agent_id: None,
                tasks: Vec::new(),
            })
            .await?;
        anyhow::Ok(tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?)
    });
    // Refused before or after the first frame, always with the reason.
    match posing {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, stoa_transport::close::REFUSED)
        }
        Ok(other) => panic!("expected the master to refuse, got {other:?}"),
        Err(e) => assert!(format!("{e:#}").contains("agent certificate"), "{e:#}"),
    }
    assert!(cluster.master_alive());
    assert_eq!(hello(&cluster, 2)?.finished, 2);
    Ok(())
}

#[test]
fn accept_naming_an_unknown_or_used_offer_drops_the_tasks() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, AGENT_RESOURCES)?;
    let wasm = hello_wasm()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let framework = stoa_proto::FrameworkInfo::new("bad-accepts", "test".parse()?);
        let mut s = stoa_client::SchedulerSession::subscribe(&cluster.client(), framework).await?;
        let task = |id: &str| stoa_proto::TaskInfo {
            task_id: stoa_proto::TaskId::new(id).expect("valid id"),
            name: id.into(),
            resources: hello_scheduler::default_task_resources(),
            kind: stoa_proto::TaskKind::wasm(stoa_proto::Artifact::inline(wasm.clone()), b"x".to_vec()),
            limits: Default::default(),
        };
        let next_event = async |s: &mut stoa_client::SchedulerSession| -> anyhow::Result<Event> {
            tokio::time::timeout(Duration::from_secs(10), s.next_event()).await??.context("connection closed")
        };
        let next_update = async |s: &mut stoa_client::SchedulerSession| -> anyhow::Result<stoa_proto::TaskStatus> {
            loop {
                if let Event::Update { status, .. } = next_event(s).await? {
                    return Ok(status);
                }
            }
        };
        let offer = loop {
            if let Event::Offers { offers } = next_event(&mut s).await? {
                break offers[0].id;
            }
        };
        s.launch(vec![OfferId(u64::MAX)], vec![task("ghost")]).await?;
        let status = next_update(&mut s).await?;
        assert_eq!(status.task_id.as_str(), "ghost");
        assert_eq!((status.state, status.reason), (TaskState::Dropped, Some(Reason::InvalidOffers)));

        // Use the real offer once, then name it again.
        s.launch(vec![offer], vec![task("first")]).await?;
        s.launch(vec![offer], vec![task("second")]).await?;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let st = next_update(&mut s).await?;
            if st.task_id.as_str() == "second" || st.state == TaskState::Running {
                seen.push((st.task_id.to_string(), st.state, st.reason));
            }
        }
        assert!(seen.contains(&("second".into(), TaskState::Dropped, Some(Reason::InvalidOffers))), "{seen:?}");
        assert!(seen.contains(&("first".into(), TaskState::Running, None)), "{seen:?}");
        s.teardown().await
    })
}
