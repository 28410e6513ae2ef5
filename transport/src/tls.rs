//! TLS 1.3 for QUIC with the cluster CA: servers require client
//! certificates signed by it, clients verify the master's certificate
//! against it under [`crate::MASTER_NAME`]. Nothing skips verification.

use anyhow::{Context as _, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A node's certificate chain and key, and the CA it trusts.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl Identity {
    /// Loads `ca.pem`, `NAME.pem` and `NAME.key` from `dir` (as written by
    /// `stoa certs`).
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Identity> {
        let hint = || format!("create them with `stoa certs --dir {}`", dir.display());
        let ca_path = dir.join("ca.pem");
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca_path)
            .with_context(|| format!("cannot read {}; {}", ca_path.display(), hint()))?
        {
            roots
                .add(cert.with_context(|| format!("bad certificate in {}", ca_path.display()))?)?;
        }
        let cert_path = dir.join(format!("{name}.pem"));
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .with_context(|| format!("cannot read {}; {}", cert_path.display(), hint()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("bad certificate in {}", cert_path.display()))?;
        if chain.is_empty() {
            bail!("{} holds no certificate; {}", cert_path.display(), hint());
        }
        let key_path = dir.join(format!("{name}.key"));
        let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| {
            format!(
                "cannot read a private key from {}; {}",
                key_path.display(),
                hint()
            )
        })?;
        Ok(Identity {
            chain,
            key,
            roots: Arc::new(roots),
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How often an idle connection proves it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// How long a connection may hear nothing before it counts as lost: six
/// keep-alives. A master that died and came back on its address is
/// noticed sooner, at the next keep-alive, through a stateless reset (see
/// [`crate::server_endpoint`]); one that stays down is noticed after this.
///
/// The daemons run their loops on one thread, so a loop stalled for this
/// long drops its links. The stall that kept this at 3 s (1.2 s and 2 s
/// dropped healthy links) was byte fields decoded one byte at a time: a
/// 2.6 MB inline component cost 130 ms a hop in a debug build, seconds
/// for a dozen launches; they are decoded as bytes now (1 ms).
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(1_500);

fn transport() -> Arc<quinn::TransportConfig> {
    transport_with(KEEP_ALIVE, IDLE_TIMEOUT)
}

/// The links that only wait for news of a new leader (see
/// [`crate::leader::watch_leader`]): each client holds one to a standby
/// for as long as it is connected, so they prove themselves alive rarely.
/// A lost one is noticed late and replaced; the link to the leader keeps
/// its own, fast timeout.
pub fn watch_transport() -> Arc<quinn::TransportConfig> {
    transport_with(Duration::from_secs(2), Duration::from_secs(8))
}

fn transport_with(keep_alive: Duration, idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// A server that accepts only clients holding a certificate from the
/// cluster CA, on the given channels.
pub fn server_config(id: &Identity, alpns: &[&[u8]]) -> anyhow::Result<quinn::ServerConfig> {
    server_config_with(id, alpns, transport())
}

/// A standby master's server: only [`crate::ALPN_STANDBY`], with the idle
/// timeout of [`watch_transport`] so that a query held open (no traffic
/// but its client's rare keep-alives) lives.
pub fn standby_server_config(id: &Identity) -> anyhow::Result<quinn::ServerConfig> {
    server_config_with(id, &[crate::ALPN_STANDBY], watch_transport())
}

fn server_config_with(
    id: &Identity,
    alpns: &[&[u8]],
    transport: Arc<quinn::TransportConfig>,
) -> anyhow::Result<quinn::ServerConfig> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider())
            .build()
            .context("cannot build the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .context("the node's certificate and key do not match")?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// A client on one channel that verifies the master against the cluster
/// CA. It offers the standby channel too, so that a standby master can
/// say in the handshake that it does not lead (see [`crate::leader`]).
pub fn client_config(id: &Identity, alpn: &[u8]) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(id.roots.clone())
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .context("the node's certificate and key do not match")?;
    tls.alpn_protocols = vec![alpn.to_vec(), crate::ALPN_STANDBY.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport());
    Ok(config)
}

/// The HTTPS server of the operator API: the node's certificate from the
/// cluster CA, TLS 1.2 or 1.3, HTTP/2 or 1.1. A client certificate from
/// the CA is asked for but not required: one that presents it is that
/// principal; one that does not must send a bearer token.
pub fn https_server_config(id: &Identity) -> anyhow::Result<rustls::ServerConfig> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .context("cannot build the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .context("the node's certificate and key do not match")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}
