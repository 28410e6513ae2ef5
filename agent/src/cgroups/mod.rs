//! Control groups: the containment of native tasks and of each framework's
//! executor, under cgroup v2 (unified) or v1 (one hierarchy per
//! controller), whichever the host has.
//!
//! The agent makes every cgroup under its own root,
//! `<hierarchy>/<root>/<framework>/<leaf>`, and records each one in its
//! work directory before creating it. It only ever removes, limits or
//! kills what it recorded: a cgroup someone else made, even under the
//! agent's root, is refused, never touched.
//!
//! No crate covers both versions and kills a whole cgroup the way a task
//! kill needs (freeze, signal, thaw), so this is a small layer over the
//! cgroupfs files, written by hand.

pub mod limits;

use anyhow::Context as _;
pub use limits::Limits;
use limits::{Controller, Write};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stoa_proto::executor::CgroupPaths;

/// The controllers a task cgroup needs.
const NEEDED: [&str; 3] = ["cpu", "memory", "pids"];

/// How long a kill may take to empty a cgroup before giving up.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Where the host mounts the controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    V2 {
        mount: PathBuf,
    },
    V1 {
        cpu: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
        freezer: Option<PathBuf>,
    },
}

impl Hierarchy {
    /// Finds what this host offers: v2 when the unified hierarchy has the
    /// cpu, memory and pids controllers, else v1 when each is mounted.
    /// The error says what is missing.
    pub fn detect() -> Result<Hierarchy, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mounts = Mounts::parse(&mountinfo);
        let mut why = Vec::new();
        if let Some(mount) = &mounts.v2 {
            let available =
                fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            let available: Vec<&str> = available.split_whitespace().collect();
            let missing: Vec<&str> = NEEDED
                .into_iter()
                .filter(|c| !available.contains(c))
                .collect();
            if missing.is_empty() {
                return Ok(Hierarchy::V2 {
                    mount: mount.clone(),
                });
            }
            why.push(format!(
                "cgroup v2 at {} lacks {} (bound to v1)",
                mount.display(),
                missing.join(", ")
            ));
        }
        let get = |c: &str| mounts.v1.get(c).cloned();
        match (get("cpu"), get("memory"), get("pids")) {
            (Some(cpu), Some(memory), Some(pids)) => Ok(Hierarchy::V1 {
                cpu,
                memory,
                pids,
                freezer: get("freezer"),
            }),
            _ => {
                let missing: Vec<&str> = NEEDED
                    .into_iter()
                    .filter(|c| !mounts.v1.contains_key(*c))
                    .collect();
                why.push(format!("cgroup v1 lacks {}", missing.join(", ")));
                Err(why.join("; "))
            }
        }
    }

    /// The directories of the cgroup at `rel` (relative to each mount).
    fn paths(&self, rel: &Path) -> CgroupPaths {
        let at = |mount: &Path| mount.join(rel).to_string_lossy().into_owned();
        match self {
            Hierarchy::V2 { mount } => CgroupPaths::V2(at(mount)),
            Hierarchy::V1 {
                cpu,
                memory,
                pids,
                freezer,
            } => CgroupPaths::V1 {
                cpu: at(cpu),
                memory: at(memory),
                pids: at(pids),
                freezer: freezer.as_deref().map(at),
            },
        }
    }

    fn mounts(&self) -> Vec<&Path> {
        match self {
            Hierarchy::V2 { mount } => vec![mount],
            Hierarchy::V1 {
                cpu,
                memory,
                pids,
                freezer,
            } => {
                let mut all = vec![cpu.as_path(), memory, pids];
                all.extend(freezer.as_deref());
                all
            }
        }
    }
}

/// The cgroup mounts listed in `/proc/self/mountinfo`.
#[derive(Debug, Default)]
struct Mounts {
    /// v1 controller → mount point.
    v1: HashMap<String, PathBuf>,
    v2: Option<PathBuf>,
}

