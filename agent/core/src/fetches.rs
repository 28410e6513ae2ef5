//! Launches that wait for their artifact: the agent fetches each missing
//! artifact once, however many tasks wait for it, then starts them or ends
//! them with the fetch's failure. A kill of a waiting launch ends it there
//! and then: it never reaches an executor.

use std::collections::BTreeMap;
use stoa_proto::{Digest, FrameworkId, TaskId, TaskInfo};

#[derive(Debug, Default)]
pub(crate) struct Fetches {
    waiting: BTreeMap<Digest, Vec<(FrameworkId, Box<TaskInfo>)>>,
    /// The digest each waiting task waits for, so a kill finds it without
    /// walking every queue.
    of_task: BTreeMap<(FrameworkId, TaskId), Digest>,
}

impl Fetches {
    /// Queues a launch; true if its artifact is not being fetched yet (the
    /// caller starts the fetch).
    pub(crate) fn wait(
        &mut self,
        digest: Digest,
        framework_id: FrameworkId,
        task: Box<TaskInfo>,
    ) -> bool {
        self.of_task
            .insert((framework_id.clone(), task.task_id.clone()), digest);
        let queue = self.waiting.entry(digest).or_default();
        queue.push((framework_id, task));
        queue.len() == 1
    }

    /// The launches that waited for `digest`, in the order they came.
    pub(crate) fn done(&mut self, digest: &Digest) -> Vec<(FrameworkId, Box<TaskInfo>)> {
        let launches = self.waiting.remove(digest).unwrap_or_default();
        for (f, t) in &launches {
            self.of_task.remove(&(f.clone(), t.task_id.clone()));
        }
        launches
    }

    /// Takes a waiting launch out of its queue; false if it was not waiting.
    pub(crate) fn cancel(&mut self, framework_id: &FrameworkId, task_id: &TaskId) -> bool {
        let key = (framework_id.clone(), task_id.clone());
        let Some(digest) = self.of_task.remove(&key) else {
            return false;
        };
        if let Some(queue) = self.waiting.get_mut(&digest) {
            queue.retain(|(f, t)| !(f == framework_id && &t.task_id == task_id));
        }
        true
    }

    pub(crate) fn is_waiting(&self, framework_id: &FrameworkId, task_id: &TaskId) -> bool {
        self.of_task
            .contains_key(&(framework_id.clone(), task_id.clone()))
    }
}
