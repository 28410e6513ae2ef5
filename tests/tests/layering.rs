//! The dependency rule of the design: the protocol, the allocator and the two
//! cores never depend on an async runtime, a network stack or wasmtime. This
//! is what lets the simulator run them deterministically.

use std::process::Command;

const PURE: [&str; 5] = [
    "stoa-sim",
    "stoa-proto",
    "stoa-allocator",
    "stoa-master-core",
    "stoa-agent-core",
];
const FORBIDDEN: [&str; 5] = ["tokio", "quinn", "wasmtime", "rustls", "mio"];

#[test]
fn pure_crates_depend_on_no_io() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for krate in PURE {
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
                krate,
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()?;
        assert!(
            out.status.success(),
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8(out.stdout)?;
        assert!(
            tree.contains(krate),
            "cargo tree printed nothing for {krate}"
        );
        for line in tree.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            assert!(
                !FORBIDDEN
                    .iter()
                    .any(|f| name == *f || name.starts_with(&format!("{f}-"))),
                "{krate} depends on {name}"
            );
        }
    }
    Ok(())
}
