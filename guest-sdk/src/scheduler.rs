//! Schedulers: a type implementing [`Scheduler`] (and `Default`), exported
//! with [`crate::export_scheduler!`], becomes a `stoa:scheduler` component.
//! Its state lives in the instance between calls. The same type runs
//! natively in tests against any [`Driver`], such as [`Recorder`].

use crate::scheduler_bindings::stoa::scheduler::driver;
pub use crate::scheduler_bindings::stoa::scheduler::types::{
    CommandProgram, HealthCheck, Level, MessageSource, Offer, Program, Scalar, TaskSpec, TaskState,
    TaskStatus, WasmProgram,
};

/// What a scheduler may ask of the master. Calls are sent when the handler
/// that made them returns.
pub trait Driver {
    /// Uses offers (all of one agent) to launch `tasks`; what they leave is
    /// not offered again for `refuse_ms`.
    fn accept(&mut self, offer_ids: &[u64], tasks: Vec<TaskSpec>, refuse_ms: Option<u64>);
    /// All of `tasks` launch, or none.
    fn launch_group(&mut self, offer_ids: &[u64], tasks: Vec<TaskSpec>, refuse_ms: Option<u64>);
    fn decline(&mut self, offer_ids: &[u64], refuse_ms: Option<u64>);
    fn kill(&mut self, task_id: &str);
    /// Sends `data` to a running task's inbox (best effort; a task that
    /// cannot get it comes back as [`Scheduler::error`]).
    fn send_message(&mut self, task_id: &str, data: &[u8]);
    fn revive(&mut self);
    fn suppress(&mut self);
    /// The latest state of `task_ids`, or of every task when empty.
    fn reconcile(&mut self, task_ids: &[String]);
    /// Done for you after [`Scheduler::update`] returns.
    fn acknowledge(&mut self, agent_id: &str, task_id: &str, update_id: u64);
    /// Calls [`Scheduler::timer`] with the returned id after `delay_ms`.
    fn set_timer(&mut self, delay_ms: u64) -> u64;
    fn cancel_timer(&mut self, id: u64);
    fn log(&mut self, level: Level, message: &str);
    /// Ends the framework: its tasks are killed, the scheduler stops.
    fn teardown(&mut self);
}

/// A framework's scheduler. Every handler may call the master through
/// `driver`.
pub trait Scheduler: Default + 'static {
    /// SUBSCRIBED: first, and again after each failover.
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        let _ = (driver, framework_id);
    }
    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>);
    /// A task's state; acknowledged for you once this returns.
    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus);
    fn rescind(&mut self, driver: &mut dyn Driver, offer_id: u64) {
        let _ = (driver, offer_id);
    }
    /// An agent was lost; updates for its tasks follow.
    fn failure(&mut self, driver: &mut dyn Driver, agent_id: &str) {
        let _ = (driver, agent_id);
    }
    fn timer(&mut self, driver: &mut dyn Driver, id: u64) {
        let _ = (driver, id);
    }
    /// The master refused a call.
    fn error(&mut self, driver: &mut dyn Driver, message: &str) {
        let _ = (driver, message);
    }
    /// Bytes sent to the framework: by one of its tasks (`source`), or
    /// from outside (`stoa framework message`, `source` is `None`).
    fn message(&mut self, driver: &mut dyn Driver, source: Option<&MessageSource>, data: &[u8]) {
        let _ = (driver, source, data);
    }
}

/// The driver of a scheduler component: the host's imports.
#[derive(Debug, Default)]
pub struct Host;

impl Driver for Host {
    fn accept(&mut self, offer_ids: &[u64], tasks: Vec<TaskSpec>, refuse_ms: Option<u64>) {
        driver::accept(offer_ids, &tasks, refuse_ms);
    }
    fn launch_group(&mut self, offer_ids: &[u64], tasks: Vec<TaskSpec>, refuse_ms: Option<u64>) {
        driver::launch_group(offer_ids, &tasks, refuse_ms);
    }
    fn decline(&mut self, offer_ids: &[u64], refuse_ms: Option<u64>) {
        driver::decline(offer_ids, refuse_ms);
    }
    fn kill(&mut self, task_id: &str) {
        driver::kill(task_id);
    }
    fn send_message(&mut self, task_id: &str, data: &[u8]) {
        driver::send_message(task_id, data);
    }
    fn revive(&mut self) {
        driver::revive();
    }
    fn suppress(&mut self) {
        driver::suppress();
    }
    fn reconcile(&mut self, task_ids: &[String]) {
        driver::reconcile(task_ids);
    }
    fn acknowledge(&mut self, agent_id: &str, task_id: &str, update_id: u64) {
        driver::acknowledge(agent_id, task_id, update_id);
    }
    fn set_timer(&mut self, delay_ms: u64) -> u64 {
        driver::set_timer(delay_ms)
    }
    fn cancel_timer(&mut self, id: u64) {
        driver::cancel_timer(id);
    }
    fn log(&mut self, level: Level, message: &str) {
        driver::log(level, message);
    }
    fn teardown(&mut self) {
        driver::teardown();
    }
}

