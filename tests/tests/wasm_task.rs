//! The agent's wasm executor on the real hello component: outputs, limits
//! and refusals, each with its own terminal state and reason.

use std::sync::Arc;
use stoa_agent::core::TaskEvent;
use stoa_agent::exec::kill::Kill;
use stoa_agent::exec::wasm::WasmRuntime;
use stoa_proto::{
    Artifact, Digest, Reason, Resources, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState,
};
use stoa_tests::{hello_wasm, misbehave_wasm};

fn task(artifact: Artifact, mem_mib: u64, limits: TaskLimits) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new("t").expect("valid id"),
        name: "t".into(),
        resources: Resources::new().with_millicpus(100).with_mem_mib(mem_mib),
        kind: TaskKind::wasm(artifact, b"world".to_vec()),
        limits,
    }
}

fn run(rt: &WasmRuntime, task: &TaskInfo) -> (TaskEvent, bool) {
    let mut running = false;
    let end = rt.run(task, None, &Kill::default(), None, || running = true);
    (end, running)
}

/// What the hello task answers to input `world`.
fn greeting() -> TaskEvent {
    TaskEvent::Finished {
        output: b"hello, world".to_vec(),
        exit_code: None,
    }
}

fn runtime() -> WasmRuntime {
    WasmRuntime::new().expect("wasmtime starts")
}

fn assert_ended(event: &TaskEvent, state: TaskState, reason: Reason) {
    match event {
        TaskEvent::Ended {
            state: s,
            reason: r,
            ..
        } => assert_eq!((*s, *r), (state, reason), "{event:?}"),
        other => panic!("expected {state} ({reason}), got {other:?}"),
    }
}

#[test]
fn hello_greets_its_input() -> anyhow::Result<()> {
    let rt = runtime();
    let (end, running) = run(
        &rt,
        &task(Artifact::inline(hello_wasm()?), 32, TaskLimits::default()),
    );
    assert!(running);
    assert_eq!(end, greeting());
    Ok(())
}

#[test]
fn memory_beyond_the_tasks_mem_is_memory_limit() -> anyhow::Result<()> {
    // The component's initial memory alone is over 1 MiB.
    let (end, running) = run(
        &runtime(),
        &task(Artifact::inline(hello_wasm()?), 1, TaskLimits::default()),
    );
    assert_ended(&end, TaskState::Failed, Reason::MemoryLimit);
    assert!(!running);
    Ok(())
}

#[test]
fn an_exhausted_fuel_budget_is_fuel_exhausted() -> anyhow::Result<()> {
    let limits = TaskLimits {
        fuel: Some(10),
        timeout_ms: None,
    };
    let (end, _) = run(
        &runtime(),
        &task(Artifact::inline(hello_wasm()?), 32, limits),
    );
    assert_ended(&end, TaskState::Failed, Reason::FuelExhausted);
    Ok(())
}

#[test]
fn bad_binaries_are_errors_not_crashes() -> anyhow::Result<()> {
    let rt = runtime();
    // Bytes that do not match their digest.
    let forged = Artifact::Inline {
        digest: Digest::of(b"something else"),
        bytes: hello_wasm()?,
    };
    assert_ended(
        &run(&rt, &task(forged, 32, TaskLimits::default())).0,
        TaskState::Error,
        Reason::InvalidArtifact,
    );
    // Not wasm at all.
    let junk = Artifact::inline(b"#!/bin/sh\necho hi\n".to_vec());
    assert_ended(
        &run(&rt, &task(junk, 32, TaskLimits::default())).0,
        TaskState::Error,
        Reason::InvalidArtifact,
    );
    // A component of another world: exports nothing called run.
    let other = Artifact::inline(wat::parse_str("(component)")?);
    assert_ended(
        &run(&rt, &task(other, 32, TaskLimits::default())).0,
        TaskState::Error,
        Reason::InvalidArtifact,
    );
    // The good component still runs on the same runtime afterwards.
    let (end, _) = run(
        &rt,
        &task(Artifact::inline(hello_wasm()?), 32, TaskLimits::default()),
    );
    assert_eq!(end, greeting());
    Ok(())
}

#[test]
fn concurrent_tasks_share_one_compilation() -> anyhow::Result<()> {
    let rt = Arc::new(runtime());
    let artifact = Artifact::inline(hello_wasm()?);
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let (rt, t) = (
                rt.clone(),
                task(artifact.clone(), 32, TaskLimits::default()),
            );
            std::thread::spawn(move || run(&rt, &t).0)
        })
        .collect();
    for h in handles {
        assert_eq!(
            h.join()
                .map_err(|_| anyhow::anyhow!("task thread panicked"))?,
            greeting()
        );
    }
    Ok(())
}

