//! The Stoa master: admits agents, subscribes frameworks, offers resources,
//! validates accepts, launches tasks and relays status updates.
//!
//! [`core`] is a sans-IO state machine (no sockets, no clock, no tokio);
//! [`driver`] moves bytes between QUIC connections and the core.

/// The sans-IO state machine, in its own crate so that nothing with I/O can
/// creep into it.
pub use stoa_master_core as core;
pub mod acl_file;
pub mod driver;
pub mod etcd_server;
pub mod http;
pub mod metrics;
mod peer_queue;
pub mod refusal_log;
pub mod registry;
