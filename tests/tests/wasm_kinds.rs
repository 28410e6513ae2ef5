//! The three kinds of wasm task, told apart by the binary: `stoa:task`
//! components, `wasi:cli/run` command components and WASI preview-1
//! modules. An ordinary program (the `wasi-cli` fixture) runs unmodified
//! as either of the last two, in its sandbox, with its logs captured and
//! capped; anything else is refused with a clear reason.

use stoa_agent::core::TaskEvent;
use stoa_agent::exec::kill::Kill;
use stoa_agent::exec::task_dir::TaskDir;
use stoa_agent::exec::wasm::{RuntimeConfig, WasmRuntime};
use stoa_proto::side::LogStream;
use stoa_proto::{
    Artifact, Reason, Resources, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState, WasmTask,
};
use stoa_tests::{cli_component_wasm, cli_module_wasm};

fn command(bytes: Vec<u8>, args: &[&str], input: &str, limits: TaskLimits) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new("cmd").expect("valid id"),
        name: "wasi-cli".into(),
        resources: Resources::new().with_millicpus(1000).with_mem_mib(64),
        kind: TaskKind::Wasm(WasmTask {
            artifact: Artifact::inline(bytes),
            input: input.as_bytes().to_vec(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![("GREETING".into(), "hi".into())],
            sandbox: stoa_proto::Sandbox::Directory,
            files: Vec::new(),
        }),
        limits,
    }
}

struct Sandbox {
    _tmp: tempfile::TempDir,
    dir: TaskDir,
}

fn sandbox() -> anyhow::Result<Sandbox> {
    let tmp = tempfile::tempdir()?;
    let dir = TaskDir::create(&tmp.path().join("task"))?;
    Ok(Sandbox { _tmp: tmp, dir })
}

fn run(rt: &WasmRuntime, task: &TaskInfo, dir: &TaskDir) -> TaskEvent {
    rt.run(task, Some(dir), &Kill::default(), None, || {})
}

fn log(dir: &TaskDir, stream: LogStream) -> String {
    std::fs::read_to_string(dir.log_path(stream)).unwrap_or_default()
}

fn both_kinds() -> anyhow::Result<[(&'static str, Vec<u8>); 2]> {
    Ok([
        ("command component", cli_component_wasm()?),
        ("preview-1 module", cli_module_wasm()?),
    ])
}

#[test]
fn ordinary_programs_get_args_env_stdin_and_logs() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    for (kind, bytes) in both_kinds()? {
        let s = sandbox()?;
        let task = command(
            bytes,
            &["echo", "a", "b"],
            "from stdin",
            TaskLimits::default(),
        );
        let end = run(&rt, &task, &s.dir);
        assert_eq!(
            end,
            TaskEvent::Finished {
                output: Vec::new(),
                exit_code: Some(0)
            },
            "{kind}"
        );
        assert_eq!(
            log(&s.dir, LogStream::Stdout),
            "a b | hi | from stdin\n",
            "{kind}"
        );
        assert_eq!(log(&s.dir, LogStream::Stderr), "echoed 2 words\n", "{kind}");
    }
    Ok(())
}

/// Preview 1 carries any exit code; `wasi:cli/exit` 0.2 only success or
/// failure (reported as 1) unless the program imports `exit-with-code`,
/// which Rust's wasip2 standard library does not yet.
#[test]
fn exit_codes_are_reported() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    for (kind, bytes, code) in [
        ("command component", cli_component_wasm()?, 1),
        ("preview-1 module", cli_module_wasm()?, 7),
    ] {
        let s = sandbox()?;
        let end = run(
            &rt,
            &command(bytes, &["exit", "7"], "", TaskLimits::default()),
            &s.dir,
        );
        assert_eq!(end, exited_with(code), "{kind}");
    }
    Ok(())
}

fn exited_with(code: i32) -> TaskEvent {
    TaskEvent::Ended {
        state: TaskState::Failed,
        reason: Reason::NonZeroExit,
        message: format!("exited with code {code}"),
        exit_code: Some(code),
    }
}

