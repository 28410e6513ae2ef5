//! A scheduler for tests: launches given tasks on whatever offers come and
//! reports their updates, acknowledging each.

use anyhow::{Context as _, bail};
use std::collections::VecDeque;
use std::time::Duration;
use stoa_client::{ClientConfig, SchedulerSession};
use stoa_proto::{Event, FrameworkId, FrameworkInfo, TaskInfo, TaskState, TaskStatus};

/// How long a test waits for any one event.
const EVENT_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct TestFramework {
    session: SchedulerSession,
    /// Updates that arrived while waiting for something else.
    backlog: VecDeque<TaskStatus>,
    /// Offers that arrived while waiting for updates, kept for the next
    /// launch (unanswered, an offer holds its agent's resources).
    offers: VecDeque<stoa_proto::Offer>,
}

impl TestFramework {
    pub async fn subscribe(client: &ClientConfig, name: &str) -> anyhow::Result<Self> {
        let info = FrameworkInfo::new(name, "test".parse()?);
        TestFramework::subscribe_as(client, info).await
    }

    /// Subscribes with `info` as given (a failover timeout, an id to take
    /// over).
    pub async fn subscribe_as(client: &ClientConfig, info: FrameworkInfo) -> anyhow::Result<Self> {
        Ok(TestFramework {
            session: SchedulerSession::subscribe(client, info).await?,
            backlog: VecDeque::new(),
            offers: VecDeque::new(),
        })
    }

    /// Subscribes `info` again (a failover: `info.id` set) until a master
    /// takes it, for at most 30 s: the master may be restarting, or its
    /// successor not yet elected.
    pub async fn resubscribe(client: &ClientConfig, info: &FrameworkInfo) -> anyhow::Result<Self> {
        let give_up = std::time::Instant::now() + EVENT_WAIT;
        loop {
            match TestFramework::subscribe_as(client, info.clone()).await {
                Ok(fw) => return Ok(fw),
                Err(_) if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every task's terminal states as they come, until `tasks` tasks
    /// have FINISHED.
    pub async fn ends_until_finished(
        &mut self,
        tasks: usize,
    ) -> anyhow::Result<std::collections::BTreeMap<String, Vec<TaskState>>> {
        let mut ends: std::collections::BTreeMap<String, Vec<TaskState>> = Default::default();
        while ends
            .values()
            .filter(|s| s.contains(&TaskState::Finished))
            .count()
            < tasks
        {
            let status = self.next_update().await?;
            if status.state.is_terminal() {
                ends.entry(status.task_id.to_string())
                    .or_default()
                    .push(status.state);
            }
        }
        Ok(ends)
    }

    /// The next event of any kind, updates acknowledged as usual.
    pub async fn event(&mut self) -> anyhow::Result<Event> {
        self.next_event().await
    }

    pub fn id(&self) -> &FrameworkId {
        self.session.framework_id()
    }

    /// The next event, with updates acknowledged and kept in the backlog.
    async fn next_event(&mut self) -> anyhow::Result<Event> {
        let event = tokio::time::timeout(EVENT_WAIT, self.session.next_event())
            .await
            .context("no event from the master in time")??
            .context("the master closed the connection")?;
        if let Event::Update { status, ack } = &event {
            if let (Some(update_id), Some(agent_id)) = (ack, &status.agent_id) {
                self.session
                    .acknowledge(agent_id.clone(), status.task_id.clone(), *update_id)
                    .await?;
            }
            self.backlog.push_back(status.clone());
        }
        Ok(event)
    }

    /// Launches every task, packing as many into each offer as fit.
    pub async fn launch_all(&mut self, tasks: Vec<TaskInfo>) -> anyhow::Result<()> {
        let mut pending: VecDeque<TaskInfo> = tasks.into();
        while !pending.is_empty() {
            let offers: Vec<_> = if self.offers.is_empty() {
                let Event::Offers { offers } = self.next_event().await? else {
                    continue;
                };
                offers
            } else {
                self.offers.drain(..).collect()
            };
            for offer in offers {
                let mut left = offer.resources.clone();
                let mut batch = Vec::new();
                while let Some(task) = pending.front() {
                    let Some(rest) = left.checked_sub(&task.resources) else {
                        break;
                    };
                    left = rest;
                    batch.extend(pending.pop_front());
                }
                if batch.is_empty() {
                    self.session.decline(vec![offer.id], None).await?;
                } else {
                    self.session.launch(vec![offer.id], batch).await?;
                }
            }
        }
        Ok(())
    }

    /// Updates received (and acknowledged) but not yet taken, taken now:
    /// a test that drops its framework keeps what it was told.
    pub fn take_queued(&mut self) -> Vec<TaskStatus> {
        self.backlog.drain(..).collect()
    }

    /// The next task update (acknowledged).
    pub async fn next_update(&mut self) -> anyhow::Result<TaskStatus> {
        loop {
            if let Some(status) = self.backlog.pop_front() {
                return Ok(status);
            }
            if let Event::Offers { offers } = self.next_event().await? {
                self.offers.extend(offers);
            }
        }
    }

    /// Waits until `task` reaches `state`; fails if it ends otherwise.
    /// Other tasks' updates stay queued for later calls.
    pub async fn wait_for(&mut self, task: &str, state: TaskState) -> anyhow::Result<TaskStatus> {
        let mut seen = 0;
        loop {
            while let Some(i) = self
                .backlog
                .iter()
                .skip(seen)
                .position(|s| s.task_id.as_str() == task)
            {
                let Some(status) = self.backlog.remove(seen + i) else {
                    break;
                };
                seen += i;
                if status.state == state {
                    return Ok(status);
                }
                if status.state.is_terminal() {
                    bail!(
                        "{task} ended {} instead of {state}: {status:?}",
                        status.state
                    );
                }
            }
            seen = self.backlog.len();
            self.next_event().await?;
        }
    }

    /// MESSAGE: `data` for `task`'s inbox.
    pub async fn message(&mut self, task: &str, data: &[u8]) -> anyhow::Result<()> {
        let call = stoa_proto::Call::Message {
            task_id: stoa_proto::TaskId::new(task)?,
            data: data.to_vec(),
        };
        self.session.call(&call).await
    }

    /// Asks the master to kill `task`.
    pub async fn kill(&mut self, task: &str) -> anyhow::Result<()> {
        let task_id = stoa_proto::TaskId::new(task)?;
        self.session.call(&stoa_proto::Call::Kill { task_id }).await
    }

    /// Goes away without ending the framework, as a scheduler that exits:
    /// its tasks run on for the failover timeout.
    pub async fn disconnect(self) {
        self.session.finish().await;
    }

    pub async fn teardown(self) -> anyhow::Result<()> {
        self.session.teardown().await
    }
}
