use super::*;
use stoa_proto::Refusal;
use stoa_proto::operator::{OperatorCall, OperatorReply};
use stoa_proto::{Artifact, Attributes, Operation, TaskInfo, TaskKind, TaskLimits};

const AGENT: ConnId = ConnId(1);
const SCHED: ConnId = ConnId(2);

fn t(ms: u64) -> Time {
    Time::from_micros(ms * 1000)
}

/// What the master sent, HEARTBEATs to schedulers left out (tests of
/// their own look for them with [`drain_all`]).
fn drain(m: &mut Master) -> Vec<Transmit> {
    drain_all(m)
        .into_iter()
        .filter(|tx| !matches!(tx, Transmit::ToScheduler(_, Event::Heartbeat)))
        .collect()
}

fn drain_all(m: &mut Master) -> Vec<Transmit> {
    let ready = m.ready();
    m.advance(ready)
}

fn task(id: &str, r: &str) -> TaskInfo {
    TaskInfo {
        task_id: TaskId::new(id).expect("id"),
        name: id.into(),
        resources: r.parse().expect("resources"),
        kind: TaskKind::wasm(Artifact::inline(vec![0]), vec![]),
        limits: TaskLimits::default(),
    }
}

/// A master with one agent (cpus:2;mem:1024) and one subscribed framework,
/// after the first allocation; returns the framework's offer.
fn cluster() -> (Master, AgentId, Offer) {
    cluster_with(MasterConfig::default(), None)
}

/// [`cluster`] with `config`, the scheduler authenticated as `principal`.
fn cluster_with(config: MasterConfig, principal: Option<&str>) -> (Master, AgentId, Offer) {
    let mut m = Master::new(config, "m");
    m.handle_connected(t(0), AGENT, Channel::Agent);
    let info = AgentInfo {
        reservations: Vec::new(),
        hostname: "h1".into(),
        resources: "cpus:2;mem:1024".parse().expect("r"),
        attributes: Attributes::default(),
    };
    m.handle_agent_message(
        t(0),
        AGENT,
        AgentToMaster::Register {
            info,
            agent_id: None,
            tasks: vec![],
        },
    );
    let agent_id = match drain(&mut m).as_slice() {
        [Transmit::ToAgent(AGENT, MasterToAgent::Registered { agent_id, .. })] => agent_id.clone(),
        other => panic!("expected Registered, got {other:?}"),
    };
    m.handle_connected(t(0), SCHED, Channel::Scheduler);
    if let Some(principal) = principal {
        m.handle_authenticated(SCHED, principal.into());
    }
    let framework = FrameworkInfo::new("f", "eng/ml".parse().expect("role"));
    m.handle_scheduler_call(t(0), SCHED, Call::Subscribe { framework });
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToScheduler(SCHED, Event::Subscribed { .. })]
    ));
    let due = m.poll_timeout().expect("allocation due");
    m.handle_timeout(due);
    let offer = match drain(&mut m).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Offers { offers })] if offers.len() == 1 => {
            offers[0].clone()
        }
        other => panic!("expected one offer, got {other:?}"),
    };
    assert_eq!(offer.resources.to_string(), "cpus:2;mem:1024");
    (m, agent_id, offer)
}

fn launch(m: &mut Master, offer: OfferId, tasks: Vec<TaskInfo>) {
    m.handle_scheduler_call(
        t(1),
        SCHED,
        Call::Accept {
            offer_ids: vec![offer],
            operations: vec![Operation::Launch { tasks }],
            refuse_ms: None,
        },
    );
}

#[test]
fn accept_launches_and_terminal_update_frees_resources() {
    let (mut m, agent_id, offer) = cluster();
    launch(&mut m, offer.id, vec![task("t1", "cpus:1;mem:512")]);
    let out = drain(&mut m);
    assert!(
        matches!(
            out.as_slice(),
            [Transmit::ToAgent(AGENT, MasterToAgent::RunTask { .. })]
        ),
        "{out:?}"
    );
    // The rest of the agent is filtered from this framework for 5 s.
    m.handle_timeout(t(2));
    assert!(drain(&mut m).is_empty());
    m.handle_agent_message(t(4000), AGENT, AgentToMaster::Heartbeat);
    // The filter expires, and the allocation it makes due runs at once.
    m.handle_timeout(t(5002));
    let out = drain(&mut m);
    let offers = match out.as_slice() {
        [Transmit::ToScheduler(_, Event::Offers { offers })] => offers.clone(),
        other => panic!("expected offers after the filter expired, got {other:?}"),
    };
    assert_eq!(offers[0].resources.to_string(), "cpus:1;mem:512");

    let status = TaskStatus::new(TaskId::new("t1").expect("id"), TaskState::Finished);
    m.handle_agent_message(
        t(5003),
        AGENT,
        AgentToMaster::StatusUpdate {
            framework_id: offers[0].framework_id.clone(),
            update_id: UpdateId(7),
            status,
        },
    );
    let out = drain(&mut m);
    assert!(
        matches!(
            out.as_slice(),
            [Transmit::ToScheduler(
                _,
                Event::Update {
                    ack: Some(UpdateId(7)),
                    ..
                }
            )]
        ),
        "{out:?}"
    );
    m.handle_scheduler_call(
        t(5004),
        SCHED,
        Call::Acknowledge {
            agent_id,
            task_id: TaskId::new("t1").expect("id"),
            update_id: UpdateId(7),
        },
    );
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToAgent(
            AGENT,
            MasterToAgent::AcknowledgeUpdate { .. }
        )]
    ));
    assert_eq!(m.summary().tasks, 0);
    // The freed half returns to the framework once the outstanding offer is declined.
    m.handle_scheduler_call(
        t(5005),
        SCHED,
        Call::Decline {
            offer_ids: vec![offers[0].id],
            refuse_ms: Some(0),
        },
    );
    m.handle_timeout(t(5010));
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(_, Event::Offers { offers })] if offers[0].resources.to_string() == "cpus:2;mem:1024"),
        "{out:?}"
    );
}

#[test]
fn unknown_offer_drops_the_tasks() {
    let (mut m, _, _) = cluster();
    launch(&mut m, OfferId(999), vec![task("t1", "cpus:1;mem:1")]);
    match drain(&mut m).as_slice() {
        [Transmit::ToScheduler(_, Event::Update { status, ack: None })] => {
            assert_eq!(status.state, TaskState::Dropped);
            assert_eq!(status.reason, Some(Reason::InvalidOffers));
        }
        other => panic!("expected TASK_DROPPED, got {other:?}"),
    }
}

#[test]
fn task_beyond_the_offer_is_an_error_and_siblings_still_launch() {
    let (mut m, _, offer) = cluster();
    launch(
        &mut m,
        offer.id,
        vec![
            task("big", "cpus:3;mem:1"),
            task("ok", "cpus:1;mem:1"),
            task("ok", "cpus:0.1;mem:1"),
        ],
    );
    let out = drain(&mut m);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        matches!(&out[0], Transmit::ToScheduler(_, Event::Update { status, .. }) if status.state == TaskState::Error && status.reason == Some(Reason::TaskInvalid))
    );
    assert!(matches!(
        &out[1],
        Transmit::ToAgent(_, MasterToAgent::RunTask { .. })
    ));
    assert!(
        matches!(&out[2], Transmit::ToScheduler(_, Event::Update { status, .. }) if status.message.contains("already in use"))
    );
}

#[test]
fn offers_are_not_reused() {
    let (mut m, _, offer) = cluster();
    launch(&mut m, offer.id, vec![task("a", "cpus:1;mem:1")]);
    drain(&mut m);
    launch(&mut m, offer.id, vec![task("b", "cpus:1;mem:1")]);
    assert!(
        matches!(drain(&mut m).as_slice(), [Transmit::ToScheduler(_, Event::Update { status, .. })] if status.state == TaskState::Dropped)
    );
}

