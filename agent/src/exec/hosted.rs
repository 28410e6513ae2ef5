//! A cluster-hosted scheduler instance (`stoa submit`): the executor runs
//! the framework's scheduler component and connects it to the master as
//! the instance the master launched (SUBSCRIBE_HOSTED with the token from
//! the launch). The instance is a task like any other: RUNNING once the
//! component is loaded, FINISHED when the scheduler ends its framework,
//! FAILED when it traps, is refused or loses the master for good, KILLED
//! when the master replaces it.

use crate::exec::kill::Kill;
use crate::exec::scheduler::{ComponentScheduler, SchedulerLimits, SchedulerOutput};
use crate::exec::task_dir::TaskDir;
use crate::exec::wasm::WasmRuntime;
use std::sync::Arc;
use std::time::Duration;
use stoa_client::{ClientConfig, DriverOptions};
use stoa_proto::executor::TaskEvent;
use stoa_proto::side::LogStream;
use stoa_proto::{HostedScheduler, Reason, TaskInfo, TaskState};

/// The shortest time an instance keeps trying to reach a master that went
/// away (a master restart), whatever its framework's failover timeout.
const MIN_RECONNECT: Duration = Duration::from_secs(60);

/// What running an instance needs from its executor.
#[derive(Debug)]
pub struct Instance {
    pub info: TaskInfo,
    pub hosted: HostedScheduler,
    pub dir: TaskDir,
    pub runtime: Arc<WasmRuntime>,
    /// How this executor reaches the master; `None` if the agent did not
    /// say.
    pub master: Option<ClientConfig>,
    pub log_limit: u64,
}

/// Runs the instance until its scheduler stops or `kill` is notified;
/// `running` is called once the component is loaded. Blocks: the
/// scheduler's handlers are synchronous wasm calls, so it gets a thread
/// and a single-threaded runtime of its own.
pub fn run(instance: Instance, kill: &Kill, running: impl FnOnce()) -> TaskEvent {
    let Instance {
        info,
        hosted,
        dir,
        runtime,
        master,
        log_limit,
    } = instance;
    let Some(mut config) = master else {
        return TaskEvent::ended(
            TaskState::Error,
            Reason::TaskInvalid,
            "this executor was started without the master's address; restart the agent",
        );
    };
    let wasm = match runtime.artifact_bytes(&hosted.artifact) {
        Ok(bytes) => bytes,
        Err((reason, message)) => return TaskEvent::ended(TaskState::Error, reason, message),
    };
    let output = match (
        dir.open_log(LogStream::Stdout, log_limit),
        dir.open_log(LogStream::Stderr, log_limit),
    ) {
        (Ok(stdout), Ok(stderr)) => SchedulerOutput::Logs { stdout, stderr },
        (Err(e), _) | (_, Err(e)) => {
            let message = format!("cannot open the scheduler's logs: {e}");
            return TaskEvent::ended(TaskState::Error, Reason::TaskInvalid, message);
        }
    };
    let limits = SchedulerLimits {
        fuel_per_call: hosted.fuel_per_call,
        memory: usize::try_from(info.resources.mem_mib().saturating_mul(1 << 20))
            .unwrap_or(usize::MAX),
    };
    let name = hosted.framework.name.clone();
    let mut scheduler = match ComponentScheduler::new(
        &wasm,
        &name,
        (&hosted.args, &hosted.env),
        limits,
        output,
        runtime.cache(),
    ) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("cannot load the scheduler: {e:#}");
            return TaskEvent::ended(TaskState::Error, Reason::InvalidArtifact, message);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let message = format!("cannot start the scheduler's runtime: {e}");
            return TaskEvent::ended(TaskState::Error, Reason::TaskInvalid, message);
        }
    };
    running();
    config.hosted = Some((info.task_id.clone(), hosted.token));
    let options = DriverOptions {
        // The component acknowledges for itself (the SDK does it for Rust
        // authors).
        implicit_acks: false,
        reconnect_for: Duration::from_millis(hosted.framework.failover_timeout_ms)
            .max(MIN_RECONNECT),
    };
    let ended = rt.block_on(async {
        tokio::select! {
            result = stoa_client::scheduler::run(&config, hosted.framework, &mut scheduler, options) => Some(result),
            () = kill.triggered() => None,
        }
    });
    match ended {
        None => TaskEvent::ended(
            TaskState::Killed,
            Reason::KilledByScheduler,
            "the master stopped this scheduler instance",
        ),
        Some(Ok(_)) => match scheduler.failure() {
            Some(failure) => TaskEvent::ended(TaskState::Failed, Reason::Trap, failure),
            None => TaskEvent::Finished {
                output: Vec::new(),
                exit_code: None,
            },
        },
        Some(Err(e)) => TaskEvent::ended(
            TaskState::Failed,
            Reason::TaskFailed,
            format!("the scheduler stopped: {e:#}"),
        ),
    }
}
