//! The registry in etcd, shared by several masters, and the election of
//! the one that leads.
//!
//! Rows live under `<prefix>/<table>/<id>` (the layout of
//! [`rows`](super::rows)), the schema version and the masters' secret under
//! `<prefix>/meta/`, and the election at `<prefix>/leader`. A master
//! campaigns with a lease it keeps alive; the one elected writes, each
//! batch in transactions that hold only while its leader key still exists
//! with the revision it won with. A deposed leader's writes therefore fail
//! (fencing), whatever it believes.

use super::rows::{self, CORRUPT, Row, Table, decode};
use anyhow::{Context as _, bail};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper, Txn,
    TxnOp,
};
use rand_core::TryRngCore as _;
use std::net::SocketAddr;
use std::time::Duration;
use stoa_master_core::registry::{Registry, SCHEMA_VERSION, Write};

/// etcd refuses a transaction of more operations than this by default
/// (`--max-txn-ops`); larger batches go in several. Each row stands for
/// one entity, so a batch cut short leaves every entity whole.
const MAX_TXN_OPS: usize = 128;

/// Where the registry is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSpec {
    /// `host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// Keys start with this (no trailing `/`).
    pub prefix: String,
}

/// Timing of the leader's lease and of each call to etcd.
#[derive(Debug, Clone, Copy)]
pub struct EtcdTimings {
    /// A leader that has not renewed its lease for this long is deposed.
    /// etcd raises a shorter one to 1.5 times its election timeout.
    pub lease_ttl: Duration,
    /// How long one call to etcd may take.
    pub request_timeout: Duration,
}

impl Default for EtcdTimings {
    fn default() -> Self {
        EtcdTimings {
            lease_ttl: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        }
    }
}

/// What a leader holds: its lease and the key it won the election with.
#[derive(Debug, Clone)]
pub struct Leadership {
    lease: i64,
    key: Vec<u8>,
    revision: i64,
}

