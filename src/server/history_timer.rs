//! History expiry in the loop: one entry in the timer queue.
//!
//! The hub's history says when it next has something to drop ([`Hub::history_deadline`]: the
//! oldest kept message's or idle topic's TTL, O(1), its deadlines are kept in order). That
//! deadline is one entry in the timer queue ([`super::timers`]) under the token reserved for
//! it, [`HISTORY_TIMER`], like the backplane's: nothing is checked per turn but the queue's
//! head. When it fires, [`HistoryTimer::on_timer`] sweeps (`Hub::tick`) and arms the next one.
//!
//! Publishing and subscribing expire exactly at `now` on their own (a recovering subscriber is
//! never replayed an expired message); this sweep is for what nobody asks about, so it runs at
//! most once per [`SWEEP`]: messages published over a second are dropped together, within a
//! second of their TTL, for one wake-up instead of one each.
//!
//! ```text
//! end of turn: timer.arm(hub, timers)                      // the deadline may have appeared
//! timer due:   timer.on_timer(hub, timers, deadline, now)  // sweep, arm the next
//! ```

use super::timers::{DeadlineQueue, FIRST_RESERVED_TOKEN, NEVER};
use crate::hub::Hub;
use crate::protocol::session::Millis;

/// The timer-queue token of the history's deadline: the one below the backplane's (never a
/// connection's slab key; the reactor caps connections below it).
pub(super) const HISTORY_TIMER: usize = FIRST_RESERVED_TOKEN;

/// Shortest gap between two sweeps (TTLs are kept within one).
pub(super) const SWEEP: Millis = 1000;

/// The history's entry in the timer queue.
pub(super) struct HistoryTimer {
    /// The deadline of its live entry (`NEVER`: none), as `DeadlineQueue::arm` keeps it.
    armed: Millis,
    /// When it last swept.
    swept: Millis,
}

impl Default for HistoryTimer {
    fn default() -> HistoryTimer {
        HistoryTimer { armed: NEVER, swept: 0 }
    }
}

impl HistoryTimer {
    /// Puts the history's next deadline in the queue, no sooner than a sweep after the last
    /// (only ever earlier than the live entry; a later deadline lets that entry fire and
    /// re-arm, see `timers`). Cheap enough for every turn: without history, one branch.
    #[inline]
    pub(super) fn arm(&mut self, hub: &Hub, timers: &mut DeadlineQueue) {
        if let Some(at) = hub.history_deadline() {
            timers.arm(HISTORY_TIMER, &mut self.armed, at.max(self.swept.saturating_add(SWEEP)));
        }
    }

    /// The entry armed for `deadline` came due at `now`: drop what expired, arm the next.
    /// A superseded entry (an earlier one replaced it) is ignored.
    pub(super) fn on_timer(
        &mut self,
        hub: &mut Hub,
        timers: &mut DeadlineQueue,
        deadline: Millis,
        now: Millis,
    ) {
        if self.armed != deadline {
            return;
        }
        self.armed = NEVER;
        self.swept = now;
        hub.tick(now);
        self.arm(hub, timers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::history::{HistoryConfig, MemoryHistory};
    use crate::hub::{ClientId, HubConfig, Outbox};
    use crate::metrics::Metrics;
    use crate::protocol::deflate::SharedMessage;

    const TTL: Millis = 5_000;

    /// Nobody subscribes: publishes are only kept.
    struct Nobody;

    impl Outbox for Nobody {
        fn deliver(&mut self, _: ClientId, _: &SharedMessage) -> bool {
            true
        }
        fn deliver_all(&mut self, _: &SharedMessage) -> usize {
            0
        }
    }

    fn hub() -> Hub {
        let config = HistoryConfig { size: 100, ttl: TTL, max_bytes: 1 << 20, max_topics: 1000 };
        Hub::new(HubConfig::default()).with_history(Box::new(MemoryHistory::new(config, 7)))
    }

    fn publish(hub: &mut Hub, now: Millis) {
        hub.set_clock(now);
        let data = serde_json::value::RawValue::from_string("1".into()).unwrap();
        hub.publish("t", &data, &mut Nobody, &mut Metrics::default()).unwrap();
    }

    /// Runs every entry due at `now` as the loop does; returns how many were the history's.
    fn run_due(timer: &mut HistoryTimer, hub: &mut Hub, timers: &mut DeadlineQueue, now: Millis) -> usize {
        let mut fired = 0;
        while let Some((deadline, token)) = timers.pop_due(now) {
            assert_eq!(token, HISTORY_TIMER);
            timer.on_timer(hub, timers, deadline, now);
            fired += 1;
        }
        fired
    }

    #[test]
    fn expiry_is_one_entry_in_the_timer_queue() {
        let (mut hub, mut timers, mut timer) = (hub(), DeadlineQueue::default(), HistoryTimer::default());
        timer.arm(&hub, &mut timers);
        assert!(timers.is_empty(), "no history kept: no entry");
        publish(&mut hub, 1_000);
        timer.arm(&hub, &mut timers);
        assert_eq!(timers.next(), Some(1_000 + TTL));
        // More publishes and turns move the deadline later, if at all: still one entry.
        for now in [2_000, 3_000, 3_500] {
            publish(&mut hub, now);
            timer.arm(&hub, &mut timers);
        }
        assert_eq!(timers.len(), 1);
        // The clock alone expires nothing: that is the timer's job.
        hub.set_clock(1_000 + TTL);
        assert_eq!(hub.history_stats().messages, 4);
        assert_eq!(run_due(&mut timer, &mut hub, &mut timers, 1_000 + TTL - 1), 0);
        assert_eq!(run_due(&mut timer, &mut hub, &mut timers, 1_000 + TTL), 1);
        assert_eq!(hub.history_stats().messages, 3, "the first is gone at its deadline");
        // The next deadline (2 s + TTL) is a sweep after the last: armed as it is.
        assert_eq!(timers.next(), Some(2_000 + TTL));
        assert_eq!(run_due(&mut timer, &mut hub, &mut timers, 2_000 + TTL), 1);
        // 3 s + TTL comes a second after that sweep; 3.5 s + TTL goes with it then.
        assert_eq!(timers.next(), Some(3_000 + TTL));
        assert_eq!(run_due(&mut timer, &mut hub, &mut timers, 3_000 + TTL), 1);
        assert_eq!(hub.history_stats().messages, 1);
        assert_eq!(timers.next(), Some(4_000 + TTL), "at most one sweep a second");
        assert_eq!(run_due(&mut timer, &mut hub, &mut timers, 4_000 + TTL), 1);
        assert_eq!(hub.history_stats().messages, 0);
        // Then only the idle topic's own expiry is left, and after it nothing.
        while let Some(next) = timers.next() {
            run_due(&mut timer, &mut hub, &mut timers, next);
        }
        assert_eq!(hub.history_deadline(), None);
        assert_eq!(hub.history_stats().topics, 0);
    }

    #[test]
    fn a_superseded_entry_does_nothing() {
        let (mut hub, mut timers, mut timer) = (hub(), DeadlineQueue::default(), HistoryTimer::default());
        publish(&mut hub, 1_000);
        timer.arm(&hub, &mut timers);
        // A stale entry (another deadline than the live one) neither sweeps nor re-arms.
        timer.on_timer(&mut hub, &mut timers, 42, 1_000 + TTL);
        assert_eq!(hub.history_stats().messages, 1);
        assert_eq!(timers.len(), 1);
    }
}
