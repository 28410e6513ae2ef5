//! Running tasks: `wasm` runs wasm binaries under wasmtime, `native` runs
//! host programs in cgroups, each in its task directory (`task_dir`);
//! `hosted` runs a cluster-hosted scheduler component (`scheduler`).

pub mod hosted;
pub mod native;
pub mod scheduler;
pub mod task_dir;
pub mod wasm;
