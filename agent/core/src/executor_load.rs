//! What each framework's running wasm tasks were given: their executor's
//! cgroup is sized to the sum, which is kept rather than added up again at
//! every launch (a framework may run thousands of tasks at once).

use std::collections::HashMap;
use stoa_proto::{FrameworkId, TaskId};

/// Millicpus and MiB of memory.
pub type Load = (u64, u64);

#[derive(Debug, Default)]
pub struct ExecutorLoad {
    frameworks: HashMap<FrameworkId, Tasks>,
}

#[derive(Debug, Default)]
struct Tasks {
    each: HashMap<TaskId, Load>,
    total: Load,
}

impl ExecutorLoad {
    /// Counts a running task (again: a task already counted is replaced).
    pub fn add(&mut self, framework: &FrameworkId, task: &TaskId, load: Load) {
        let tasks = self.frameworks.entry(framework.clone()).or_default();
        if let Some(old) = tasks.each.insert(task.clone(), load) {
            tasks.total = sub(tasks.total, old);
        }
        tasks.total = (
            tasks.total.0.saturating_add(load.0),
            tasks.total.1.saturating_add(load.1),
        );
    }

    /// Stops counting a task; false if it was not counted (not a wasm task).
    pub fn remove(&mut self, framework: &FrameworkId, task: &TaskId) -> bool {
        let Some(tasks) = self.frameworks.get_mut(framework) else {
            return false;
        };
        let Some(load) = tasks.each.remove(task) else {
            return false;
        };
        tasks.total = sub(tasks.total, load);
        if tasks.each.is_empty() {
            self.frameworks.remove(framework);
        }
        true
    }

    /// What the framework's running wasm tasks were given in all.
    pub fn total(&self, framework: &FrameworkId) -> Load {
        self.frameworks.get(framework).map_or((0, 0), |t| t.total)
    }
}

fn sub(a: Load, b: Load) -> Load {
    (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_tasks_in_and_out() -> Result<(), stoa_proto::IdError> {
        let (fw, other) = (FrameworkId::new("f1")?, FrameworkId::new("f2")?);
        let (a, b) = (TaskId::new("a")?, TaskId::new("b")?);
        let mut load = ExecutorLoad::default();
        load.add(&fw, &a, (100, 16));
        load.add(&fw, &b, (250, 32));
        load.add(&other, &a, (1000, 1));
        assert_eq!(load.total(&fw), (350, 48));
        // Counted again with new figures: replaced, not added.
        load.add(&fw, &a, (200, 16));
        assert_eq!(load.total(&fw), (450, 48));
        assert!(load.remove(&fw, &a));
        assert!(!load.remove(&fw, &a), "already gone");
        assert_eq!(load.total(&fw), (250, 32));
        assert!(load.remove(&fw, &b));
        assert_eq!(load.total(&fw), (0, 0));
        assert_eq!(load.total(&other), (1000, 1));
        Ok(())
    }
}
