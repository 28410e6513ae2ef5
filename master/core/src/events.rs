//! The cluster's recent events, for the operator API's event stream: a
//! bounded memory, numbered in order, each with who may see it.

use std::collections::VecDeque;
use stoa_proto::Time;
use stoa_proto::operator::{Caller, ClusterEvent, EventKind, EventPage};

/// Events kept for clients that resume (`Last-Event-ID`); older ones are
/// gone and a client asking for them is told so.
pub const KEPT: usize = 10_000;

/// Who may see an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    Operator,
    /// The operator and this framework principal (`None`: a framework
    /// without one, seen by the operator only).
    Principal(Option<String>),
}

impl Audience {
    /// May `caller` see the event, under `acls` (its own frameworks', and
    /// others' where a rule lets it view them)?
    pub fn admits(&self, caller: &Caller, acls: &crate::acl::Acls) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Operator => *caller == Caller::Operator,
            Audience::Principal(p) => acls
                .check(
                    Some(caller.principal()),
                    crate::acl::Action::View,
                    crate::acl::Object::Owner(p.as_deref()),
                )
                .is_ok(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct EventLog {
    /// Sequence number of the next event; the first is 1, so that "after
    /// 0" is everything.
    next: u64,
    kept: VecDeque<(ClusterEvent, Audience)>,
}

impl EventLog {
    pub(crate) fn push(&mut self, now: Time, audience: Audience, kind: EventKind) {
        self.next = self.next.max(1);
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        let event = ClusterEvent {
            seq: self.next,
            at_ms: now.as_micros() / 1_000,
            kind,
        };
        self.next += 1;
        self.kept.push_back((event, audience));
    }

    /// The last sequence number given, 0 before any.
    pub(crate) fn last(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Every event kept after `after`, with who may see it.
    pub(crate) fn since(&self, after: u64) -> impl Iterator<Item = &(ClusterEvent, Audience)> {
        let oldest = self.kept.front().map_or(self.next.max(1), |(e, _)| e.seq);
        let skip = usize::try_from((after + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        self.kept.iter().skip(skip)
    }

    /// What `caller` may see after `after` (all kept, if `None`), at most
    /// `limit`.
    pub(crate) fn page(
        &self,
        instance: &str,
        (caller, acls): (&Caller, &crate::acl::Acls),
        after: Option<u64>,
        limit: usize,
    ) -> EventPage {
        let oldest = self.kept.front().map_or(self.next.max(1), |(e, _)| e.seq);
        // Sequence numbers are consecutive: the first wanted is found by
        // arithmetic, not a search.
        let events = self
            .since(after.unwrap_or(0))
            .filter(|(_, a)| a.admits(caller, acls))
            .take(limit)
            .map(|(e, _)| e.clone())
            .collect();
        EventPage {
            instance: instance.to_string(),
            events,
            oldest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(n: usize) -> EventLog {
        let mut log = EventLog::default();
        for i in 0..n {
            let audience = if i % 2 == 0 {
                Audience::Principal(Some("a".into()))
            } else {
                Audience::Operator
            };
            log.push(
                Time::from_micros(i as u64 * 1_000),
                audience,
                EventKind::LeaderElected {
                    instance: format!("{i}"),
                },
            );
        }
        log
    }

    #[test]
    fn pages_follow_on_and_each_caller_sees_its_own() {
        let log = log_of(10);
        assert_eq!(log.last(), 10);
        let all = log.page(
            "i",
            (&Caller::Operator, &crate::acl::Acls::default()),
            None,
            100,
        );
        assert_eq!(all.events.len(), 10);
        assert_eq!(all.oldest, 1);
        let rest = log.page(
            "i",
            (&Caller::Operator, &crate::acl::Acls::default()),
            Some(7),
            100,
        );
        let seqs: Vec<u64> = rest.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [8, 9, 10]);
        let tenant = log.page(
            "i",
            (&Caller::Principal("a".into()), &crate::acl::Acls::default()),
            None,
            100,
        );
        assert!(tenant.events.iter().all(|e| e.seq % 2 == 1), "{tenant:?}");
        assert_eq!(tenant.events.len(), 5);
        let other = log.page(
            "i",
            (&Caller::Principal("b".into()), &crate::acl::Acls::default()),
            None,
            100,
        );
        assert!(other.events.is_empty());
        assert_eq!(
            log.page(
                "i",
                (&Caller::Operator, &crate::acl::Acls::default()),
                None,
                3
            )
            .events
            .len(),
            3
        );
    }

    #[test]
    fn the_oldest_events_make_room_and_a_late_client_learns_it() {
        let log = log_of(KEPT + 5);
        let page = log.page(
            "i",
            (&Caller::Operator, &crate::acl::Acls::default()),
            Some(2),
            10,
        );
        assert_eq!(page.oldest, 6, "five fell out");
        assert_eq!(page.events[0].seq, 6);
    }
}
