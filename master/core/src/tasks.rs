//! The master's book of tasks: every task it knows, with indexes by agent
//! and by framework and the set of tasks on revocable resources, so that
//! an input about one agent or one framework costs time in proportion to
//! its own tasks, never to all tasks in the cluster; and counts of tasks
//! by framework and state and of live tasks by agent, so that the
//! operator's views (polled each second by every open web UI) cost time
//! in proportion to frameworks and agents, not tasks.

use crate::index::{file, unfile};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use stoa_allocator::Allocation;
use stoa_proto::{AgentId, FrameworkId, TaskId, TaskState, UpdateId};

pub(crate) type TaskKey = (FrameworkId, TaskId);

type Fixed = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

#[derive(Debug)]
pub(crate) struct TaskEntry {
    pub(crate) agent: AgentId,
    /// Where its resources came from; given back to the allocator when the
    /// task ends.
    pub(crate) allocation: Allocation,
    /// Changed only through [`Tasks::set_state`], which keeps the counts.
    pub(crate) state: TaskState,
    /// Launched on revocable resources: may be preempted.
    pub(crate) revocable: bool,
    /// Being killed by the master for a role below its guarantee.
    pub(crate) preempting: bool,
    /// The update that made the task terminal; its acknowledgement ends the
    /// task's life in the master.
    pub(crate) terminal_update: Option<UpdateId>,
    /// A kill was asked for: sent again if its agent comes back from an
    /// unreachable spell with the task still running.
    pub(crate) kill_requested: bool,
    /// When the accept that launched it was handled (for the launch
    /// latency metric; a task recovered from an agent: when it was).
    pub(crate) launched_at: stoa_proto::Time,
}

/// Tasks and their indexes. An entry's agent and revocability never
/// change once it is in the book, so the indexes follow inserts and
/// removals only.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    /// Hashed, not ordered: a lookup costs a hash and a probe or two, not
    /// a walk down a tree comparing strings, each comparison a likely
    /// cache miss in a book of a million tasks. The hasher is fixed, so
    /// runs are repeatable.
    entries: HashMap<TaskKey, TaskEntry, Fixed>,
    by_agent: HashMap<AgentId, BTreeSet<TaskKey>>,
    by_framework: HashMap<FrameworkId, BTreeSet<TaskId>>,
    revocable: BTreeSet<TaskKey>,
    /// Tasks of each framework by state (ended ones still in the book
    /// included).
    states: HashMap<FrameworkId, BTreeMap<TaskState, usize>>,
    /// Tasks not yet ended on each agent.
    live_on_agent: HashMap<AgentId, usize>,
}

impl Tasks {
    pub(crate) fn get(&self, key: &TaskKey) -> Option<&TaskEntry> {
        self.entries.get(key)
    }

    pub(crate) fn get_mut(&mut self, key: &TaskKey) -> Option<&mut TaskEntry> {
        self.entries.get_mut(key)
    }

    pub(crate) fn contains_key(&self, key: &TaskKey) -> bool {
        self.entries.contains_key(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every task, in no particular order (operators, checks; a walk of
    /// the cluster).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&TaskKey, &TaskEntry)> {
        self.entries.iter()
    }

    /// Books a task; a task already booked under `key` is replaced.
    pub(crate) fn insert(&mut self, key: TaskKey, entry: TaskEntry) {
        self.remove(&key);
        file(&mut self.by_agent, entry.agent.clone(), key.clone());
        file(&mut self.by_framework, key.0.clone(), key.1.clone());
        if entry.revocable {
            self.revocable.insert(key.clone());
        }
        self.count(&key.0, &entry.agent, entry.state, 1);
        self.entries.insert(key, entry);
    }

    pub(crate) fn remove(&mut self, key: &TaskKey) -> Option<TaskEntry> {
        let entry = self.entries.remove(key)?;
        unfile(&mut self.by_agent, &entry.agent, key);
        unfile(&mut self.by_framework, &key.0, &key.1);
        self.revocable.remove(key);
        self.count(&key.0, &entry.agent, entry.state, -1);
        Some(entry)
    }

    /// Moves a task to `state`; returns the state it was in.
    pub(crate) fn set_state(&mut self, key: &TaskKey, state: TaskState) -> Option<TaskState> {
        let entry = self.entries.get_mut(key)?;
        let (was, agent) = (entry.state, entry.agent.clone());
        entry.state = state;
        self.count(&key.0, &agent, was, -1);
        self.count(&key.0, &agent, state, 1);
        Some(was)
    }

    /// Adds (`by` 1) or takes away (`by` -1) one task of `fw` on `agent`
    /// in `state` from the counts.
    fn count(&mut self, fw: &FrameworkId, agent: &AgentId, state: TaskState, by: isize) {
        let by_state = self.states.entry(fw.clone()).or_default();
        let n = by_state.entry(state).or_default();
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            by_state.remove(&state);
            if by_state.is_empty() {
                self.states.remove(fw);
            }
        }
        if !state.is_terminal() {
            let live = self.live_on_agent.entry(agent.clone()).or_default();
            *live = live.saturating_add_signed(by);
            if *live == 0 {
                self.live_on_agent.remove(agent);
            }
        }
    }

    /// How many of `fw`'s tasks are in each state.
    pub(crate) fn states_of(&self, fw: &FrameworkId) -> impl Iterator<Item = (TaskState, usize)> {
        self.states
            .get(fw)
            .into_iter()
            .flatten()
            .map(|(s, n)| (*s, *n))
    }

    /// Tasks not yet ended on `agent`.
    pub(crate) fn live_on(&self, agent: &AgentId) -> usize {
        self.live_on_agent.get(agent).copied().unwrap_or(0)
    }

    /// Frameworks with tasks in the book, in order.
    pub(crate) fn frameworks(&self) -> Vec<&FrameworkId> {
        let mut all: Vec<&FrameworkId> = self.by_framework.keys().collect();
        all.sort_unstable();
        all
    }

    /// `fw`'s task ids from `from` on, in order.
    pub(crate) fn ids_of<'a>(
        &'a self,
        fw: &FrameworkId,
        from: std::ops::Bound<TaskId>,
    ) -> impl Iterator<Item = &'a TaskId> + 'a {
        self.by_framework
            .get(fw)
            .into_iter()
            .flat_map(move |ids| ids.range((from.clone(), std::ops::Bound::Unbounded)))
    }