#[test]
fn calls_before_subscribe_are_refused() {
    let mut m = Master::new(MasterConfig::default(), "m");
    m.handle_connected(t(0), SCHED, Channel::Scheduler);
    m.handle_scheduler_call(t(0), SCHED, Call::Teardown);
    let out = drain(&mut m);
    assert!(
        matches!(
            out.as_slice(),
            [
                Transmit::ToScheduler(
                    _,
                    Event::Error {
                        code: Refusal::OutOfOrder,
                        ..
                    }
                ),
                Transmit::Close(..)
            ]
        ),
        "{out:?}"
    );
}

#[test]
fn silent_agent_becomes_unreachable_and_its_offers_are_rescinded() {
    let (mut m, _, offer) = cluster();
    m.handle_timeout(t(5000));
    let out = drain(&mut m);
    assert!(
        out.contains(&Transmit::ToScheduler(
            SCHED,
            Event::Rescind { offer_id: offer.id }
        )),
        "{out:?}"
    );
    assert!(out.iter().any(|x| matches!(x, Transmit::Close(AGENT, _))));
    assert_eq!(m.summary().connected_agents, 0);
}

#[test]
fn scheduler_disconnect_without_failover_kills_its_tasks() {
    let (mut m, _, offer) = cluster();
    launch(&mut m, offer.id, vec![task("a", "cpus:1;mem:1")]);
    drain(&mut m);
    m.handle_disconnected(t(2), SCHED);
    let out = drain(&mut m);
    assert!(
        out.iter()
            .any(|x| matches!(x, Transmit::ToAgent(AGENT, MasterToAgent::KillTask { .. }))),
        "{out:?}"
    );
    assert_eq!(m.summary().frameworks, 0);
}

#[test]
fn kill_reaches_the_agent_and_unknown_tasks_are_reported_unknown() {
    let (mut m, _, offer) = cluster();
    launch(&mut m, offer.id, vec![task("a", "cpus:1;mem:1")]);
    drain(&mut m);
    m.handle_scheduler_call(
        t(2),
        SCHED,
        Call::Kill {
            task_id: TaskId::new("a").expect("id"),
        },
    );
    assert!(
        matches!(drain(&mut m).as_slice(), [Transmit::ToAgent(AGENT, MasterToAgent::KillTask { task_id, .. })] if task_id.as_str() == "a")
    );
    m.handle_scheduler_call(
        t(3),
        SCHED,
        Call::Kill {
            task_id: TaskId::new("nope").expect("id"),
        },
    );
    match drain(&mut m).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Update { status, ack: None })] => {
            assert_eq!(
                (status.state, status.reason),
                (TaskState::Unknown, Some(Reason::TaskUnknown))
            );
        }
        other => panic!("expected TASK_UNKNOWN, got {other:?}"),
    }
}

#[test]
fn a_returning_agent_brings_its_tasks_back_and_forgotten_ones_are_lost() {
    let (mut m, agent_id, offer) = cluster();
    launch(
        &mut m,
        offer.id,
        vec![
            task("kept", "cpus:0.5;mem:1"),
            task("forgotten", "cpus:0.5;mem:1"),
        ],
    );
    drain(&mut m);
    m.handle_disconnected(t(2), AGENT);
    let out = drain(&mut m);
    let unreachable = out
        .iter()
        .filter(|x| matches!(x, Transmit::ToScheduler(_, Event::Update { status, .. }) if status.state == TaskState::Unreachable))
        .count();
    assert_eq!(unreachable, 2, "{out:?}");

    let again = ConnId(9);
    m.handle_connected(t(3), again, Channel::Agent);
    let info = AgentInfo {
        reservations: Vec::new(),
        hostname: "h1".into(),
        resources: "cpus:2;mem:1024".parse().expect("r"),
        attributes: Attributes::default(),
    };
    let framework_id = offer.framework_id.clone();
    let tasks = vec![stoa_proto::RunningTask {
        framework_id,
        task_id: TaskId::new("kept").expect("id"),
        resources: "cpus:0.5;mem:1".parse().expect("r"),
        state: TaskState::Running,
    }];
    m.handle_agent_message(
        t(3),
        again,
        AgentToMaster::Register {
            info,
            agent_id: Some(agent_id),
            tasks,
        },
    );
    let states: Vec<(String, TaskState, Option<Reason>)> = drain(&mut m)
        .into_iter()
        .filter_map(|x| match x {
            Transmit::ToScheduler(_, Event::Update { status, .. }) => {
                Some((status.task_id.to_string(), status.state, status.reason))
            }
            _ => None,
        })
        .collect();
    assert!(
        states.contains(&("kept".into(), TaskState::Running, None)),
        "{states:?}"
    );
    assert!(
        states.contains(&(
            "forgotten".into(),
            TaskState::Lost,
            Some(Reason::AgentRestarted)
        )),
        "{states:?}"
    );
    assert_eq!(m.summary().tasks, 1);
    assert_eq!(m.summary().connected_agents, 1);
}

/// Connects and registers an agent on `AGENT` at time 0.
fn register(
    m: &mut Master,
    resources: Resources,
    reservations: Vec<(stoa_proto::Role, Resources)>,
) {
    m.handle_connected(t(0), AGENT, Channel::Agent);
    let info = AgentInfo {
        reservations,
        hostname: "h".into(),
        resources,
        attributes: Attributes::default(),
    };
    m.handle_agent_message(
        t(0),
        AGENT,
        AgentToMaster::Register {
            info,
            agent_id: None,
            tasks: vec![],
        },
    );
}

/// Connects a scheduler on `conn` and subscribes it with `info`.
fn subscribe(m: &mut Master, conn: ConnId, info: FrameworkInfo) -> Vec<Transmit> {
    m.handle_connected(t(0), conn, Channel::Scheduler);
    m.handle_scheduler_call(t(0), conn, Call::Subscribe { framework: info });
    drain(m)
}

/// Runs the allocation that is due and returns what it sent.
fn allocate_now(m: &mut Master) -> Vec<Transmit> {
    if let Some(due) = m.poll_timeout() {
        m.handle_timeout(due);
    }
    drain(m)
}

#[test]
fn suppress_stops_offers_and_revive_brings_them_back_at_once() {
    let (mut m, _, offer) = cluster();
    m.handle_scheduler_call(t(1), SCHED, Call::Suppress);
    m.handle_scheduler_call(
        t(1),
        SCHED,
        Call::Decline {
            offer_ids: vec![offer.id],
            refuse_ms: Some(60_000),
        },
    );
    assert!(allocate_now(&mut m).is_empty());
    m.handle_scheduler_call(t(2), SCHED, Call::Revive);
    // Revive also cleared the 60 s filter.
    assert!(matches!(
        allocate_now(&mut m).as_slice(),
        [Transmit::ToScheduler(_, Event::Offers { .. })]
    ));
}

/// Agents send a task's updates without waiting for acknowledgements, so a
/// retry can bring RUNNING again after the task's end: the master
/// acknowledges it itself, and the scheduler never sees the task run again.
/// An agent's update `n` of `task` of `fw`.
fn status_update(fw: &FrameworkId, task: &TaskId, n: u64, state: TaskState) -> AgentToMaster {
    AgentToMaster::StatusUpdate {
        framework_id: fw.clone(),
        update_id: UpdateId(n),
        status: TaskStatus::new(task.clone(), state),
    }
}

/// The states of the updates relayed to the scheduler.
fn relayed(out: &[Transmit]) -> Vec<TaskState> {
    out.iter()
        .filter_map(|x| match x {
            Transmit::ToScheduler(SCHED, Event::Update { status, .. }) => Some(status.state),
            _ => None,
        })
        .collect()
}

#[test]
fn an_update_older_than_the_tasks_end_is_acknowledged_not_relayed() {
    let (mut m, _, offer) = cluster();
    launch(&mut m, offer.id, vec![task("t1", "cpus:1;mem:512")]);
    drain(&mut m);
    let tid = TaskId::new("t1").expect("id");
    let update = |n, state| status_update(&offer.framework_id, &tid, n, state);
    m.handle_agent_message(t(2), AGENT, update(1, TaskState::Running));
    m.handle_agent_message(t(2), AGENT, update(2, TaskState::Finished));
    assert_eq!(
        relayed(&drain(&mut m)),
        vec![TaskState::Running, TaskState::Finished]
    );
    // The agent resends both: RUNNING is answered here, the end relayed
    // again (the scheduler has not acknowledged it).
    m.handle_agent_message(t(2003), AGENT, update(1, TaskState::Running));
    m.handle_agent_message(t(2003), AGENT, update(2, TaskState::Finished));
    let out = drain(&mut m);
    assert_eq!(relayed(&out), vec![TaskState::Finished], "{out:?}");
    assert!(
        out.contains(&Transmit::ToAgent(
            AGENT,
            MasterToAgent::AcknowledgeUpdate {
                task_id: tid.clone(),
                update_id: UpdateId(1),
            }
        )),
        "{out:?}"
    );
}