/// A call a scheduler made, as [`Recorder`] keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Accept {
        offer_ids: Vec<u64>,
        tasks: Vec<TaskSpec>,
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
    SetTimer {
        id: u64,
        delay_ms: u64,
    },
    CancelTimer(u64),
    Log(Level, String),
    Teardown,
}

/// A [`Driver`] that keeps every call, for running a scheduler natively:
/// in unit tests, or in a host that turns the calls into messages.
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: Vec<Recorded>,
    next_timer: u64,
}

impl Recorder {
    /// The calls made since the last take.
    pub fn take(&mut self) -> Vec<Recorded> {
        std::mem::take(&mut self.calls)
    }
}

impl Driver for Recorder {
    fn accept(&mut self, offer_ids: &[u64], tasks: Vec<TaskSpec>, refuse_ms: Option<u64>) {
        self.calls.push(Recorded::Accept {
            offer_ids: offer_ids.to_vec(),
            tasks,
            group: false,
            refuse_ms,
        });
    }
    fn launch_group(&mut self, offer_ids: &[u64], tasks: Vec<TaskSpec>, refuse_ms: Option<u64>) {
        self.calls.push(Recorded::Accept {
            offer_ids: offer_ids.to_vec(),
            tasks,
            group: true,
            refuse_ms,
        });
    }
    fn decline(&mut self, offer_ids: &[u64], refuse_ms: Option<u64>) {
        self.calls.push(Recorded::Decline {
            offer_ids: offer_ids.to_vec(),
            refuse_ms,
        });
    }
    fn kill(&mut self, task_id: &str) {
        self.calls.push(Recorded::Kill(task_id.into()));
    }
    fn send_message(&mut self, task_id: &str, data: &[u8]) {
        self.calls
            .push(Recorded::Message(task_id.into(), data.to_vec()));
    }
    fn revive(&mut self) {
        self.calls.push(Recorded::Revive);
    }
    fn suppress(&mut self) {
        self.calls.push(Recorded::Suppress);
    }
    fn reconcile(&mut self, task_ids: &[String]) {
        self.calls.push(Recorded::Reconcile(task_ids.to_vec()));
    }
    fn acknowledge(&mut self, agent_id: &str, task_id: &str, update_id: u64) {
        self.calls.push(Recorded::Acknowledge {
            agent_id: agent_id.into(),
            task_id: task_id.into(),
            update_id,
        });
    }
    fn set_timer(&mut self, delay_ms: u64) -> u64 {
        self.next_timer += 1;
        self.calls.push(Recorded::SetTimer {
            id: self.next_timer,
            delay_ms,
        });
        self.next_timer
    }
    fn cancel_timer(&mut self, id: u64) {
        self.calls.push(Recorded::CancelTimer(id));
    }
    fn log(&mut self, level: Level, message: &str) {
        self.calls.push(Recorded::Log(level, message.into()));
    }
    fn teardown(&mut self) {
        self.calls.push(Recorded::Teardown);
    }
}

/// Hands an update to `scheduler`, then acknowledges it if it needs it:
/// what the export glue does for every update.
pub fn deliver_update<S: Scheduler>(
    scheduler: &mut S,
    driver: &mut dyn Driver,
    status: &TaskStatus,
) {
    scheduler.update(driver, status);
    if let (Some(update_id), Some(agent_id)) = (status.update_id, &status.agent_id) {
        driver.acknowledge(agent_id, &status.task_id, update_id);
    }
}

