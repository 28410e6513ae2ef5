//! The agent's decisions about each framework's executor process: what
//! its cgroup is sized to (the wasm tasks it runs, which live inside it),
//! when it may shrink (a while after a task ends, so a busy framework's
//! cgroup is not rewritten at every task), and when it is stopped (no task
//! of its framework left for the idle time). The driver performs them as
//! [`crate::Action::ResizeExecutor`] and [`crate::Action::StopExecutor`].

use crate::executor_load::{ExecutorLoad, Load};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use stoa_proto::{FrameworkId, TaskId, TaskInfo, Time};

/// How long after a task ends its executor's cgroup may shrink: time for
/// the next tasks to arrive.
pub const SHRINK_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Executors {
    load: ExecutorLoad,
    /// Stopped once a framework has had no task for this long.
    idle: Duration,
    /// (when, framework): stop it then if it still has no task.
    idle_deadlines: BTreeSet<(Time, FrameworkId)>,
    idle_at: HashMap<FrameworkId, Time>,
    /// (when, framework): let its cgroup come down to what it still needs.
    shrink_deadlines: BTreeSet<(Time, FrameworkId)>,
    shrinking: HashMap<FrameworkId, Time>,
}

/// A decision due now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Shrink(FrameworkId, Load),
    /// Stop it if it still has no task (the caller knows).
    StopIfIdle(FrameworkId),
}

impl Executors {
    pub(crate) fn new(idle: Duration) -> Executors {
        Executors {
            load: ExecutorLoad::default(),
            idle,
            idle_deadlines: BTreeSet::new(),
            idle_at: HashMap::new(),
            shrink_deadlines: BTreeSet::new(),
            shrinking: HashMap::new(),
        }
    }

    pub(crate) fn set_idle(&mut self, idle: Duration) {
        self.idle = idle;
    }

    /// A task starts in `fw`'s executor: the size it must grow to, if the
    /// task lives inside it (wasm), else `None`.
    pub(crate) fn started(&mut self, fw: &FrameworkId, task: &TaskInfo) -> Option<Load> {
        task.kind.artifact()?;
        let r = &task.resources;
        self.load
            .add(fw, &task.task_id, (r.millicpus(), r.mem_mib()));
        Some(self.load.total(fw))
    }

    /// A task no longer runs (ended, or back to waiting for its artifact):
    /// its executor may shrink a while later.
    pub(crate) fn stopped(&mut self, now: Time, fw: &FrameworkId, task: &TaskId) {
        if self.load.remove(fw, task) && !self.shrinking.contains_key(fw) {
            let at = now + SHRINK_AFTER;
            self.shrinking.insert(fw.clone(), at);
            self.shrink_deadlines.insert((at, fw.clone()));
        }
    }

    /// A task of `fw` was forgotten: its executor is stopped after the
    /// idle time if no task of its framework is left by then.
    pub(crate) fn forgotten(&mut self, now: Time, fw: &FrameworkId) {
        let at = now + self.idle;
        if let Some(old) = self.idle_at.insert(fw.clone(), at) {
            self.idle_deadlines.remove(&(old, fw.clone()));
        }
        self.idle_deadlines.insert((at, fw.clone()));
    }

    pub(crate) fn total(&self, fw: &FrameworkId) -> Load {
        self.load.total(fw)
    }

    pub(crate) fn next_deadline(&self) -> Option<Time> {
        let shrink = self.shrink_deadlines.first().map(|(t, _)| *t);
        let idle = self.idle_deadlines.first().map(|(t, _)| *t);
        shrink.into_iter().chain(idle).min()
    }

    /// The decisions due at `now`.
    pub(crate) fn due(&mut self, now: Time) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some((t, fw)) = self.shrink_deadlines.first().cloned()
            && t <= now
        {
            self.shrink_deadlines.remove(&(t, fw.clone()));
            self.shrinking.remove(&fw);
            let load = self.load.total(&fw);
            out.push(Due::Shrink(fw, load));
        }
        while let Some((t, fw)) = self.idle_deadlines.first().cloned()
            && t <= now
        {
            self.idle_deadlines.remove(&(t, fw.clone()));
            self.idle_at.remove(&fw);
            out.push(Due::StopIfIdle(fw));
        }
        out
    }
}