#[test]
fn unanswered_offers_are_rescinded_after_the_offer_timeout() {
    let config = MasterConfig {
        offer_timeout: Some(Duration::from_secs(10)),
        // Scheduler heartbeats would come first; this test is not about them.
        heartbeat_interval: Duration::from_secs(60),
        ..MasterConfig::default()
    };
    let mut m = Master::new(config, "m");
    register(&mut m, "cpus:1;mem:64".parse().expect("r"), Vec::new());
    subscribe(
        &mut m,
        SCHED,
        FrameworkInfo::new("f", "r".parse().expect("role")),
    );
    let offer_id = match allocate_now(&mut m).as_slice() {
        [Transmit::ToScheduler(_, Event::Offers { offers })] => offers[0].id,
        other => panic!("expected an offer, got {other:?}"),
    };
    m.handle_agent_message(t(9_000), AGENT, AgentToMaster::Heartbeat);
    // The heartbeat timer set at registration wakes first, finds the
    // agent heard from since, and is set again from then.
    assert_eq!(m.poll_timeout(), Some(t(5_000)));
    m.handle_timeout(t(5_000));
    assert_eq!(drain(&mut m), Vec::new());
    assert_eq!(m.poll_timeout(), Some(t(10_000)));
    m.handle_timeout(t(10_000));
    let out = drain(&mut m);
    assert!(
        out.contains(&Transmit::ToScheduler(SCHED, Event::Rescind { offer_id })),
        "{out:?}"
    );
}

#[test]
fn a_bad_constraint_is_refused_at_subscription() {
    let mut m = Master::new(MasterConfig::default(), "m");
    let mut info = FrameworkInfo::new("f", "r".parse().expect("role"));
    info.constraints = vec![stoa_proto::OfferConstraint::Matches {
        attribute: "zone".into(),
        pattern: "eu-(".into(),
    }];
    let out = subscribe(&mut m, SCHED, info);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(_, Event::Error { code: Refusal::Invalid, message }), Transmit::Close(..)] if message.contains("regular expression")),
        "{out:?}"
    );
    assert_eq!(m.summary().frameworks, 0);
}

#[test]
fn reserved_resources_are_offered_to_their_role_and_used_by_its_tasks() {
    let mut m = Master::new(MasterConfig::default(), "m");
    let (resources, reservations) =
        stoa_proto::resources::parse_with_reservations("cpus:1;mem:256;cpus(eng):2;mem(eng):512")
            .expect("parse");
    register(&mut m, resources, reservations);
    subscribe(
        &mut m,
        SCHED,
        FrameworkInfo::new("ml", "eng/ml".parse().expect("role")),
    );
    let offer = match allocate_now(&mut m).as_slice() {
        [Transmit::ToScheduler(_, Event::Offers { offers })] => offers[0].clone(),
        other => panic!("expected an offer, got {other:?}"),
    };
    assert_eq!(offer.resources.to_string(), "cpus:3;mem:768");
    assert_eq!(
        offer.reservations,
        vec![(
            "eng".parse().expect("role"),
            "cpus:2;mem:512".parse().expect("r")
        )]
    );
    // A task fitting the reservation takes it from there; the unreserved
    // rest goes back with the default filter.
    launch(&mut m, offer.id, vec![task("big", "cpus:2;mem:512")]);
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToAgent(_, MasterToAgent::RunTask { .. })]
    ));
    // Another role never sees the reservation.
    subscribe(
        &mut m,
        ConnId(3),
        FrameworkInfo::new("ops", "ops".parse().expect("role")),
    );
    let out = allocate_now(&mut m);
    match out.as_slice() {
        [Transmit::ToScheduler(ConnId(3), Event::Offers { offers })] => {
            assert_eq!(offers[0].resources.to_string(), "cpus:1;mem:256");
            assert!(offers[0].reservations.is_empty());
        }
        other => panic!("expected ops to get the unreserved rest, got {other:?}"),
    }
}

#[test]
fn reserve_and_unreserve_operations_change_what_other_roles_see_and_are_recorded() {
    let (mut m, agent_id, offer) = cluster();
    let eng: stoa_proto::Role = "eng".parse().expect("role");
    let half: Resources = "cpus:1;mem:512".parse().expect("r");
    // The framework is in eng/ml: it may reserve for eng, not for ops.
    m.handle_scheduler_call(
        t(1),
        SCHED,
        Call::Accept {
            offer_ids: vec![offer.id],
            operations: vec![
                stoa_proto::Operation::Reserve {
                    role: "ops".parse().expect("role"),
                    resources: half.clone(),
                },
                stoa_proto::Operation::Reserve {
                    role: eng.clone(),
                    resources: half.clone(),
                },
            ],
            refuse_ms: Some(0),
        },
    );
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(_, Event::Error { code: Refusal::OperationRefused, message })] if message.contains("RESERVE refused")),
        "{out:?}"
    );
    let saved = m.registry().clone();
    assert_eq!(saved.reservations[&agent_id][&eng], half);
    // Another role now sees only the unreserved half.
    subscribe(
        &mut m,
        ConnId(3),
        FrameworkInfo::new("ops", "ops".parse().expect("role")),
    );
    m.handle_scheduler_call(t(2), SCHED, Call::Suppress);
    let offers: Vec<Offer> = allocate_now(&mut m)
        .into_iter()
        .flat_map(|x| match x {
            Transmit::ToScheduler(_, Event::Offers { offers }) => offers,
            _ => Vec::new(),
        })
        .collect();
    let to_ops: Vec<&Offer> = offers
        .iter()
        .filter(|o| o.reservations.is_empty())
        .collect();
    assert_eq!(to_ops.len(), 1, "{offers:?}");
    assert_eq!(to_ops[0].resources, half);
    // UNRESERVE needs the reserved resources in the offer: eng/ml gets them back.
    m.handle_scheduler_call(t(3), SCHED, Call::Revive);
    let mine = allocate_now(&mut m)
        .into_iter()
        .find_map(|x| match x {
            Transmit::ToScheduler(SCHED, Event::Offers { offers }) => offers.into_iter().next(),
            _ => None,
        })
        .expect("an offer of the reservation");
    assert_eq!(mine.reservations, vec![(eng.clone(), half.clone())]);
    m.handle_scheduler_call(
        t(4),
        SCHED,
        Call::Accept {
            offer_ids: vec![mine.id],
            operations: vec![stoa_proto::Operation::Unreserve {
                role: eng,
                resources: half,
            }],
            refuse_ms: None,
        },
    );
    drain(&mut m);
    assert!(m.registry().reservations.is_empty());
}

