//! Spark-like logistic regression: `IT_ITERATIONS` iterations (default 20)
//! over `IT_PARTITIONS` partitions (default 8) of `IT_POINTS` points each
//! (default 2,000). Each iteration launches one task per partition with the
//! current weights; when every gradient is in, the weights take a step and
//! the next iteration starts. A partition runs again on the agent it ran on
//! before (where its data would be cached) whenever that agent is offered;
//! elsewhere only when its agent is busy or gone. The log reports the loss
//! per iteration, the final weights and how often partitions stayed put.
//!
//! Configuration (WASI environment): `STOA_ARTIFACT_TASK`, `IT_ITERATIONS`,
//! `IT_PARTITIONS`, `IT_POINTS`, `IT_STEP` (default 2.0).

use std::collections::{BTreeMap, BTreeSet};
use stoa_guest::scheduler::{
    Driver, Level, Offer, Program, Scheduler, TaskSpec, TaskState, TaskStatus, WasmProgram,
    artifact, cpus_mem, env_or, fits, set_up_once,
};

const TASK_CPUS: f64 = 0.1;
const TASK_MEM_MIB: f64 = 32.0;

#[derive(Debug, Default)]
pub struct Iterative {
    artifact: String,
    iterations: u32,
    partitions: u64,
    points: u64,
    step: f64,
    iteration: u32,
    weights: [f64; 3],
    pending: BTreeSet<u64>,
    gradients: BTreeMap<u64, ([f64; 3], f64)>,
    /// Where each partition last ran: its cache.
    home: BTreeMap<u64, String>,
    stayed: u64,
    moved: u64,
    /// The loss of each finished iteration.
    losses: Vec<f64>,
}

impl Iterative {
    fn task_id(&self, partition: u64) -> String {
        format!("i{}-p{partition}", self.iteration)
    }

    fn spec(&self, partition: u64) -> TaskSpec {
        let [w0, w1, w2] = self.weights;
        TaskSpec {
            id: self.task_id(partition),
            name: format!("iteration {} partition {partition}", self.iteration),
            resources: cpus_mem(TASK_CPUS, TASK_MEM_MIB),
            program: Program::Wasm(WasmProgram {
                artifact: self.artifact.clone(),
                input: format!("{partition} {} {w0} {w1} {w2}", self.points).into_bytes(),
                args: Vec::new(),
                env: Vec::new(),
            }),
            timeout_ms: Some(60_000),
            fuel: None,
        }
    }

    fn partition_of(&self, task_id: &str) -> Option<u64> {
        let rest = task_id.strip_prefix(&format!("i{}-p", self.iteration))?;
        rest.parse().ok()
    }

    /// Partitions to run on `agent`: those cached there first, then ones
    /// with no cache yet or whose agent did not come (second pass).
    fn choose(&mut self, agent: &str, room: usize, strangers_ok: bool) -> Vec<u64> {
        let mut chosen: Vec<u64> = self
            .pending
            .iter()
            .copied()
            .filter(|p| self.home.get(p).is_some_and(|h| h == agent))
            .take(room)
            .collect();
        let left = room - chosen.len();
        let others = self
            .pending
            .iter()
            .copied()
            .filter(|p| !chosen.contains(p))
            .filter(|p| strangers_ok || !self.home.contains_key(p))
            .take(left)
            .collect::<Vec<_>>();
        chosen.extend(others);
        for p in &chosen {
            self.pending.remove(p);
            match self.home.insert(*p, agent.to_string()) {
                Some(old) if old == agent => self.stayed += 1,
                Some(_) => self.moved += 1,
                None => {}
            }
        }
        chosen
    }

    fn configure(&mut self) -> Result<(), String> {
        self.artifact = artifact("task")?;
        self.iterations = env_or("IT_ITERATIONS", 20)?;
        self.partitions = env_or("IT_PARTITIONS", 8)?;
        self.points = env_or("IT_POINTS", 2_000)?;
        self.step = env_or("IT_STEP", 2.0)?;
        self.pending = (0..self.partitions).collect();
        Ok(())
    }

