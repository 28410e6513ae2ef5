//! What a task may use, enforced from inside wasmtime: memory and tables
//! through a [`wasmtime::ResourceLimiter`], instance counts before
//! instantiation, CPU share, kills and timeouts on epoch ticks. Every
//! breach is a [`Stopped`] value, so its reason is read from a type.

use crate::exec::kill::Kill;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Core instances a task's component may hold (a Rust wasip2 component has
/// about five; this leaves room for other toolchains).
pub const MAX_INSTANCES: usize = 32;
/// Linear memories a task may define.
pub const MAX_MEMORIES: usize = 4;
/// Tables a task may define.
pub const MAX_TABLES: usize = 32;
/// Elements one table may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 16;

/// Why wasmtime stopped a task.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error(
        "memory limit of {limit} bytes reached (the task's memories would hold {desired} bytes together)"
    )]
    Memory { limit: usize, desired: usize },
    #[error("table limit of {MAX_TABLE_ELEMENTS} elements reached (the task asked for {desired})")]
    Table { desired: usize },
    #[error("killed")]
    Killed,
    #[error("wall-clock timeout of {0:?} passed")]
    Timeout(Duration),
}

/// The store's limiter: memory is the task's `mem`, for all of the task's
/// linear memories together (a component of several core instances has
/// one each); tables and counts are the agent's per-task limits.
#[derive(Debug)]
pub struct TaskLimiter {
    memory: usize,
    /// Bytes of every linear memory of the store, together.
    in_use: usize,
}

impl TaskLimiter {
    pub fn new(memory: usize) -> TaskLimiter {
        TaskLimiter { memory, in_use: 0 }
    }
}

impl wasmtime::ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.in_use.saturating_sub(current).saturating_add(desired);
        if total > self.memory {
            return Err(Stopped::Memory {
                limit: self.memory,
                desired: total,
            }
            .into());
        }
        self.in_use = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(Stopped::Table { desired }.into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// What a binary would instantiate, counted from its sections before any
/// of it runs: going over a count is refused with a clear reason instead
/// of failing somewhere inside instantiation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub instances: usize,
    pub memories: usize,
    pub tables: usize,
}

impl Footprint {
    pub fn of(bytes: &[u8]) -> Result<Footprint, String> {
        use wasmparser::{Instance, Payload};
        let mut f = Footprint::default();
        let mut core_modules = 0usize;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            match payload.map_err(|e| format!("not valid wasm: {e}"))? {
                Payload::Version {
                    encoding: wasmparser::Encoding::Module,
                    ..
                } => core_modules += 1,
                Payload::InstanceSection(section) => {
                    for instance in section {
                        if let Instance::Instantiate { .. } =
                            instance.map_err(|e| format!("not valid wasm: {e}"))?
                        {
                            f.instances += 1;
                        }
                    }
                }
                Payload::MemorySection(s) => f.memories += s.count() as usize,
                Payload::TableSection(s) => f.tables += s.count() as usize,
                _ => {}
            }
        }
        // A lone core module is one instance of itself.
        if !wasmparser::Parser::is_component(bytes) {
            f.instances = core_modules.min(1);
        }
        Ok(f)
    }

    /// Refuses a footprint over the per-task limits.
    pub fn check(&self) -> Result<(), String> {
        let over = [
            ("core instances", self.instances, MAX_INSTANCES),
            ("memories", self.memories, MAX_MEMORIES),
            ("tables", self.tables, MAX_TABLES),
        ]
        .into_iter()
        .find(|(_, n, max)| n > max);
        match over {
            Some((what, n, max)) => Err(format!(
                "the binary defines {n} {what}; a task may have at most {max}"
            )),
            None => Ok(()),
        }
    }
}

/// Keeps a task's CPU use to its `cpus`. The task is charged the CPU time
/// its future used (see [`TaskClock`]) at every epoch tick; once it is more
/// than a burst ahead of its share of the wall clock, the tick pauses it
/// until it is back within its share. Credit for idle time is capped, so a
/// task cannot save up and then hog a core.
#[derive(Debug)]
pub struct CpuShare {
    share: f64,
    clock: Arc<TaskClock>,
    start: Instant,
    last_cpu: Duration,
    /// Wall-clock time the CPU used so far is worth at `share`.
    virtual_time: Duration,
}

const BURST: Duration = Duration::from_millis(20);
const MAX_CREDIT: Duration = Duration::from_millis(100);

impl CpuShare {
    /// `None` when `millicpus` is a whole core or more: a wasm task runs on
    /// one thread at a time and cannot take more than that.
    pub fn new(millicpus: u64, clock: Arc<TaskClock>) -> Option<CpuShare> {
        (millicpus < 1000).then(|| CpuShare {
            share: (millicpus.max(1) as f64) / 1000.0,
            last_cpu: clock.used(),
            clock,
            start: Instant::now(),
            virtual_time: Duration::ZERO,
        })
    }