#[test]
fn a_role_below_its_guarantee_gets_resources_by_preemption() {
    // "batch" holds the whole agent with a task; then prod gets a guarantee.
    let mut m = Master::new(MasterConfig::default(), "m");
    register(&mut m, "cpus:2;mem:1024".parse().expect("r"), Vec::new());
    // A guarantee elsewhere makes batch's resources revocable.
    let reply = m.handle_operator_call(
        t(0),
        &stoa_proto::operator::Caller::Operator,
        OperatorCall::SetQuota {
            role: "tiny".parse().expect("role"),
            guarantee: "cpus:0.001".parse().expect("r"),
            limit: None,
        },
    );
    assert_eq!(reply, OperatorReply::Done);
    subscribe(
        &mut m,
        SCHED,
        FrameworkInfo::new("batch", "batch".parse().expect("role")),
    );
    let offer = match allocate_now(&mut m).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Offers { offers })] => offers[0].clone(),
        other => panic!("expected an offer, got {other:?}"),
    };
    assert!(offer.revocable);
    let framework_id = offer.framework_id.clone();
    launch(
        &mut m,
        offer.id,
        vec![task("hog", &offer.resources.to_string())],
    );
    drain(&mut m);

    let reply = m.handle_operator_call(
        t(2),
        &stoa_proto::operator::Caller::Operator,
        OperatorCall::SetQuota {
            role: "prod".parse().expect("role"),
            guarantee: "cpus:1;mem:256".parse().expect("r"),
            limit: None,
        },
    );
    assert_eq!(reply, OperatorReply::Done);
    subscribe(
        &mut m,
        ConnId(3),
        FrameworkInfo::new("web", "prod".parse().expect("role")),
    );
    let out = allocate_now(&mut m);
    assert!(
        out.iter().any(|x| matches!(x, Transmit::ToAgent(AGENT, MasterToAgent::KillTask { task_id, .. }) if task_id.as_str() == "hog")),
        "{out:?}"
    );
    // The agent reports the kill; batch learns why.
    let status = TaskStatus::new(TaskId::new("hog").expect("id"), TaskState::Killed)
        .because(Reason::KilledByScheduler, "killed");
    m.handle_agent_message(
        t(3),
        AGENT,
        AgentToMaster::StatusUpdate {
            framework_id,
            update_id: UpdateId(1),
            status,
        },
    );
    let out = allocate_now(&mut m);
    assert!(
        out.iter().any(|x| matches!(x, Transmit::ToScheduler(SCHED, Event::Update { status, .. }) if status.reason == Some(Reason::Preempted))),
        "{out:?}"
    );
    // And prod is offered what it is guaranteed.
    assert!(
        out.iter().any(|x| matches!(x, Transmit::ToScheduler(ConnId(3), Event::Offers { offers }) if !offers[0].revocable && offers[0].resources.millicpus() >= 1000)),
        "{out:?}"
    );
}

fn native(id: &str) -> TaskInfo {
    TaskInfo {
        kind: TaskKind::Command(stoa_proto::CommandTask::new(["true"])),
        ..task(id, "cpus:0.5;mem:64")
    }
}

fn ops_may_launch_native() -> MasterConfig {
    MasterConfig {
        acls: serde_json::from_str(r#"{"launch_native": [{"principals": ["ops"]}]}"#)
            .expect("valid acls"),
        ..MasterConfig::default()
    }
}

#[test]
fn native_tasks_need_the_acl_and_wasm_tasks_do_not() {
    // A tenant's native task is refused; nothing reaches the agent, and its
    // wasm sibling in the same ACCEPT still launches.
    let (mut m, _, offer) = cluster_with(ops_may_launch_native(), Some("tenant"));
    launch(
        &mut m,
        offer.id,
        vec![native("host"), task("wasm", "cpus:0.5;mem:64")],
    );
    let out = drain(&mut m);
    let refused = out.iter().find_map(|tx| match tx {
        Transmit::ToScheduler(SCHED, Event::Update { status, .. }) => Some(status.clone()),
        _ => None,
    });
    let refused = refused.expect("an update for the native task");
    assert_eq!(refused.task_id.as_str(), "host");
    assert_eq!(refused.state, TaskState::Error);
    assert_eq!(refused.reason, Some(Reason::NotAuthorized));
    assert!(refused.message.contains("tenant"), "{}", refused.message);
    let run: Vec<&str> = out
        .iter()
        .filter_map(|tx| match tx {
            Transmit::ToAgent(_, MasterToAgent::RunTask { task, .. }) => {
                Some(task.task_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(run, ["wasm"]);

    // The principal the ACL names may.
    let (mut m, _, offer) = cluster_with(ops_may_launch_native(), Some("ops"));
    launch(&mut m, offer.id, vec![native("host")]);
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToAgent(AGENT, MasterToAgent::RunTask { .. })]
    ));
}

#[test]
fn a_framework_cannot_claim_someone_elses_principal() {
    let mut m = Master::new(ops_may_launch_native(), "m");
    m.handle_connected(t(0), SCHED, Channel::Scheduler);
    m.handle_authenticated(SCHED, "tenant".into());
    let mut framework = FrameworkInfo::new("f", "eng".parse().expect("role"));
    framework.principal = Some("ops".into());
    m.handle_scheduler_call(t(0), SCHED, Call::Subscribe { framework });
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED, Event::Error { code: Refusal::NotAuthorized, message }), Transmit::Close(SCHED, _)] if message.contains("certificate")),
        "{out:?}"
    );
}

const SCHED2: ConnId = ConnId(3);

/// An agent, a framework with a 10 s failover timeout on `SCHED`, and its
/// task `t1` running; returns the framework's id and info.
fn running_framework() -> (Master, FrameworkId, FrameworkInfo) {
    let mut m = Master::new(MasterConfig::default(), "m");
    register(&mut m, "cpus:2;mem:1024".parse().expect("r"), Vec::new());
    drain(&mut m);
    let mut info = FrameworkInfo::new("f", "eng".parse().expect("role"));
    info.failover_timeout_ms = 10_000;
    let id = match subscribe(&mut m, SCHED, info.clone()).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Subscribed { framework_id, .. })] => {
            framework_id.clone()
        }
        other => panic!("expected SUBSCRIBED, got {other:?}"),
    };
    let offer = match allocate_now(&mut m).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Offers { offers })] => offers[0].id,
        other => panic!("expected an offer, got {other:?}"),
    };
    launch(&mut m, offer, vec![task("t1", "cpus:1;mem:128")]);
    drain(&mut m);
    info.id = Some(id.clone());
    (m, id, info)
}

fn update_from_agent(m: &mut Master, fw: &FrameworkId, state: TaskState, update: u64) {
    let status = TaskStatus::new(TaskId::new("t1").expect("id"), state);
    m.handle_agent_message(
        t(100),
        AGENT,
        AgentToMaster::StatusUpdate {
            framework_id: fw.clone(),
            update_id: UpdateId(update),
            status,
        },
    );
}

#[test]
fn a_failed_over_scheduler_keeps_the_framework_and_gets_its_updates() {
    let (mut m, id, info) = running_framework();
    m.handle_disconnected(t(50), SCHED);
    // While the scheduler is away its task keeps running: no kill.
    let out = drain(&mut m);
    assert!(
        !out.iter()
            .any(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::KillTask { .. }))),
        "{out:?}"
    );
    // An update sent meanwhile reaches nobody (the agent will resend it).
    update_from_agent(&mut m, &id, TaskState::Running, 1);
    assert!(drain(&mut m).is_empty());

    m.handle_connected(t(200), SCHED2, Channel::Scheduler);
    m.handle_scheduler_call(t(200), SCHED2, Call::Subscribe { framework: info });
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED2, Event::Subscribed { framework_id, .. })] if *framework_id == id),
        "{out:?}"
    );
    // The agent's retry now reaches the new scheduler, to be acknowledged.
    update_from_agent(&mut m, &id, TaskState::Running, 1);
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToScheduler(
            SCHED2,
            Event::Update {
                ack: Some(UpdateId(1)),
                ..
            }
        )]
    ));
    // Past the old failover deadline nothing happens: the framework is back.
    m.handle_timeout(t(20_000));
    assert!(
        !drain(&mut m)
            .iter()
            .any(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::KillTask { .. })))
    );
}

#[test]
fn a_second_scheduler_takes_over_and_the_first_gets_error() {
    let (mut m, id, info) = running_framework();
    m.handle_connected(t(100), SCHED2, Channel::Scheduler);
    m.handle_scheduler_call(t(100), SCHED2, Call::Subscribe { framework: info });
    let out = drain(&mut m);
    assert!(
        out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(SCHED, Event::Error { code: Refusal::FailedOver, message }) if message.contains("failed over"))),
        "{out:?}"
    );
    assert!(out.iter().any(|tx| matches!(tx, Transmit::Close(SCHED, _))));
    assert!(out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(SCHED2, Event::Subscribed { framework_id, .. }) if *framework_id == id)));
    // The old connection's end changes nothing for the framework.
    m.handle_disconnected(t(150), SCHED);
    update_from_agent(&mut m, &id, TaskState::Running, 2);
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToScheduler(SCHED2, Event::Update { .. })]
    ));
}

