//! `stoa logs`: a task's stdout or stderr, for the operator or for the
//! tenant that owns it, read through the master from the task's agent.
//! `--follow` holds one connection and long-polls (the agent answers as
//! soon as there is more), so a line shows within a tick of its writing.

use crate::operator::{Target, refused_is_error};
use anyhow::{Context as _, bail};
use std::io::Write;
use stoa_client::OperatorSession;
use stoa_proto::operator::{OperatorCall, OperatorReply};
use stoa_proto::side::{LogStream, MAX_LOG_CHUNK};
use stoa_proto::{FrameworkId, TaskId};

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    target: Target,
    /// The task's id. Without one, `--framework` names a cluster-hosted
    /// framework and its scheduler's log is shown.
    #[arg(required_unless_present = "framework")]
    task: Option<TaskId>,
    /// The task's framework (needed when two frameworks used the task id).
    #[arg(long)]
    framework: Option<FrameworkId>,
    /// Print stderr instead of stdout.
    #[arg(long)]
    stderr: bool,
    /// Keep printing what the task writes until it ends.
    #[arg(long, short)]
    follow: bool,
}

/// How long one read may wait on the agent for more.
const FOLLOW_WAIT_MS: u32 = 5_000;

pub async fn logs(a: LogsArgs) -> anyhow::Result<()> {
    let mut session = OperatorSession::connect(&a.target.config()).await?;
    let task = match &a.task {
        Some(task) => task.clone(),
        None => {
            let framework = a
                .framework
                .clone()
                .context("give a task id or --framework")?;
            hosted_instance(&mut session, &framework).await?
        }
    };
    let stream = if a.stderr {
        LogStream::Stderr
    } else {
        LogStream::Stdout
    };
    let log = Log {
        framework: a.framework.clone(),
        task,
        stream,
    };
    let result = log
        .copy(&mut session, &mut std::io::stdout().lock(), a.follow)
        .await;
    session.close();
    result.map(|_| ())
}

/// The running instance of a cluster-hosted framework's scheduler.
async fn hosted_instance(
    session: &mut OperatorSession,
    framework: &FrameworkId,
) -> anyhow::Result<TaskId> {
    let OperatorReply::Frameworks(all) =
        refused_is_error(session.call(&OperatorCall::GetFrameworks).await?)?
    else {
        bail!("the master answered something other than a framework list");
    };
    let Some(f) = all.into_iter().find(|f| &f.id == framework) else {
        bail!("no framework {framework} is known to this master (see `stoa frameworks`)");
    };
    match f.hosted.and_then(|h| h.instance) {
        Some((task, _agent)) => Ok(task),
        None => bail!(
            "framework {framework} has no scheduler hosted by the cluster now; give a task id"
        ),
    }
}

/// One log of one task.
pub struct Log {
    pub framework: Option<FrameworkId>,
    pub task: TaskId,
    pub stream: LogStream,
}

impl Log {
    /// Copies the log from `offset` into `out`; with `follow`, until the
    /// task has ended and all it wrote is out. Returns where it stopped.
    pub async fn copy(
        &self,
        session: &mut OperatorSession,
        out: &mut impl Write,
        follow: bool,
    ) -> anyhow::Result<u64> {
        self.copy_from(session, out, 0, follow).await
    }

    pub async fn copy_from(
        &self,
        session: &mut OperatorSession,
        out: &mut impl Write,
        mut offset: u64,
        follow: bool,
    ) -> anyhow::Result<u64> {
        loop {
            let request = OperatorCall::ReadLog {
                framework_id: self.framework.clone(),
                task_id: self.task.clone(),
                stream: self.stream,
                offset,
                max_len: MAX_LOG_CHUNK,
                wait_ms: if follow { FOLLOW_WAIT_MS } else { 0 },
            };
            let OperatorReply::Log(chunk) = refused_is_error(session.call(&request).await?)? else {
                bail!("the master answered something other than a log chunk");
            };
            out.write_all(&chunk.data)?;
            out.flush()?;
            offset = chunk.next_offset;
            if chunk.data.is_empty() && (!follow || chunk.task_ended) {
                return Ok(offset);
            }
        }
    }
}
