//! MPI-style gang scheduling: all `GANG_SIZE` ranks (default 4) of a job
//! launch together with a launch group, on one offer big enough for all of
//! them, or none does. A failed rank fails the gang: the others are killed
//! and the whole gang runs again (up to 3 times). The ranks' outputs are
//! summed as a reduce would.
//!
//! Configuration (WASI environment): `STOA_ARTIFACT_TASK` (the rank's
//! digest), `GANG_SIZE`, `GANG_N` (the sum's bound, default 1,000,000),
//! `GANG_RANK_CPUS` (default 0.25), `GANG_WAIT_MS` (how long to wait for an
//! offer that fits the gang before giving up, default 30,000).

use std::collections::BTreeMap;
use stoa_guest::scheduler::{
    Driver, Level, Offer, Program, Scheduler, TaskSpec, TaskState, TaskStatus, WasmProgram,
    artifact, cpus_mem, env_or, fits, set_up_once,
};

const RANK_MEM_MIB: f64 = 32.0;
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Default)]
pub struct Gang {
    artifact: String,
    size: usize,
    n: u64,
    rank_cpus: f64,
    /// Which launch of the gang this is; rank ids carry it.
    attempt: u32,
    /// Launched and not yet over: rank → its partial sum once finished.
    ranks: BTreeMap<usize, Option<u64>>,
    give_up_timer: Option<u64>,
}

impl Gang {
    fn rank_id(&self, rank: usize) -> String {
        format!("a{}-rank-{rank}", self.attempt)
    }

    fn specs(&self) -> Vec<TaskSpec> {
        (0..self.size)
            .map(|rank| TaskSpec {
                id: self.rank_id(rank),
                name: format!("rank {rank} of {}", self.size),
                resources: cpus_mem(self.rank_cpus, RANK_MEM_MIB),
                program: Program::Wasm(WasmProgram {
                    artifact: self.artifact.clone(),
                    input: format!("{rank} {} {}", self.size, self.n).into_bytes(),
                    args: Vec::new(),
                    env: Vec::new(),
                }),
                timeout_ms: Some(60_000),
                fuel: None,
            })
            .collect()
    }

    fn rank_of(&self, task_id: &str) -> Option<usize> {
        let rest = task_id.strip_prefix(&format!("a{}-rank-", self.attempt))?;
        rest.parse().ok()
    }

    fn configure(&mut self) -> Result<(), String> {
        self.artifact = artifact("task")?;
        self.size = env_or("GANG_SIZE", 4)?;
        self.n = env_or("GANG_N", 1_000_000)?;
        self.rank_cpus = env_or("GANG_RANK_CPUS", 0.25)?;
        if self.size == 0 {
            return Err("GANG_SIZE must be at least 1".into());
        }
        Ok(())
    }
}

