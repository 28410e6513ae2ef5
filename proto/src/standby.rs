//! The standby channel: a client asks a master that does not lead who
//! does.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// "Who leads, other than `not`?", sent by a client on a uni stream of a
/// standby connection. The standby answers when it knows a leader other
/// than `not`, or once `hold_ms` have passed, by closing the connection
/// with the leader's address (or nothing) as the reason.
///
/// `not` is the leader the client just lost: while etcd still names it
/// (its lease has not run out), the answer waits for the next one instead
/// of sending the client back to a dead master. A client holding a query
/// open while connected learns of a new leader the moment it is elected,
/// without waiting for its own link to time out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderQuery {
    pub not: Option<SocketAddr>,
    pub hold_ms: u32,
}
