//! Each limit of a wasm task ends it with its own state and reason, and never
//! harms the runtime: a task that misbehaves on request, run by the agent's
//! wasm executor.

use std::sync::Arc;
use std::time::{Duration, Instant};
use stoa_agent::core::TaskEvent;
use stoa_agent::exec::kill::Kill;
use stoa_agent::exec::wasm::WasmRuntime;
use stoa_proto::{Artifact, Reason, Resources, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState};
use stoa_tests::misbehave_wasm;

fn task(input: &str, mem_mib: u64, limits: TaskLimits) -> anyhow::Result<TaskInfo> {
    Ok(TaskInfo {
        task_id: TaskId::new("t")?,
        name: input.into(),
        resources: Resources::new().with_millicpus(100).with_mem_mib(mem_mib),
        kind: TaskKind::wasm(
            Artifact::inline(misbehave_wasm()?),
            input.as_bytes().to_vec(),
        ),
        limits,
    })
}

fn ended(event: &TaskEvent) -> (TaskState, Reason, &str) {
    match event {
        TaskEvent::Ended {
            state,
            reason,
            message,
            ..
        } => (*state, *reason, message.as_str()),
        other => panic!("expected the task to end badly, got {other:?}"),
    }
}

fn runtime() -> anyhow::Result<WasmRuntime> {
    WasmRuntime::new().map_err(|e| anyhow::anyhow!("cannot start wasmtime: {e:#}"))
}

fn run(rt: &WasmRuntime, t: &TaskInfo) -> TaskEvent {
    rt.run(t, None, &Kill::default(), None, || {})
}

/// Runs `t` on a thread of its own, kills it 100 ms in, and returns how it
/// ended and how long the kill took.
fn kill_after_100ms(rt: &Arc<WasmRuntime>, t: TaskInfo) -> anyhow::Result<(TaskEvent, Duration)> {
    let kill = Kill::default();
    let (rt2, kill2) = (rt.clone(), kill.clone());
    let runner = std::thread::spawn(move || rt2.run(&t, None, &kill2, None, || {}));
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    kill.trigger();
    let end = runner
        .join()
        .map_err(|_| anyhow::anyhow!("task thread panicked"))?;
    Ok((end, asked.elapsed()))
}

#[test]
fn a_task_past_its_wall_clock_limit_times_out() -> anyhow::Result<()> {
    let rt = runtime()?;
    let started = Instant::now();
    let end = run(
        &rt,
        &task(
            "spin",
            32,
            TaskLimits {
                fuel: None,
                timeout_ms: Some(200),
            },
        )?,
    );
    let (state, reason, message) = ended(&end);
    assert_eq!(
        (state, reason),
        (TaskState::Failed, Reason::Timeout),
        "{message}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    Ok(())
}

/// A task blocked in a host call (here a WASI sleep) runs no wasm, so no
/// epoch tick reaches it: its timeout and its kill must still end it.
#[test]
fn a_sleeping_task_is_timed_out_and_killed_in_its_host_call() -> anyhow::Result<()> {
    let rt = Arc::new(runtime()?);
    let limits = TaskLimits {
        fuel: None,
        timeout_ms: Some(200),
    };
    let started = Instant::now();
    let end = run(&rt, &task("sleep:20000", 32, limits)?);
    assert_eq!(ended(&end).1, Reason::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let (end, took) = kill_after_100ms(&rt, task("sleep:20000", 32, TaskLimits::default())?)?;
    assert_eq!(ended(&end).0, TaskState::Killed);
    assert!(took < Duration::from_secs(1), "kill took {took:?}");
    Ok(())
}

#[test]
fn a_spinning_task_runs_out_of_fuel() -> anyhow::Result<()> {
    let rt = runtime()?;
    let end = run(
        &rt,
        &task(
            "spin",
            32,
            TaskLimits {
                fuel: Some(50_000_000),
                timeout_ms: Some(30_000),
            },
        )?,
    );
    assert_eq!(ended(&end).1, Reason::FuelExhausted);
    Ok(())
}

#[test]
fn a_kill_stops_a_running_task_within_a_tick() -> anyhow::Result<()> {
    let rt = Arc::new(runtime()?);
    let (end, took) = kill_after_100ms(&rt, task("spin", 32, TaskLimits::default())?)?;
    assert_eq!(ended(&end).0, TaskState::Killed);
    assert_eq!(ended(&end).1, Reason::KilledByScheduler);
    assert!(took < Duration::from_secs(1), "kill took {took:?}");
    Ok(())
}

#[test]
fn a_trap_reports_its_message_and_wasm_backtrace() -> anyhow::Result<()> {
    let rt = runtime()?;
    let end = run(&rt, &task("trap", 32, TaskLimits::default())?);
    let (state, reason, message) = ended(&end);
    assert_eq!((state, reason), (TaskState::Failed, Reason::Trap));
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("wasm backtrace"), "{message}");
    Ok(())
}

#[test]
fn growing_past_mem_at_run_time_is_memory_limit() -> anyhow::Result<()> {
    let rt = runtime()?;
    // Within the limit it works...
    let ok = run(&rt, &task("grow:8", 32, TaskLimits::default())?);
    assert!(
        matches!(&ok, TaskEvent::Finished { output, .. } if output.starts_with(b"grew")),
        "{ok:?}"
    );
    // ...beyond it the task fails with memory-limit, not a generic trap.
    let end = run(&rt, &task("grow:64", 16, TaskLimits::default())?);
    let (state, reason, message) = ended(&end);
    assert_eq!(
        (state, reason),
        (TaskState::Failed, Reason::MemoryLimit),
        "{message}"
    );
    Ok(())
}

#[test]
fn a_task_cannot_read_outside_its_sandbox() -> anyhow::Result<()> {
    let rt = runtime()?;
    for path in ["/etc/passwd", "../../etc/passwd", "/proc/self/environ"] {
        let end = run(
            &rt,
            &task(&format!("read:{path}"), 32, TaskLimits::default())?,
        );
        let (state, reason, message) = ended(&end);
        assert_eq!(
            (state, reason),
            (TaskState::Failed, Reason::TaskFailed),
            "{message}"
        );
        assert!(message.contains("cannot read"), "{message}");
    }
    Ok(())
}

#[test]
fn misbehaving_tasks_do_not_harm_their_neighbours() -> anyhow::Result<()> {
    let rt = Arc::new(runtime()?);
    let inputs = ["trap", "grow:64", "spin", "echo-me", "read:/etc/passwd"];
    let handles: Vec<_> = inputs
        .iter()
        .map(|input| {
            let t = task(
                input,
                16,
                TaskLimits {
                    fuel: None,
                    timeout_ms: Some(300),
                },
            );
            let rt = rt.clone();
            std::thread::spawn(move || t.map(|t| run(&rt, &t)))
        })
        .collect();
    let mut ends = Vec::new();
    for h in handles {
        ends.push(
            h.join()
                .map_err(|_| anyhow::anyhow!("task thread panicked"))??,
        );
    }
    assert_eq!(
        ends[3],
        TaskEvent::Finished {
            output: b"echo-me".to_vec(),
            exit_code: None,
        }
    );
    assert_eq!(ended(&ends[2]).1, Reason::Timeout);
    Ok(())
}
