//! Where the master's registry lives: a redb file for a single master
//! (`file:PATH`, the default), or etcd for several masters of which one
//! leads (`etcd://HOST:PORT[,HOST:PORT…][/PREFIX]`). Both keep the same
//! rows ([`rows`]) and pass the same tests.

pub mod etcd;
pub mod file;
pub(crate) mod rows;

use etcd::{EtcdSpec, EtcdStore, Leadership};
use file::FileStore;
use std::path::PathBuf;
use stoa_master_core::registry::{Registry, Write};

/// The `--registry` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrySpec {
    File(PathBuf),
    Etcd(EtcdSpec),
}

impl std::str::FromStr for RegistrySpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: needs a path, e.g. file:/var/lib/stoa/registry.redb".into());
            }
            return Ok(RegistrySpec::File(path.into()));
        }
        let Some(rest) = s.strip_prefix("etcd://") else {
            if s.contains("://") || s.is_empty() {
                return Err(format!(
                    "{s:?} is not a registry: give file:PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
                ));
            }
            // A bare path is a file, as before there was a choice.
            return Ok(RegistrySpec::File(s.into()));
        };
        let (hosts, prefix) = match rest.split_once('/') {
            Some((hosts, prefix)) => (hosts, prefix.trim_end_matches('/')),
            None => (rest, ""),
        };
        let prefix = if prefix.is_empty() { "stoa" } else { prefix };
        let endpoints: Vec<String> = hosts.split(',').map(str::to_string).collect();
        for e in &endpoints {
            let port = e.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(format!(
                    "etcd endpoint {e:?} needs HOST:PORT, e.g. etcd://10.0.0.5:2379"
                ));
            }
        }
        Ok(RegistrySpec::Etcd(EtcdSpec {
            endpoints,
            prefix: format!("/{}", prefix.trim_start_matches('/')),
        }))
    }
}

impl std::fmt::Display for RegistrySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistrySpec::File(path) => write!(f, "file:{}", path.display()),
            RegistrySpec::Etcd(spec) => {
                write!(f, "etcd://{}{}", spec.endpoints.join(","), spec.prefix)
            }
        }
    }
}

/// The registry's store, of either kind.
#[derive(Debug)]
pub enum RegistryStore {
    File(FileStore),
    /// Boxed: etcd's client is large, and there is one store.
    Etcd(Box<EtcdStore>),
}

impl RegistryStore {
    pub async fn load(&self) -> anyhow::Result<Registry> {
        match self {
            RegistryStore::File(s) => s.load(),
            RegistryStore::Etcd(s) => s.load().await,
        }
    }

    pub async fn secret(&self) -> anyhow::Result<[u8; 32]> {
        match self {
            RegistryStore::File(s) => s.secret(),
            RegistryStore::Etcd(s) => s.secret().await,
        }
    }

