//! The agent's three parts import downwards only: the daemon (`driver`,
//! `executors`, collection) starts executor processes; the executor
//! process (`executor`) runs tasks through the task runtimes (`exec`);
//! the runtimes know neither. What they share sits in modules of its own
//! (`deadline`, `executor_dir`, `cgroups`, `core`).

use std::path::Path;

/// The `crate::` modules a source file names.
fn imports(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("readable source");
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_daemon_the_executor_and_the_task_runtimes_import_downwards_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let daemon = ["driver", "executors", "log_server", "trash", "work_dir"];
    let mut runtimes = Vec::new();
    sources(&src.join("exec"), &mut runtimes);
    for file in &runtimes {
        for m in imports(file) {
            assert!(
                !daemon.contains(&m.as_str()) && m != "executor",
                "{} (a task runtime) imports crate::{m}",
                file.display()
            );
        }
    }
    for m in imports(&src.join("executor.rs")) {
        assert!(
            !daemon.contains(&m.as_str()),
            "the executor process imports crate::{m} of the daemon"
        );
    }
    for file in [
        "driver.rs",
        "executors.rs",
        "log_server.rs",
        "trash.rs",
        "work_dir.rs",
    ] {
        for m in imports(&src.join(file)) {
            assert_ne!(
                m, "executor",
                "{file} (the daemon) imports the executor process's module"
            );
        }
    }
}
