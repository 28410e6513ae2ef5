//! The flags of every command that talks to the master as a client.

use std::net::SocketAddr;
use std::path::PathBuf;
use stoa_client::ClientConfig;

#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The master's address.
    #[arg(long, default_value = "127.0.0.1:5050", env = "STOA_MASTER")]
    master: SocketAddr,
    /// Directory with ca.pem and the client certificate.
    #[arg(long, default_value = ".stoa/certs", env = "STOA_CERTS")]
    certs: PathBuf,
    /// Certificate name to present (for a framework: its principal).
    #[arg(long, default_value = "client")]
    identity: String,
}

impl ClientArgs {
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.master, &self.certs);
        config.identity = self.identity.clone();
        config
    }
}
