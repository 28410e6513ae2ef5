//! Monte-Carlo π over many short tasks: a throughput framework. Each task
//! samples `PI_SAMPLES` points (default 10,000); `PI_TASKS` of them
//! (default 100,000) are launched as fast as offers allow, failed ones run
//! again, and the estimate is logged when all are in.
//!
//! Configuration (WASI environment): `STOA_ARTIFACT_TASK` (the pi task's
//! digest), `PI_TASKS`, `PI_SAMPLES`.

use std::collections::{BTreeSet, VecDeque};
use stoa_guest::scheduler::{
    Driver, Level, Offer, Program, Scheduler, TaskSpec, TaskState, TaskStatus, WasmProgram,
    artifact, cpus_mem, env_or, fits, set_up_once,
};

const TASK_CPUS: f64 = 0.05;
const TASK_MEM_MIB: f64 = 16.0;

#[derive(Debug, Default)]
pub struct Pi {
    artifact: String,
    samples: u64,
    total: usize,
    pending: VecDeque<usize>,
    done: BTreeSet<usize>,
    hits: u64,
    retries: usize,
}

impl Pi {
    fn spec(&self, i: usize) -> TaskSpec {
        TaskSpec {
            id: format!("pi-{i}"),
            name: format!("pi batch {i}"),
            resources: cpus_mem(TASK_CPUS, TASK_MEM_MIB),
            // A batch needs no files, and without a directory a short
            // task costs its agent far less.
            program: Program::WasmEphemeral(WasmProgram {
                artifact: self.artifact.clone(),
                input: format!("{i} {}", self.samples).into_bytes(),
                args: Vec::new(),
                env: Vec::new(),
            }),
            timeout_ms: Some(60_000),
            fuel: None,
        }
    }

    /// The estimate so far.
    pub fn estimate(&self) -> f64 {
        let points = self.done.len() as f64 * self.samples as f64;
        if points == 0.0 {
            0.0
        } else {
            4.0 * self.hits as f64 / points
        }
    }

    fn configure(&mut self) -> Result<(), String> {
        self.artifact = artifact("task")?;
        self.total = env_or("PI_TASKS", 100_000)?;
        self.samples = env_or("PI_SAMPLES", 10_000)?;
        self.pending = (0..self.total).collect();
        Ok(())
    }
}

fn index_of(task_id: &str) -> Option<usize> {
    task_id.strip_prefix("pi-")?.parse().ok()
}

impl Scheduler for Pi {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        // After a failover there is nothing to set up: carry on.
        set_up_once(driver, !self.artifact.is_empty(), |_| {
            self.configure()?;
            Ok(format!(
                "{framework_id}: {} tasks of {} samples",
                self.total, self.samples
            ))
        });
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            let n = fits(&offer, TASK_CPUS, TASK_MEM_MIB, self.pending.len());
            let batch: Vec<usize> = self.pending.drain(..n).collect();
            if batch.is_empty() {
                driver.decline(&[offer.id], Some(5_000));
            } else {
                let tasks = batch.into_iter().map(|i| self.spec(i)).collect();
                driver.accept(&[offer.id], tasks, Some(0));
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
        if self.done.contains(&i) {
            return;
        }
        let hits = match status.state {
            TaskState::Finished => status
                .output
                .as_deref()
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|s| s.trim().parse::<u64>().ok()),
            TaskState::Staging | TaskState::Starting | TaskState::Running | TaskState::Killing => {
                return;
            }
            _ => None,
        };
        match hits {
            Some(hits) => {
                self.hits += hits;
                self.done.insert(i);
                if self.done.len() == self.total {
                    driver.log(
                        Level::Info,
                        &format!(
                            "pi ≈ {:.6} from {} tasks × {} samples ({} retried)",
                            self.estimate(),
                            self.total,
                            self.samples,
                            self.retries
                        ),
                    );
                    driver.teardown();
                }
            }
            None => {
                self.retries += 1;
                driver.log(
                    Level::Warn,
                    &format!("pi-{i} ended {:?}: {}; again", status.state, status.message),
                );
                self.pending.push_back(i);
                driver.revive();
            }
        }
    }
}

stoa_guest::export_scheduler!(Pi);

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_guest::scheduler::{Recorded, Recorder, deliver_update};

    fn status(i: usize, state: TaskState, output: &str) -> TaskStatus {
        TaskStatus {
            task_id: format!("pi-{i}"),
            state,
            reason: None,
            message: String::new(),
            output: Some(output.as_bytes().to_vec()),
            exit_code: None,
            agent_id: Some("a".into()),
            update_id: Some(1),
            healthy: None,
        }
    }

    #[test]
    fn sums_batches_retries_failures_and_tears_down() {
        let mut pi = Pi {
            artifact: "sha256:00".into(),
            samples: 100,
            total: 2,
            pending: (0..2).collect(),
            ..Pi::default()
        };
        let mut d = Recorder::default();
        let offer = Offer {
            id: 1,
            agent_id: "a".into(),
            hostname: "h".into(),
            resources: cpus_mem(1.0, 1024.0),
            attributes: Vec::new(),
            revocable: false,
        };
        pi.offers(&mut d, vec![offer]);
        assert!(
            matches!(&d.take()[..], [Recorded::Accept { tasks, .. }, Recorded::Suppress] if tasks.len() == 2)
        );
        deliver_update(&mut pi, &mut d, &status(0, TaskState::Finished, "80"));
        deliver_update(&mut pi, &mut d, &status(1, TaskState::Failed, ""));
        assert!(d.take().contains(&Recorded::Revive));
        deliver_update(&mut pi, &mut d, &status(1, TaskState::Finished, "77"));
        assert!(d.take().contains(&Recorded::Teardown));
        assert_eq!(pi.hits, 157);
        assert!((pi.estimate() - 4.0 * 157.0 / 200.0).abs() < 1e-12);
    }
}
