//! Length-prefixed postcard frames over a QUIC stream.

use serde::{Serialize, de::DeserializeOwned};
use std::future::Future as _;
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

impl RecvError {
    /// The connection went away (peer gone, timed out, closed): not the
    /// peer's data at fault. Say "connection lost" and reconnect.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            RecvError::Read(quinn::ReadError::ConnectionLost(_) | quinn::ReadError::Reset(_))
                | RecvError::Truncated
        )
    }
}

/// Reads whole messages, refusing oversized or malformed frames.
///
/// Reads take whatever has arrived, up to [`READ_AHEAD`], and frames are
/// cut from that: reading a header and then a body took the connection's
/// lock twice per frame, where a busy peer's frames come many to a packet.
#[derive(Debug)]
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    max: usize,
    /// Bytes read and not yet taken, from `start` on.
    buf: Vec<u8>,
    start: usize,
}

/// The most one read takes from the stream.
pub const READ_AHEAD: usize = 64 << 10;

impl FrameReceiver {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReceiver {
            recv,
            max: framing::MAX_FRAME_LEN,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The rest of the stream as raw bytes (an artifact after its frame):
    /// what was read ahead, then the stream.
    pub fn into_rest(mut self) -> impl tokio::io::AsyncRead + Unpin {
        use tokio::io::AsyncReadExt as _;
        let ahead = self.buf.split_off(self.start);
        std::io::Cursor::new(ahead).chain(self.recv)
    }

    /// Returns the next message, `Ok(None)` at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RecvError> {
        loop {
            if let Some(msg) = self.buffered()? {
                return Ok(Some(msg));
            }
            let chunk = self.recv.read_chunk(READ_AHEAD, true).await?;
            if !self.append(chunk)? {
                return Ok(None);
            }
        }
    }

    /// The next message if it has already arrived, without waiting: for a
    /// reader that handles a burst of messages before it answers them.
    /// `Ok(None)` when nothing whole is there yet (or the stream ended;
    /// [`FrameReceiver::recv`] then says which).
    pub fn try_recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RecvError> {
        loop {
            if let Some(msg) = self.buffered()? {
                return Ok(Some(msg));
            }
            // One poll with a waker that does nothing: quinn keeps the
            // latest waker of a blocked reader, and the next `recv` (the
            // only way to wait on this stream) polls with the real one.
            let polled = {
                let mut read = std::pin::pin!(self.recv.read_chunk(READ_AHEAD, true));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                read.as_mut().poll(&mut cx)
            };
            match polled {
                std::task::Poll::Ready(Ok(Some(chunk))) => {
                    self.append(Some(chunk))?;
                }
                std::task::Poll::Ready(Err(e)) => return Err(e.into()),
                std::task::Poll::Ready(Ok(None)) | std::task::Poll::Pending => return Ok(None),
            }
        }
    }