impl Scheduler for Gang {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        set_up_once(driver, !self.artifact.is_empty(), |d| {
            self.configure()?;
            let wait = env_or("GANG_WAIT_MS", 30_000)?;
            self.give_up_timer = Some(d.set_timer(wait));
            Ok(format!(
                "{framework_id}: a gang of {} ranks × {} cpus",
                self.size, self.rank_cpus
            ))
        });
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            let room = fits(&offer, self.rank_cpus, RANK_MEM_MIB, self.size);
            if !self.ranks.is_empty() || self.artifact.is_empty() || room < self.size {
                driver.decline(&[offer.id], Some(1_000));
                continue;
            }
            self.ranks = (0..self.size).map(|r| (r, None)).collect();
            driver.log(
                Level::Info,
                &format!("launching all {} ranks on {}", self.size, offer.hostname),
            );
            driver.launch_group(&[offer.id], self.specs(), None);
            if let Some(timer) = self.give_up_timer.take() {
                driver.cancel_timer(timer);
            }
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        let Some(rank) = self.rank_of(&status.task_id) else {
            return; // a rank of an earlier attempt
        };
        match status.state {
            TaskState::Finished => {
                let sum = status
                    .output
                    .as_deref()
                    .and_then(|o| std::str::from_utf8(o).ok())
                    .and_then(|s| s.parse().ok());
                self.ranks.insert(rank, sum);
                if self.ranks.values().all(Option::is_some) {
                    let total: u64 = self.ranks.values().flatten().sum();
                    driver.log(
                        Level::Info,
                        &format!(
                            "gang of {} finished: sum = {total} (attempt {})",
                            self.size,
                            self.attempt + 1
                        ),
                    );
                    driver.teardown();
                }
            }
            TaskState::Staging | TaskState::Starting | TaskState::Running | TaskState::Killing => {}
            _ => {
                driver.log(
                    Level::Warn,
                    &format!(
                        "rank {rank} ended {:?} ({}): {}; the gang fails",
                        status.state,
                        status.reason.as_deref().unwrap_or("-"),
                        status.message
                    ),
                );
                for other in 0..self.size {
                    if other != rank && self.ranks.get(&other).is_some_and(Option::is_none) {
                        driver.kill(&self.rank_id(other));
                    }
                }
                self.ranks.clear();
                self.attempt += 1;
                if self.attempt >= MAX_ATTEMPTS {
                    driver.log(Level::Error, "the gang failed 3 times; giving up");
                    driver.teardown();
                } else {
                    driver.revive();
                }
            }
        }
    }

    fn timer(&mut self, driver: &mut dyn Driver, id: u64) {
        if self.give_up_timer == Some(id) && self.ranks.is_empty() {
            driver.log(
                Level::Error,
                &format!(
                    "no offer fits a gang of {} ranks × {} cpus; giving up",
                    self.size, self.rank_cpus
                ),
            );
            driver.teardown();
        }
    }
}

stoa_guest::export_scheduler!(Gang);

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_guest::scheduler::{Recorded, Recorder, deliver_update};

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

    fn status(id: &str, state: TaskState, output: &str) -> TaskStatus {
        TaskStatus {
            task_id: id.into(),
            state,
            reason: None,
            message: String::new(),
            output: Some(output.as_bytes().to_vec()),
            exit_code: None,
            agent_id: Some("a".into()),
            update_id: None,
            healthy: None,
        }
    }

    fn gang() -> Gang {
        Gang {
            artifact: "sha256:00".into(),
            size: 3,
            n: 10,
            rank_cpus: 0.5,
            ..Gang::default()
        }
    }

    #[test]
    fn launches_all_ranks_in_one_group_or_waits() {
        let mut g = gang();
        let mut d = Recorder::default();
        g.offers(&mut d, vec![offer(1.0)]);
        assert!(
            matches!(&d.take()[..], [Recorded::Decline { .. }]),
            "1 cpu fits 2 of 3 ranks"
        );
        g.offers(&mut d, vec![offer(2.0)]);
        let calls = d.take();
        assert!(
            matches!(&calls[..], [Recorded::Log(..), Recorded::Accept { group: true, tasks, .. }] if tasks.len() == 3),
            "{calls:?}"
        );
    }

    #[test]
    fn a_failed_rank_kills_the_others_and_the_gang_runs_again() {
        let mut g = gang();
        let mut d = Recorder::default();
        g.offers(&mut d, vec![offer(2.0)]);
        d.take();
        deliver_update(
            &mut g,
            &mut d,
            &status("a0-rank-0", TaskState::Finished, "22"),
        );
        deliver_update(&mut g, &mut d, &status("a0-rank-1", TaskState::Failed, ""));
        let calls = d.take();
        assert!(
            calls.contains(&Recorded::Kill("a0-rank-2".into())),
            "{calls:?}"
        );
        assert!(calls.contains(&Recorded::Revive));
        // The second attempt's ranks have new ids; the first's are ignored.
        g.offers(&mut d, vec![offer(2.0)]);
        d.take();
        deliver_update(&mut g, &mut d, &status("a0-rank-2", TaskState::Killed, ""));
        for (rank, sum) in [(0, "22"), (1, "15"), (2, "18")] {
            deliver_update(
                &mut g,
                &mut d,
                &status(&format!("a1-rank-{rank}"), TaskState::Finished, sum),
            );
        }
        let calls = d.take();
        assert!(calls.contains(&Recorded::Teardown), "{calls:?}");
        assert!(
            calls
                .iter()
                .any(|c| matches!(c, Recorded::Log(_, m) if m.contains("sum = 55")))
        );
    }
}
