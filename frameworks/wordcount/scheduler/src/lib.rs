//! Wordcount as MapReduce, with delay scheduling for data locality (the
//! Mesos paper's §3.2 and §6.3). Each of `WC_SPLITS` input splits (default
//! 100) is stored on one node: split i on the agent whose `node` attribute
//! is `i mod WC_NODES + 1`. A map task runs best where its split is; when
//! an offer comes from an agent that holds none of the pending splits, the
//! scheduler declines it, up to `WC_DELAY_MS` (default 2,000) after it
//! first could have launched there, and only then runs a split remotely.
//! The reduce sums the counts in the scheduler; the log reports the totals
//! and the fraction of map tasks that ran local to their split.
//!
//! Configuration (WASI environment): `STOA_ARTIFACT_TASK`, `WC_SPLITS`,
//! `WC_WORDS` (words per split, default 10,000), `WC_NODES` (default 2),
//! `WC_DELAY_MS`.

use std::collections::{BTreeMap, BTreeSet};
use stoa_guest::scheduler::{
    Driver, Level, Offer, Program, Scheduler, TaskSpec, TaskState, TaskStatus, WasmProgram,
    artifact, cpus_mem, env_or, fits, set_up_once,
};

const MAP_CPUS: f64 = 0.1;
const MAP_MEM_MIB: f64 = 32.0;
/// How often to look again at waiting splits (the clock delay runs on).
const TICK_MS: u64 = 100;

#[derive(Debug, Default)]
pub struct WordCount {
    artifact: String,
    splits: u64,
    words: u64,
    nodes: u64,
    delay_ms: u64,
    /// Splits not yet launched.
    pending: BTreeSet<u64>,
    /// Launched splits: whether each ran local to its data.
    running: BTreeMap<u64, bool>,
    done: BTreeSet<u64>,
    local: u64,
    counts: BTreeMap<String, u64>,
    /// Milliseconds since the first offer, from timer ticks.
    now_ms: u64,
    /// Since when a non-local launch has been possible but was declined.
    waiting_since: Option<u64>,
}

impl WordCount {
    /// The node that stores `split`.
    pub fn home(&self, split: u64) -> u64 {
        split % self.nodes.max(1) + 1
    }

    fn node_of(offer: &Offer) -> Option<u64> {
        offer
            .attributes
            .iter()
            .find(|(k, _)| k == "node")
            .and_then(|(_, v)| v.parse().ok())
    }

    fn spec(&self, split: u64) -> TaskSpec {
        TaskSpec {
            id: format!("map-{split}"),
            name: format!("map split {split}"),
            resources: cpus_mem(MAP_CPUS, MAP_MEM_MIB),
            program: Program::Wasm(WasmProgram {
                artifact: self.artifact.clone(),
                input: format!("{split} {}", self.words).into_bytes(),
                args: Vec::new(),
                env: Vec::new(),
            }),
            timeout_ms: Some(60_000),
            fuel: None,
        }
    }

    /// Splits to run on an agent (`node`) with room for `room` tasks: local
    /// ones first; remote ones only once the delay is spent.
    fn choose(&mut self, node: Option<u64>, room: usize) -> Vec<(u64, bool)> {
        let local: Vec<u64> = self
            .pending
            .iter()
            .copied()
            .filter(|s| Some(self.home(*s)) == node)
            .take(room)
            .collect();
        let mut chosen: Vec<(u64, bool)> = local.iter().map(|s| (*s, true)).collect();
        let room = room - chosen.len();
        if room > 0 && self.pending.len() > local.len() {
            let since = *self.waiting_since.get_or_insert(self.now_ms);
            if self.now_ms.saturating_sub(since) >= self.delay_ms {
                chosen.extend(
                    self.pending
                        .iter()
                        .copied()
                        .filter(|s| !local.contains(s))
                        .take(room)
                        .map(|s| (s, false)),
                );
            }
        }
        for (split, _) in &chosen {
            self.pending.remove(split);
        }
        if chosen.iter().any(|(_, local)| *local) {
            // Locality is still being found: the delay starts over.
            self.waiting_since = None;
        }
        chosen
    }

    fn configure(&mut self) -> Result<(), String> {
        self.artifact = artifact("task")?;
        self.splits = env_or("WC_SPLITS", 100)?;
        self.words = env_or("WC_WORDS", 10_000)?;
        self.nodes = env_or("WC_NODES", 2)?;
        self.delay_ms = env_or("WC_DELAY_MS", 2_000)?;
        self.pending = (0..self.splits).collect();
        Ok(())
    }
}

fn split_of(task_id: &str) -> Option<u64> {
    task_id.strip_prefix("map-")?.parse().ok()
}