#[test]
fn past_the_failover_timeout_tasks_are_killed_and_the_id_is_retired() {
    let (mut m, id, info) = running_framework();
    m.handle_disconnected(t(50), SCHED);
    drain(&mut m);
    m.handle_agent_message(t(9_000), AGENT, AgentToMaster::Heartbeat);
    m.handle_timeout(t(10_049));
    assert!(
        !drain(&mut m)
            .iter()
            .any(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::KillTask { .. })))
    );
    m.handle_timeout(t(10_050));
    let out = drain(&mut m);
    assert!(
        out.iter().any(|tx| matches!(tx, Transmit::ToAgent(AGENT, MasterToAgent::KillTask { framework_id, .. }) if *framework_id == id)),
        "{out:?}"
    );
    m.handle_connected(t(11_000), SCHED2, Channel::Scheduler);
    m.handle_scheduler_call(t(11_000), SCHED2, Call::Subscribe { framework: info });
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED2, Event::Error { code: Refusal::TornDown, message }), Transmit::Close(SCHED2, _)] if message.contains("torn down")),
        "{out:?}"
    );
}

#[test]
fn another_principal_cannot_take_a_framework_over() {
    let mut m = Master::new(MasterConfig::default(), "m");
    m.handle_connected(t(0), SCHED, Channel::Scheduler);
    m.handle_authenticated(SCHED, "alice".into());
    m.handle_scheduler_call(
        t(0),
        SCHED,
        Call::Subscribe {
            framework: FrameworkInfo::new("f", "eng".parse().expect("role")),
        },
    );
    let id = match drain(&mut m).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Subscribed { framework_id, .. })] => {
            framework_id.clone()
        }
        other => panic!("{other:?}"),
    };
    m.handle_connected(t(1), SCHED2, Channel::Scheduler);
    m.handle_authenticated(SCHED2, "mallory".into());
    let mut info = FrameworkInfo::new("f", "eng".parse().expect("role"));
    info.id = Some(id);
    m.handle_scheduler_call(t(1), SCHED2, Call::Subscribe { framework: info });
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED2, Event::Error { code: Refusal::NotAuthorized, message }), Transmit::Close(SCHED2, _)] if message.contains("alice")),
        "{out:?}"
    );
}

#[test]
fn reconciliation_reports_known_tasks_and_unknown_ones() {
    let (mut m, _, _) = running_framework();
    // Implicit: every task the master knows for the framework.
    m.handle_scheduler_call(t(1), SCHED, Call::Reconcile { tasks: vec![] });
    let out = drain(&mut m);
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED, Event::Update { status, ack: None })] if status.task_id.as_str() == "t1" && status.state == TaskState::Staging),
        "{out:?}"
    );
    // Explicit: the named tasks, unknown ones as TASK_UNKNOWN.
    let tasks = vec![
        TaskId::new("t1").expect("id"),
        TaskId::new("ghost").expect("id"),
    ];
    m.handle_scheduler_call(t(2), SCHED, Call::Reconcile { tasks });
    let states: Vec<(String, TaskState, Option<Reason>)> = drain(&mut m)
        .into_iter()
        .filter_map(|tx| match tx {
            Transmit::ToScheduler(_, Event::Update { status, .. }) => Some((
                status.task_id.as_str().to_string(),
                status.state,
                status.reason,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("t1".into(), TaskState::Staging, None),
            (
                "ghost".into(),
                TaskState::Unknown,
                Some(Reason::TaskUnknown)
            ),
        ]
    );
}

#[test]
fn a_launch_group_starts_all_of_its_tasks_or_none() {
    let (mut m, _, offer) = cluster();
    let group = vec![
        task("rank0", "cpus:0.5;mem:128"),
        task("rank1", "cpus:0.5;mem:128"),
        task("rank2", "cpus:4;mem:128"),
    ];
    m.handle_scheduler_call(
        t(1),
        SCHED,
        Call::Accept {
            offer_ids: vec![offer.id],
            operations: vec![Operation::LaunchGroup { tasks: group }],
            refuse_ms: Some(0),
        },
    );
    let out = drain(&mut m);
    assert!(
        !out.iter()
            .any(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::RunTask { .. }))),
        "{out:?}"
    );
    let errors: Vec<(String, String)> = out
        .iter()
        .filter_map(|tx| match tx {
            Transmit::ToScheduler(_, Event::Update { status, .. }) => {
                assert_eq!(status.state, TaskState::Error);
                Some((status.task_id.as_str().into(), status.message.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 3);
    assert!(
        errors[0].1.contains("its group was refused: task rank2"),
        "{errors:?}"
    );

    // The same resources take a group that fits, whole.
    let offer = match allocate_now(&mut m).as_slice() {
        [Transmit::ToScheduler(_, Event::Offers { offers })] => offers[0].id,
        other => panic!("expected the offer back, got {other:?}"),
    };
    m.handle_scheduler_call(
        t(2),
        SCHED,
        Call::Accept {
            offer_ids: vec![offer],
            operations: vec![Operation::LaunchGroup {
                tasks: vec![
                    task("rank0", "cpus:1;mem:128"),
                    task("rank1", "cpus:1;mem:128"),
                ],
            }],
            refuse_ms: None,
        },
    );
    let launched = drain(&mut m)
        .iter()
        .filter(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::RunTask { .. })))
        .count();
    assert_eq!(launched, 2);
}

#[test]
fn schedulers_get_heartbeats_and_failures_of_their_agents() {
    let (mut m, _, _) = running_framework();
    drain_all(&mut m);
    m.handle_agent_message(t(900), AGENT, AgentToMaster::Heartbeat);
    m.handle_timeout(t(1_000));
    assert!(
        drain_all(&mut m).contains(&Transmit::ToScheduler(SCHED, Event::Heartbeat)),
        "no HEARTBEAT at the interval"
    );
    m.handle_disconnected(t(1_100), AGENT);
    let out = drain(&mut m);
    assert!(
        out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(SCHED, Event::Failure { agent_id }) if agent_id.as_str().ends_with("a1"))),
        "{out:?}"
    );
}

#[test]
fn update_framework_changes_what_it_may_and_refuses_a_new_role() {
    let (mut m, id, mut info) = running_framework();
    info.failover_timeout_ms = 0;
    m.handle_scheduler_call(
        t(1),
        SCHED,
        Call::UpdateFramework {
            framework: info.clone(),
        },
    );
    assert!(drain(&mut m).is_empty());
    // Failover timeout now 0: the scheduler's departure tears it down.
    let mut moved = info;
    moved.role = "other".parse().expect("role");
    m.handle_scheduler_call(t(2), SCHED, Call::UpdateFramework { framework: moved });
    assert!(matches!(
        drain(&mut m).as_slice(),
        [Transmit::ToScheduler(SCHED, Event::Error { code: Refusal::Invalid, message })] if message.contains("role")
    ));
    m.handle_disconnected(t(3), SCHED);
    assert!(drain(&mut m).iter().any(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::KillTask { framework_id, .. }) if *framework_id == id)));
}

// ---- cluster-hosted schedulers ---------------------------------------------

const SUBMITTER: ConnId = ConnId(30);

/// An agent with cpus:2;mem:1024 and nothing reserved.
fn agent_info(hostname: &str) -> AgentInfo {
    AgentInfo {
        reservations: Vec::new(),
        hostname: hostname.into(),
        resources: "cpus:2;mem:1024".parse().expect("r"),
        attributes: Attributes::default(),
    }
}
const SECRET: [u8; 32] = [7; 32];

fn hosted_config() -> MasterConfig {
    MasterConfig {
        secret: SECRET,
        ..MasterConfig::default()
    }
}

fn submission() -> stoa_proto::Submission {
    stoa_proto::Submission {
        framework: FrameworkInfo {
            failover_timeout_ms: 60_000,
            ..FrameworkInfo::new("svc", "eng".parse().expect("role"))
        },
        artifact: stoa_proto::Digest::of(b"scheduler"),
        args: vec!["--fast".into()],
        env: vec![("K".into(), "V".into())],
        resources: "cpus:0.1;mem:128".parse().expect("r"),
        fuel_per_call: 1_000,
    }
}

