//! The `stoa` command itself: help for everything, shell completions that
//! parse, and errors as one line without a backtrace unless asked.

use std::process::Command;
use stoa_tests::stoa_bin;

fn stoa(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(stoa_bin()?).args(args).output()?)
}

#[test]
fn every_command_has_help() -> anyhow::Result<()> {
    let top = stoa(&["--help"])?;
    assert!(top.status.success());
    let text = String::from_utf8(top.stdout)?;
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    for expected in ["run", "top", "ps", "logs", "events", "completions"] {
        assert!(
            commands.contains(&expected),
            "{expected} missing: {commands:?}"
        );
    }
    for command in commands {
        let out = stoa(&[command, "--help"])?;
        assert!(out.status.success(), "stoa {command} --help failed");
        assert!(
            String::from_utf8(out.stdout)?.contains("Usage: stoa"),
            "stoa {command} --help"
        );
    }
    Ok(())
}

#[test]
fn completions_parse_in_their_shell() -> anyhow::Result<()> {
    let out = stoa(&["completions", "bash"])?;
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout)?;
    assert!(script.contains("_stoa()"), "not a bash completion");
    assert!(
        script.contains("--follow"),
        "stoa logs --follow is not completed"
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stoa.bash");
    std::fs::write(&path, &script)?;
    let checked = Command::new("bash").arg("-n").arg(&path).output()?;
    assert!(
        checked.status.success(),
        "bash cannot parse it: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

#[test]
fn errors_are_one_line_without_a_backtrace_unless_asked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("no-certs");
    let certs = certs.to_string_lossy();
    let args = ["ps", "--master", "127.0.0.1:9", "--certs", &*certs];
    let out = Command::new(stoa_bin()?)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let asked = Command::new(stoa_bin()?)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("STOA_BACKTRACE", "1")
        .output()?;
    assert!(
        String::from_utf8(asked.stderr)?.lines().count() > 1,
        "STOA_BACKTRACE=1 printed no backtrace"
    );
    Ok(())
}

#[test]
fn top_shows_allocation_rates_and_agents_to_each_caller() -> anyhow::Result<()> {
    let c = stoa_tests::Cluster::start(1, "cpus:2;mem:1024")?;
    let component = stoa_tests::wasm_path("wasi-cli", "wasi-cli")?;
    let detached = c
        .stoa_command(&[
            "run",
            &component.to_string_lossy(),
            "--detach",
            "--name",
            "ticker",
            "--cpus",
            "0.5",
        ])?
        .args(["--", "ticks", "600"])
        .output()?;
    assert!(
        detached.status.success(),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );
    let top = |identity: &str| -> anyhow::Result<String> {
        let out = c
            .stoa_command(&["top", "--once", "--interval", "0.2", "--identity", identity])?
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let frame = loop {
        let frame = top("operator")?;
        if frame.contains("tasks running 1") {
            break frame;
        }
        anyhow::ensure!(
            std::time::Instant::now() < give_up,
            "no running task:\n{frame}"
        );
    };
    assert!(frame.contains("agents 1/1"), "{frame}");
    assert!(frame.contains("run ticker"), "{frame}");
    assert!(frame.contains("tasks launched per second"), "{frame}");
    assert!(frame.contains("connected"), "the agent's row:\n{frame}");
    // The tenant who ran it sees its framework, not the operator's tables.
    let tenant = top("client")?;
    assert!(tenant.contains("run ticker"), "{tenant}");
    assert!(
        tenant.contains("agents are the operator's to see"),
        "{tenant}"
    );
    // Another tenant sees nothing of it.
    stoa_transport::certs::issue(&c.certs, "bob", &[])?;
    let other = top("bob")?;
    assert!(!other.contains("run ticker"), "{other}");
    assert!(other.contains("frameworks 0"), "{other}");
    Ok(())
}
