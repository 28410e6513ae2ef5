//! The Stoa agent's state machine: registration, heartbeats, tasks and
//! their status updates.
//!
//! Calling order, for drivers: after a connection to the master is up, call
//! [`Agent::handle_connected`]; feed each message, each task event from the
//! executor and each expired timeout through its `handle_*` method; after
//! every call drain [`Agent::poll_transmit`] (to the master) and
//! [`Agent::poll_action`] (to the executor), then sleep until
//! [`Agent::poll_timeout`]. Messages are only produced while connected.

mod executor_load;
mod executors;
mod fetches;
pub mod measures;
mod sandboxes;
mod status_updates;

use executors::{Due, Executors};
use fetches::Fetches;
use sandboxes::Sandboxes;
use status_updates::StatusUpdates;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use stoa_proto::messages::RunningTask;
use stoa_proto::{
    AgentId, AgentInfo, AgentToMaster, Digest, FrameworkId, MasterToAgent, Reason, Resources,
    TaskId, TaskInfo, TaskState, TaskStatus, Time,
};

/// Work for the executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Launch {
        framework_id: FrameworkId,
        task: Box<TaskInfo>,
    },
    Kill {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
    /// Fetch an artifact into the agent's store (once, however many
    /// launches wait for it); answer with [`Agent::handle_fetched`].
    Fetch { digest: Digest },
    /// Size the framework's executor (its cgroup) to what its wasm tasks
    /// were given together; `shrink` lets it come down, else it only grows.
    ResizeExecutor {
        framework_id: FrameworkId,
        millicpus: u64,
        mem_mib: u64,
        shrink: bool,
    },
    /// Stop the framework's executor: it has had no task for the idle time.
    StopExecutor { framework_id: FrameworkId },
    /// Bytes from the scheduler for the task's inbox.
    Deliver {
        framework_id: FrameworkId,
        task_id: TaskId,
        data: Vec<u8>,
    },
    /// The master has the task's terminal update; the executor may forget
    /// the task.
    Forget {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
    /// A native task ended: remove the cgroup made for it (and anything
    /// left in it).
    RemoveCgroup {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
    /// A forgotten task's directory (sandbox and logs) is due for
    /// collection.
    CollectSandbox {
        framework_id: FrameworkId,
        task_id: TaskId,
    },
}

pub use stoa_proto::executor::TaskEvent;

#[derive(Debug)]
struct TaskRecord {
    resources: Resources,
    state: TaskState,
    /// It has a directory to collect once forgotten: it keeps one, and
    /// went to an executor (which makes it).
    sandbox: bool,
    /// A native task: it runs in a cgroup of its own, removed at its end.
    native: bool,
}

impl TaskRecord {
    fn new(task: &TaskInfo, state: TaskState) -> Self {
        TaskRecord {
            resources: task.resources.clone(),
            state,
            sandbox: false,
            native: matches!(task.kind, stoa_proto::TaskKind::Command(_)),
        }
    }
}

/// The agent's state machine. See the module docs for the calling order.
#[derive(Debug)]
pub struct Agent {
    info: AgentInfo,
    agent_id: Option<AgentId>,
    connected: bool,
    registered: bool,
    refused: Option<String>,
    heartbeat_interval: Duration,
    next_heartbeat: Option<Time>,
    /// As the master last said; the agent stops its tasks when out of
    /// touch for a good part of it.
    removal_timeout: Option<Duration>,
    /// While out of touch with the master: when the agent stops its tasks.
    fence_at: Option<Time>,
    /// Tasks stopped because the agent was out of touch: their ends are
    /// reported with reason `agent-removed`.
    fenced: std::collections::BTreeSet<(FrameworkId, TaskId)>,
    tasks: BTreeMap<(FrameworkId, TaskId), TaskRecord>,
    /// Launches waiting for their artifact.
    fetches: Fetches,
    /// Executors' sizes, shrinking and idle stops.
    executors: Executors,
    /// Forgotten tasks' directories, until they are collected.
    sandboxes: Sandboxes,
    updates: StatusUpdates,
    outbox: VecDeque<AgentToMaster>,
    actions: VecDeque<Action>,
    measures: measures::Measures,
}

impl Agent {
    /// `agent_id` is the id from an earlier registration, if any.
    /// `first_update` numbers this process's status updates; a restarted
    /// agent must start above every number it used before (drivers use the
    /// wall clock in microseconds).
    pub fn new(info: AgentInfo, agent_id: Option<AgentId>, first_update: u64) -> Self {
        Agent {
            info,
            agent_id,
            connected: false,
            registered: false,
            refused: None,
            heartbeat_interval: Duration::from_secs(1),
            next_heartbeat: None,
            removal_timeout: None,
            fence_at: None,
            fenced: std::collections::BTreeSet::new(),
            tasks: BTreeMap::new(),
            fetches: Fetches::default(),
            executors: Executors::new(Duration::from_secs(60)),
            sandboxes: Sandboxes::new(Duration::from_secs(3600), 10_000),
            updates: StatusUpdates::starting_at(first_update),
            outbox: VecDeque::new(),
            actions: VecDeque::new(),
            measures: measures::Measures::default(),
        }
    }

    pub fn agent_id(&self) -> Option<&AgentId> {
        self.agent_id.as_ref()
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Why the master refused this agent, if it did; the agent should stop.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Tasks not yet terminal.
    pub fn active_tasks(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .count()
    }

    /// Status updates not yet acknowledged.
    pub fn pending_updates(&self) -> usize {
        self.updates.len()
    }

    /// Tasks that ended since the last call, for the driver's metrics.
    pub fn take_measures(&mut self) -> Vec<measures::Measure> {
        self.measures.take()
    }

    pub fn poll_transmit(&mut self) -> Option<AgentToMaster> {
        self.outbox.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        let chores = self
            .executors
            .next_deadline()
            .into_iter()
            .chain(self.sandboxes.next_due());
        if !self.registered {
            return self.fence_at.into_iter().chain(chores).min();
        }
        self.next_heartbeat
            .into_iter()
            .chain(self.updates.next_retry())
            .chain(chores)
            .min()
    }

    /// How long a framework's executor may stay without tasks before it
    /// is stopped (default 60 s).
    pub fn set_executor_idle(&mut self, idle: Duration) {
        self.executors.set_idle(idle);
    }

    /// How long a forgotten task's directory is kept (default an hour),
    /// and how many are kept at most (default 10,000; past it the oldest
    /// go first).
    pub fn set_sandbox_collection(&mut self, delay: Duration, max_dirs: usize) {
        self.sandboxes.set_policy(delay, max_dirs);
    }

    /// After a restart, before any task is forgotten: directories an
    /// earlier agent process left whose tasks it does not hold, each with
    /// how long ago it was last written. They are collected the delay
    /// after that (or sooner, past the count).
    pub fn handle_left_behind(
        &mut self,
        now: Time,
        dirs: impl IntoIterator<Item = (FrameworkId, TaskId, Duration)>,
    ) {
        self.sandboxes.left_behind(now, dirs);
        self.collect_sandboxes(now);
    }

    /// After a restart, once its tasks are recovered: the framework's
    /// executor is sized to what they need, down as well as up.
    pub fn recovered_executor(&mut self, framework_id: &FrameworkId) {
        let (millicpus, mem_mib) = self.executors.total(framework_id);
        self.actions.push_back(Action::ResizeExecutor {
            framework_id: framework_id.clone(),
            millicpus,
            mem_mib,
            shrink: true,
        });
    }

    /// A connection to the master is up: register (again).
    pub fn handle_connected(&mut self, _now: Time) {
        self.connected = true;
        self.fence_at = None;
        self.registered = false;
        self.outbox.clear();
        // Every task the agent holds, ended ones too: an ended task whose
        // update is not yet acknowledged must not look lost to the master
        // (it would report it LOST, then the resent end).
        let tasks = self
            .tasks
            .iter()
            .map(|((framework_id, task_id), t)| RunningTask {
                framework_id: framework_id.clone(),
                task_id: task_id.clone(),
                resources: t.resources.clone(),
                state: t.state,
            })
            .collect();
        self.outbox.push_back(AgentToMaster::Register {
            info: self.info.clone(),
            agent_id: self.agent_id.clone(),
            tasks,
        });
    }

    pub fn handle_disconnected(&mut self, now: Time) {
        // Stop the tasks well before the master would report them GONE
        // (detection of a broken link may differ by a heartbeat or two
        // between the two ends).
        if self.fence_at.is_none() {
            self.fence_at = self.removal_timeout.map(|t| now + t.mul_f64(0.75));
        }
        self.connected = false;
        self.registered = false;
        self.next_heartbeat = None;
        self.outbox.clear();
    }

    pub fn handle_master_message(&mut self, now: Time, msg: MasterToAgent) {
        match msg {
            MasterToAgent::Registered {
                agent_id,
                heartbeat_interval_ms,
                removal_timeout_ms,
            } => {
                if self.agent_id.as_ref().is_some_and(|old| *old != agent_id) {
                    self.start_anew(now);
                }
                self.agent_id = Some(agent_id);
                self.removal_timeout = Some(Duration::from_millis(removal_timeout_ms.max(1_000)));
                self.fence_at = None;
                self.registered = true;
                self.heartbeat_interval =
                    Duration::from_millis(heartbeat_interval_ms.clamp(10, 60_000));
                self.next_heartbeat = Some(now + self.heartbeat_interval);
                // Everything unacknowledged goes out again on the new connection.
                let all = self.updates.resend_all(now);
                self.send_again(all);
            }
            MasterToAgent::Refused { message } => {
                self.refused = Some(message);
            }
            MasterToAgent::RunTask { framework_id, task } => self.run_task(framework_id, task),
            MasterToAgent::KillTask {
                framework_id,
                task_id,
            } => {
                let key = (framework_id.clone(), task_id.clone());
                match self.tasks.get_mut(&key) {
                    Some(t) if !t.state.is_terminal() => {
                        // The scheduler hears KILLING once, then the end.
                        if t.state != TaskState::Killing {
                            t.state = TaskState::Killing;
                            let status = TaskStatus::new(task_id.clone(), TaskState::Killing);
                            self.send_update(now, framework_id.clone(), status);
                        }
                        // A launch still waiting for its artifact never
                        // reaches an executor: it ends here.
                        if self.fetches.cancel(&framework_id, &task_id) {
                            let event = TaskEvent::ended(
                                TaskState::Killed,
                                Reason::KilledByScheduler,
                                "killed before it started (its artifact was being fetched)",
                            );
                            self.handle_task_event(now, framework_id, task_id, event);
                        } else {
                            self.actions.push_back(Action::Kill {
                                framework_id,
                                task_id,
                            })
                        }
                    }
                    Some(_) => {}
                    None => {
                        let status = TaskStatus::new(task_id, TaskState::Lost)
                            .because(Reason::TaskUnknown, "this agent does not run the task");
                        self.send_update(now, framework_id, status);
                    }
                }
            }
            MasterToAgent::FrameworkMessage {
                framework_id,
                task_id,
                data,
            } => {
                let key = (framework_id.clone(), task_id.clone());
                match self.tasks.get(&key) {
                    Some(t) if !t.state.is_terminal() => self.actions.push_back(Action::Deliver {
                        framework_id,
                        task_id,
                        data,
                    }),
                    _ => self.undelivered(
                        framework_id,
                        task_id,
                        "the task is not running on this agent",
                    ),
                }
            }
            MasterToAgent::AcknowledgeUpdate { task_id, update_id } => {
                if let Some(framework_id) = self.updates.acknowledge(now, &task_id, update_id) {
                    let key = (framework_id, task_id);
                    let done = self.tasks.get(&key).is_some_and(|t| t.state.is_terminal());
                    if done
                        && !self.updates.has_pending(&key.0, &key.1)
                        && let Some(task) = self.tasks.remove(&key)
                    {
                        let (framework_id, task_id) = key;
                        self.forget(now, framework_id, task_id, task.sandbox);
                    }
                }
            }
        }
    }

    /// The executor reports on a task.
    pub fn handle_task_event(
        &mut self,
        now: Time,
        framework_id: FrameworkId,
        task_id: TaskId,
        event: TaskEvent,
    ) {
        let key = (framework_id.clone(), task_id.clone());
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        if task.state.is_terminal() {
            return;
        }
        let status = match event {
            TaskEvent::Running => TaskStatus::new(task_id, TaskState::Running),
            TaskEvent::Health { healthy } => {
                let mut s = TaskStatus::new(task_id, TaskState::Running);
                s.healthy = Some(healthy);
                s
            }
            TaskEvent::Finished { output, exit_code } => {
                let mut s = TaskStatus::new(task_id, TaskState::Finished);
                s.output = Some(output);
                s.exit_code = exit_code;
                s
            }
            TaskEvent::Ended {
                state,
                reason,
                message,
                exit_code,
            } => {
                let mut s = TaskStatus::new(task_id, state).because(reason, message);
                s.exit_code = exit_code;
                s
            }
        };
        let mut status = status;
        if status.state.is_terminal() {
            self.executors.stopped(now, &key.0, &key.1);
        }
        if status.state.is_terminal() && self.fenced.remove(&key) {
            status.reason = Some(Reason::AgentRemoved);
            status.message =
                "stopped by its agent, out of touch with the master past most of the removal timeout"
                    .into();
        }
        task.state = status.state;
        if status.state.is_terminal() {
            self.measures.push(measures::Measure::TaskEnded {
                native: task.native,
                state: status.state,
                reason: status.reason,
            });
        }
        if status.state.is_terminal() && task.native {
            self.actions.push_back(Action::RemoveCgroup {
                framework_id: framework_id.clone(),
                task_id: status.task_id.clone(),
            });
        }
        self.send_update(now, framework_id, status);
    }

    /// The driver could not start `task` of an [`Action::Launch`]: an
    /// artifact of the master's store it needs, `digest` (its program or
    /// one of its files, [`TaskKind::missing_artifact`]), is not at hand.
    /// The launch waits (the scheduler hears TASK_STARTING) and the
    /// artifact is fetched, once for every launch that needs it
    /// ([`Action::Fetch`]); the launch then comes back to the driver, which
    /// may find the next one missing.
    pub fn artifact_missing(
        &mut self,
        now: Time,
        framework_id: FrameworkId,
        task: Box<TaskInfo>,
        digest: Digest,
    ) {
        self.executors.stopped(now, &framework_id, &task.task_id);
        if let Some(record) = self
            .tasks
            .get_mut(&(framework_id.clone(), task.task_id.clone()))
        {
            record.sandbox = false;
        }
        self.preparing(now, framework_id.clone(), task.task_id.clone());
        if self.fetches.wait(digest, framework_id, task) {
            self.actions.push_back(Action::Fetch { digest });
        }
    }

    /// An [`Action::Fetch`] ended: the launches that waited start, or end
    /// in TASK_ERROR (`artifact-unavailable`) with the failure.
    pub fn handle_fetched(&mut self, now: Time, digest: Digest, result: Result<(), String>) {
        for (framework_id, task) in self.fetches.done(&digest) {
            match &result {
                Ok(()) => self.launch(framework_id, task),
                Err(message) => {
                    let event = TaskEvent::ended(
                        TaskState::Error,
                        Reason::ArtifactUnavailable,
                        message.clone(),
                    );
                    self.handle_task_event(now, framework_id, task.task_id, event);
                }
            }
        }
    }

    /// Whether a launch waits for its artifact (for operators and tests).
    pub fn is_fetching(&self, framework_id: &FrameworkId, task_id: &TaskId) -> bool {
        self.fetches.is_waiting(framework_id, task_id)
    }

    /// A framework's executor process exited: every task of it that had
    /// not ended fails (`executor-terminated`), alone, and the others on
    /// this agent go on.
    pub fn handle_executor_gone(&mut self, now: Time, framework_id: &FrameworkId) {
        let orphans: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|((f, t), r)| {
                f == framework_id && !r.state.is_terminal() && !self.fetches.is_waiting(f, t)
            })
            .map(|((_, t), _)| t.clone())
            .collect();
        if !orphans.is_empty() {
            tracing::warn!(framework = %framework_id, tasks = orphans.len(), "an executor died with tasks running");
        }
        for task_id in &orphans {
            let event = TaskEvent::ended(
                TaskState::Failed,
                Reason::ExecutorTerminated,
                "the framework's executor exited while the task ran",
            );
            self.handle_task_event(now, framework_id.clone(), task_id.clone(), event);
        }
    }

    /// A launched task waits for something before it can start (its
    /// artifact): the scheduler hears TASK_STARTING.
    pub fn preparing(&mut self, now: Time, framework_id: FrameworkId, task_id: TaskId) {
        let key = (framework_id.clone(), task_id.clone());
        if self
            .tasks
            .get(&key)
            .is_some_and(|t| t.state == TaskState::Starting)
        {
            self.send_update(
                now,
                framework_id,
                TaskStatus::new(task_id, TaskState::Starting),
            );
        }
    }

    /// A task sent its scheduler `data`; passed on while registered, else
    /// dropped (framework messages are best effort).
    pub fn handle_task_message(
        &mut self,
        framework_id: FrameworkId,
        task_id: TaskId,
        data: Vec<u8>,
    ) {
        self.push_if_registered(AgentToMaster::FrameworkMessage {
            framework_id,
            task_id,
            data,
        });
    }

    /// A message for a task was dropped: the scheduler is told why.
    pub fn undelivered(&mut self, framework_id: FrameworkId, task_id: TaskId, why: &str) {
        self.push_if_registered(AgentToMaster::Undelivered {
            framework_id,
            task_id,
            message: why.to_string(),
        });
    }

    /// A restarted agent found `task` still held by its executor, last seen
    /// in `last` (`None` before the task reported anything). Call before
    /// the first connection; a terminal `last` is reported again.
    pub fn recover_task(
        &mut self,
        now: Time,
        framework_id: FrameworkId,
        task: &TaskInfo,
        last: Option<TaskEvent>,
    ) {
        let key = (framework_id.clone(), task.task_id.clone());
        let state = match last {
            Some(_) => TaskState::Running,
            None => TaskState::Starting,
        };
        let mut record = TaskRecord::new(task, state);
        record.sandbox = task.kind.has_sandbox();
        self.tasks.insert(key, record);
        // It runs in its executor: counted in the executor's size (taken
        // out again below if it has ended).
        self.executors.started(&framework_id, task);
        if let Some(event) = last.filter(TaskEvent::is_terminal) {
            self.handle_task_event(now, framework_id, task.task_id.clone(), event);
        }
    }

    /// Whether a task is over as far as this agent knows: ended, or not one
    /// of its tasks (any more).
    pub fn has_ended(&self, framework_id: &FrameworkId, task_id: &TaskId) -> bool {
        self.tasks
            .get(&(framework_id.clone(), task_id.clone()))
            .is_none_or(|t| t.state.is_terminal())
    }

    /// Whether the agent still knows a task, in any state.
    pub fn knows(&self, framework_id: &FrameworkId, task_id: &TaskId) -> bool {
        self.tasks
            .contains_key(&(framework_id.clone(), task_id.clone()))
    }

    /// Tasks the agent knows, with their states (for operators and tests).
    pub fn tasks(&self) -> impl Iterator<Item = (&FrameworkId, &TaskId, TaskState)> {
        self.tasks.iter().map(|((f, t), r)| (f, t, r.state))
    }

    pub fn handle_timeout(&mut self, now: Time) {
        for due in self.executors.due(now) {
            match due {
                Due::Shrink(framework_id, (millicpus, mem_mib)) => {
                    self.actions.push_back(Action::ResizeExecutor {
                        framework_id,
                        millicpus,
                        mem_mib,
                        shrink: true,
                    })
                }
                Due::StopIfIdle(framework_id) => {
                    if !self.tasks.keys().any(|(f, _)| *f == framework_id) {
                        tracing::info!(framework = %framework_id, "stopping an idle executor");
                        self.actions
                            .push_back(Action::StopExecutor { framework_id });
                    }
                }
            }
        }
        self.collect_sandboxes(now);
        if self.fence_at.is_some_and(|t| t <= now) {
            self.fence_at = None;
            self.fence(now);
        }
        if !self.registered {
            return;
        }
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            self.outbox.push_back(AgentToMaster::Heartbeat);
            self.next_heartbeat = Some(now + self.heartbeat_interval);
        }
        let due = self.updates.due(now);
        self.send_again(due);
    }

    /// Status updates going out again, unacknowledged.
    fn send_again(&mut self, updates: Vec<AgentToMaster>) {
        if !updates.is_empty() {
            self.measures
                .push(measures::Measure::UpdatesResent(updates.len() as u64));
        }
        self.outbox.extend(updates);
    }

    /// Out of touch with the master for most of its removal timeout: the
    /// master is about to report every task GONE and its framework may
    /// launch them again elsewhere, so they must not run on here.
    fn fence(&mut self, now: Time) {
        let running: Vec<(FrameworkId, TaskId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        if !running.is_empty() {
            tracing::warn!(
                tasks = running.len(),
                "out of touch with the master for most of the removal timeout; stopping every task"
            );
        }
        for (framework_id, task_id) in running {
            self.fenced.insert((framework_id.clone(), task_id.clone()));
            if self.fetches.cancel(&framework_id, &task_id) {
                let event = TaskEvent::ended(TaskState::Killed, Reason::AgentRemoved, "stopped");
                self.handle_task_event(now, framework_id, task_id, event);
            } else {
                self.actions.push_back(Action::Kill {
                    framework_id,
                    task_id,
                });
            }
        }
    }

    /// The master removed this agent while it was away and admitted it
    /// anew: what it holds was reported GONE under its old id. Stop it,
    /// forget it, and drop its unsent updates.
    fn start_anew(&mut self, now: Time) {
        tracing::warn!(old = ?self.agent_id, "the master removed this agent while it was away; killing every task it held and starting anew");
        for ((framework_id, task_id), task) in std::mem::take(&mut self.tasks) {
            if !task.state.is_terminal() && !self.fetches.is_waiting(&framework_id, &task_id) {
                self.actions.push_back(Action::Kill {
                    framework_id: framework_id.clone(),
                    task_id: task_id.clone(),
                });
                // Its end will not be heard (the task is forgotten now).
                if task.native {
                    self.actions.push_back(Action::RemoveCgroup {
                        framework_id: framework_id.clone(),
                        task_id: task_id.clone(),
                    });
                }
            }
            self.executors.stopped(now, &framework_id, &task_id);
            self.forget(now, framework_id, task_id, task.sandbox);
        }
        self.fenced.clear();
        self.fetches = Fetches::default();
        self.updates.clear();
    }

    /// The agent lets go of a task: its executor forgets it, and its
    /// directory, if it has one, waits for collection.
    fn forget(&mut self, now: Time, framework_id: FrameworkId, task_id: TaskId, sandbox: bool) {
        self.executors.forgotten(now, &framework_id);
        self.actions.push_back(Action::Forget {
            framework_id: framework_id.clone(),
            task_id: task_id.clone(),
        });
        if sandbox {
            self.sandboxes.finished(now, framework_id, task_id);
            self.collect_sandboxes(now);
        }
    }

    /// Asks for the directories that are due. One whose task id was
    /// launched again since is left: it is collected when that task is
    /// forgotten.
    fn collect_sandboxes(&mut self, now: Time) {
        for (framework_id, task_id) in self.sandboxes.due(now) {
            if !self.knows(&framework_id, &task_id) {
                self.actions.push_back(Action::CollectSandbox {
                    framework_id,
                    task_id,
                });
            }
        }
    }

    fn run_task(&mut self, framework_id: FrameworkId, task: Box<TaskInfo>) {
        let key = (framework_id.clone(), task.task_id.clone());
        if self.tasks.contains_key(&key) {
            tracing::warn!(task = %task.task_id, "ignoring a second launch of a task this agent already has");
            return;
        }
        self.tasks
            .insert(key, TaskRecord::new(&task, TaskState::Starting));
        // No TASK_STARTING here: the executor's RUNNING follows within a
        // millisecond, and every update is a round trip to the scheduler.
        // A launch that must wait reports STARTING (`preparing`).
        self.launch(framework_id, task);
    }

    /// Hands a task to its executor, then grows the executor to hold it
    /// (in that order: the launch starts an executor that is not running,
    /// and only a running one can be sized).
    fn launch(&mut self, framework_id: FrameworkId, task: Box<TaskInfo>) {
        if let Some(record) = self
            .tasks
            .get_mut(&(framework_id.clone(), task.task_id.clone()))
        {
            record.sandbox = task.kind.has_sandbox();
        }
        let grown = self.executors.started(&framework_id, &task);
        self.actions.push_back(Action::Launch {
            framework_id: framework_id.clone(),
            task,
        });
        if let Some((millicpus, mem_mib)) = grown {
            self.actions.push_back(Action::ResizeExecutor {
                framework_id,
                millicpus,
                mem_mib,
                shrink: false,
            });
        }
    }

    fn send_update(&mut self, now: Time, framework_id: FrameworkId, mut status: TaskStatus) {
        status.agent_id = self.agent_id.clone();
        let msg = self.updates.push(now, framework_id, status);
        self.push_if_registered(msg);
    }

    fn push_if_registered(&mut self, msg: AgentToMaster) {
        if self.registered {
            self.outbox.push_back(msg);
        }
    }
}

#[cfg(test)]
mod tests;
