//! Waiting for an optional deadline, shared by the agent daemon, the
//! executor process and the task runtimes (which must not import one
//! another).

use std::time::Instant;

/// Sleeps until `deadline`, or forever without one (a `select!` arm that
/// never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
