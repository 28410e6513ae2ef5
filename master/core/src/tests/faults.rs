//! The holes a black-box run of real processes found, each as a scenario
//! on the core: a master restart, an agent's return, its removal, kills
//! and teardowns while it is away. The simulator's sweep
//! (`sim/tests/faults.rs`) covers the same ground under seeded faults.

use super::*;

const AGENT2: ConnId = ConnId(21);
const SCHED3: ConnId = ConnId(23);

/// A new master run from what `m` persisted.
fn restart(m: &Master, at: Time) -> Master {
    let config = MasterConfig {
        agent_removal_timeout: Duration::from_secs(60),
        ..MasterConfig::default()
    };
    let mut next = Master::new(config, "m2");
    next.restore(at, m.registry().clone());
    next
}

fn agent_info() -> AgentInfo {
    AgentInfo {
        reservations: Vec::new(),
        hostname: "h".into(),
        resources: "cpus:2;mem:1024".parse().expect("r"),
        attributes: Attributes::default(),
    }
}

/// The agent of [`running_framework`] registers again on `conn` as `id`,
/// reporting `t1` in `state`; returns what the master sent.
fn agent_returns(
    m: &mut Master,
    at: Time,
    conn: ConnId,
    id: AgentId,
    fw: &FrameworkId,
    state: TaskState,
) -> Vec<Transmit> {
    m.handle_connected(at, conn, Channel::Agent);
    let tasks = vec![stoa_proto::RunningTask {
        framework_id: fw.clone(),
        task_id: TaskId::new("t1").expect("id"),
        resources: "cpus:1;mem:128".parse().expect("r"),
        state,
    }];
    m.handle_agent_message(
        at,
        conn,
        AgentToMaster::Register {
            info: agent_info(),
            agent_id: Some(id),
            tasks,
        },
    );
    drain(m)
}

fn agent_id_of(m: &Master) -> AgentId {
    m.registry()
        .agents
        .keys()
        .next()
        .cloned()
        .expect("an admitted agent")
}

fn updates(out: &[Transmit]) -> Vec<(String, TaskState, Option<Reason>)> {
    out.iter()
        .filter_map(|x| match x {
            Transmit::ToScheduler(_, Event::Update { status, .. }) => {
                Some((status.task_id.to_string(), status.state, status.reason))
            }
            _ => None,
        })
        .collect()
}

fn acks_to_agent(out: &[Transmit]) -> usize {
    out.iter()
        .filter(|x| {
            matches!(
                x,
                Transmit::ToAgent(_, MasterToAgent::AcknowledgeUpdate { .. })
            )
        })
        .count()
}

fn kills(out: &[Transmit]) -> usize {
    out.iter()
        .filter(|x| matches!(x, Transmit::ToAgent(_, MasterToAgent::KillTask { .. })))
        .count()
}

#[test]
fn updates_wait_across_a_master_restart_for_their_framework_to_return() {
    let (m, fw, info) = running_framework();
    let agent = agent_id_of(&m);
    let mut m = restart(&m, t(7_000));
    // The agent comes back holding t1, ended, its update unacknowledged.
    let out = agent_returns(&mut m, t(7_100), AGENT, agent, &fw, TaskState::Finished);
    assert!(updates(&out).is_empty(), "nothing is LOST: {out:?}");
    update_from_agent(&mut m, &fw, TaskState::Finished, 9);
    let out = drain(&mut m);
    assert_eq!(
        acks_to_agent(&out),
        0,
        "the master must not acknowledge for a framework that has not come back: {out:?}"
    );
    // The scheduler subscribes again with its id; the agent's retry reaches it.
    let out = subscribe(&mut m, SCHED2, info);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED2, Event::Subscribed { framework_id, .. })] if *framework_id == fw),
        "{out:?}"
    );
    update_from_agent(&mut m, &fw, TaskState::Finished, 9);
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED2, Event::Update { status, ack: Some(UpdateId(9)) })] if status.state == TaskState::Finished),
        "{out:?}"
    );
}

#[test]
fn an_agent_back_from_a_partition_reports_ended_tasks_and_none_is_lost() {
    let (mut m, fw, _) = running_framework();
    let agent = agent_id_of(&m);
    m.handle_disconnected(t(200), AGENT);
    drain(&mut m);
    // t1 ended while the agent was away; it reports it with its end.
    let out = agent_returns(&mut m, t(20_000), AGENT2, agent, &fw, TaskState::Finished);
    assert!(
        !updates(&out).iter().any(|u| u.1 == TaskState::Lost),
        "an ended task is not LOST: {out:?}"
    );
    let status = TaskStatus::new(TaskId::new("t1").expect("id"), TaskState::Finished);
    m.handle_agent_message(
        t(20_001),
        AGENT2,
        AgentToMaster::StatusUpdate {
            framework_id: fw,
            update_id: UpdateId(3),
            status,
        },
    );
    assert_eq!(
        updates(&drain(&mut m)),
        vec![("t1".to_string(), TaskState::Finished, None)]
    );
}

