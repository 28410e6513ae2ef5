//! Wasm frameworks end to end: `stoa framework run` hosts a scheduler
//! component against a real cluster.

use stoa_tests::{Cluster, wasm_path};

fn path(file: &str, package: &str) -> anyhow::Result<String> {
    Ok(wasm_path(file, package)?.display().to_string())
}

#[test]
fn the_hello_wasm_scheduler_runs_its_tasks_and_tears_down() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let scheduler = path("hello_wasm_scheduler", "hello-wasm-scheduler")?;
    let task = path("hello_task", "hello-task")?;
    let out = cluster.stoa(&[
        "framework",
        "run",
        &scheduler,
        "--artifact",
        &format!("task={task}"),
        "--env",
        "HELLO_TASKS=30",
        "--json",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", cluster.logs());
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(line["ended"], "teardown");
    assert!(stderr.contains("all 30 tasks finished"), "{stderr}");
    Ok(())
}

#[test]
fn a_component_that_is_not_a_scheduler_is_refused_clearly() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    let task = path("hello_task", "hello-task")?;
    let out = cluster.stoa(&["framework", "run", &task])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a stoa:scheduler"), "{stderr}");

    // A scheduler without its configuration says what is missing, and
    // ends its framework instead of idling.
    let scheduler = path("hello_wasm_scheduler", "hello-wasm-scheduler")?;
    let out = cluster.stoa(&["framework", "run", &scheduler])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STOA_ARTIFACT_TASK is not set"), "{stderr}");
    Ok(())
}
