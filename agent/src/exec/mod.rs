//! Running tasks. `wasm` runs `stoa:task` components under wasmtime.

pub mod wasm;
