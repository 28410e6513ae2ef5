//! The master's connections: what each one is (a pending peer, an agent,
//! a framework's scheduler) and the principal its certificate proved.
//!
//! A connection's peer carries the id it speaks for, so an agent
//! connection without an agent id, or a framework connection without a
//! framework, cannot be written down.

use crate::{Channel, ConnId};
use std::collections::HashMap;
use stoa_proto::{AgentId, FrameworkId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Peer {
    /// Connected, first message not yet seen.
    Pending(Channel),
    Agent(AgentId),
    Framework(FrameworkId),
}

#[derive(Debug, Default)]
pub(crate) struct Connections {
    peers: HashMap<ConnId, Peer>,
    /// The principal each connection authenticated as (its certificate).
    principals: HashMap<ConnId, String>,
}

impl Connections {
    pub(crate) fn opened(&mut self, conn: ConnId, channel: Channel) {
        self.peers.insert(conn, Peer::Pending(channel));
    }

    /// `conn`'s principal: as proved by its certificate, or (for a hosted
    /// scheduler) as the master decided; `None` takes it away.
    pub(crate) fn set_principal(&mut self, conn: ConnId, principal: Option<String>) {
        match principal {
            Some(p) => self.principals.insert(conn, p),
            None => self.principals.remove(&conn),
        };
    }

    pub(crate) fn principal(&self, conn: ConnId) -> Option<&String> {
        self.principals.get(&conn)
    }

    pub(crate) fn peer(&self, conn: ConnId) -> Option<&Peer> {
        self.peers.get(&conn)
    }

    /// `conn` now speaks for `peer` (an agent or a framework).
    pub(crate) fn bind(&mut self, conn: ConnId, peer: Peer) {
        self.peers.insert(conn, peer);
    }

    /// The agent `conn` speaks for, if it is an agent's.
    pub(crate) fn agent(&self, conn: ConnId) -> Option<&AgentId> {
        match self.peers.get(&conn)? {
            Peer::Agent(id) => Some(id),
            _ => None,
        }
    }

    /// Forgets `conn` (closed, or replaced by a newer connection of the
    /// same peer); returns what it was.
    pub(crate) fn close(&mut self, conn: ConnId) -> Option<Peer> {
        self.principals.remove(&conn);
        self.peers.remove(&conn)
    }
}
