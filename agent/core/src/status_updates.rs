//! Status updates in flight: each task's updates go out in order, one at a
//! time; the head is resent with exponential backoff until the master relays
//! the scheduler's acknowledgement, and only then does the next one go out.
//! This is Mesos's status update manager, without the checkpoint (that is
//! the agent recovery's job).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use stoa_proto::{AgentToMaster, FrameworkId, TaskId, TaskStatus, Time, UpdateId};

const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Stream {
    framework_id: FrameworkId,
    queue: VecDeque<(UpdateId, TaskStatus)>,
    /// When the head is due again, and the wait after that.
    retry_at: Time,
    backoff: Duration,
}

#[derive(Debug, Default)]
pub(super) struct StatusUpdates {
    next_id: u64,
    streams: BTreeMap<(FrameworkId, TaskId), Stream>,
    /// The stream each head update belongs to: an acknowledgement names
    /// only the task and the update, and an agent may hold thousands of
    /// streams.
    heads: HashMap<UpdateId, (FrameworkId, TaskId)>,
    /// Every head by its retry time, so the next retry is found without
    /// visiting every stream (the agent asks at every turn of its loop).
    retries: BTreeSet<(Time, UpdateId)>,
}

impl StatusUpdates {
    /// Updates numbered from `first` up.
    pub fn starting_at(first: u64) -> Self {
        StatusUpdates {
            next_id: first,
            streams: BTreeMap::new(),
            heads: HashMap::new(),
            retries: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.streams.values().map(|s| s.queue.len()).sum()
    }

    pub fn has_pending(&self, fw: &FrameworkId, task: &TaskId) -> bool {
        self.streams.contains_key(&(fw.clone(), task.clone()))
    }

    /// Queues an update; returns the message to send if it is at the head.
    pub fn push(
        &mut self,
        now: Time,
        framework_id: FrameworkId,
        status: TaskStatus,
    ) -> Option<AgentToMaster> {
        self.next_id += 1;
        let id = UpdateId(self.next_id);
        let key = (framework_id.clone(), status.task_id.clone());
        let stream = self.streams.entry(key.clone()).or_insert_with(|| Stream {
            framework_id,
            queue: VecDeque::new(),
            retry_at: now + FIRST_RETRY,
            backoff: FIRST_RETRY,
        });
        stream.queue.push_back((id, status));
        if stream.queue.len() > 1 {
            return None;
        }
        self.heads.insert(id, key);
        self.retries.insert((stream.retry_at, id));
        head(stream)
    }

    /// Pops the head if `update_id` names it; returns its framework and the
    /// next head to send, if any.
    pub fn acknowledge(
        &mut self,
        now: Time,
        task_id: &TaskId,
        update_id: UpdateId,
    ) -> Option<(FrameworkId, Option<AgentToMaster>)> {
        let key = self.heads.get(&update_id).filter(|(_, t)| t == task_id)?;
        let key = key.clone();
        self.heads.remove(&update_id);
        let stream = self.streams.get_mut(&key)?;
        self.retries.remove(&(stream.retry_at, update_id));
        stream.queue.pop_front();
        stream.retry_at = now + FIRST_RETRY;
        stream.backoff = FIRST_RETRY;
        let next = head(stream);
        let fw = stream.framework_id.clone();
        match stream.queue.front() {
            Some((next_id, _)) => {
                self.heads.insert(*next_id, key);
                self.retries.insert((stream.retry_at, *next_id));
            }
            None => {
                self.streams.remove(&key);
            }
        }
        Some((fw, next))
    }

    pub fn next_retry(&self) -> Option<Time> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// Heads whose retry time has come, with their backoff doubled.
    pub fn due(&mut self, now: Time) -> Vec<AgentToMaster> {
        let mut out = Vec::new();
        while let Some(&(at, id)) = self.retries.first()
            && at <= now
        {
            self.retries.pop_first();
            let Some(stream) = self.heads.get(&id).and_then(|k| self.streams.get_mut(k)) else {
                continue;
            };
            stream.backoff = (stream.backoff * 2).min(MAX_RETRY);
            stream.retry_at = now + stream.backoff;
            self.retries.insert((stream.retry_at, id));
            out.extend(head(stream));
        }
        out
    }

    /// Every head, now (after re-registering on a new connection).
    pub fn resend_all(&mut self, now: Time) -> Vec<AgentToMaster> {
        self.retries.clear();
        let mut out = Vec::new();
        for stream in self.streams.values_mut() {
            stream.retry_at = now + stream.backoff;
            if let Some((id, _)) = stream.queue.front() {
                self.retries.insert((stream.retry_at, *id));
            }
            out.extend(head(stream));
        }
        out
    }
}

fn head(stream: &Stream) -> Option<AgentToMaster> {
    stream
        .queue
        .front()
        .map(|(id, status)| AgentToMaster::StatusUpdate {
            framework_id: stream.framework_id.clone(),
            update_id: *id,
            status: status.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoa_proto::TaskState;

    fn id(msg: Option<AgentToMaster>) -> UpdateId {
        match msg {
            Some(AgentToMaster::StatusUpdate { update_id, .. }) => update_id,
            other => panic!("expected an update to send, got {other:?}"),
        }
    }

    #[test]
    fn an_acknowledgement_pops_only_the_head_it_names() {
        let now = Time::from_micros(0);
        let fw = FrameworkId::new("f").expect("id");
        let (a, b) = (TaskId::new("a").expect("id"), TaskId::new("b").expect("id"));
        let mut u = StatusUpdates::starting_at(0);
        let a1 = id(u.push(
            now,
            fw.clone(),
            TaskStatus::new(a.clone(), TaskState::Running),
        ));
        let b1 = id(u.push(
            now,
            fw.clone(),
            TaskStatus::new(b.clone(), TaskState::Running),
        ));
        // Queued behind a's head: not sent yet.
        assert!(
            u.push(
                now,
                fw.clone(),
                TaskStatus::new(a.clone(), TaskState::Finished)
            )
            .is_none()
        );
        // The wrong task, or an update that is not a head: ignored.
        assert!(u.acknowledge(now, &b, a1).is_none());
        assert!(u.acknowledge(now, &a, UpdateId(a1.0 + 2)).is_none());
        assert_eq!(u.len(), 3);
        // a's head goes; its next update is the one to send now.
        let (got_fw, next) = u.acknowledge(now, &a, a1).expect("a's head");
        assert_eq!(got_fw, fw);
        let a2 = id(next);
        assert!(u.acknowledge(now, &a, a1).is_none(), "acknowledged twice");
        assert!(
            u.acknowledge(now, &b, b1)
                .is_some_and(|(_, next)| next.is_none())
        );
        assert!(
            u.acknowledge(now, &a, a2)
                .is_some_and(|(_, next)| next.is_none())
        );
        assert_eq!(u.len(), 0);
        assert!(!u.has_pending(&fw, &a) && !u.has_pending(&fw, &b));
        assert_eq!(u.next_retry(), None);
    }

    #[test]
    fn heads_are_resent_with_backoff_and_an_acknowledged_one_no_more() {
        let at = |s: u64| Time::from_micros(s * 1_000_000);
        let fw = FrameworkId::new("f").expect("id");
        let (a, b) = (TaskId::new("a").expect("id"), TaskId::new("b").expect("id"));
        let mut u = StatusUpdates::starting_at(0);
        let a1 = id(u.push(
            at(0),
            fw.clone(),
            TaskStatus::new(a.clone(), TaskState::Running),
        ));
        let b1 = id(u.push(
            at(1),
            fw.clone(),
            TaskStatus::new(b.clone(), TaskState::Running),
        ));
        assert_eq!(u.next_retry(), Some(at(2)));
        assert!(u.due(at(1)).is_empty());
        // a's head is due at 2 s, then 4 s later; b's at 3 s.
        assert_eq!(id(u.due(at(2)).pop()), a1);
        assert_eq!(u.next_retry(), Some(at(3)));
        assert_eq!(id(u.due(at(3)).pop()), b1);
        assert_eq!(u.next_retry(), Some(at(6)));
        // a's end waits behind its unacknowledged head.
        let end = TaskStatus::new(a.clone(), TaskState::Finished);
        assert!(u.push(at(4), fw.clone(), end).is_none());
        // Acknowledged: a1 is resent no more; the end goes now, due 2 s on.
        let a2 = id(u.acknowledge(at(4), &a, a1).and_then(|(_, next)| next));
        assert!(u.due(at(5)).is_empty());
        assert_eq!(u.next_retry(), Some(at(6)));
        assert_eq!(id(u.due(at(6)).pop()), a2);
        // b's second retry waits twice as long as its first.
        assert_eq!(u.next_retry(), Some(at(7)));
        assert_eq!(id(u.due(at(7)).pop()), b1);
        // After a reconnect every head goes at once, each keeping its
        // backoff (a: 4 s, b: 8 s).
        assert_eq!(u.resend_all(at(8)).len(), 2);
        assert_eq!(u.next_retry(), Some(at(12)));
    }
}
