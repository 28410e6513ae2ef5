//! Bounds the log lines of refused handshakes: a flood of bogus packets
//! (a million datagrams once grew the master's log by 42 MB) writes one
//! line per window, with the count of those it left out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct RefusalLog {
    window: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl RefusalLog {
    /// At most one line per this long.
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// A handshake was refused at `now`: `Some(n)` if a line is due, `n`
    /// being how many refusals went unlogged since the last one; `None`
    /// if this one is only counted.
    pub fn note(&self, now: Instant) -> Option<u64> {
        let due = {
            let Ok(mut last) = self.window.lock() else {
                return None;
            };
            let due = last.is_none_or(|t| now.duration_since(t) >= Self::WINDOW);
            if due {
                *last = Some(now);
            }
            due
        };
        if due {
            Some(self.unlogged.swap(0, Ordering::Relaxed))
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_refusals_in_one_window_write_one_line() {
        let log = RefusalLog::default();
        let start = Instant::now();
        let lines = (0..1_000_000).filter(|_| log.note(start).is_some()).count();
        assert_eq!(lines, 1);
        // The next window's first line counts what was left out.
        assert_eq!(log.note(start + RefusalLog::WINDOW), Some(999_999));
        assert_eq!(log.note(start + RefusalLog::WINDOW), None);
    }
}
