//! Wasm tasks under wasmtime. Three kinds, told apart by the binary:
//!
//! * a component of the `stoa:task` world: input bytes in, output bytes out;
//! * a `wasi:cli/run` command component;
//! * a WASI preview-1 core module with `_start`.
//!
//! Commands get the task's `args`, `env` and `input` (as stdin) and end with
//! an exit code. Every task runs in its own `Store` with its limits (see
//! [`limits`]); the only path it sees is its sandbox, preopened as `/`;
//! stdout and stderr go to capped files beside the sandbox. No network.

pub mod cache;
pub mod ceiling;
pub mod limits;

use crate::core::TaskEvent;
use crate::exec::kill::Kill;
use crate::exec::mailbox::Mailbox;
use crate::exec::stderr_tail::StderrTail;
use crate::exec::task_dir::{DEFAULT_LOG_LIMIT, TaskDir};
use cache::{Code, CompiledCache, Origin};
use limits::{CpuShare, Footprint, Stopped, TaskClock, TaskLimiter, Tick, Watch};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use stoa_proto::side::LogStream;
use stoa_proto::task::MAX_TASK_OUTPUT;
use stoa_proto::{
    Artifact, Digest, EPHEMERAL_STDERR_TAIL, Reason, Resources, TaskInfo, TaskKind, TaskState,
};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstancePre, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, SinkOutputStream};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/task",
        world: "task",
        imports: { "stoa:task/messages.receive": async },
        exports: { default: async },
    });
}
use bindings::TaskPre;

/// How often the epoch advances: the granularity of timeouts, kills and
/// CPU accounting.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Longest error message carried back from a task.
const MAX_MESSAGE: usize = 4 << 10;
/// Bytes of each pooled linear memory kept mapped when its task ends (a
/// task's stack and data sit in its first megabyte or two).
const KEEP_RESIDENT_MEMORY: usize = 4 << 20;
/// Likewise for each pooled table.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// Where the kernel can tell which pages a task touched (PAGEMAP_SCAN,
/// Linux 6.7), a freed pool slot is reset by writing zeros over just those
/// pages rather than by `madvise`: they stay mapped, so the next task takes
/// no page faults and no other thread's TLB is flushed. What is beyond the
/// kept sizes is still returned to the kernel. Without the scan, keeping
/// pages resident would mean zeroing megabytes at every task's end, so
/// wasmtime's default stays.
pub(crate) fn reset_touched_pages_only(pool: &mut wasmtime::PoolingAllocationConfig) {
    if wasmtime::PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE);
    }
}

/// Store state of a component task.
struct ComponentCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: TaskLimiter,
    /// Where `stoa:task/messages` reads and sends; a task run without one
    /// (tests, benchmarks) has nobody to talk to.
    mail: Option<Mailbox>,
    /// What `stoa:task/context.task-id` answers.
    task_id: String,
}

impl bindings::stoa::task::context::Host for ComponentCtx {
    fn task_id(&mut self) -> String {
        self.task_id.clone()
    }
}

impl bindings::stoa::task::messages::Host for ComponentCtx {
    async fn receive(&mut self, timeout_ms: u32) -> Option<Vec<u8>> {
        let timeout = Duration::from_millis(timeout_ms.into());
        match &mut self.mail {
            Some(mail) => mail.receive(timeout).await,
            None => {
                tokio::time::sleep(timeout).await;
                None
            }
        }
    }

    fn send(&mut self, data: Vec<u8>) -> Result<(), String> {
        match &self.mail {
            Some(mail) => mail.send(data),
            None => Err("this task runs without a scheduler to send to".into()),
        }
    }
}

impl WasiView for ComponentCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Store state of a preview-1 module task.
struct ModuleCtx {
    wasi: WasiP1Ctx,
    limiter: TaskLimiter,
}

/// A binary ready to instantiate, by kind.
enum Program {
    Task(TaskPre<ComponentCtx>),
    Command(CommandPre<ComponentCtx>),
    Preview1(InstancePre<ModuleCtx>),
}

/// Why a binary cannot run.
#[derive(Debug, Clone)]
struct Refused {
    reason: Reason,
    message: String,
}

