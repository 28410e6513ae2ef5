//! Side streams (see `stoa_proto::side`): artifacts up to and down from
//! the master's store, and log reads from agents. Each is one QUIC
//! bidirectional stream beside a connection's control stream.

use crate::framed::{FrameReceiver, FrameSender};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stoa_proto::Digest;
use stoa_proto::side::{LogChunk, SideReply, SideRequest};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

/// Content-addressed files: `<dir>/<hex sha256>`. The master keeps every
/// uploaded artifact in one; each agent keeps the ones it fetched in
/// another. A file only appears under its name once its bytes have been
/// checked against it.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    /// Digests seen in the store. Files are never removed or changed while
    /// a store is open, so one seen need not be looked up again: every
    /// launch asks, and a `stat` per launch showed in profiles.
    seen: Arc<Mutex<HashSet<Digest>>>,
}

impl ArtifactStore {
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(ArtifactStore {
            dir,
            seen: Arc::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, digest: Digest) -> PathBuf {
        self.dir.join(hex::encode(digest.0))
    }

    pub fn contains(&self, digest: Digest) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&digest) {
            return true;
        }
        let here = self.path(digest).is_file();
        if here {
            seen.insert(digest);
        }
        here
    }

    /// Reads exactly `len` bytes from `reader` (at most `max`) and keeps
    /// them if they hash to `digest`.
    pub async fn receive(
        &self,
        digest: Digest,
        len: u64,
        max: u64,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), String> {
        if len > max {
            return Err(format!(
                "the artifact is {len} bytes; this store takes at most {max}"
            ));
        }
        // Unique per transfer: two uploads of one artifact at once must not
        // write into the same file.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".{}.{}.{n}.part",
            hex::encode(digest.0),
            std::process::id()
        ));
        let result = self.receive_into(&tmp, digest, len, reader).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn receive_into(
        &self,
        tmp: &Path,
        digest: Digest,
        len: u64,
        reader: &mut (impl AsyncRead + Unpin),
    ) -> Result<(), String> {
        let io = |e: std::io::Error| format!("cannot write the artifact: {e}");
        let mut file = tokio::fs::File::create(tmp).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut left = len;
        let mut buf = vec![0u8; 64 << 10];
        while left > 0 {
            let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
            let n = reader
                .read(&mut buf[..want])
                .await
                .map_err(|e| format!("transfer broke off: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "transfer ended after {} of {len} bytes",
                    len - left
                ));
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).await.map_err(io)?;
            left -= n as u64;
        }
        let got = Digest(hasher.finalize().into());
        if got != digest {
            return Err(format!("the bytes hash to {got}, not {digest}"));
        }
        file.sync_all().await.map_err(io)?;
        tokio::fs::rename(tmp, self.path(digest)).await.map_err(io)
    }
}

