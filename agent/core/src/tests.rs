use super::*;
use stoa_proto::{Artifact, Attributes, TaskKind, TaskLimits, UpdateId};

/// The next action other than sizing an executor (tests of their own look
/// at those).
fn next_action(a: &mut Agent) -> Option<Action> {
    loop {
        match a.poll_action() {
            Some(Action::ResizeExecutor { .. }) => continue,
            other => return other,
        }
    }
}

fn t(ms: u64) -> Time {
    Time::from_micros(ms * 1000)
}

fn registered() -> Agent {
    let info = AgentInfo {
        reservations: Vec::new(),
        hostname: "h".into(),
        resources: "cpus:1;mem:64".parse().expect("r"),
        attributes: Attributes::default(),
    };
    let mut a = Agent::new(info, None, 0);
    a.handle_connected(t(0));
    assert!(matches!(
        a.poll_transmit(),
        Some(AgentToMaster::Register { agent_id: None, .. })
    ));
    a.handle_master_message(
        t(0),
        MasterToAgent::Registered {
            agent_id: AgentId::new("a1").expect("id"),
            heartbeat_interval_ms: 1000,
            removal_timeout_ms: 60_000,
        },
    );
    a
}

fn fw() -> FrameworkId {
    FrameworkId::new("f1").expect("id")
}

fn launch(a: &mut Agent, id: &str) {
    launch_from(a, id, Artifact::inline(vec![1]));
}

/// RUN_TASK of a small wasm task `id` with `artifact`.
fn launch_from(a: &mut Agent, id: &str, artifact: Artifact) {
    launch_kind(a, id, TaskKind::wasm(artifact, vec![]));
}

/// RUN_TASK of a native command `id` (a task with a cgroup of its own).
fn launch_native(a: &mut Agent, id: &str) {
    let command = stoa_proto::CommandTask::new(["sleep", "9"]);
    launch_kind(a, id, TaskKind::Command(command));
}

fn launch_kind(a: &mut Agent, id: &str, kind: TaskKind) {
    let task = TaskInfo {
        task_id: TaskId::new(id).expect("id"),
        name: id.into(),
        resources: "cpus:0.25;mem:16".parse().expect("r"),
        kind,
        limits: TaskLimits::default(),
    };
    a.handle_master_message(
        t(1),
        MasterToAgent::RunTask {
            framework_id: fw(),
            task: Box::new(task),
        },
    );
}

fn update(msg: Option<AgentToMaster>) -> (UpdateId, TaskState) {
    match msg {
        Some(AgentToMaster::StatusUpdate {
            update_id, status, ..
        }) => (update_id, status.state),
        other => panic!("expected a status update, got {other:?}"),
    }
}

#[test]
fn updates_go_out_in_order_at_once_and_are_resent_until_acknowledged() {
    let mut a = registered();
    launch(&mut a, "t1");
    assert!(matches!(next_action(&mut a), Some(Action::Launch { .. })));
    // A launch says nothing until the task runs, or must wait.
    assert_eq!(a.poll_transmit(), None);
    let tid = TaskId::new("t1").expect("id");
    a.preparing(t(1), fw(), tid.clone());
    let (starting, state) = update(a.poll_transmit());
    assert_eq!(state, TaskState::Starting);
    a.handle_task_event(t(2), fw(), tid.clone(), TaskEvent::Running);
    a.handle_task_event(
        t(3),
        fw(),
        tid.clone(),
        TaskEvent::Finished {
            output: b"ok".to_vec(),
            exit_code: None,
        },
    );
    // Not held behind the unacknowledged STARTING.
    let (running, state) = update(a.poll_transmit());
    assert_eq!(state, TaskState::Running);
    let (finished, state) = update(a.poll_transmit());
    assert_eq!(state, TaskState::Finished);
    assert_eq!(a.active_tasks(), 0);
    // STARTING acknowledged; RUNNING and FINISHED are resent, in order,
    // after the backoff.
    a.handle_master_message(
        t(4),
        MasterToAgent::AcknowledgeUpdate {
            task_id: tid.clone(),
            update_id: starting,
        },
    );
    a.handle_timeout(t(2004));
    let resent: Vec<_> = std::iter::from_fn(|| a.poll_transmit())
        .filter(|m| !matches!(m, AgentToMaster::Heartbeat))
        .map(|m| update(Some(m)))
        .collect();
    assert_eq!(
        resent,
        vec![
            (running, TaskState::Running),
            (finished, TaskState::Finished)
        ]
    );
    // The end acknowledged (RUNNING's acknowledgement never came): nothing
    // is left, and the executor may forget the task.
    a.handle_master_message(
        t(2005),
        MasterToAgent::AcknowledgeUpdate {
            task_id: tid,
            update_id: finished,
        },
    );
    assert_eq!(a.pending_updates(), 0);
    assert!(
        std::iter::from_fn(|| next_action(&mut a)).any(|x| matches!(x, Action::Forget { .. })),
        "the executor should be told to forget the task"
    );
}

