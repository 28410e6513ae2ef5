//! Operator controls over the real CLI: weights and quotas are set through
//! the master, refused when invalid or from a non-operator certificate,
//! visible, and survive a master restart through the registry.

use stoa_proto::operator::{OperatorCall, OperatorReply};
use stoa_tests::Cluster;

fn ok(out: std::process::Output) -> anyhow::Result<String> {
    let stdout = String::from_utf8(out.stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "stoa failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn roles_json(c: &Cluster) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&ok(c.stoa(&["roles", "--json"])?)?)?)
}

fn role<'a>(roles: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    roles.as_array()?.iter().find(|r| r["role"] == name)
}

#[test]
fn weights_and_quotas_are_set_shown_and_survive_a_master_restart() -> anyhow::Result<()> {
    let mut c = Cluster::start(1, "cpus:1;mem:64")?;
    ok(c.stoa(&["weight", "eng/ml", "2.5"])?)?;
    ok(c.stoa(&[
        "quota",
        "eng",
        "--guarantee",
        "cpus:1;mem:128",
        "--limit",
        "cpus:2;gpus:0",
    ])?)?;

    let bad = c.stoa(&["quota", "eng", "--guarantee", "cpus:4", "--limit", "cpus:2"])?;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("exceeds its limit"),
        "{bad:?}"
    );
    let bad = c.stoa(&["weight", "eng", "-1"])?;
    assert!(!bad.status.success(), "a negative weight was accepted");

    let check = |roles: &serde_json::Value| {
        let ml = role(roles, "eng/ml").expect("eng/ml listed");
        assert_eq!(ml["weight"], 2.5);
        let eng = role(roles, "eng").expect("eng listed");
        assert_eq!(eng["guarantee"], "cpus:1;mem:128");
        assert_eq!(eng["limit"], "cpus:2;gpus:0");
    };
    check(&roles_json(&c)?);
    // Operator reservations: of free resources only, durable, visible.
    let agent = std::fs::read_to_string(c.dir.path().join("agent-1/agent_id"))?;
    let agent = agent.trim();
    let too_much = c.stoa(&["reserve", agent, "eng", "cpus:8"])?;
    assert!(
        !too_much.status.success(),
        "reserved more than the agent has"
    );
    ok(c.stoa(&["reserve", agent, "eng", "cpus:0.5;mem:32"])?)?;
    let shown = |roles: &serde_json::Value| role(roles, "eng").map(|r| r["reservations"].clone());
    assert_eq!(
        shown(&roles_json(&c)?),
        Some(serde_json::json!([{"agent": agent, "resources": "cpus:0.5;mem:32"}]))
    );

    c.restart_master()?;
    check(&roles_json(&c)?);
    assert_eq!(
        shown(&roles_json(&c)?),
        Some(serde_json::json!([{"agent": agent, "resources": "cpus:0.5;mem:32"}]))
    );

    // Removing the quota is durable too.
    ok(c.stoa(&["quota", "eng"])?)?;
    c.restart_master()?;
    let roles = roles_json(&c)?;
    assert_eq!(
        role(&roles, "eng").map(|r| r["limit"].clone()),
        Some(serde_json::Value::Null),
        "the quota came back"
    );
    assert_eq!(
        shown(&roles),
        Some(serde_json::json!([{"agent": agent, "resources": "cpus:0.5;mem:32"}])),
        "the reservation was lost"
    );
    Ok(())
}

#[test]
fn a_tenant_certificate_gets_a_tenant_view_of_the_operator_channel() -> anyhow::Result<()> {
    let c = Cluster::start(0, "cpus:1;mem:64")?;
    let rt = tokio::runtime::Runtime::new()?;
    // The scheduler certificate ("client") is a tenant: operator-only
    // calls are forbidden, and it sees only its own frameworks (none).
    let as_client = rt.block_on(stoa_client::operator_call(
        &c.client(),
        &OperatorCall::GetRoles,
    ))?;
    match as_client {
        OperatorReply::Forbidden { message } => {
            assert!(message.contains("client may not list roles"), "{message}")
        }
        other => panic!("a tenant could list roles: {other:?}"),
    }
    let frameworks = rt.block_on(stoa_client::operator_call(
        &c.client(),
        &OperatorCall::GetFrameworks,
    ))?;
    assert!(
        matches!(&frameworks, OperatorReply::Frameworks(f) if f.is_empty()),
        "{frameworks:?}"
    );
    let mut operator = c.client();
    operator.identity = "operator".into();
    assert!(matches!(
        rt.block_on(stoa_client::operator_call(
            &operator,
            &OperatorCall::GetRoles
        ))?,
        OperatorReply::Roles(_)
    ));
    Ok(())
}
