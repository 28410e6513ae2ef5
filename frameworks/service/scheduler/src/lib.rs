//! Long-running services, in the manner of Marathon: keeps
//! `SERVICE_INSTANCES` instances of a task running, replaces one that
//! ends or is lost (after a backoff that grows with failures in a row),
//! and survives its own restarts: a new scheduler instance (a failover,
//! e.g. a cluster-hosted scheduler moved to another agent) first
//! reconciles, adopts the instances still running, and only then launches
//! what is missing.
//!
//! Configuration (WASI environment):
//! - `STOA_ARTIFACT_TASK` and `SERVICE_INPUT`: a wasm task and its input;
//!   or `SERVICE_COMMAND`: a native shell command (`/bin/sh -c`; needs the
//!   master's `launch_native` permission), killed with SIGTERM and, after
//!   `SERVICE_GRACE_MS` (default 3,000), SIGKILL;
//! - `SERVICE_HEALTH`: a shell command that checks a native instance
//!   every `SERVICE_HEALTH_INTERVAL_MS` (default 10,000), within
//!   `SERVICE_HEALTH_TIMEOUT_MS` (default 5,000); after
//!   `SERVICE_HEALTH_FAILURES` failures in a row (default 3) the agent
//!   kills the instance, and it is replaced. Failures in its first
//!   `SERVICE_HEALTH_GRACE_MS` (default 0) do not count;
//! - `SERVICE_INSTANCES` (default 2), `SERVICE_CPUS` (default 0.1),
//!   `SERVICE_MEM` (MiB, default 32).
//!
//! `stoa framework message ID "scale N"` changes the number of instances
//! while it runs: more are launched, or the newest are killed.

use std::collections::BTreeMap;
use stoa_guest::scheduler::{
    CommandProgram, Driver, HealthCheck, Level, MessageSource, Offer, Program, Scheduler, TaskSpec,
    TaskState, TaskStatus, WasmProgram, artifact, cpus_mem, env_or, fits, set_up_once,
};

/// How long a new scheduler instance waits for reconciliation before it
/// launches anything.
const SETTLE_MS: u64 = 1_000;
const FIRST_BACKOFF_MS: u64 = 500;
const MAX_BACKOFF_MS: u64 = 30_000;

#[derive(Debug, Default)]
pub struct Service {
    program: Option<Program>,
    instances: usize,
    cpus: f64,
    mem: f64,
    /// Instances launched or running, by task id.
    live: BTreeMap<String, TaskState>,
    /// Reconciliation is over: offers may be used.
    settled: bool,
    settle_timer: Option<u64>,
    /// Launches are held back until this timer fires.
    backoff_timer: Option<u64>,
    failures: u32,
    /// Names this scheduler instance's launches apart from earlier ones'.
    epoch: String,
    launched: u64,
}

impl Service {
    fn configure(&mut self) -> Result<String, String> {
        self.instances = env_or("SERVICE_INSTANCES", 2)?;
        self.cpus = env_or("SERVICE_CPUS", 0.1)?;
        self.mem = env_or("SERVICE_MEM", 32.0)?;
        let command: String = env_or("SERVICE_COMMAND", String::new())?;
        let program = if command.trim().is_empty() {
            Program::Wasm(WasmProgram {
                artifact: artifact("task")?,
                input: env_or("SERVICE_INPUT", String::new())?.into_bytes(),
                args: Vec::new(),
                env: Vec::new(),
            })
        } else {
            let health: String = env_or("SERVICE_HEALTH", String::new())?;
            let health_check = if health.trim().is_empty() {
                None
            } else {
                Some(HealthCheck {
                    argv: shell(&health),
                    interval_ms: env_or("SERVICE_HEALTH_INTERVAL_MS", 10_000)?,
                    timeout_ms: env_or("SERVICE_HEALTH_TIMEOUT_MS", 5_000)?,
                    grace_period_ms: env_or("SERVICE_HEALTH_GRACE_MS", 0)?,
                    max_failures: env_or("SERVICE_HEALTH_FAILURES", 3)?,
                })
            };
            Program::Command(CommandProgram {
                argv: shell(&command),
                env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
                input: Vec::new(),
                kill_grace_ms: Some(env_or("SERVICE_GRACE_MS", 3_000)?),
                health_check,
            })
        };
        self.program = Some(program);
        Ok(format!(
            "keeping {} instances of {} cpus, {} MiB running",
            self.instances, self.cpus, self.mem
        ))
    }

    fn spec(&mut self) -> Option<TaskSpec> {
        let program = self.program.clone()?;
        self.launched += 1;
        Some(TaskSpec {
            id: format!("svc-{}-{:06}", self.epoch, self.launched),
            name: "service instance".into(),
            resources: cpus_mem(self.cpus, self.mem),
            program,
            timeout_ms: None,
            fuel: None,
        })
    }