    /// Persists `writes`, durably, before returning. On etcd only the
    /// leader `leader` may (a file has one master, which always leads).
    pub async fn apply(&self, leader: Option<&Leadership>, writes: &[Write]) -> anyhow::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        match (self, leader) {
            (RegistryStore::File(s), _) => s.apply(writes),
            (RegistryStore::Etcd(s), Some(leader)) => s.apply(leader, writes).await,
            (RegistryStore::Etcd(_), None) => Err(etcd::Deposed.into()),
        }
    }

    /// Gives up leading (a graceful stop): on etcd the lease is revoked,
    /// so a standby is elected at once rather than when it runs out.
    pub async fn resign(&self, leader: Option<&Leadership>) {
        if let (RegistryStore::Etcd(s), Some(leader)) = (self, leader) {
            s.resign(leader).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_server::EtcdServer;
    use std::collections::BTreeMap;
    use stoa_master_core::registry::QuotaSpec;
    use stoa_proto::AgentId;

    fn fw(id: &str, role: &str) -> stoa_proto::FrameworkInfo {
        let mut info = stoa_proto::FrameworkInfo::new("svc", role.parse().expect("role"));
        info.id = Some(id.parse().expect("id"));
        info.principal = Some("alice".into());
        info.failover_timeout_ms = 60_000;
        info
    }

    fn writes() -> anyhow::Result<Vec<Write>> {
        let agent: AgentId = "a1".parse()?;
        let info = stoa_proto::AgentInfo {
            hostname: "h".into(),
            resources: "cpus:2;mem:64".parse()?,
            attributes: Default::default(),
            reservations: Vec::new(),
        };
        Ok(vec![
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
        ])
    }

    /// The one test of a store: every kind of write, in two batches, read
    /// back by a store opened afresh as the core's own books have them;
    /// the secret made once and kept.
    async fn every_kind_of_write_survives_reopening(
        open: impl AsyncFn() -> anyhow::Result<(RegistryStore, Option<(etcd::Lease, Leadership)>)>,
    ) -> anyhow::Result<()> {
        let writes = writes()?;
        let mut expected = Registry::default();
        for w in &writes {
            expected.apply(w);
        }
        let secret = {
            let (store, term) = open().await?;
            let leader = term.as_ref().map(|(_, leader)| leader);
            assert_eq!(store.load().await?, Registry::default());
            store.apply(leader, &writes[..4]).await?;
            store.apply(leader, &writes[4..]).await?;
            let secret = store.secret().await?;
            store.resign(leader).await;
            secret
        };
        let (store, _) = open().await?;
        let loaded = store.load().await?;
        assert_eq!(loaded, expected);
        assert_eq!(loaded.frameworks.len(), 1);
        assert_eq!(loaded.torn_down.len(), 1);
        assert_eq!(loaded.removed_agents.len(), 1);
        assert_eq!(loaded.agents.len(), 1);
        assert_eq!(store.secret().await?, secret, "made once, kept");
        Ok(())
    }

    #[tokio::test]
    async fn a_file_keeps_every_kind_of_write() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.redb");
        every_kind_of_write_survives_reopening(async || {
            Ok((RegistryStore::File(FileStore::open(&path)?), None))
        })
        .await
    }

    #[tokio::test]
    async fn etcd_keeps_every_kind_of_write() -> anyhow::Result<()> {
        let etcd = EtcdServer::start()?;
        let spec = etcd.spec("/stoa-test");
        every_kind_of_write_survives_reopening(async || {
            let (store, lease, leader) = elected(&spec, "127.0.0.1:1").await?;
            Ok((RegistryStore::Etcd(Box::new(store)), Some((lease, leader))))
        })
        .await
    }

    /// A master on `spec`, elected as `address` (once no other leads).
    async fn elected(
        spec: &EtcdSpec,
        address: &str,
    ) -> anyhow::Result<(EtcdStore, etcd::Lease, Leadership)> {
        let store = EtcdStore::open(spec, etcd::EtcdTimings::default()).await?;
        let lease = store.grant_lease().await?;
        let leader = store.campaign(lease.id(), address).await?;
        Ok((store, lease, leader))
    }

    #[tokio::test]
    async fn a_deposed_leader_cannot_write() -> anyhow::Result<()> {
        let etcd = EtcdServer::start()?;
        let spec = etcd.spec("/stoa-test");
        let (first, _first_lease, old) = elected(&spec, "10.0.0.1:5050").await?;
        assert_eq!(first.leader().await?.as_deref(), Some("10.0.0.1:5050"));
        // The first leader's lease goes (as when it stops renewing it);
        // another master is elected.
        first.resign(&old).await;
        let (second, _second_lease, new) = elected(&spec, "10.0.0.2:5050").await?;
        assert_eq!(second.leader().await?.as_deref(), Some("10.0.0.2:5050"));
        let w = [Write::Weight("eng".parse()?, Some(3.0))];
        let refused = first.apply(&old, &w).await.expect_err("fenced");
        assert!(refused.is::<etcd::Deposed>(), "{refused:#}");
        second.apply(&new, &w).await?;
        assert_eq!(second.load().await?.weights.len(), 1);
        Ok(())
    }

    /// A standby waits in the election longer than its lease lives: its
    /// lease must be renewed while it waits, or it loses its place (and,
    /// once elected, finds its lease gone at once).
    #[tokio::test]
    async fn a_standby_keeps_its_place_for_longer_than_its_lease() -> anyhow::Result<()> {
        let etcd = EtcdServer::start()?;
        let spec = etcd.spec("/stoa-test");
        let timings = etcd::EtcdTimings::default();
        let (first, _first_lease, old) = elected(&spec, "10.0.0.1:5050").await?;
        let second = EtcdStore::open(&spec, timings).await?;
        let mut second_lease = second.grant_lease().await?;
        let waiting = tokio::spawn({
            let second = second.clone();
            let id = second_lease.id();
            async move { second.campaign(id, "10.0.0.2:5050").await }
        });
        tokio::time::sleep(timings.lease_ttl * 2).await;
        first.resign(&old).await;
        let new = tokio::select! {
            won = waiting => won??,
            why = second_lease.lost() => anyhow::bail!("the standby lost its lease: {why:#}"),
        };
        assert_eq!(second.leader().await?.as_deref(), Some("10.0.0.2:5050"));
        second
            .apply(&new, &[Write::Weight("eng".parse()?, Some(1.0))])
            .await?;
        Ok(())
    }

    #[test]
    fn registry_arguments_parse_or_say_what_is_expected() {
        let etcd = |s: &str| match s.parse::<RegistrySpec>() {
            Ok(RegistrySpec::Etcd(spec)) => (spec.endpoints, spec.prefix),
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(
            etcd("etcd://a:2379,b:2379/prod/stoa"),
            (vec!["a:2379".into(), "b:2379".into()], "/prod/stoa".into())
        );
        assert_eq!(etcd("etcd://a:2379").1, "/stoa");
        assert_eq!(
            "file:/x/r.redb".parse::<RegistrySpec>(),
            Ok(RegistrySpec::File("/x/r.redb".into()))
        );
        assert_eq!(
            "/x/r.redb".parse::<RegistrySpec>(),
            Ok(RegistrySpec::File("/x/r.redb".into())),
            "a bare path is a file"
        );
        for bad in ["etcd://a", "redis://a:1", "file:", ""] {
            let e = bad.parse::<RegistrySpec>().expect_err(bad);
            assert!(e.contains("e.g.") || e.contains("give"), "{bad}: {e}");
        }
    }
}