#[test]
fn reconnect_resends_unacknowledged_updates_and_reports_running_tasks() {
    let mut a = registered();
    launch(&mut a, "t1");
    a.handle_task_event(
        t(2),
        fw(),
        TaskId::new("t1").expect("id"),
        TaskEvent::Running,
    );
    let (running, _) = update(a.poll_transmit());
    a.handle_disconnected(t(5));
    a.handle_connected(t(6));
    match a.poll_transmit() {
        Some(AgentToMaster::Register {
            agent_id: Some(id),
            tasks,
            ..
        }) => {
            assert_eq!(id.as_str(), "a1");
            assert_eq!(tasks.len(), 1);
        }
        other => panic!("expected re-registration, got {other:?}"),
    }
    a.handle_master_message(
        t(7),
        MasterToAgent::Registered {
            agent_id: AgentId::new("a1").expect("id"),
            heartbeat_interval_ms: 1000,
            removal_timeout_ms: 60_000,
        },
    );
    assert_eq!(update(a.poll_transmit()).0, running);
}

#[test]
fn kill_of_an_unknown_task_reports_it_lost() {
    let mut a = registered();
    a.handle_master_message(
        t(1),
        MasterToAgent::KillTask {
            framework_id: fw(),
            task_id: TaskId::new("nope").expect("id"),
        },
    );
    assert_eq!(update(a.poll_transmit()).1, TaskState::Lost);
    assert_eq!(next_action(&mut a), None);
}

#[test]
fn heartbeats_follow_the_interval() {
    let mut a = registered();
    assert_eq!(a.poll_timeout(), Some(t(1000)));
    a.handle_timeout(t(1000));
    assert_eq!(a.poll_transmit(), Some(AgentToMaster::Heartbeat));
    assert_eq!(a.poll_timeout(), Some(t(2000)));
}

#[test]
fn messages_reach_running_tasks_and_come_back_from_them() {
    let mut a = registered();
    launch(&mut a, "t1");
    while next_action(&mut a).is_some() {}
    while a.poll_transmit().is_some() {}
    let to = |a: &mut Agent, task: &str| {
        a.handle_master_message(
            t(2),
            MasterToAgent::FrameworkMessage {
                framework_id: fw(),
                task_id: TaskId::new(task).expect("id"),
                data: b"hi".to_vec(),
            },
        );
    };
    to(&mut a, "t1");
    assert!(matches!(
        next_action(&mut a),
        Some(Action::Deliver { task_id, data, .. }) if task_id.as_str() == "t1" && data == b"hi"
    ));
    to(&mut a, "ghost");
    assert_eq!(next_action(&mut a), None);
    assert!(matches!(
        a.poll_transmit(),
        Some(AgentToMaster::Undelivered { task_id, message, .. })
            if task_id.as_str() == "ghost" && message.contains("not running")
    ));
    a.handle_task_message(fw(), TaskId::new("t1").expect("id"), b"yo".to_vec());
    assert!(matches!(
        a.poll_transmit(),
        Some(AgentToMaster::FrameworkMessage { data, .. }) if data == b"yo"
    ));
}

