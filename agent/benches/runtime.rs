//! The wasm runtime against its ceilings, measured in the same run:
//!
//! * `launch/bare-instance-pre[-pooled]` — instantiate the hello component
//!   from an `InstancePre` and call `run` on a plain engine (no fuel, no
//!   epochs, no limiter, minimal WASI), allocating on demand or pooled: the
//!   most wasmtime can do per task.
//! * `launch/stoa` — `WasmRuntime::run` of the same task as the agent does
//!   it: pooled engine, per-task store with memory limiter, fuel, epoch
//!   deadline, WASI with captured output; from launch to FINISHED.
//! * `cpu/native` vs `cpu/wasm` — the same CPU-bound function natively and as
//!   a task under fuel and epoch limits.
//! * `start/native` vs `start/wasm` — launch to RUNNING as an executor does
//!   it: a fresh task directory, then for a native task (`/bin/true`) its
//!   cgroup made and limited and the process spawned into it, for a wasm
//!   task (hello) its instance made. Needs root and cgroups.
//!
//! Needs `cargo build --release --target wasm32-wasip2 -p hello-task -p
//! misbehave-task` first. Run: `cargo bench -p stoa-agent --bench runtime`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stoa_agent::cgroups::{Cgroups, Hierarchy, Limits, remove_leftovers};
use stoa_agent::core::TaskEvent;
use stoa_agent::exec::kill::Kill;
use stoa_agent::exec::task_dir::TaskDir;
use stoa_agent::exec::wasm::ceiling::Ceiling;
use stoa_agent::exec::wasm::{PoolSize, WasmRuntime};
use stoa_proto::{Artifact, Resources, TaskId, TaskInfo, TaskKind, TaskLimits};

const WORK_ROUNDS: u64 = 20_000_000;

fn component(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../target/wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; build the task components first", path.display()))
}

fn task(bytes: &[u8], input: &[u8], limits: TaskLimits) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new("bench").expect("valid id"),
        name: "bench".into(),
        // A whole core: the CPU row measures the limits' overhead, not the
        // CPU-share throttle.
        resources: Resources::new().with_millicpus(1000).with_mem_mib(64),
        kind: TaskKind::wasm(Artifact::inline(bytes.to_vec()), input.to_vec()),
        limits,
    }
}

fn bench(c: &mut Criterion) {
    let hello = component("hello_task");
    let mut launch = c.benchmark_group("launch");

    for (name, pooled) in [
        ("bare-instance-pre", false),
        ("bare-instance-pre-pooled", true),
    ] {
        let ceiling = Ceiling::new(&hello, pooled).expect("ceiling engine");
        launch.bench_function(name, |b| {
            b.iter(|| black_box(ceiling.run_once(b"world").expect("call")))
        });
    }

    let pool = PoolSize::for_agent(&Resources::new().with_mem_mib(4096));
    let runtime = WasmRuntime::with_pool(pool).expect("runtime");
    let hello_task = task(
        &hello,
        b"world",
        TaskLimits {
            fuel: Some(100_000_000),
            timeout_ms: Some(10_000),
        },
    );
    launch.bench_function("stoa", |b| {
        b.iter(|| {
            let end = runtime.run(&hello_task, None, &Kill::default(), None, || {});
            assert!(matches!(end, TaskEvent::Finished { .. }));
            black_box(end)
        })
    });
    // As the executor launches: a fresh task directory (sandbox preopened,
    // stdout and stderr files) for every task.
    let dirs = tempfile::tempdir().expect("tempdir");
    launch.bench_function("stoa-sandboxed", |b| {
        b.iter(|| {
            let dir = TaskDir::create(&dirs.path().join("task")).expect("task dir");
            let end = runtime.run(&hello_task, Some(&dir), &Kill::default(), None, || {});
            assert!(matches!(end, TaskEvent::Finished { .. }));
            black_box(end)
        })
    });
    launch.finish();

    start(c, &runtime, &hello_task);

    let misbehave = component("misbehave_task");
    let mut cpu = c.benchmark_group("cpu");
    cpu.sample_size(10);
    cpu.bench_function("native", |b| {
        b.iter(|| black_box(misbehave_task::work(black_box(WORK_ROUNDS))))
    });
    let work = task(
        &misbehave,
        format!("work:{WORK_ROUNDS}").as_bytes(),
        TaskLimits {
            fuel: Some(u64::MAX / 2),
            timeout_ms: Some(60_000),
        },
    );
    let expected = misbehave_task::work(WORK_ROUNDS).to_le_bytes().to_vec();
    cpu.bench_function("wasm", |b| {
        b.iter(|| {
            let end = runtime.run(&work, None, &Kill::default(), None, || {});
            assert_eq!(
                end,
                TaskEvent::Finished {
                    output: expected.clone(),
                    exit_code: None,
                }
            );
            black_box(end)
        })
    });
    cpu.finish();
}

/// Launch to RUNNING of a native and a wasm task, each timed up to the
/// moment its executor would report RUNNING.
fn start(c: &mut Criterion, runtime: &WasmRuntime, hello_task: &TaskInfo) {
    let work = tempfile::tempdir().expect("tempdir");
    let hierarchy = Hierarchy::detect().expect("cgroups (run as root)");
    let root = PathBuf::from(format!("stoa-bench-{}", std::process::id()));
    let cgroups =
        Cgroups::new(hierarchy, &root, work.path().join("cgroups")).expect("agent cgroups");
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let mut native = task(&[], b"", TaskLimits::default());
    let command = stoa_proto::CommandTask::new(["/bin/true"]);
    native.kind = TaskKind::Command(command.clone());
    let limits = Limits {
        millicpus: 100,
        mem_bytes: 64 << 20,
        max_pids: Some(64),
    };
    let never = Kill::default();
    let mut group = c.benchmark_group("start");
    group.bench_function("native", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let begin = Instant::now();
                let dir = TaskDir::create(&work.path().join("task")).expect("task dir");
                let cgroup = cgroups.create("bench", "task-t", &limits).expect("cgroup");
                let running = std::cell::Cell::new(None);
                let end = tokio.block_on(stoa_agent::exec::native::run(
                    &native,
                    &command,
                    &dir,
                    Some(cgroup),
                    1 << 20,
                    &never,
                    |_| running.set(Some(Instant::now())),
                ));
                assert!(matches!(end, TaskEvent::Finished { .. }), "{end:?}");
                total += running.get().expect("running") - begin;
                cgroups.remove("bench", "task-t").expect("remove");
            }
            total
        })
    });
    group.bench_function("wasm", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let begin = Instant::now();
                let dir = TaskDir::create(&work.path().join("task")).expect("task dir");
                let mut running = None;
                let end = runtime.run(hello_task, Some(&dir), &Kill::default(), None, || {
                    running = Some(Instant::now())
                });
                assert!(matches!(end, TaskEvent::Finished { .. }));
                total += running.expect("running") - begin;
            }
            total
        })
    });
    group.finish();
    remove_leftovers(work.path());
}

criterion_group!(benches, bench);
criterion_main!(benches);
