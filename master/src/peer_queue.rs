//! What the master has to send one peer, waiting for that peer's writer:
//! bounded by bytes, not by messages, so that a framework told of 100,000
//! task updates at once (a few megabytes) keeps up while one that has
//! stopped reading, or an agent sent large launches it does not take, is
//! dropped before it holds the master's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// Bytes queued for one peer before it counts as too slow and is dropped.
pub const PEER_QUEUE_BYTES: usize = 64 << 20;

pub enum Outgoing {
    Frame(Vec<u8>),
    /// Flush what is queued, then close with this reason.
    Close(String),
}

impl Outgoing {
    fn len(&self) -> usize {
        match self {
            Outgoing::Frame(frame) => frame.len(),
            Outgoing::Close(_) => 0,
        }
    }
}

/// The master's end.
#[derive(Clone)]
pub struct PeerQueue {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
}

/// The peer writer's end.
pub struct PeerQueueRx {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

pub fn peer_queue() -> (PeerQueue, PeerQueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        PeerQueue {
            tx,
            queued: queued.clone(),
        },
        PeerQueueRx { rx, queued },
    )
}

impl PeerQueue {
    /// Queues `out`; false if the peer is too far behind (or gone). A close
    /// is always queued.
    pub fn push(&self, out: Outgoing) -> bool {
        let len = out.len();
        if len > 0 && self.queued.load(Ordering::Relaxed) + len > PEER_QUEUE_BYTES {
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.send(out).is_ok()
    }
}

impl PeerQueueRx {
    pub async fn recv(&mut self) -> Option<Outgoing> {
        let out = self.rx.recv().await;
        self.taken(out.as_ref());
        out
    }

    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let out = self.rx.try_recv().ok();
        self.taken(out.as_ref());
        out
    }

    fn taken(&self, out: Option<&Outgoing>) {
        if let Some(out) = out {
            self.queued.fetch_sub(out.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_peer_is_bounded_by_bytes_and_room_comes_back_as_it_reads() {
        let (q, mut rx) = peer_queue();
        let big = || Outgoing::Frame(vec![0; PEER_QUEUE_BYTES / 4]);
        for _ in 0..4 {
            assert!(q.push(big()));
        }
        assert!(!q.push(big()), "a fifth quarter fit");
        assert!(q.push(Outgoing::Close("bye".into())), "a close is refused");
        assert!(rx.recv().await.is_some());
        assert!(q.push(big()), "reading made no room");
        // Many small frames fit where few large ones did not.
        let (q, _rx) = peer_queue();
        for _ in 0..100_000 {
            assert!(q.push(Outgoing::Frame(vec![0; 100])));
        }
    }
}