impl Refused {
    fn invalid(message: impl Into<String>) -> Refused {
        Refused {
            reason: Reason::InvalidArtifact,
            message: message.into(),
        }
    }
}

type Prepared = Arc<OnceLock<Result<Arc<Program>, Refused>>>;

/// How many task instances a pooled engine reserves room for, and how much
/// linear memory each may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    pub tasks: u32,
    pub memory_per_task: usize,
}

impl PoolSize {
    /// One slot per MiB of the agent's memory (16 to 10,000 slots): no task
    /// runs in less, so the pool never runs out before the agent's memory
    /// does. Each slot can grow to all of the agent's memory (at most 4 GiB,
    /// wasm32's limit); a task's own `mem` is enforced by the limiter. This
    /// is address space, not memory; where the host cannot reserve it, the
    /// runtime allocates on demand instead.
    pub fn for_agent(resources: &Resources) -> PoolSize {
        let mib = resources.mem_mib();
        PoolSize {
            tasks: u32::try_from(mib.clamp(16, 10_000)).unwrap_or(10_000),
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

/// Where a runtime finds and keeps things.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// A pooled engine of this size (with a fallback to on-demand).
    pub pool: Option<PoolSize>,
    /// Artifacts fetched by the agent, as `<dir>/<hex digest>`.
    pub artifacts: Option<PathBuf>,
    /// Compiled code kept across restarts.
    pub cache: Option<CompiledCache>,
    /// Cap on each of a task's stdout and stderr.
    pub log_limit: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            pool: None,
            artifacts: None,
            cache: None,
            log_limit: DEFAULT_LOG_LIMIT,
        }
    }
}

/// Counters for operators and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompileStats {
    /// Binaries compiled from wasm.
    pub compiled: u64,
    /// Binaries loaded from the on-disk cache.
    pub loaded: u64,
    /// Cache entries found corrupt and rebuilt.
    pub corrupt: u64,
}

