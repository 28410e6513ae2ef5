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

/// The frameworks the leader knows, asked from this side of the link.
async fn frameworks(
    client: &stoa_client::ClientConfig,
) -> anyhow::Result<Vec<stoa_proto::operator::FrameworkStatus>> {
    use stoa_proto::operator::{OperatorCall, OperatorReply};
    match stoa_client::operator_call(client, &OperatorCall::GetFrameworks).await? {
        OperatorReply::Frameworks(all) => Ok(all),
        other => anyhow::bail!("unexpected reply {other:?}"),
    }
}

/// Polls the leader's frameworks until `ok` holds, within `limit`.
async fn frameworks_until(
    client: &stoa_client::ClientConfig,
    limit: Duration,
    what: &str,
    ok: impl Fn(&[stoa_proto::operator::FrameworkStatus]) -> bool,
) -> anyhow::Result<Vec<stoa_proto::operator::FrameworkStatus>> {
    let give_up = Instant::now() + limit;
    loop {
        if let Ok(all) = frameworks(client).await
            && ok(&all)
        {
            return Ok(all);
        }
        if Instant::now() > give_up {
            let now = frameworks(client).await;
            anyhow::bail!("not {what} within {limit:?}; the leader knows {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A scheduler in a network namespace of its own, cut off from the
/// leader; while it is cut off the leader is killed. Healed, it finds the
/// new leader and subscribes again as the same framework, whose tasks
/// ran on.
#[test]
fn a_scheduler_cut_off_from_the_leader_fails_over_to_the_same_framework() -> anyhow::Result<()> {
    let net = stoa_tests::netns::NetNs::create()?;
    let mut cluster = stoa_tests::HaCluster::start_on(&net.host_ip, 3, 1, "cpus:1;mem:512")?;
    let log = std::fs::File::create(cluster.dir.path().join("scheduler.log"))?;
    let mut scheduler = std::process::Command::new("ip")
        .args(["netns", "exec", &net.name])
        .arg(stoa_tests::stoa_bin()?)
        .args(["framework", "run"])
        .arg(stoa_tests::wasm_path(
            "service_scheduler",
            "service-scheduler",
        )?)
        .args(["--master", &cluster.masters_arg(), "--certs"])
        .arg(&cluster.certs)
        .arg("--artifact")
        .arg(format!(
            "task={}",
            stoa_tests::wasm_path("misbehave_task", "misbehave-task")?.display()
        ))
        .args(["--env", "SERVICE_INPUT=sleep:600000"])
        .args(["--env", "SERVICE_INSTANCES=2"])
        .args(["--failover-timeout", "120"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut client = cluster.client();
    client.identity = "operator".into();
    let running = |all: &[stoa_proto::operator::FrameworkStatus]| {
        all.len() == 1 && all[0].connected && all[0].tasks == 2
    };
    let outcome = (|| {
        let before = rt.block_on(frameworks_until(
            &client,
            Duration::from_secs(60),
            "running",
            running,
        ))?;
        let id = before[0].id.clone();

        net.cut()?;
        rt.block_on(frameworks_until(
            &client,
            Duration::from_secs(10),
            "disconnected",
            |all| all.iter().all(|f| !f.connected),
        ))?;
        let old = cluster.leader()?;
        cluster.kill_master(old)?;
        // etcd names the killed master until its lease runs out.
        let give_up = Instant::now() + Duration::from_secs(20);
        while cluster.leader()? == old {
            anyhow::ensure!(Instant::now() < give_up, "no new leader within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The new leader knows the framework from the registry; its
        // scheduler is still cut off.
        rt.block_on(frameworks_until(
            &client,
            Duration::from_secs(10),
            "known",
            |all| all.len() == 1 && all[0].id == id && !all[0].connected,
        ))?;

        net.heal()?;
        let healed = Instant::now();
        let after = rt.block_on(frameworks_until(
            &client,
            Duration::from_secs(30),
            "back",
            running,
        ))?;
        eprintln!("subscribed again {:?} after the heal", healed.elapsed());
        assert_eq!(after[0].id, id, "the same framework, not a new one");
        anyhow::Ok(())
    })();
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    outcome.map_err(|e| e.context(cluster.logs()))?;
    drop(cluster);
    drop(net);
    Ok(())
}
