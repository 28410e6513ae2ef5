//! The scheduler protocol over real processes: failover semantics
//! (redelivery to a scheduler that takes over, takeover of a connected
//! scheduler, the failover timeout) and framework messages between a
//! scheduler and its tasks.

use std::time::{Duration, Instant};
use stoa_proto::{
    Artifact, Event, FrameworkInfo, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState,
};
use stoa_tests::{Cluster, TestFramework, misbehave_wasm};

fn sleeper(id: &str, ms: u64) -> anyhow::Result<TaskInfo> {
    misbehaving(id, &format!("sleep:{ms}"))
}

fn misbehaving(id: &str, input: &str) -> anyhow::Result<TaskInfo> {
    Ok(TaskInfo {
        task_id: TaskId::new(id)?,
        name: id.into(),
        resources: "cpus:1;mem:64".parse()?,
        kind: TaskKind::wasm(
            Artifact::inline(misbehave_wasm()?),
            input.as_bytes().to_vec(),
        ),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some(60_000),
        },
    })
}

fn info(failover_timeout_ms: u64) -> anyhow::Result<FrameworkInfo> {
    let mut info = FrameworkInfo::new("failing-over", "test".parse()?);
    info.failover_timeout_ms = failover_timeout_ms;
    Ok(info)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

#[test]
fn an_update_missed_while_away_reaches_the_scheduler_that_takes_over() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    runtime()?
        .block_on(async {
            let mut first = TestFramework::subscribe_as(&cluster.client(), info(30_000)?).await?;
            first.launch_all(vec![sleeper("nap", 800)?]).await?;
            first.wait_for("nap", TaskState::Running).await?;
            let id = first.id().clone();
            // The scheduler goes away; the task ends while nobody listens.
            first.disconnect().await;
            tokio::time::sleep(Duration::from_millis(1_200)).await;

            let mut again = info(30_000)?;
            again.id = Some(id.clone());
            let mut second = TestFramework::subscribe_as(&cluster.client(), again).await?;
            assert_eq!(second.id(), &id, "the framework keeps its id");
            let done = second.wait_for("nap", TaskState::Finished).await?;
            assert_eq!(done.output.as_deref(), Some(b"slept".as_slice()));
            second.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn a_second_scheduler_takes_over_and_the_first_is_told() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    runtime()?
        .block_on(async {
            let mut first = TestFramework::subscribe_as(&cluster.client(), info(30_000)?).await?;
            first.launch_all(vec![sleeper("long", 1_500)?]).await?;
            first.wait_for("long", TaskState::Running).await?;

            let mut again = info(30_000)?;
            again.id = Some(first.id().clone());
            let mut second = TestFramework::subscribe_as(&cluster.client(), again).await?;
            let told = loop {
                match first.event().await {
                    Ok(Event::Error { code, message }) => {
                        assert_eq!(code, stoa_proto::Refusal::FailedOver);
                        break message;
                    }
                    Ok(_) => continue,
                    Err(e) => anyhow::bail!("the first scheduler was not told: {e:#}"),
                }
            };
            assert!(told.contains("failed over"), "{told}");
            // The task carries on and reports to the new scheduler.
            second.wait_for("long", TaskState::Finished).await?;
            second.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

#[test]
fn past_its_failover_timeout_a_framework_is_gone_with_its_tasks() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    runtime()?
        .block_on(async {
            let mut first = TestFramework::subscribe_as(&cluster.client(), info(500)?).await?;
            first.launch_all(vec![sleeper("doomed", 30_000)?]).await?;
            first.wait_for("doomed", TaskState::Running).await?;
            let id = first.id().clone();
            let gone_at = Instant::now();
            first.disconnect().await;

            // The whole cpu comes back once the task is killed.
            let mut other = TestFramework::subscribe(&cluster.client(), "next").await?;
            other.launch_all(vec![sleeper("after", 10)?]).await?;
            other.wait_for("after", TaskState::Finished).await?;
            assert!(
                gone_at.elapsed() >= Duration::from_millis(500),
                "the task was killed before the failover timeout"
            );

            let mut again = info(500)?;
            again.id = Some(id);
            let refused = TestFramework::subscribe_as(&cluster.client(), again).await;
            let message = format!("{:#}", refused.expect_err("a torn-down id is refused"));
            assert!(message.contains("torn down"), "{message}");
            other.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

/// The next ERROR or MESSAGE event; updates meanwhile stay queued.
async fn next_reply(framework: &mut TestFramework) -> anyhow::Result<Event> {
    loop {
        match framework.event().await? {
            e @ (Event::Error { .. } | Event::Message { .. }) => return Ok(e),
            _ => continue,
        }
    }
}

#[test]
fn a_scheduler_and_its_tasks_exchange_messages() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:2;mem:1024")?;
    runtime()?
        .block_on(async {
            let mut fw = TestFramework::subscribe(&cluster.client(), "talker").await?;
            fw.launch_all(vec![misbehaving("echo", "echo")?, sleeper("deaf", 30_000)?])
                .await?;
            fw.wait_for("echo", TaskState::Running).await?;
            fw.wait_for("deaf", TaskState::Running).await?;

            fw.message("echo", b"hello").await?;
            let Event::Message {
                from: Some(from),
                data,
            } = next_reply(&mut fw).await?
            else {
                anyhow::bail!("expected the task's answer");
            };
            assert_eq!(data, b"echo: hello");
            assert_eq!(from.task_id.as_str(), "echo");
            assert_eq!(from.agent_id.as_str(), cluster.agent_id(1)?);
            fw.message("echo", b"stop").await?;
            let done = fw.wait_for("echo", TaskState::Finished).await?;
            assert_eq!(done.output.as_deref(), Some(b"echoed 1".as_slice()));

            // Refused by the master: no such task, or one that ended.
            fw.message("ghost", b"boo").await?;
            let reply = format!("{:?}", next_reply(&mut fw).await?);
            assert!(reply.contains("no such task"), "{reply}");

            // Dropped by the executor: a task that never reads fills its
            // inbox, and the scheduler hears of each message beyond it.
            for i in 0..=64u32 {
                fw.message("deaf", &i.to_le_bytes()).await?;
            }
            let reply = format!("{:?}", next_reply(&mut fw).await?);
            assert!(reply.contains("inbox is full"), "{reply}");
            fw.kill("deaf").await?;
            fw.wait_for("deaf", TaskState::Killed).await?;
            fw.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}

/// A burst of events is read without waiting, but only so many in a row:
/// then the session says to answer before reading on.
#[test]
fn ready_events_come_in_bounded_bursts() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    runtime()?
        .block_on(async {
            let config = cluster.client();
            let info = FrameworkInfo::new("bursty", "test".parse()?);
            let mut session = stoa_client::SchedulerSession::subscribe(&config, info).await?;
            // Each unknown task is answered with its own TASK_UNKNOWN.
            let n = stoa_client::MAX_BURST + 44;
            let tasks = (0..n)
                .map(|i| TaskId::new(format!("nobody{i}")))
                .collect::<Result<Vec<_>, _>>()?;
            session.call(&stoa_proto::Call::Reconcile { tasks }).await?;
            let is_unknown = |event: &Event| {
                matches!(event, Event::Update { status, .. } if status.state == TaskState::Unknown)
            };
            let first = tokio::time::timeout(Duration::from_secs(10), session.next_event())
                .await??
                .ok_or_else(|| anyhow::anyhow!("the master closed the connection"))?;
            let mut unknown = usize::from(is_unknown(&first));
            // Let everything arrive: what stops the burst is the bound.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut burst = 0;
            while let Some(event) = session.ready_event()? {
                unknown += usize::from(is_unknown(&event));
                burst += 1;
            }
            assert_eq!(burst, stoa_client::MAX_BURST);
            // The rest is there at once, after a wait that does not wait.
            while unknown < n {
                let event = tokio::time::timeout(Duration::from_secs(1), session.next_event())
                    .await??
                    .ok_or_else(|| anyhow::anyhow!("the master closed the connection"))?;
                unknown += usize::from(is_unknown(&event));
                while let Some(event) = session.ready_event()? {
                    unknown += usize::from(is_unknown(&event));
                }
            }
            session.teardown().await
        })
        .map_err(|e| e.context(cluster.logs()))
}
