//! Wasm frameworks end to end: `stoa framework run` hosts a scheduler
//! component against a real cluster.

use stoa_tests::{Cluster, wasm_path};

fn path(file: &str, package: &str) -> anyhow::Result<String> {
    Ok(wasm_path(file, package)?.display().to_string())
}

/// A framework's built components: (file, package) of its scheduler and of
/// its task.
type Parts<'a> = ((&'a str, &'a str), (&'a str, &'a str));

const HELLO: Parts = (
    ("hello_wasm_scheduler", "hello-wasm-scheduler"),
    ("hello_task", "hello-task"),
);
const PI: Parts = (("pi_scheduler", "pi-scheduler"), ("pi_task", "pi-task"));
const WORDCOUNT: Parts = (
    ("wordcount_scheduler", "wordcount-scheduler"),
    ("wordcount_task", "wordcount-task"),
);
const ITERATIVE: Parts = (
    ("iterative_scheduler", "iterative-scheduler"),
    ("iterative_task", "iterative-task"),
);
const GANG: Parts = (
    ("gang_scheduler", "gang-scheduler"),
    ("gang_task", "gang-task"),
);

/// `stoa framework run` of a framework's scheduler with its task as the
/// `task` artifact, `env` as KEY=VALUE pairs; checks it succeeded and
/// returns its stderr (the scheduler's log) and stdout.
fn run_framework(
    cluster: &Cluster,
    ((scheduler, scheduler_package), (task, task_package)): Parts,
    env: &[&str],
    extra: &[&str],
) -> anyhow::Result<(String, Vec<u8>)> {
    let scheduler = path(scheduler, scheduler_package)?;
    let task = path(task, task_package)?;
    let artifact = format!("task={task}");
    let mut args = vec!["framework", "run", &scheduler, "--artifact", &artifact];
    for pair in env {
        args.extend(["--env", pair]);
    }
    args.extend(extra);
    let out = cluster.stoa(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(out.status.success(), "{stderr}\n{}", cluster.logs());
    Ok((stderr, out.stdout))
}

#[test]
fn the_hello_wasm_scheduler_runs_its_tasks_and_tears_down() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let (stderr, stdout) = run_framework(&cluster, HELLO, &["HELLO_TASKS=30"], &["--json"])?;
    let line: serde_json::Value = serde_json::from_slice(&stdout)?;
    assert_eq!(line["ended"], "teardown");
    assert!(stderr.contains("all 30 tasks finished"), "{stderr}");
    assert!(
        stderr.contains("hello: subscribed as"),
        "WASI stderr: {stderr}"
    );
    Ok(())
}

#[test]
fn a_component_that_is_not_a_scheduler_is_refused_clearly() -> anyhow::Result<()> {
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    let task = path("hello_task", "hello-task")?;
    let out = cluster.stoa(&["framework", "run", &task])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a stoa:scheduler"), "{stderr}");
    // Submitting it is refused at once, before anything reaches the master
    // (it would start it, see it fail, and start it again).
    let out = cluster.stoa(&["submit", &task, "--resources", "cpus:0.1;mem:64"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a stoa:scheduler") && stderr.contains("exports run"),
        "{stderr}"
    );
    let listed = cluster.stoa(&["frameworks", "--json"])?;
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&listed.stdout)?,
        serde_json::json!([]),
        "nothing was submitted"
    );

    // A scheduler that runs out of fuel in a handler stops with the trap;
    // it does not hang the framework.
    let (scheduler, task) = (
        path("hello_wasm_scheduler", "hello-wasm-scheduler")?,
        path("hello_task", "hello-task")?,
    );
    let artifact = format!("task={task}");
    let out = cluster.stoa(&[
        "framework",
        "run",
        &scheduler,
        "--artifact",
        &artifact,
        "--fuel-per-call",
        "1000",
    ])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trapped in subscribed"), "{stderr}");

    // A scheduler without its configuration says what is missing, and
    // ends its framework instead of idling.
    let scheduler = path("hello_wasm_scheduler", "hello-wasm-scheduler")?;
    let out = cluster.stoa(&["framework", "run", &scheduler])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STOA_ARTIFACT_TASK is not set"), "{stderr}");
    Ok(())
}

#[test]
fn pi_estimates_pi_over_hundreds_of_short_tasks() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let (stderr, _) = run_framework(&cluster, PI, &["PI_TASKS=400", "PI_SAMPLES=20000"], &[])?;
    let estimate: f64 = stderr
        .split("pi ≈ ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no estimate in the output: {stderr}"))?;
    assert!((estimate - std::f64::consts::PI).abs() < 0.01, "{estimate}");
    assert!(stderr.contains("from 400 tasks"), "{stderr}");
    Ok(())
}

