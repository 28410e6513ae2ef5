//! What a cgroup's limits are in each version's files. Pure: the values
//! are computed here and written by [`super::Cgroup::set_limits`].

/// The CFS period both versions use: quotas are in microseconds of it.
pub const CPU_PERIOD_US: u64 = 100_000;

/// The smallest quota the kernel accepts.
const MIN_QUOTA_US: u64 = 1_000;

/// A cgroup's bounds, from a task's (or an executor's) resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU in thousandths of a core: both a share and a hard quota.
    pub millicpus: u64,
    /// Memory, with no swap beyond it.
    pub mem_bytes: u64,
    /// Processes and threads at once; unlimited when `None`.
    pub max_pids: Option<u32>,
}

/// Which hierarchy a v1 file lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Cpu,
    Memory,
    Pids,
}

/// One value to write: the controller, the file, the value.
pub type Write = (Controller, &'static str, String);

/// `cpu.shares` of cgroup v1: 1024 for a whole core, at least 2.
fn shares(millicpus: u64) -> u64 {
    (millicpus.saturating_mul(1024) / 1000).max(2)
}

fn quota_us(millicpus: u64) -> u64 {
    (millicpus.saturating_mul(CPU_PERIOD_US) / 1000).max(MIN_QUOTA_US)
}

fn pids(max: Option<u32>) -> String {
    max.map_or_else(|| "max".to_string(), |n| n.to_string())
}

/// The v1 writes, in an order the kernel accepts for a new cgroup (memory
/// before memory+swap: the first may never exceed the second). `memsw` says
/// whether the host accounts swap (`memory.memsw.*` exists).
pub fn v1(limits: &Limits, memsw: bool) -> Vec<Write> {
    let mut writes = vec![
        (
            Controller::Cpu,
            "cpu.shares",
            shares(limits.millicpus).to_string(),
        ),
        (
            Controller::Cpu,
            "cpu.cfs_period_us",
            CPU_PERIOD_US.to_string(),
        ),
        (
            Controller::Cpu,
            "cpu.cfs_quota_us",
            quota_us(limits.millicpus).to_string(),
        ),
        (
            Controller::Memory,
            "memory.limit_in_bytes",
            limits.mem_bytes.to_string(),
        ),
    ];
    if memsw {
        writes.push((
            Controller::Memory,
            "memory.memsw.limit_in_bytes",
            limits.mem_bytes.to_string(),
        ));
    }
    writes.push((Controller::Pids, "pids.max", pids(limits.max_pids)));
    writes
}

/// The v2 writes. `cpu.weight` maps shares onto 1..=10000 as systemd and
/// Kubernetes do, so mixed hosts weigh tasks alike.
pub fn v2(limits: &Limits, swap: bool) -> Vec<Write> {
    let weight = 1 + shares(limits.millicpus)
        .saturating_sub(2)
        .saturating_mul(9_999)
        / 262_142;
    let mut writes = vec![
        (
            Controller::Cpu,
            "cpu.weight",
            weight.min(10_000).to_string(),
        ),
        (
            Controller::Cpu,
            "cpu.max",
            format!("{} {CPU_PERIOD_US}", quota_us(limits.millicpus)),
        ),
        (
            Controller::Memory,
            "memory.max",
            limits.mem_bytes.to_string(),
        ),
    ];
    if swap {
        writes.push((Controller::Memory, "memory.swap.max", "0".to_string()));
    }
    writes.push((Controller::Pids, "pids.max", pids(limits.max_pids)));
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(writes: &[Write], file: &str) -> Option<String> {
        writes
            .iter()
            .find(|(_, f, _)| *f == file)
            .map(|(_, _, v)| v.clone())
    }

    #[test]
    fn a_quarter_core_with_64_mib() {
        let limits = Limits {
            millicpus: 250,
            mem_bytes: 64 << 20,
            max_pids: Some(100),
        };
        let v1 = v1(&limits, true);
        assert_eq!(value(&v1, "cpu.shares").as_deref(), Some("256"));
        assert_eq!(value(&v1, "cpu.cfs_quota_us").as_deref(), Some("25000"));
        assert_eq!(
            value(&v1, "memory.memsw.limit_in_bytes").as_deref(),
            Some("67108864")
        );
        assert_eq!(value(&v1, "pids.max").as_deref(), Some("100"));
        let limit = v1.iter().position(|w| w.1 == "memory.limit_in_bytes");
        let memsw = v1.iter().position(|w| w.1 == "memory.memsw.limit_in_bytes");
        assert!(limit < memsw, "memory must be set before memory+swap");

        let v2 = v2(&limits, true);
        assert_eq!(value(&v2, "cpu.max").as_deref(), Some("25000 100000"));
        assert_eq!(value(&v2, "cpu.weight").as_deref(), Some("10"));
        assert_eq!(value(&v2, "memory.max").as_deref(), Some("67108864"));
        assert_eq!(value(&v2, "memory.swap.max").as_deref(), Some("0"));
    }

    #[test]
    fn tiny_and_huge_values_stay_in_the_kernels_ranges() {
        let tiny = Limits {
            millicpus: 1,
            mem_bytes: 1,
            max_pids: None,
        };
        assert_eq!(value(&v1(&tiny, false), "cpu.shares").as_deref(), Some("2"));
        assert_eq!(
            value(&v1(&tiny, false), "cpu.cfs_quota_us").as_deref(),
            Some("1000")
        );
        assert_eq!(value(&v1(&tiny, false), "pids.max").as_deref(), Some("max"));
        assert!(value(&v1(&tiny, false), "memory.memsw.limit_in_bytes").is_none());
        assert_eq!(value(&v2(&tiny, false), "cpu.weight").as_deref(), Some("1"));
        let huge = Limits {
            millicpus: u64::MAX,
            ..tiny
        };
        assert_eq!(
            value(&v2(&huge, false), "cpu.weight").as_deref(),
            Some("10000")
        );
    }
}
