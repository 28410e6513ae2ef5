//! Where collected task directories go on their way out.
//!
//! A directory is renamed into the trash at once, on the agent's loop: a
//! task launched again under the same id (its launch goes out after the
//! rename) gets a fresh directory that nothing removes. The slow part,
//! deleting the files, happens on a blocking thread.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    /// Names are `<stamp>-<n>`, the stamp this process's start, so they
    /// never meet an earlier process's leftovers.
    stamp: u128,
    next: u64,
    /// Moved in, not yet handed to a thread to delete.
    moved: Vec<PathBuf>,
}

impl Trash {
    /// The trash at `dir`, made if missing; what an earlier process left
    /// in it is deleted in the background.
    pub fn open(dir: PathBuf) -> Trash {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot make the trash directory");
        }
        let left = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        delete(left);
        Trash {
            dir,
            stamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            next: 0,
            moved: Vec::new(),
        }
    }

    /// Moves `dir` into the trash. A directory that does not exist (never
    /// made, or already gone) is no error.
    pub fn put(&mut self, dir: &Path) -> std::io::Result<()> {
        self.next += 1;
        let to = self.dir.join(format!("{}-{}", self.stamp, self.next));
        let mut moved = std::fs::rename(dir, &to);
        if moved
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::NotFound)
            && dir.exists()
        {
            // The trash itself is missing (removed by hand?): make it again.
            moved = std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::rename(dir, &to));
        }
        match moved {
            Ok(()) => {
                self.moved.push(to);
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes, off the loop, what was moved in since the last call.
    pub fn empty(&mut self) {
        delete(std::mem::take(&mut self.moved));
    }
}

fn delete(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot delete a collected task directory; remove it by hand");
            }
        }
    });
}