    fn finish_iteration(&mut self, driver: &mut dyn Driver) {
        let n = (self.partitions * self.points).max(1) as f64;
        let (mut g, mut loss) = ([0.0; 3], 0.0);
        for (pg, pl) in self.gradients.values() {
            for (gi, pgi) in g.iter_mut().zip(pg) {
                *gi += pgi;
            }
            loss += pl;
        }
        for (w, gi) in self.weights.iter_mut().zip(g) {
            *w -= self.step * gi / n;
        }
        self.losses.push(loss / n);
        driver.log(
            Level::Info,
            &format!("iteration {}: loss {:.4}", self.iteration + 1, loss / n),
        );
        self.gradients.clear();
        self.iteration += 1;
        if self.iteration == self.iterations {
            let [w0, w1, w2] = self.weights;
            driver.log(
                Level::Info,
                &format!(
                    "done: {} iterations, loss {:.4} → {:.4}, weights ({w0:.2}, {w1:.2}, {w2:.2}); partitions stayed on their agent {}/{} times",
                    self.iterations,
                    self.losses.first().copied().unwrap_or_default(),
                    loss / n,
                    self.stayed,
                    self.stayed + self.moved
                ),
            );
            driver.teardown();
        } else {
            self.pending = (0..self.partitions).collect();
            driver.revive();
        }
    }
}

impl Scheduler for Iterative {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        set_up_once(driver, !self.artifact.is_empty(), |_| {
            self.configure()?;
            Ok(format!(
                "{framework_id}: {} iterations over {} partitions",
                self.iterations, self.partitions
            ))
        });
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        // Cached partitions go home first; a second pass places the rest
        // wherever there is room, so an absent agent does not stall.
        let mut rooms: Vec<(Offer, usize, Vec<u64>)> = offers
            .into_iter()
            .map(|o| {
                let room = fits(&o, TASK_CPUS, TASK_MEM_MIB, usize::MAX);
                (o, room, Vec::new())
            })
            .collect();
        for strangers_ok in [false, true] {
            for (offer, room, chosen) in rooms.iter_mut() {
                let more = self.choose(&offer.agent_id, *room - chosen.len(), strangers_ok);
                chosen.extend(more);
            }
        }
        for (offer, _, chosen) in rooms {
            if chosen.is_empty() {
                driver.decline(&[offer.id], Some(100));
            } else {
                let tasks = chosen.iter().map(|p| self.spec(*p)).collect();
                driver.accept(&[offer.id], tasks, Some(100));
            }
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        let Some(partition) = self.partition_of(&status.task_id) else {
            return; // an earlier iteration's
        };
        match status.state {
            TaskState::Finished => {
                let text = String::from_utf8_lossy(status.output.as_deref().unwrap_or_default())
                    .into_owned();
                let v: Vec<f64> = text
                    .split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect();
                if let [g0, g1, g2, loss] = v[..] {
                    self.gradients.insert(partition, ([g0, g1, g2], loss));
                    if self.gradients.len() as u64 == self.partitions {
                        self.finish_iteration(driver);
                    }
                }
            }
            TaskState::Staging | TaskState::Starting | TaskState::Running | TaskState::Killing => {}
            _ => {
                self.pending.insert(partition);
                driver.revive();
            }
        }
    }
}

stoa_guest::export_scheduler!(Iterative);

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_guest::scheduler::Recorder;

    fn offer(agent: &str) -> Offer {
        Offer {
            id: 1,
            agent_id: agent.into(),
            hostname: agent.into(),
            resources: cpus_mem(0.2, 1024.0),
            attributes: Vec::new(),
            revocable: false,
        }
    }

    #[test]
    fn partitions_go_back_to_the_agent_they_ran_on() {
        let mut it = Iterative {
            artifact: "sha256:00".into(),
            iterations: 2,
            partitions: 4,
            points: 10,
            step: 1.0,
            pending: (0..4).collect(),
            ..Iterative::default()
        };
        let mut d = Recorder::default();
        it.offers(&mut d, vec![offer("a"), offer("b")]);
        assert_eq!(it.home.get(&0).map(String::as_str), Some("a"));
        assert_eq!(it.home.get(&2).map(String::as_str), Some("b"));
        // The next iteration: the same partitions, offered the other way round.
        it.iteration = 1;
        it.pending = (0..4).collect();
        it.offers(&mut d, vec![offer("b"), offer("a")]);
        assert_eq!(it.home.get(&0).map(String::as_str), Some("a"));
        assert_eq!((it.stayed, it.moved), (4, 0));
    }
}