#[test]
fn a_command_component_exit_code_is_reported_exactly() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    for code in [0u8, 3, 42, 255] {
        let s = sandbox()?;
        let task = command(
            stoa_tests::exit_with_code_component(code)?,
            &[],
            "",
            TaskLimits::default(),
        );
        let end = run(&rt, &task, &s.dir);
        let want = match code {
            0 => TaskEvent::Finished {
                output: Vec::new(),
                exit_code: Some(0),
            },
            code => exited_with(i32::from(code)),
        };
        assert_eq!(end, want, "exit-with-code({code})");
    }
    Ok(())
}

/// The environment is the launch's and nothing else: no variables added,
/// none dropped (not even ones named like Stoa's own).
#[test]
fn the_environment_is_exactly_the_launchs() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    for (kind, bytes) in both_kinds()? {
        let s = sandbox()?;
        let mut task = command(bytes, &["env"], "", TaskLimits::default());
        if let TaskKind::Wasm(w) = &mut task.kind {
            w.env = vec![
                ("GREETING".into(), "hi".into()),
                ("STOA_TASK_ID".into(), "mine".into()),
                ("EMPTY".into(), String::new()),
            ];
        }
        let end = run(&rt, &task, &s.dir);
        assert!(matches!(end, TaskEvent::Finished { .. }), "{kind}: {end:?}");
        assert_eq!(
            log(&s.dir, LogStream::Stdout),
            "EMPTY=\nGREETING=hi\nSTOA_TASK_ID=mine\n",
            "{kind}"
        );
    }
    Ok(())
}

/// Without a preopened directory a program sees no files, yet its stdout
/// and stderr are kept, as `wasmtime run` without `--dir` prints them.
#[test]
fn a_task_without_a_preopen_keeps_its_logs() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    for (kind, bytes) in both_kinds()? {
        let s = sandbox()?;
        let mut echo = command(bytes.clone(), &["echo", "a"], "in", TaskLimits::default());
        let mut write = command(bytes, &["write", "f.txt", "x"], "", TaskLimits::default());
        for task in [&mut echo, &mut write] {
            if let TaskKind::Wasm(w) = &mut task.kind {
                w.sandbox = stoa_proto::Sandbox::LogsOnly;
            }
        }
        let end = run(&rt, &echo, &s.dir);
        assert!(matches!(end, TaskEvent::Finished { .. }), "{kind}: {end:?}");
        assert_eq!(log(&s.dir, LogStream::Stdout), "a | hi | in\n", "{kind}");
        let end = run(&rt, &write, &s.dir);
        // Exit code 2, which wasip2's Rust standard library reports as 1.
        let code = if kind == "preview-1 module" { 2 } else { 1 };
        assert_eq!(end, exited_with(code), "{kind}");
        assert!(
            log(&s.dir, LogStream::Stderr).contains("cannot write f.txt"),
            "{kind}: {}",
            log(&s.dir, LogStream::Stderr)
        );
        assert!(!s.dir.sandbox().join("f.txt").exists(), "{kind}");
    }
    Ok(())
}

#[test]
fn the_sandbox_is_the_only_path_a_task_sees() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    for (kind, bytes) in both_kinds()? {
        let s = sandbox()?;
        let write = command(
            bytes.clone(),
            &["write", "notes.txt", "kept"],
            "",
            TaskLimits::default(),
        );
        let end = run(&rt, &write, &s.dir);
        assert!(matches!(end, TaskEvent::Finished { .. }), "{kind}: {end:?}");
        assert_eq!(
            std::fs::read_to_string(s.dir.sandbox().join("notes.txt"))?,
            "kept",
            "{kind}"
        );
        // Outside paths: absolute, escaping, and the task's own log.
        for path in [
            "/etc/passwd",
            "../../../../etc/passwd",
            "../stdout",
            "/proc/self/environ",
        ] {
            let read = command(bytes.clone(), &["read", path], "", TaskLimits::default());
            let end = run(&rt, &read, &s.dir);
            assert!(
                matches!(
                    end,
                    TaskEvent::Ended {
                        reason: Reason::NonZeroExit,
                        ..
                    }
                ),
                "{kind} read {path}: {end:?}"
            );
            assert!(
                log(&s.dir, LogStream::Stderr).contains(&format!("cannot read {path}")),
                "{kind} read {path}"
            );
        }
    }
    Ok(())
}

