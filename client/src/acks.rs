//! Acknowledgements gathered over a burst of events and sent as one call
//! per task: what the client's driver does with every acknowledgement,
//! implicit or made by the scheduler.
//!
//! An acknowledgement covers every earlier update of its task: the agent
//! stops resending all of them. A scheduler that reads a short task's
//! RUNNING and its end in one burst need only acknowledge the end, which
//! halves the calls it makes and the messages the master passes on to
//! the agent.

use std::collections::HashMap;
use stoa_proto::{AgentId, Call, TaskId, TaskStatus, UpdateId};

/// The latest update to acknowledge of each task, in the order the tasks
/// were first seen.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    latest: HashMap<TaskId, usize>,
    acks: Vec<(AgentId, TaskId, UpdateId)>,
}

impl PendingAcks {
    /// Notes an update delivered with `ack`. Updates that need no
    /// acknowledgement (reconciliation answers, the master's own) are
    /// ignored.
    pub fn note(&mut self, status: &TaskStatus, ack: Option<UpdateId>) {
        if let (Some(update_id), Some(agent_id)) = (ack, &status.agent_id) {
            self.add(agent_id.clone(), status.task_id.clone(), update_id);
        }
    }

    /// Notes an acknowledgement. Agents number their updates in order, so
    /// the task's highest pending id covers the others and is the one kept.
    pub fn add(&mut self, agent_id: AgentId, task_id: TaskId, update_id: UpdateId) {
        match self.latest.get(&task_id) {
            Some(&i) => {
                if update_id.0 >= self.acks[i].2.0 {
                    self.acks[i] = (agent_id, task_id, update_id);
                }
            }
            None => {
                self.latest.insert(task_id.clone(), self.acks.len());
                self.acks.push((agent_id, task_id, update_id));
            }
        }
    }

    /// The ACKNOWLEDGE calls to send, leaving none pending.
    pub fn take(&mut self) -> impl Iterator<Item = Call> + use<> {
        self.latest.clear();
        std::mem::take(&mut self.acks)
            .into_iter()
            .map(|(agent_id, task_id, update_id)| Call::Acknowledge {
                agent_id,
                task_id,
                update_id,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::TaskState;

    fn update(task: &str, state: TaskState) -> anyhow::Result<TaskStatus> {
        let mut status = TaskStatus::new(TaskId::new(task)?, state);
        status.agent_id = Some(AgentId::new("a1")?);
        Ok(status)
    }

    fn acked(calls: impl Iterator<Item = Call>) -> Vec<(String, u64)> {
        calls
            .map(|call| match call {
                Call::Acknowledge {
                    task_id, update_id, ..
                } => (task_id.to_string(), update_id.0),
                other => panic!("not an acknowledgement: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_tasks_later_update_replaces_its_earlier_one() -> anyhow::Result<()> {
        let mut acks = PendingAcks::default();
        acks.note(&update("t1", TaskState::Running)?, Some(UpdateId(1)));
        acks.note(&update("t2", TaskState::Running)?, Some(UpdateId(2)));
        acks.note(&update("t1", TaskState::Finished)?, Some(UpdateId(3)));
        // Needs no acknowledgement: left out.
        acks.note(&update("t3", TaskState::Lost)?, None);
        assert_eq!(
            acked(acks.take()),
            [("t1".to_string(), 3), ("t2".to_string(), 2)]
        );
        assert!(acks.take().next().is_none(), "all taken");
        acks.note(&update("t1", TaskState::Running)?, Some(UpdateId(4)));
        assert_eq!(acked(acks.take()), [("t1".to_string(), 4)]);
        // Acknowledged out of order: the higher id still covers both.
        let (a1, t1) = (AgentId::new("a1")?, TaskId::new("t1")?);
        acks.add(a1.clone(), t1.clone(), UpdateId(9));
        acks.add(a1, t1, UpdateId(8));
        assert_eq!(acked(acks.take()), [("t1".to_string(), 9)]);
        Ok(())
    }
}
