//! The Stoa master: admits agents, subscribes frameworks, offers resources,
//! validates accepts, launches tasks and relays status updates.
//!
//! [`core`] is a sans-IO state machine (no sockets, no clock, no tokio);
//! [`driver`] moves bytes between QUIC connections and the core.

pub mod core;
pub mod driver;
