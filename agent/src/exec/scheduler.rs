//! Hosting a scheduler component (`stoa:scheduler`): one instance whose
//! exports are the event handlers, whose `driver` imports become calls to
//! the master. [`ComponentScheduler`] is a [`stoa_client::Scheduler`], so
//! the client's driver hosts it like any native scheduler
//! (`stoa framework run`).
//!
//! Each handler call gets a fuel budget and the instance a memory limit: a
//! scheduler that loops or grows without end traps, and the host stops
//! instead of hanging. Configuration reaches the component as WASI
//! environment variables and arguments; its stdout and stderr are the
//! host's stderr.

use crate::exec::wasm::cache::{CompiledCache, Origin, load_or_compile};
use anyhow::Context as _;
use std::time::Duration;
use stoa_client::Calls;
use stoa_proto::{
    AgentId, Artifact, Digest, FrameworkId, MessageSource, Offer, OfferId, Operation, Resources,
    Sandbox, TaskId, TaskInfo, TaskKind, TaskLimits, TaskStatus, UpdateId,
};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bindings {
    wasmtime::component::bindgen!({ path: "../wit/scheduler", world: "scheduler" });
}
use bindings::stoa::scheduler::types as wit;

/// Limits of a hosted scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerLimits {
    /// Fuel for each handler call.
    pub fuel_per_call: u64,
    /// The instance's memory.
    pub memory: usize,
}

/// Where a hosted scheduler's stdout and stderr go: the host's stderr
/// (`stoa framework run`), or capped log files (a cluster-hosted instance,
/// read with `stoa logs`).
#[derive(Debug, Default)]
pub enum SchedulerOutput {
    #[default]
    Inherit,
    Logs {
        stdout: crate::exec::task_dir::CappedLog,
        stderr: crate::exec::task_dir::CappedLog,
    },
}

impl Default for SchedulerLimits {
    fn default() -> Self {
        SchedulerLimits {
            fuel_per_call: 10_000_000_000,
            memory: 256 << 20,
        }
    }
}

