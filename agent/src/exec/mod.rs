//! Running tasks: `wasm` runs wasm binaries under wasmtime, each in its
//! task directory (`task_dir`).

pub mod task_dir;
pub mod wasm;
