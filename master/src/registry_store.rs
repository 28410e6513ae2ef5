//! The registry on disk: one redb file holding the master core's
//! [`Registry`], written in one transaction per change so a crash leaves
//! either the old or the new state, never a torn one. Hosted frameworks
//! live under a key of their own (so files from before hosting existed
//! still load), beside the master's secret.

use anyhow::Context as _;
use rand_core::TryRngCore as _;
use redb::{Database, ReadableDatabase as _, TableDefinition};
use std::path::Path;
use stoa_master_core::registry::Registry;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("registry");
const KEY: &str = "registry";
const HOSTED: &str = "hosted";
const SECRET: &str = "secret";

#[derive(Debug)]
pub struct RegistryStore {
    db: Database,
}

impl RegistryStore {
    /// Opens (or creates) the registry file.
    pub fn open(path: &Path) -> anyhow::Result<RegistryStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("cannot open the registry {}", path.display()))?;
        Ok(RegistryStore { db })
    }

    /// What was stored, or an empty registry for a new file.
    pub fn load(&self) -> anyhow::Result<Registry> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(TABLE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Registry::default()),
            Err(e) => return Err(e.into()),
        };
        let corrupt =
            "the registry file is corrupt; restore it from a backup or move it away to start empty";
        let mut registry: Registry = match redb::ReadableTable::get(&table, KEY)? {
            Some(bytes) => postcard::from_bytes(bytes.value()).context(corrupt)?,
            None => Registry::default(),
        };
        if let Some(bytes) = redb::ReadableTable::get(&table, HOSTED)? {
            registry.hosted = postcard::from_bytes(bytes.value()).context(corrupt)?;
        }
        Ok(registry)
    }

    /// The key of hosted schedulers' tokens: made once, kept for good, so
    /// instances running across a master restart stay valid.
    pub fn secret(&self) -> anyhow::Result<[u8; 32]> {
        let txn = self.db.begin_write()?;
        let secret = {
            let mut table = txn.open_table(TABLE)?;
            let stored = redb::ReadableTable::get(&table, SECRET)?
                .and_then(|v| <[u8; 32]>::try_from(v.value()).ok());
            match stored {
                Some(secret) => secret,
                None => {
                    let mut secret = [0u8; 32];
                    rand_core::OsRng
                        .try_fill_bytes(&mut secret)
                        .context("cannot read random bytes for the master's secret")?;
                    table.insert(SECRET, secret.as_slice())?;
                    secret
                }
            }
        };
        txn.commit()?;
        Ok(secret)
    }

    /// Replaces the stored registry, durably, before returning.
    pub fn save(&self, registry: &Registry) -> anyhow::Result<()> {
        let bytes = postcard::to_stdvec(registry)?;
        let hosted = postcard::to_stdvec(&registry.hosted)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TABLE)?;
            table.insert(KEY, bytes.as_slice())?;
            table.insert(HOSTED, hosted.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopening() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.redb");
        let mut reg = Registry::default();
        reg.weights.insert("eng".parse()?, 2.5);
        {
            let store = RegistryStore::open(&path)?;
            assert_eq!(store.load()?, Registry::default());
            store.save(&reg)?;
        }
        assert_eq!(RegistryStore::open(&path)?.load()?, reg);
        Ok(())
    }

    #[test]
    fn hosted_frameworks_and_the_secret_survive_reopening() -> anyhow::Result<()> {
        use stoa_master_core::registry::HostedRecord;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.redb");
        let mut framework = stoa_proto::FrameworkInfo::new("svc", "eng".parse()?);
        framework.id = Some("f1".parse()?);
        let mut reg = Registry::default();
        reg.hosted.insert(
            "f1".parse()?,
            HostedRecord {
                submission: stoa_proto::Submission {
                    framework,
                    artifact: stoa_proto::Digest::of(b"s"),
                    args: Vec::new(),
                    env: Vec::new(),
                    resources: "cpus:0.1;mem:64".parse()?,
                    fuel_per_call: 1,
                },
                launched: 3,
                current: Some(("stoa-scheduler-3".parse()?, "a1".parse()?)),
            },
        );
        let secret = {
            let store = RegistryStore::open(&path)?;
            store.save(&reg)?;
            store.secret()?
        };
        let store = RegistryStore::open(&path)?;
        assert_eq!(store.load()?, reg);
        assert_eq!(store.secret()?, secret, "the secret is made once");
        assert_ne!(secret, [0; 32]);
        Ok(())
    }
}
