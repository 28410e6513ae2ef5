//! The operator API over HTTP (`/api/v1/…`), for the CLI, the web UI and
//! scripts. Each request becomes one typed [`OperatorCall`] to the core
//! of the term being led, the same calls the QUIC operator channel
//! carries, made as the caller its bearer token names.
//!
//! Served on plain HTTP only on a loopback address (see `--http`), and
//! over HTTPS with the cluster CA's certificates anywhere (`--https`).

pub mod token;

mod api;
mod events;
pub mod tls;
mod ui;

pub use ui::UI_PATH;

use crate::driver::OperatorPort;
pub use api::ROUTES;
use std::net::SocketAddr;
use std::sync::Arc;
use stoa_master_core::events::Audience;
use stoa_proto::operator::{Caller, ClusterEvent, OperatorCall, OperatorReply};
pub use token::TokenKey;
use tokio::sync::{broadcast, watch};

/// One event as the stream's followers get it.
#[derive(Debug)]
pub struct Published {
    /// The leader's run it belongs to.
    pub instance: Arc<str>,
    pub event: ClusterEvent,
    pub audience: Audience,
    /// The ACLs in force when it happened: who may view it.
    pub acls: Arc<stoa_master_core::acl::Acls>,
}

/// What the API needs from the master process, shared by its handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The core of the term being led; `None` while standing by.
    pub core: watch::Receiver<Option<OperatorPort>>,
    /// Who leads, for a standby's answer.
    pub leader: watch::Receiver<Option<SocketAddr>>,
    /// Events as the leader publishes them.
    pub events: broadcast::Sender<Arc<Published>>,
    pub tokens: TokenKey,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Revoked tokens and certificates: refused.
    pub revoked: watch::Receiver<Arc<crate::driver::Revoked>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("leads", &self.core.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// Calls the core as `caller`; a standby answers that it is one.
    async fn call(
        &self,
        caller: &Caller,
        call: OperatorCall,
    ) -> Result<OperatorReply, api::ApiError> {
        let port = self.core.borrow().clone();
        let Some(port) = port else {
            return Err(api::ApiError::standby(*self.leader.borrow()));
        };
        port.call(caller.clone(), call)
            .await
            .ok_or_else(|| api::ApiError::standby(*self.leader.borrow()))
    }
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> anyhow::Result<()> {
    axum::serve(listener, api::router(state)).await?;
    Ok(())
}
