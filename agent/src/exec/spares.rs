//! Task directories made ahead of launches. Making a directory pair is
//! most of a small wasm task's start (the file system allocates inodes);
//! a thread keeps a few ready in `<framework>/.spare/`, and a launch
//! renames one into place, which is one cheap call. No task id starts
//! with a dot, so `.spare` never meets a task's directory.
//!
//! A spare is an empty directory with an empty `sandbox/` inside, made
//! by this process: nothing a task wrote is ever handed to another.

use crate::exec::task_dir::TaskDir;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// How many directories wait ready.
const READY: usize = 16;
/// The thread is woken to refill only below this many: woken at every
/// launch, it competed with the launch for the CPU and for the parent
/// directory's lock, which showed as a tenth of a launch's latency.
const LOW: usize = READY / 2;

/// A framework's spare task directories, refilled by a thread of their
/// own until dropped.
#[derive(Debug)]
pub struct Spares {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<PathBuf>,
    made: u64,
    stop: bool,
}

impl Spares {
    /// Keeps spares in `<tasks>/.spare`, where `tasks` holds the
    /// framework's task directories. What an earlier executor left there
    /// is removed first.
    pub fn start(tasks: &Path) -> std::io::Result<Spares> {
        let shared = Arc::new(Shared {
            dir: tasks.join(".spare"),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let refill = shared.clone();
        std::thread::Builder::new()
            .name("stoa-spares".into())
            .spawn(move || refill.run())?;
        Ok(Spares { shared })
    }

    /// A fresh task directory at `root`: a spare moved there, or, when
    /// none is ready or it cannot move, one made now.
    pub fn take(&self, root: &Path) -> std::io::Result<TaskDir> {
        let spare = {
            let mut state = self.shared.lock();
            let spare = state.ready.pop_front();
            if state.ready.len() < LOW {
                self.shared.wake.notify_one();
            }
            spare
        };
        if let Some(spare) = spare {
            // Fails when `root` exists (a task id used again) or is on
            // another file system: then the spare is simply dropped.
            if std::fs::rename(&spare, root).is_ok() {
                return Ok(TaskDir::existing(root));
            }
            let _ = std::fs::remove_dir_all(&spare);
        }
        TaskDir::create(root)
    }
}

impl Drop for Spares {
    /// Stops the thread and removes what is left, here: an executor drops
    /// its spares as it exits, and the thread would not outlive it.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        let _ = std::fs::remove_dir_all(&self.shared.dir);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "no spare task directories; making each at launch");
            return;
        }
        loop {
            let next = {
                let mut state = self.lock();
                while !state.stop && state.ready.len() >= READY {
                    state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                if state.stop {
                    break;
                }
                state.made += 1;
                self.dir.join(format!("{}", state.made))
            };
            // Never `create_dir_all`: once the spares are dropped and
            // removed, nothing may bring the directory back.
            let made =
                std::fs::create_dir(&next).and_then(|()| std::fs::create_dir(next.join("sandbox")));
            let mut state = self.lock();
            match made {
                Ok(()) if !state.stop => state.ready.push_back(next),
                Ok(()) => break,
                Err(_) if state.stop => break,
                Err(e) => {
                    tracing::warn!(dir = %next.display(), error = %e, "cannot make a spare task directory; making each at launch");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn ready(spares: &Spares) -> usize {
        spares.shared.lock().ready.len()
    }

    fn wait_until(what: impl Fn() -> bool) {
        let start = Instant::now();
        while !what() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn launches_take_ready_directories_and_the_thread_makes_more() {
        let tasks = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tasks.path().join(".spare/old")).expect("leftover");
        let spares = Spares::start(tasks.path()).expect("spares");
        wait_until(|| ready(&spares) == READY);
        assert!(
            !tasks.path().join(".spare/old").exists(),
            "leftovers are removed"
        );

        let dir = spares.take(&tasks.path().join("t1")).expect("taken");
        assert!(dir.sandbox().is_dir());
        assert_eq!(
            std::fs::read_dir(dir.sandbox()).expect("sandbox").count(),
            0
        );
        // Refilled once fewer than half are left, not at every launch.
        for n in 2..=(READY - LOW + 1) {
            spares
                .take(&tasks.path().join(format!("t{n}")))
                .expect("taken");
        }
        wait_until(|| ready(&spares) == READY);

        // A task id used again: its old directory is replaced, fresh.
        std::fs::write(dir.sandbox().join("left"), b"x").expect("write");
        let again = spares.take(&tasks.path().join("t1")).expect("taken again");
        assert_eq!(
            std::fs::read_dir(again.sandbox()).expect("sandbox").count(),
            0
        );

        drop(spares);
        assert!(
            !tasks.path().join(".spare").exists(),
            "removed when dropped"
        );
    }
}
