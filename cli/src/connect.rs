//! The flags of every command that talks to the master as a client.

use std::path::PathBuf;
use stoa_client::ClientConfig;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The masters' addresses, comma-separated (HOST:PORT,...); calls go
    /// to the one that leads.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: stoa_transport::Masters,
    /// Directory with ca.pem and the client certificate.
    #[arg(long, default_value = ".stoa/certs", env = "STOA_CERTS")]
    certs: PathBuf,
    /// Certificate name to present (for a framework: its principal).
    #[arg(long, default_value = "client")]
    identity: String,
}

impl ClientArgs {
    /// The certificate name this command presents.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.master.clone(), &self.certs);
        config.identity = self.identity.clone();
        config
    }
}
