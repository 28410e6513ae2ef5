//! Status updates in flight. Each task's updates go out in order as they
//! happen and stay queued until the master relays the scheduler's
//! acknowledgement; until then the queue is resent, in order, with
//! exponential backoff. An acknowledgement covers the update it names and
//! every earlier one of the same task. This is Mesos's status update
//! manager, without the checkpoint (that is the agent recovery's job), and
//! with one difference:
//!
//! Mesos sends only a task's oldest unacknowledged update and holds the
//! next until that one is acknowledged. The link to the master delivers in
//! order, so sending at once loses nothing, and it spares a short task's
//! end the round trip of its RUNNING's acknowledgement (a fifth of its
//! turnaround; docs/benchmarks.md). The master acknowledges by itself a
//! resent non-terminal update of a task it knows has ended, so a scheduler
//! never sees RUNNING after the end.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use stoa_proto::{AgentToMaster, FrameworkId, TaskId, TaskStatus, Time, UpdateId};

const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);

type Key = (FrameworkId, TaskId);

#[derive(Debug)]
struct Stream {
    framework_id: FrameworkId,
    /// Never empty: a stream goes once its last update is acknowledged.
    queue: VecDeque<(UpdateId, TaskStatus)>,
    /// When the queue is due again, and the wait after that.
    retry_at: Time,
    backoff: Duration,
}

impl Stream {
    fn oldest(&self) -> Option<UpdateId> {
        self.queue.front().map(|(id, _)| *id)
    }

    /// Every queued update, to send again now; the next retry goes into
    /// `retries` one backoff later.
    fn resend(
        &mut self,
        now: Time,
        retries: &mut BTreeSet<(Time, UpdateId)>,
    ) -> impl Iterator<Item = AgentToMaster> + '_ {
        self.retry_at = now + self.backoff;
        if let Some(oldest) = self.oldest() {
            retries.insert((self.retry_at, oldest));
        }
        self.queue
            .iter()
            .map(|(id, status)| message(&self.framework_id, *id, status.clone()))
    }
}

#[derive(Debug, Default)]
pub(super) struct StatusUpdates {
    next_id: u64,
    streams: BTreeMap<Key, Stream>,
    /// The stream of every queued update: an acknowledgement names only the
    /// task and the update, and an agent may hold thousands of streams.
    owners: HashMap<UpdateId, Key>,
    /// Every stream by its retry time (and its oldest update), so the next
    /// retry is found without visiting every stream (the agent asks at
    /// every turn of its loop).
    retries: BTreeSet<(Time, UpdateId)>,
}

