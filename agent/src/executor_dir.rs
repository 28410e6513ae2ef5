//! An executor's directory on the agent's host, as both sides see it: the
//! agent daemon starts executors and finds them again after a restart;
//! the executor process listens and records itself there.

use std::path::{Path, PathBuf};

/// The Unix socket the executor listens on for its agent.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("socket")
}

/// The file holding the executor's process id.
pub fn pid_path(dir: &Path) -> PathBuf {
    dir.join("pid")
}