#[test]
fn recovered_tasks_count_against_their_roles_quota_after_a_restart() {
    let (mut m, fw, info) = running_framework();
    let reply = m.handle_operator_call(
        t(1),
        &stoa_proto::operator::Caller::Operator,
        OperatorCall::SetQuota {
            role: "eng".parse().expect("role"),
            guarantee: Resources::new(),
            limit: Some("cpus:1".into()),
        },
    );
    assert_eq!(reply, OperatorReply::Done);
    drain(&mut m);
    let agent = agent_id_of(&m);
    let mut m = restart(&m, t(7_000));
    agent_returns(&mut m, t(7_100), AGENT, agent, &fw, TaskState::Running);
    let eng = m
        .roles()
        .into_iter()
        .find(|r| r.role.as_str() == "eng")
        .expect("role eng");
    assert!(
        eng.allocated.iter().any(|(k, v)| k == "cpus" && *v == 1000),
        "the recovered task is eng's: {eng:?}"
    );
    subscribe(&mut m, SCHED2, info);
    let out = allocate_now(&mut m);
    assert!(
        !out.iter().any(|x| matches!(x, Transmit::ToScheduler(_, Event::Offers { offers }) if offers.iter().any(|o| o.resources.millicpus() > 0))),
        "eng is at its limit of 1 cpu: {out:?}"
    );
}

#[test]
fn only_the_frameworks_principal_may_take_its_id_after_a_restart() {
    let (mut m, _, offer) = cluster_with(MasterConfig::default(), Some("alice"));
    drain(&mut m);
    let fw = offer.framework_id;
    let mut m = restart(&m, t(7_000));
    m.handle_connected(t(7_100), SCHED3, Channel::Scheduler);
    m.handle_authenticated(SCHED3, "mallory".into());
    let mut info = FrameworkInfo::new("f", "eng/ml".parse().expect("role"));
    info.id = Some(fw.clone());
    m.handle_scheduler_call(
        t(7_100),
        SCHED3,
        Call::Subscribe {
            framework: info.clone(),
        },
    );
    let out = drain(&mut m);
    assert!(
        matches!(out.first(), Some(Transmit::ToScheduler(SCHED3, Event::Error { code: Refusal::NotAuthorized, message })) if message.contains("alice")),
        "{out:?}"
    );
    // An id this master never gave out is refused too.
    info.id = Some("made-up".parse().expect("id"));
    m.handle_connected(t(7_200), SCHED2, Channel::Scheduler);
    m.handle_scheduler_call(t(7_200), SCHED2, Call::Subscribe { framework: info });
    let out = drain(&mut m);
    assert!(
        matches!(out.first(), Some(Transmit::ToScheduler(SCHED2, Event::Error { code: Refusal::UnknownFramework, message })) if message.contains("not known")),
        "{out:?}"
    );
}

#[test]
fn unknown_waits_until_every_admitted_agent_is_back_or_removed() {
    let (m, fw, info) = running_framework();
    let agent = agent_id_of(&m);
    let mut m = restart(&m, t(7_000));
    subscribe(&mut m, SCHED2, info);
    m.handle_scheduler_call(
        t(7_050),
        SCHED2,
        Call::Reconcile {
            tasks: vec![
                TaskId::new("t1").expect("id"),
                TaskId::new("t9").expect("id"),
            ],
        },
    );
    assert!(
        updates(&drain(&mut m)).is_empty(),
        "t1 may be running on an agent not back yet"
    );
    let out = agent_returns(&mut m, t(7_100), AGENT, agent, &fw, TaskState::Running);
    let got = updates(&out);
    assert!(
        got.contains(&("t1".into(), TaskState::Running, None)),
        "{got:?}"
    );
    assert!(
        got.contains(&("t9".into(), TaskState::Unknown, Some(Reason::TaskUnknown))),
        "{got:?}"
    );
}

