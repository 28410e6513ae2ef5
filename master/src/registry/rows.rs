//! The registry as rows, the form both stores keep it in: a table per
//! kind of entity, each row an entity's id (as text) and its postcard
//! encoding. One `Write` of the core becomes a few rows set or removed;
//! loading reads every row back into a [`Registry`].

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use stoa_master_core::registry::{Registry, Write};

pub(crate) const CORRUPT: &str =
    "the registry is corrupt; restore it from a backup or move it away to start empty";

/// The kinds of entity, each a table of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    Weights,
    Quotas,
    Reservations,
    Hosted,
    Agents,
    RemovedAgents,
    Frameworks,
    TornDown,
    AgentPrincipals,
    Revoked,
}

impl Table {
    pub(crate) const ALL: [Table; 10] = [
        Table::Weights,
        Table::Quotas,
        Table::Reservations,
        Table::Hosted,
        Table::Agents,
        Table::RemovedAgents,
        Table::Frameworks,
        Table::TornDown,
        Table::AgentPrincipals,
        Table::Revoked,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Weights => "weights",
            Table::Quotas => "quotas",
            Table::Reservations => "reservations",
            Table::Hosted => "hosted",
            Table::Agents => "agents",
            Table::RemovedAgents => "removed_agents",
            Table::Frameworks => "frameworks",
            Table::TornDown => "torn_down",
            Table::AgentPrincipals => "agent_principals",
            Table::Revoked => "revoked",
        }
    }

    /// Tables of tombstones (a sequence number per row), of which only the
    /// newest [`MAX_TOMBSTONES`](stoa_master_core::registry::MAX_TOMBSTONES)
    /// are kept, as [`Registry::apply`] keeps them.
    pub(crate) fn is_tombstones(self) -> bool {
        matches!(self, Table::RemovedAgents | Table::TornDown)
    }
}

/// One row set (`value` is some) or removed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) table: Table,
    pub(crate) key: String,
    pub(crate) value: Option<Vec<u8>>,
}

fn row<T: Serialize>(table: Table, key: &str, value: Option<&T>) -> anyhow::Result<Row> {
    Ok(Row {
        table,
        key: key.to_string(),
        value: value.map(postcard::to_stdvec).transpose()?,
    })
}

/// The rows one write sets or removes, in order.
pub(crate) fn rows(w: &Write) -> anyhow::Result<Vec<Row>> {
    let gone = |table, key: &str| row::<()>(table, key, None);
    Ok(match w {
        Write::Weight(role, weight) => vec![row(Table::Weights, role.as_str(), weight.as_ref())?],
        Write::Quota(role, spec) => vec![row(Table::Quotas, role.as_str(), spec.as_ref())?],
        Write::Reservations(agent, r) => vec![row(
            Table::Reservations,
            agent.as_str(),
            (!r.is_empty()).then_some(r),
        )?],
        Write::Hosted(fw, h) => vec![row(Table::Hosted, fw.as_str(), h.as_deref())?],
        Write::Agent(agent, info) => vec![row(Table::Agents, agent.as_str(), info.as_deref())?],
        Write::AgentPrincipal(agent, principal) => vec![row(
            Table::AgentPrincipals,
            agent.as_str(),
            Some(principal),
        )?],
        Write::Revoked(key, at) => vec![row(Table::Revoked, key, Some(at))?],
        Write::AgentRemoved(agent, seq) => vec![
            gone(Table::Agents, agent.as_str())?,
            gone(Table::Reservations, agent.as_str())?,
            gone(Table::AgentPrincipals, agent.as_str())?,
            row(Table::RemovedAgents, agent.as_str(), Some(seq))?,
        ],
        Write::Framework(fw, info) => vec![row(Table::Frameworks, fw.as_str(), info.as_deref())?],
        Write::TornDown(fw, seq) => vec![
            gone(Table::Frameworks, fw.as_str())?,
            gone(Table::Hosted, fw.as_str())?,
            row(Table::TornDown, fw.as_str(), Some(seq))?,
        ],
    })
}

/// The rows that make up `registry` (moving a store to a new layout).
pub(crate) fn all_rows(r: &Registry) -> anyhow::Result<Vec<Row>> {
    let mut out = Vec::new();
    for (k, v) in &r.weights {
        out.push(row(Table::Weights, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.quotas {
        out.push(row(Table::Quotas, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.reservations {
        out.push(row(Table::Reservations, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.hosted {
        out.push(row(Table::Hosted, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.agents {
        out.push(row(Table::Agents, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.removed_agents {
        out.push(row(Table::RemovedAgents, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.frameworks {
        out.push(row(Table::Frameworks, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.agent_principals {
        out.push(row(Table::AgentPrincipals, k.as_str(), Some(v))?);
    }
    for (k, v) in &r.revoked {
        out.push(row(Table::Revoked, k, Some(v))?);
    }
    for (k, v) in &r.torn_down {
        out.push(row(Table::TornDown, k.as_str(), Some(v))?);
    }
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    postcard::from_bytes(bytes).context(CORRUPT)
}

/// Reads one stored row into `r`.
pub(crate) fn load_row(
    r: &mut Registry,
    table: Table,
    key: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    macro_rules! put {
        ($field:expr) => {{
            let id = key
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .context(CORRUPT)?;
            $field.insert(id, decode(bytes)?);
        }};
    }
    match table {
        Table::Weights => put!(r.weights),
        Table::Quotas => put!(r.quotas),
        Table::Reservations => put!(r.reservations),
        Table::Hosted => put!(r.hosted),
        Table::Agents => put!(r.agents),
        Table::RemovedAgents => put!(r.removed_agents),
        Table::Frameworks => put!(r.frameworks),
        Table::TornDown => put!(r.torn_down),
        Table::AgentPrincipals => put!(r.agent_principals),
        Table::Revoked => {
            r.revoked.insert(key.to_string(), decode(bytes)?);
        }
    }
    Ok(())
}

/// Of a tombstone table's rows (key, sequence), those to remove so that
/// only the newest `MAX_TOMBSTONES` stay.
pub(crate) fn excess_tombstones(mut rows: Vec<(u64, String)>) -> Vec<String> {
    let excess = rows
        .len()
        .saturating_sub(stoa_master_core::registry::MAX_TOMBSTONES);
    rows.sort();
    rows.into_iter().take(excess).map(|(_, k)| k).collect()
}