    /// Cuts the next whole frame from what was read.
    fn buffered<T: DeserializeOwned>(&mut self) -> Result<Option<T>, RecvError> {
        let ahead = &self.buf[self.start..];
        let Some(header) = ahead.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        // Checked before waiting for the body: a peer cannot make us
        // buffer more than the limit by announcing a large frame.
        let len = framing::body_len(*header, self.max)?;
        let Some(body) = ahead.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let msg = framing::decode_body(body);
        self.start += HEADER_LEN + len;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(msg?))
    }

    /// Keeps a chunk read from the stream; false at a clean end of stream.
    fn append(&mut self, chunk: Option<quinn::Chunk>) -> Result<bool, RecvError> {
        match chunk {
            Some(chunk) => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            None if self.start == self.buf.len() => Ok(false),
            None => Err(RecvError::Truncated),
        }
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

    /// Sends messages in one write: one pass through the connection's
    /// lock for all of them rather than one each.
    pub async fn send_many<T: Serialize>(
        &mut self,
        msgs: impl IntoIterator<Item = T>,
    ) -> anyhow::Result<()> {
        let frames = encode_all(msgs)?;
        if frames.is_empty() {
            return Ok(());
        }
        self.send_raw(&frames).await
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

/// Messages framed one after another, for one write.
fn encode_all<T: Serialize>(msgs: impl IntoIterator<Item = T>) -> Result<Vec<u8>, FrameError> {
    let mut frames = Vec::new();
    for msg in msgs {
        frames.extend_from_slice(&framing::encode(&msg)?);
    }
    Ok(frames)
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
        let frames = encode_all(msgs)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ALPN_AGENT, Identity, certs, client_config, server_config};
    use tokio::io::AsyncReadExt as _;

    /// A loopback QUIC connection: the client's sending half of one stream
    /// and the server's receiving half. The endpoints and certificates
    /// live as long as the returned guard.
    type Guard = (
        tempfile::TempDir,
        quinn::Endpoint,
        quinn::Endpoint,
        quinn::Connection,
        quinn::Connection,
    );

    async fn stream() -> anyhow::Result<(quinn::SendStream, FrameReceiver, Guard)> {
        let dir = tempfile::tempdir()?;
        certs::init(dir.path(), "test")?;
        let master = Identity::load(dir.path(), "master")?;
        let client = Identity::load(dir.path(), "client")?;
        let server = quinn::Endpoint::server(
            server_config(&master, &[ALPN_AGENT])?,
            "127.0.0.1:0".parse()?,
        )?;
        let addr = server.local_addr()?;
        let accepting = tokio::spawn({
            let server = server.clone();
            async move {
                let conn = server.accept().await?.await.ok()?;
                let (_send, recv) = conn.accept_bi().await.ok()?;
                Some((conn, recv))
            }
        });
        let client_ep = crate::client_endpoint(addr)?;
        let conn = client_ep
            .connect_with(
                client_config(&client, ALPN_AGENT)?,
                addr,
                crate::MASTER_NAME,
            )?
            .await?;
        let (mut send, _recv) = conn.open_bi().await?;
        // A stream is announced to the peer by its first bytes.
        send.write_all(&framing::encode(&"hello")?).await?;
        let (server_conn, recv) = accepting
            .await?
            .ok_or_else(|| anyhow::anyhow!("no stream accepted"))?;
        let mut recv = FrameReceiver::new(recv);
        assert_eq!(recv.recv::<String>().await?.as_deref(), Some("hello"));
        Ok((send, recv, (dir, server, client_ep, conn, server_conn)))
    }

    #[tokio::test]
    async fn try_recv_takes_what_has_arrived_and_never_waits() -> anyhow::Result<()> {
        let (mut send, mut recv, _guard) = stream().await?;
        assert_eq!(recv.try_recv::<u32>()?, None, "nothing sent yet");
        let mut bytes = Vec::new();
        for n in 0..3u32 {
            bytes.extend(framing::encode(&n)?);
        }
        let split = framing::encode(&4u32)?;
        bytes.extend_from_slice(&split[..2]);
        send.write_all(&bytes).await?;
        // The first waits for the write to arrive; the rest are there.
        assert_eq!(recv.recv::<u32>().await?, Some(0));
        assert_eq!(recv.try_recv::<u32>()?, Some(1));
        assert_eq!(recv.try_recv::<u32>()?, Some(2));
        assert_eq!(recv.try_recv::<u32>()?, None, "half a frame is not a frame");
        // After a `None`, `recv` still wakes for what comes next.
        send.write_all(&split[2..]).await?;
        assert_eq!(recv.recv::<u32>().await?, Some(4));
        Ok(())
    }

    #[tokio::test]
    async fn frames_are_cut_from_whatever_arrives() -> anyhow::Result<()> {
        let (mut send, mut recv, _guard) = stream().await?;
        // Three frames in one write, then one split across two writes.
        let mut bytes = Vec::new();
        for n in 0..3u32 {
            bytes.extend(framing::encode(&n)?);
        }
        send.write_all(&bytes).await?;
        let split = framing::encode(&"a frame in two parts".to_string())?;
        send.write_all(&split[..3]).await?;
        for n in 0..3u32 {
            assert_eq!(recv.recv::<u32>().await?, Some(n));
        }
        send.write_all(&split[3..]).await?;
        assert_eq!(
            recv.recv::<String>().await?.as_deref(),
            Some("a frame in two parts")
        );
        // A frame, then raw bytes: the rest holds exactly what followed it.
        let mut bytes = framing::encode(&7u32)?;
        bytes.extend_from_slice(b"raw bytes after a frame");
        send.write_all(&bytes).await?;
        send.finish()?;
        assert_eq!(recv.recv::<u32>().await?, Some(7));
        let mut rest = Vec::new();
        recv.into_rest().read_to_end(&mut rest).await?;
        assert_eq!(rest, b"raw bytes after a frame");
        Ok(())
    }

    #[tokio::test]
    async fn a_stream_that_ends_mid_frame_or_announces_too_much_is_refused() -> anyhow::Result<()> {
        let (mut send, mut recv, _guard) = stream().await?;
        let frame = framing::encode(&"cut short".to_string())?;
        send.write_all(&frame[..frame.len() - 1]).await?;
        send.finish()?;
        assert!(matches!(
            recv.recv::<String>().await,
            Err(RecvError::Truncated)
        ));

        let (mut send, mut recv, _guard) = stream().await?;
        let too_big = u32::try_from(framing::MAX_FRAME_LEN + 1)?;
        // Refused from the header alone, without waiting for the body.
        send.write_all(&too_big.to_be_bytes()).await?;
        assert!(matches!(
            recv.recv::<String>().await,
            Err(RecvError::Frame(_))
        ));

        let (mut send, mut recv, _guard) = stream().await?;
        send.finish()?;
        assert!(recv.recv::<String>().await?.is_none(), "a clean end");
        Ok(())
    }
}
