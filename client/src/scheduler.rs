//! Hosting a scheduler: [`run`] subscribes, hands every event to a
//! [`Scheduler`], sends the calls it made, keeps its timers, and fails over
//! to a new connection (same framework id) when the old one is lost.
//!
//! The same trait serves a native Rust scheduler and a wasm scheduler
//! component (the agent's component host implements it), and the simulator
//! drives it without any network.

use crate::acks::PendingAcks;
use crate::{ClientConfig, SchedulerSession};
use anyhow::bail;
use std::collections::BTreeMap;
use std::time::Duration;
use stoa_proto::{
    AgentId, Call, Event, FrameworkId, FrameworkInfo, MessageSource, Offer, OfferId, Operation,
    TaskId, TaskInfo, TaskStatus, UpdateId,
};
use tokio::time::Instant;

/// A framework's scheduler: decides which offers to use and reacts to its
/// tasks' states. Every handler may make calls through `calls`; they are
/// sent when the handler returns.
pub trait Scheduler {
    /// SUBSCRIBED: first, and again after each failover.
    fn subscribed(&mut self, calls: &mut Calls, framework_id: &FrameworkId) {
        let _ = (calls, framework_id);
    }
    fn offers(&mut self, calls: &mut Calls, offers: Vec<Offer>);
    /// A task's state. With implicit acknowledgements (the default) the
    /// driver acknowledges it once this returns.
    fn update(&mut self, calls: &mut Calls, status: &TaskStatus, ack: Option<UpdateId>);
    fn rescind(&mut self, calls: &mut Calls, offer_id: OfferId) {
        let _ = (calls, offer_id);
    }
    /// An agent was lost; updates for its tasks follow.
    fn failure(&mut self, calls: &mut Calls, agent_id: &AgentId) {
        let _ = (calls, agent_id);
    }
    /// A timer set with [`Calls::set_timer`] fired.
    fn timer(&mut self, calls: &mut Calls, id: u64) {
        let _ = (calls, id);
    }
    /// The master refused a call.
    fn error(&mut self, calls: &mut Calls, message: &str) {
        let _ = (calls, message);
    }
    /// Bytes sent to the framework: by one of its tasks (`from`), or from
    /// outside (`stoa framework message`, `from` is `None`).
    fn message(&mut self, calls: &mut Calls, from: Option<&MessageSource>, data: &[u8]) {
        let _ = (calls, from, data);
    }
}

/// What a handler asks for: calls to the master, timers, the end.
#[derive(Debug, Default)]
pub struct Calls {
    calls: Vec<Call>,
    set: Vec<(u64, Duration)>,
    cancelled: Vec<u64>,
    next_timer: u64,
    done: bool,
    /// Acknowledgements, one per task, sent before the other calls.
    acks: PendingAcks,
}

impl Calls {
    pub fn call(&mut self, call: Call) {
        self.calls.push(call);
    }

    /// ACCEPT `offer_ids` (one agent's) launching `tasks`; what is left is
    /// not offered again for `refuse_ms` (the master's default if `None`).
    pub fn launch(
        &mut self,
        offer_ids: Vec<OfferId>,
        tasks: Vec<TaskInfo>,
        refuse_ms: Option<u64>,
    ) {
        self.accept(offer_ids, vec![Operation::Launch { tasks }], refuse_ms);
    }

    /// ACCEPT launching `tasks` all together or not at all.
    pub fn launch_group(
        &mut self,
        offer_ids: Vec<OfferId>,
        tasks: Vec<TaskInfo>,
        refuse_ms: Option<u64>,
    ) {
        self.accept(offer_ids, vec![Operation::LaunchGroup { tasks }], refuse_ms);
    }

    pub fn accept(
        &mut self,
        offer_ids: Vec<OfferId>,
        operations: Vec<Operation>,
        refuse_ms: Option<u64>,
    ) {
        self.call(Call::Accept {
            offer_ids,
            operations,
            refuse_ms,
        });
    }

    pub fn decline(&mut self, offer_ids: Vec<OfferId>, refuse_ms: Option<u64>) {
        self.call(Call::Decline {
            offer_ids,
            refuse_ms,
        });
    }

    pub fn kill(&mut self, task_id: TaskId) {
        self.call(Call::Kill { task_id });
    }

    /// MESSAGE: `data` for a running task's inbox. Best effort; a task
    /// that cannot get it comes back as [`Scheduler::error`].
    pub fn message(&mut self, task_id: TaskId, data: Vec<u8>) {
        self.call(Call::Message { task_id, data });
    }