/// Uploads `bytes` to the master's store; returns their digest.
pub async fn put_artifact(conn: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Digest> {
    let digest = Digest::of(bytes);
    let (send, recv) = conn.open_bi().await?;
    let mut send = FrameSender::new(send);
    send.send(&SideRequest::PutArtifact {
        digest,
        len: bytes.len() as u64,
    })
    .await?;
    send.send_raw(bytes).await?;
    send.finish();
    match FrameReceiver::new(recv).recv::<SideReply>().await? {
        Some(SideReply::Artifact { .. }) => Ok(digest),
        Some(SideReply::Refused { message }) => {
            anyhow::bail!("the master refused the artifact: {message}")
        }
        other => anyhow::bail!("unexpected answer to an upload: {other:?}"),
    }
}

/// Whether the master's store holds `digest` (its length if so).
pub async fn has_artifact(conn: &quinn::Connection, digest: Digest) -> anyhow::Result<Option<u64>> {
    let (send, recv) = conn.open_bi().await?;
    let mut send = FrameSender::new(send);
    send.send(&SideRequest::HasArtifact { digest }).await?;
    send.finish();
    match FrameReceiver::new(recv).recv::<SideReply>().await? {
        Some(SideReply::Artifact { len }) => Ok(Some(len)),
        Some(SideReply::Refused { .. }) => Ok(None),
        other => anyhow::bail!("unexpected answer to an artifact query: {other:?}"),
    }
}

/// Fetches `digest` from the master into `store`.
pub async fn fetch_artifact(
    conn: &quinn::Connection,
    digest: Digest,
    store: &ArtifactStore,
    max: u64,
) -> anyhow::Result<()> {
    let (send, recv) = conn.open_bi().await?;
    let mut send = FrameSender::new(send);
    send.send(&SideRequest::FetchArtifact { digest }).await?;
    send.finish();
    let mut recv = FrameReceiver::new(recv);
    let len = match recv.recv::<SideReply>().await? {
        Some(SideReply::Artifact { len }) => len,
        Some(SideReply::Refused { message }) => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer to a fetch: {other:?}"),
    };
    store
        .receive(digest, len, max, &mut recv.into_rest())
        .await
        .map_err(anyhow::Error::msg)
}

/// Asks an agent for part of a task's log.
pub async fn read_log(conn: &quinn::Connection, request: &SideRequest) -> anyhow::Result<LogChunk> {
    let (send, recv) = conn.open_bi().await?;
    let mut send = FrameSender::new(send);
    send.send(request).await?;
    send.finish();
    match FrameReceiver::new(recv).recv::<SideReply>().await? {
        Some(SideReply::Log(chunk)) => Ok(chunk),
        Some(SideReply::Refused { message }) => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer to a log read: {other:?}"),
    }
}

/// The master's half of artifact side streams: stores uploads, serves
/// fetches. Anything else is refused.
pub async fn serve_artifacts(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    store: &ArtifactStore,
    max: u64,
    upload: Result<(), String>,
) -> anyhow::Result<()> {
    let mut send = FrameSender::new(send);
    let mut recv = FrameReceiver::new(recv);
    let Some(request) = recv.recv::<SideRequest>().await? else {
        return Ok(());
    };
    let reply = match request {
        SideRequest::PutArtifact { digest, len } => match upload {
            Ok(()) => match store.receive(digest, len, max, &mut recv.into_rest()).await {
                Ok(()) => {
                    tracing::info!(%digest, len, "artifact stored");
                    SideReply::Artifact { len }
                }
                Err(message) => SideReply::Refused { message },
            },
            Err(message) => SideReply::Refused { message },
        },
        SideRequest::FetchArtifact { digest } => {
            match tokio::fs::File::open(store.path(digest)).await {
                Ok(mut file) => {
                    let len = file.metadata().await?.len();
                    send.send(&SideReply::Artifact { len }).await?;
                    tokio::io::copy(&mut file, send.inner()).await?;
                    send.finish();
                    return Ok(());
                }
                Err(_) => SideReply::Refused {
                    message: format!("the master has no artifact {digest}; upload it first"),
                },
            }
        }
        SideRequest::HasArtifact { digest } => {
            match tokio::fs::metadata(store.path(digest)).await {
                Ok(meta) if meta.is_file() => SideReply::Artifact { len: meta.len() },
                _ => SideReply::Refused {
                    message: format!("the master has no artifact {digest}"),
                },
            }
        }
        other => SideReply::Refused {
            message: format!("this channel does not serve {other:?}"),
        },
    };
    send.send(&reply).await?;
    send.finish_and_flush(std::time::Duration::from_secs(2))
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ArtifactStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ArtifactStore::open(tmp.path().join("a")).expect("store");
        (tmp, store)
    }

    #[tokio::test]
    async fn bytes_are_kept_only_under_their_own_digest() {
        let (_tmp, store) = store();
        let bytes = b"a wasm binary, say".to_vec();
        let digest = Digest::of(&bytes);
        let lying = Digest::of(b"something else");
        let refused = store
            .receive(lying, bytes.len() as u64, 1 << 20, &mut bytes.as_slice())
            .await;
        assert!(refused.is_err_and(|m| m.contains("hash to")));
        assert!(!store.contains(lying));
        store
            .receive(digest, bytes.len() as u64, 1 << 20, &mut bytes.as_slice())
            .await
            .expect("stored");
        assert_eq!(std::fs::read(store.path(digest)).expect("read"), bytes);
        // Nothing half-written is left behind.
        let files = std::fs::read_dir(store.dir()).expect("dir").count();
        assert_eq!(files, 1);
    }

    #[tokio::test]
    async fn oversized_and_short_transfers_are_refused() {
        let (_tmp, store) = store();
        let bytes = vec![7u8; 1000];
        let digest = Digest::of(&bytes);
        let big = store
            .receive(digest, 1000, 999, &mut bytes.as_slice())
            .await;
        assert!(big.is_err_and(|m| m.contains("at most 999")));
        let short = store
            .receive(digest, 2000, 1 << 20, &mut bytes.as_slice())
            .await;
        assert!(short.is_err_and(|m| m.contains("after 1000 of 2000")));
        assert!(!store.contains(digest));
        assert_eq!(std::fs::read_dir(store.dir()).expect("dir").count(), 0);
    }
}