    /// Whether the counts agree with the book (for checks): each is
    /// recounted from the entries.
    pub(crate) fn counts_hold(&self) -> Result<(), String> {
        let mut states: HashMap<FrameworkId, BTreeMap<TaskState, usize>> = HashMap::new();
        let mut live: HashMap<AgentId, usize> = HashMap::new();
        for ((fw, _), t) in &self.entries {
            *states
                .entry(fw.clone())
                .or_default()
                .entry(t.state)
                .or_default() += 1;
            if !t.state.is_terminal() {
                *live.entry(t.agent.clone()).or_default() += 1;
            }
        }
        if states != self.states {
            return Err(format!(
                "task counts by state {:?} differ from the book's {states:?}",
                self.states
            ));
        }
        if live != self.live_on_agent {
            return Err(format!(
                "live tasks by agent {:?} differ from the book's {live:?}",
                self.live_on_agent
            ));
        }
        Ok(())
    }

    /// Keys of the tasks on `agent` that `pred` selects, collected so the
    /// caller may change the book while walking them.
    pub(crate) fn on_agent(
        &self,
        agent: &AgentId,
        pred: impl Fn(&TaskEntry) -> bool,
    ) -> Vec<TaskKey> {
        self.by_agent
            .get(agent)
            .into_iter()
            .flatten()
            .filter(|k| self.entries.get(*k).is_some_and(&pred))
            .cloned()
            .collect()
    }

    /// Keys of the tasks of `fw` that `pred` selects.
    pub(crate) fn of_framework(
        &self,
        fw: &FrameworkId,
        pred: impl Fn(&TaskEntry) -> bool,
    ) -> Vec<TaskKey> {
        self.by_framework
            .get(fw)
            .into_iter()
            .flatten()
            .map(|id| (fw.clone(), id.clone()))
            .filter(|k| self.entries.get(k).is_some_and(&pred))
            .collect()
    }

    /// Live tasks on revocable resources, the only ones preemption may
    /// choose.
    pub(crate) fn revocable_live(&self) -> Vec<TaskKey> {
        self.revocable
            .iter()
            .filter(|k| self.entries.get(*k).is_some_and(|t| !t.state.is_terminal()))
            .cloned()
            .collect()
    }

    /// Whether a preemption is still under way.
    pub(crate) fn preempting(&self) -> bool {
        self.revocable.iter().any(|k| {
            self.entries
                .get(k)
                .is_some_and(|t| t.preempting && !t.state.is_terminal())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(agent: &str, revocable: bool) -> TaskEntry {
        TaskEntry {
            agent: agent.parse().expect("id"),
            allocation: Allocation::default(),
            state: TaskState::Running,
            revocable,
            preempting: false,
            terminal_update: None,
            kill_requested: false,
            launched_at: stoa_proto::Time::ZERO,
        }
    }

    fn key(fw: &str, task: &str) -> TaskKey {
        (fw.parse().expect("id"), task.parse().expect("id"))
    }

    #[test]
    fn the_indexes_follow_inserts_and_removals() {
        let mut t = Tasks::default();
        t.insert(key("f1", "a"), entry("a1", false));
        t.insert(key("f1", "b"), entry("a2", true));
        t.insert(key("f2", "a"), entry("a1", false));
        let a1: AgentId = "a1".parse().expect("id");
        let f1: FrameworkId = "f1".parse().expect("id");
        assert_eq!(
            t.on_agent(&a1, |_| true),
            vec![key("f1", "a"), key("f2", "a")]
        );
        assert_eq!(
            t.of_framework(&f1, |_| true),
            vec![key("f1", "a"), key("f1", "b")]
        );
        assert_eq!(t.revocable_live(), vec![key("f1", "b")]);
        // Replacing an entry moves it between agents.
        t.insert(key("f1", "a"), entry("a2", false));
        assert_eq!(t.on_agent(&a1, |_| true), vec![key("f2", "a")]);
        t.remove(&key("f1", "b"));
        assert!(t.revocable_live().is_empty());
        t.remove(&key("f2", "a"));
        assert!(t.on_agent(&a1, |_| true).is_empty());
        assert!(
            !t.by_agent.contains_key(&a1),
            "empty index entries are dropped"
        );
        assert_eq!(t.len(), 1);
    }
}