    fn missing(&self) -> usize {
        self.instances.saturating_sub(self.live.len())
    }
}

impl Scheduler for Service {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        set_up_once(driver, self.program.is_some(), |_| {
            let line = self.configure()?;
            Ok(format!("{framework_id}: {line}"))
        });
        // Every subscription, the first included: this scheduler may be a
        // new instance of a framework whose tasks are running.
        self.epoch = format!("{:x}", epoch_now());
        self.settled = false;
        driver.reconcile(&[]);
        self.settle_timer = Some(driver.set_timer(SETTLE_MS));
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            let ready = self.settled && self.backoff_timer.is_none();
            let room = fits(&offer, self.cpus, self.mem, self.missing());
            if !ready || room == 0 {
                driver.decline(&[offer.id], Some(if ready { 5_000 } else { 500 }));
                continue;
            }
            let tasks: Vec<TaskSpec> = (0..room).filter_map(|_| self.spec()).collect();
            for t in &tasks {
                self.live.insert(t.id.clone(), TaskState::Staging);
            }
            driver.log(
                Level::Info,
                &format!("launching {} instances on {}", tasks.len(), offer.hostname),
            );
            driver.accept(&[offer.id], tasks, None);
        }
        if self.missing() == 0 {
            driver.suppress();
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        if !status.task_id.starts_with("svc-") {
            return;
        }
        let id = status.task_id.clone();
        match status.healthy {
            Some(false) => driver.log(Level::Warn, &format!("{id} is unhealthy")),
            Some(true) => driver.log(Level::Info, &format!("{id} is healthy")),
            None => {}
        }
        match status.state {
            TaskState::Staging | TaskState::Starting | TaskState::Running => {
                if !self.live.contains_key(&id) {
                    if self.live.len() >= self.instances {
                        driver.log(Level::Info, &format!("{id} is one too many; killing it"));
                        driver.kill(&id);
                        return;
                    }
                    driver.log(
                        Level::Info,
                        &format!("adopted {id}, running before this scheduler started"),
                    );
                }
                if status.state == TaskState::Running
                    && self.live.get(&id) != Some(&TaskState::Running)
                {
                    self.failures = 0;
                }
                self.live.insert(id, status.state);
            }
            TaskState::Killing => {}
            state => {
                // Ended, or out of reach (UNREACHABLE): replaced either way;
                // one that comes back is then one too many and is killed.
                if self.live.remove(&id).is_none() {
                    return;
                }
                driver.log(
                    Level::Warn,
                    &format!(
                        "{id} ended {} ({}): {}; replacing it",
                        format!("{state:?}").trim_start_matches("TaskState::"),
                        status.reason.as_deref().unwrap_or("-"),
                        status.message
                    ),
                );
                if state != TaskState::Finished && state != TaskState::Unreachable {
                    self.failures = self.failures.saturating_add(1);
                }
                if self.failures > 0 && self.backoff_timer.is_none() {
                    let backoff = FIRST_BACKOFF_MS
                        .saturating_mul(1 << (self.failures - 1).min(10))
                        .min(MAX_BACKOFF_MS);
                    self.backoff_timer = Some(driver.set_timer(backoff));
                } else {
                    driver.revive();
                }
            }
        }
    }

    fn message(&mut self, driver: &mut dyn Driver, source: Option<&MessageSource>, data: &[u8]) {
        if let Some(task) = source {
            // Service tasks are commands; only an operator scales.
            driver.log(
                Level::Warn,
                &format!("ignoring a message from task {}", task.task_id),
            );
            return;
        }
        let text = String::from_utf8_lossy(data);
        let Some(n) = text
            .trim()
            .strip_prefix("scale ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        else {
            driver.log(
                Level::Warn,
                &format!("ignoring message {text:?}: expected \"scale N\""),
            );
            return;
        };
        driver.log(
            Level::Info,
            &format!("scaling from {} to {n} instances", self.instances),
        );
        self.instances = n;
        // The newest go first: their ids sort last within this epoch.
        let extra = self.live.len().saturating_sub(n);
        let doomed: Vec<String> = self.live.keys().rev().take(extra).cloned().collect();
        for id in doomed {
            self.live.remove(&id);
            driver.kill(&id);
        }
        if self.missing() > 0 {
            driver.revive();
        }
    }

    fn timer(&mut self, driver: &mut dyn Driver, id: u64) {
        if self.settle_timer == Some(id) {
            self.settle_timer = None;
            self.settled = true;
            driver.log(
                Level::Info,
                &format!("reconciled: {} instances running", self.live.len()),
            );
        }
        if self.backoff_timer == Some(id) {
            self.backoff_timer = None;
        }
        if self.missing() > 0 {
            driver.revive();
        }
    }
}

/// `command` run by the shell.
fn shell(command: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), command.into()]
}

/// Wall-clock nanoseconds: distinct across this scheduler's instances.
fn epoch_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