impl Scheduler for WordCount {
    fn subscribed(&mut self, driver: &mut dyn Driver, framework_id: &str) {
        set_up_once(driver, !self.artifact.is_empty(), |d| {
            self.configure()?;
            d.set_timer(TICK_MS);
            Ok(format!(
                "{framework_id}: {} splits on {} nodes, delay {} ms",
                self.splits, self.nodes, self.delay_ms
            ))
        });
    }

    fn offers(&mut self, driver: &mut dyn Driver, offers: Vec<Offer>) {
        for offer in offers {
            let room = fits(&offer, MAP_CPUS, MAP_MEM_MIB, self.pending.len());
            let chosen = self.choose(Self::node_of(&offer), room);
            if chosen.is_empty() {
                // Short: the delay is counted in ticks, and a local split
                // may want this agent soon.
                driver.decline(&[offer.id], Some(TICK_MS));
                continue;
            }
            let tasks = chosen.iter().map(|(s, _)| self.spec(*s)).collect();
            self.running.extend(chosen);
            driver.accept(&[offer.id], tasks, Some(TICK_MS));
        }
    }

    fn update(&mut self, driver: &mut dyn Driver, status: &TaskStatus) {
        let Some(split) = split_of(&status.task_id) else {
            return;
        };
        if self.done.contains(&split) {
            return;
        }
        match status.state {
            TaskState::Finished => {
                let Some(local) = self.running.remove(&split) else {
                    return;
                };
                let text = String::from_utf8_lossy(status.output.as_deref().unwrap_or_default())
                    .into_owned();
                for line in text.lines() {
                    if let Some((word, n)) = line.split_once(' ')
                        && let Ok(n) = n.parse::<u64>()
                    {
                        *self.counts.entry(word.to_string()).or_insert(0) += n;
                    }
                }
                self.done.insert(split);
                self.local += u64::from(local);
                if self.done.len() as u64 == self.splits {
                    let total: u64 = self.counts.values().sum();
                    let top = self
                        .counts
                        .iter()
                        .max_by_key(|(_, n)| **n)
                        .map(|(w, n)| format!("{w} ({n})"))
                        .unwrap_or_default();
                    driver.log(
                        Level::Info,
                        &format!(
                            "counted {total} words in {} splits; most frequent: {top}; local map tasks: {}/{} = {:.2}",
                            self.splits,
                            self.local,
                            self.splits,
                            self.local as f64 / self.splits as f64
                        ),
                    );
                    driver.teardown();
                }
            }
            TaskState::Staging | TaskState::Starting | TaskState::Running | TaskState::Killing => {}
            _ => {
                driver.log(
                    Level::Warn,
                    &format!("map-{split} ended {:?}; again", status.state),
                );
                self.running.remove(&split);
                self.pending.insert(split);
                driver.revive();
            }
        }
    }

    fn timer(&mut self, driver: &mut dyn Driver, _id: u64) {
        self.now_ms += TICK_MS;
        if self.done.len() as u64 != self.splits {
            driver.set_timer(TICK_MS);
        }
    }
}

stoa_guest::export_scheduler!(WordCount);

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_guest::scheduler::Recorder;

    fn offer(node: u64, cpus: f64) -> Offer {
        Offer {
            id: node,
            agent_id: format!("a{node}"),
            hostname: format!("host-{node}"),
            resources: cpus_mem(cpus, 1024.0),
            attributes: vec![("node".into(), node.to_string())],
            revocable: false,
        }
    }

    fn wc() -> WordCount {
        WordCount {
            artifact: "sha256:00".into(),
            splits: 4,
            words: 10,
            nodes: 2,
            delay_ms: 300,
            pending: (0..4).collect(),
            ..WordCount::default()
        }
    }

    #[test]
    fn local_splits_go_first_and_remote_ones_only_after_the_delay() {
        let mut w = wc();
        let mut d = Recorder::default();
        // Node 1 holds splits 0 and 2; it has room for three.
        w.offers(&mut d, vec![offer(1, 0.3)]);
        assert_eq!(w.running.get(&0), Some(&true));
        assert_eq!(w.running.get(&2), Some(&true));
        assert_eq!(w.pending, [1, 3].into());
        // Node 1 again: only remote splits are left, and the delay holds.
        w.offers(&mut d, vec![offer(1, 0.3)]);
        assert_eq!(w.pending, [1, 3].into());
        for _ in 0..3 {
            w.timer(&mut d, 1);
        }
        w.offers(&mut d, vec![offer(1, 0.3)]);
        assert_eq!(w.running.get(&1), Some(&false), "remote after the delay");
        assert_eq!(w.home(3), 2);
    }
}