/// Submits as `alice` at `now`; returns what the master answered.
fn submit_at(m: &mut Master, now: Time, s: stoa_proto::Submission) -> Vec<Transmit> {
    m.handle_connected(now, SUBMITTER, Channel::Scheduler);
    m.handle_authenticated(SUBMITTER, "alice".into());
    m.handle_scheduler_call(
        now,
        SUBMITTER,
        Call::Submit {
            submission: Box::new(s),
        },
    );
    drain(m)
}

/// The instance a RunTask in `out` starts: (agent conn, framework, task id, token).
fn started_instance(out: &[Transmit]) -> Option<(ConnId, FrameworkId, TaskId, stoa_proto::Digest)> {
    out.iter().find_map(|tx| match tx {
        Transmit::ToAgent(conn, MasterToAgent::RunTask { framework_id, task }) => {
            match &task.kind {
                TaskKind::Scheduler(h) => {
                    Some((*conn, framework_id.clone(), task.task_id.clone(), h.token))
                }
                _ => None,
            }
        }
        _ => None,
    })
}

/// A master with one agent and a submitted framework whose first instance
/// was started; returns the framework and the instance.
fn hosted_cluster() -> (Master, FrameworkId, TaskId, stoa_proto::Digest) {
    let mut m = Master::new(hosted_config(), "m");
    register(&mut m, "cpus:2;mem:1024".parse().expect("r"), Vec::new());
    drain(&mut m);
    let out = submit_at(&mut m, t(0), submission());
    let fw = match out.as_slice() {
        [
            Transmit::ToScheduler(SUBMITTER, Event::Submitted { framework_id }),
            Transmit::Close(SUBMITTER, _),
        ] => framework_id.clone(),
        other => panic!("expected SUBMITTED, got {other:?}"),
    };
    let out = allocate_now(&mut m);
    let (conn, id, task, token) = started_instance(&out).expect("an instance started");
    assert_eq!((conn, &id), (AGENT, &fw));
    (m, fw, task, token)
}

/// An instance subscribing on `conn`, authenticated as `who`.
fn subscribe_instance(
    m: &mut Master,
    now: Time,
    (conn, who): (ConnId, &str),
    fw: &FrameworkId,
    task: &TaskId,
    token: stoa_proto::Digest,
) -> Vec<Transmit> {
    m.handle_connected(now, conn, Channel::Scheduler);
    m.handle_authenticated(conn, who.into());
    let framework = FrameworkInfo {
        id: Some(fw.clone()),
        ..submission().framework
    };
    m.handle_scheduler_call(
        now,
        conn,
        Call::SubscribeHosted {
            framework,
            task_id: task.clone(),
            token,
        },
    );
    drain(m)
}

fn instance_update(
    m: &mut Master,
    now: Time,
    fw: &FrameworkId,
    task: &TaskId,
    state: TaskState,
    update: u64,
) -> Vec<Transmit> {
    m.handle_agent_message(
        now,
        AGENT,
        AgentToMaster::StatusUpdate {
            framework_id: fw.clone(),
            update_id: UpdateId(update),
            status: TaskStatus::new(task.clone(), state),
        },
    );
    drain(m)
}

fn refused(out: &[Transmit], needle: &str) -> bool {
    out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(_, Event::Error { message, .. }) if message.contains(needle)))
}

#[test]
fn a_hosted_instance_subscribes_only_from_an_agent_with_its_token_as_the_submitter() {
    let (mut m, fw, instance, token) = hosted_cluster();
    assert_eq!(instance.as_str(), "stoa-scheduler-1");
    assert_eq!(token, hosted::token(&SECRET, &fw, &instance));
    assert!(refused(
        &subscribe_instance(&mut m, t(10), (ConnId(40), "alice"), &fw, &instance, token),
        "only an agent"
    ));
    let forged = stoa_proto::Digest::of(b"guess");
    assert!(refused(
        &subscribe_instance(&mut m, t(10), (ConnId(41), "agent"), &fw, &instance, forged),
        "wrong token"
    ));
    let other = TaskId::new("stoa-scheduler-9").expect("id");
    let other_token = hosted::token(&SECRET, &fw, &other);
    assert!(refused(
        &subscribe_instance(
            &mut m,
            t(10),
            (ConnId(42), "agent"),
            &fw,
            &other,
            other_token
        ),
        "not the current"
    ));

    let out = subscribe_instance(
        &mut m,
        t(10),
        (ConnId(43), "agent-2"),
        &fw,
        &instance,
        token,
    );
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(ConnId(43), Event::Subscribed { framework_id, .. })] if *framework_id == fw),
        "{out:?}"
    );
    let listed = m.framework_list();
    assert_eq!(listed[0].principal.as_deref(), Some("alice"));
    assert!(listed[0].connected);
    assert_eq!(listed[0].hosted.as_ref().map(|h| h.launched), Some(1));

    // The instance's own updates are acknowledged by the master, never
    // shown to the framework, and reconciliation leaves it out.
    let out = instance_update(&mut m, t(20), &fw, &instance, TaskState::Running, 1);
    assert!(
        matches!(
            out.as_slice(),
            [Transmit::ToAgent(
                AGENT,
                MasterToAgent::AcknowledgeUpdate { .. }
            )]
        ),
        "{out:?}"
    );
    m.handle_scheduler_call(t(21), ConnId(43), Call::Reconcile { tasks: vec![] });
    assert!(drain(&mut m).is_empty());

    // A framework may not launch a hosted scheduler or use the reserved ids.
    let offer = allocate_now(&mut m).into_iter().find_map(|tx| match tx {
        Transmit::ToScheduler(_, Event::Offers { offers }) => offers.first().map(|o| o.id),
        _ => None,
    });
    let offer = offer.expect("an offer to the hosted framework");
    m.handle_scheduler_call(
        t(30),
        ConnId(43),
        Call::Accept {
            offer_ids: vec![offer],
            operations: vec![Operation::Launch {
                tasks: vec![task("stoa-scheduler-5", "cpus:0.1;mem:32")],
            }],
            refuse_ms: None,
        },
    );
    let out = drain(&mut m);
    assert!(out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(_, Event::Update { status, .. }) if status.state == TaskState::Error && status.message.contains("the master's own"))), "{out:?}");
}

#[test]
fn a_failed_instance_is_restarted_with_backoff_and_a_finished_one_ends_hosting() {
    let (mut m, fw, first, _) = hosted_cluster();
    instance_update(&mut m, t(10), &fw, &first, TaskState::Running, 1);
    instance_update(&mut m, t(100), &fw, &first, TaskState::Failed, 2);
    m.handle_timeout(t(1_099));
    assert!(
        started_instance(&drain(&mut m)).is_none(),
        "1 s after the first failure"
    );
    m.handle_timeout(t(1_100));
    let (_, _, second, _) = started_instance(&drain(&mut m)).expect("restarted");
    assert_eq!(second.as_str(), "stoa-scheduler-2");
    instance_update(&mut m, t(1_200), &fw, &second, TaskState::Failed, 3);
    m.handle_timeout(t(2_300));
    assert!(
        started_instance(&drain(&mut m)).is_none(),
        "2 s after the second failure in a row"
    );
    m.handle_timeout(t(3_200));
    let (_, _, third, _) = started_instance(&drain(&mut m)).expect("restarted again");
    instance_update(&mut m, t(3_300), &fw, &third, TaskState::Finished, 4);
    let listed = m.framework_list();
    assert!(
        listed[0].hosted.is_none(),
        "a finished scheduler is not restarted"
    );
    assert!(m.registry().hosted.is_empty());
}