#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    timings: EtcdTimings,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and checks the layout (refusing one written by a newer
    /// Stoa; stamping a new registry).
    pub async fn open(spec: &EtcdSpec, timings: EtcdTimings) -> anyhow::Result<EtcdStore> {
        // No timeout for every request: a campaign waits as long as
        // another master leads. Each other call is timed on its own.
        // Keep-alive pings no more often than etcd allows by default
        // (`--grpc-keepalive-min-time`, 5 s): more often, etcd closes the
        // connection, and a campaign waiting on it with it.
        let options = ConnectOptions::new()
            .with_connect_timeout(timings.request_timeout)
            .with_keep_alive(Duration::from_secs(5), timings.request_timeout)
            .with_keep_alive_while_idle(true);
        let endpoints = spec.endpoints.join(",");
        let client = Client::connect(&spec.endpoints, Some(options))
            .await
            .with_context(|| format!("cannot reach etcd at {endpoints}; is it running?"))?;
        let store = EtcdStore {
            client,
            prefix: spec.prefix.clone(),
            timings,
        };
        store
            .check_version()
            .await
            .with_context(|| format!("cannot read the registry from etcd at {endpoints}"))?;
        Ok(store)
    }

    fn meta(&self, name: &str) -> String {
        format!("{}/meta/{name}", self.prefix)
    }

    fn table_prefix(&self, table: Table) -> String {
        format!("{}/{}/", self.prefix, table.name())
    }

    fn election(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    async fn check_version(&self) -> anyhow::Result<()> {
        let key = self.meta("schema_version");
        let stamp = SCHEMA_VERSION.to_le_bytes().to_vec();
        // Stamped only if absent, in one step, so two masters starting on
        // an empty registry agree.
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), stamp, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self.timed(self.client.kv_client().txn(txn)).await?;
        if response.succeeded() {
            return Ok(());
        }
        let stored = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => {
                    get.kvs().first().map(|kv| kv.value().to_vec())
                }
                _ => None,
            })
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(u32::from_le_bytes)
            .context(CORRUPT)?;
        if stored > SCHEMA_VERSION {
            bail!(
                "the registry was written by a newer Stoa (layout {stored}; this one reads up to {SCHEMA_VERSION}); run that version or start from a backup"
            );
        }
        Ok(())
    }

    /// Everything stored.
    pub async fn load(&self) -> anyhow::Result<Registry> {
        let mut r = Registry::default();
        for table in Table::ALL {
            for (id, value) in self.table(table).await? {
                rows::load_row(&mut r, table, &id, &value)?;
            }
        }
        Ok(r)
    }

    /// Every row of `table`: each entity's id and its encoding.
    async fn table(&self, table: Table) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let prefix = self.table_prefix(table);
        let all = self
            .timed(
                self.client
                    .kv_client()
                    .get(prefix.clone(), Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut rows = Vec::new();
        for kv in all.kvs() {
            let key = kv.key_str().context(CORRUPT)?;
            let id = key.strip_prefix(&prefix).context(CORRUPT)?;
            rows.push((id.to_string(), kv.value().to_vec()));
        }
        Ok(rows)
    }

    /// The masters' secret (the key of hosted schedulers' tokens and of
    /// stateless resets): made by the first master, shared by all.
    pub async fn secret(&self) -> anyhow::Result<[u8; 32]> {
        let key = self.meta("secret");
        let mut fresh = [0u8; 32];
        rand_core::OsRng
            .try_fill_bytes(&mut fresh)
            .context("cannot read random bytes for the masters' secret")?;
        let txn = Txn::new()
            .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), fresh.to_vec(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = self.timed(self.client.kv_client().txn(txn)).await?;
        if response.succeeded() {
            return Ok(fresh);
        }
        response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(get) => get
                    .kvs()
                    .first()
                    .and_then(|kv| <[u8; 32]>::try_from(kv.value()).ok()),
                _ => None,
            })
            .context(CORRUPT)
    }

    /// Applies `writes` as the leader `leader`: refused, with
    /// [`Deposed`], once another master leads.
    pub async fn apply(&self, leader: &Leadership, writes: &[Write]) -> anyhow::Result<()> {
        let mut rows = Vec::new();
        for w in writes {
            rows.extend(rows::rows(w)?);
        }
        let tombstones: std::collections::BTreeSet<Table> = rows
            .iter()
            .map(|row| row.table)
            .filter(|t| t.is_tombstones())
            .collect();
        // etcd refuses a transaction that names a key twice; the last row
        // of each key is the one that stands.
        let mut last = std::collections::HashMap::new();
        for (i, row) in rows.iter().enumerate() {
            last.insert((row.table, row.key.clone()), i);
        }
        let ops: Vec<TxnOp> = rows
            .into_iter()
            .enumerate()
            .filter(|(i, row)| last.get(&(row.table, row.key.clone())) == Some(i))
            .map(|(_, row)| self.op(row))
            .collect();
        self.fenced(leader, ops).await?;
        for table in tombstones {
            self.trim(leader, table).await?;
        }
        Ok(())
    }

    fn op(&self, row: Row) -> TxnOp {
        let key = format!("{}{}", self.table_prefix(row.table), row.key);
        match row.value {
            Some(v) => TxnOp::put(key, v, None),
            None => TxnOp::delete(key, None),
        }
    }

    /// Runs `ops` only while `leader` still holds its election key.
    async fn fenced(&self, leader: &Leadership, ops: Vec<TxnOp>) -> anyhow::Result<()> {
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    leader.key.clone(),
                    CompareOp::Equal,
                    leader.revision,
                )])
                .and_then(chunk.to_vec());
            let response = self.timed(self.client.kv_client().txn(txn)).await?;
            if !response.succeeded() {
                return Err(Deposed.into());
            }
        }
        Ok(())
    }

    /// Keeps the newest tombstones of `table`.
    async fn trim(&self, leader: &Leadership, table: Table) -> anyhow::Result<()> {
        let prefix = self.table_prefix(table);
        let count = self
            .timed(self.client.kv_client().get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ))
            .await?
            .count();
        if usize::try_from(count).unwrap_or(usize::MAX)
            <= stoa_master_core::registry::MAX_TOMBSTONES
        {
            return Ok(());
        }
        let mut rows = Vec::new();
        for (id, value) in self.table(table).await? {
            rows.push((decode::<u64>(&value)?, id));
        }
        let ops = rows::excess_tombstones(rows)
            .into_iter()
            .map(|id| TxnOp::delete(format!("{prefix}{id}"), None))
            .collect();
        self.fenced(leader, ops).await
    }

    /// Takes a lease and keeps it alive from now on, standing by as well
    /// as leading: a candidate's place in the election dies with its
    /// lease.
    pub async fn grant_lease(&self) -> anyhow::Result<Lease> {
        let ttl = i64::try_from(self.timings.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let id = self
            .timed(self.client.lease_client().grant(ttl, None))
            .await?
            .id();
        let (keeper, stream) = self
            .timed(self.client.lease_client().keep_alive(id))
            .await?;
        let (tx, lost) = tokio::sync::oneshot::channel();
        let timings = self.timings;
        let renewer = tokio::spawn(async move {
            let _ = tx.send(keep_alive(keeper, stream, timings).await);
        });
        Ok(Lease { id, lost, renewer })
    }

    /// Waits until this master is elected on `lease`, announcing
    /// `address` as where it serves.
    pub async fn campaign(&self, lease: i64, address: &str) -> anyhow::Result<Leadership> {
        let won = self
            .client
            .election_client()
            .campaign(self.election(), address, lease)
            .await?;
        let key = won.leader().context("etcd elected no leader key")?;
        Ok(Leadership {
            lease,
            key: key.key().to_vec(),
            revision: key.rev(),
        })
    }

    /// The address of the master that leads now, if any.
    pub async fn leader(&self) -> anyhow::Result<Option<String>> {
        match self
            .timed(self.client.election_client().leader(self.election()))
            .await
        {
            Ok(r) => Ok(r
                .kv()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_string)),
            // etcd answers "election: no leader" as an error.
            Err(e) if e.to_string().contains("no leader") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps `leader` naming the master that leads, as etcd proclaims
    /// each election; never returns. A key deleted with no successor yet
    /// leaves the last name (etcd tells of leaders, not of their end).
    pub async fn follow_leader(&self, leader: tokio::sync::watch::Sender<Option<SocketAddr>>) {
        let parse = |value: Option<&str>| value.and_then(|v| v.parse::<SocketAddr>().ok());
        loop {
            match self.leader().await {
                Ok(now) => {
                    leader.send_replace(parse(now.as_deref()));
                }
                Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot ask etcd who leads"),
            }
            match self.client.election_client().observe(self.election()).await {
                Ok(mut stream) => {
                    while let Ok(Some(news)) = stream.message().await {
                        let named = news.kv().and_then(|kv| kv.value_str().ok());
                        leader.send_replace(parse(named));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot follow etcd's elections"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Gives leadership up at once (a graceful stop): the standbys need
    /// not wait for the lease to run out.
    pub async fn resign(&self, leader: &Leadership) {
        if let Err(e) = self
            .timed(self.client.lease_client().revoke(leader.lease))
            .await
        {
            tracing::warn!(error = %e, "cannot revoke the leader's lease; the standbys take over when it runs out");
        }
    }

    pub fn timings(&self) -> EtcdTimings {
        self.timings
    }

    /// One call to etcd, given the request timeout.
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> anyhow::Result<T> {
        match tokio::time::timeout(self.timings.request_timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => bail!(
                "etcd did not answer within {:?}",
                self.timings.request_timeout
            ),
        }
    }
}

/// This master no longer leads: another was elected, or its lease ran out.
#[derive(Debug, thiserror::Error)]
#[error("this master is no longer the leader")]
pub struct Deposed;

/// A master's lease in etcd, renewed by a task of its own until it is
/// lost or dropped.
#[derive(Debug)]
pub struct Lease {
    id: i64,
    lost: tokio::sync::oneshot::Receiver<anyhow::Error>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Resolves when the lease is lost (it ran out or was revoked, or
    /// etcd could not be reached to renew it for most of its life). A
    /// leader must then stop serving at once.
    pub async fn lost(&mut self) -> anyhow::Error {
        match (&mut self.lost).await {
            Ok(why) => why,
            Err(_) => anyhow::anyhow!("the lease's renewal stopped"),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Renews the lease until it cannot; returns why.
async fn keep_alive(
    mut keeper: LeaseKeeper,
    mut stream: LeaseKeepAliveStream,
    timings: EtcdTimings,
) -> anyhow::Error {
    let ttl = timings.lease_ttl;
    // Stop before etcd can expire the lease: the last renewal counts from
    // when it was sent, and clocks drift.
    let margin = ttl / 4;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 4).await;
        let sent = tokio::time::Instant::now();
        let renewal = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(timings.request_timeout, renewal).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => renewed = sent,
            Ok(Ok(Some(_))) => return anyhow::anyhow!("the master's lease expired"),
            Ok(Ok(None)) => return anyhow::anyhow!("etcd closed the lease's keep-alive stream"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the master's lease"),
            Err(_) => tracing::warn!("renewing the master's lease timed out"),
        }
        if renewed.elapsed() + margin >= ttl {
            return anyhow::anyhow!(
                "could not renew the master's lease for {:?}",
                renewed.elapsed()
            );
        }
    }
}
