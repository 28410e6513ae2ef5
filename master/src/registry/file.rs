//! The registry in a file, for a single master: one redb file with a table per kind of entity
//! (weights, quotas, reservations, hosted frameworks, agents, removed
//! agents, frameworks, torn-down frameworks), each row one entity encoded
//! with postcard, and a `meta` table with the schema version and the
//! master's secret. A batch of writes is one transaction, so a crash
//! leaves either the old or the new state, never a torn one.
//!
//! Files of the first layout (the whole registry as one value) are read
//! and rewritten in this layout when opened.

use super::rows::{self, CORRUPT, Row, Table, decode};
use anyhow::{Context as _, bail};
use rand_core::TryRngCore as _;
use redb::TableHandle as _;
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};
use std::collections::BTreeMap;
use std::path::Path;
use stoa_master_core::registry::{HostedRecord, QuotaSpec, Registry, SCHEMA_VERSION, Write};
use stoa_proto::{AgentId, FrameworkId, Resources, Role};

/// Rows keyed by an entity's id, as text.
type Def = TableDefinition<'static, &'static str, &'static [u8]>;

const META: Def = TableDefinition::new("meta");

fn def(table: Table) -> Def {
    TableDefinition::new(table.name())
}

const VERSION_KEY: &str = "schema_version";
const SECRET_KEY: &str = "secret";

/// The first layout: one table, the registry under one key.
const LEGACY: Def = TableDefinition::new("registry");

#[derive(Debug)]
pub struct FileStore {
    db: Database,
}

