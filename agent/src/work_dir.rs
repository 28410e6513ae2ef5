//! The layout of an agent's work directory: executors' state, task
//! directories, the artifact store, compiled code and the trash.

use std::path::{Path, PathBuf};
use stoa_proto::{FrameworkId, TaskId};

/// The layout of an agent's work directory.
#[derive(Debug, Clone)]
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn executors(&self) -> PathBuf {
        self.0.join("executors")
    }
    pub fn tasks(&self) -> PathBuf {
        self.0.join("tasks")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.0.join("artifacts")
    }
    pub fn compiled(&self) -> PathBuf {
        self.0.join("compiled")
    }
    /// Task directories on their way out: moved here at once, removed
    /// off the loop.
    pub fn trash(&self) -> PathBuf {
        self.0.join("trash")
    }
    pub fn task(&self, framework: &FrameworkId, task: &TaskId) -> PathBuf {
        self.tasks().join(framework.as_str()).join(task.as_str())
    }
}

/// Every `<tasks>/<framework>/<task>` directory.
pub(crate) fn task_dirs(tasks: &Path) -> Vec<(FrameworkId, TaskId, PathBuf)> {
    let mut out = Vec::new();
    for fw in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
        let Ok(framework_id) = FrameworkId::new(fw.file_name().to_string_lossy()) else {
            continue;
        };
        for t in std::fs::read_dir(fw.path()).into_iter().flatten().flatten() {
            if let Ok(task_id) = TaskId::new(t.file_name().to_string_lossy()) {
                out.push((framework_id.clone(), task_id, t.path()));
            }
        }
    }
    out
}
