//! When finished tasks' directories (sandbox and logs) are collected:
//! `delay` after the agent forgets the task, or sooner, oldest first,
//! once more than `max_dirs` are kept (like Nomad's `gc_max_allocs`).
//!
//! A busy framework finishes thousands of tasks a second; without the
//! count bound an agent would keep an hour of them, filling its disk (or,
//! on tmpfs, its executors' memory, which the files are charged to). The
//! delay is the same for every directory, so the queue is in due order
//! and both bounds are checked at its front.

use std::collections::VecDeque;
use std::time::Duration;
use stoa_proto::{FrameworkId, TaskId, Time};

#[derive(Debug)]
pub(crate) struct Sandboxes {
    delay: Duration,
    max_dirs: usize,
    queue: VecDeque<(Time, FrameworkId, TaskId)>,
}

impl Sandboxes {
    pub(crate) fn new(delay: Duration, max_dirs: usize) -> Self {
        Sandboxes {
            delay,
            max_dirs,
            queue: VecDeque::new(),
        }
    }

    pub(crate) fn set_policy(&mut self, delay: Duration, max_dirs: usize) {
        self.delay = delay;
        self.max_dirs = max_dirs;
    }

    /// A task was forgotten at `now`: its directory goes after the delay.
    pub(crate) fn finished(&mut self, now: Time, framework: FrameworkId, task: TaskId) {
        self.queue.push_back((now + self.delay, framework, task));
    }

    /// Directories a previous agent process left, each with how long ago
    /// it was last written. Call before any [`Sandboxes::finished`]: their
    /// due times are no later than those of tasks that end from now on.
    pub(crate) fn left_behind(
        &mut self,
        now: Time,
        dirs: impl IntoIterator<Item = (FrameworkId, TaskId, Duration)>,
    ) {
        let mut old: Vec<_> = dirs
            .into_iter()
            .map(|(f, t, age)| (now + self.delay.saturating_sub(age), f, t))
            .collect();
        old.sort_by_key(|(due, _, _)| *due);
        self.queue.extend(old);
    }

    /// When the oldest directory is due by time. (Past the count they are
    /// due at once: callers take [`Sandboxes::due`] after each
    /// [`Sandboxes::finished`].)
    pub(crate) fn next_due(&self) -> Option<Time> {
        self.queue.front().map(|(due, _, _)| *due)
    }

    /// The directories to collect now, oldest first.
    pub(crate) fn due(&mut self, now: Time) -> Vec<(FrameworkId, TaskId)> {
        let mut out = Vec::new();
        while let Some((due, _, _)) = self.queue.front() {
            if *due > now && self.queue.len() <= self.max_dirs {
                break;
            }
            if let Some((_, f, t)) = self.queue.pop_front() {
                out.push((f, t));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> anyhow::Result<(FrameworkId, TaskId)> {
        Ok((FrameworkId::new("f")?, TaskId::new(format!("t{n}"))?))
    }

    fn names(due: Vec<(FrameworkId, TaskId)>) -> Vec<String> {
        due.into_iter().map(|(_, t)| t.to_string()).collect()
    }

    fn secs(s: u64) -> Time {
        Time::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn directories_go_after_the_delay_or_oldest_first_past_the_count() -> anyhow::Result<()> {
        let mut gc = Sandboxes::new(Duration::from_secs(60), 3);
        for n in 0..3 {
            let (f, t) = ids(n)?;
            gc.finished(secs(n as u64), f, t);
        }
        assert!(gc.due(secs(2)).is_empty(), "three are allowed");
        assert_eq!(gc.next_due(), Some(secs(60)));
        for n in 3..5 {
            let (f, t) = ids(n)?;
            gc.finished(secs(n as u64), f, t);
        }
        assert_eq!(names(gc.due(secs(5))), ["t0", "t1"], "over the count");
        // Then by time alone.
        assert_eq!(names(gc.due(secs(62))), ["t2"]);
        assert_eq!(names(gc.due(secs(100))), ["t3", "t4"]);
        assert_eq!(gc.next_due(), None);
        Ok(())
    }

    #[test]
    fn directories_left_behind_count_their_age_and_come_first() -> anyhow::Result<()> {
        let now = secs(1_000);
        let mut gc = Sandboxes::new(Duration::from_secs(60), 100);
        let (f, young) = ids(1)?;
        let (_, old) = ids(2)?;
        gc.left_behind(
            now,
            [
                (f.clone(), young, Duration::from_secs(10)),
                (f.clone(), old, Duration::from_secs(600)),
            ],
        );
        let (_, new) = ids(3)?;
        gc.finished(now, f, new);
        assert_eq!(names(gc.due(now)), ["t2"], "past its delay already");
        assert_eq!(names(gc.due(now + Duration::from_secs(50))), ["t1"]);
        assert_eq!(names(gc.due(now + Duration::from_secs(60))), ["t3"]);
        Ok(())
    }
}