/// One wasmtime engine and the binaries prepared on it.
pub struct WasmRuntime {
    engine: Engine,
    /// Drives WASI's timers and I/O for tasks run by [`WasmRuntime::run`],
    /// which blocks its caller's thread on the task's future (tests,
    /// benchmarks); an executor runs tasks on its own task runtime.
    io: Option<tokio::runtime::Runtime>,
    components: Linker<ComponentCtx>,
    modules: wasmtime::Linker<ModuleCtx>,
    prepared: Mutex<HashMap<Digest, Prepared>>,
    ticker_stop: Arc<AtomicBool>,
    allocation: InstanceAllocation,
    config: RuntimeConfig,
    compiled: AtomicU64,
    loaded: AtomicU64,
    corrupt: AtomicU64,
    fuel_consumed: AtomicU64,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime")
            .field("allocation", &self.allocation)
            .finish_non_exhaustive()
    }
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
    /// An engine that allocates instances on demand, with no artifact
    /// directory or cache.
    pub fn new() -> wasmtime::Result<Self> {
        Self::with_config(RuntimeConfig::default())
    }

    /// An engine with a pooling allocator of `size`, or one that allocates
    /// on demand if the pool cannot be reserved.
    pub fn with_pool(size: PoolSize) -> wasmtime::Result<Self> {
        Self::with_config(RuntimeConfig {
            pool: Some(size),
            ..RuntimeConfig::default()
        })
    }

    /// A runtime as configured. A pool that cannot be reserved on this host
    /// (address space, overcommit limits) falls back to on-demand
    /// allocation, logged; [`WasmRuntime::allocation`] tells which.
    pub fn with_config(config: RuntimeConfig) -> wasmtime::Result<Self> {
        let Some(size) = config.pool else {
            let engine = Engine::new(&base_config())?;
            return Self::with_engine(engine, InstanceAllocation::OnDemand, config);
        };
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        let per_task = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        // Totals assume the typical task (a handful of core instances);
        // per-component maxima are the per-task limits.
        pool.total_component_instances(size.tasks)
            .total_core_instances(size.tasks.saturating_mul(16))
            .total_memories(size.tasks.saturating_mul(2))
            .total_tables(size.tasks.saturating_mul(8))
            .max_core_instances_per_component(per_task(limits::MAX_INSTANCES))
            .max_memories_per_component(per_task(limits::MAX_MEMORIES))
            .max_tables_per_component(per_task(limits::MAX_TABLES))
            .max_tables_per_module(4)
            .table_elements(limits::MAX_TABLE_ELEMENTS)
            .max_memory_size(size.memory_per_task);
        reset_touched_pages_only(&mut pool);
        let mut engine_config = base_config();
        engine_config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&engine_config) {
            Ok(engine) => Self::with_engine(engine, InstanceAllocation::Pooling(size), config),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    ?size,
                    "cannot reserve the instance pool; allocating on demand"
                );
                let engine = Engine::new(&base_config())?;
                Self::with_engine(engine, InstanceAllocation::OnDemand, config)
            }
        }
    }

    pub fn allocation(&self) -> InstanceAllocation {
        self.allocation
    }

    pub fn stats(&self) -> CompileStats {
        CompileStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
        }
    }

    fn with_engine(
        engine: Engine,
        allocation: InstanceAllocation,
        config: RuntimeConfig,
    ) -> wasmtime::Result<Self> {
        let mut components = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components)?;
        bindings::stoa::task::messages::add_to_linker::<_, HasSelf<ComponentCtx>>(
            &mut components,
            |cx| cx,
        )?;
        bindings::stoa::task::context::add_to_linker::<_, HasSelf<ComponentCtx>>(
            &mut components,
            |cx| cx,
        )?;
        let mut modules = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |cx: &mut ModuleCtx| &mut cx.wasi)?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stoa-wasi-io")
            .enable_all()
            .build()?;
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
            io: Some(io),
            components,
            modules,
            prepared: Mutex::new(HashMap::new()),
            ticker_stop,
            allocation,
            config,
            compiled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            fuel_consumed: AtomicU64::new(0),
        })
    }

    /// Prepares `artifact` once per runtime; concurrent callers for the same
    /// digest wait for the one preparation. A missing artifact is not
    /// remembered, so a later launch can find it fetched.
    fn prepare(&self, artifact: &Artifact) -> Result<Arc<Program>, Refused> {
        let digest = artifact.digest();
        let slot = {
            let mut map = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(digest).or_default().clone()
        };
        let result = slot
            .get_or_init(|| {
                let bytes = self.bytes_of(artifact)?;
                self.build(digest, &bytes).map(Arc::new)
            })
            .clone();
        if let Err(Refused {
            reason: Reason::ArtifactUnavailable,
            ..
        }) = &result
        {
            let mut map = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&digest);
        }
        result
    }

    /// The bytes of `artifact`, checked against its digest: the reason
    /// and message of a task that cannot have them otherwise.
    pub fn artifact_bytes(&self, artifact: &Artifact) -> Result<Vec<u8>, (Reason, String)> {
        self.bytes_of(artifact).map_err(|r| (r.reason, r.message))
    }

    fn bytes_of(&self, artifact: &Artifact) -> Result<Vec<u8>, Refused> {
        let unavailable = |message: String| Refused {
            reason: Reason::ArtifactUnavailable,
            message,
        };
        let bytes = match artifact {
            Artifact::Inline { bytes, .. } => bytes.clone(),
            Artifact::Stored(digest) => {
                let dir = self.config.artifacts.as_ref().ok_or_else(|| {
                    unavailable(format!(
                        "{digest} is not inline and this runtime has no artifact store"
                    ))
                })?;
                let path = dir.join(hex::encode(digest.0));
                std::fs::read(&path).map_err(|e| {
                    unavailable(format!("cannot read {digest} at {}: {e}", path.display()))
                })?
            }
        };
        if Digest::of(&bytes) != artifact.digest() {
            return Err(Refused::invalid(format!(
                "artifact bytes do not match {}",
                artifact.digest()
            )));
        }
        Ok(bytes)
    }

    fn build(&self, digest: Digest, bytes: &[u8]) -> Result<Program, Refused> {
        let (component, module) = (
            wasmparser::Parser::is_component(bytes),
            wasmparser::Parser::is_core_wasm(bytes),
        );
        if !(component || module) {
            return Err(Refused::invalid(
                "not a wasm binary: neither a component nor a core module",
            ));
        }
        let footprint = Footprint::of(bytes).map_err(Refused::invalid)?;
        footprint.check().map_err(|message| Refused {
            reason: Reason::InstanceLimit,
            message,
        })?;
        if component {
            let component: Component = self.compiled(digest, bytes)?;
            let pre = self.components.instantiate_pre(&component).map_err(|e| {
                Refused::invalid(format!(
                    "the component needs imports Stoa does not provide: {e:#}"
                ))
            })?;
            if let Ok(task) = TaskPre::new(pre.clone()) {
                return Ok(Program::Task(task));
            }
            return CommandPre::new(pre).map(Program::Command).map_err(|_| {
                Refused::invalid("the component exports neither stoa:task's `run` nor wasi:cli/run")
            });
        }
        let module: Module = self.compiled(digest, bytes)?;
        if !matches!(
            module.get_export("_start"),
            Some(wasmtime::ExternType::Func(_))
        ) {
            return Err(Refused::invalid(
                "the module has no `_start` function (not a WASI command)",
            ));
        }
        self.modules
            .instantiate_pre(&module)
            .map(Program::Preview1)
            .map_err(|e| {
                Refused::invalid(format!(
                    "the module needs imports other than WASI preview 1: {e:#}"
                ))
            })
    }

    /// Compiled code for `digest`: from the on-disk cache when it holds a
    /// sound entry, otherwise compiled (and then cached).
    fn compiled<C: Code>(&self, digest: Digest, bytes: &[u8]) -> Result<C, Refused> {
        let (code, origin) =
            cache::load_or_compile(self.config.cache.as_ref(), &self.engine, digest, bytes)
                .map_err(|e| Refused::invalid(format!("not valid wasm: {e}")))?;
        let counter = match origin {
            Origin::Loaded => &self.loaded,
            Origin::Compiled => &self.compiled,
            Origin::Rebuilt => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                &self.compiled
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(code)
    }

    /// Where the agent keeps the artifacts it fetched, if this runtime
    /// reads any.
    pub fn artifacts(&self) -> Option<&Path> {
        self.config.artifacts.as_deref()
    }

    /// The cache of compiled code, if this runtime keeps one.
    pub fn cache(&self) -> Option<&CompiledCache> {
        self.config.cache.as_ref()
    }

    /// Runs a task to its end on the calling thread (which must not be in
    /// an async context); see [`WasmRuntime::run_async`].
    pub fn run(
        &self,
        task: &TaskInfo,
        dir: Option<&TaskDir>,
        kill: &Kill,
        mail: Option<Mailbox>,
        on_running: impl FnOnce() + Send,
    ) -> TaskEvent {
        match &self.io {
            Some(io) => io
                .handle()
                .block_on(self.run_async(task, dir, kill, mail, on_running)),
            None => shutting_down(),
        }
    }

    /// Runs a task to its end as a future, so that many tasks share a few
    /// threads: each yields at every epoch tick, and one waiting in a host
    /// call (a WASI sleep, a message) holds no thread. `dir` is the task's
    /// directory (sandbox and logs); without one the task sees no files,
    /// its stdout is dropped and the end of its stderr is added to the
    /// message of a failure (an ephemeral task, [`stoa_proto::Sandbox`]).
    /// `mail` connects a `stoa:task`
    /// component with its scheduler. `on_running` is called once the
    /// instance is up. Triggering `kill` stops the task within one epoch
    /// tick, or at once if it is waiting in a host call. Needs a tokio
    /// runtime with timers.
    pub async fn run_async(
        &self,
        task: &TaskInfo,
        dir: Option<&TaskDir>,
        kill: &Kill,
        mail: Option<Mailbox>,
        on_running: impl FnOnce() + Send,
    ) -> TaskEvent {
        let TaskKind::Wasm(wasm) = &task.kind else {
            return ended(
                TaskState::Error,
                Reason::TaskInvalid,
                "the wasm runtime was handed a task that is not wasm".into(),
            );
        };
        let program = match self.prepare_off_thread(&wasm.artifact) {
            Ok(program) => program,
            Err(Refused { reason, message }) => return ended(TaskState::Error, reason, message),
        };
        let command = !matches!(*program, Program::Task(_));
        let mut builder = WasiCtxBuilder::new();
        // No network: no sockets, no name lookups (and the default address
        // check would refuse every address anyway).
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut argv = vec![task.name.clone()];
        argv.extend(wasm.args.iter().cloned());
        // The environment is exactly the launch's, as `wasmtime run --env`
        // gives it: a task learns its id from `stoa:task/context`.
        builder.args(&argv).envs(&wasm.env);
        if command {
            builder.stdin(MemoryInputPipe::new(wasm.input.clone()));
        }
        // Without a directory, the end of stderr is kept for the message
        // of a failure.
        let stderr = dir
            .is_none()
            .then(|| StderrTail::new(EPHEMERAL_STDERR_TAIL));
        match dir {
            Some(dir) => {
                let opened = (|| {
                    let out = dir.open_log(LogStream::Stdout, self.config.log_limit)?;
                    let err = dir.open_log(LogStream::Stderr, self.config.log_limit)?;
                    builder.stdout(out).stderr(err);
                    if wasm.sandbox.preopens() {
                        builder
                            .preopened_dir(dir.sandbox(), "/", FsPerms::ReadWrite)
                            .map_err(std::io::Error::other)?;
                    }
                    Ok::<_, std::io::Error>(())
                })();
                if let Err(e) = opened {
                    return ended(
                        TaskState::Error,
                        Reason::TaskInvalid,
                        format!("cannot set up the sandbox in {}: {e}", dir.root().display()),
                    );
                }
            }
            None => {
                builder.stdout(SinkOutputStream);
                if let Some(tail) = &stderr {
                    builder.stderr(tail.clone());
                }
            }
        }
        let memory =
            usize::try_from(task.resources.mem_mib().saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let timeout = task.limits.timeout_ms.map(Duration::from_millis);
        let clock = Arc::new(TaskClock::default());
        let watch = Watch {
            kill: kill.clone(),
            timeout: timeout.map(|t| (Instant::now() + t, t)),
            cpu: CpuShare::new(task.resources.millicpus(), clock.clone()),
        };
        let fuel = task.limits.fuel.unwrap_or(u64::MAX);
        let limits = (TaskLimiter::new(memory), fuel, watch);
        let run = self.execute(
            &program,
            (builder, mail, task.task_id.as_str()),
            limits,
            &wasm.input,
            on_running,
        );
        let deadline = async {
            match timeout {
                Some(t) => {
                    tokio::time::sleep(t).await;
                    t
                }
                None => std::future::pending().await,
            }
        };
        // Running wasm is stopped at its next epoch tick; the other branches
        // are for a task waiting in a host call, whose future is dropped.
        let end = tokio::select! {
            biased;
            end = clock.charge(run) => end.unwrap_or_else(|end| end),
            () = kill.triggered() => classify(Stopped::Killed.into()),
            after = deadline => classify(Stopped::Timeout(after).into()),
        };
        with_stderr(end, stderr.as_ref())
    }

    /// [`WasmRuntime::prepare`], on a thread where blocking is allowed
    /// when the binary must still be read and compiled (seconds, for a large
    /// one), so the tasks sharing this thread are not held up meanwhile.
    fn prepare_off_thread(&self, artifact: &Artifact) -> Result<Arc<Program>, Refused> {
        let ready = {
            let map = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&artifact.digest())
                .and_then(|slot| slot.get().cloned())
        };
        match ready {
            Some(program) => program,
            None if on_async_worker() => tokio::task::block_in_place(|| self.prepare(artifact)),
            None => self.prepare(artifact),
        }
    }

    /// Instantiates and runs `program`; `Err` holds an end that came
    /// before the program could run to its own.
    async fn execute(
        &self,
        program: &Program,
        (mut builder, mail, task_id): (WasiCtxBuilder, Option<Mailbox>, &str),
        (limiter, fuel, watch): (TaskLimiter, u64, Watch),
        input: &[u8],
        on_running: impl FnOnce(),
    ) -> Result<TaskEvent, TaskEvent> {
        // Only a `stoa:task` has an inbox; dropping the mailbox otherwise
        // makes every message for the task come back undelivered.
        let mail = mail.filter(|_| matches!(program, Program::Task(_)));
        let component_ctx = |builder: &mut WasiCtxBuilder, limiter| ComponentCtx {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limiter,
            mail,
            task_id: task_id.to_string(),
        };
        Ok(match program {
            Program::Task(pre) => {
                let ctx = component_ctx(&mut builder, limiter);
                let mut store = self.store(ctx, |c| &mut c.limiter, fuel, watch)?;
                let instance = pre.instantiate_async(&mut store).await.map_err(classify)?;
                on_running();
                let run = instance.call_run(&mut store, input).await;
                self.count_fuel(&store, fuel);
                match run {
                    Ok(Ok(output)) if output.len() > MAX_TASK_OUTPUT => ended(
                        TaskState::Failed,
                        Reason::OutputTooLarge,
                        format!(
                            "output of {} bytes exceeds the {MAX_TASK_OUTPUT}-byte limit",
                            output.len()
                        ),
                    ),
                    Ok(Ok(output)) => TaskEvent::Finished {
                        output,
                        exit_code: None,
                    },
                    Ok(Err(message)) => ended(TaskState::Failed, Reason::TaskFailed, message),
                    Err(e) => classify(e),
                }
            }
            Program::Command(pre) => {
                let ctx = component_ctx(&mut builder, limiter);
                let mut store = self.store(ctx, |c| &mut c.limiter, fuel, watch)?;
                let command = pre.instantiate_async(&mut store).await.map_err(classify)?;
                on_running();
                let run = command.wasi_cli_run().call_run(&mut store).await;
                self.count_fuel(&store, fuel);
                exited(run.map(|r| if r.is_ok() { 0 } else { 1 }))
            }
            Program::Preview1(pre) => {
                let ctx = ModuleCtx {
                    wasi: builder.build_p1(),
                    limiter,
                };
                let mut store = self.store(ctx, |c| &mut c.limiter, fuel, watch)?;
                let instance = pre.instantiate_async(&mut store).await.map_err(classify)?;
                on_running();
                let start = instance
                    .get_typed_func::<(), ()>(&mut store, "_start")
                    .map_err(|e| {
                        ended(
                            TaskState::Error,
                            Reason::InvalidArtifact,
                            format!("`_start` is not a function of no arguments: {e:#}"),
                        )
                    })?;
                let run = start.call_async(&mut store, ()).await;
                self.count_fuel(&store, fuel);
                exited(run.map(|()| 0))
            }
        })
    }

    /// Adds what a task that ran to its own end burnt of its `fuel`. (A
    /// task stopped from outside, by a kill or its timeout, is not
    /// counted: its store goes with it.)
    fn count_fuel<T>(&self, store: &Store<T>, fuel: u64) {
        let left = store.get_fuel().unwrap_or(fuel);
        self.fuel_consumed
            .fetch_add(fuel.saturating_sub(left), Ordering::Relaxed);
    }

    /// What this runtime has done so far, for its executor's report.
    pub fn executor_stats(&self) -> stoa_proto::executor::ExecutorStats {
        let pool = self.engine.pooling_allocator_metrics();
        let compiles = self.stats();
        stoa_proto::executor::ExecutorStats {
            pool_slots_in_use: pool.as_ref().map_or(0, |p| p.component_instances()),
            pool_memories_in_use: pool.as_ref().map_or(0, |p| p.memories() as u64),
            compiled: compiles.compiled,
            loaded: compiles.loaded,
            evicted: self.config.cache.as_ref().map_or(0, CompiledCache::evicted),
            corrupt: compiles.corrupt,
            fuel_consumed: self.fuel_consumed.load(Ordering::Relaxed),
        }
    }

    /// A store with the task's limiter, fuel and epoch watch.
    fn store<T: 'static>(
        &self,
        data: T,
        limiter: fn(&mut T) -> &mut TaskLimiter,
        fuel: u64,
        mut watch: Watch,
    ) -> Result<Store<T>, TaskEvent> {
        let mut store = Store::new(&self.engine, data);
        store.limiter(move |d| limiter(d) as &mut dyn wasmtime::ResourceLimiter);
        store.set_fuel(fuel).map_err(|e| {
            ended(
                TaskState::Error,
                Reason::TaskInvalid,
                format!("cannot set fuel: {e:#}"),
            )
        })?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| match watch.on_tick() {
            Ok(Tick::Yield) => Ok(wasmtime::UpdateDeadline::Yield(1)),
            Ok(Tick::Pause(pause)) => Ok(wasmtime::UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::time::sleep(pause)),
            )),
            Err(stopped) => Err(stopped.into()),
        });
        Ok(store)
    }
}