stoa_guest::export_scheduler!(Service);

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_guest::scheduler::{Recorded, Recorder};

    fn offer(cpus: f64) -> Offer {
        Offer {
            id: 7,
            agent_id: "a".into(),
            hostname: "h".into(),
            resources: cpus_mem(cpus, 1024.0),
            attributes: Vec::new(),
            revocable: false,
        }
    }

    fn status(id: &str, state: TaskState) -> TaskStatus {
        TaskStatus {
            task_id: id.into(),
            state,
            reason: None,
            message: String::new(),
            output: None,
            exit_code: None,
            agent_id: Some("a".into()),
            update_id: None,
            healthy: None,
        }
    }

    fn service(instances: usize) -> Service {
        Service {
            program: Some(Program::Command(CommandProgram {
                argv: vec!["sleep".into(), "600".into()],
                env: Vec::new(),
                input: Vec::new(),
                kill_grace_ms: Some(100),
                health_check: None,
            })),
            instances,
            cpus: 0.5,
            mem: 32.0,
            epoch: "e".into(),
            ..Service::default()
        }
    }

    fn settle(s: &mut Service, d: &mut Recorder) {
        s.settle_timer = Some(1);
        s.timer(d, 1);
    }

    fn launched(calls: &[Recorded]) -> usize {
        calls
            .iter()
            .map(|c| match c {
                Recorded::Accept { tasks, .. } => tasks.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn waits_for_reconciliation_then_fills_up_to_the_target() {
        let (mut s, mut d) = (service(3), Recorder::default());
        s.offers(&mut d, vec![offer(4.0)]);
        assert_eq!(launched(&d.take()), 0, "nothing before reconciliation");
        settle(&mut s, &mut d);
        s.offers(&mut d, vec![offer(1.0)]);
        assert_eq!(launched(&d.take()), 2, "1 cpu holds two 0.5-cpu instances");
        s.offers(&mut d, vec![offer(4.0)]);
        let calls = d.take();
        assert_eq!(launched(&calls), 1, "{calls:?}");
        assert!(calls.contains(&Recorded::Suppress), "{calls:?}");
    }

    #[test]
    fn adopts_running_instances_after_a_failover_and_kills_extras() {
        let (mut s, mut d) = (service(2), Recorder::default());
        s.update(&mut d, &status("svc-old-1", TaskState::Running));
        s.update(&mut d, &status("svc-old-2", TaskState::Running));
        s.update(&mut d, &status("svc-old-3", TaskState::Running));
        let calls = d.take();
        assert!(
            calls.contains(&Recorded::Kill("svc-old-3".into())),
            "{calls:?}"
        );
        settle(&mut s, &mut d);
        s.offers(&mut d, vec![offer(4.0)]);
        assert_eq!(launched(&d.take()), 0, "both adopted instances count");
    }

    #[test]
    fn a_scale_message_launches_more_or_kills_the_extra() {
        let (mut s, mut d) = (service(1), Recorder::default());
        settle(&mut s, &mut d);
        s.message(&mut d, None, b"scale 3");
        assert!(d.take().contains(&Recorded::Revive));
        s.offers(&mut d, vec![offer(4.0)]);
        assert_eq!(launched(&d.take()), 3);
        s.message(&mut d, None, b"scale 1");
        let kills = d
            .take()
            .into_iter()
            .filter(|c| matches!(c, Recorded::Kill(_)))
            .count();
        assert_eq!((kills, s.live.len()), (2, 1));
        s.message(&mut d, None, b"grow please");
        assert!(matches!(&d.take()[..], [Recorded::Log(Level::Warn, _)]));
    }

    #[test]
    fn replaces_failed_instances_after_a_growing_backoff() {
        let (mut s, mut d) = (service(1), Recorder::default());
        settle(&mut s, &mut d);
        s.offers(&mut d, vec![offer(1.0)]);
        let id = s.live.keys().next().cloned().unwrap_or_default();
        s.update(&mut d, &status(&id, TaskState::Running));
        d.take();
        s.update(&mut d, &status(&id, TaskState::Failed));
        assert!(
            d.take()
                .iter()
                .any(|c| matches!(c, Recorded::SetTimer { delay_ms: 500, .. })),
            "first failure: 500 ms"
        );
        s.offers(&mut d, vec![offer(1.0)]);
        assert_eq!(launched(&d.take()), 0, "held back during the backoff");
        let timer = s.backoff_timer.unwrap_or_default();
        s.timer(&mut d, timer);
        s.offers(&mut d, vec![offer(1.0)]);
        let id2 = s.live.keys().next().cloned().unwrap_or_default();
        s.update(&mut d, &status(&id2, TaskState::Failed));
        assert!(
            d.take().iter().any(|c| matches!(
                c,
                Recorded::SetTimer {
                    delay_ms: 1_000,
                    ..
                }
            )),
            "second failure in a row: 1 s"
        );
    }
}