impl StatusUpdates {
    /// Updates numbered from `first` up.
    pub fn starting_at(first: u64) -> Self {
        StatusUpdates {
            next_id: first,
            ..StatusUpdates::default()
        }
    }

    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Drops every queued update (they belong to an identity the agent no
    /// longer has); numbering goes on from where it was.
    pub fn clear(&mut self) {
        *self = StatusUpdates::starting_at(self.next_id);
    }

    pub fn has_pending(&self, fw: &FrameworkId, task: &TaskId) -> bool {
        self.streams.contains_key(&(fw.clone(), task.clone()))
    }

    /// Queues an update; returns the message that sends it now.
    pub fn push(
        &mut self,
        now: Time,
        framework_id: FrameworkId,
        status: TaskStatus,
    ) -> AgentToMaster {
        self.next_id += 1;
        let id = UpdateId(self.next_id);
        let key = (framework_id.clone(), status.task_id.clone());
        let stream = self.streams.entry(key.clone()).or_insert_with(|| Stream {
            framework_id,
            queue: VecDeque::new(),
            retry_at: now + FIRST_RETRY,
            backoff: FIRST_RETRY,
        });
        if stream.queue.is_empty() {
            self.retries.insert((stream.retry_at, id));
        }
        stream.queue.push_back((id, status.clone()));
        let msg = message(&stream.framework_id, id, status);
        self.owners.insert(id, key);
        msg
    }

    /// Drops `update_id` and every earlier update of its task; returns the
    /// task's framework, or `None` if no such update is queued.
    pub fn acknowledge(
        &mut self,
        now: Time,
        task_id: &TaskId,
        update_id: UpdateId,
    ) -> Option<FrameworkId> {
        let key = self
            .owners
            .get(&update_id)
            .filter(|(_, t)| t == task_id)?
            .clone();
        let stream = self.streams.get_mut(&key)?;
        if let Some(oldest) = stream.oldest() {
            self.retries.remove(&(stream.retry_at, oldest));
        }
        while let Some((id, _)) = stream.queue.pop_front() {
            self.owners.remove(&id);
            if id == update_id {
                break;
            }
        }
        stream.retry_at = now + FIRST_RETRY;
        stream.backoff = FIRST_RETRY;
        let framework_id = stream.framework_id.clone();
        match stream.oldest() {
            Some(oldest) => {
                self.retries.insert((stream.retry_at, oldest));
            }
            None => {
                self.streams.remove(&key);
            }
        }
        Some(framework_id)
    }

    pub fn next_retry(&self) -> Option<Time> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// The queues whose retry time has come, in order, with their backoff
    /// doubled.
    pub fn due(&mut self, now: Time) -> Vec<AgentToMaster> {
        let mut out = Vec::new();
        while let Some(&(at, oldest)) = self.retries.first()
            && at <= now
        {
            self.retries.pop_first();
            let Some(stream) = self
                .owners
                .get(&oldest)
                .and_then(|key| self.streams.get_mut(key))
            else {
                continue;
            };
            stream.backoff = (stream.backoff * 2).min(MAX_RETRY);
            out.extend(stream.resend(now, &mut self.retries));
        }
        out
    }

    /// Everything queued, now (after re-registering on a new connection).
    pub fn resend_all(&mut self, now: Time) -> Vec<AgentToMaster> {
        self.retries.clear();
        let mut out = Vec::new();
        for stream in self.streams.values_mut() {
            out.extend(stream.resend(now, &mut self.retries));
        }
        out
    }
}

fn message(framework_id: &FrameworkId, update_id: UpdateId, status: TaskStatus) -> AgentToMaster {
    AgentToMaster::StatusUpdate {
        framework_id: framework_id.clone(),
        update_id,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::TaskState;

    fn id(msg: &AgentToMaster) -> UpdateId {
        match msg {
            AgentToMaster::StatusUpdate { update_id, .. } => *update_id,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    fn ids(msgs: &[AgentToMaster]) -> Vec<UpdateId> {
        msgs.iter().map(id).collect()
    }

    fn at(s: u64) -> Time {
        Time::from_micros(s * 1_000_000)
    }

    fn status(task: &TaskId, state: TaskState) -> TaskStatus {
        TaskStatus::new(task.clone(), state)
    }

    #[test]
    fn an_acknowledgement_covers_its_update_and_the_earlier_ones_of_its_task() {
        let fw = FrameworkId::new("f").expect("id");
        let (a, b) = (TaskId::new("a").expect("id"), TaskId::new("b").expect("id"));
        let mut u = StatusUpdates::starting_at(0);
        let a1 = id(&u.push(at(0), fw.clone(), status(&a, TaskState::Running)));
        let b1 = id(&u.push(at(0), fw.clone(), status(&b, TaskState::Running)));
        // Sent at once, not held behind a1.
        let a2 = id(&u.push(at(0), fw.clone(), status(&a, TaskState::Finished)));
        // An update of another task, or one not queued: nothing.
        assert!(u.acknowledge(at(0), &b, a1).is_none());
        assert!(u.acknowledge(at(0), &a, UpdateId(a2.0 + 10)).is_none());
        assert_eq!(u.len(), 3);
        // a2 acknowledged (a1 never was): both go.
        assert_eq!(u.acknowledge(at(0), &a, a2), Some(fw.clone()));
        assert!(!u.has_pending(&fw, &a));
        assert!(u.acknowledge(at(0), &a, a1).is_none(), "already covered");
        assert_eq!(u.acknowledge(at(0), &b, b1), Some(fw.clone()));
        assert_eq!(u.len(), 0);
        assert_eq!(u.next_retry(), None);
    }

    #[test]
    fn queues_are_resent_in_order_with_backoff_until_acknowledged() {
        let fw = FrameworkId::new("f").expect("id");
        let (a, b) = (TaskId::new("a").expect("id"), TaskId::new("b").expect("id"));
        let mut u = StatusUpdates::starting_at(0);
        let a1 = id(&u.push(at(0), fw.clone(), status(&a, TaskState::Running)));
        let a2 = id(&u.push(at(0), fw.clone(), status(&a, TaskState::Finished)));
        let b1 = id(&u.push(at(1), fw.clone(), status(&b, TaskState::Running)));
        assert_eq!(u.next_retry(), Some(at(2)));
        assert!(u.due(at(1)).is_empty());
        // a's whole queue, in order, at 2 s; then again 4 s later.
        assert_eq!(ids(&u.due(at(2))), vec![a1, a2]);
        assert_eq!(u.next_retry(), Some(at(3)));
        assert_eq!(ids(&u.due(at(3))), vec![b1]);
        assert_eq!(u.next_retry(), Some(at(6)));
        // a1 acknowledged: a2 is still resent, 2 s after the acknowledgement.
        assert!(u.acknowledge(at(5), &a, a1).is_some());
        assert_eq!(u.next_retry(), Some(at(7)));
        let due: Vec<_> = ids(&u.due(at(7)));
        assert_eq!(due.len(), 2);
        assert!(due.contains(&a2) && due.contains(&b1));
        // After a reconnect everything goes at once, each queue keeping its
        // backoff (a: 4 s, b: 8 s).
        assert_eq!(ids(&u.resend_all(at(8))), vec![a2, b1]);
        assert_eq!(u.next_retry(), Some(at(12)));
    }
}
