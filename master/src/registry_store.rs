//! The registry on disk: one redb file with a table per kind of entity
//! (weights, quotas, reservations, hosted frameworks, agents, removed
//! agents, frameworks, torn-down frameworks), each row one entity encoded
//! with postcard, and a `meta` table with the schema version and the
//! master's secret. A batch of writes is one transaction, so a crash
//! leaves either the old or the new state, never a torn one.
//!
//! Files of the first layout (the whole registry as one value) are read
//! and rewritten in this layout when opened.

use anyhow::{Context as _, bail};
use rand_core::TryRngCore as _;
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;
use stoa_master_core::registry::{HostedRecord, QuotaSpec, Registry, SCHEMA_VERSION, Write};
use stoa_proto::{AgentId, FrameworkId, Resources, Role};

/// Rows keyed by an entity's id, as text.
type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const META: Table = TableDefinition::new("meta");
const WEIGHTS: Table = TableDefinition::new("weights");
const QUOTAS: Table = TableDefinition::new("quotas");
const RESERVATIONS: Table = TableDefinition::new("reservations");
const HOSTED: Table = TableDefinition::new("hosted");
const AGENTS: Table = TableDefinition::new("agents");
const REMOVED_AGENTS: Table = TableDefinition::new("removed_agents");
const FRAMEWORKS: Table = TableDefinition::new("frameworks");
const TORN_DOWN: Table = TableDefinition::new("torn_down");

const VERSION_KEY: &str = "schema_version";
const SECRET_KEY: &str = "secret";

/// The first layout: one table, the registry under one key.
const LEGACY: Table = TableDefinition::new("registry");

const CORRUPT: &str =
    "the registry file is corrupt; restore it from a backup or move it away to start empty";

#[derive(Debug)]
pub struct RegistryStore {
    db: Database,
}

impl RegistryStore {
    /// Opens (or creates) the registry file, moving a file of the first
    /// layout to this one.
    pub fn open(path: &Path) -> anyhow::Result<RegistryStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("cannot open the registry {}", path.display()))?;
        let store = RegistryStore { db };
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
        let legacy = match txn.open_table(LEGACY) {
            Ok(table) => Some(read_legacy(&table)?),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some((registry, secret)) = legacy {
            tracing::info!("moving the registry to layout {SCHEMA_VERSION}");
            write_all(&txn, &registry)?;
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
        let open = |def: Table| match txn.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        macro_rules! load {
            ($def:expr, $field:expr) => {
                if let Some(table) = open($def)? {
                    for row in table.iter()? {
                        let (k, v) = row?;
                        let key = k.value().parse().context(CORRUPT)?;
                        $field.insert(key, decode(v.value())?);
                    }
                }
            };
        }
        load!(WEIGHTS, r.weights);
        load!(QUOTAS, r.quotas);
        load!(RESERVATIONS, r.reservations);
        load!(HOSTED, r.hosted);
        load!(AGENTS, r.agents);
        load!(REMOVED_AGENTS, r.removed_agents);
        load!(FRAMEWORKS, r.frameworks);
        load!(TORN_DOWN, r.torn_down);
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
        for w in writes {
            apply_one(&txn, w)?;
        }
        txn.commit()?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    postcard::from_bytes(bytes).context(CORRUPT)
}

fn put<T: Serialize>(
    txn: &redb::WriteTransaction,
    def: Table,
    key: &str,
    value: Option<&T>,
) -> anyhow::Result<()> {
    let mut table = txn.open_table(def)?;
    match value {
        Some(v) => {
            table.insert(key, postcard::to_stdvec(v)?.as_slice())?;
        }
        None => {
            table.remove(key)?;
        }
    }
    Ok(())
}

fn apply_one(txn: &redb::WriteTransaction, w: &Write) -> anyhow::Result<()> {
    match w {
        Write::Weight(role, weight) => put(txn, WEIGHTS, role.as_str(), weight.as_ref()),
        Write::Quota(role, spec) => put(txn, QUOTAS, role.as_str(), spec.as_ref()),
        Write::Reservations(agent, r) => put(
            txn,
            RESERVATIONS,
            agent.as_str(),
            (!r.is_empty()).then_some(r),
        ),
        Write::Hosted(fw, h) => put(txn, HOSTED, fw.as_str(), h.as_deref()),
        Write::Agent(agent, info) => put(txn, AGENTS, agent.as_str(), info.as_deref()),
        Write::AgentRemoved(agent, seq) => {
            put::<()>(txn, AGENTS, agent.as_str(), None)?;
            put::<()>(txn, RESERVATIONS, agent.as_str(), None)?;
            put(txn, REMOVED_AGENTS, agent.as_str(), Some(seq))?;
            trim(txn, REMOVED_AGENTS)
        }
        Write::Framework(fw, info) => put(txn, FRAMEWORKS, fw.as_str(), info.as_deref()),
        Write::TornDown(fw, seq) => {
            put::<()>(txn, FRAMEWORKS, fw.as_str(), None)?;
            put::<()>(txn, HOSTED, fw.as_str(), None)?;
            put(txn, TORN_DOWN, fw.as_str(), Some(seq))?;
            trim(txn, TORN_DOWN)
        }
    }
}

/// Keeps the newest tombstones, as [`Registry::apply`] does.
fn trim(txn: &redb::WriteTransaction, def: Table) -> anyhow::Result<()> {
    let mut table = txn.open_table(def)?;
    let excess = (table.len()? as usize).saturating_sub(stoa_master_core::registry::MAX_TOMBSTONES);
    if excess == 0 {
        return Ok(());
    }
    let mut rows: Vec<(u64, String)> = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        rows.push((decode(v.value())?, k.value().to_string()));
    }
    rows.sort();
    for (_, key) in rows.into_iter().take(excess) {
        table.remove(key.as_str())?;
    }
    Ok(())
}

