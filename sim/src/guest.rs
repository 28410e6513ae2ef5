//! Guest-SDK schedulers in the simulator: the code a scheduler component
//! runs, driven natively against the real master and agent cores. A
//! [`Guest`] turns the simulator's events into the SDK's types and the
//! calls the scheduler records into protocol calls.

use std::time::Duration;
use stoa_guest::scheduler::{self as guest, Recorded, Recorder, Scheduler};
use stoa_proto::{
    Artifact, Call, Digest, Event, Offer, OfferId, Operation, Resources, Sandbox, TaskId, TaskInfo,
    TaskKind, TaskLimits, TaskStatus, UpdateId,
};

/// What a framework asked for in answer to one event.
#[derive(Debug, Default)]
pub struct Reaction {
    pub calls: Vec<Call>,
    /// (the framework's timer id, after how long)
    pub timers: Vec<(u64, Duration)>,
    pub torn_down: bool,
}

/// A framework the simulator drives instead of its built-in scheduler.
pub trait Framework: std::fmt::Debug {
    fn event(&mut self, event: &Event) -> Reaction;
    fn timer(&mut self, id: u64) -> Reaction;
}

/// A guest-SDK scheduler and the recording driver it calls.
#[derive(Debug, Default)]
pub struct Guest<S> {
    pub scheduler: S,
    driver: Recorder,
}

impl<S: Scheduler + std::fmt::Debug> Guest<S> {
    pub fn new(scheduler: S) -> Guest<S> {
        Guest {
            scheduler,
            driver: Recorder::default(),
        }
    }

    fn react(&mut self) -> Reaction {
        let mut reaction = Reaction::default();
        for call in self.driver.take() {
            match call {
                Recorded::Accept {
                    offer_ids,
                    tasks,
                    group,
                    refuse_ms,
                } => {
                    let tasks: Vec<TaskInfo> = tasks.iter().filter_map(task_info).collect();
                    let operation = if group {
                        Operation::LaunchGroup { tasks }
                    } else {
                        Operation::Launch { tasks }
                    };
                    reaction.calls.push(Call::Accept {
                        offer_ids: offer_ids.into_iter().map(OfferId).collect(),
                        operations: vec![operation],
                        refuse_ms,
                    });
                }
                Recorded::Decline {
                    offer_ids,
                    refuse_ms,
                } => reaction.calls.push(Call::Decline {
                    offer_ids: offer_ids.into_iter().map(OfferId).collect(),
                    refuse_ms,
                }),
                Recorded::Kill(task) => {
                    if let Ok(task_id) = TaskId::new(task) {
                        reaction.calls.push(Call::Kill { task_id });
                    }
                }
                Recorded::Message(task, data) => {
                    if let Ok(task_id) = TaskId::new(task) {
                        reaction.calls.push(Call::Message { task_id, data });
                    }
                }
                Recorded::Revive => reaction.calls.push(Call::Revive),
                Recorded::Suppress => reaction.calls.push(Call::Suppress),
                Recorded::Reconcile(ids) => reaction.calls.push(Call::Reconcile {
                    tasks: ids
                        .into_iter()
                        .filter_map(|t| TaskId::new(t).ok())
                        .collect(),
                }),
                Recorded::Acknowledge {
                    agent_id,
                    task_id,
                    update_id,
                } => {
                    if let (Ok(agent_id), Ok(task_id)) =
                        (stoa_proto::AgentId::new(agent_id), TaskId::new(task_id))
                    {
                        reaction.calls.push(Call::Acknowledge {
                            agent_id,
                            task_id,
                            update_id: UpdateId(update_id),
                        });
                    }
                }
                Recorded::SetTimer { id, delay_ms } => {
                    reaction.timers.push((id, Duration::from_millis(delay_ms)))
                }
                // The simulator's timers are fired or not; a cancelled one
                // finds its framework no longer waiting for it.
                Recorded::CancelTimer(_) | Recorded::Log(..) => {}
                Recorded::Teardown => {
                    reaction.calls.push(Call::Teardown);
                    reaction.torn_down = true;
                }
            }
        }
        reaction
    }
}

impl<S: Scheduler + std::fmt::Debug> Framework for Guest<S> {
    fn event(&mut self, event: &Event) -> Reaction {
        let d = &mut self.driver;
        match event {
            Event::Subscribed { framework_id, .. } => {
                self.scheduler.subscribed(d, framework_id.as_str())
            }
            Event::Offers { offers } => {
                self.scheduler.offers(d, offers.iter().map(offer).collect())
            }
            Event::Update { status: s, ack } => {
                guest::deliver_update(&mut self.scheduler, d, &status(s, *ack))
            }
            Event::Rescind { offer_id } => self.scheduler.rescind(d, offer_id.0),
            Event::Failure { agent_id } => self.scheduler.failure(d, agent_id.as_str()),
            Event::Error { message, .. } => self.scheduler.error(d, message),
            Event::Message { from, data } => {
                let source = from.as_ref().map(|f| guest::MessageSource {
                    agent_id: f.agent_id.as_str().into(),
                    task_id: f.task_id.as_str().into(),
                });
                self.scheduler.message(d, source.as_ref(), data)
            }
            Event::Heartbeat | Event::Submitted { .. } | Event::Delivered => {}
        }
        self.react()
    }

    fn timer(&mut self, id: u64) -> Reaction {
        self.scheduler.timer(&mut self.driver, id);
        self.react()
    }
}

fn offer(o: &Offer) -> guest::Offer {
    use guest::{Offer as O, Scalar as S};
    stoa_proto::wit_offer!(o, O, S)
}

fn status(s: &TaskStatus, ack: Option<UpdateId>) -> guest::TaskStatus {
    use guest::{TaskState as St, TaskStatus as T};
    stoa_proto::wit_task_status!(s, ack, T, St)
}

/// A task spec as the master takes it; `None` for one the simulator
/// cannot express (the real host reports those as TASK_ERROR).
fn task_info(spec: &guest::TaskSpec) -> Option<TaskInfo> {
    let amounts = spec.resources.iter().map(|s| (s.name.as_str(), s.value));
    let resources = Resources::from_amounts(amounts).ok()?;
    let kind = match &spec.program {
        guest::Program::Wasm(w) | guest::Program::WasmEphemeral(w) => {
            let digest = w.artifact.parse::<Digest>().unwrap_or(Digest([0; 32]));
            let sandbox = match spec.program {
                guest::Program::WasmEphemeral(_) => Sandbox::Ephemeral,
                _ => Sandbox::Directory,
            };
            TaskKind::Wasm(stoa_proto::wasm_from_wit!(
                w,
                Artifact::Stored(digest),
                sandbox
            ))
        }
        guest::Program::Command(c) => TaskKind::Command(stoa_proto::command_from_wit!(c)),
    };
    Some(TaskInfo {
        task_id: TaskId::new(spec.id.clone()).ok()?,
        name: spec.name.clone(),
        resources,
        kind,
        limits: TaskLimits {
            fuel: spec.fuel,
            timeout_ms: spec.timeout_ms,
        },
    })
}
