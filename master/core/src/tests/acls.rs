//! The ACLs as the core enforces them: registering in a role, launching,
//! viewing and killing others' frameworks, and the operator's calls for
//! scoped operators; each refusal names what refused.

use super::*;
use crate::acl::Acls;
use stoa_proto::operator::{Caller, TaskQuery};

fn with(json: &str) -> MasterConfig {
    MasterConfig {
        acls: Acls::parse(json).expect("valid ACLs"),
        ..MasterConfig::default()
    }
}

/// A second scheduler connection subscribing as `principal` in `role`.
fn subscribe_as(m: &mut Master, conn: ConnId, principal: &str, role: &str) -> Vec<Transmit> {
    m.handle_connected(t(0), conn, Channel::Scheduler);
    m.handle_authenticated(conn, principal.into());
    let framework = FrameworkInfo::new("g", role.parse().expect("role"));
    m.handle_scheduler_call(t(0), conn, Call::Subscribe { framework });
    drain(m)
}

#[test]
fn registering_in_a_role_follows_the_rules_and_a_refusal_names_its_rule() {
    let (mut m, _, _) = cluster_with(
        with(
            r#"{"default": "deny", "register_framework": [
                {"name": "no prod", "roles": ["prod"], "allow": false},
                {"principals": ["team-a"], "roles": ["eng", "prod"]}
            ]}"#,
        ),
        Some("team-a"),
    );
    // team-a subscribed in eng/ml (a sub-role of eng) above; prod is denied
    // by name, and another principal by the default.
    let out = subscribe_as(&mut m, ConnId(50), "team-a", "prod");
    assert!(
        refused(&out, "the ACL rule \"no prod\" denies it"),
        "{out:?}"
    );
    let out = subscribe_as(&mut m, ConnId(51), "team-b", "eng");
    assert!(refused(&out, "the default is deny"), "{out:?}");
}

