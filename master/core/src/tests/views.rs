//! What the operator API shows each caller: a tenant sees its own
//! frameworks and tasks and nothing of anyone else's.

use super::*;
use stoa_proto::operator::{Caller, EventKind, OperatorCall, OperatorReply, TaskQuery};

fn tasks(m: &mut Master, caller: &Caller) -> Vec<String> {
    match m.handle_operator_call(t(2), caller, OperatorCall::GetTasks(TaskQuery::default())) {
        OperatorReply::Tasks(page) => page.tasks.iter().map(|t| t.task_id.to_string()).collect(),
        other => panic!("expected tasks, got {other:?}"),
    }
}

#[test]
fn a_tenant_sees_and_ends_only_its_own() {
    let (mut m, _, offer) = cluster_with(MasterConfig::default(), Some("team-a"));
    launch(&mut m, offer.id, vec![task("a-1", "cpus:1;mem:64")]);
    drain(&mut m);
    let (owner, stranger) = (
        Caller::from_principal("team-a"),
        Caller::from_principal("team-b"),
    );
    assert_eq!(tasks(&mut m, &Caller::Operator), ["a-1"]);
    assert_eq!(tasks(&mut m, &owner), ["a-1"]);
    assert!(tasks(&mut m, &stranger).is_empty());
    let frameworks = |m: &mut Master, c: &Caller| match m.handle_operator_call(
        t(2),
        c,
        OperatorCall::GetFrameworks,
    ) {
        OperatorReply::Frameworks(f) => f.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(frameworks(&mut m, &owner), 1);
    assert_eq!(frameworks(&mut m, &stranger), 0);
    // Another's task reads as unknown, not as forbidden.
    let kill = |task: &str| OperatorCall::KillTask {
        framework_id: None,
        task_id: task.parse().expect("id"),
    };
    assert!(matches!(
        m.handle_operator_call(t(2), &stranger, kill("a-1")),
        OperatorReply::Refused { message } if message.contains("no running task")
    ));
    assert!(drain(&mut m).is_empty(), "nothing was sent to the agent");
    // An operator's call is forbidden to a tenant, and says why.
    assert!(matches!(
        m.handle_operator_call(t(2), &owner, OperatorCall::GetAgents),
        OperatorReply::Forbidden { message } if message.contains("only the operator")
    ));
    // Its own task it may kill: the kill goes to the agent.
    assert_eq!(
        m.handle_operator_call(t(2), &owner, kill("a-1")),
        OperatorReply::Done
    );
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToAgent(AGENT, MasterToAgent::KillTask { .. })]
    ));
    // Events: the stranger sees the leader's election at most.
    let events = |m: &mut Master, c: &Caller| match m.handle_operator_call(
        t(2),
        c,
        OperatorCall::GetEvents {
            after: None,
            limit: 100,
        },
    ) {
        OperatorReply::Events(page) => page.events,
        other => panic!("{other:?}"),
    };
    assert!(events(&mut m, &stranger).is_empty());
    let own = events(&mut m, &owner);
    assert!(
        own.iter()
            .any(|e| matches!(&e.kind, EventKind::FrameworkSubscribed { .. }))
    );
    assert!(
        !own.iter()
            .any(|e| matches!(&e.kind, EventKind::AgentRegistered { .. }))
    );
    assert!(
        events(&mut m, &Caller::Operator)
            .iter()
            .any(|e| matches!(&e.kind, EventKind::AgentRegistered { .. }))
    );
}

#[test]
fn launches_and_ends_are_counted_once_each_and_per_caller() {
    let (mut m, _, offer) = cluster_with(MasterConfig::default(), Some("team-a"));
    launch(
        &mut m,
        offer.id,
        vec![task("a-1", "cpus:1;mem:64"), task("a-2", "cpus:1;mem:64")],
    );
    drain(&mut m);
    let update = |n, id: &str, state| {
        status_update(&offer.framework_id, &TaskId::new(id).expect("id"), n, state)
    };
    m.handle_agent_message(t(2), AGENT, update(1, "a-1", TaskState::Finished));
    // The agent resends the end until it is acknowledged: one end still.
    m.handle_agent_message(t(3), AGENT, update(1, "a-1", TaskState::Finished));
    drain(&mut m);
    let counts = |m: &mut Master, c: &Caller| match m.handle_operator_call(
        t(4),
        c,
        OperatorCall::GetSummary,
    ) {
        OperatorReply::Summary(s) => (s.tasks_launched, s.tasks_ended),
        other => panic!("{other:?}"),
    };
    assert_eq!(counts(&mut m, &Caller::Operator), (2, 1));
    assert_eq!(counts(&mut m, &Caller::from_principal("team-a")), (2, 1));
    assert_eq!(counts(&mut m, &Caller::from_principal("team-b")), (0, 0));
}
