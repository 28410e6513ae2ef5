//! The Stoa agent: registers one machine's resources with the master and
//! runs the tasks launched on it.
//!
//! [`core`] is a sans-IO state machine (no sockets, no clock, no wasmtime);
//! [`exec`] runs tasks; [`driver`] connects the two to the master over QUIC.

/// The sans-IO state machine, in its own crate so that nothing with I/O can
/// creep into it.
pub use stoa_agent_core as core;
pub mod cgroups;
pub mod deadline;
pub mod driver;
pub mod exec;
pub mod executor;
pub mod executor_dir;
pub mod executors;
mod log_server;
pub mod metrics;
pub mod trash;
pub mod work_dir;
