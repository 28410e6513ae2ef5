//! Partitions over a real network: the agent in a network namespace of
//! its own, its veth link cut and healed. Needs root (`ip netns`), as the
//! suite has.

use std::time::{Duration, Instant};
use stoa_proto::{Artifact, FrameworkInfo, Reason, TaskState};
use stoa_tests::netns::PartitionedCluster;
use stoa_tests::{TestFramework, misbehave_wasm, sleeper};

/// The next update of `sleeper-0` in one of `states`, within `limit`.
async fn until(
    fw: &mut TestFramework,
    states: &[TaskState],
    limit: Duration,
) -> anyhow::Result<stoa_proto::TaskStatus> {
    let give_up = Instant::now() + limit;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        let status = tokio::time::timeout(left, fw.next_update())
            .await
            .map_err(|_| anyhow::anyhow!("no update in {states:?} within {limit:?}"))??;
        if states.contains(&status.state) {
            return Ok(status);
        }
    }
}

/// Cut for a few seconds: the task is UNREACHABLE, then RUNNING again on
/// heal. Cut past the removal timeout: GONE (`agent-removed`), and the
/// agent, healed, registers anew.
#[test]
fn a_cut_agent_is_unreachable_then_back_and_past_the_removal_timeout_gone() -> anyhow::Result<()> {
    let cluster = PartitionedCluster::start("cpus:1;mem:512", &["--agent-removal-timeout", "8"])?;
    let first_id = std::fs::read_to_string(cluster.dir.path().join("agent-1/agent_id"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let outcome = rt.block_on(async {
        let digest = stoa_client::upload_artifact(&cluster.client(), &misbehave_wasm()?).await?;
        let info = FrameworkInfo::new("partitioned", "test".parse()?);
        let mut fw = TestFramework::subscribe_as(&cluster.client(), info).await?;
        fw.launch_all(vec![sleeper(0, &Artifact::Stored(digest), 60_000)])
            .await?;
        fw.wait_for("sleeper-0", TaskState::Running).await?;

        cluster.net.cut()?;
        let cut = Instant::now();
        until(&mut fw, &[TaskState::Unreachable], Duration::from_secs(10)).await?;
        eprintln!("unreachable {:?} after the cut", cut.elapsed());
        cluster.net.heal()?;
        until(&mut fw, &[TaskState::Running], Duration::from_secs(15)).await?;

        cluster.net.cut()?;
        let cut = Instant::now();
        until(&mut fw, &[TaskState::Unreachable], Duration::from_secs(10)).await?;
        let gone = until(&mut fw, &[TaskState::Gone], Duration::from_secs(20)).await?;
        eprintln!("gone {:?} after the cut", cut.elapsed());
        assert_eq!(gone.reason, Some(Reason::AgentRemoved), "{gone:?}");
        cluster.net.heal()?;
        anyhow::Ok(())
    });
    outcome.map_err(|e| e.context(cluster.logs()))?;
    // Healed, the removed agent kills what it held and registers anew.
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let id = std::fs::read_to_string(cluster.dir.path().join("agent-1/agent_id"))?;
        if id != first_id {
            break;
        }
        if Instant::now() > give_up {
            anyhow::bail!("the agent did not register anew:\n{}", cluster.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
