//! What a task may use, enforced from inside wasmtime: memory and tables
//! through a [`wasmtime::ResourceLimiter`], instance counts before
//! instantiation, CPU share, kills and timeouts on epoch ticks. Every
//! breach is a [`Stopped`] value, so its reason is read from a type.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    #[error("memory limit of {limit} bytes reached (the task asked for {desired} bytes)")]
    Memory { limit: usize, desired: usize },
    #[error("table limit of {MAX_TABLE_ELEMENTS} elements reached (the task asked for {desired})")]
    Table { desired: usize },
    #[error("killed")]
    Killed,
    #[error("wall-clock timeout of {0:?} passed")]
    Timeout(Duration),
}

/// The store's limiter: memory is the task's `mem`, tables and counts are
/// the agent's per-task limits.
#[derive(Debug)]
pub struct TaskLimiter {
    pub memory: usize,
}

impl wasmtime::ResourceLimiter for TaskLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            return Err(Stopped::Memory {
                limit: self.memory,
                desired,
            }
            .into());
        }
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

/// Keeps a task's CPU use to its `cpus`. The task's thread is charged its
/// own CPU time (the kernel's per-thread clock) at every epoch tick; once it
/// is more than a burst ahead of its share of the wall clock, the tick
/// sleeps it until it is back within its share. Credit for idle time is
/// capped, so a task cannot save up and then hog a core.
#[derive(Debug)]
pub struct CpuShare {
    share: f64,
    start: Instant,
    last_cpu: Duration,
    /// Wall-clock time the CPU used so far is worth at `share`.
    virtual_time: Duration,
}

const BURST: Duration = Duration::from_millis(20);
const MAX_CREDIT: Duration = Duration::from_millis(100);

impl CpuShare {
    /// `None` when `millicpus` is a whole core or more: a wasm task runs on
    /// one thread and cannot take more than that.
    pub fn new(millicpus: u64) -> Option<CpuShare> {
        (millicpus < 1000).then(|| CpuShare {
            share: (millicpus.max(1) as f64) / 1000.0,
            start: Instant::now(),
            last_cpu: thread_cpu_time(),
            virtual_time: Duration::ZERO,
        })
    }

    /// How long the task must pause now to stay within its share.
    pub fn owed(&mut self) -> Duration {
        let cpu = thread_cpu_time();
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

/// What the epoch callback checks on every tick.
#[derive(Debug)]
pub struct Watch {
    pub kill: Arc<AtomicBool>,
    pub timeout: Option<(Instant, Duration)>,
    pub cpu: Option<CpuShare>,
    pub tick: Duration,
}

impl Watch {
    /// Called on every epoch tick, on the task's thread.
    pub fn on_tick(&mut self) -> Result<(), Stopped> {
        loop {
            if self.kill.load(Ordering::Relaxed) {
                return Err(Stopped::Killed);
            }
            if let Some((deadline, timeout)) = self.timeout
                && Instant::now() >= deadline
            {
                return Err(Stopped::Timeout(timeout));
            }
            let owed = self.cpu.as_mut().map(CpuShare::owed).unwrap_or_default();
            if owed.is_zero() {
                return Ok(());
            }
            // Pause in ticks, so a kill or timeout is still seen promptly.
            std::thread::sleep(owed.min(self.tick));
        }
    }
}