    /// How long the task must pause now to stay within its share.
    pub fn owed(&mut self) -> Duration {
        let cpu = self.clock.used();
        let used = cpu.saturating_sub(self.last_cpu);
        self.last_cpu = cpu;
        let now = self.start.elapsed();
        let floor = now.saturating_sub(MAX_CREDIT);
        self.virtual_time = self.virtual_time.max(floor) + used.div_f64(self.share);
        let ahead = self.virtual_time.saturating_sub(now);
        if ahead > BURST { ahead } else { Duration::ZERO }
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// The CPU time one task has used. Tasks are futures sharing a few
/// threads, so no thread's clock is the task's own: each poll of the task's
/// future is charged the polling thread's CPU time across it, and a reading
/// taken inside a poll (an epoch tick) adds the poll so far.
#[derive(Debug, Default)]
pub struct TaskClock {
    charged_ns: AtomicU64,
    /// The thread's CPU clock when the current poll began; 0 between polls.
    poll_began_ns: AtomicU64,
}

impl TaskClock {
    pub fn used(&self) -> Duration {
        let began = self.poll_began_ns.load(Ordering::Relaxed);
        let current = match began {
            0 => 0,
            began => nanos(thread_cpu_time()).saturating_sub(began),
        };
        Duration::from_nanos(self.charged_ns.load(Ordering::Relaxed) + current)
    }

    /// Runs `task`, charging this clock for every poll of it.
    pub async fn charge<F: Future>(&self, task: F) -> F::Output {
        let mut task = std::pin::pin!(task);
        std::future::poll_fn(|cx| {
            let began = nanos(thread_cpu_time()).max(1);
            self.poll_began_ns.store(began, Ordering::Relaxed);
            let polled = task.as_mut().poll(cx);
            let spent = nanos(thread_cpu_time()).saturating_sub(began);
            self.poll_began_ns.store(0, Ordering::Relaxed);
            self.charged_ns.fetch_add(spent, Ordering::Relaxed);
            polled
        })
        .await
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What an epoch tick lets a running task do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Step aside for other tasks on this thread, then go on.
    Yield,
    /// Over its CPU share: step aside for this long first.
    Pause(Duration),
}

/// What the epoch callback checks on every tick.
#[derive(Debug)]
pub struct Watch {
    pub kill: Kill,
    pub timeout: Option<(Instant, Duration)>,
    pub cpu: Option<CpuShare>,
}

impl Watch {
    /// Called on every epoch tick, inside the task's poll. A task always
    /// yields at a tick: tasks share threads, and one that never yielded
    /// would keep the others on its thread waiting until it ended.
    pub fn on_tick(&mut self) -> Result<Tick, Stopped> {
        if self.kill.is_triggered() {
            return Err(Stopped::Killed);
        }
        if let Some((deadline, timeout)) = self.timeout
            && Instant::now() >= deadline
        {
            return Err(Stopped::Timeout(timeout));
        }
        // A pause is not cut into ticks: a kill or timeout during one is seen
        // by the task's caller, which drops the task's future.
        Ok(match self.cpu.as_mut().map(CpuShare::owed) {
            None | Some(Duration::ZERO) => Tick::Yield,
            Some(pause) => Tick::Pause(pause),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter as _;

    #[test]
    fn a_binary_over_the_memory_count_is_refused_for_its_memories() {
        let f = Footprint {
            instances: 5,
            memories: MAX_MEMORIES + 1,
            tables: 1,
        };
        let e = f.check().expect_err("too many memories");
        assert!(e.contains("5 memories") && e.contains("at most 4"), "{e}");
    }

    #[test]
    fn the_memory_limit_covers_all_memories_together() {
        let mib = 1 << 20;
        let mut l = TaskLimiter::new(64 * mib);
        // Four memories of 16 MiB fit; growing one of them past the sum
        // does not, though it alone would be far below the limit.
        for _ in 0..4 {
            assert!(matches!(l.memory_growing(0, 16 * mib, None), Ok(true)));
        }
        let e = l
            .memory_growing(16 * mib, 17 * mib, None)
            .expect_err("over the sum");
        assert!(matches!(
            e.downcast_ref::<Stopped>(),
            Some(Stopped::Memory { desired, .. }) if *desired == 65 * mib
        ));
        // Within the sum it may still grow.
        let mut l = TaskLimiter::new(64 * mib);
        assert!(matches!(l.memory_growing(0, 32 * mib, None), Ok(true)));
        assert!(matches!(
            l.memory_growing(32 * mib, 64 * mib, None),
            Ok(true)
        ));
    }
}
