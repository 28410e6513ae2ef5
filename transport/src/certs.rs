//! The cluster's certificate authority and node certificates, as PEM files
//! in one directory: `ca.pem`/`ca.key`, and `NAME.pem`/`NAME.key` per node.
//!
//! Keys are ECDSA P-256, written with mode 0600.

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// Names every node certificate made by [`init`]: the master, agents,
/// clients (schedulers) and operators (who alone may set weights and quotas).
pub const NODE_NAMES: [&str; 4] = ["master", "agent", "client", "operator"];

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Makes a new CA in `dir`. Refuses to overwrite an existing one.
pub fn create_ca(dir: &Path, cluster: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_pem = dir.join("ca.pem");
    if ca_pem.exists() {
        anyhow::bail!(
            "{} already exists; remove it to make a new CA",
            ca_pem.display()
        );
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("stoa cluster CA ({cluster})"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    write_private(&dir.join("ca.key"), &key.serialize_pem())?;
    std::fs::write(&ca_pem, cert.pem())?;
    Ok(())
}

/// Issues `NAME.pem`/`NAME.key` from the CA in `dir`. The master's
/// certificate also names [`crate::MASTER_NAME`], which clients verify.
pub fn issue(dir: &Path, name: &str, extra_names: &[String]) -> anyhow::Result<PathBuf> {
    let ca_key = std::fs::read_to_string(dir.join("ca.key")).with_context(|| {
        format!(
            "cannot read the CA key in {}; run `stoa certs --dir {}` first",
            dir.display(),
            dir.display()
        )
    })?;
    let ca_pem = std::fs::read_to_string(dir.join("ca.pem"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key)?)
        .context("cannot load the CA")?;
    let mut names = vec![
        format!("{name}.stoa"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if name == "master" {
        names.push(crate::MASTER_NAME.to_string());
    }
    names.extend(extra_names.iter().cloned());
    names.dedup();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let path = dir.join(format!("{name}.pem"));
    write_private(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    std::fs::write(&path, cert.pem())?;
    Ok(path)
}

/// Makes a CA and the master, agent and client certificates in `dir`,
/// unless a CA is already there (then nothing is changed).
pub fn init(dir: &Path, cluster: &str) -> anyhow::Result<bool> {
    if dir.join("ca.pem").exists() {
        return Ok(false);
    }
    create_ca(dir, cluster)?;
    for name in NODE_NAMES {
        issue(dir, name, &[])?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ALPN_AGENT, ALPN_SCHEDULER, Identity, client_config, server_config};

    async fn handshake(server: &Identity, client: &Identity, alpn: &[u8]) -> anyhow::Result<()> {
        let endpoint = quinn::Endpoint::server(
            server_config(server, &[ALPN_AGENT, ALPN_SCHEDULER])?,
            "127.0.0.1:0".parse()?,
        )?;
        let addr = endpoint.local_addr()?;
        let accept = tokio::spawn({
            let endpoint = endpoint.clone();
            async move {
                if let Some(incoming) = endpoint.accept().await {
                    let _ = incoming.await;
                }
            }
        });
        let client_ep = crate::client_endpoint(addr)?;
        let result = client_ep
            .connect_with(client_config(client, alpn)?, addr, crate::MASTER_NAME)?
            .await;
        accept.abort();
        result.map(|_| ()).map_err(Into::into)
    }

    #[tokio::test]
    async fn mutual_tls_accepts_the_cluster_and_refuses_strangers() -> anyhow::Result<()> {
        let ours = tempfile::tempdir()?;
        let theirs = tempfile::tempdir()?;
        init(ours.path(), "ours")?;
        init(theirs.path(), "theirs")?;
        let master = Identity::load(ours.path(), "master")?;
        let client = Identity::load(ours.path(), "client")?;
        let stranger = Identity::load(theirs.path(), "client")?;
        handshake(&master, &client, ALPN_AGENT).await?;
        assert!(
            handshake(&master, &client, b"h3").await.is_err(),
            "unknown ALPN must be refused"
        );
        assert!(
            handshake(&master, &stranger, ALPN_AGENT).await.is_err(),
            "another CA must be refused"
        );
        Ok(())
    }

    #[test]
    fn init_keeps_an_existing_ca() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(init(dir.path(), "c")?);
        let before = std::fs::read(dir.path().join("ca.pem"))?;
        assert!(!init(dir.path(), "c")?);
        assert_eq!(before, std::fs::read(dir.path().join("ca.pem"))?);
        Ok(())
    }
}