#[test]
fn a_lost_agent_moves_the_instance_once_its_scheduler_is_silent() {
    let (mut m, fw, first, token) = hosted_cluster();
    let other = ConnId(11);
    m.handle_connected(t(0), other, Channel::Agent);
    let info = agent_info("h2");
    m.handle_agent_message(
        t(0),
        other,
        AgentToMaster::Register {
            info,
            agent_id: None,
            tasks: vec![],
        },
    );
    drain(&mut m);
    let lost_agent = m.framework_list()[0]
        .hosted
        .clone()
        .and_then(|h| h.instance)
        .expect("placed")
        .1;
    subscribe_instance(&mut m, t(10), (ConnId(43), "agent"), &fw, &first, token);
    instance_update(&mut m, t(10), &fw, &first, TaskState::Running, 1);

    // Its agent goes; the scheduler itself still talks: nothing moves.
    m.handle_disconnected(t(1_000), AGENT);
    m.handle_agent_message(t(19_000), other, AgentToMaster::Heartbeat);
    m.handle_timeout(t(20_000));
    assert!(started_instance(&drain(&mut m)).is_none());
    // The scheduler falls silent too: after the agent timeout (5 s) a new
    // instance starts on the other agent.
    m.handle_disconnected(t(20_000), ConnId(43));
    m.handle_agent_message(t(24_000), other, AgentToMaster::Heartbeat);
    m.handle_timeout(t(24_999));
    assert!(started_instance(&drain(&mut m)).is_none());
    m.handle_timeout(t(25_000));
    let (conn, _, second, second_token) = started_instance(&drain(&mut m)).expect("moved");
    assert_eq!((conn, second.as_str()), (other, "stoa-scheduler-2"));
    // The old instance cannot come back as the framework's scheduler.
    assert!(refused(
        &subscribe_instance(&mut m, t(25_001), (ConnId(44), "agent"), &fw, &first, token),
        "not the current"
    ));
    let out = subscribe_instance(
        &mut m,
        t(25_002),
        (ConnId(45), "agent"),
        &fw,
        &second,
        second_token,
    );
    assert!(
        matches!(
            out.as_slice(),
            [Transmit::ToScheduler(_, Event::Subscribed { .. })]
        ),
        "{out:?}"
    );
    // Its agent returns, still running the old instance: it is killed.
    m.handle_connected(t(30_000), AGENT, Channel::Agent);
    let info = agent_info("h");
    let running = RunningTask {
        framework_id: fw.clone(),
        task_id: first.clone(),
        resources: "cpus:0.1;mem:128".parse().expect("r"),
        state: TaskState::Running,
    };
    m.handle_agent_message(
        t(30_000),
        AGENT,
        AgentToMaster::Register {
            info,
            agent_id: Some(lost_agent),
            tasks: vec![running],
        },
    );
    let out = drain(&mut m);
    assert!(out.iter().any(|tx| matches!(tx, Transmit::ToAgent(AGENT, MasterToAgent::KillTask { task_id, .. }) if *task_id == first)), "{out:?}");
}

#[test]
fn subscribing_from_elsewhere_takes_a_framework_off_hosting() {
    let (mut m, fw, first, _) = hosted_cluster();
    m.handle_connected(t(10), ConnId(50), Channel::Scheduler);
    m.handle_authenticated(ConnId(50), "alice".into());
    let framework = FrameworkInfo {
        id: Some(fw.clone()),
        ..submission().framework
    };
    m.handle_scheduler_call(t(10), ConnId(50), Call::Subscribe { framework });
    let out = drain(&mut m);
    assert!(out.iter().any(|tx| matches!(tx, Transmit::ToAgent(AGENT, MasterToAgent::KillTask { task_id, .. }) if *task_id == first)), "{out:?}");
    assert!(
        out.iter().any(|tx| matches!(
            tx,
            Transmit::ToScheduler(ConnId(50), Event::Subscribed { .. })
        )),
        "{out:?}"
    );
    assert!(m.framework_list()[0].hosted.is_none());
}

#[test]
fn submissions_are_checked_and_hosting_survives_a_master_restart() {
    let mut m = Master::new(hosted_config(), "m");
    let with_id = stoa_proto::Submission {
        framework: FrameworkInfo {
            id: Some(FrameworkId::new("x").expect("id")),
            ..submission().framework
        },
        ..submission()
    };
    assert!(refused(
        &submit_at(&mut m, t(0), with_id),
        "leave its id unset"
    ));
    let no_mem = stoa_proto::Submission {
        resources: "cpus:1".parse().expect("r"),
        ..submission()
    };
    assert!(refused(&submit_at(&mut m, t(0), no_mem), "needs mem"));
    let (m, fw, first, token) = hosted_cluster();
    let registry = m.registry().clone();
    assert!(!registry.hosted.is_empty(), "hosting is recorded");

    // A new master run: the framework is still hosted, and an agent
    // re-registering with the instance keeps it (nothing killed or
    // started), and the instance may subscribe again.
    let mut m = Master::new(hosted_config(), "m2");
    m.restore(Time::ZERO, registry);
    assert_eq!(m.framework_list()[0].id, fw);
    m.handle_connected(t(100), AGENT, Channel::Agent);
    let info = agent_info("h");
    let agent_id = m.framework_list()[0]
        .hosted
        .clone()
        .and_then(|h| h.instance)
        .expect("recorded")
        .1;
    let running = RunningTask {
        framework_id: fw.clone(),
        task_id: first.clone(),
        resources: "cpus:0.1;mem:128".parse().expect("r"),
        state: TaskState::Running,
    };
    m.handle_agent_message(
        t(100),
        AGENT,
        AgentToMaster::Register {
            info,
            agent_id: Some(agent_id),
            tasks: vec![running],
        },
    );
    let out = allocate_now(&mut m);
    assert!(
        !out.iter()
            .any(|tx| matches!(tx, Transmit::ToAgent(_, MasterToAgent::KillTask { .. }))),
        "{out:?}"
    );
    assert!(started_instance(&out).is_none(), "{out:?}");
    let out = subscribe_instance(&mut m, t(200), (ConnId(43), "agent"), &fw, &first, token);
    assert!(
        matches!(
            out.as_slice(),
            [Transmit::ToScheduler(_, Event::Subscribed { .. })]
        ),
        "{out:?}"
    );
    m.handle_timeout(t(60_000));
    assert!(
        started_instance(&drain(&mut m)).is_none(),
        "the instance is reachable"
    );
}

#[test]
fn messages_reach_a_connected_scheduler_from_its_own_principal_only() {
    let (mut m, fw, instance, token) = hosted_cluster();
    let send = |m: &mut Master, conn: ConnId, who: &str, data: Vec<u8>| {
        m.handle_connected(t(10), conn, Channel::Scheduler);
        m.handle_authenticated(conn, who.into());
        let framework_id = fw.clone();
        m.handle_scheduler_call(t(10), conn, Call::SendMessage { framework_id, data });
        drain(m)
    };
    assert!(refused(
        &send(&mut m, ConnId(60), "alice", b"scale 2".to_vec()),
        "no scheduler connected"
    ));
    subscribe_instance(&mut m, t(10), (ConnId(43), "agent"), &fw, &instance, token);
    assert!(refused(
        &send(&mut m, ConnId(61), "mallory", b"scale 2".to_vec()),
        "belongs to principal alice"
    ));
    let huge = vec![0; stoa_proto::messages::MAX_MESSAGE + 1];
    assert!(refused(&send(&mut m, ConnId(62), "alice", huge), "at most"));
    let out = send(&mut m, ConnId(63), "alice", b"scale 2".to_vec());
    assert!(out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(ConnId(43), Event::Message { from: None, data }) if data == b"scale 2")), "{out:?}");
    assert!(
        out.iter()
            .any(|tx| matches!(tx, Transmit::ToScheduler(ConnId(63), Event::Delivered))),
        "{out:?}"
    );
}