/// A driver call the component made during one handler.
#[derive(Debug)]
enum HostCall {
    Accept {
        offer_ids: Vec<u64>,
        tasks: Vec<wit::TaskSpec>,
        group: bool,
        refuse_ms: Option<u64>,
    },
    Decline {
        offer_ids: Vec<u64>,
        refuse_ms: Option<u64>,
    },
    Kill(String),
    Message(String, Vec<u8>),
    Revive,
    Suppress,
    Reconcile(Vec<String>),
    Acknowledge {
        agent_id: String,
        task_id: String,
        update_id: u64,
    },
    SetTimer(u64, u64),
    CancelTimer(u64),
    Teardown,
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    calls: Vec<HostCall>,
    next_timer: u64,
    name: String,
    /// Where the component's log calls are written besides the host's
    /// log: a hosted instance's stderr file.
    log: Option<crate::exec::task_dir::CappedLog>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit::Host for State {}

impl bindings::stoa::scheduler::driver::Host for State {
    fn accept(&mut self, offer_ids: Vec<u64>, tasks: Vec<wit::TaskSpec>, refuse_ms: Option<u64>) {
        self.calls.push(HostCall::Accept {
            offer_ids,
            tasks,
            group: false,
            refuse_ms,
        });
    }
    fn launch_group(
        &mut self,
        offer_ids: Vec<u64>,
        tasks: Vec<wit::TaskSpec>,
        refuse_ms: Option<u64>,
    ) {
        self.calls.push(HostCall::Accept {
            offer_ids,
            tasks,
            group: true,
            refuse_ms,
        });
    }
    fn decline(&mut self, offer_ids: Vec<u64>, refuse_ms: Option<u64>) {
        self.calls.push(HostCall::Decline {
            offer_ids,
            refuse_ms,
        });
    }
    fn kill(&mut self, task_id: String) {
        self.calls.push(HostCall::Kill(task_id));
    }
    fn send_message(&mut self, task_id: String, data: Vec<u8>) {
        self.calls.push(HostCall::Message(task_id, data));
    }
    fn revive(&mut self) {
        self.calls.push(HostCall::Revive);
    }
    fn suppress(&mut self) {
        self.calls.push(HostCall::Suppress);
    }
    fn reconcile(&mut self, task_ids: Vec<String>) {
        self.calls.push(HostCall::Reconcile(task_ids));
    }
    fn acknowledge(&mut self, agent_id: String, task_id: String, update_id: u64) {
        self.calls.push(HostCall::Acknowledge {
            agent_id,
            task_id,
            update_id,
        });
    }
    fn set_timer(&mut self, delay_ms: u64) -> u64 {
        self.next_timer += 1;
        self.calls
            .push(HostCall::SetTimer(self.next_timer, delay_ms));
        self.next_timer
    }
    fn cancel_timer(&mut self, id: u64) {
        self.calls.push(HostCall::CancelTimer(id));
    }
    fn log(&mut self, level: wit::Level, message: String) {
        let name = &self.name;
        match level {
            wit::Level::Debug => tracing::debug!(scheduler = %name, "{message}"),
            wit::Level::Info => tracing::info!(scheduler = %name, "{message}"),
            wit::Level::Warn => tracing::warn!(scheduler = %name, "{message}"),
            wit::Level::Error => tracing::error!(scheduler = %name, "{message}"),
        }
        if let Some(log) = &self.log {
            let tag = match level {
                wit::Level::Debug => "debug",
                wit::Level::Info => "info",
                wit::Level::Warn => "warn",
                wit::Level::Error => "error",
            };
            log.write_line(&format!("{tag} {message}"));
        }
    }
    fn teardown(&mut self) {
        self.calls.push(HostCall::Teardown);
    }
}

/// A scheduler component, instantiated and ready for events.
pub struct ComponentScheduler {
    store: Store<State>,
    instance: bindings::Scheduler,
    limits: SchedulerLimits,
    /// The component's timer ids, by the ids the client's driver gave out.
    timers: std::collections::HashMap<u64, u64>,
    /// Set once a handler trapped: the instance is not called again.
    failed: Option<String>,
    /// Whether the code was compiled or loaded from the cache.
    origin: Origin,
}

impl std::fmt::Debug for ComponentScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentScheduler")
            .field("name", &self.store.data().name)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl ComponentScheduler {
    /// Compiles (or loads from `cache`) and instantiates `wasm`. `args` and
    /// `env` are what the component sees through WASI; `name` labels its
    /// log lines. A big component takes long to compile (a Python
    /// scheduler about 30 s), which the cache saves on every restart.
    pub fn new(
        wasm: &[u8],
        name: &str,
        (args, env): (&[String], &[(String, String)]),
        limits: SchedulerLimits,
        output: SchedulerOutput,
        cache: Option<&CompiledCache>,
    ) -> anyhow::Result<ComponentScheduler> {
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let (component, origin): (Component, _) =
            load_or_compile(cache, &engine, Digest::of(wasm), wasm)
                .map_err(|e| anyhow::anyhow!("not a valid component: {e}"))?;
        let mut linker: Linker<State> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        bindings::Scheduler::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut argv = vec![name.to_string()];
        argv.extend(args.iter().cloned());
        let mut builder = WasiCtx::builder();
        let log = match output {
            SchedulerOutput::Inherit => {
                builder.inherit_stdout().inherit_stderr();
                None
            }
            SchedulerOutput::Logs { stdout, stderr } => {
                builder.stdout(stdout).stderr(stderr.clone());
                Some(stderr)
            }
        };
        let wasi = builder
            .args(&argv)
            .envs(env)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory)
                .instances(16)
                .tables(64)
                .memories(16)
                .build(),
            calls: Vec::new(),
            next_timer: 0,
            name: name.to_string(),
            log,
        };
        let mut store = Store::new(&engine, state);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(limits.fuel_per_call)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let instance = bindings::Scheduler::instantiate(&mut store, &component, &linker)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the component is not a stoa:scheduler (see wit/scheduler)")?;
        Ok(ComponentScheduler {
            store,
            instance,
            limits,
            timers: std::collections::HashMap::new(),
            failed: None,
            origin,
        })
    }

    /// Whether the component was compiled for this instance or loaded
    /// from the cache.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Why the scheduler stopped, if a handler trapped.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Runs one export with a fresh fuel budget, then turns the driver
    /// calls it made into `calls`.
    fn handle(
        &mut self,
        calls: &mut Calls,
        what: &str,
        f: impl FnOnce(&bindings::Scheduler, &mut Store<State>) -> wasmtime::Result<()> + Send,
    ) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.store.set_fuel(self.limits.fuel_per_call) {
            self.fail(calls, format!("cannot refuel: {e:#}"));
            return;
        }
        let (instance, store) = (&self.instance, &mut self.store);
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            // WASI's synchronous host calls (a write to stderr, a poll)
            // block on a Tokio runtime of their own, which Tokio forbids on
            // a thread that is driving one: the call runs on a thread
            // outside any runtime.
            std::thread::scope(|scope| {
                scope
                    .spawn(|| f(instance, store))
                    .join()
                    .unwrap_or_else(|_| Err(wasmtime::Error::msg("the host panicked")))
            })
        } else {
            f(instance, store)
        };
        let made = std::mem::take(&mut self.store.data_mut().calls);
        if let Err(e) = result {
            self.fail(calls, format!("the scheduler trapped in {what}: {e:#}"));
            return;
        }
        for call in made {
            self.forward(calls, call);
        }
    }

    fn fail(&mut self, calls: &mut Calls, message: String) {
        tracing::error!(scheduler = %self.store.data().name, "{message}");
        self.failed = Some(message);
        calls.exit();
    }

    fn forward(&mut self, calls: &mut Calls, call: HostCall) {
        match call {
            HostCall::Accept {
                offer_ids,
                tasks,
                group,
                refuse_ms,
            } => {
                let mut infos = Vec::new();
                let mut refused = Vec::new();
                for spec in tasks {
                    match task_info(&spec) {
                        Ok(info) => infos.push(info),
                        Err(message) => refused.push((spec.id, message)),
                    }
                }
                let offer_ids = offer_ids.into_iter().map(OfferId).collect();
                if !refused.is_empty() && group {
                    // One bad task fails a group: give the offers back.
                    calls.decline(offer_ids, refuse_ms);
                    for info in infos {
                        refused.push((
                            info.task_id.as_str().to_string(),
                            "its group had an invalid task".into(),
                        ));
                    }
                } else {
                    let operation = if group {
                        Operation::LaunchGroup { tasks: infos }
                    } else {
                        Operation::Launch { tasks: infos }
                    };
                    calls.accept(offer_ids, vec![operation], refuse_ms);
                }
                for (task_id, message) in refused {
                    self.refused_locally(calls, task_id, message);
                }
            }
            HostCall::Decline {
                offer_ids,
                refuse_ms,
            } => calls.decline(offer_ids.into_iter().map(OfferId).collect(), refuse_ms),
            HostCall::Kill(task_id) => match TaskId::new(task_id) {
                Ok(task_id) => calls.kill(task_id),
                Err(e) => tracing::warn!(error = %e, "kill of an invalid task id ignored"),
            },
            HostCall::Message(task_id, data) => match TaskId::new(task_id) {
                Ok(task_id) => calls.message(task_id, data),
                Err(e) => tracing::warn!(error = %e, "message to an invalid task id ignored"),
            },
            HostCall::Revive => calls.call(stoa_proto::Call::Revive),
            HostCall::Suppress => calls.call(stoa_proto::Call::Suppress),
            HostCall::Reconcile(ids) => {
                let tasks = ids
                    .into_iter()
                    .filter_map(|t| TaskId::new(t).ok())
                    .collect();
                calls.call(stoa_proto::Call::Reconcile { tasks });
            }
            HostCall::Acknowledge {
                agent_id,
                task_id,
                update_id,
            } => {
                if let (Ok(agent_id), Ok(task_id)) = (AgentId::new(agent_id), TaskId::new(task_id))
                {
                    calls.acknowledge(agent_id, task_id, UpdateId(update_id));
                }
            }
            HostCall::SetTimer(id, delay_ms) => {
                let driver_id = calls.set_timer(Duration::from_millis(delay_ms));
                self.timers.insert(driver_id, id);
            }
            HostCall::CancelTimer(id) => {
                let found = self.timers.iter().find(|(_, c)| **c == id).map(|(d, _)| *d);
                if let Some(driver_id) = found {
                    self.timers.remove(&driver_id);
                    calls.cancel_timer(driver_id);
                }
            }
            HostCall::Teardown => calls.teardown(),
        }
    }

    /// A task the host could not turn into a launch: the scheduler hears
    /// of it as TASK_ERROR, as if the master had refused it.
    fn refused_locally(&mut self, calls: &mut Calls, task_id: String, message: String) {
        let status = wit::TaskStatus {
            task_id,
            state: wit::TaskState::Error,
            reason: Some(stoa_proto::Reason::TaskInvalid.to_string()),
            message,
            output: None,
            exit_code: None,
            agent_id: None,
            update_id: None,
            healthy: None,
        };
        self.handle(calls, "update", |i, s| i.call_update(s, &status));
    }
}

