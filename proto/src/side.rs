//! Side streams: bulk data that does not belong on a control stream.
//!
//! Each side stream is one QUIC bidirectional stream on an existing
//! connection: one [`SideRequest`] frame, then one [`SideReply`] frame,
//! then — for artifacts — the raw bytes until the stream ends. The drivers
//! serve them; the state machines never see them.

use crate::ids::{FrameworkId, TaskId};
use crate::task::Digest;
use serde::{Deserialize, Serialize};

/// Largest artifact a master stores unless configured otherwise.
pub const DEFAULT_MAX_ARTIFACT: u64 = 64 << 20;
/// Most log bytes returned by one read.
pub const MAX_LOG_CHUNK: u32 = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn file_name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SideRequest {
    /// Scheduler → master: `len` bytes follow; the master keeps them under
    /// `digest` if they hash to it.
    PutArtifact { digest: Digest, len: u64 },
    /// Agent → master: send the bytes of `digest`.
    FetchArtifact { digest: Digest },
    /// Master → agent: up to `max_len` bytes of a task's log from `offset`.
    /// With nothing there yet and the task still running, the agent waits
    /// up to `wait_ms` for more before it answers (a follower's long poll).
    ReadLog {
        framework_id: FrameworkId,
        task_id: TaskId,
        stream: LogStream,
        offset: u64,
        max_len: u32,
        wait_ms: u32,
    },
    /// Client → master: is `digest` stored? Answered `Artifact { len }` or
    /// `Refused`; an upload of what is stored can be skipped.
    HasArtifact { digest: Digest },
}

/// Longest a log read may wait for more ([`SideRequest::ReadLog`]).
pub const MAX_LOG_WAIT_MS: u32 = 10_000;

/// Part of a task's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Where the next read should start.
    pub next_offset: u64,
    /// The task has ended: once a read returns nothing, nothing more comes.
    pub task_ended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SideReply {
    /// The artifact is stored (upload) or `len` bytes follow (fetch).
    Artifact {
        len: u64,
    },
    Log(LogChunk),
    Refused {
        message: String,
    },
}
