//! `stoa new` writes crates that `stoa build` turns into components, and
//! those run as a framework on a real cluster, unmodified.

use std::path::Path;
use std::process::Command;
use stoa_tests::{Cluster, stoa_bin};

/// Runs `stoa ARGS` with the workspace's target directory, so the
/// scaffolded crates reuse what is already built.
fn stoa(args: &[&str]) -> anyhow::Result<String> {
    let target = stoa_bin()?
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    let out = Command::new(stoa_bin()?)
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "stoa {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn new_crates_build_into_components_that_run_as_a_framework() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let task_dir = dir.path().join("shout");
    let sched_dir = dir.path().join("shouter");
    let path = |p: &Path| p.display().to_string();
    stoa(&["new", "task", "shout", "--dir", &path(&task_dir)])?;
    stoa(&["new", "scheduler", "shouter", "--dir", &path(&sched_dir)])?;
    let refused = Command::new(stoa_bin()?)
        .args(["new", "task", "shout", "--dir", &path(&task_dir)])
        .output()?;
    assert!(!refused.status.success(), "created over an existing crate");

    let task = stoa(&["build", &path(&task_dir)])?;
    let scheduler = stoa(&["build", &path(&sched_dir), "--json"])?;
    let scheduler: serde_json::Value = serde_json::from_str(&scheduler)?;
    let scheduler = scheduler["component"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let task = task.trim().to_string();
    assert!(task.ends_with("shout.wasm"), "{task}");

    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    let artifact = format!("task={task}");
    let out = cluster.stoa(&[
        "framework",
        "run",
        &scheduler,
        "--artifact",
        &artifact,
        "--env",
        "TASKS=5",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("all tasks finished"), "{stderr}");
    Ok(())
}