fn ended(state: TaskState, reason: Reason, mut message: String) -> TaskEvent {
    cut_to_limit(&mut message);
    TaskEvent::ended(state, reason, message)
}

/// Cuts `message` to what an update may carry.
fn cut_to_limit(message: &mut String) {
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
}

/// `end`, with what the task last wrote to stderr added to its message if
/// it failed and had no log file to look in.
fn with_stderr(mut end: TaskEvent, stderr: Option<&StderrTail>) -> TaskEvent {
    if let TaskEvent::Ended { message, .. } = &mut end
        && let Some(text) = stderr.and_then(StderrTail::text)
    {
        message.push_str("; stderr: ");
        message.push_str(&text);
        cut_to_limit(message);
    }
    end
}

/// A command's end: its exit code, or why it stopped before exiting.
fn exited(result: wasmtime::Result<i32>) -> TaskEvent {
    let code = match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => *code,
            None => return classify(e),
        },
    };
    if code == 0 {
        return TaskEvent::Finished {
            output: Vec::new(),
            exit_code: Some(0),
        };
    }
    TaskEvent::Ended {
        state: TaskState::Failed,
        reason: Reason::NonZeroExit,
        message: format!("exited with code {code}"),
        exit_code: Some(code),
    }
}

/// The runtime an executor runs wasm tasks on ([`WasmRuntime::run_async`]):
/// `workers` threads, each task a future on one of them, and a blocking
/// pool without a cap for work that must hold a thread (cluster-hosted
/// schedulers).
///
/// A busy worker looks at timers and I/O between every two polls rather
/// than tokio's default of every 61: a task's poll can last a whole epoch
/// tick (10 ms), so at the default a task paused to keep its CPU share, or
/// woken by a message, could wait more than half a second behind tasks that
/// keep the workers busy.
pub fn task_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .event_interval(1)
        .max_blocking_threads(1 << 20)
        .thread_keep_alive(Duration::from_secs(30))
        .thread_name("stoa-task")
        // Host calls of a hosted scheduler run on these stacks (wasm itself
        // runs on wasmtime's own).
        .thread_stack_size(2 << 20)
        .enable_all()
        .build()
}

fn shutting_down() -> TaskEvent {
    ended(
        TaskState::Error,
        Reason::TaskInvalid,
        "the runtime is shutting down".into(),
    )
}

/// Whether this thread is a worker of a multi-thread tokio runtime, the
/// only kind of thread where `block_in_place` may be called.
fn on_async_worker() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        // Dropping a runtime inside an async context panics; an executor
        // drops its wasm runtime there.
        if let Some(io) = self.io.take() {
            io.shutdown_background();
        }
    }
}

/// Maps a wasmtime error to the task's terminal state by its type.
fn classify(e: wasmtime::Error) -> TaskEvent {
    let message = format!("{e:#}");
    if let Some(stopped) = e.downcast_ref::<Stopped>() {
        return match stopped {
            Stopped::Memory { .. } => ended(TaskState::Failed, Reason::MemoryLimit, message),
            Stopped::Table { .. } => ended(TaskState::Failed, Reason::TableLimit, message),
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
