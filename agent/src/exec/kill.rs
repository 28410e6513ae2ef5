//! How a task is asked to stop, whatever runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Asks a task to stop. Running wasm sees the flag at its next epoch tick;
/// a task waiting in a host call, or a native task, is woken by
/// [`Kill::triggered`].
#[derive(Debug, Clone, Default)]
pub struct Kill {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Kill {
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Resolves once the kill is triggered (at once if it already was).
    pub async fn triggered(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_triggered() {
                return;
            }
            notified.await;
        }
    }
}
