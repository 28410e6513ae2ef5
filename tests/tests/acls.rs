//! The ACLs against a real cluster, with several tenants' certificates:
//! each action allowed and refused with the rule named, a scoped
//! operator, a viewer of others' tasks, and a reload on SIGHUP (a bad
//! file refused whole, the rules in force kept).

use std::time::{Duration, Instant};
use stoa_tests::{Cluster, wasm_path};

const RULES: &str = r#"{
  "default": "deny",
  "register_framework": [
    {"name": "client in eng", "principals": ["client"], "roles": ["eng"]}
  ],
  "launch_wasm": [{"principals": ["client"]}],
  "upload": [{"principals": ["client"]}],
  "view": [{"principals": ["auditor"]}],
  "set_weight": [{"name": "eng leads", "principals": ["eng-lead"], "roles": ["eng"]}]
}"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `stoa run` of the wasi-cli component as `identity` in `role`.
fn run(
    c: &Cluster,
    identity: &str,
    role: &str,
    args: &[&str],
) -> anyhow::Result<std::process::Output> {
    let component = wasm_path("wasi-cli", "wasi-cli")?;
    let mut command = c.stoa_command(&[
        "run",
        &component.to_string_lossy(),
        "--identity",
        identity,
        "--role",
        role,
    ])?;
    Ok(command.arg("--").args(args).output()?)
}

#[test]
fn each_action_is_allowed_or_refused_by_the_rule_that_names_it() -> anyhow::Result<()> {
    let c = Cluster::start_with_acls(1, "cpus:2;mem:1024", Some(RULES))?;
    for name in ["bob", "auditor", "eng-lead"] {
        stoa_transport::certs::issue(&c.certs, name, &[])?;
    }
    // client may upload, register in eng (and its sub-roles) and run wasm.
    let out = run(&c, "client", "eng/batch", &["echo", "hi"])?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi |  | \n");
    // Not in another role: the default refuses, and says so.
    let out = run(&c, "client", "web", &["echo", "hi"])?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("client may not register_framework in role web")
            && err.contains("the default is deny"),
        "{err}"
    );
    // bob may not register in eng, nor upload anything new.
    let out = run(&c, "bob", "eng", &["echo", "hi"])?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bob may not register_framework in role eng"),
        "{}",
        text(&out.stderr)
    );
    let fresh = c.dir.path().join("fresh.wasm");
    std::fs::write(&fresh, b"\0asm bob's own bytes")?;
    let put = |who: &str| -> anyhow::Result<std::process::Output> {
        Ok(c.stoa_command(&[
            "artifact",
            "put",
            &fresh.to_string_lossy(),
            "--identity",
            who,
        ])?
        .output()?)
    };
    let out = put("bob")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bob may not upload"),
        "{}",
        text(&out.stderr)
    );
    assert!(put("client")?.status.success());

    // A scoped operator: weights of eng and below, nothing else.
    let weight = |who: &str, role: &str| -> anyhow::Result<std::process::Output> {
        Ok(c.stoa_command(&["weight", role, "2", "--identity", who])?
            .output()?)
    };
    let out = weight("eng-lead", "eng/batch")?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = weight("eng-lead", "web")?;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("eng-lead may not set_weight in role web"),
        "{}",
        text(&out.stderr)
    );

    // A viewer of others: the auditor sees client's running task, bob
    // sees nothing of it.
    let detached = c
        .stoa_command(&[
            "run",
            &wasm_path("wasi-cli", "wasi-cli")?.to_string_lossy(),
            "--identity",
            "client",
            "--role",
            "eng",
            "--detach",
            "--name",
            "watched",
        ])?
        .args(["--", "ticks", "600"])
        .output()?;
    assert!(detached.status.success(), "{}", text(&detached.stderr));
    let ps = |who: &str| -> anyhow::Result<Vec<serde_json::Value>> {
        let out = c
            .stoa_command(&["ps", "--json", "--identity", who])?
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let started = Instant::now();
    while ps("auditor")?.is_empty() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the auditor sees nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ps("bob")?.is_empty(), "bob sees client's task");
    Ok(())
}

