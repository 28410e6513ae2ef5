//! What really ran, and what each scheduler was told: the two records the
//! simulator's invariants compare after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use stoa_proto::{FrameworkId, Reason, TaskId, TaskState, TaskStatus, Time};

/// An invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Time,
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.at, self.invariant, self.detail)
    }
}

/// One execution of a task on an agent, as the simulated executor sees it.
#[derive(Debug, Clone)]
struct Execution {
    agent: usize,
    ended: bool,
}

/// The ground truth: every execution ever started, by task.
#[derive(Debug, Default)]
pub struct Executions {
    runs: BTreeMap<(FrameworkId, TaskId), Vec<Execution>>,
}

impl Executions {
    /// An executor starts `task`: it must never have started before.
    pub fn started(
        &mut self,
        now: Time,
        agent: usize,
        fw: &FrameworkId,
        task: &TaskId,
    ) -> Option<Violation> {
        let runs = self.runs.entry((fw.clone(), task.clone())).or_default();
        let earlier = runs.iter().map(|r| r.agent).collect::<Vec<_>>();
        runs.push(Execution {
            agent,
            ended: false,
        });
        (!earlier.is_empty()).then(|| Violation {
            at: now,
            invariant: "no task runs twice",
            detail: format!(
                "{fw}/{task} started on agent-{agent}, having run before on agents {earlier:?}"
            ),
        })
    }

    pub fn ended(&mut self, agent: usize, fw: &FrameworkId, task: &TaskId) {
        if let Some(runs) = self.runs.get_mut(&(fw.clone(), task.clone())) {
            for r in runs.iter_mut().filter(|r| r.agent == agent) {
                r.ended = true;
            }
        }
    }

    /// The agent where `task` is executing now, if any.
    pub fn running_on(&self, fw: &FrameworkId, task: &TaskId) -> Option<usize> {
        self.runs
            .get(&(fw.clone(), task.clone()))?
            .iter()
            .find(|r| !r.ended)
            .map(|r| r.agent)
    }
}

/// What one scheduler has been told about each of its tasks.
#[derive(Debug, Default)]
pub struct Told {
    /// The last state heard per task, and whether it was terminal.
    last: BTreeMap<TaskId, TaskState>,
    /// Tasks launched (accepted) and not yet heard to end.
    pub open: BTreeSet<TaskId>,
}

impl Told {
    pub fn launched(&mut self, task: TaskId) {
        self.open.insert(task);
    }

    /// Checks one update against what came before it and against the
    /// ground truth; returns whether it ends the task as the scheduler
    /// sees it for the first time.
    pub fn heard(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        status: &TaskStatus,
        truth: &Executions,
        violations: &mut Vec<Violation>,
    ) -> bool {
        let task = &status.task_id;
        let unknown = status.state == TaskState::Unknown;
        let before = self.last.get(task).copied();
        // A definite UNKNOWN ended the task for its scheduler as much as a
        // terminal state did.
        if let Some(prev) = before.filter(|s| s.is_terminal() || *s == TaskState::Unknown) {
            // Redelivery of the same end is at-least-once delivery; an
            // answer of UNKNOWN after the end is the master having forgotten
            // an acknowledged task.
            if prev != status.state && !(unknown && prev != TaskState::Unknown) {
                violations.push(Violation {
                    at: now,
                    invariant: "a task ends exactly once",
                    detail: format!(
                        "{fw}/{task} was {prev}, then {} ({:?}: {})",
                        status.state, status.reason, status.message
                    ),
                });
            }
            return false;
        }
        if (status.state.is_terminal() || unknown)
            && let Some(agent) = truth.running_on(fw, task)
        {
            violations.push(Violation {
                at: now,
                invariant: "an ended task is not running",
                detail: format!(
                    "{fw}/{task} reported {} ({:?}: {}) while it runs on agent-{agent}",
                    status.state, status.reason, status.message
                ),
            });
        }
        if unknown {
            // Only a definite answer for a task the scheduler launched.
            if !self.open.contains(task) || status.reason != Some(Reason::TaskUnknown) {
                return false;
            }
        }
        self.last.insert(task.clone(), status.state);
        let ends = status.state.is_terminal() || unknown;
        if ends {
            self.open.remove(task);
        }
        ends
    }
}
