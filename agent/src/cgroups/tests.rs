use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn mountinfo_names_each_controllers_hierarchy() {
    let mounts = Mounts::parse(HYBRID);
    assert_eq!(
        mounts.v1.get("cpu"),
        Some(&PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
    );
    assert_eq!(
        mounts.v1.get("freezer"),
        Some(&PathBuf::from("/sys/fs/cgroup/freezer"))
    );
    assert!(!mounts.v1.contains_key("cpuacct"));
    assert_eq!(mounts.v2, Some(PathBuf::from("/sys/fs/cgroup/uni fied")));
}

fn limits() -> Limits {
    Limits {
        millicpus: 500,
        mem_bytes: 128 << 20,
        max_pids: Some(64),
    }
}

/// A directory shaped like a cgroup v2 mount, for the writes the kernel
/// would take (this host binds cpu, memory and pids to v1).
#[test]
fn v2_cgroups_are_delegated_limited_and_recorded() -> anyhow::Result<()> {
    let tree = tempfile::tempdir()?;
    let mount = tree.path().join("cgroup");
    fs::create_dir(&mount)?;
    fs::write(mount.join("cgroup.controllers"), "cpu io memory pids")?;
    fs::write(mount.join("cgroup.subtree_control"), "cpu memory pids")?;
    let records = tree.path().join("records");
    let cgroups = Cgroups::new(
        Hierarchy::V2 {
            mount: mount.clone(),
        },
        Path::new("stoa/agent-a"),
        records.clone(),
    )?;
    // The agent's own levels delegate the controllers to their children.
    for dir in ["stoa", "stoa/agent-a"] {
        let enabled = fs::read_to_string(mount.join(dir).join("cgroup.subtree_control"))?;
        assert_eq!(enabled, "+cpu +memory +pids", "{dir}");
    }

    let cgroup = cgroups.create("f-1", "task-t1", &limits())?;
    let dir = mount.join("stoa/agent-a/f-1/task-t1");
    assert_eq!(cgroup.paths(), &CgroupPaths::V2(dir.display().to_string()));
    assert_eq!(fs::read_to_string(dir.join("cpu.max"))?, "50000 100000");
    assert_eq!(fs::read_to_string(dir.join("memory.max"))?, "134217728");
    assert_eq!(fs::read_to_string(dir.join("pids.max"))?, "64");
    assert_eq!(
        fs::read_to_string(mount.join("stoa/agent-a/f-1/cgroup.subtree_control"))?,
        "+cpu +memory +pids"
    );
    assert!(cgroups.is_ours("f-1", "task-t1"));
    assert_eq!(
        cgroups.recorded(),
        vec![("f-1".to_string(), "task-t1".to_string())]
    );

    // OOM and throttling are read from the kernel's counters.
    assert!(!cgroup.oom_killed());
    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )?;
    assert!(cgroup.oom_killed());
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 10\nnr_periods 9\nnr_throttled 4\n",
    )?;
    assert_eq!(cgroup.throttled_periods(), 4);

    // Someone else's cgroup under the agent's root is left alone.
    fs::create_dir_all(mount.join("stoa/agent-a/f-1/task-foreign"))?;
    let refused = cgroups.create("f-1", "task-foreign", &limits());
    assert!(refused.is_err(), "created over a foreign cgroup");
    assert!(!cgroups.is_ours("f-1", "task-foreign"));
    cgroups.remove("f-1", "task-foreign")?;
    assert!(mount.join("stoa/agent-a/f-1/task-foreign").exists());
    Ok(())
}

#[test]
fn a_parent_that_cannot_delegate_is_a_clear_error() -> anyhow::Result<()> {
    let tree = tempfile::tempdir()?;
    let mount = tree.path().join("cgroup");
    // A directory (not a file) where the parent's subtree_control should be.
    fs::create_dir_all(mount.join("cgroup.subtree_control"))?;
    let err = Cgroups::new(
        Hierarchy::V2 { mount },
        Path::new("stoa"),
        tree.path().join("records"),
    )
    .expect_err("delegation should fail");
    assert!(format!("{err:#}").contains("--cgroup-root"), "{err:#}");
    for bad in ["/abs", "", "a/../b"] {
        assert!(
            Cgroups::new(
                Hierarchy::V2 {
                    mount: tree.path().into()
                },
                Path::new(bad),
                tree.path().join("records"),
            )
            .is_err(),
            "{bad:?} accepted as a root"
        );
    }
    Ok(())
}

