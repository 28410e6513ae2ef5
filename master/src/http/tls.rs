//! The operator API over HTTPS (`--https ADDR`): TLS with the master's
//! certificate from the cluster CA, on any address. A client that
//! presents a certificate of the CA is that certificate's principal (no
//! token needed); any other must send a bearer token, as over plain HTTP.

use super::{ApiState, api};
use axum::Extension;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// The client certificate of the connection a request came on, if it
/// presented one (verified against the CA): its principal and serial.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Option<(String, String)>);

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API over TLS on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    state: ApiState,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let router = api::router(state);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "cannot accept an HTTPS connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|c| {
                    Some((
                        stoa_transport::cert_name(c)?,
                        stoa_transport::cert_serial(c)?,
                    ))
                });
            let service = TowerToHyperService::new(router.layer(Extension(ClientCert(cert))));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended");
            }
        });
    }
}