impl stoa_client::Scheduler for ComponentScheduler {
    fn subscribed(&mut self, calls: &mut Calls, framework_id: &FrameworkId) {
        let id = framework_id.as_str().to_string();
        self.handle(calls, "subscribed", |i, s| i.call_subscribed(s, &id));
    }

    fn offers(&mut self, calls: &mut Calls, offers: Vec<Offer>) {
        let offers: Vec<wit::Offer> = offers.iter().map(wit_offer).collect();
        self.handle(calls, "offers", |i, s| i.call_offers(s, &offers));
    }

    fn update(&mut self, calls: &mut Calls, status: &TaskStatus, ack: Option<UpdateId>) {
        let status = wit_status(status, ack);
        self.handle(calls, "update", |i, s| i.call_update(s, &status));
    }

    fn rescind(&mut self, calls: &mut Calls, offer_id: OfferId) {
        self.handle(calls, "rescind", |i, s| i.call_rescind(s, offer_id.0));
    }

    fn failure(&mut self, calls: &mut Calls, agent_id: &AgentId) {
        let id = agent_id.as_str().to_string();
        self.handle(calls, "failure", |i, s| i.call_failure(s, &id));
    }

    fn timer(&mut self, calls: &mut Calls, id: u64) {
        if let Some(component_id) = self.timers.remove(&id) {
            self.handle(calls, "timer", |i, s| i.call_timer(s, component_id));
        }
    }

