//! `stoa up`: a local cluster that says where its API is and hands the
//! operator a token for it.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn stoa_up_gives_the_api_and_a_token_that_works() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ready = dir.path().join("ready");
    let mut up = Command::new(stoa_tests::stoa_bin()?)
        .args(["up", "--agents", "1", "--listen", "127.0.0.1:0", "--json"])
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let outcome = (|| {
        let stdout = up
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let report: serde_json::Value = serde_json::from_str(&line)?;
        let give_up = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            anyhow::ensure!(Instant::now() < give_up, "stoa up never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let http = report["http"].as_str().unwrap_or_default();
        let token = report["token"].as_str().unwrap_or_default();
        let addr = http
            .strip_prefix("http://")
            .and_then(|h| h.strip_suffix("/api/v1/"))
            .ok_or_else(|| anyhow::anyhow!("no API address in {report}"))?;
        let api = stoa_tests::http::Api::new(addr, Some(token));
        let summary = api.ok("/api/v1/summary")?;
        assert_eq!(summary["agents"], 1, "{summary}");
        // The UI's address carries the same token for the page.
        let ui = report["ui"].as_str().unwrap_or_default();
        assert_eq!(ui, format!("http://{addr}/ui/#token={token}"), "{report}");
        let page = ureq::get(&format!("http://{addr}/ui/"))
            .call()?
            .into_string()?;
        assert!(page.contains("<title>Stoa</title>"), "{page}");
        anyhow::Ok(())
    })();
    // Stopped as Ctrl-C stops it: it stops its nodes.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(up.id())?),
        nix::sys::signal::Signal::SIGINT,
    )?;
    up.wait()?;
    outcome
}