#[test]
fn a_kill_reports_killing_once_then_the_end() {
    let mut a = registered();
    launch(&mut a, "t1");
    next_action(&mut a);
    let tid = TaskId::new("t1").expect("id");
    a.handle_task_event(t(2), fw(), tid.clone(), TaskEvent::Running);
    a.poll_transmit();
    for at in [3, 4] {
        a.handle_master_message(
            t(at),
            MasterToAgent::KillTask {
                framework_id: fw(),
                task_id: tid.clone(),
            },
        );
        assert!(matches!(next_action(&mut a), Some(Action::Kill { .. })));
    }
    assert_eq!(update(a.poll_transmit()).1, TaskState::Killing);
    assert_eq!(a.poll_transmit(), None, "KILLING is reported once");
    let killed = TaskEvent::ended(TaskState::Killed, Reason::KilledByScheduler, "killed");
    a.handle_task_event(t(5), fw(), tid, killed);
    assert_eq!(update(a.poll_transmit()).1, TaskState::Killed);
}

#[test]
fn a_returning_agent_reports_ended_tasks_whose_updates_wait() {
    let mut a = registered();
    launch(&mut a, "t1");
    next_action(&mut a);
    let tid = TaskId::new("t1").expect("id");
    a.handle_disconnected(t(2));
    let done = TaskEvent::Finished {
        output: Vec::new(),
        exit_code: None,
    };
    a.handle_task_event(t(3), fw(), tid, done);
    a.handle_connected(t(4));
    match a.poll_transmit() {
        Some(AgentToMaster::Register { tasks, .. }) => {
            assert_eq!(tasks.len(), 1);
            assert_eq!(tasks[0].state, TaskState::Finished);
        }
        other => panic!("expected Register, got {other:?}"),
    }
}

#[test]
fn out_of_touch_past_most_of_the_removal_timeout_the_agent_stops_its_tasks() {
    let mut a = registered();
    launch(&mut a, "t1");
    next_action(&mut a);
    let tid = TaskId::new("t1").expect("id");
    a.handle_task_event(t(2), fw(), tid.clone(), TaskEvent::Running);
    a.poll_transmit();
    a.handle_disconnected(t(1_000));
    // registered() says the removal timeout is 60 s: stop at 45 s.
    let fence = t(1_000 + 45_000);
    assert_eq!(a.poll_timeout(), Some(fence));
    a.handle_timeout(t(1_000 + 44_999));
    assert_eq!(next_action(&mut a), None);
    a.handle_timeout(fence);
    assert!(matches!(next_action(&mut a), Some(Action::Kill { .. })));
    let killed = TaskEvent::ended(TaskState::Killed, Reason::KilledByScheduler, "killed");
    a.handle_task_event(fence, fw(), tid, killed);
    a.handle_connected(t(50_000));
    a.poll_transmit();
    a.handle_master_message(
        t(50_001),
        MasterToAgent::Registered {
            agent_id: AgentId::new("a1").expect("id"),
            heartbeat_interval_ms: 1000,
            removal_timeout_ms: 60_000,
        },
    );
    let sent: Vec<AgentToMaster> = std::iter::from_fn(|| a.poll_transmit()).collect();
    assert!(
        sent.iter().any(|m| matches!(m, AgentToMaster::StatusUpdate { status, .. } if status.state == TaskState::Killed && status.reason == Some(Reason::AgentRemoved))),
        "{sent:?}"
    );
}

#[test]
fn an_agent_removed_while_away_kills_and_forgets_what_it_held() {
    let mut a = registered();
    launch(&mut a, "t1");
    next_action(&mut a);
    a.handle_disconnected(t(2));
    a.handle_connected(t(3));
    a.poll_transmit();
    a.handle_master_message(
        t(4),
        MasterToAgent::Registered {
            agent_id: AgentId::new("a2").expect("id"),
            heartbeat_interval_ms: 1000,
            removal_timeout_ms: 60_000,
        },
    );
    assert!(matches!(next_action(&mut a), Some(Action::Kill { .. })));
    assert!(matches!(next_action(&mut a), Some(Action::Forget { .. })));
    assert_eq!(a.tasks().count(), 0);
    assert_eq!(a.pending_updates(), 0);
    assert_eq!(a.agent_id().map(|i| i.as_str()), Some("a2"));
}