    fn error(&mut self, calls: &mut Calls, message: &str) {
        let message = message.to_string();
        self.handle(calls, "error", |i, s| i.call_error(s, &message));
    }

    fn message(&mut self, calls: &mut Calls, from: Option<&MessageSource>, data: &[u8]) {
        let from = from.map(|f| wit::MessageSource {
            agent_id: f.agent_id.as_str().to_string(),
            task_id: f.task_id.as_str().to_string(),
        });
        self.handle(calls, "message", |i, s| {
            i.call_message(s, from.as_ref(), data)
        });
    }
}

fn wit_offer(o: &Offer) -> wit::Offer {
    use wit::{Offer as O, Scalar as S};
    stoa_proto::wit_offer!(o, O, S)
}

fn wit_status(s: &TaskStatus, ack: Option<UpdateId>) -> wit::TaskStatus {
    use wit::{TaskState as St, TaskStatus as T};
    stoa_proto::wit_task_status!(s, ack, T, St)
}

fn resources(scalars: &[wit::Scalar]) -> Result<Resources, String> {
    Resources::from_amounts(scalars.iter().map(|s| (s.name.as_str(), s.value)))
        .map_err(|e| e.to_string())
}

/// A task spec from a component as the master takes it.
fn task_info(spec: &wit::TaskSpec) -> Result<TaskInfo, String> {
    let task_id = TaskId::new(spec.id.clone()).map_err(|e| format!("task id: {e}"))?;
    let kind = match &spec.program {
        wit::Program::Wasm(w) | wit::Program::WasmEphemeral(w) => {
            let artifact = Artifact::Stored(w.artifact.parse::<Digest>()?);
            let sandbox = match spec.program {
                wit::Program::WasmEphemeral(_) => Sandbox::Ephemeral,
                _ => Sandbox::Directory,
            };
            TaskKind::Wasm(stoa_proto::wasm_from_wit!(w, artifact, sandbox))
        }
        wit::Program::Command(c) => TaskKind::Command(stoa_proto::command_from_wit!(c)),
    };
    Ok(TaskInfo {
        task_id,
        name: spec.name.clone(),
        resources: resources(&spec.resources)?,
        kind,
        limits: TaskLimits {
            fuel: spec.fuel,
            timeout_ms: spec.timeout_ms,
        },
    })
}