#[test]
fn a_gang_launches_whole_on_one_agent_or_not_at_all() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    // Four ranks of a quarter cpu fit on one agent: all launch together.
    let env = ["GANG_SIZE=4", "GANG_RANK_CPUS=0.25", "GANG_N=100000"];
    let (stderr, _) = run_framework(&cluster, GANG, &env, &[])?;
    assert!(stderr.contains("launching all 4 ranks"), "{stderr}");
    assert!(stderr.contains("sum = 5000050000"), "{stderr}");

    // Six would need 1.5 cpus of one agent: nothing launches, though the
    // cluster has 2 cpus in all.
    let env = ["GANG_SIZE=6", "GANG_RANK_CPUS=0.25", "GANG_WAIT_MS=1500"];
    let (stderr, _) = run_framework(&cluster, GANG, &env, &[])?;
    assert!(!stderr.contains("launching all"), "{stderr}");
    assert!(stderr.contains("no offer fits a gang of 6"), "{stderr}");
    Ok(())
}

#[test]
fn wordcount_runs_its_maps_where_their_splits_are() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let env = [
        "WC_SPLITS=40",
        "WC_WORDS=5000",
        "WC_NODES=2",
        "WC_DELAY_MS=2000",
    ];
    let (stderr, _) = run_framework(&cluster, WORDCOUNT, &env, &[])?;
    assert!(
        stderr.contains("counted 200000 words in 40 splits"),
        "{stderr}"
    );
    let fraction: f64 = stderr
        .split(" = ")
        .last()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no locality figure: {stderr}"))?;
    assert!(
        fraction >= 0.9,
        "only {fraction} of the maps ran local to their split"
    );
    Ok(())
}

#[test]
fn iterative_regression_converges_over_many_iterations() -> anyhow::Result<()> {
    let cluster = Cluster::start(2, "cpus:1;mem:1024")?;
    let env = ["IT_ITERATIONS=15", "IT_PARTITIONS=4", "IT_POINTS=2000"];
    let (stderr, _) = run_framework(&cluster, ITERATIVE, &env, &[])?;
    let line = stderr
        .lines()
        .find(|l| l.contains("done: 15 iterations"))
        .ok_or_else(|| anyhow::anyhow!("no summary: {stderr}"))?;
    // "loss A → B": the loss fell.
    let losses: Vec<f64> = line
        .split("loss ")
        .nth(1)
        .map(|rest| {
            rest.split([',', '→'])
                .take(2)
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        matches!(losses[..], [first, last] if last < first * 0.9),
        "{line}"
    );
    assert!(stderr.matches("iteration ").count() >= 15, "{stderr}");
    Ok(())
}

/// A hello scheduler another language's tooling built under target/ (by
/// `./dev`, against wit/scheduler as it is), run with six tasks; `done` is
/// what it logs once they have all finished.
fn other_language_scheduler(built: &str, done: &str) -> anyhow::Result<()> {
    let scheduler = wasm_path("hello_task", "hello-task")?
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .map(|target| target.join(built))
        .filter(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("{built} is not built; run ./dev test"))?;
    let cluster = Cluster::start(1, "cpus:1;mem:1024")?;
    let task = format!("task={}", path("hello_task", "hello-task")?);
    let scheduler = scheduler.display().to_string();
    let out = cluster.stoa(&[
        "framework",
        "run",
        &scheduler,
        "--artifact",
        &task,
        "--env",
        "HELLO_TASKS=6",
        "--json",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "{stderr}\n{}", cluster.logs());
    assert!(stderr.contains(done), "{stderr}");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(line["ended"], "teardown");
    Ok(())
}

#[test]
fn a_python_scheduler_built_with_componentize_py_runs_its_tasks() -> anyhow::Result<()> {
    // frameworks/hello/python-scheduler
    other_language_scheduler(
        "python/hello_python_scheduler.wasm",
        "python: all 6 tasks finished",
    )
}

#[test]
fn a_javascript_scheduler_built_with_componentize_js_runs_its_tasks() -> anyhow::Result<()> {
    // frameworks/hello/js-scheduler
    other_language_scheduler(
        "js/hello_js_scheduler.wasm",
        "javascript: all 6 tasks finished",
    )
}
