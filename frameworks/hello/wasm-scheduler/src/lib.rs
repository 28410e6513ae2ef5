//! The hello framework's scheduler as a wasm component: launches
//! `HELLO_TASKS` (default 20) hello tasks on whatever offers come, checks
//! each greeting, and tears the framework down once all have finished.
//!
//! Configuration (WASI environment): `STOA_ARTIFACT_TASK`, the digest of
//! the uploaded hello task (`stoa framework run --artifact task=…` sets
//! it); `HELLO_TASKS`, how many to run.

use std::collections::{BTreeSet, VecDeque};
use stoa_guest::scheduler::{
    Driver, Level, Offer, Program, Scheduler, TaskSpec, TaskState, TaskStatus, WasmProgram,
    artifact, cpus_mem, env_or, fits,
};

const TASK_CPUS: f64 = 0.1;
const TASK_MEM_MIB: f64 = 32.0;

#[derive(Debug, Default)]
pub struct Hello {
    artifact: String,
    total: usize,
    pending: VecDeque<usize>,
    finished: BTreeSet<usize>,
    /// Set when the configuration is unusable: nothing is launched.
    broken: bool,
}

impl Hello {
    /// A scheduler already configured, for running natively (tests, the
    /// simulator) where there is no WASI environment to read.
    pub fn new(artifact: impl Into<String>, total: usize) -> Hello {
        Hello {
            artifact: artifact.into(),
            total,
            pending: (0..total).collect(),
            ..Hello::default()
        }
    }

    fn spec(&self, i: usize) -> TaskSpec {
        TaskSpec {
            id: format!("task-{i}"),
            name: format!("hello {i}"),
            resources: cpus_mem(TASK_CPUS, TASK_MEM_MIB),
            program: Program::Wasm(WasmProgram {
                artifact: self.artifact.clone(),
                input: format!("task-{i}").into_bytes(),
                args: Vec::new(),
                env: Vec::new(),
            }),
            timeout_ms: Some(30_000),
            fuel: Some(1_000_000_000),
        }
    }
}

fn index_of(task_id: &str) -> Option<usize> {
    task_id.strip_prefix("task-")?.parse().ok()
}

impl Scheduler for Hello {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        // Plain WASI output works too: it reaches the host's stderr, or the
        // scheduler's log when the cluster hosts it.
        eprintln!("hello: subscribed as {framework_id}");
        if self.total > 0 {
            // A failover: what is still pending is still to do.
            driver.log(Level::Info, &format!("resubscribed as {framework_id}"));
            return;
        }
        let configured = artifact("task").and_then(|a| Ok((a, env_or("HELLO_TASKS", 20)?)));
        match configured {
            Ok((artifact, total)) => (self.artifact, self.total) = (artifact, total),
            Err(message) => {
                driver.log(Level::Error, &message);
                self.broken = true;
                driver.teardown();
                return;
            }
        }
        self.pending = (0..self.total).collect();
        driver.log(
            Level::Info,
            &format!("subscribed as {framework_id}; {} tasks to run", self.total),
        );
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            let n = if self.broken {
                0
            } else {
                fits(&offer, TASK_CPUS, TASK_MEM_MIB, self.pending.len())
            };
            let tasks: Vec<TaskSpec> = self
                .pending
                .drain(..n)
                .collect::<Vec<_>>()
                .into_iter()
                .map(|i| self.spec(i))
                .collect();
            if tasks.is_empty() {
                driver.decline(&[offer.id], Some(5_000));
            } else {
                driver.accept(&[offer.id], tasks, None);
            }
        }
        if self.pending.is_empty() {
            driver.suppress();
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        let Some(i) = index_of(&status.task_id) else {
            return;
        };
        match status.state {
            TaskState::Finished => {
                let output = String::from_utf8_lossy(status.output.as_deref().unwrap_or_default());
                let expected = format!("hello, task-{i}");
                if output != expected {
                    driver.log(
                        Level::Error,
                        &format!("task-{i} answered {output:?}, expected {expected:?}"),
                    );
                    self.pending.push_back(i);
                    driver.revive();
                    return;
                }
                self.finished.insert(i);
                if self.finished.len() == self.total {
                    driver.log(Level::Info, &format!("all {} tasks finished", self.total));
                    driver.teardown();
                }
            }
            TaskState::Failed
            | TaskState::Killed
            | TaskState::Error
            | TaskState::Lost
            | TaskState::Dropped
            | TaskState::Gone => {
                driver.log(
                    Level::Warn,
                    &format!(
                        "task-{i} ended {:?} ({}): {}; running it again",
                        status.state,
                        status.reason.as_deref().unwrap_or("-"),
                        status.message
                    ),
                );
                if !self.finished.contains(&i) && !self.pending.contains(&i) {
                    self.pending.push_back(i);
                    driver.revive();
                }
            }
            _ => {}
        }
    }
}

stoa_guest::export_scheduler!(Hello);

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_guest::scheduler::{Recorded, Recorder, deliver_update};

    fn offer(id: u64, cpus: f64) -> Offer {
        Offer {
            id,
            agent_id: "a1".into(),
            hostname: "h".into(),
            resources: cpus_mem(cpus, 1024.0),
            attributes: Vec::new(),
            revocable: false,
        }
    }

    fn finished(i: usize, output: &str) -> TaskStatus {
        TaskStatus {
            task_id: format!("task-{i}"),
            state: TaskState::Finished,
            reason: None,
            message: String::new(),
            output: Some(output.as_bytes().to_vec()),
            exit_code: None,
            agent_id: Some("a1".into()),
            update_id: Some(i as u64 + 100),
            healthy: None,
        }
    }

    /// Natively, against a recording driver: the same code the component runs.
    #[test]
    fn launches_what_fits_retries_wrong_answers_and_tears_down_when_done() {
        let mut hello = Hello {
            artifact: "sha256:00".into(),
            total: 3,
            pending: (0..3).collect(),
            ..Hello::default()
        };
        let mut d = Recorder::default();
        hello.offers(&mut d, vec![offer(1, 0.25)]);
        let calls = d.take();
        assert!(
            matches!(&calls[..], [Recorded::Accept { offer_ids, tasks, .. }] if offer_ids == &[1] && tasks.len() == 2),
            "{calls:?}"
        );
        hello.offers(&mut d, vec![offer(2, 1.0)]);
        assert!(matches!(
            d.take()[..],
            [Recorded::Accept { .. }, Recorded::Suppress]
        ));

        deliver_update(&mut hello, &mut d, &finished(0, "hello, task-0"));
        deliver_update(&mut hello, &mut d, &finished(1, "wrong"));
        let calls = d.take();
        assert!(calls.contains(&Recorded::Revive), "{calls:?}");
        assert!(calls.contains(&Recorded::Acknowledge {
            agent_id: "a1".into(),
            task_id: "task-1".into(),
            update_id: 101
        }));
        deliver_update(&mut hello, &mut d, &finished(2, "hello, task-2"));
        assert!(!d.take().contains(&Recorded::Teardown));
        hello.offers(&mut d, vec![offer(3, 1.0)]);
        d.take();
        deliver_update(&mut hello, &mut d, &finished(1, "hello, task-1"));
        assert!(d.take().contains(&Recorded::Teardown));
    }
}
