//! A task's `cpus` bounds the CPU its wasm gets: two frameworks' tasks spin
//! side by side, one offered a whole core, one a quarter; each gets what it
//! was offered, not what it could grab. (Its own test binary, so no other
//! test competes for the cores while it measures.)

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use stoa_agent::core::TaskEvent;
use stoa_agent::exec::wasm::WasmRuntime;
use stoa_agent::exec::wasm::limits::thread_cpu_time;
use stoa_proto::{Artifact, Reason, Resources, TaskId, TaskInfo, TaskKind, TaskLimits};
use stoa_tests::misbehave_wasm;

/// Spins for `secs` of wall-clock time with `millicpus`; returns the share
/// of one core it got.
fn spin(rt: &WasmRuntime, millicpus: u64, wasm: Vec<u8>, secs: f64) -> anyhow::Result<f64> {
    let task = TaskInfo {
        task_id: TaskId::new("spin")?,
        name: "spin".into(),
        resources: Resources::new().with_millicpus(millicpus).with_mem_mib(32),
        kind: TaskKind::wasm(Artifact::inline(wasm), b"spin".to_vec()),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some((secs * 1000.0) as u64),
        },
    };
    let (cpu0, wall0) = (thread_cpu_time(), Instant::now());
    let end = rt.run(&task, None, Arc::new(AtomicBool::new(false)), None, || {});
    let (cpu, wall) = (thread_cpu_time() - cpu0, wall0.elapsed());
    anyhow::ensure!(
        matches!(
            end,
            TaskEvent::Ended {
                reason: Reason::Timeout,
                ..
            }
        ),
        "the spinning task should end by its timeout, got {end:?}"
    );
    Ok(cpu.as_secs_f64() / wall.max(Duration::from_millis(1)).as_secs_f64())
}

#[test]
fn each_task_gets_the_cpu_share_it_was_offered() -> anyhow::Result<()> {
    let rt = Arc::new(WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?);
    let wasm = misbehave_wasm()?;
    // Compile once before measuring.
    spin(&rt, 1000, wasm.clone(), 0.05)?;
    let quarter = {
        let (rt, wasm) = (rt.clone(), wasm.clone());
        std::thread::spawn(move || spin(&rt, 250, wasm, 2.0))
    };
    let whole = spin(&rt, 1000, wasm, 2.0)?;
    let quarter = quarter
        .join()
        .map_err(|_| anyhow::anyhow!("the task thread panicked"))??;
    assert!(
        (0.15..=0.32).contains(&quarter),
        "a task offered 0.25 cpus used {quarter:.2} of a core"
    );
    assert!(
        whole > 2.0 * quarter,
        "a task offered a whole core used {whole:.2}, its neighbour {quarter:.2}"
    );
    Ok(())
}
