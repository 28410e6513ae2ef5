//! What this machine has to offer.

use stoa_proto::Resources;

/// Cpus from the scheduler's affinity, memory from /proc/meminfo less 1 GiB
/// for the system, disk left unset (operators give it with --resources).
pub fn detect_resources() -> anyhow::Result<Resources> {
    let cpus = std::thread::available_parallelism()?.get() as u64;
    Ok(Resources::new()
        .with_millicpus(cpus * 1000)
        .with_mem_mib(total_mem_mib()?.saturating_sub(1024).max(256)))
}

pub fn total_mem_mib() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no MemTotal in /proc/meminfo"))?;
    Ok(kib / 1024)
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