    /// ACKNOWLEDGE an update. Several of one task's made before the calls
    /// go out are sent as one: the latest covers the earlier ones.
    pub fn acknowledge(&mut self, agent_id: AgentId, task_id: TaskId, update_id: UpdateId) {
        self.acks.add(agent_id, task_id, update_id);
    }

    /// Fires [`Scheduler::timer`] with the returned id after `delay`.
    pub fn set_timer(&mut self, delay: Duration) -> u64 {
        self.next_timer += 1;
        self.set.push((self.next_timer, delay));
        self.next_timer
    }

    pub fn cancel_timer(&mut self, id: u64) {
        self.cancelled.push(id);
    }

    /// Ends the framework (its tasks are killed) and stops the driver.
    pub fn teardown(&mut self) {
        self.call(Call::Teardown);
        self.done = true;
    }

    /// Stops the driver without ending the framework: its tasks run on
    /// until its failover timeout, for another scheduler to take over.
    pub fn exit(&mut self) {
        self.done = true;
    }

    /// The calls made so far, leaving none (for hosts without a network,
    /// such as the simulator).
    pub fn take_calls(&mut self) -> Vec<Call> {
        let mut calls: Vec<Call> = self.acks.take().collect();
        calls.append(&mut self.calls);
        calls
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// How [`run`] drives a scheduler.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Acknowledge each update once [`Scheduler::update`] returns. Off for
    /// schedulers that acknowledge themselves.
    pub implicit_acks: bool,
    /// Give up reconnecting after this long without a master.
    pub reconnect_for: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            implicit_acks: true,
            reconnect_for: Duration::from_secs(60),
        }
    }
}

/// How many heartbeat intervals of silence mean the master is gone.
const MISSED_HEARTBEATS: u32 = 5;

/// Runs `scheduler` as framework `info` until it tears down or exits.
/// A lost connection is retried (with the framework id, so the framework
/// and its tasks carry over) for [`DriverOptions::reconnect_for`]. Returns
/// the framework id.
pub async fn run(
    config: &ClientConfig,
    info: FrameworkInfo,
    scheduler: &mut dyn Scheduler,
    options: DriverOptions,
) -> anyhow::Result<FrameworkId> {
    run_until(config, info, scheduler, options, std::future::pending()).await
}

/// [`run`], until `stop` completes too (Ctrl-C): then the connection is
/// closed at once, so the master sees the scheduler leave without waiting
/// for a timeout, and the framework fails over or, with no failover
/// timeout, ends. Errs if `stop` came before the first SUBSCRIBED.
pub async fn run_until(
    config: &ClientConfig,
    mut info: FrameworkInfo,
    scheduler: &mut dyn Scheduler,
    options: DriverOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<FrameworkId> {
    tokio::pin!(stop);
    let mut calls = Calls::default();
    let mut timers: BTreeMap<u64, Instant> = BTreeMap::new();
    loop {
        let failing_over = info.id.is_some();
        let mut session = tokio::select! {
            session = connect(config, &info, &options) => session?,
            () = &mut stop => match info.id {
                Some(id) => return Ok(id),
                None => bail!("stopped before the master answered"),
            },
        };
        let framework_id = session.framework_id().clone();
        info.id = Some(framework_id.clone());
        tracing::info!(framework = %framework_id, "subscribed");
        scheduler.subscribed(&mut calls, &framework_id);
        if failing_over {
            // Tasks may have changed state while no scheduler listened:
            // ask for the state of every task (implicit reconciliation).
            calls.call(Call::Reconcile { tasks: Vec::new() });
        }
        let mut silence = Duration::from_secs(30);
        loop {
            if !flush(&mut session, &mut calls, &mut timers).await {
                break;
            }
            if calls.done {
                session.finish().await;
                return Ok(framework_id);
            }
            let next_timer = timers.values().min().copied();
            let event = tokio::select! {
                event = tokio::time::timeout(silence, session.next_event()) => event,
                () = &mut stop => {
                    session.finish().await;
                    return Ok(framework_id);
                }
                () = crate::sleep_until(next_timer) => {
                    let now = Instant::now();
                    let due: Vec<u64> = timers.iter().filter(|(_, t)| **t <= now).map(|(id, _)| *id).collect();
                    for id in due {
                        timers.remove(&id);
                        scheduler.timer(&mut calls, id);
                    }
                    continue;
                }
            };
            let mut event = match event {
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => {
                    tracing::warn!("the master closed the connection; subscribing again");
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "lost the master; subscribing again"
                    );
                    break;
                }
                Err(_) => {
                    tracing::warn!(?silence, "no word from the master; subscribing again");
                    break;
                }
            };
            // Every event that has already arrived (up to a bound, so a
            // steady stream cannot hold the calls back) is handled before
            // the calls go out: a burst is answered in one write, and a
            // task's updates in it with one acknowledgement.
            let lost = loop {
                handle(
                    event,
                    &framework_id,
                    scheduler,
                    &mut calls,
                    &options,
                    &mut silence,
                )?;
                match session.ready_event() {
                    Ok(Some(next)) => event = next,
                    Ok(None) => break false,
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "subscribing again");
                        break true;
                    }
                }
            };
            if lost {
                break;
            }
        }
    }
}

