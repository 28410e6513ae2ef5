//! The web UI in a real browser (Debian's chromium, driven by
//! playwright-core from npm, both installed by `./dev test`) against a
//! real cluster: the page loads, a chart shows data, a task started during
//! the test appears RUNNING, its page follows its log, and a screenshot of
//! the overview is saved (target/ui-overview.png; docs/ui.png is a copy).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use stoa_proto::{Artifact, Sandbox, TaskId, TaskInfo, TaskKind, TaskLimits, TaskState, WasmTask};
use stoa_tests::{Cluster, TestFramework, cli_component_wasm};

/// Where `./dev test` installs playwright-core (tests/ui/package.json).
fn tools() -> anyhow::Result<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no workspace"))?
        .to_path_buf();
    let dir = root.join("target/ui-test");
    anyhow::ensure!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}; run ./dev test (it installs it from npm, and chromium from Debian)",
        dir.display()
    );
    // The script as it is in the sources, beside its node_modules.
    std::fs::copy(root.join("tests/ui/check.mjs"), dir.join("check.mjs"))?;
    std::fs::copy(root.join("tests/ui/package.json"), dir.join("package.json"))?;
    Ok(dir)
}

#[test]
fn the_ui_shows_the_cluster_a_new_task_and_its_log_in_a_browser() -> anyhow::Result<()> {
    let tools = tools()?;
    let c = Cluster::start(1, "cpus:2;mem:1024")?;
    let api = c.api("operator")?;
    let token = api.token().ok_or_else(|| anyhow::anyhow!("no token"))?;
    let url = format!("http://{}/ui/#token={token}", api.addr());
    let screenshot = tools
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no target directory"))?
        .join("ui-overview.png");
    let mut browser = Command::new("node")
        .arg(tools.join("check.mjs"))
        .arg(&url)
        .arg(&screenshot)
        .current_dir(&tools)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(
        browser
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?,
    )
    .lines();
    let outcome = (|| {
        let first = lines.next().transpose()?;
        anyhow::ensure!(
            first.as_deref() == Some("loaded"),
            "the page did not load: {first:?}"
        );
        // Only now does the task start: the page must pick it up live.
        let rt = tokio::runtime::Runtime::new()?;
        let mut fw = rt.block_on(TestFramework::subscribe(&c.client(), "ticker"))?;
        let task = TaskInfo {
            task_id: TaskId::new("ticker-1")?,
            name: "ticker".into(),
            resources: "cpus:0.5;mem:64".parse()?,
            kind: TaskKind::Wasm(WasmTask {
                artifact: Artifact::inline(cli_component_wasm()?),
                input: Vec::new(),
                args: vec!["ticks".into(), "600".into()],
                env: Vec::new(),
                sandbox: Sandbox::Directory,
                files: Vec::new(),
            }),
            limits: TaskLimits::default(),
        };
        rt.block_on(fw.launch_all(vec![task]))?;
        rt.block_on(fw.wait_for("ticker-1", TaskState::Running))?;
        let mut stdin = browser
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        writeln!(stdin, "ticker-1")?;
        let said: Vec<String> = lines.by_ref().collect::<Result<_, _>>()?;
        let status = browser.wait()?;
        let mut stderr = String::new();
        if let Some(mut e) = browser.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut stderr)?;
        }
        anyhow::ensure!(
            status.success(),
            "the browser check failed: {said:?}\n{stderr}"
        );
        assert!(said.contains(&"task state RUNNING".to_string()), "{said:?}");
        assert!(said.contains(&"log followed".to_string()), "{said:?}");
        assert!(
            std::fs::metadata(&screenshot)?.len() > 10_000,
            "an empty screenshot"
        );
        rt.block_on(fw.teardown())
    })();
    let _ = browser.kill();
    let _ = browser.wait();
    outcome.map_err(|e| anyhow::anyhow!("{e:#}\n{}", c.logs()))
}