#[test]
fn a_pooled_engine_runs_tasks_and_an_impossible_pool_falls_back() -> anyhow::Result<()> {
    use stoa_agent::exec::wasm::{InstanceAllocation, PoolSize};
    let hello = Artifact::inline(hello_wasm()?);
    let size = PoolSize::for_agent(&Resources::new().with_mem_mib(1024));
    assert_eq!(
        size,
        PoolSize {
            tasks: 1024,
            memory_per_task: 1 << 30
        }
    );
    let pooled = WasmRuntime::with_pool(size).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    assert_eq!(pooled.allocation(), InstanceAllocation::Pooling(size));
    for _ in 0..3 {
        assert_eq!(
            run(&pooled, &task(hello.clone(), 32, TaskLimits::default())).0,
            greeting()
        );
    }
    // A slot used again (the pool prefers the one this component had) is
    // as fresh as a new one, though its pages may be kept mapped: nothing
    // one tenant's task wrote is seen by the next.
    let misbehave = Artifact::inline(misbehave_wasm()?);
    for secret in ["first tenant's secret", "second's"] {
        let mut t = task(misbehave.clone(), 32, TaskLimits::default());
        if let TaskKind::Wasm(w) = &mut t.kind {
            w.input = format!("remember:{secret}").into_bytes();
        }
        assert_eq!(
            run(&pooled, &t).0,
            TaskEvent::Finished {
                output: Vec::new(),
                exit_code: None
            },
            "a task saw what an earlier one left in memory"
        );
    }
    // More address space than any machine has: the probe fails, on demand it is.
    let huge = PoolSize {
        tasks: 1_000_000,
        memory_per_task: 4 << 30,
    };
    let fallback = WasmRuntime::with_pool(huge).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    assert_eq!(fallback.allocation(), InstanceAllocation::OnDemand);
    assert_eq!(
        run(&fallback, &task(hello, 32, TaskLimits::default())).0,
        greeting()
    );
    Ok(())
}

fn stats(compiled: u64, loaded: u64, corrupt: u64) -> stoa_agent::exec::wasm::CompileStats {
    stoa_agent::exec::wasm::CompileStats {
        compiled,
        loaded,
        corrupt,
    }
}

fn cached_runtime(dir: &std::path::Path) -> anyhow::Result<WasmRuntime> {
    use stoa_agent::exec::wasm::{RuntimeConfig, cache::CompiledCache};
    WasmRuntime::with_config(RuntimeConfig {
        cache: Some(CompiledCache::new(dir, 1 << 30)?),
        ..RuntimeConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{e:#}"))
}

#[test]
fn compiled_code_is_cached_on_disk_and_a_corrupt_entry_is_rebuilt() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let hello = || -> anyhow::Result<TaskInfo> {
        Ok(task(
            Artifact::inline(hello_wasm()?),
            32,
            TaskLimits::default(),
        ))
    };
    // A first executor compiles and stores.
    let first = cached_runtime(tmp.path())?;
    assert_eq!(run(&first, &hello()?).0, greeting());
    assert_eq!(first.stats(), stats(1, 0, 0));
    // A second (a restarted executor) loads instead of compiling.
    let second = cached_runtime(tmp.path())?;
    assert_eq!(run(&second, &hello()?).0, greeting());
    assert_eq!(second.stats(), stats(0, 1, 0));
    // Flip bytes in the entry: the checksum catches it, the code is rebuilt
    // and the task still runs.
    let entry = std::fs::read_dir(tmp.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .ok_or_else(|| anyhow::anyhow!("no cache entry was written"))?;
    let mut code = std::fs::read(&entry)?;
    let middle = code.len() / 2;
    code[middle] ^= 0xff;
    std::fs::write(&entry, code)?;
    let third = cached_runtime(tmp.path())?;
    assert_eq!(run(&third, &hello()?).0, greeting());
    assert_eq!(third.stats(), stats(1, 0, 1));
    // ... and the rebuilt entry is sound again.
    let fourth = cached_runtime(tmp.path())?;
    assert_eq!(run(&fourth, &hello()?).0, greeting());
    assert_eq!(fourth.stats().loaded, 1);
    Ok(())
}

#[test]
fn a_scheduler_component_is_compiled_once_then_loaded_from_the_cache() -> anyhow::Result<()> {
    use stoa_agent::exec::scheduler::{ComponentScheduler, SchedulerLimits};
    use stoa_agent::exec::wasm::cache::{CompiledCache, Origin};
    let wasm = std::fs::read(stoa_tests::wasm_path(
        "hello_wasm_scheduler",
        "hello-wasm-scheduler",
    )?)?;
    let tmp = tempfile::tempdir()?;
    let cache = CompiledCache::new(tmp.path(), 1 << 30)?;
    let start = |cache: Option<&CompiledCache>| {
        let limits = SchedulerLimits::default();
        ComponentScheduler::new(
            &wasm,
            "hello",
            (&[], &[]),
            limits,
            Default::default(),
            cache,
        )
    };
    assert_eq!(start(Some(&cache))?.origin(), Origin::Compiled);
    // A restarted instance loads what the first compiled.
    assert_eq!(start(Some(&cache))?.origin(), Origin::Loaded);
    assert_eq!(start(None)?.origin(), Origin::Compiled);
    Ok(())
}