/// An agent that does not register again within the re-registration
/// timeout of a new master is treated as lost: its frameworks hear
/// FAILURE, and a task being reconciled is UNREACHABLE, never UNKNOWN
/// while the agent may still run it (the simulator found a framework
/// relaunching such a task, then hearing it finish on the agent's
/// return); UNKNOWN once the agent is removed.
#[test]
fn past_the_reregister_timeout_an_agent_still_away_is_lost() {
    let (m, _, info) = running_framework();
    let agent = agent_id_of(&m);
    let mut m = restart(&m, t(7_000));
    subscribe(&mut m, SCHED2, info);
    let t1 = TaskId::new("t1").expect("id");
    m.handle_scheduler_call(t(7_050), SCHED2, Call::Reconcile { tasks: vec![t1] });
    assert!(updates(&drain(&mut m)).is_empty(), "waits for the agent");
    // Default timeout: 10 s after the restart.
    let mut out = Vec::new();
    while let Some(due) = m.poll_timeout().filter(|d| *d <= t(17_000)) {
        m.handle_timeout(due);
        out.extend(drain(&mut m));
    }
    assert!(
        out.contains(&Transmit::ToScheduler(
            SCHED2,
            Event::Failure {
                agent_id: agent.clone()
            }
        )),
        "{out:?}"
    );
    assert_eq!(
        updates(&out),
        vec![(
            "t1".into(),
            TaskState::Unreachable,
            Some(Reason::AgentDisconnected)
        )],
        "not UNKNOWN: the agent may still run it"
    );
    // The agent is removed (60 s after the restart, in `restart`): now the
    // master knows t1 runs nowhere it will hear of.
    let mut out = Vec::new();
    while let Some(due) = m.poll_timeout().filter(|d| *d <= t(70_000)) {
        m.handle_timeout(due);
        out.extend(drain(&mut m));
    }
    assert_eq!(
        updates(&out),
        vec![("t1".into(), TaskState::Unknown, Some(Reason::TaskUnknown))]
    );
}

#[test]
fn an_agent_unreachable_past_the_removal_timeout_is_removed_and_starts_anew() {
    let (mut m, fw, _) = running_framework();
    let agent = agent_id_of(&m);
    m.handle_disconnected(t(200), AGENT);
    let out = drain(&mut m);
    assert!(updates(&out).iter().any(|u| u.1 == TaskState::Unreachable));
    let removal = MasterConfig::default().agent_removal_timeout;
    let due = t(200) + removal;
    m.handle_timeout(t(199) + removal);
    assert!(
        !updates(&drain(&mut m))
            .iter()
            .any(|u| u.1 == TaskState::Gone),
        "not before the removal timeout"
    );
    m.handle_timeout(due);
    let out = drain(&mut m);
    assert_eq!(
        updates(&out),
        vec![(
            "t1".to_string(),
            TaskState::Gone,
            Some(Reason::AgentRemoved)
        )]
    );
    assert!(m.registry().removed_agents.contains_key(&agent));
    assert!(m.registry().agents.is_empty());
    assert_eq!(m.summary().agents, 0);
    m.check_books().expect("books balance");
    // The id is free again, and reconciliation says how t1 ended.
    m.handle_scheduler_call(
        due,
        SCHED,
        Call::Reconcile {
            tasks: vec![TaskId::new("t1").expect("id")],
        },
    );
    assert_eq!(
        updates(&drain(&mut m)),
        vec![(
            "t1".to_string(),
            TaskState::Gone,
            Some(Reason::AgentRemoved)
        )]
    );
    // It comes back: a new id, its old tasks not booked.
    let out = agent_returns(&mut m, due, AGENT2, agent.clone(), &fw, TaskState::Running);
    assert!(
        out.iter().any(|x| matches!(x, Transmit::ToAgent(AGENT2, MasterToAgent::Registered { agent_id, .. }) if *agent_id != agent)),
        "{out:?}"
    );
    assert_eq!(m.summary().tasks, 0);
    m.check_books().expect("books balance");
}

#[test]
fn a_kill_while_unreachable_is_carried_out_when_the_agent_returns() {
    let (mut m, fw, _) = running_framework();
    let agent = agent_id_of(&m);
    m.handle_disconnected(t(200), AGENT);
    drain(&mut m);
    m.handle_scheduler_call(
        t(300),
        SCHED,
        Call::Kill {
            task_id: TaskId::new("t1").expect("id"),
        },
    );
    assert_eq!(kills(&drain(&mut m)), 0, "nobody to send it to yet");
    let out = agent_returns(&mut m, t(5_000), AGENT2, agent, &fw, TaskState::Running);
    assert_eq!(kills(&out), 1, "{out:?}");
}

#[test]
fn tasks_of_a_framework_torn_down_meanwhile_are_killed_when_their_agent_returns() {
    let (mut m, fw, _) = running_framework();
    let agent = agent_id_of(&m);
    m.handle_disconnected(t(200), AGENT);
    drain(&mut m);
    m.handle_scheduler_call(t(300), SCHED, Call::Teardown);
    drain(&mut m);
    let out = agent_returns(
        &mut m,
        t(5_000),
        AGENT2,
        agent.clone(),
        &fw,
        TaskState::Running,
    );
    assert_eq!(kills(&out), 1, "{out:?}");
    // Also after a master restart, which forgot the task but not the teardown.
    let mut m = restart(&m, t(6_000));
    let out = agent_returns(&mut m, t(6_100), AGENT, agent, &fw, TaskState::Running);
    assert_eq!(kills(&out), 1, "{out:?}");
}
