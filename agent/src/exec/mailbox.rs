//! Framework messages to and from a running `stoa:task` component: an
//! inbox the executor fills with the scheduler's MESSAGEs and the task
//! drains with `messages.receive`, and a shared outbox that carries what
//! tasks `send` to the executor's agent connection.
//!
//! Both are bounded: a task cannot grow its executor's memory by sending
//! faster than the agent takes, nor a scheduler by sending to a task that
//! does not read. What does not fit is refused, never queued.

use stoa_proto::TaskId;
use stoa_proto::messages::message_too_large;
use tokio::sync::mpsc;

/// Messages a task's inbox holds before more are refused.
pub const INBOX_LEN: usize = 64;
/// Messages an executor's tasks may have on their way out at once.
pub const OUTBOX_LEN: usize = 1024;

/// What a task sent, for its executor to pass on.
pub type Outgoing = (TaskId, Vec<u8>);

/// The task's side: read by the `stoa:task/messages` host functions.
#[derive(Debug)]
pub struct Mailbox {
    task_id: TaskId,
    inbox: mpsc::Receiver<Vec<u8>>,
    outbox: mpsc::Sender<Outgoing>,
}

/// The executor's side of one task's inbox.
#[derive(Debug, Clone)]
pub struct Inbox(mpsc::Sender<Vec<u8>>);

/// A new inbox for `task_id`, whose sends go to `outbox`.
pub fn mailbox(task_id: TaskId, outbox: mpsc::Sender<Outgoing>) -> (Inbox, Mailbox) {
    let (tx, rx) = mpsc::channel(INBOX_LEN);
    let mailbox = Mailbox {
        task_id,
        inbox: rx,
        outbox,
    };
    (Inbox(tx), mailbox)
}

impl Inbox {
    /// Puts `data` in the inbox; why not, when it cannot.
    pub fn deliver(&self, data: Vec<u8>) -> Result<(), String> {
        self.0.try_send(data).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                format!("the task's inbox is full ({INBOX_LEN} messages it has not received yet)")
            }
            mpsc::error::TrySendError::Closed(_) => {
                "the task does not receive messages: it has ended, or is not a stoa:task component"
                    .to_string()
            }
        })
    }
}

impl Mailbox {
    /// The next message, or `None` once `timeout` passes without one.
    pub async fn receive(&mut self, timeout: std::time::Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(timeout, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// Queues `data` for the scheduler.
    pub fn send(&self, data: Vec<u8>) -> Result<(), String> {
        if let Some(why) = message_too_large(&data) {
            return Err(why);
        }
        self.outbox
            .try_send((self.task_id.clone(), data))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    "too many messages are on their way out; try again shortly".to_string()
                }
                mpsc::error::TrySendError::Closed(_) => "the executor is shutting down".to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use stoa_proto::messages::MAX_MESSAGE;

    fn task() -> TaskId {
        TaskId::new("t").expect("id")
    }

    #[tokio::test]
    async fn an_inbox_holds_a_bounded_number_of_messages_in_order() {
        let (out, _out_rx) = mpsc::channel(1);
        let (inbox, mut mailbox) = mailbox(task(), out);
        for i in 0..INBOX_LEN {
            inbox.deliver(vec![i as u8]).expect("delivered");
        }
        let full = inbox.deliver(vec![0]).expect_err("refused");
        assert!(full.contains("full"), "{full}");
        assert_eq!(mailbox.receive(Duration::ZERO).await, Some(vec![0]));
        assert_eq!(mailbox.receive(Duration::ZERO).await, Some(vec![1]));
        inbox.deliver(vec![9]).expect("delivered");
    }

    #[tokio::test]
    async fn receive_waits_at_most_its_timeout() {
        let (out, _out_rx) = mpsc::channel(1);
        let (_inbox, mut mailbox) = mailbox(task(), out);
        let start = std::time::Instant::now();
        assert_eq!(mailbox.receive(Duration::from_millis(30)).await, None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[tokio::test]
    async fn sends_are_bounded_in_size_and_number() {
        let (out, mut out_rx) = mpsc::channel(1);
        let (_inbox, mailbox) = mailbox(task(), out);
        let big = mailbox.send(vec![0; MAX_MESSAGE + 1]).expect_err("refused");
        assert!(big.contains("at most"), "{big}");
        mailbox.send(b"a".to_vec()).expect("delivered");
        let busy = mailbox.send(b"b".to_vec()).expect_err("refused");
        assert!(busy.contains("try again"), "{busy}");
        assert_eq!(out_rx.recv().await, Some((task(), b"a".to_vec())));
        drop(out_rx);
        assert!(
            mailbox
                .send(b"c".to_vec())
                .expect_err("refused")
                .contains("shutting down")
        );
    }
}
