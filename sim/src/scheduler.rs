//! The simulator's built-in scheduler: it launches its units of work
//! wherever they fit, acknowledges every update, relaunches under a new id
//! whatever ends without finishing (as a careful framework does), and
//! reconciles what it launched whenever it subscribes again.

use crate::ledger::{Executions, Told, Violation};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use stoa_proto::{
    Artifact, Call, Digest, FrameworkId, Offer, Operation, Resources, TaskId, TaskInfo, TaskKind,
    TaskLimits, TaskState, TaskStatus, Time,
};

/// How many times one unit of work is launched before it counts as failed.
const MAX_ATTEMPTS: u32 = 25;

#[derive(Debug)]
pub struct BuiltIn {
    /// Units of work waiting for an offer, with their attempt number.
    pending: VecDeque<(usize, u32)>,
    /// The unit and attempt each launched task id stands for.
    attempts: BTreeMap<TaskId, (usize, u32)>,
    pub finished: BTreeSet<usize>,
    pub failed: BTreeMap<usize, String>,
    pub told: Told,
    /// Offers are suppressed: nothing is left to launch.
    suppressed: bool,
}

impl BuiltIn {
    pub fn new(units: usize) -> BuiltIn {
        BuiltIn {
            pending: (0..units).map(|n| (n, 0)).collect(),
            attempts: BTreeMap::new(),
            finished: BTreeSet::new(),
            failed: BTreeMap::new(),
            told: Told::default(),
            suppressed: false,
        }
    }

    pub fn units_done(&self) -> usize {
        self.finished.len() + self.failed.len()
    }

    /// Launches what fits in `offer`, or declines it (and, with nothing
    /// left to launch, asks for no more offers until it revives).
    pub fn offer(&mut self, offer: &Offer, each: &Resources) -> Vec<Call> {
        let mut left = offer.resources.clone();
        let mut tasks = Vec::new();
        while let Some(&(n, attempt)) = self.pending.front() {
            let Some(rest) = left.checked_sub(each) else {
                break;
            };
            left = rest;
            self.pending.pop_front();
            let task = sim_task(n, attempt, each);
            self.attempts.insert(task.task_id.clone(), (n, attempt));
            self.told.launched(task.task_id.clone());
            tasks.push(task);
        }
        if tasks.is_empty() {
            let decline = Call::Decline {
                offer_ids: vec![offer.id],
                refuse_ms: Some(1_000),
            };
            if self.pending.is_empty() && !self.suppressed {
                self.suppressed = true;
                return vec![decline, Call::Suppress];
            }
            vec![decline]
        } else {
            vec![Call::Accept {
                offer_ids: vec![offer.id],
                operations: vec![Operation::Launch { tasks }],
                refuse_ms: None,
            }]
        }
    }

    /// Takes in an update; returns the calls it leads to (a revive when a
    /// unit goes back to wait for offers).
    pub fn update(
        &mut self,
        now: Time,
        fw: &FrameworkId,
        status: &TaskStatus,
        truth: &Executions,
        violations: &mut Vec<Violation>,
    ) -> Vec<Call> {
        if !self.told.heard(now, fw, status, truth, violations) {
            return Vec::new();
        }
        let Some(&(n, attempt)) = self.attempts.get(&status.task_id) else {
            return Vec::new();
        };
        let want = [b"hello, ".as_slice(), status.task_id.as_str().as_bytes()].concat();
        match status.state {
            TaskState::Finished if status.output.as_deref() == Some(want.as_slice()) => {
                self.finished.insert(n);
                Vec::new()
            }
            TaskState::Finished => {
                self.failed
                    .insert(n, format!("{}: wrong output", status.task_id));
                Vec::new()
            }
            state if attempt + 1 >= MAX_ATTEMPTS => {
                self.failed.insert(
                    n,
                    format!(
                        "{}: {state} {:?} after {MAX_ATTEMPTS} attempts",
                        status.task_id, status.reason
                    ),
                );
                Vec::new()
            }
            _ => {
                self.pending.push_back((n, attempt + 1));
                self.suppressed = false;
                vec![Call::Revive]
            }
        }
    }

    /// Counts an update a guest framework received: a `task-N` that
    /// finished with the greeting its input asks for, or ended otherwise.
    pub fn tally_guest(&mut self, status: &TaskStatus) {
        let n = status
            .task_id
            .as_str()
            .strip_prefix("task-")
            .and_then(|n| n.parse::<usize>().ok());
        let Some(n) = n else { return };
        let want = format!("hello, task-{n}").into_bytes();
        match status.state {
            TaskState::Finished if status.output.as_deref() == Some(want.as_slice()) => {
                self.finished.insert(n);
            }
            TaskState::Finished => {
                self.failed.insert(n, format!("task-{n}: wrong output"));
            }
            st if st.is_terminal() => {
                self.failed
                    .insert(n, format!("task-{n}: {st} {:?}", status.reason));
            }
            _ => {}
        }
    }

    /// What to ask the master once subscribed (again): the state of every
    /// task launched and not heard to end.
    /// Revives offers too: a master that kept the framework may still
    /// hold it suppressed.
    pub fn subscribed(&mut self) -> Vec<Call> {
        self.suppressed = false;
        let mut calls = Vec::new();
        if !self.told.open.is_empty() {
            calls.push(Call::Reconcile {
                tasks: self.told.open.iter().cloned().collect(),
            });
        }
        calls.push(Call::Revive);
        calls
    }

    /// Every unit still to be done counts as failed (the framework is gone).
    pub fn abandon(&mut self, why: &str) {
        let open: Vec<usize> = self
            .pending
            .drain(..)
            .map(|(n, _)| n)
            .chain(
                self.told
                    .open
                    .iter()
                    .filter_map(|t| self.attempts.get(t).map(|a| a.0)),
            )
            .collect();
        for n in open {
            self.failed.entry(n).or_insert_with(|| why.to_string());
        }
    }
}

/// Attempt `attempt` of unit `n`: `task-N`, then `task-N.A`.
pub fn sim_task(n: usize, attempt: u32, resources: &Resources) -> TaskInfo {
    let id = if attempt == 0 {
        format!("task-{n}")
    } else {
        format!("task-{n}.{attempt}")
    };
    TaskInfo {
        task_id: TaskId::new(id.clone()).unwrap_or_else(|_| unreachable!("task-N is a valid id")),
        name: format!("task {n}"),
        resources: resources.clone(),
        // A stored artifact: an agent fetches it before its first launch.
        kind: TaskKind::wasm(Artifact::Stored(Digest::of(b"sim task")), id.into_bytes()),
        limits: TaskLimits::default(),
    }
}
