//! `stoa run` against a real cluster: each kind of program, its output and
//! exit code as under `wasmtime run`, many copies, a detached run, Ctrl-C,
//! uploads that are not repeated, and `stoa logs` for the task's owner
//! (following by long poll).

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use stoa_proto::operator::{OperatorCall, OperatorReply};
use stoa_tests::{Cluster, wasm_path};

/// `stoa run FLAGS --master … --certs … -- PROGRAM_ARGS`.
fn run(c: &Cluster, flags: &[&str], program_args: &[&str]) -> anyhow::Result<Output> {
    let mut command = c.stoa_command(&[&["run"], flags].concat())?;
    Ok(command.arg("--").args(program_args).output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn module_path() -> anyhow::Result<PathBuf> {
    let component = wasm_path("wasi-cli", "wasi-cli")?;
    let path = component
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|target| target.join("wasm32-wasip1/release/wasi-cli.wasm"))
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?;
    anyhow::ensure!(path.exists(), "{} is missing", path.display());
    Ok(path)
}

/// A command component that exits through `exit-with-code(code)`.
fn exit_with_code(dir: &Path, code: u8) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("exit-{code}.wasm"));
    std::fs::write(&path, stoa_tests::exit_with_code_component(code)?)?;
    Ok(path)
}

#[test]
fn each_kind_of_program_runs_with_its_output_environment_and_exit_code() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:4;mem:4096")?;
    let component = wasm_path("wasi-cli", "wasi-cli")?;
    let component = component.to_string_lossy();
    let module = module_path()?;
    let module = module.to_string_lossy();
    let input = c.dir.path().join("input.txt");
    std::fs::write(&input, "from a file")?;
    let input = input.to_string_lossy();

    for program in [&*component, &*module] {
        // Arguments, the environment given and stdin; stdout and stderr
        // stream back apart.
        let out = run(
            &c,
            &[program, "--env", "GREETING=hi", "--input", &input],
            &["echo", "a", "b"],
        )?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{program}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "a b | hi | from a file\n", "{program}");
        assert!(
            text(&out.stderr).contains("echoed 2 words"),
            "{program}: {}",
            text(&out.stderr)
        );
        // Exactly the environment given: nothing added, nothing dropped.
        let out = run(
            &c,
            &[program, "--env", "STOA_TASK_ID=mine", "--env", "A=1"],
            &["env"],
        )?;
        assert_eq!(text(&out.stdout), "A=1\nSTOA_TASK_ID=mine\n", "{program}");
        // No directory unless asked, as `wasmtime run` without --dir.
        let out = run(&c, &[program], &["write", "f.txt", "x"])?;
        assert_ne!(out.status.code(), Some(0), "{program}");
        assert!(
            text(&out.stderr).contains("cannot write f.txt"),
            "{program}"
        );
        let out = run(&c, &[program, "--dir"], &["write", "f.txt", "kept"])?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{program}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "kept\n", "{program}");
    }

    // Exit codes: a preview-1 module's exactly; a component's exactly when
    // it exits with `exit-with-code`; Rust's wasip2 library reports 1.
    let out = run(&c, &[&*module], &["exit", "7"])?;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let out = run(&c, &[&*component], &["exit", "7"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    for code in [3u8, 42] {
        let path = exit_with_code(c.dir.path(), code)?;
        let out = run(&c, &[&*path.to_string_lossy()], &[])?;
        assert_eq!(
            out.status.code(),
            Some(i32::from(code)),
            "{}",
            text(&out.stderr)
        );
    }

    // A stoa:task component: its output is the command's stdout.
    let hello = wasm_path("hello_task", "hello-task")?;
    let out = run(&c, &[&*hello.to_string_lossy(), "--input", &input], &[])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // What it printed, then its output.
    assert_eq!(
        text(&out.stdout),
        "greeting from a file\nhello, from a file"
    );

    // A task stopped by a limit says why, and fails.
    let out = run(&c, &[&*component, "--timeout", "0.3"], &["ticks", "100"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("timeout"),
        "{}",
        text(&out.stderr)
    );

    // What is not a wasm binary is refused before anything is uploaded.
    let out = run(&c, &[&*input], &[])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not a wasm binary"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_thousand_copies_finish_with_a_summary() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:16;mem:65536")?;
    let hello = wasm_path("hello_task", "hello-task")?;
    let out = run(
        &c,
        &[
            &*hello.to_string_lossy(),
            "--count",
            "1000",
            "--cpus",
            "0.05",
            "--mem",
            "32",
            "--json",
        ],
        &[],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["tasks"], 1000, "{summary}");
    assert_eq!(summary["finished"], 1000, "{summary}");
    assert_eq!(summary["failed"], serde_json::json!({}), "{summary}");
    Ok(())
}

/// Frameworks the master knows, as the operator sees them.
fn frameworks(c: &Cluster, rt: &tokio::runtime::Runtime) -> anyhow::Result<usize> {
    let mut operator = c.client();
    operator.identity = "operator".into();
    match rt.block_on(stoa_client::operator_call(
        &operator,
        &OperatorCall::GetFrameworks,
    ))? {
        OperatorReply::Frameworks(all) => Ok(all.len()),
        other => anyhow::bail!("{other:?}"),
    }
}

#[test]
fn ctrl_c_ends_the_run_and_its_framework_at_once() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:2;mem:1024")?;
    let rt = tokio::runtime::Runtime::new()?;
    let component = wasm_path("wasi-cli", "wasi-cli")?;
    let mut child = c
        .stoa_command(&["run", &component.to_string_lossy()])?
        .args(["--", "ticks", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Wait for the first tick on its stdout: the task runs.
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first)?;
    assert_eq!(&first, b"tick 0");
    assert_eq!(frameworks(&c, &rt)?, 1);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let interrupted = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    assert_eq!(status.code(), Some(130));
    // The master saw the connection close: no timeout to wait out.
    while frameworks(&c, &rt)? > 0 {
        assert!(
            interrupted.elapsed() < Duration::from_secs(2),
            "the framework outlived its interrupted run"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn an_artifact_the_master_holds_is_not_uploaded_again() -> anyhow::Result<()> {
    let c = Cluster::start(0, "cpus:1;mem:64")?;
    let rt = tokio::runtime::Runtime::new()?;
    let bytes = std::fs::read(wasm_path("hello_task", "hello-task")?)?;
    let digest = rt.block_on(stoa_client::upload_artifact(&c.client(), &bytes))?;
    let stored = c
        .dir
        .path()
        .join("artifacts")
        .join(digest.to_string().trim_start_matches("sha256:"));
    let before = std::fs::metadata(&stored)?;
    let again = rt.block_on(stoa_client::upload_artifact(&c.client(), &bytes))?;
    assert_eq!(again, digest);
    let after = std::fs::metadata(&stored)?;
    // An upload writes a new file and renames it over the old one.
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec()),
        "the artifact was written again"
    );
    Ok(())
}

#[test]
fn a_detached_run_goes_on_and_its_owner_follows_its_logs() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:2;mem:1024")?;
    stoa_transport::certs::issue(&c.certs, "bob", &[])?;
    let component = wasm_path("wasi-cli", "wasi-cli")?;
    let started = Instant::now();
    let out = run(
        &c,
        &[
            &*component.to_string_lossy(),
            "--detach",
            "--json",
            "--name",
            "ticker",
        ],
        &["ticks", "20"],
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(10));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let framework = report["framework_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no framework id: {report}"))?
        .to_string();

    // Its owner (the `client` certificate) sees the task; another tenant
    // does not.
    let ps = |identity: &str| -> anyhow::Result<Vec<serde_json::Value>> {
        let out = c
            .stoa_command(&["ps", "--json", "--identity", identity])?
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut tasks = ps("client")?;
    while tasks.is_empty() {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "no task");
        std::thread::sleep(Duration::from_millis(100));
        tasks = ps("client")?;
    }
    assert_eq!(tasks[0]["framework_id"], framework.as_str());
    let task = tasks[0]["task_id"].as_str().unwrap_or_default().to_string();
    assert!(task.starts_with("ticker-"), "{task}");
    assert!(ps("bob")?.is_empty(), "another tenant sees the task");

    // Following: lines come as they are written, on one connection, and
    // the command ends when the task has.
    let follow_started = Instant::now();
    let mut follow = c
        .stoa_command(&["logs", &task, "--follow", "--identity", "client"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = follow
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut first = [0u8; 5];
    stdout.read_exact(&mut first)?;
    assert_eq!(&first, b"tick ");
    let first_at = follow_started.elapsed();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    let status = follow.wait()?;
    assert!(status.success());
    let all = format!("tick {rest}");
    assert!(all.ends_with("tick 19\n"), "{all}");
    assert!(
        first_at < follow_started.elapsed(),
        "the first line came only at the end"
    );
    // Once the run is over and its framework gone, its owner can still
    // read what it wrote; another tenant cannot, then or before.
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    loop {
        let reply = rt.block_on(stoa_client::operator_call(
            &c.client(),
            &OperatorCall::GetFrameworks,
        ))?;
        if matches!(&reply, OperatorReply::Frameworks(f) if f.is_empty()) {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "{reply:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c
        .stoa_command(&["logs", &task, "--identity", "client"])?
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("tick 19\n"),
        "{}",
        text(&out.stdout)
    );
    let out = c
        .stoa_command(&["logs", &task, "--identity", "bob"])?
        .output()?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("no task {task} is known")),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn files_and_archives_are_placed_in_the_task_directory_before_it_starts() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:2;mem:1024")?;
    let component = wasm_path("wasi-cli", "wasi-cli")?;
    let component = component.to_string_lossy();
    let src = c.dir.path().join("src");
    std::fs::create_dir_all(src.join("data/sub"))?;
    std::fs::write(src.join("app.conf"), "threads = 4\n")?;
    std::fs::write(src.join("data/sub/words.txt"), "alpha beta\n")?;
    let archive = c.dir.path().join("data.tar.gz");
    let tarred = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(src.join("data"))
        .arg(".")
        .status()?;
    assert!(tarred.success());
    let conf = format!("conf/app.conf={}", src.join("app.conf").display());
    let data = format!("data={}", archive.display());
    for (path, want) in [
        ("conf/app.conf", "threads = 4\n"),
        ("data/sub/words.txt", "alpha beta\n"),
    ] {
        let out = run(
            &c,
            &[&*component, "--file", &conf, "--extract", &data],
            &["read", path],
        )?;
        assert_eq!(out.status.code(), Some(0), "{path}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), want, "{path}");
    }
    // A path out of the sandbox is refused before anything runs.
    let escape = format!("../x={}", src.join("app.conf").display());
    let out = run(&c, &[&*component, "--file", &escape], &["read", "x"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a plain relative path"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

/// Two of a tenant's frameworks used one task id: `stoa logs` says so and
/// asks which; another tenant's task of that id is neither found nor
/// counted.
#[test]
fn an_ambiguous_task_id_asks_for_its_framework() -> anyhow::Result<()> {
    let c = Cluster::start(1, "cpus:4;mem:1024")?;
    let rt = tokio::runtime::Runtime::new()?;
    let artifact = stoa_proto::Artifact::inline(stoa_tests::misbehave_wasm()?);
    let (first, _second, _keep) = rt.block_on(async {
        let mut a = stoa_tests::TestFramework::subscribe(&c.client(), "one").await?;
        let mut b = stoa_tests::TestFramework::subscribe(&c.client(), "two").await?;
        for fw in [&mut a, &mut b] {
            fw.launch_all(vec![stoa_tests::sleeper(0, &artifact, 60_000)])
                .await?;
            fw.wait_for("sleeper-0", stoa_proto::TaskState::Running)
                .await?;
        }
        anyhow::Ok((a.id().clone(), b.id().clone(), (a, b)))
    })?;
    let out = c.stoa(&["logs", "sleeper-0", "--identity", "client"])?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("used by 2 frameworks"), "{err}");
    assert!(err.contains("--framework"), "{err}");
    let out = c.stoa(&[
        "logs",
        "sleeper-0",
        "--identity",
        "client",
        "--framework",
        first.as_str(),
    ])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Another tenant sees neither.
    stoa_transport::certs::issue(&c.certs, "bob", &[])?;
    let out = c.stoa(&["logs", "sleeper-0", "--identity", "bob"])?;
    assert!(
        text(&out.stderr).contains("no task sleeper-0 is known"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