/// Writes a whole registry (moving a file of the first layout).
fn write_all(txn: &redb::WriteTransaction, r: &Registry) -> anyhow::Result<()> {
    let writes = r
        .weights
        .iter()
        .map(|(k, v)| Write::Weight(k.clone(), Some(*v)))
        .chain(
            r.quotas
                .iter()
                .map(|(k, v)| Write::Quota(k.clone(), Some(v.clone()))),
        )
        .chain(
            r.reservations
                .iter()
                .map(|(k, v)| Write::Reservations(k.clone(), v.clone())),
        )
        .chain(
            r.hosted
                .iter()
                .map(|(k, v)| Write::Hosted(k.clone(), Some(Box::new(v.clone())))),
        );
    for w in writes {
        apply_one(txn, &w)?;
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

    fn fw(id: &str, role: &str) -> stoa_proto::FrameworkInfo {
        let mut info = stoa_proto::FrameworkInfo::new("svc", role.parse().expect("role"));
        info.id = Some(id.parse().expect("id"));
        info.principal = Some("alice".into());
        info.failover_timeout_ms = 60_000;
        info
    }

    #[test]
    fn every_kind_of_write_survives_reopening_as_the_core_applies_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.redb");
        let agent: AgentId = "a1".parse()?;
        let info = stoa_proto::AgentInfo {
            hostname: "h".into(),
            resources: "cpus:2;mem:64".parse()?,
            attributes: Default::default(),
            reservations: Vec::new(),
        };
        let writes = vec![
            Write::Weight("eng".parse()?, Some(2.5)),
            Write::Quota(
                "eng".parse()?,
                Some(QuotaSpec {
                    guarantee: "cpus:1".parse()?,
                    limit: Some("cpus:4".into()),
                }),
            ),
            Write::Reservations(
                agent.clone(),
                BTreeMap::from([("eng".parse()?, "cpus:1".parse()?)]),
            ),
            Write::Agent(agent.clone(), Some(Box::new(info.clone()))),
            Write::Agent("a2".parse()?, Some(Box::new(info))),
            Write::AgentRemoved("a2".parse()?, 1),
            Write::Framework("f1".parse()?, Some(Box::new(fw("f1", "eng")))),
            Write::Framework("f2".parse()?, Some(Box::new(fw("f2", "ops")))),
            Write::TornDown("f2".parse()?, 2),
            Write::Weight("ops".parse()?, Some(1.0)),
            Write::Weight("ops".parse()?, None),
        ];
        let mut expected = Registry::default();
        for w in &writes {
            expected.apply(w);
        }
        {
            let store = RegistryStore::open(&path)?;
            assert_eq!(store.load()?, Registry::default());
            store.apply(&writes[..4])?;
            store.apply(&writes[4..])?;
        }
        let loaded = RegistryStore::open(&path)?.load()?;
        assert_eq!(loaded, expected);
        assert_eq!(loaded.frameworks.len(), 1);
        assert_eq!(loaded.torn_down.len(), 1);
        assert_eq!(loaded.removed_agents.len(), 1);
        assert_eq!(loaded.agents.len(), 1);
        Ok(())
    }

    #[test]
    fn a_file_of_the_first_layout_is_moved_with_its_secret() -> anyhow::Result<()> {
        #[derive(Serialize)]
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
        let store = RegistryStore::open(&path)?;
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
        let e = RegistryStore::open(&path).expect_err("refused");
        assert!(format!("{e:#}").contains("newer Stoa"), "{e:#}");
        Ok(())
    }
}