fn sleeper(entry: Entry) -> anyhow::Result<std::process::Child> {
    let mut command = std::process::Command::new("sh");
    // A tree: the shell and two children of it.
    command.args(["-c", "sleep 60 & sleep 60 & wait"]);
    enter_on_exec(&mut command, entry);
    Ok(command.spawn()?)
}

fn wait_for_procs(cgroup: &Cgroup, n: usize) -> anyhow::Result<Vec<i32>> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = cgroup.procs()?;
        if procs.len() >= n || Instant::now() > until {
            return Ok(procs);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The real v1 hierarchies of this host: a process tree joins its cgroup
/// before it runs, is limited, and is killed whole.
#[test]
fn v1_cgroups_contain_and_kill_a_process_tree() -> anyhow::Result<()> {
    let hierarchy = Hierarchy::detect().map_err(anyhow::Error::msg)?;
    let tree = tempfile::tempdir()?;
    let root = PathBuf::from(format!("stoa-test-{}", std::process::id()));
    let cgroups = Cgroups::new(hierarchy.clone(), &root, tree.path().join("records"))?;
    let cgroup = cgroups.create("f-1", "task-tree", &limits())?;
    let mut child = sleeper(cgroup.entry()?)?;
    let procs = wait_for_procs(&cgroup, 3)?;
    assert!(procs.contains(&(child.id() as i32)), "{procs:?}");
    assert_eq!(procs.len(), 3, "the shell and its two sleeps: {procs:?}");
    if let CgroupPaths::V1 { memory, cpu, .. } = cgroup.paths() {
        assert_eq!(
            fs::read_to_string(Path::new(memory).join("memory.limit_in_bytes"))?.trim(),
            "134217728"
        );
        assert_eq!(
            fs::read_to_string(Path::new(cpu).join("cpu.cfs_quota_us"))?.trim(),
            "50000"
        );
    }
    // Raising memory later (an executor's grows with its tasks) works too,
    // and writes only what changed: the quota set aside here stays.
    if let CgroupPaths::V1 { memory, cpu, .. } = cgroup.paths() {
        fs::write(Path::new(cpu).join("cpu.cfs_quota_us"), "70000")?;
        let raised = Limits {
            mem_bytes: 1 << 30,
            ..limits()
        };
        cgroup.change_limits(&limits(), &raised)?;
        assert_eq!(
            fs::read_to_string(Path::new(memory).join("memory.limit_in_bytes"))?.trim(),
            "1073741824"
        );
        assert_eq!(
            fs::read_to_string(Path::new(cpu).join("cpu.cfs_quota_us"))?.trim(),
            "70000",
            "an unchanged limit is not written again"
        );
    }

    cgroups.remove("f-1", "task-tree")?;
    let _ = child.wait();
    for pid in procs {
        assert!(
            kill(Pid::from_raw(pid), None).is_err() || is_zombie(pid),
            "process {pid} survived"
        );
    }
    assert!(cgroups.recorded().is_empty());
    for mount in hierarchy.mounts() {
        assert!(!mount.join(&root).join("f-1").exists());
        fs::remove_dir(mount.join(&root))?;
    }
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The real unified hierarchy, where one is mounted and writable: joining,
/// `cgroup.kill` and removal (its controllers may be bound to v1 here, so
/// limits are covered by the tree-shaped test above).
#[test]
fn v2_kill_takes_the_whole_tree_where_a_unified_hierarchy_is_writable() -> anyhow::Result<()> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let Some(mount) = Mounts::parse(&mountinfo).v2 else {
        eprintln!("no cgroup v2 mount on this host");
        return Ok(());
    };
    let dir = mount.join(format!("stoa-test-v2-{}", std::process::id()));
    if fs::create_dir(&dir).is_err() {
        eprintln!("{} is not writable", mount.display());
        return Ok(());
    }
    let cgroup = Cgroup::from_paths(CgroupPaths::V2(dir.display().to_string()));
    let mut child = sleeper(cgroup.entry()?)?;
    let procs = wait_for_procs(&cgroup, 3)?;
    assert_eq!(procs.len(), 3, "{procs:?}");
    cgroup.kill_all()?;
    let _ = child.wait();
    assert!(cgroup.procs()?.is_empty());
    cgroup.remove_dirs()?;
    assert!(!dir.exists());
    Ok(())
}
