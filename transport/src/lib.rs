//! QUIC links between Stoa's processes: the cluster's certificates, TLS
//! configuration with mutual verification against the cluster CA, and
//! framed message streams (see `stoa_proto::framing`).
//!
//! Every connection carries one bidirectional stream opened by the
//! connecting side; the ALPN names the channel (`stoa-agent/1`,
//! `stoa-sched/1`), and a peer offering any other is refused in the
//! handshake.

pub mod certs;
pub mod framed;
pub mod leader;
pub mod side;
pub mod tls;

pub use framed::{FrameReceiver, FrameSender, RecvError};
pub use leader::{
    ALPN_STANDBY, Masters, NotLeader, connect, connect_leader, connect_leader_conn, watch_leader,
};
pub use side::ArtifactStore;
pub use tls::{Identity, client_config, https_server_config, server_config, standby_server_config};

/// Channel of agents talking to the master.
pub const ALPN_AGENT: &[u8] = b"stoa-agent/1";
/// Channel of schedulers talking to the master.
pub const ALPN_SCHEDULER: &[u8] = b"stoa-sched/1";
/// Channel for uploading artifacts to the master's store.
pub const ALPN_ARTIFACTS: &[u8] = b"stoa-artifacts/1";
/// The name every master certificate carries and every client verifies.
pub const MASTER_NAME: &str = "master.stoa";

/// Application close codes, so a peer can tell why it was dropped.
pub mod close {
    use quinn::VarInt;
    pub const NORMAL: VarInt = VarInt::from_u32(0);
    /// The peer sent a frame that failed to decode or was too large.
    pub const PROTOCOL_ERROR: VarInt = VarInt::from_u32(1);
    /// The peer broke the protocol's order (e.g. a call before SUBSCRIBE).
    pub const REFUSED: VarInt = VarInt::from_u32(2);
    /// The process is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(3);
    /// This master does not lead (a standby, or a leader that lost its
    /// election); the reason is the leader's address, if one is known.
    pub const NOT_LEADER: VarInt = VarInt::from_u32(4);
}

/// Delays between attempts to reach the master again: from 100 ms,
/// doubling up to 5 s, each with random jitter so that a cluster's agents
/// and schedulers do not all knock on a restarted master at once. Never
/// ends; callers that give up do so by time.
pub fn reconnect_delays() -> impl Iterator<Item = std::time::Duration> {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(100))
        .with_max_delay(std::time::Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// A server endpoint whose stateless resets outlive the process: the
/// reset key is derived from `secret` (the master keeps it in its
/// registry), so a master restarted on the same address answers packets
/// of its predecessor's connections with a reset their peers accept, and
/// they reconnect at once instead of waiting out the idle timeout.
pub fn server_endpoint(
    config: quinn::ServerConfig,
    addr: std::net::SocketAddr,
    secret: &[u8; 32],
) -> std::io::Result<quinn::Endpoint> {
    let reset = quinn::EndpointConfig::new(std::sync::Arc::new(ResetKey::derive(secret)));
    let socket = udp_socket(addr)?;
    // Linux reports twice what it grants (the rest is its bookkeeping).
    // A server carries many links: say when the kernel limits its buffer
    // (clients, with one link each, need not hear it).
    let granted = socket2::SockRef::from(&socket)
        .recv_buffer_size()
        .unwrap_or(0)
        / 2;
    if granted < SOCKET_BUFFER {
        tracing::info!(
            granted,
            wanted = SOCKET_BUFFER,
            "the UDP receive buffer is smaller than asked for; with many agents, raise net.core.rmem_max (sysctl) to avoid dropped packets"
        );
    }
    quinn::Endpoint::new(
        reset,
        Some(config),
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// The key of stateless reset tokens: HMAC-SHA256 under a key derived
/// from the master's secret (never the secret itself).
struct ResetKey(hmac::Hmac<sha2::Sha256>);

impl ResetKey {
    fn derive(secret: &[u8; 32]) -> ResetKey {
        ResetKey(derived_key(secret, "QUIC stateless reset key"))
    }
}

/// An HMAC-SHA256 keyed with a key derived from the masters' shared
/// `secret` for one `purpose`, never with the secret itself: a key for one
/// use cannot be turned to another.
pub fn derived_key(secret: &[u8; 32], purpose: &str) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac as _;
    let mut kdf = <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    kdf.update(format!("stoa: {purpose}").as_bytes());
    let key = kdf.finalize().into_bytes();
    <hmac::Hmac<sha2::Sha256>>::new_from_slice(&key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"))
}

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        use hmac::Mac as _;
        let mut mac = self.0.clone();
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let n = signature_out.len().min(full.len());
        signature_out[..n].copy_from_slice(&full[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        use hmac::Mac as _;
        let mut mac = self.0.clone();
        mac.update(data);
        mac.verify_slice(signature)
            .map_err(|_| quinn::crypto::CryptoError)
    }
}

/// Opens a client endpoint on the unspecified address of `remote`'s family.
pub fn client_endpoint(remote: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let bind: std::net::SocketAddr = if remote.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(bind)?,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

/// Bytes of socket buffer each endpoint asks for. One endpoint carries
/// every link of a process: a master's thousand agents, or a thousand
/// handshakes at once when they return to a new leader. With Linux's
/// default (208 KiB) such a burst overflows the buffer, the packets are
/// dropped, and handshakes wait out retransmissions and time out with
/// the CPU idle; a failover of 1,000 agents took 7 s for that alone.
const SOCKET_BUFFER: usize = 8 << 20;

/// A UDP socket bound to `addr` with buffers of [`SOCKET_BUFFER`], or as
/// much as the kernel allows (`net.core.rmem_max` and `wmem_max`).
fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // As std binds "[::]": both families, where the system allows.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Channel of operators (the `stoa` CLI) talking to the master.
pub const ALPN_OPERATOR: &[u8] = b"stoa-op/1";
/// The certificate name of the operator, who may make every call.
pub const OPERATOR_NAME: &str = "operator";

/// The common name of the certificate a peer presented, if any. The
/// handshake has already verified it against the cluster CA.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    cert_name(&peer_cert(conn)?)
}

/// The certificate a peer presented, if any (verified in the handshake).
fn peer_cert(conn: &quinn::Connection) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.into_iter().next()
}

/// A certificate's serial number, as [`stoa_proto::operator::Revocation`]
/// keys it: lowercase hex without leading zeros.
pub fn cert_serial(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let hex = hex::encode(cert.tbs_certificate.raw_serial());
    let digits = hex.trim_start_matches('0');
    Some(if digits.is_empty() {
        "0".into()
    } else {
        digits.to_string()
    })
}

/// The serial of the certificate a peer presented, if any.
pub fn peer_serial(conn: &quinn::Connection) -> Option<String> {
    cert_serial(&peer_cert(conn)?)
}

/// The common name a certificate was issued to (`stoa certs --issue
/// NAME`): the principal of whoever presents it.
pub fn cert_name(cert: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(name)
}
