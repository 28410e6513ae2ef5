//! A task's `cpus` bounds the CPU its wasm gets: two frameworks' tasks spin
//! side by side, one offered a whole core, one a quarter; each gets what it
//! was offered, not what it could grab. (Its own test binary, so no other
//! test competes for the cores while it measures.)

use std::sync::Arc;
use std::time::{Duration, Instant};
use stoa_agent::core::TaskEvent;
use stoa_agent::exec::kill::Kill;
use stoa_agent::exec::wasm::limits::thread_cpu_time;
use stoa_agent::exec::wasm::{WasmRuntime, task_runtime};
use stoa_proto::{Artifact, Reason, Resources, TaskId, TaskInfo, TaskKind, TaskLimits};
use stoa_tests::misbehave_wasm;

fn task(input: &str, millicpus: u64, wasm: Vec<u8>, timeout: Duration) -> anyhow::Result<TaskInfo> {
    Ok(TaskInfo {
        task_id: TaskId::new(input.replace(':', "-"))?,
        name: input.into(),
        resources: Resources::new().with_millicpus(millicpus).with_mem_mib(32),
        kind: TaskKind::wasm(Artifact::inline(wasm), input.as_bytes().to_vec()),
        limits: TaskLimits {
            fuel: None,
            timeout_ms: Some(timeout.as_millis() as u64),
        },
    })
}

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
    let end = rt.run(&task, None, &Kill::default(), None, || {});
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

/// An executor runs its wasm tasks as futures on one thread per core. On a
/// single thread, a task spinning on a whole core must not keep the others
/// waiting, and a quarter-core task beside it must be charged only its own
/// CPU: it keeps to its quarter, not less (charged for its neighbour's CPU
/// too) and not more.
#[test]
fn tasks_sharing_one_thread_take_turns_and_keep_their_shares() -> anyhow::Result<()> {
    let rt = Arc::new(WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?);
    let wasm = misbehave_wasm()?;
    let minute = Duration::from_secs(60);
    let work = task("work:10000000", 1000, wasm.clone(), minute)?;
    // Compiles, then times the work alone on a whole core.
    rt.run(&work, None, &Kill::default(), None, || {});
    let alone = Instant::now();
    let end = rt.run(&work, None, &Kill::default(), None, || {});
    let alone = alone.elapsed();
    anyhow::ensure!(matches!(end, TaskEvent::Finished { .. }), "{end:?}");

    let one_thread = task_runtime(1)?;
    let spinner = Kill::default();
    let spinning = {
        let (rt, kill, t) = (
            rt.clone(),
            spinner.clone(),
            task("spin", 1000, wasm.clone(), minute)?,
        );
        one_thread.spawn(async move { rt.run_async(&t, None, &kill, None, || {}).await })
    };
    let timed = |t: TaskInfo| {
        let rt = rt.clone();
        one_thread.spawn(async move {
            let started = Instant::now();
            let end = rt.run_async(&t, None, &Kill::default(), None, || {}).await;
            (end, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let (short, short_took) =
        one_thread.block_on(timed(task("hello", 1000, wasm.clone(), minute)?))?;
    let quarter_work = TaskInfo {
        resources: Resources::new().with_millicpus(250).with_mem_mib(32),
        ..work
    };
    let (quarter, quarter_took) = one_thread.block_on(timed(quarter_work))?;
    spinner.trigger();
    let spun = one_thread.block_on(spinning)?;

    anyhow::ensure!(matches!(short, TaskEvent::Finished { .. }), "{short:?}");
    anyhow::ensure!(matches!(quarter, TaskEvent::Finished { .. }), "{quarter:?}");
    assert!(
        matches!(
            spun,
            TaskEvent::Ended {
                state: stoa_proto::TaskState::Killed,
                ..
            }
        ),
        "the spinner should end by its kill, got {spun:?}"
    );
    assert!(
        short_took < Duration::from_millis(500),
        "a short task waited {short_took:?} behind a spinning one"
    );
    let slowdown = quarter_took.as_secs_f64() / alone.as_secs_f64();
    assert!(
        (2.5..=6.0).contains(&slowdown),
        "work that takes {alone:?} on a whole core took {quarter_took:?} on a quarter \
         ({slowdown:.1}x; 4x expected) beside a spinning task"
    );
    Ok(())
}
