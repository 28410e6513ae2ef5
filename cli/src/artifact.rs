//! `stoa artifact put`: uploads wasm binaries to the master's store, so
//! tasks can name them by digest instead of carrying them.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use stoa_client::ClientConfig;

#[derive(Debug, clap::Args)]
pub struct ArtifactArgs {
    #[command(subcommand)]
    command: ArtifactCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ArtifactCommand {
    /// Upload files; prints each one's digest (sha256:...).
    Put(PutArgs),
}

#[derive(Debug, clap::Args)]
struct PutArgs {
    /// The master's address.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: SocketAddr,
    /// Directory with ca.pem and the client certificate.
    #[arg(long, default_value = ".stoa/certs", env = "STOA_CERTS")]
    certs: PathBuf,
    /// Certificate name to present.
    #[arg(long, default_value = "client")]
    identity: String,
    /// Print JSON lines ({"file", "digest", "bytes"}) instead of text.
    #[arg(long)]
    json: bool,
    /// The wasm files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub async fn run(a: ArtifactArgs) -> anyhow::Result<()> {
    let ArtifactCommand::Put(a) = a.command;
    let mut config = ClientConfig::new(a.master, &a.certs);
    config.identity = a.identity.clone();
    for file in &a.files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let digest = stoa_client::upload_artifact(&config, &bytes)
            .await
            .with_context(|| format!("cannot upload {}", file.display()))?;
        if a.json {
            let line = serde_json::json!({
                "file": file.display().to_string(),
                "digest": digest.to_string(),
                "bytes": bytes.len(),
            });
            println!("{line}");
        } else {
            println!("{digest}  {} ({} bytes)", file.display(), bytes.len());
        }
    }
    Ok(())
}