/// A launch whose stored artifact is missing, as the driver reports it;
/// returns the other actions that were queued before it.
fn launch_missing(a: &mut Agent, id: &str, digest: stoa_proto::Digest) -> Vec<Action> {
    launch_from(a, id, Artifact::Stored(digest));
    let mut others = Vec::new();
    loop {
        match next_action(a) {
            Some(Action::Launch { framework_id, task }) => {
                a.artifact_missing(t(1), framework_id, task, digest);
                return others;
            }
            Some(other) => others.push(other),
            None => panic!("expected a launch"),
        }
    }
}

#[test]
fn launches_wait_for_one_fetch_and_start_or_fail_with_it() {
    let mut a = registered();
    let (d1, d2) = (
        stoa_proto::Digest::of(b"one"),
        stoa_proto::Digest::of(b"two"),
    );
    let mut actions = launch_missing(&mut a, "t1", d1);
    actions.extend(launch_missing(&mut a, "t2", d1));
    actions.extend(launch_missing(&mut a, "t3", d2));
    actions.extend(std::iter::from_fn(|| next_action(&mut a)));
    assert_eq!(
        actions,
        vec![Action::Fetch { digest: d1 }, Action::Fetch { digest: d2 }],
        "one fetch per artifact"
    );
    let starting: Vec<TaskState> = std::iter::from_fn(|| a.poll_transmit())
        .map(|m| update(Some(m)).1)
        .collect();
    assert_eq!(starting, vec![TaskState::Starting; 3]);
    a.handle_fetched(t(2), d1, Ok(()));
    let started: Vec<String> = std::iter::from_fn(|| next_action(&mut a))
        .map(|x| match x {
            Action::Launch { task, .. } => task.task_id.to_string(),
            other => panic!("expected launches, got {other:?}"),
        })
        .collect();
    assert_eq!(started, vec!["t1", "t2"]);
    a.handle_fetched(t(3), d2, Err("cannot fetch".into()));
    assert_eq!(next_action(&mut a), None);
    match a.poll_transmit() {
        Some(AgentToMaster::StatusUpdate { status, .. }) => {
            assert_eq!(status.state, TaskState::Error);
            assert_eq!(status.reason, Some(Reason::ArtifactUnavailable));
        }
        other => panic!("expected t3's end, got {other:?}"),
    }
}

#[test]
fn a_kill_of_a_launch_waiting_for_its_artifact_ends_it_at_once() {
    let mut a = registered();
    let d = stoa_proto::Digest::of(b"slow");
    assert!(launch_missing(&mut a, "t1", d).is_empty());
    assert_eq!(next_action(&mut a), Some(Action::Fetch { digest: d }));
    a.poll_transmit();
    let tid = TaskId::new("t1").expect("id");
    a.handle_master_message(
        t(2),
        MasterToAgent::KillTask {
            framework_id: fw(),
            task_id: tid.clone(),
        },
    );
    assert_eq!(next_action(&mut a), None, "nothing reaches an executor");
    let states: Vec<TaskState> = std::iter::from_fn(|| a.poll_transmit())
        .map(|m| update(Some(m)).1)
        .collect();
    assert_eq!(states, vec![TaskState::Killing, TaskState::Killed]);
    assert!(!a.is_fetching(&fw(), &tid));
    // The fetch ending later starts nothing.
    a.handle_fetched(t(3), d, Ok(()));
    assert_eq!(next_action(&mut a), None);
}

