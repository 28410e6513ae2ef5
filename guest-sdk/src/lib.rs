//! What framework authors import to write Stoa tasks and schedulers in
//! Rust.
//!
//! A task:
//!
//! ```ignore
//! struct Hello;
//! impl stoa_guest::Task for Hello {
//!     fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
//!         Ok([b"hello, ".as_slice(), &input].concat())
//!     }
//! }
//! stoa_guest::export_task!(Hello);
//! ```
//!
//! A scheduler implements [`scheduler::Scheduler`] and is exported with
//! [`export_scheduler!`]; see `docs/framework-authors.md`.
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the `.wasm`
//! file is a component of the `stoa:task` or `stoa:scheduler` world (see
//! `wit/`).

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/task",
        world: "task",
        pub_export_macro: true,
        export_macro_name: "export_task",
        default_bindings_module: "stoa_guest::bindings",
    });
}

#[doc(hidden)]
pub mod scheduler_bindings {
    wit_bindgen::generate!({
        path: "../wit/scheduler",
        world: "scheduler",
        pub_export_macro: true,
        export_macro_name: "export_scheduler_world",
        additional_derives: [PartialEq],
        default_bindings_module: "stoa_guest::scheduler_bindings",
    });
}

pub mod scheduler;

/// A task: input bytes in, output bytes or an error message out. Standard
/// output and standard error go to the task's sandbox logs.
pub use bindings::Guest as Task;

/// Exports a type implementing [`Task`] as the component's `run`.
pub use bindings::export_task;

/// This task's id, as its scheduler named it in the launch. (The
/// environment holds only what the launch gave.)
pub fn task_id() -> String {
    bindings::stoa::task::context::task_id()
}

/// Talking with the scheduler while a task runs: [`messages::receive`]
/// waits for the next MESSAGE the scheduler sent this task,
/// [`messages::send`] sends one back (a MESSAGE event naming the task).
/// Best effort both ways, at most 64 KiB each.
pub mod messages {
    pub use crate::bindings::stoa::task::messages::{receive, send};
}
