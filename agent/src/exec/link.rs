//! An executor's connection to its agent, as its tasks see it: each task's
//! latest event, and the socket to report it on.
//!
//! A task writes its events to the agent itself, under one lock,
//! rather than handing them to the executor's loop: the hand-over woke a
//! second thread for every event, which showed as a tenth of a launch's
//! latency. The lock keeps frames whole and makes a new connection's
//! hello, which carries every task's latest event, exact: an event is
//! either in the hello or sent after it.

use std::collections::HashMap;
use std::io::{ErrorKind, Write as _};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stoa_proto::TaskId;
use stoa_proto::executor::{ExecutorToAgent, TaskEvent};
use stoa_proto::framing;

/// How long a write may wait for an agent that does not read before the
/// connection is given up (the agent then reconnects and is told
/// everything again).
const STALLED: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct AgentLink {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The connection's generation and socket (the same socket the loop
    /// reads from; it is non-blocking, so writes wait with `poll`).
    agent: Option<(u64, UnixStream)>,
    last: HashMap<TaskId, TaskEvent>,
}

impl AgentLink {
    /// Records a task's event and sends it, if an agent is connected.
    pub fn report(&self, task_id: TaskId, event: TaskEvent) {
        let mut inner = self.lock();
        inner.last.insert(task_id.clone(), event.clone());
        inner.send(&ExecutorToAgent::Event { task_id, event });
    }

    /// Reports a task's RUNNING and its end in one write: a short task
    /// ends before its RUNNING would have gone out, and a write is a
    /// system call here and a wake-up of the agent there.
    pub fn report_running_and_end(&self, task_id: TaskId, end: TaskEvent) {
        let running = ExecutorToAgent::Event {
            task_id: task_id.clone(),
            event: TaskEvent::Running,
        };
        let mut inner = self.lock();
        inner.last.insert(task_id.clone(), end.clone());
        let ended = ExecutorToAgent::Event {
            task_id,
            event: end,
        };
        inner.send_all(&[running, ended]);
    }

    /// Sends a message other than a task's event; false if no agent got it.
    pub fn send(&self, msg: &ExecutorToAgent) -> bool {
        self.lock().send(msg)
    }

    /// Makes `stream` the agent's connection, first sending it `hello`
    /// made from every task's latest event. False if that failed.
    pub fn attach(
        &self,
        generation: u64,
        stream: UnixStream,
        hello: impl FnOnce(&HashMap<TaskId, TaskEvent>) -> ExecutorToAgent,
    ) -> bool {
        let mut inner = self.lock();
        let msg = hello(&inner.last);
        inner.agent = Some((generation, stream));
        inner.send(&msg)
    }

    /// Forgets the connection of `generation`, if it is still the current one.
    pub fn detach(&self, generation: u64) {
        let mut inner = self.lock();
        if inner.agent.as_ref().is_some_and(|(g, _)| *g == generation) {
            inner.agent = None;
        }
    }

    pub fn is_attached(&self) -> bool {
        self.lock().agent.is_some()
    }

    pub fn last(&self, task_id: &TaskId) -> Option<TaskEvent> {
        self.lock().last.get(task_id).cloned()
    }

    pub fn forget(&self, task_id: &TaskId) {
        self.lock().last.remove(task_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves whole data behind: every
        // change under it is a single insert or assignment.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn send(&mut self, msg: &ExecutorToAgent) -> bool {
        self.send_all(std::slice::from_ref(msg))
    }

    /// Sends `msgs` in one write.
    fn send_all(&mut self, msgs: &[ExecutorToAgent]) -> bool {
        let Some((_, stream)) = &self.agent else {
            return false;
        };
        let sent = msgs
            .iter()
            .try_fold(Vec::new(), |out, msg| framing::encode_into(msg, out))
            .map_err(std::io::Error::other)
            .and_then(|frames| write_all(stream, &frames));
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot write to the agent; dropping the connection");
            // The loop's reader sees the end, and the agent reconnects.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            self.agent = None;
            return false;
        }
        true
    }
}