#[test]
fn new_rules_are_read_on_sighup_and_a_bad_file_changes_nothing() -> anyhow::Result<()> {
    let c = Cluster::start_with_acls(1, "cpus:2;mem:1024", Some(RULES))?;
    stoa_transport::certs::issue(&c.certs, "bob", &[])?;
    let acls = c.dir.path().join("acls.json");
    let bob_runs =
        || -> anyhow::Result<bool> { Ok(run(&c, "bob", "web", &["echo", "hi"])?.status.success()) };
    assert!(!bob_runs()?);
    // bob gets web.
    std::fs::write(
        &acls,
        r#"{
  "default": "deny",
  "register_framework": [{"principals": ["client"], "roles": ["eng"]}, {"principals": ["bob"], "roles": ["web"]}],
  "launch_wasm": [{"principals": ["client", "bob"]}],
  "upload": [{"principals": ["client", "bob"]}]
}"#,
    )?;
    c.signal_master(nix::sys::signal::Signal::SIGHUP)?;
    let started = Instant::now();
    while !bob_runs()? {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the new rules did not take:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A file that does not parse is refused whole: bob keeps web.
    std::fs::write(
        &acls,
        r#"{"default": "deny", "register_framework": [{"roles": ["a//b"]}]}"#,
    )?;
    c.signal_master(nix::sys::signal::Signal::SIGHUP)?;
    let started = Instant::now();
    while !c.logs().contains("the ACLs in force stay") {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no word of the bad file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.logs().contains("refused whole"), "{}", c.logs());
    assert!(bob_runs()?, "a bad file changed the rules");
    Ok(())
}

/// An agent id belongs to the certificate that registered it: an agent
/// presenting another agent certificate with that id (a copied work
/// directory, a stolen id) is refused; the rightful one comes back.
#[test]
fn an_agent_id_is_reclaimed_only_by_its_own_certificate() -> anyhow::Result<()> {
    let mut c = Cluster::start(1, "cpus:1;mem:256")?;
    let id = c.agent_id(1)?;
    stoa_transport::certs::issue(&c.certs, "agent-9", &[])?;
    c.restart_agent(1, &["--identity", "agent-9"])?;
    let started = Instant::now();
    while !c.logs().contains("may not take it over") {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "agent-9 took over {id}:\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        c.logs().contains(&format!(
            "agent id {id} was registered with certificate agent; certificate agent-9 may not take it over"
        )),
        "{}",
        c.logs()
    );
    // Its own certificate takes it back.
    c.restart_agent(1, &[])?;
    let mut operator = c.client();
    operator.identity = "operator".into();
    let rt = tokio::runtime::Runtime::new()?;
    let started = Instant::now();
    loop {
        let agents = rt.block_on(stoa_client::operator_call(
            &operator,
            &stoa_proto::operator::OperatorCall::GetAgents,
        ))?;
        if let stoa_proto::operator::OperatorReply::Agents(list) = &agents
            && list.iter().any(|a| a.id.as_str() == id && a.connected)
        {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "{agents:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A revoked token and a revoked certificate are refused from then on,
/// also by a master started afterwards (the registry keeps them).
#[test]
fn a_revoked_token_or_certificate_is_refused_from_then_on() -> anyhow::Result<()> {
    let mut c = Cluster::start(0, "cpus:1;mem:64")?;
    stoa_transport::certs::issue(&c.certs, "bob", &[])?;
    let token = stoa_tests::http::create_token(&c.addr.to_string(), &c.certs, "bob")?;
    let http = std::fs::read_to_string(c.dir.path().join("master.http"))?;
    let api = stoa_tests::http::Api::new(&http, Some(&token));
    assert_eq!(api.get("/api/v1/frameworks")?.0, 200);
    let ps = |c: &Cluster| -> anyhow::Result<std::process::Output> {
        Ok(c.stoa_command(&["ps", "--identity", "bob"])?.output()?)
    };
    let refused = |c: &Cluster| -> anyhow::Result<()> {
        let out = ps(c)?;
        anyhow::ensure!(!out.status.success(), "bob's certificate still works");
        anyhow::ensure!(
            text(&out.stderr).contains("revoked"),
            "{}",
            text(&out.stderr)
        );
        Ok(())
    };
    assert!(ps(&c)?.status.success());

    let revoke = |c: &Cluster, what: &[&str]| -> anyhow::Result<()> {
        let out = c.stoa_command(&[&["revoke"], what].concat())?.output()?;
        anyhow::ensure!(out.status.success(), "{}", text(&out.stderr));
        Ok(())
    };
    revoke(&c, &["--token", &token])?;
    let (status, body) = api.get("/api/v1/frameworks")?;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{body}"
    );
    // Another token of the same principal still works.
    let fresh = stoa_tests::http::create_token(&c.addr.to_string(), &c.certs, "bob")?;
    assert_eq!(
        api.with_token(Some(&fresh)).get("/api/v1/frameworks")?.0,
        200
    );

    revoke(&c, &["--cert", "bob"])?;
    refused(&c)?;
    // Kept by the registry: a master started afterwards refuses it too.
    c.restart_master()?;
    refused(&c)?;
    let http = std::fs::read_to_string(c.dir.path().join("master.http"))?;
    let (status, _) = stoa_tests::http::Api::new(&http, Some(&token)).get("/api/v1/frameworks")?;
    assert_eq!(status, 401);
    Ok(())
}
