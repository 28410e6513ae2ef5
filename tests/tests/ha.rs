//! Several masters on a real etcd: one leads, the others stand by and say
//! who leads; when the leader dies (SIGKILL) or stops (SIGTERM, resigning)
//! another is elected, agents and schedulers find it from their list of
//! masters, and no task or acknowledged update is lost.

use std::time::{Duration, Instant};
use stoa_proto::{Artifact, FrameworkInfo, TaskState};
use stoa_tests::{HaCluster, TestFramework, misbehave_wasm, sleeper};

const TASKS: usize = 8;

#[test]
fn a_killed_leader_is_replaced_and_nothing_is_lost() -> anyhow::Result<()> {
    let mut cluster = HaCluster::start(3, 1, "cpus:2;mem:1024")?;
    let rt = tokio::runtime::Runtime::new()?;
    let first = cluster.leader()?;
    let mut info = FrameworkInfo::new("ha-survivor", "test".parse()?);
    info.failover_timeout_ms = 60_000;
    let id = rt.block_on(async {
        let digest = stoa_client::upload_artifact(&cluster.client(), &misbehave_wasm()?).await?;
        let artifact = Artifact::Stored(digest);
        let mut fw = TestFramework::subscribe_as(&cluster.client(), info.clone()).await?;
        fw.launch_all((0..TASKS).map(|i| sleeper(i, &artifact, 6_000)).collect())
            .await?;
        for i in 0..TASKS {
            fw.wait_for(&format!("sleeper-{i}"), TaskState::Running)
                .await?;
        }
        anyhow::Ok(fw.id().clone())
    });
    let id = id.map_err(|e| e.context(cluster.logs()))?;

    cluster.kill_master(first)?;
    let killed = Instant::now();
    info.id = Some(id.clone());
    let ends = rt.block_on(async {
        let mut fw = TestFramework::resubscribe(&cluster.client(), &info).await?;
        eprintln!(
            "subscribed to the new leader {:?} after the kill",
            killed.elapsed()
        );
        assert_eq!(fw.id(), &id, "the framework keeps its id");
        fw.ends_until_finished(TASKS).await
    });
    let ends = ends.map_err(|e| e.context(cluster.logs()))?;
    let second = cluster.leader()?;
    assert_ne!(second, first, "another master leads");
    for (task, states) in &ends {
        assert_eq!(
            states,
            &[TaskState::Finished],
            "{task} ended more than once or not as it did; logs:\n{}",
            cluster.logs()
        );
    }
    assert_eq!(ends.len(), TASKS);
    Ok(())
}

#[test]
fn a_standby_names_the_leader_and_a_resigning_leader_hands_over_at_once() -> anyhow::Result<()> {
    let mut cluster = HaCluster::start(3, 1, "cpus:1;mem:256")?;
    let rt = tokio::runtime::Runtime::new()?;
    let leader = cluster.leader()?;
    let standby = (leader + 1) % cluster.addrs.len();
    // Straight to a standby: refused in the handshake, naming the leader.
    let said = rt.block_on(async {
        let identity = stoa_transport::Identity::load(&cluster.certs, "client")?;
        let tls = stoa_transport::client_config(&identity, stoa_transport::ALPN_SCHEDULER)?;
        let endpoint = stoa_transport::client_endpoint(cluster.addrs[standby])?;
        let e = stoa_transport::connect(&endpoint, cluster.addrs[standby], tls)
            .await
            .expect_err("a standby does not serve");
        anyhow::Ok(e)
    })?;
    let not_leader = said
        .downcast_ref::<stoa_transport::NotLeader>()
        .unwrap_or_else(|| panic!("{said:#}"));
    assert_eq!(not_leader.leader, Some(cluster.addrs[leader]));

    // A graceful stop revokes the lease: a standby is elected without
    // waiting for it to run out.
    let stopped = Instant::now();
    cluster.stop_master(leader)?;
    let next = cluster.leader()?;
    let handover = stopped.elapsed();
    assert_ne!(next, leader);
    assert!(
        handover < Duration::from_millis(1_500),
        "elected {handover:?} after the stop (the lease is 2 s)"
    );
    // The stopped master comes back as a standby.
    cluster.restart_master(leader)?;
    assert_eq!(cluster.leader()?, next, "the old leader stands by");
    let fw = rt.block_on(async {
        let info = FrameworkInfo::new("after-handover", "test".parse()?);
        TestFramework::subscribe_as(&cluster.client(), info).await
    });
    fw.map_err(|e| e.context(cluster.logs()))?;
    Ok(())
}