/// Writes all of `bytes` to a non-blocking socket, waiting while it is
/// full, for at most [`STALLED`].
fn write_all(mut stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd as _;
    let give_up = Instant::now() + STALLED;
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(
                        ErrorKind::TimedOut,
                        format!("the agent read nothing for {STALLED:?}"),
                    ));
                }
                let wait = PollTimeout::try_from(left.min(Duration::from_secs(1)))
                    .unwrap_or(PollTimeout::MAX);
                let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, wait) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use stoa_proto::{Reason, TaskState};

    fn read_frame(stream: &mut UnixStream) -> ExecutorToAgent {
        let mut header = [0u8; framing::HEADER_LEN];
        stream.read_exact(&mut header).expect("header");
        let len = framing::body_len(header, framing::MAX_FRAME_LEN).expect("length");
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).expect("body");
        framing::decode_body(&body).expect("frame")
    }

    #[test]
    fn events_are_kept_and_a_new_agent_hears_them_in_its_hello() {
        let link = AgentLink::default();
        let t1 = TaskId::new("t1").expect("id");
        // No agent: kept, not sent.
        link.report(t1.clone(), TaskEvent::Running);
        assert_eq!(link.last(&t1), Some(TaskEvent::Running));

        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("non-blocking");
        let hello = |last: &HashMap<TaskId, TaskEvent>| ExecutorToAgent::Undelivered {
            task_id: TaskId::new("hello").expect("id"),
            message: format!("{} known", last.len()),
        };
        assert!(link.attach(1, ours, hello));
        match read_frame(&mut theirs) {
            ExecutorToAgent::Undelivered { message, .. } => assert_eq!(message, "1 known"),
            other => panic!("expected the hello, got {other:?}"),
        }
        let end = TaskEvent::ended(TaskState::Failed, Reason::TaskFailed, "no");
        link.report(t1.clone(), end.clone());
        match read_frame(&mut theirs) {
            ExecutorToAgent::Event { task_id, event } => {
                assert_eq!((task_id, event), (t1.clone(), end))
            }
            other => panic!("expected the event, got {other:?}"),
        }
        // An older connection's end does not drop the current one.
        link.detach(0);
        assert!(link.is_attached());
        link.forget(&t1);
        assert_eq!(link.last(&t1), None);
    }

    #[test]
    fn running_and_end_go_out_together_and_the_end_is_kept() {
        let link = AgentLink::default();
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("non-blocking");
        assert!(link.attach(1, ours, |_| ExecutorToAgent::Undelivered {
            task_id: TaskId::new("h").expect("id"),
            message: String::new(),
        }));
        read_frame(&mut theirs);
        let t = TaskId::new("t").expect("id");
        let end = TaskEvent::Finished {
            output: b"done".to_vec(),
            exit_code: None,
        };
        link.report_running_and_end(t.clone(), end.clone());
        let events: Vec<_> = (0..2)
            .map(|_| match read_frame(&mut theirs) {
                ExecutorToAgent::Event { task_id, event } if task_id == t => event,
                other => panic!("expected an event of t, got {other:?}"),
            })
            .collect();
        assert_eq!(events, vec![TaskEvent::Running, end.clone()]);
        assert_eq!(link.last(&t), Some(end), "a new agent hears of the end");
    }

    #[test]
    fn an_agent_that_went_away_is_dropped_not_waited_for() {
        let link = AgentLink::default();
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("non-blocking");
        assert!(link.attach(1, ours, |_| ExecutorToAgent::Undelivered {
            task_id: TaskId::new("h").expect("id"),
            message: String::new(),
        }));
        drop(theirs);
        link.report(TaskId::new("t").expect("id"), TaskEvent::Running);
        assert!(!link.is_attached(), "a broken connection is let go");
        assert_eq!(
            link.last(&TaskId::new("t").expect("id")),
            Some(TaskEvent::Running),
            "and the event kept for the next agent"
        );
    }
}
