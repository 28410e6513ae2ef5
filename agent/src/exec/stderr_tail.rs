//! The stderr of a task without a directory: only its last bytes are kept,
//! in memory, for the message of the update that ends it in failure
//! (a Rust guest's panic message, say, which would otherwise be lost when
//! the panic becomes a trap).

use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Keeps the last `capacity` bytes written. Writes never fail: a task is
/// not stopped for writing more than is kept.
#[derive(Clone, Debug)]
pub struct StderrTail {
    inner: Arc<Mutex<Tail>>,
}

#[derive(Debug)]
struct Tail {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes written before those kept.
    dropped: u64,
}

impl StderrTail {
    pub fn new(capacity: usize) -> StderrTail {
        StderrTail {
            inner: Arc::new(Mutex::new(Tail {
                bytes: VecDeque::new(),
                capacity,
                dropped: 0,
            })),
        }
    }

    fn write(&self, data: &[u8]) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let keep = data.len().min(t.capacity);
        let over = (t.bytes.len() + keep).saturating_sub(t.capacity);
        t.bytes.drain(..over);
        t.dropped += (over + data.len() - keep) as u64;
        t.bytes.extend(&data[data.len() - keep..]);
    }

    /// What was kept, as text, marked where earlier output was dropped;
    /// `None` if nothing was written.
    pub fn text(&self) -> Option<String> {
        let t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if t.bytes.is_empty() {
            return None;
        }
        let (a, b) = t.bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
        Some(match t.dropped {
            0 => text,
            n => format!("[{n} earlier bytes dropped]{text}"),
        })
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        StderrTail::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        StderrTail::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_bytes_are_kept_and_the_cut_is_marked() {
        let tail = StderrTail::new(8);
        assert_eq!(tail.text(), None);
        tail.write(b"abc");
        assert_eq!(tail.text().as_deref(), Some("abc"));
        tail.write(b"defgh");
        assert_eq!(tail.text().as_deref(), Some("abcdefgh"));
        tail.write(b"ij");
        assert_eq!(
            tail.text().as_deref(),
            Some("[2 earlier bytes dropped]cdefghij")
        );
        tail.write(b"0123456789xyz");
        assert_eq!(
            tail.text().as_deref(),
            Some("[15 earlier bytes dropped]56789xyz")
        );
    }
}
