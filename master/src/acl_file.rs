//! The ACL file (`stoa master --acls FILE [--acls-default deny]`): read at
//! start and again on SIGHUP. A file that cannot be read or parsed is
//! refused whole, with what is wrong; at start the master does not start,
//! on a reload the rules in force stay.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use stoa_master_core::acl::{Acls, DefaultMode};

/// Where the rules come from.
#[derive(Debug, Clone, Default)]
pub struct AclSource {
    /// The file; without one, the built-in rules ([`Acls::default`]).
    pub file: Option<PathBuf>,
    /// `--acls-default`: overrides the file's `default`.
    pub default: Option<DefaultMode>,
}

impl AclSource {
    /// Reads the rules now.
    pub fn load(&self) -> anyhow::Result<Acls> {
        let mut acls = match &self.file {
            Some(path) => read(path)?,
            None => Acls::default(),
        };
        if let Some(default) = self.default {
            acls.default = default;
        }
        Ok(acls)
    }
}

fn read(path: &Path) -> anyhow::Result<Acls> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the ACL file {}", path.display()))?;
    Acls::parse(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("the ACL file {} is refused whole", path.display()))
}
