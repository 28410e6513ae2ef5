//! `stoa:task` components under wasmtime, each task in its own `Store` with
//! its memory limit (the task's `mem`), an optional fuel budget and an
//! optional wall-clock timeout. Every limit breach surfaces as a typed
//! error and maps to its own terminal reason; none harms another task.

use crate::core::TaskEvent;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use stoa_proto::task::MAX_TASK_OUTPUT;
use stoa_proto::{Artifact, Digest, Reason, Resources, TaskInfo, TaskKind, TaskState};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({ path: "../wit/task", world: "task" });
}
use bindings::TaskPre;

/// How often the epoch advances: the granularity of timeouts and kills.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Captured stdout/stderr per task until sandboxes keep them on disk.
const LOG_CAPACITY: usize = 64 << 10;
/// Longest error message carried back from a task.
const MAX_MESSAGE: usize = 4 << 10;

/// Why wasmtime stopped a task, raised from our limiter and epoch callback
/// so the cause is a type, not a string to match.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("memory limit of {limit} bytes reached (the task asked for {desired} bytes)")]
    Memory { limit: usize, desired: usize },
    #[error("killed")]
    Killed,
    #[error("wall-clock timeout of {0:?} passed")]
    Timeout(Duration),
}

/// Per-task store state.
struct TaskCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
}

impl WasiView for TaskCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct MemoryLimiter {
    limit: usize,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Err(Stopped::Memory {
                limit: self.limit,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

type Compiled = Arc<OnceLock<Result<TaskPre<TaskCtx>, String>>>;

/// One wasmtime engine and the components compiled on it.
pub struct WasmRuntime {
    engine: Engine,
    linker: Linker<TaskCtx>,
    compiled: Mutex<HashMap<Digest, Compiled>>,
    ticker_stop: Arc<AtomicBool>,
    allocation: InstanceAllocation,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime").finish_non_exhaustive()
    }
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// How many task instances a pooled engine reserves room for, and how much
/// linear memory each may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    pub tasks: u32,
    pub memory_per_task: usize,
}

impl PoolSize {
    /// One slot per 16 MiB of the agent's memory (16 to 1,000 slots), each
    /// able to grow to all of the agent's memory (at most 4 GiB, wasm32's
    /// limit); a task's own `mem` is enforced by the limiter.
    pub fn for_agent(resources: &Resources) -> PoolSize {
        let mib = resources.mem_mib();
        PoolSize {
            tasks: u32::try_from((mib / 16).clamp(16, 1_000)).unwrap_or(1_000),
            memory_per_task: usize::try_from(mib.clamp(1, 4 << 10) << 20).unwrap_or(usize::MAX),
        }
    }
}

/// How the engine allocates instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAllocation {
    /// Pre-reserved slots: instantiation is about twice as fast.
    Pooling(PoolSize),
    OnDemand,
}

fn base_config() -> Config {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true);
    config
}

impl WasmRuntime {
    /// An engine that allocates instances on demand.
    pub fn new() -> wasmtime::Result<Self> {
        Self::with_engine(Engine::new(&base_config())?, InstanceAllocation::OnDemand)
    }

