//! `stoa revoke`: refuse a token or a certificate from now on, on every
//! master (the registry keeps the revocation). A revoked certificate's
//! open connections are closed; its next handshakes are refused.

use crate::operator::{Target, call};
use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject as _;
use stoa_proto::operator::{OperatorCall, Revocation};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true)))]
pub struct RevokeArgs {
    #[command(flatten)]
    target: Target,
    /// A bearer token of the HTTP API.
    #[arg(long, group = "what")]
    token: Option<String>,
    /// A certificate in --certs, by name (NAME.pem): its serial is revoked.
    #[arg(long, group = "what")]
    cert: Option<String>,
    /// A certificate's serial number, in hex.
    #[arg(long, group = "what")]
    serial: Option<String>,
}

pub async fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let revocation = match (&a.token, &a.cert, &a.serial) {
        (Some(token), _, _) => Revocation::Token(token.clone()),
        (_, Some(name), _) => {
            let path = a.target.certs().join(format!("{name}.pem"));
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read the certificate {}", path.display()))?;
            let cert = rustls::pki_types::CertificateDer::from_pem_slice(&pem)
                .map_err(|e| anyhow::anyhow!("{} holds no certificate: {e}", path.display()))?;
            let serial = stoa_transport::cert_serial(&cert)
                .with_context(|| format!("cannot read the serial of {}", path.display()))?;
            Revocation::CertificateSerial(serial)
        }
        (_, _, Some(serial)) => Revocation::CertificateSerial(serial.clone()),
        _ => bail!("give --token, --cert or --serial"),
    };
    let key = revocation.key().map_err(anyhow::Error::msg)?;
    call(&a.target, OperatorCall::Revoke(revocation)).await?;
    println!("revoked {key}");
    Ok(())
}
