//! The agent's I/O: keeps a QUIC connection to the master (reconnecting
//! with backoff), feeds the core, and runs the tasks it asks for on
//! blocking threads.

use crate::core::{Action, Agent, TaskEvent};
use crate::exec::wasm::WasmRuntime;
use anyhow::Context as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use stoa_proto::{AgentId, AgentInfo, FrameworkId, MasterToAgent, TaskId, Time};
use stoa_transport::{ALPN_AGENT, FrameReceiver, FrameSender, Identity};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub master: SocketAddr,
    /// Directory with `ca.pem`, `agent.pem`, `agent.key`.
    pub certs: PathBuf,
    pub info: AgentInfo,
    /// The agent's own state (its id); created if missing.
    pub work_dir: PathBuf,
}

type TaskKey = (FrameworkId, TaskId);

/// Runs an agent until `shutdown` resolves or the master refuses it.
pub async fn run(
    config: DriverConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.work_dir).with_context(|| {
        format!(
            "cannot create the work directory {}",
            config.work_dir.display()
        )
    })?;
    let identity = Identity::load(&config.certs, "agent")?;
    let client = stoa_transport::client_config(&identity, ALPN_AGENT)?;
    let endpoint = stoa_transport::client_endpoint(config.master)?;
    let id_file = config.work_dir.join("agent_id");
    let known_id = std::fs::read_to_string(&id_file)
        .ok()
        .and_then(|s| AgentId::new(s.trim()).ok());
    let pool = crate::exec::wasm::PoolSize::for_agent(&config.info.resources);
    let runtime = Arc::new(
        WasmRuntime::with_pool(pool)
            .map_err(|e| anyhow::anyhow!("cannot start wasmtime: {e:#}"))?,
    );
    tracing::info!(allocation = ?runtime.allocation(), "wasm engine ready");
    let start = Instant::now();
    let now =
        move || Time::from_micros(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX));
    let mut agent = Agent::new(config.info.clone(), known_id);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<(TaskKey, TaskEvent)>();
    let mut kills: HashMap<TaskKey, Arc<AtomicBool>> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    tokio::pin!(shutdown);

    loop {
        let connected = tokio::select! {
            c = stoa_transport::connect(&endpoint, config.master, client.clone()) => c,
            _ = &mut shutdown => return Ok(()),
        };
        let (conn, mut sender, receiver) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "cannot reach the master");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (msgs_tx, mut msgs_rx) = mpsc::channel::<MasterToAgent>(1024);
        let reader = tokio::spawn(read_loop(receiver, msgs_tx));
        agent.handle_connected(now());
        loop {
            if !flush(&mut agent, &mut sender, &runtime, &events_tx, &mut kills).await {
                break;
            }
            if let Some(message) = agent.refused() {
                conn.close(stoa_transport::close::NORMAL, b"refused");
                anyhow::bail!("the master refused this agent: {message}");
            }
            if let Some(id) = agent.agent_id()
                && std::fs::read_to_string(&id_file).ok().as_deref() != Some(id.as_str())
            {
                std::fs::write(&id_file, id.as_str())
                    .with_context(|| format!("cannot write {}", id_file.display()))?;
                tracing::info!(agent = %id, "registered with the master");
            }
            let deadline = agent
                .poll_timeout()
                .map(|t| start + Duration::from_micros(t.as_micros()));
            tokio::select! {
                msg = msgs_rx.recv() => match msg {
                    Some(msg) => agent.handle_master_message(now(), msg),
                    None => break,
                },
                Some(((fw, task), event)) = events_rx.recv() => {
                    if !matches!(event, TaskEvent::Running) {
                        kills.remove(&(fw.clone(), task.clone()));
                    }
                    agent.handle_task_event(now(), fw, task, event);
                }
                _ = sleep_until(deadline) => agent.handle_timeout(now()),
                _ = &mut shutdown => {
                    conn.close(stoa_transport::close::SHUTDOWN, b"agent shutting down");
                    return Ok(());
                }
            }
        }
        reader.abort();
        agent.handle_disconnected(now());
        tracing::warn!(reason = ?conn.close_reason(), "lost the master; reconnecting");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn read_loop(mut receiver: FrameReceiver, tx: mpsc::Sender<MasterToAgent>) {
    loop {
        match receiver.recv::<MasterToAgent>().await {
            Ok(Some(msg)) => {
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "bad data from the master; dropping the connection");
                return;
            }
        }
    }
}

/// Sends what the core emitted and starts what it asked for. Returns false
/// when the connection broke.
async fn flush(
    agent: &mut Agent,
    sender: &mut FrameSender,
    runtime: &Arc<WasmRuntime>,
    events: &mpsc::UnboundedSender<(TaskKey, TaskEvent)>,
    kills: &mut HashMap<TaskKey, Arc<AtomicBool>>,
) -> bool {
    while let Some(action) = agent.poll_action() {
        match action {
            Action::Launch { framework_id, task } => {
                let key = (framework_id, task.task_id.clone());
                let kill = Arc::new(AtomicBool::new(false));
                kills.insert(key.clone(), kill.clone());
                let (runtime, events) = (runtime.clone(), events.clone());
                tokio::task::spawn_blocking(move || {
                    let running = || {
                        let _ = events.send((key.clone(), TaskEvent::Running));
                    };
                    let end = runtime.run(&task, kill, running);
                    let _ = events.send((key, end));
                });
            }
            Action::Kill {
                framework_id,
                task_id,
            } => {
                if let Some(flag) = kills.get(&(framework_id, task_id)) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    while let Some(msg) = agent.poll_transmit() {
        if let Err(e) = sender.send(&msg).await {
            tracing::warn!(error = format!("{e:#}"), "cannot send to the master");
            return false;
        }
    }
    true
}