    /// An engine with a pooling allocator of `size`, or, if the pool
    /// cannot be reserved on this host (address space, overcommit limits),
    /// one that allocates on demand. [`WasmRuntime::allocation`] tells which.
    pub fn with_pool(size: PoolSize) -> wasmtime::Result<Self> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        // A Rust wasip2 component holds a handful of core instances,
        // memories and tables; leave room for components of other toolchains.
        pool.total_component_instances(size.tasks)
            .total_core_instances(size.tasks.saturating_mul(16))
            .total_memories(size.tasks.saturating_mul(2))
            .total_tables(size.tasks.saturating_mul(16))
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(16)
            .max_memory_size(size.memory_per_task);
        let mut config = base_config();
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => Self::with_engine(engine, InstanceAllocation::Pooling(size)),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    ?size,
                    "cannot reserve the instance pool; allocating on demand"
                );
                Self::new()
            }
        }
    }

    pub fn allocation(&self) -> InstanceAllocation {
        self.allocation
    }

    fn with_engine(engine: Engine, allocation: InstanceAllocation) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("stoa-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(WasmRuntime {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            ticker_stop,
            allocation,
        })
    }

    /// Compiles `artifact` once per runtime; concurrent callers for the same
    /// digest wait for the one compilation.
    fn prepare(&self, artifact: &Artifact) -> Result<TaskPre<TaskCtx>, String> {
        let slot = {
            let mut map = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(artifact.digest).or_default().clone()
        };
        slot.get_or_init(|| {
            if !artifact.verify() {
                return Err(format!("artifact bytes do not match {}", artifact.digest));
            }
            let component = Component::new(&self.engine, &artifact.bytes)
                .map_err(|e| format!("not a valid wasm component: {e:#}"))?;
            let pre = self
                .linker
                .instantiate_pre(&component)
                .map_err(|e| format!("the component needs imports Stoa does not provide: {e:#}"))?;
            TaskPre::new(pre)
                .map_err(|e| format!("the component is not of the stoa:task world: {e:#}"))
        })
        .clone()
    }

    /// Runs a task to its end on the calling thread (a blocking thread in
    /// the driver). `on_running` is called once the instance is up.
    /// Setting `kill` stops the task within one epoch tick.
    pub fn run(
        &self,
        task: &TaskInfo,
        kill: Arc<AtomicBool>,
        on_running: impl FnOnce(),
    ) -> TaskEvent {
        let TaskKind::WasmComponent { artifact, input } = &task.kind;
        let pre = match self.prepare(artifact) {
            Ok(pre) => pre,
            Err(message) => {
                return TaskEvent::Ended {
                    state: TaskState::Error,
                    reason: Reason::InvalidArtifact,
                    message,
                };
            }
        };
        let limit =
            usize::try_from(task.resources.mem_mib().saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let wasi = WasiCtxBuilder::new()
            .stdout(MemoryOutputPipe::new(LOG_CAPACITY))
            .stderr(MemoryOutputPipe::new(LOG_CAPACITY))
            .build();
        let ctx = TaskCtx {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { limit },
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        if let Err(e) = store.set_fuel(task.limits.fuel.unwrap_or(u64::MAX)) {
            return ended(
                TaskState::Error,
                Reason::TaskInvalid,
                format!("cannot set fuel: {e:#}"),
            );
        }
        let timeout = task.limits.timeout_ms.map(Duration::from_millis);
        let deadline = timeout.map(|t| Instant::now() + t);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if kill.load(Ordering::Relaxed) {
                return Err(Stopped::Killed.into());
            }
            if let (Some(deadline), Some(timeout)) = (deadline, timeout)
                && Instant::now() >= deadline
            {
                return Err(Stopped::Timeout(timeout).into());
            }
            Ok(wasmtime::UpdateDeadline::Continue(1))
        });
        let instance = match pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => return classify(e),
        };
        on_running();
        match instance.call_run(&mut store, input) {
            Ok(Ok(output)) if output.len() > MAX_TASK_OUTPUT => ended(
                TaskState::Failed,
                Reason::OutputTooLarge,
                format!(
                    "output of {} bytes exceeds the {MAX_TASK_OUTPUT}-byte limit",
                    output.len()
                ),
            ),
            Ok(Ok(output)) => TaskEvent::Finished { output },
            Ok(Err(message)) => ended(TaskState::Failed, Reason::TaskFailed, message),
            Err(e) => classify(e),
        }
    }
}

fn ended(state: TaskState, reason: Reason, mut message: String) -> TaskEvent {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    TaskEvent::Ended {
        state,
        reason,
        message,
    }
}

/// Maps a wasmtime error to the task's terminal state by its type.
fn classify(e: wasmtime::Error) -> TaskEvent {
    let message = format!("{e:#}");
    if let Some(stopped) = e.downcast_ref::<Stopped>() {
        return match stopped {
            Stopped::Memory { .. } => ended(TaskState::Failed, Reason::MemoryLimit, message),
            Stopped::Killed => ended(
                TaskState::Killed,
                Reason::KilledByScheduler,
                "killed".into(),
            ),
            Stopped::Timeout(_) => ended(TaskState::Failed, Reason::Timeout, message),
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => ended(TaskState::Failed, Reason::FuelExhausted, message),
        Some(Trap::Interrupt) => ended(TaskState::Failed, Reason::Timeout, message),
        _ => ended(TaskState::Failed, Reason::Trap, message),
    }
}
