//! A task's directory on the agent's host:
//!
//! ```text
//! <dir>/sandbox/   preopened to the task as `/`, the only path it sees
//! <dir>/stdout     what the task wrote to stdout, up to the log limit
//! <dir>/stderr     likewise for stderr
//! ```
//!
//! The logs sit beside the sandbox, not in it, so a task can neither read
//! nor rewrite what it already logged.

use bytes::Bytes;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use stoa_proto::side::{LogChunk, LogStream, MAX_LOG_CHUNK};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Default cap on each of a task's stdout and stderr.
pub const DEFAULT_LOG_LIMIT: u64 = 10 << 20;

#[derive(Debug, Clone)]
pub struct TaskDir {
    root: PathBuf,
}

impl TaskDir {
    /// Makes a fresh directory at `root` (clearing what an earlier task of
    /// the same id left there). Files are the costly part of a small
    /// task's start, so this makes only the two directories, in as few
    /// calls as it can; logs appear when first written.
    pub fn create(root: &Path) -> std::io::Result<TaskDir> {
        use std::io::ErrorKind;
        match std::fs::create_dir(root) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                std::fs::remove_dir_all(root)?;
                std::fs::create_dir(root)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => std::fs::create_dir_all(root)?,
            Err(e) => return Err(e),
        }
        std::fs::create_dir(root.join("sandbox"))?;
        Ok(TaskDir {
            root: root.to_path_buf(),
        })
    }

    /// A directory made earlier (after an agent restart, for reading logs).
    pub fn existing(root: &Path) -> TaskDir {
        TaskDir {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn sandbox(&self) -> PathBuf {
        self.root.join("sandbox")
    }

    pub fn log_path(&self, stream: LogStream) -> PathBuf {
        self.root.join(stream.file_name())
    }

    /// Up to `max_len` bytes of a log from `offset`. `task_ended` says
    /// whether the task had ended before this read began (the agent knows
    /// from its own records): a task writes its logs before its end is
    /// reported, so a reader told `task_ended` with an empty chunk has seen
    /// everything.
    pub fn read_log(
        &self,
        stream: LogStream,
        offset: u64,
        max_len: u32,
        task_ended: bool,
    ) -> std::io::Result<LogChunk> {
        use std::io::{Read as _, Seek as _};
        let mut file = match File::open(self.log_path(stream)) {
            Ok(file) => file,
            // Nothing written yet: a log is made on its first write.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.root.is_dir() => {
                return Ok(LogChunk {
                    next_offset: offset,
                    data: Vec::new(),
                    task_ended,
                });
            }
            Err(e) => return Err(e),
        };
        file.seek(std::io::SeekFrom::Start(offset))?;
        let mut data = Vec::new();
        file.take(u64::from(max_len.min(MAX_LOG_CHUNK)))
            .read_to_end(&mut data)?;
        Ok(LogChunk {
            next_offset: offset + data.len() as u64,
            data,
            task_ended,
        })
    }

    /// A log for the task to write, keeping at most `limit` bytes. The
    /// file is made on the first write: most small tasks never write
    /// stderr, and a file is a launch's costliest part.
    pub fn open_log(&self, stream: LogStream, limit: u64) -> std::io::Result<CappedLog> {
        Ok(CappedLog {
            inner: Arc::new(Mutex::new(Capped {
                path: self.log_path(stream),
                file: None,
                written: 0,
                limit,
                truncated: false,
            })),
        })
    }
}

/// A log file that keeps the first `limit` bytes written to it and drops
/// the rest, noting once that it did. Writes never fail the task: a task
/// that logs without end is stopped by its own limits, not by its log.
#[derive(Clone, Debug)]
pub struct CappedLog {
    inner: Arc<Mutex<Capped>>,
}

#[derive(Debug)]
struct Capped {
    path: PathBuf,
    /// Made on the first write.
    file: Option<File>,
    written: u64,
    limit: u64,
    truncated: bool,
}

impl CappedLog {
    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *guard;
        let room = c.limit.saturating_sub(c.written);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        let note = take < bytes.len() && !c.truncated;
        if take == 0 && !note {
            return Ok(());
        }
        let file = match &mut c.file {
            Some(file) => file,
            None => c.file.insert(File::create(&c.path)?),
        };
        if take > 0 {
            file.write_all(&bytes[..take])?;
            c.written += take as u64;
        }
        if note {
            c.truncated = true;
            let note = format!("\n[stoa: log truncated at {} bytes]\n", c.limit);
            file.write_all(note.as_bytes())?;
        }
        Ok(())
    }

    /// Appends one line, as the host writes it (a hosted scheduler's log
    /// calls).
    pub fn write_line(&self, line: &str) {
        let _ = self.write(format!("{line}\n").as_bytes());
    }

    /// Bytes kept so far (the truncation note aside).
    pub fn written(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).written
    }
}

impl IsTerminal for CappedLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedLog {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        CappedLog::write(self, &bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::format_err!(e)))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for CappedLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(CappedLog::write(&self, buf).map(|()| buf.len()))
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
    fn logs_are_files_only_once_written_and_read_empty_before() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = TaskDir::create(&tmp.path().join("fw/t1")).expect("created");
        let out = dir.open_log(LogStream::Stdout, 8).expect("stdout");
        let _err = dir.open_log(LogStream::Stderr, 8).expect("stderr");
        let path = dir.log_path(LogStream::Stdout);
        assert!(!path.exists(), "nothing written, no file");
        let chunk = dir
            .read_log(LogStream::Stdout, 0, 100, false)
            .expect("empty chunk");
        assert!(chunk.data.is_empty() && !chunk.task_ended);

        out.write(b"hello, world").expect("written");
        let chunk = dir
            .read_log(LogStream::Stdout, 0, 100, true)
            .expect("chunk");
        assert!(chunk.data.starts_with(b"hello, w"), "{:?}", chunk.data);
        assert!(String::from_utf8_lossy(&chunk.data).contains("truncated at 8 bytes"));
        assert!(chunk.task_ended, "the caller's word is passed on");
        assert!(!dir.log_path(LogStream::Stderr).exists());

        // A second task of the same id gets a fresh directory.
        let again = TaskDir::create(dir.root()).expect("made again");
        assert!(!again.log_path(LogStream::Stdout).exists());
        assert!(again.sandbox().is_dir());
        // A log of a task this agent never had is an error, not empty.
        let gone = TaskDir::existing(&tmp.path().join("fw/never"));
        assert!(gone.read_log(LogStream::Stdout, 0, 100, false).is_err());
    }
}