#[test]
fn an_instance_takes_offered_resources_only_where_it_then_fits() {
    // A framework holds an offer of the whole agent (cpus:2;mem:1024).
    let (mut m, _, offer) = cluster_with(hosted_config(), None);
    let out = submit_at(&mut m, t(10), submission());
    assert!(
        out.iter()
            .any(|tx| matches!(tx, Transmit::ToScheduler(_, Event::Submitted { .. })))
    );
    let out = allocate_now(&mut m);
    assert!(out.iter().any(|tx| matches!(tx, Transmit::ToScheduler(SCHED, Event::Rescind { offer_id }) if *offer_id == offer.id)), "{out:?}");
    assert!(started_instance(&out).is_some(), "{out:?}");
    let out = allocate_now(&mut m);
    assert!(
        out.iter()
            .any(|tx| matches!(tx, Transmit::ToScheduler(SCHED, Event::Offers { .. }))),
        "the rest is offered again: {out:?}"
    );

    // An instance no agent can hold waits, and does not withdraw the
    // other framework's offers while it does.
    let huge = stoa_proto::Submission {
        resources: "cpus:8;mem:128".parse().expect("r"),
        ..submission()
    };
    submit_at(&mut m, t(20), huge);
    for ms in [1_000, 2_000, 3_000] {
        m.handle_agent_message(t(ms), AGENT, AgentToMaster::Heartbeat);
        m.handle_timeout(t(ms + 50));
        let out = drain(&mut m);
        assert!(
            !out.iter()
                .any(|tx| matches!(tx, Transmit::ToScheduler(_, Event::Rescind { .. }))),
            "{out:?}"
        );
        assert!(started_instance(&out).is_none());
    }
}

#[test]
fn messages_go_to_a_running_task_and_back_from_it_only() {
    let (mut m, fw, _) = running_framework();
    let message = |m: &mut Master, task: &str, data: Vec<u8>| {
        let task_id = TaskId::new(task).expect("id");
        m.handle_scheduler_call(t(10), SCHED, Call::Message { task_id, data });
        drain(m)
    };
    let error = |out: &[Transmit], why: &str| matches!(out, [Transmit::ToScheduler(SCHED, Event::Error { message, .. })] if message.contains(why));
    let out = message(&mut m, "t1", b"hi".to_vec());
    assert!(
        matches!(out.as_slice(), [Transmit::ToAgent(AGENT, MasterToAgent::FrameworkMessage { task_id, data, .. })] if task_id.as_str() == "t1" && data == b"hi"),
        "{out:?}"
    );
    let out = message(&mut m, "ghost", b"hi".to_vec());
    assert!(error(&out, "no such task"), "{out:?}");
    let huge = vec![0; stoa_proto::messages::MAX_MESSAGE + 1];
    assert!(error(&message(&mut m, "t1", huge), "at most"));

    // From the task's agent: to the scheduler, naming the task.
    let from_agent = |m: &mut Master, conn: ConnId, task: &str| {
        let msg = AgentToMaster::FrameworkMessage {
            framework_id: fw.clone(),
            task_id: TaskId::new(task).expect("id"),
            data: b"yo".to_vec(),
        };
        m.handle_agent_message(t(20), conn, msg);
        drain(m)
    };
    let out = from_agent(&mut m, AGENT, "t1");
    assert!(
        matches!(out.as_slice(), [Transmit::ToScheduler(SCHED, Event::Message { from: Some(from), data })] if from.task_id.as_str() == "t1" && data == b"yo"),
        "{out:?}"
    );
    // A task the agent does not run cannot speak; another agent cannot
    // speak for this one's task.
    assert!(from_agent(&mut m, AGENT, "ghost").is_empty());
    let other = ConnId(77);
    m.handle_connected(t(20), other, Channel::Agent);
    let register = AgentToMaster::Register {
        info: agent_info("h2"),
        agent_id: None,
        tasks: vec![],
    };
    m.handle_agent_message(t(20), other, register);
    drain(&mut m);
    assert!(from_agent(&mut m, other, "t1").is_empty());

    // What the executor could not deliver reaches the scheduler as ERROR,
    // from the task's own agent only.
    let undelivered = AgentToMaster::Undelivered {
        framework_id: fw.clone(),
        task_id: TaskId::new("t1").expect("id"),
        message: "the task's inbox is full".into(),
    };
    m.handle_agent_message(t(30), other, undelivered.clone());
    assert!(drain(&mut m).is_empty());
    m.handle_agent_message(t(30), AGENT, undelivered);
    assert!(error(&drain(&mut m), "inbox is full"));

    // Once the task ended, messages to it are refused.
    update_from_agent(&mut m, &fw, TaskState::Finished, 1);
    drain(&mut m);
    assert!(error(&message(&mut m, "t1", b"hi".to_vec()), "has ended"));
}

mod acls;
mod faults;
mod views;

/// A task id may be used again once its end was acknowledged; the new
/// task's updates reach its scheduler like any other's (the memory of the
/// old end must not swallow them as stale).
#[test]
fn a_task_id_used_again_after_its_end_is_reported_in_full() {
    let (mut m, agent_id, offer) = cluster();
    let fw = offer.framework_id.clone();
    let tid = TaskId::new("t1").expect("id");
    let update = |n, state| status_update(&fw, &tid, n, state);
    launch(&mut m, offer.id, vec![task("t1", "cpus:1;mem:512")]);
    drain(&mut m);
    m.handle_agent_message(t(2), AGENT, update(1, TaskState::Running));
    m.handle_agent_message(t(2), AGENT, update(2, TaskState::Finished));
    drain(&mut m);
    let ack = Call::Acknowledge {
        agent_id,
        task_id: tid.clone(),
        update_id: UpdateId(2),
    };
    m.handle_scheduler_call(t(3), SCHED, ack);
    drain(&mut m);
    let offer = match allocate_now(&mut m).as_slice() {
        [Transmit::ToScheduler(SCHED, Event::Offers { offers })] => offers[0].id,
        other => panic!("expected an offer, got {other:?}"),
    };
    launch(&mut m, offer, vec![task("t1", "cpus:1;mem:512")]);
    drain(&mut m);
    m.handle_agent_message(t(5), AGENT, update(3, TaskState::Running));
    assert_eq!(relayed(&drain(&mut m)), vec![TaskState::Running]);
    let reconcile = Call::Reconcile {
        tasks: vec![tid.clone()],
    };
    m.handle_scheduler_call(t(6), SCHED, reconcile);
    assert_eq!(relayed(&drain(&mut m)), vec![TaskState::Running]);
}

/// Heartbeats do not move the agent's timer; when it fires it is set again
/// from the last word, and the agent is unreachable only once it has been
/// silent for the whole timeout.
#[test]
fn an_agent_is_unreachable_a_full_timeout_after_its_last_word() {
    let mut m = Master::new(MasterConfig::default(), "m");
    register(&mut m, "cpus:1;mem:64".parse().expect("r"), Vec::new());
    allocate_now(&mut m);
    m.handle_agent_message(t(3_000), AGENT, AgentToMaster::Heartbeat);
    assert_eq!(m.poll_timeout(), Some(t(5_000)), "set at registration");
    m.handle_timeout(t(5_000));
    assert_eq!(m.summary().connected_agents, 1);
    assert_eq!(m.poll_timeout(), Some(t(8_000)), "five seconds after 3 s");
    m.handle_timeout(t(7_999));
    assert_eq!(m.summary().connected_agents, 1);
    m.handle_timeout(t(8_000));
    assert_eq!(m.summary().connected_agents, 0);
    assert!(drain(&mut m).contains(&Transmit::Close(AGENT, "missed heartbeats".into())));
}

#[test]
fn files_without_a_directory_to_place_them_in_are_refused() {
    let (mut m, _, offer) = cluster();
    let mut t = task("with-files", "cpus:1;mem:32");
    if let TaskKind::Wasm(w) = &mut t.kind {
        w.sandbox = stoa_proto::Sandbox::LogsOnly;
        w.files = vec![stoa_proto::TaskFile {
            path: "conf.txt".parse().expect("path"),
            artifact: stoa_proto::Digest::of(b"conf"),
            extract: false,
        }];
    }
    launch(&mut m, offer.id, vec![t]);
    let out = drain(&mut m);
    assert!(
        out.iter().any(
            |x| matches!(x, Transmit::ToScheduler(_, Event::Update { status, .. })
            if status.state == TaskState::Error
                && status.reason == Some(Reason::TaskInvalid)
                && status.message.contains("files are placed in the task's directory"))
        ),
        "{out:?}"
    );
    assert!(
        !out.iter()
            .any(|x| matches!(x, Transmit::ToAgent(_, MasterToAgent::RunTask { .. }))),
        "{out:?}"
    );
}