impl FileStore {
    /// Opens (or creates) the registry file, moving a file of the first
    /// layout to this one.
    pub fn open(path: &Path) -> anyhow::Result<FileStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("cannot open the registry {}", path.display()))?;
        let store = FileStore { db };
        store.check_version()?;
        Ok(store)
    }

    /// Refuses a file written by a newer layout; stamps a new file; moves
    /// a file of the first layout.
    fn check_version(&self) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let stored = meta
                .get(VERSION_KEY)?
                .map(|v| <[u8; 4]>::try_from(v.value()).map(u32::from_le_bytes))
                .transpose()
                .context(CORRUPT)?;
            match stored {
                Some(v) if v > SCHEMA_VERSION => bail!(
                    "the registry was written by a newer Stoa (layout {v}; this one reads up to {SCHEMA_VERSION}); run that version or start from a backup"
                ),
                Some(_) => {}
                None => {
                    meta.insert(VERSION_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
        }
        // Listed, not opened: opening a table in a write transaction
        // makes it.
        let has_legacy = txn.list_tables()?.any(|t| t.name() == LEGACY.name());
        let legacy = if has_legacy {
            Some(read_legacy(&txn.open_table(LEGACY)?)?)
        } else {
            None
        };
        if let Some((registry, secret)) = legacy {
            tracing::info!("moving the registry to layout {SCHEMA_VERSION}");
            for row in rows::all_rows(&registry)? {
                put(&txn, &row)?;
            }
            if let Some(secret) = secret {
                txn.open_table(META)?
                    .insert(SECRET_KEY, secret.as_slice())?;
            }
            txn.delete_table(LEGACY)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// What was stored, or an empty registry for a new file.
    pub fn load(&self) -> anyhow::Result<Registry> {
        let txn = self.db.begin_read()?;
        let mut r = Registry::default();
        let open = |def: Def| match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        for table in Table::ALL {
            if let Some(t) = open(def(table))? {
                for row in t.iter()? {
                    let (k, v) = row?;
                    rows::load_row(&mut r, table, k.value(), v.value())?;
                }
            }
        }
        Ok(r)
    }

    /// The key of hosted schedulers' tokens: made once, kept for good, so
    /// instances running across a master restart stay valid.
    pub fn secret(&self) -> anyhow::Result<[u8; 32]> {
        let txn = self.db.begin_write()?;
        let secret = {
            let mut meta = txn.open_table(META)?;
            let stored = meta
                .get(SECRET_KEY)?
                .and_then(|v| <[u8; 32]>::try_from(v.value()).ok());
            match stored {
                Some(secret) => secret,
                None => {
                    let mut secret = [0u8; 32];
                    rand_core::OsRng
                        .try_fill_bytes(&mut secret)
                        .context("cannot read random bytes for the master's secret")?;
                    meta.insert(SECRET_KEY, secret.as_slice())?;
                    secret
                }
            }
        };
        txn.commit()?;
        Ok(secret)
    }

    /// Applies `writes` in one transaction, durably, before returning.
    pub fn apply(&self, writes: &[Write]) -> anyhow::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        let mut tombstones = std::collections::BTreeSet::new();
        for w in writes {
            for row in rows::rows(w)? {
                put(&txn, &row)?;
                if row.table.is_tombstones() {
                    tombstones.insert(row.table);
                }
            }
        }
        for table in tombstones {
            trim(&txn, table)?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn put(txn: &redb::WriteTransaction, row: &Row) -> anyhow::Result<()> {
    let mut table = txn.open_table(def(row.table))?;
    match &row.value {
        Some(v) => {
            table.insert(row.key.as_str(), v.as_slice())?;
        }
        None => {
            table.remove(row.key.as_str())?;
        }
    }
    Ok(())
}

/// Keeps the newest tombstones, as [`Registry::apply`] does.
fn trim(txn: &redb::WriteTransaction, table: Table) -> anyhow::Result<()> {
    let mut t = txn.open_table(def(table))?;
    if (t.len()? as usize) <= stoa_master_core::registry::MAX_TOMBSTONES {
        return Ok(());
    }
    let mut all: Vec<(u64, String)> = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        all.push((decode(v.value())?, k.value().to_string()));
    }
    for key in rows::excess_tombstones(all) {
        t.remove(key.as_str())?;
    }
    Ok(())
}

/// The registry of the first layout, as it was encoded.
#[derive(serde::Deserialize)]
struct LegacyRegistry {
    weights: BTreeMap<Role, f64>,
    quotas: BTreeMap<Role, QuotaSpec>,
    reservations: BTreeMap<AgentId, BTreeMap<Role, Resources>>,
}

fn read_legacy(
    table: &redb::Table<&'static str, &'static [u8]>,
) -> anyhow::Result<(Registry, Option<[u8; 32]>)> {
    let mut registry = Registry::default();
    if let Some(bytes) = table.get("registry")? {
        let old: LegacyRegistry = decode(bytes.value())?;
        registry.weights = old.weights;
        registry.quotas = old.quotas;
        registry.reservations = old.reservations;
    }
    if let Some(bytes) = table.get("hosted")? {
        let hosted: BTreeMap<FrameworkId, HostedRecord> = decode(bytes.value())?;
        registry.hosted = hosted;
    }
    let secret = table
        .get(SECRET_KEY)?
        .and_then(|v| <[u8; 32]>::try_from(v.value()).ok());
    Ok((registry, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_the_first_layout_is_moved_with_its_secret() -> anyhow::Result<()> {
        #[derive(serde::Serialize)]
        struct Old {
            weights: BTreeMap<Role, f64>,
            quotas: BTreeMap<Role, QuotaSpec>,
            reservations: BTreeMap<AgentId, BTreeMap<Role, Resources>>,
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.redb");
        {
            let db = Database::create(&path)?;
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(LEGACY)?;
                let old = Old {
                    weights: BTreeMap::from([("eng".parse()?, 3.0)]),
                    quotas: BTreeMap::new(),
                    reservations: BTreeMap::new(),
                };
                t.insert("registry", postcard::to_stdvec(&old)?.as_slice())?;
                t.insert(SECRET_KEY, [7u8; 32].as_slice())?;
            }
            txn.commit()?;
        }
        let store = FileStore::open(&path)?;
        assert_eq!(store.load()?.weights.get(&"eng".parse()?), Some(&3.0));
        assert_eq!(store.secret()?, [7u8; 32]);
        Ok(())
    }

    #[test]
    fn a_file_of_a_newer_layout_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.redb");
        {
            let db = Database::create(&path)?;
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert(VERSION_KEY, (SCHEMA_VERSION + 1).to_le_bytes().as_slice())?;
            txn.commit()?;
        }
        let e = FileStore::open(&path).expect_err("refused");
        assert!(format!("{e:#}").contains("newer Stoa"), "{e:#}");
        Ok(())
    }
}
