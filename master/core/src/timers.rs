//! The master's timer table: every deadline that belongs to one agent or
//! one framework, in due order, from which `poll_timeout` reads the next
//! and `handle_timeout` takes those that are due.
//!
//! Each timer is keyed by what it is for, so setting it again moves it
//! and cancelling it needs no arithmetic on when it was set (the books
//! used to recompute a deadline to find it, and a changed timeout would
//! have left it behind).

use std::collections::{BTreeSet, HashMap};
use stoa_proto::{AgentId, FrameworkId, Time};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// A connected agent is due to be heard from.
    Heartbeat(AgentId),
    /// An unreachable agent is due to be removed.
    Removal(AgentId),
    /// A framework whose scheduler is away is due to be torn down.
    Failover(FrameworkId),
    /// Agents admitted before this master started that have not
    /// registered again by now are given up on (`agent_reregister_timeout`).
    Reregister,
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    due: BTreeSet<(Time, Timer)>,
    at: HashMap<Timer, Time>,
}

impl Timers {
    /// Arms `timer` for `at`, moving it if it was armed.
    pub(crate) fn set(&mut self, timer: Timer, at: Time) {
        if let Some(old) = self.at.insert(timer.clone(), at) {
            self.due.remove(&(old, timer.clone()));
        }
        self.due.insert((at, timer));
    }

    pub(crate) fn cancel(&mut self, timer: &Timer) {
        if let Some(old) = self.at.remove(timer) {
            self.due.remove(&(old, timer.clone()));
        }
    }

    /// When the next timer is due.
    pub(crate) fn next(&self) -> Option<Time> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Disarms and returns the earliest timer due by `now`. Taken one at a
    /// time, so that handling one may set or cancel others.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<Timer> {
        let (at, _) = self.due.first()?;
        if *at > now {
            return None;
        }
        let (_, timer) = self.due.pop_first()?;
        self.at.remove(&timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(s: u64) -> Time {
        Time::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn timers_fire_in_due_order_and_move_or_cancel_by_key() {
        let a = Timer::Heartbeat(AgentId::new("a").expect("id"));
        let b = Timer::Removal(AgentId::new("b").expect("id"));
        let f = Timer::Failover(FrameworkId::new("f").expect("id"));
        let mut t = Timers::default();
        t.set(a.clone(), secs(5));
        t.set(b.clone(), secs(3));
        t.set(f.clone(), secs(4));
        assert_eq!(t.next(), Some(secs(3)));
        t.set(b.clone(), secs(9));
        assert_eq!(t.next(), Some(secs(4)), "moved, not doubled");
        t.cancel(&f);
        assert_eq!(t.pop_due(secs(4)), None);
        assert_eq!(t.pop_due(secs(10)), Some(a));
        assert_eq!(t.pop_due(secs(10)), Some(b));
        assert_eq!(t.pop_due(secs(10)), None);
        assert_eq!(t.next(), None);
        assert!(t.at.is_empty());
    }
}
