//! `stoa artifact put`: uploads wasm binaries to the master's store, so
//! tasks can name them by digest instead of carrying them.

use anyhow::Context as _;
use std::path::PathBuf;

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
    #[command(flatten)]
    client: crate::connect::ClientArgs,
    /// Print JSON lines ({"file", "digest", "bytes"}) instead of text.
    #[arg(long)]
    json: bool,
    /// The wasm files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub async fn run(a: ArtifactArgs) -> anyhow::Result<()> {
    let ArtifactCommand::Put(a) = a.command;
    let config = a.client.config();
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
