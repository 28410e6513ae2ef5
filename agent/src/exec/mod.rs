//! Running tasks: `wasm` runs wasm binaries under wasmtime, `native` runs
//! host programs in cgroups, each in its task directory (`task_dir`);
//! `hosted` runs a cluster-hosted scheduler component (`scheduler`);
//! `kill` asks any of them to stop; `mailbox` carries framework messages to
//! and from wasm tasks; `link` reports tasks' events to the agent;
//! `stderr_tail` keeps what an ephemeral task (one without a directory)
//! last wrote to stderr.

pub mod files;
pub mod hosted;
pub mod kill;
pub mod link;
pub mod mailbox;
pub mod native;
pub mod scheduler;
pub mod spares;
pub mod stderr_tail;
pub mod task_dir;
pub mod wasm;
