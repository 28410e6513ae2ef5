//! Faults over real processes: a master killed and restarted under running
//! tasks. The same holes have scenario tests on the master core
//! (`master/core/src/tests/faults.rs`) and seeds in the simulator's sweep.

use std::time::Duration;
use stoa_proto::{Artifact, FrameworkInfo, TaskState};
use stoa_tests::{Cluster, TestFramework, misbehave_wasm, sleeper};

const TASKS: usize = 12;

/// Tasks sleeping 5 s; the master is killed while they run and comes back
/// 2 s later. The scheduler subscribes again with its id and must hear
/// every task finish, once, none LOST: before the registry kept
/// frameworks, the restarted master acknowledged the FINISHED updates of a
/// framework it did not know and the scheduler waited forever.
#[test]
fn every_update_reaches_its_scheduler_across_a_master_crash() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1, "cpus:2;mem:1024")?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut info = FrameworkInfo::new("crash-survivor", "test".parse()?);
    info.failover_timeout_ms = 60_000;
    let id = rt.block_on(async {
        // Stored once and fetched once by the agent: twelve inline copies
        // of a 2.6 MB component would keep the agent's loop busy for
        // seconds on a loaded machine, long enough to miss heartbeats.
        let digest = stoa_client::upload_artifact(&cluster.client(), &misbehave_wasm()?).await?;
        let artifact = Artifact::Stored(digest);
        let mut fw = TestFramework::subscribe_as(&cluster.client(), info.clone()).await?;
        fw.launch_all((0..TASKS).map(|i| sleeper(i, &artifact, 5_000)).collect())
            .await?;
        for i in 0..TASKS {
            fw.wait_for(&format!("sleeper-{i}"), TaskState::Running)
                .await?;
        }
        // The scheduler goes away meanwhile; its framework's failover
        // timeout keeps its tasks.
        anyhow::Ok(fw.id().clone())
    });
    let id = id.map_err(|e| anyhow::anyhow!("{e:#}; logs:\n{}", cluster.logs()))?;
    cluster.crash_master_in_place(Duration::from_secs(2))?;

    info.id = Some(id.clone());
    let ends = rt.block_on(async {
        // The new master may not be listening yet.
        let mut fw = TestFramework::resubscribe(&cluster.client(), &info).await?;
        assert_eq!(fw.id(), &id, "the framework keeps its id");
        fw.ends_until_finished(TASKS).await
    });
    let ends = ends.map_err(|e| anyhow::anyhow!("{e:#}; logs:\n{}", cluster.logs()))?;
    for (task, states) in &ends {
        assert!(
            states.iter().all(|s| *s == TaskState::Finished),
            "{task} ended {states:?}; master log:\n{}",
            cluster.logs()
        );
    }
    assert_eq!(ends.len(), TASKS);
    Ok(())
}