impl Mounts {
    fn parse(mountinfo: &str) -> Mounts {
        let mut mounts = Mounts::default();
        for line in mountinfo.lines() {
            // `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE SOURCE SUPEROPTS`
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            let mut right = right.split(' ');
            match (right.next(), right.nth(1)) {
                (Some("cgroup2"), _) => {
                    mounts.v2.get_or_insert(mount_point);
                }
                (Some("cgroup"), Some(options)) => {
                    for option in options.split(',') {
                        if NEEDED.contains(&option) || option == "freezer" {
                            mounts
                                .v1
                                .entry(option.to_string())
                                .or_insert_with(|| mount_point.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        mounts
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The default root of the agent with `work_dir`: `stoa/<hash of the
/// directory>`, stable across restarts and distinct for every agent on the
/// host.
pub fn default_root(work_dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let dir = work_dir
        .canonicalize()
        .unwrap_or_else(|_| work_dir.to_path_buf());
    let hash = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
    Path::new("stoa").join(hex::encode(&hash[..6]))
}

/// The agent's cgroups: a root in each hierarchy and the record of every
/// cgroup made under it.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    /// The agent's root, relative to each mount.
    root: PathBuf,
    /// `<records>/<framework>/<leaf>` exists for every cgroup the agent made.
    records: PathBuf,
}

impl Cgroups {
    /// Makes (or reuses) the agent's root `root` in every hierarchy.
    pub fn new(hierarchy: Hierarchy, root: &Path, records: PathBuf) -> anyhow::Result<Cgroups> {
        if root.is_absolute()
            || root.as_os_str().is_empty()
            || root
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            anyhow::bail!(
                "the cgroup root must be a relative path like stoa/agent, not {}",
                root.display()
            );
        }
        fs::create_dir_all(&records)
            .with_context(|| format!("cannot create {}", records.display()))?;
        let mut made = RootRecord::read(&records).filter(|r| r.root == root);
        for mount in hierarchy.mounts() {
            let mut dir = mount.to_path_buf();
            let mut rel = PathBuf::new();
            for part in root.components() {
                let parent = dir.clone();
                dir.push(part);
                rel.push(part);
                if !dir.exists() {
                    if matches!(hierarchy, Hierarchy::V2 { .. }) {
                        delegate(&parent)?;
                    }
                    let record = made.get_or_insert_with(|| RootRecord {
                        root: root.to_path_buf(),
                        created: Vec::new(),
                    });
                    if !record.created.contains(&rel) {
                        record.created.push(rel.clone());
                    }
                    record.write(&records)?;
                    fs::create_dir(&dir)
                        .with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
                }
            }
            if matches!(hierarchy, Hierarchy::V2 { .. }) {
                delegate(&dir)?;
            }
        }
        Ok(Cgroups {
            hierarchy,
            root: root.to_path_buf(),
            records,
        })
    }

    pub fn hierarchy(&self) -> &Hierarchy {
        &self.hierarchy
    }

    /// For the agent's start-up line.
    pub fn describe(&self) -> String {
        match &self.hierarchy {
            Hierarchy::V2 { mount } => format!(
                "cgroup v2 at {}, root {}",
                mount.display(),
                self.root.display()
            ),
            Hierarchy::V1 { freezer, .. } => format!(
                "cgroup v1 (cpu, memory, pids{}), root {}",
                if freezer.is_some() { ", freezer" } else { "" },
                self.root.display()
            ),
        }
    }

    /// Makes the cgroup `group/leaf` with `limits`, recording it first.
    /// Refuses one that exists without a record: someone else made it.
    pub fn create(&self, group: &str, leaf: &str, limits: &Limits) -> anyhow::Result<Cgroup> {
        let record = self.records.join(group).join(leaf);
        let cgroup = self.open(group, leaf);
        if !record.exists() && cgroup.dirs().iter().any(|d| d.exists()) {
            anyhow::bail!(
                "the cgroup {group}/{leaf} exists but this agent did not make it; leaving it alone"
            );
        }
        fs::create_dir_all(self.records.join(group))?;
        fs::write(&record, b"")?;
        let group_paths = self.hierarchy.paths(&self.root.join(group));
        for dir in paths_dirs(&group_paths) {
            if !dir.exists() {
                fs::create_dir(&dir)
                    .with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
                if matches!(self.hierarchy, Hierarchy::V2 { .. }) {
                    delegate(&dir)?;
                }
            }
        }
        for dir in cgroup.dirs() {
            if !dir.exists() {
                fs::create_dir(&dir)
                    .with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
            }
        }
        cgroup.set_limits(limits)?;
        Ok(cgroup)
    }

    /// The cgroup `group/leaf`, made or not.
    pub fn open(&self, group: &str, leaf: &str) -> Cgroup {
        Cgroup(self.hierarchy.paths(&self.root.join(group).join(leaf)))
    }

    /// Whether the agent made `group/leaf`.
    pub fn is_ours(&self, group: &str, leaf: &str) -> bool {
        self.records.join(group).join(leaf).exists()
    }

    /// Kills what is left in `group/leaf`, removes it and its record, and
    /// the group too once it is empty. Does nothing to a cgroup the agent
    /// did not make. Blocks until the processes are gone (bounded).
    pub fn remove(&self, group: &str, leaf: &str) -> anyhow::Result<()> {
        if !self.is_ours(group, leaf) {
            return Ok(());
        }
        let cgroup = self.open(group, leaf);
        cgroup.kill_all()?;
        cgroup.remove_dirs()?;
        let _ = fs::remove_file(self.records.join(group).join(leaf));
        if fs::remove_dir(self.records.join(group)).is_ok() {
            // The last leaf of the group: its cgroup goes too.
            for dir in paths_dirs(&self.hierarchy.paths(&self.root.join(group))) {
                let _ = fs::remove_dir(dir);
            }
        }
        Ok(())
    }

    /// Every `(group, leaf)` the agent made and has not removed.
    pub fn recorded(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for group in fs::read_dir(&self.records).into_iter().flatten().flatten() {
            let name = group.file_name().to_string_lossy().into_owned();
            for leaf in fs::read_dir(group.path()).into_iter().flatten().flatten() {
                found.push((
                    name.clone(),
                    leaf.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
        found.sort();
        found
    }
}

/// Which levels of its root an agent made (`<records>/.root`): the root
/// on the first line, then each directory made, relative to the mounts.
#[derive(Debug)]
struct RootRecord {
    root: PathBuf,
    created: Vec<PathBuf>,
}

impl RootRecord {
    const FILE: &str = ".root";

    fn read(records: &Path) -> Option<RootRecord> {
        let text = fs::read_to_string(records.join(Self::FILE)).ok()?;
        let mut lines = text.lines();
        Some(RootRecord {
            root: lines.next()?.into(),
            created: lines.map(PathBuf::from).collect(),
        })
    }

    fn write(&self, records: &Path) -> anyhow::Result<()> {
        let mut text = format!("{}\n", self.root.display());
        for dir in &self.created {
            text.push_str(&format!("{}\n", dir.display()));
        }
        fs::write(records.join(Self::FILE), text)
            .with_context(|| format!("cannot write {}", records.join(Self::FILE).display()))
    }
}

/// Removes every cgroup an agent with `work_dir` made, killing what runs
/// in them, and the levels of its root it made: for tools that own a whole
/// cluster's lifetime (`stoa up`, test harnesses), once the agent and its
/// executors are stopped. Returns how many task and executor cgroups went.
pub fn remove_leftovers(work_dir: &Path) -> usize {
    let records = work_dir.join("cgroups");
    let Some(record) = RootRecord::read(&records) else {
        return 0;
    };
    let Ok(hierarchy) = Hierarchy::detect() else {
        return 0;
    };
    let cgroups = Cgroups {
        hierarchy,
        root: record.root.clone(),
        records: records.clone(),
    };
    let mut removed = 0;
    for (group, leaf) in cgroups.recorded() {
        match cgroups.remove(&group, &leaf) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot remove a leftover cgroup"),
        }
    }
    for dir in record.created.iter().rev() {
        for mount in cgroups.hierarchy.mounts() {
            let _ = fs::remove_dir(mount.join(dir));
        }
    }
    let _ = fs::remove_file(records.join(RootRecord::FILE));
    removed
}

/// Lets `dir`'s children use the needed controllers (cgroup v2).
fn delegate(dir: &Path) -> anyhow::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<String> = NEEDED
        .into_iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&file, missing.join(" ")).with_context(|| {
        format!(
            "cannot enable {} in {}: choose a --cgroup-root whose parent delegates them (no processes of its own)",
            missing.join(" "),
            file.display()
        )
    })
}

fn paths_dirs(paths: &CgroupPaths) -> Vec<PathBuf> {
    match paths {
        CgroupPaths::V2(dir) => vec![dir.into()],
        CgroupPaths::V1 {
            cpu,
            memory,
            pids,
            freezer,
        } => {
            let mut all = vec![PathBuf::from(cpu), memory.into(), pids.into()];
            all.extend(freezer.as_deref().map(PathBuf::from));
            all
        }
    }
}

/// One cgroup. Made by [`Cgroups::create`] on the agent; rebuilt from its
/// paths by an executor, which puts a task in it and reads how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup(CgroupPaths);

impl Cgroup {
    pub fn from_paths(paths: CgroupPaths) -> Cgroup {
        Cgroup(paths)
    }

    pub fn paths(&self) -> &CgroupPaths {
        &self.0
    }

    fn dirs(&self) -> Vec<PathBuf> {
        paths_dirs(&self.0)
    }

    fn controller_dir(&self, controller: Controller) -> &Path {
        match &self.0 {
            CgroupPaths::V2(dir) => Path::new(dir),
            CgroupPaths::V1 {
                cpu, memory, pids, ..
            } => Path::new(match controller {
                Controller::Cpu => cpu,
                Controller::Memory => memory,
                Controller::Pids => pids,
            }),
        }
    }

    /// Writes `limits`. Memory first lowers, then raises: v1 refuses a
    /// memory limit above memory+swap, so a raise sets the latter first.
    pub fn set_limits(&self, limits: &Limits) -> anyhow::Result<()> {
        self.write_limits(limits, None)
    }

    /// Changes this cgroup's limits from `from` (written earlier) to `to`,
    /// writing only the files whose values differ: an executor's CPU
    /// changes far more often than its memory.
    pub fn change_limits(&self, from: &Limits, to: &Limits) -> anyhow::Result<()> {
        self.write_limits(to, Some(from))
    }

    fn write_limits(&self, limits: &Limits, written: Option<&Limits>) -> anyhow::Result<()> {
        // Whether the kernel accounts swap here (it may be compiled out).
        let swap = match &self.0 {
            CgroupPaths::V2(dir) => Path::new(dir).join("memory.swap.max"),
            CgroupPaths::V1 { memory, .. } => Path::new(memory).join("memory.memsw.limit_in_bytes"),
        }
        .exists();
        let writes = |limits: &Limits| -> Vec<Write> {
            match &self.0 {
                CgroupPaths::V2(_) => limits::v2(limits, swap),
                CgroupPaths::V1 { .. } => limits::v1(limits, swap),
            }
        };
        let before = written.map(writes).unwrap_or_default();
        let writes: Vec<Write> = writes(limits)
            .into_iter()
            .filter(|w| !before.contains(w))
            .collect();
        let mut deferred = Vec::new();
        for (controller, file, value) in &writes {
            let path = self.controller_dir(*controller).join(file);
            if let Err(e) = fs::write(&path, value) {
                if *file == "memory.limit_in_bytes" && e.raw_os_error() == Some(nix::libc::EINVAL) {
                    deferred.push((path, value));
                    continue;
                }
                return Err(e)
                    .with_context(|| format!("cannot write {value} to {}", path.display()));
            }
        }
        for (path, value) in deferred {
            fs::write(&path, value)
                .with_context(|| format!("cannot write {value} to {}", path.display()))?;
        }
        Ok(())
    }

    /// The processes in the cgroup.
    pub fn procs(&self) -> io::Result<Vec<i32>> {
        let file = self.controller_dir(Controller::Pids).join("cgroup.procs");
        match fs::read_to_string(file) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Whether the kernel's OOM killer struck in this cgroup.
    pub fn oom_killed(&self) -> bool {
        let dir = self.controller_dir(Controller::Memory);
        let text = match &self.0 {
            CgroupPaths::V2(_) => fs::read_to_string(dir.join("memory.events")),
            CgroupPaths::V1 { .. } => fs::read_to_string(dir.join("memory.oom_control")),
        }
        .unwrap_or_default();
        counter(&text, "oom_kill") > 0
    }

    /// How many CFS periods the quota throttled.
    pub fn throttled_periods(&self) -> u64 {
        let text = fs::read_to_string(self.controller_dir(Controller::Cpu).join("cpu.stat"))
            .unwrap_or_default();
        counter(&text, "nr_throttled")
    }

    /// Opens what a process writes to join the cgroup; see [`enter_on_exec`].
    pub fn entry(&self) -> io::Result<Entry> {
        let mut fds = Vec::new();
        for dir in self.dirs() {
            let file = fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))?;
            fds.push(OwnedFd::from(file));
        }
        Ok(Entry(fds))
    }

    /// SIGKILLs every process in the cgroup and waits until it is empty.
    /// The cgroup is frozen around the signals where the host can, so a
    /// forking task cannot outrun the kill.
    pub fn kill_all(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            let procs = self.procs()?;
            if procs.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{} processes survived SIGKILL in {}",
                    procs.len(),
                    self.controller_dir(Controller::Pids).display()
                );
            }
            if let CgroupPaths::V2(dir) = &self.0
                && fs::write(Path::new(dir).join("cgroup.kill"), "1").is_ok()
            {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let frozen = self.freeze(true);
            for pid in self.procs()? {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if frozen {
                self.freeze(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Freezes or thaws the cgroup; false if it cannot be frozen here.
    fn freeze(&self, frozen: bool) -> bool {
        let (file, value, settled) = match &self.0 {
            CgroupPaths::V2(dir) => (
                Path::new(dir).join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
                None,
            ),
            CgroupPaths::V1 {
                freezer: Some(dir), ..
            } => (
                Path::new(dir).join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
                Some(if frozen { "FROZEN" } else { "THAWED" }),
            ),
            CgroupPaths::V1 { freezer: None, .. } => return false,
        };
        if fs::write(&file, value).is_err() {
            return false;
        }
        // v1 freezes asynchronously: wait until the state says so.
        if let Some(settled) = settled {
            let until = Instant::now() + Duration::from_secs(1);
            while fs::read_to_string(&file)
                .map(|s| s.trim() != settled)
                .unwrap_or(false)
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        true
    }

    /// Removes the cgroup's directories; it must be empty of processes.
    pub fn remove_dirs(&self) -> anyhow::Result<()> {
        for dir in self.dirs() {
            // A just-killed process may still be leaving: retry briefly.
            let mut tries = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot remove {}", dir.display()));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `name N` from a flat-keyed cgroup file.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A cgroup's `cgroup.procs` files, opened for a child to write itself in.
#[derive(Debug)]
pub struct Entry(Vec<OwnedFd>);

/// Makes the process `command` starts join `entry`'s cgroup before it
/// runs a single instruction of its program, so nothing it forks escapes.
#[allow(unsafe_code)]
pub fn enter_on_exec(command: &mut std::process::Command, entry: Entry) {
    use std::os::unix::process::CommandExt as _;
    let Entry(fds) = entry;
    let join = move || -> io::Result<()> {
        for fd in &fds {
            // "0" means the writing process (both versions).
            nix::unistd::write(fd, b"0").map_err(io::Error::from)?;
        }
        Ok(())
    };
    // SAFETY: `pre_exec` runs `join` in the child between fork and exec,
    // where only async-signal-safe calls are sound. `join` makes none but
    // write(2) on descriptors opened before the fork, allocates nothing
    // and takes no lock.
    unsafe {
        command.pre_exec(join);
    }
}

#[cfg(test)]
mod tests;