#[test]
fn unbounded_output_is_capped_and_the_task_stopped_by_its_own_limit() -> anyhow::Result<()> {
    let rt = WasmRuntime::with_config(RuntimeConfig {
        log_limit: 64 << 10,
        ..RuntimeConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let s = sandbox()?;
    let limits = TaskLimits {
        fuel: None,
        timeout_ms: Some(300),
    };
    let end = run(
        &rt,
        &command(cli_component_wasm()?, &["spew"], "", limits),
        &s.dir,
    );
    assert!(
        matches!(
            end,
            TaskEvent::Ended {
                reason: Reason::Timeout,
                ..
            }
        ),
        "{end:?}"
    );
    let out = log(&s.dir, LogStream::Stdout);
    let note = "\n[stoa: log truncated at 65536 bytes]\n";
    assert!(out.ends_with(note), "the log says it was cut");
    assert_eq!(out.len(), (64 << 10) + note.len());
    Ok(())
}

/// A preview-1 module growing its table past the per-task limit.
const TABLE_GROWER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (table 1 funcref)
  (func (export "_start")
    (drop (table.grow (ref.null func) (i32.const 100000)))
    (call $exit (i32.const 0))))
"#;

#[test]
fn tables_and_instance_counts_have_their_own_reasons() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let s = sandbox()?;
    let grow = command(
        wat::parse_str(TABLE_GROWER)?,
        &[],
        "",
        TaskLimits::default(),
    );
    let end = run(&rt, &grow, &s.dir);
    assert!(
        matches!(
            end,
            TaskEvent::Ended {
                state: TaskState::Failed,
                reason: Reason::TableLimit,
                ..
            }
        ),
        "{end:?}"
    );

    // A command component instantiating one core module 40 times.
    let instances = "(core instance (instantiate $m))\n".repeat(40);
    let many = format!(
        r#"(component
            (core module $m (func (export "run") (result i32) i32.const 0))
            {instances}
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $cli (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $cli)))"#
    );
    let end = run(
        &rt,
        &command(wat::parse_str(&many)?, &[], "", TaskLimits::default()),
        &s.dir,
    );
    match end {
        TaskEvent::Ended {
            state: TaskState::Error,
            reason: Reason::InstanceLimit,
            message,
            ..
        } => assert!(message.contains("41 core instances"), "{message}"),
        other => panic!("expected instance-limit, got {other:?}"),
    }
    Ok(())
}

#[test]
fn binaries_of_no_known_kind_are_refused_clearly() -> anyhow::Result<()> {
    let rt = WasmRuntime::new().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let s = sandbox()?;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"\x7fELF not wasm at all".to_vec(),
            "not a wasm binary",
        ),
        (
            "module without _start",
            wat::parse_str("(module (func (export \"main\")))")?,
            "no `_start`",
        ),
        (
            "truncated module",
            cli_module_wasm()?[..4096].to_vec(),
            "not valid wasm",
        ),
    ];
    for (what, bytes, expected) in cases {
        match run(&rt, &command(bytes, &[], "", TaskLimits::default()), &s.dir) {
            TaskEvent::Ended {
                state: TaskState::Error,
                reason: Reason::InvalidArtifact,
                message,
                ..
            } => assert!(message.contains(expected), "{what}: {message}"),
            other => panic!("{what}: expected invalid-artifact, got {other:?}"),
        }
    }
    Ok(())
}
