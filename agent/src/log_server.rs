//! Log reads the master asks for on side streams of the agent's
//! connection: served off the loop, each asking the loop only whether its
//! task has ended (see `TaskDir::read_log`).

use crate::exec::task_dir::TaskDir;
use crate::work_dir::WorkDir;
use std::time::Duration;
use stoa_proto::side::{MAX_LOG_WAIT_MS, SideReply, SideRequest};
use stoa_proto::{FrameworkId, TaskId};
use stoa_transport::{FrameReceiver, FrameSender};
use tokio::sync::mpsc;

/// How often a waiting log read looks for more: a follower sees a line
/// within this of its being written, at one `stat` per tick.
const FOLLOW_TICK: Duration = Duration::from_millis(50);

/// A log reader's question to the agent's loop: has this task ended?
pub(crate) type EndedQuery = (FrameworkId, TaskId, tokio::sync::oneshot::Sender<bool>);

/// Side streams the master opens: log reads.
pub(crate) async fn serve_side_streams(
    conn: quinn::Connection,
    layout: WorkDir,
    ended: mpsc::Sender<EndedQuery>,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (layout, ended) = (layout.clone(), ended.clone());
        tokio::spawn(async move {
            let mut send = FrameSender::new(send);
            let request = FrameReceiver::new(recv).recv::<SideRequest>().await;
            let reply = match request {
                Ok(Some(SideRequest::ReadLog {
                    framework_id,
                    task_id,
                    stream,
                    offset,
                    max_len,
                    wait_ms,
                })) => {
                    let dir = TaskDir::existing(&layout.task(&framework_id, &task_id));
                    let wait = Duration::from_millis(u64::from(wait_ms.min(MAX_LOG_WAIT_MS)));
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        // Asked before reading: see `TaskDir::read_log`.
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if ended
                            .send((framework_id.clone(), task_id.clone(), tx))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let Ok(task_ended) = rx.await else { return };
                        match dir.read_log(stream, offset, max_len, task_ended) {
                            // Nothing new on a running task: look again
                            // soon, until the reader's wait is over.
                            Ok(chunk)
                                if chunk.data.is_empty()
                                    && !chunk.task_ended
                                    && tokio::time::Instant::now() + FOLLOW_TICK <= until =>
                            {
                                tokio::time::sleep(FOLLOW_TICK).await;
                            }
                            Ok(chunk) => break SideReply::Log(chunk),
                            // A task just launched may not have its
                            // directory yet.
                            Err(e)
                                if e.kind() == std::io::ErrorKind::NotFound
                                    && !task_ended
                                    && tokio::time::Instant::now() + FOLLOW_TICK <= until =>
                            {
                                tokio::time::sleep(FOLLOW_TICK).await;
                            }
                            Err(e) => {
                                break SideReply::Refused {
                                    message: format!(
                                        "no {} for task {task_id} on this agent: {e} (an ephemeral wasm task keeps no logs)",
                                        stream.file_name()
                                    ),
                                };
                            }
                        }
                    }
                }
                Ok(Some(other)) => SideReply::Refused {
                    message: format!("an agent does not serve {other:?}"),
                },
                Ok(None) | Err(_) => return,
            };
            if send.send(&reply).await.is_ok() {
                send.finish_and_flush(Duration::from_secs(2)).await;
            }
        });
    }
}
