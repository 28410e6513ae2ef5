//! Length-prefixed postcard frames over a QUIC stream.

use serde::{Serialize, de::DeserializeOwned};
use stoa_proto::framing::{self, FrameError, HEADER_LEN};

#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream ended in the middle of a frame")]
    Truncated,
    #[error("connection: {0}")]
    Read(#[from] quinn::ReadError),
}

/// Reads whole messages, refusing oversized or malformed frames.
#[derive(Debug)]
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    max: usize,
}

impl FrameReceiver {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReceiver {
            recv,
            max: framing::MAX_FRAME_LEN,
        }
    }

    /// The stream itself, for raw bytes after a frame.
    pub fn inner(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }

    /// Returns the next message, `Ok(None)` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RecvError> {
        let mut header = [0u8; HEADER_LEN];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(RecvError::Truncated),
            Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        // Checked before allocating: a peer cannot make us reserve memory by
        // announcing a large frame.
        let len = framing::body_len(header, self.max)?;
        let mut body = vec![0u8; len];
        match self.recv.read_exact(&mut body).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(RecvError::Truncated),
            Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        Ok(Some(framing::decode_body(&body)?))
    }
}

/// Writes whole messages.
#[derive(Debug)]
pub struct FrameSender {
    send: quinn::SendStream,
}

impl FrameSender {
    pub fn new(send: quinn::SendStream) -> Self {
        FrameSender { send }
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> anyhow::Result<()> {
        let frame = framing::encode(msg)?;
        self.send_raw(&frame).await
    }

    /// The stream itself, for raw bytes after a frame.
    pub fn inner(&mut self) -> &mut quinn::SendStream {
        &mut self.send
    }

    /// Writes bytes as they are; for already-encoded frames (and for tests
    /// that must send malformed ones).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Ends the stream cleanly.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Ends the stream and waits, at most `limit`, until the peer has read
    /// everything sent: use before closing a connection on purpose, so the
    /// last message (an ERROR, say) is not lost with it.
    pub async fn finish_and_flush(&mut self, limit: std::time::Duration) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(limit, self.send.stopped()).await;
    }
}

/// Frames over any byte stream (the agent's Unix sockets to its
/// executors): the same format and checks as [`FrameReceiver`].
pub mod io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    #[derive(Debug, thiserror::Error)]
    pub enum IoRecvError {
        #[error(transparent)]
        Frame(#[from] FrameError),
        #[error("stream ended in the middle of a frame")]
        Truncated,
        #[error(transparent)]
        Io(#[from] std::io::Error),
    }

    /// Reads the next message; `Ok(None)` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<Option<T>, IoRecvError> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match reader.read(&mut header[got..]).await? {
                0 if got == 0 => return Ok(None),
                0 => return Err(IoRecvError::Truncated),
                n => got += n,
            }
        }
        let len = framing::body_len(header, framing::MAX_FRAME_LEN)?;
        let mut body = vec![0u8; len];
        reader
            .read_exact(&mut body)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => IoRecvError::Truncated,
                _ => IoRecvError::Io(e),
            })?;
        Ok(Some(framing::decode_body(&body)?))
    }

    pub async fn send<T: Serialize>(
        writer: &mut (impl AsyncWrite + Unpin),
        msg: &T,
    ) -> anyhow::Result<()> {
        send_many(writer, std::iter::once(msg)).await
    }

    /// Sends messages in one write: a busy peer wakes once for all of them.
    pub async fn send_many<'a, T: Serialize + 'a>(
        writer: &mut (impl AsyncWrite + Unpin),
        msgs: impl IntoIterator<Item = &'a T>,
    ) -> anyhow::Result<()> {
        let mut frames = Vec::new();
        for msg in msgs {
            frames.extend_from_slice(&framing::encode(msg)?);
        }
        writer.write_all(&frames).await?;
        writer.flush().await?;
        Ok(())
    }

    /// Messages a batch holds at most: enough to share a wake-up among
    /// many, few enough that one batch never delays others for long.
    pub const MAX_BATCH: usize = 64;

    /// Takes what is already queued on `rx` after `first`, up to `max`
    /// messages in all, to send them together.
    pub fn batch<T>(
        first: T,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
        max: usize,
    ) -> Vec<T> {
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(msg) => batch.push(msg),
                Err(_) => break,
            }
        }
        batch
    }
}