#[test]
fn a_dead_executor_fails_its_own_running_tasks_only() {
    let mut a = registered();
    launch(&mut a, "t1");
    launch(&mut a, "t2");
    std::iter::from_fn(|| next_action(&mut a)).for_each(drop);
    let d = stoa_proto::Digest::of(b"later");
    launch_missing(&mut a, "t3", d);
    std::iter::from_fn(|| next_action(&mut a)).for_each(drop);
    let t1 = TaskId::new("t1").expect("id");
    a.handle_task_event(t(2), fw(), t1.clone(), TaskEvent::Running);
    let done = TaskEvent::Finished {
        output: Vec::new(),
        exit_code: None,
    };
    a.handle_task_event(t(3), fw(), TaskId::new("t2").expect("id"), done);
    std::iter::from_fn(|| a.poll_transmit()).for_each(drop);
    // t2 ended already; t3 waits for its artifact and will start with a
    // new executor: only t1 fails.
    a.handle_executor_gone(t(4), &fw());
    match a.poll_transmit() {
        Some(AgentToMaster::StatusUpdate { status, .. }) => {
            assert_eq!(status.state, TaskState::Failed);
            assert_eq!(status.reason, Some(Reason::ExecutorTerminated));
        }
        other => panic!("expected t1's end, got {other:?}"),
    }
    assert_eq!(a.poll_transmit(), None);
    assert!(a.is_fetching(&fw(), &TaskId::new("t3").expect("id")));
}

#[test]
fn executors_grow_with_their_tasks_shrink_after_and_stop_when_idle() {
    let mut a = registered();
    a.set_executor_idle(std::time::Duration::from_secs(30));
    launch(&mut a, "t1");
    assert!(matches!(a.poll_action(), Some(Action::Launch { .. })));
    match a.poll_action() {
        Some(Action::ResizeExecutor {
            millicpus,
            mem_mib,
            shrink,
            ..
        }) => assert_eq!((millicpus, mem_mib, shrink), (250, 16, false)),
        other => panic!("expected the executor to grow after the launch, got {other:?}"),
    }
    let tid = TaskId::new("t1").expect("id");
    let update_id = finish(&mut a, &tid, t(100));
    // A second after the end, it may come down to nothing.
    assert!(a.poll_timeout() <= Some(t(1_100)), "the shrink is due then");
    a.handle_timeout(t(1_100));
    let shrink = std::iter::from_fn(|| a.poll_action()).find(|x| {
        matches!(
            x,
            Action::ResizeExecutor {
                millicpus: 0,
                mem_mib: 0,
                shrink: true,
                ..
            }
        )
    });
    assert!(shrink.is_some());
    // Forgotten; no task of the framework left 30 s later: stopped.
    a.handle_master_message(
        t(2_000),
        MasterToAgent::AcknowledgeUpdate {
            task_id: tid,
            update_id,
        },
    );
    assert!(matches!(a.poll_action(), Some(Action::Forget { .. })));
    a.handle_timeout(t(31_999));
    assert!(
        !std::iter::from_fn(|| a.poll_action()).any(|x| matches!(x, Action::StopExecutor { .. }))
    );
    a.handle_timeout(t(32_000));
    assert_eq!(
        std::iter::from_fn(|| a.poll_action()).find(|x| matches!(x, Action::StopExecutor { .. })),
        Some(Action::StopExecutor { framework_id: fw() })
    );
}

#[test]
fn an_executor_with_a_task_again_is_not_stopped() {
    let mut a = registered();
    a.set_executor_idle(std::time::Duration::from_secs(30));
    launch(&mut a, "t1");
    let tid = TaskId::new("t1").expect("id");
    let update_id = finish(&mut a, &tid, t(100));
    a.handle_master_message(
        t(200),
        MasterToAgent::AcknowledgeUpdate {
            task_id: tid,
            update_id,
        },
    );
    launch(&mut a, "t2");
    a.handle_timeout(t(40_000));
    assert!(
        !std::iter::from_fn(|| a.poll_action()).any(|x| matches!(x, Action::StopExecutor { .. })),
        "t2 runs there"
    );
}

/// `task` finishes at `at`; returns the update that says so.
fn finish(a: &mut Agent, task: &TaskId, at: Time) -> UpdateId {
    let done = TaskEvent::Finished {
        output: Vec::new(),
        exit_code: None,
    };
    a.handle_task_event(at, fw(), task.clone(), done);
    update(a.poll_transmit()).0
}