/// Reads a scalar (`cpus`, `mem`, …) of an offer's resources; 0 if absent.
pub fn scalar(resources: &[Scalar], name: &str) -> f64 {
    resources
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// Sets a scheduler up on its first SUBSCRIBED, not again after a
/// failover (`already`): `setup` returns a line to log, or an error, which
/// is logged before the framework is torn down.
pub fn set_up_once(
    driver: &mut dyn Driver,
    already: bool,
    setup: impl FnOnce(&mut dyn Driver) -> Result<String, String>,
) {
    if already {
        return;
    }
    match setup(driver) {
        Ok(line) => driver.log(Level::Info, &line),
        Err(message) => {
            driver.log(Level::Error, &message);
            driver.teardown();
        }
    }
}

/// Environment variable `name` as a `T`, or `default` when it is unset.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

/// The digest of the artifact the host uploaded as `name` (`stoa framework
/// run --artifact NAME=PATH` sets `STOA_ARTIFACT_<NAME>`).
pub fn artifact(name: &str) -> Result<String, String> {
    let var = format!("STOA_ARTIFACT_{}", name.to_ascii_uppercase());
    std::env::var(&var)
        .map_err(|_| format!("{var} is not set: run with --artifact {name}=PATH.wasm"))
}

/// How many tasks of `cpus` and `mem_mib` each fit in `offer`, at most
/// `max`.
pub fn fits(offer: &Offer, cpus: f64, mem_mib: f64, max: usize) -> usize {
    let by = |have: f64, need: f64| {
        if need <= 0.0 {
            usize::MAX
        } else {
            // A hair of slack for sums of fractions (0.1 × 10 ≠ 1.0).
            ((have + 1e-9) / need).floor() as usize
        }
    };
    by(scalar(&offer.resources, "cpus"), cpus)
        .min(by(scalar(&offer.resources, "mem"), mem_mib))
        .min(max)
}

/// `cpus` and `mem` (MiB) as a resource list.
pub fn cpus_mem(cpus: f64, mem_mib: f64) -> Vec<Scalar> {
    vec![
        Scalar {
            name: "cpus".into(),
            value: cpus,
        },
        Scalar {
            name: "mem".into(),
            value: mem_mib,
        },
    ]
}

/// Exports a type implementing [`Scheduler`] and `Default` as the
/// component's handlers. One instance of the type lives as long as the
/// component instance; updates are acknowledged after `update` returns.
#[macro_export]
macro_rules! export_scheduler {
    ($ty:ty) => {
        struct __StoaScheduler;

        ::std::thread_local! {
            static __STOA_SCHEDULER: ::core::cell::RefCell<::core::option::Option<$ty>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        fn __stoa_with(f: impl FnOnce(&mut $ty, &mut $crate::scheduler::Host)) {
            __STOA_SCHEDULER.with(|cell| {
                let mut state = cell.borrow_mut();
                let scheduler = state.get_or_insert_with(::core::default::Default::default);
                f(scheduler, &mut $crate::scheduler::Host)
            })
        }

        impl $crate::scheduler_bindings::Guest for __StoaScheduler {
            fn subscribed(framework_id: ::std::string::String) {
                __stoa_with(|s, d| $crate::scheduler::Scheduler::subscribed(s, d, &framework_id))
            }
            fn offers(offers: ::std::vec::Vec<$crate::scheduler::Offer>) {
                __stoa_with(|s, d| $crate::scheduler::Scheduler::offers(s, d, offers))
            }
            fn update(status: $crate::scheduler::TaskStatus) {
                __stoa_with(|s, d| $crate::scheduler::deliver_update(s, d, &status))
            }
            fn rescind(offer_id: u64) {
                __stoa_with(|s, d| $crate::scheduler::Scheduler::rescind(s, d, offer_id))
            }
            fn failure(agent_id: ::std::string::String) {
                __stoa_with(|s, d| $crate::scheduler::Scheduler::failure(s, d, &agent_id))
            }
            fn timer(id: u64) {
                __stoa_with(|s, d| $crate::scheduler::Scheduler::timer(s, d, id))
            }
            fn error(message: ::std::string::String) {
                __stoa_with(|s, d| $crate::scheduler::Scheduler::error(s, d, &message))
            }
            fn message(
                source: ::core::option::Option<$crate::scheduler::MessageSource>,
                data: ::std::vec::Vec<u8>,
            ) {
                __stoa_with(|s, d| {
                    $crate::scheduler::Scheduler::message(s, d, source.as_ref(), &data)
                })
            }
        }

        $crate::scheduler_bindings::export_scheduler_world!(__StoaScheduler);
    };
}