/// Hands one event to the scheduler. Errs when the framework was taken
/// over by another scheduler.
fn handle(
    event: Event,
    framework_id: &FrameworkId,
    scheduler: &mut dyn Scheduler,
    calls: &mut Calls,
    options: &DriverOptions,
    silence: &mut Duration,
) -> anyhow::Result<()> {
    match event {
        Event::Subscribed {
            heartbeat_interval_ms,
            framework_id: _,
        } => {
            *silence = Duration::from_millis(heartbeat_interval_ms) * MISSED_HEARTBEATS;
        }
        Event::Heartbeat => {}
        Event::Offers { offers } => scheduler.offers(calls, offers),
        Event::Rescind { offer_id } => scheduler.rescind(calls, offer_id),
        Event::Update { status, ack } => {
            scheduler.update(calls, &status, ack);
            if options.implicit_acks {
                calls.acks.note(&status, ack);
            }
        }
        Event::Failure { agent_id } => scheduler.failure(calls, &agent_id),
        Event::Message { from, data } => scheduler.message(calls, from.as_ref(), &data),
        Event::Submitted { .. } | Event::Delivered => {
            tracing::warn!(
                "ignoring an answer to SUBMIT or SEND_MESSAGE on a subscribed connection"
            );
        }
        Event::Error { code, message } => {
            if code == stoa_proto::Refusal::FailedOver {
                bail!("another scheduler took framework {framework_id} over");
            }
            scheduler.error(calls, &message);
        }
    }
    Ok(())
}

/// Subscribes, retrying with backoff while the master is unreachable.
async fn connect(
    config: &ClientConfig,
    info: &FrameworkInfo,
    options: &DriverOptions,
) -> anyhow::Result<SchedulerSession> {
    let give_up = Instant::now() + options.reconnect_for;
    let mut delays = stoa_transport::reconnect_delays();
    loop {
        match SchedulerSession::subscribe(config, info.clone()).await {
            Ok(session) => return Ok(session),
            // A refusal is final; only an unreachable master is retried.
            Err(e) if e.downcast_ref::<crate::Refused>().is_some() => return Err(e),
            Err(e) => {
                let backoff = delays.next().unwrap_or(Duration::from_secs(5));
                if Instant::now() + backoff > give_up {
                    return Err(e);
                }
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "cannot subscribe");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// Sends what the handlers asked for; false if the connection broke.
async fn flush(
    session: &mut SchedulerSession,
    calls: &mut Calls,
    timers: &mut BTreeMap<u64, Instant>,
) -> bool {
    let now = Instant::now();
    for (id, delay) in calls.set.drain(..) {
        timers.insert(id, now + delay);
    }
    for id in calls.cancelled.drain(..) {
        timers.remove(&id);
    }
    // The master closes the connection once the framework is gone: a call
    // after TEARDOWN can only fail, and failing here would send the driver
    // back to subscribe to a torn-down framework.
    let mut pending = calls.take_calls();
    if let Some(i) = pending.iter().position(|c| matches!(c, Call::Teardown)) {
        pending.truncate(i + 1);
    }
    if let Err(e) = session.calls(pending).await {
        tracing::warn!(error = format!("{e:#}"), "cannot send a call");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_go_out_once_per_task_and_before_the_other_calls() -> anyhow::Result<()> {
        let (agent, t1, t2) = (AgentId::new("a1")?, TaskId::new("t1")?, TaskId::new("t2")?);
        let mut calls = Calls::default();
        calls.acknowledge(agent.clone(), t1.clone(), UpdateId(1));
        calls.kill(t2.clone());
        calls.acknowledge(agent.clone(), t2.clone(), UpdateId(2));
        calls.acknowledge(agent.clone(), t1.clone(), UpdateId(3));
        calls.teardown();
        let ack = |task_id: &TaskId, update_id| Call::Acknowledge {
            agent_id: agent.clone(),
            task_id: task_id.clone(),
            update_id: UpdateId(update_id),
        };
        assert_eq!(
            calls.take_calls(),
            [
                ack(&t1, 3),
                ack(&t2, 2),
                Call::Kill { task_id: t2 },
                Call::Teardown
            ]
        );
        assert!(calls.take_calls().is_empty());
        Ok(())
    }
}