fn removed_cgroups(a: &mut Agent) -> Vec<String> {
    std::iter::from_fn(|| a.poll_action())
        .filter_map(|x| match x {
            Action::RemoveCgroup { task_id, .. } => Some(task_id.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_native_tasks_cgroup_goes_when_it_ends_however_it_ends() {
    let mut a = registered();
    launch_native(&mut a, "n1");
    launch_native(&mut a, "n2");
    launch(&mut a, "w1");
    let n1 = TaskId::new("n1").expect("id");
    a.handle_task_event(t(2), fw(), n1.clone(), TaskEvent::Running);
    assert_eq!(
        removed_cgroups(&mut a),
        Vec::<String>::new(),
        "all still run"
    );
    finish(&mut a, &n1, t(3));
    assert_eq!(removed_cgroups(&mut a), ["n1"]);
    // The executor dies: n2 fails with it and its cgroup goes; the wasm
    // task has none.
    a.handle_executor_gone(t(4), &fw());
    assert_eq!(removed_cgroups(&mut a), ["n2"]);
}

fn collected(a: &mut Agent) -> Vec<String> {
    std::iter::from_fn(|| a.poll_action())
        .filter_map(|x| match x {
            Action::CollectSandbox { task_id, .. } => Some(task_id.to_string()),
            _ => None,
        })
        .collect()
}

/// Finishes `id` at `at` and has its end acknowledged: forgotten.
fn finish_and_forget(a: &mut Agent, id: &str, at: Time) {
    let task_id = TaskId::new(id).expect("id");
    std::iter::from_fn(|| a.poll_transmit()).for_each(drop);
    let update_id = finish(a, &task_id, at);
    a.handle_master_message(at, MasterToAgent::AcknowledgeUpdate { task_id, update_id });
}

#[test]
fn a_forgotten_tasks_directory_is_collected_on_the_core_clock() {
    let mut a = registered();
    a.set_sandbox_collection(std::time::Duration::from_secs(10), 2);
    for id in ["d1", "d2", "d3"] {
        launch_native(&mut a, id);
    }
    finish_and_forget(&mut a, "d1", t(100));
    assert_eq!(
        collected(&mut a),
        Vec::<String>::new(),
        "kept for the delay"
    );
    assert!(
        a.poll_timeout() <= Some(t(10_100)),
        "wakes for the collection"
    );
    a.handle_timeout(t(10_099));
    assert_eq!(collected(&mut a), Vec::<String>::new());
    a.handle_timeout(t(10_100));
    assert_eq!(collected(&mut a), ["d1"]);
    // Past the count the oldest goes at once.
    finish_and_forget(&mut a, "d2", t(10_200));
    finish_and_forget(&mut a, "d3", t(10_300));
    assert_eq!(collected(&mut a), Vec::<String>::new(), "two are allowed");
    launch_native(&mut a, "d4");
    finish_and_forget(&mut a, "d4", t(10_400));
    assert_eq!(collected(&mut a), ["d2"]);
    // An id launched again before its directory is due keeps it until the
    // new task is forgotten.
    launch_native(&mut a, "d3");
    a.handle_timeout(t(20_400));
    assert_eq!(collected(&mut a), ["d4"], "d3 runs again");
    finish_and_forget(&mut a, "d3", t(20_500));
    a.handle_timeout(t(30_500));
    assert_eq!(collected(&mut a), ["d3"]);
}

#[test]
fn directories_left_by_an_earlier_agent_are_collected_by_their_age() {
    let mut a = registered();
    a.set_sandbox_collection(std::time::Duration::from_secs(60), 100);
    let old = TaskId::new("old").expect("id");
    let young = TaskId::new("young").expect("id");
    a.handle_left_behind(
        t(1_000),
        [
            (fw(), old, std::time::Duration::from_secs(120)),
            (fw(), young, std::time::Duration::from_secs(30)),
        ],
    );
    assert_eq!(collected(&mut a), ["old"], "past its delay already");
    a.handle_timeout(t(30_999));
    assert_eq!(collected(&mut a), Vec::<String>::new());
    a.handle_timeout(t(31_000));
    assert_eq!(collected(&mut a), ["young"]);
}