#[test]
fn launching_wasm_needs_a_rule_when_the_default_is_deny() {
    let (mut m, _, offer) = cluster_with(
        with(r#"{"default": "deny", "register_framework": [{"principals": ["team-a"]}]}"#),
        Some("team-a"),
    );
    launch(&mut m, offer.id, vec![task("w", "cpus:1;mem:32")]);
    let out = drain(&mut m);
    assert!(
        out.iter().any(
            |x| matches!(x, Transmit::ToScheduler(_, Event::Update { status, .. })
            if status.state == TaskState::Error
                && status.reason == Some(Reason::NotAuthorized)
                && status.message.contains("team-a may not launch_wasm in role eng/ml"))
        ),
        "{out:?}"
    );
}

#[test]
fn viewers_and_killers_of_others_have_exactly_their_rules() {
    let (mut m, _, offer) = cluster_with(
        with(
            r#"{"view": [{"principals": ["auditor", "oncall"]}],
                "kill": [{"principals": ["oncall"], "owners": ["team-a"]}]}"#,
        ),
        Some("team-a"),
    );
    launch(&mut m, offer.id, vec![task("a-1", "cpus:1;mem:64")]);
    drain(&mut m);
    let tasks = |m: &mut Master, who: &str| match m.handle_operator_call(
        t(2),
        &Caller::from_principal(who),
        OperatorCall::GetTasks(TaskQuery::default()),
    ) {
        OperatorReply::Tasks(page) => page.tasks.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(tasks(&mut m, "auditor"), 1);
    assert_eq!(tasks(&mut m, "stranger"), 0);
    let kill = |m: &mut Master, who: &str| {
        m.handle_operator_call(
            t(2),
            &Caller::from_principal(who),
            OperatorCall::KillTask {
                framework_id: None,
                task_id: "a-1".parse().expect("id"),
            },
        )
    };
    // The auditor sees it but may not kill it, and is told why.
    match kill(&mut m, "auditor") {
        OperatorReply::Forbidden { message } => {
            assert!(
                message.contains("auditor may not kill of team-a"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A stranger cannot even learn that it exists.
    assert!(
        matches!(kill(&mut m, "stranger"), OperatorReply::Refused { message } if message.contains("no running task"))
    );
    assert_eq!(kill(&mut m, "oncall"), OperatorReply::Done);
}

#[test]
fn scoped_operators_change_only_their_roles() {
    let mut m = Master::new(
        with(
            r#"{"set_weight": [{"name": "ml leads", "principals": ["ml-lead"], "roles": ["eng/ml"]}]}"#,
        ),
        "m",
    );
    let weight = |m: &mut Master, who: &str, role: &str| {
        m.handle_operator_call(
            t(1),
            &Caller::from_principal(who),
            OperatorCall::SetWeight {
                role: role.parse().expect("role"),
                weight: 2.0,
            },
        )
    };
    assert_eq!(
        weight(&mut m, "ml-lead", "eng/ml/training"),
        OperatorReply::Done
    );
    match weight(&mut m, "ml-lead", "eng/web") {
        OperatorReply::Forbidden { message } => {
            assert!(
                message.contains("only the operator may, unless a rule of set_weight"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(weight(&mut m, "operator", "eng/web"), OperatorReply::Done);
}

#[test]
fn new_rules_decide_from_the_moment_they_are_set() {
    let (mut m, _, _) = cluster_with(MasterConfig::default(), Some("team-a"));
    assert!(
        !subscribe_as(&mut m, ConnId(60), "team-b", "web")
            .iter()
            .any(|x| matches!(x, Transmit::ToScheduler(_, Event::Error { .. })))
    );
    m.set_acls(Acls::parse(r#"{"default": "deny"}"#).expect("valid"));
    let out = subscribe_as(&mut m, ConnId(61), "team-b", "web");
    assert!(refused(&out, "the default is deny"), "{out:?}");
}

#[test]
fn an_agent_id_is_bound_to_the_certificate_that_registered_it() {
    let mut m = Master::new(MasterConfig::default(), "m");
    let register = |m: &mut Master, conn: ConnId, cert: &str, id: Option<AgentId>| {
        m.handle_connected(t(0), conn, Channel::Agent);
        m.handle_authenticated(conn, cert.into());
        let info = AgentInfo {
            reservations: Vec::new(),
            hostname: "h1".into(),
            resources: "cpus:1;mem:64".parse().expect("r"),
            attributes: Attributes::default(),
        };
        m.handle_agent_message(
            t(0),
            conn,
            AgentToMaster::Register {
                info,
                agent_id: id,
                tasks: vec![],
            },
        );
        drain(m)
    };
    let id = match register(&mut m, ConnId(70), "agent-7", None).as_slice() {
        [Transmit::ToAgent(_, MasterToAgent::Registered { agent_id, .. })] => agent_id.clone(),
        other => panic!("{other:?}"),
    };
    let out = register(&mut m, ConnId(71), "agent-9", Some(id.clone()));
    assert!(
        out.iter().any(
            |x| matches!(x, Transmit::ToAgent(_, MasterToAgent::Refused { message })
            if message.contains("certificate agent-9 may not take it over"))
        ),
        "{out:?}"
    );
    let out = register(&mut m, ConnId(72), "agent-7", Some(id));
    assert!(
        out.iter()
            .any(|x| matches!(x, Transmit::ToAgent(_, MasterToAgent::Registered { .. }))),
        "{out:?}"
    );
}

#[test]
fn only_the_operator_revokes_and_a_revocation_must_name_something() {
    use stoa_proto::operator::Revocation;
    let mut m = Master::new(MasterConfig::default(), "m");
    let revoke = |m: &mut Master, who: &str, r: Revocation| {
        m.handle_operator_call(t(1), &Caller::from_principal(who), OperatorCall::Revoke(r))
    };
    let token = format!("stoa1.626f62.99.00.{}", "ab".repeat(32));
    assert!(matches!(
        revoke(&mut m, "bob", Revocation::Token(token.clone())),
        OperatorReply::Forbidden { .. }
    ));
    assert!(matches!(
        revoke(&mut m, "operator", Revocation::Token("not a token".into())),
        OperatorReply::Refused { .. }
    ));
    assert!(matches!(
        revoke(
            &mut m,
            "operator",
            Revocation::CertificateSerial("xyz".into())
        ),
        OperatorReply::Refused { .. }
    ));
    assert_eq!(
        revoke(&mut m, "operator", Revocation::Token(token)),
        OperatorReply::Done
    );
    assert_eq!(
        revoke(
            &mut m,
            "operator",
            Revocation::CertificateSerial("00:0A:1b".into())
        ),
        OperatorReply::Done
    );
    let keys: Vec<&String> = m.revoked().keys().collect();
    assert_eq!(
        keys,
        [
            &"serial:a1b".to_string(),
            &format!("token:{}", "ab".repeat(32))
        ]
    );
}
