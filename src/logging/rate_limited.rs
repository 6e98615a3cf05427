//! A warning that can come in floods (accept failures, slow consumers cut off, rate-limit
//! closes): the first is logged in full, then at most one summary line per interval with the
//! count of those not logged. Sans-IO: time comes in as `now` (the reactor's milliseconds).
//!
//! ```ignore
//! if s.logs.accept_failed.hit(s.now) {
//!     warn!("accept failed ({e})"); // the first of a flood, in full, with whatever key-values
//! }
//! // and once per loop turn, so the last count of a flood is not held back until the next
//! // event (the loop also wakes at `next_due`):
//! s.logs.accept_failed.flush(s.now);
//! ```
//!
//! State: one deadline and one counter (16 bytes beyond the name), no allocation.

use crate::protocol::session::Millis;

/// Whether to log the event just recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Log,
    Suppress,
}

#[derive(Debug)]
pub struct RateLimitedLog {
    /// What is counted, plural, for the summary line ("accept failures").
    what: &'static str,
    interval: Millis,
    /// End of the current window; `None` when quiet (the next event is logged in full).
    until: Option<Millis>,
    suppressed: u64,
}

impl RateLimitedLog {
    pub const fn new(what: &'static str, interval: Millis) -> RateLimitedLog {
        RateLimitedLog { what, interval, until: None, suppressed: 0 }
    }

    /// Records an event at `now`. Call [`summary`](Self::summary) first, so a window that has
    /// ended reports its count before a new one starts.
    pub fn event(&mut self, now: Millis) -> Verdict {
        self.summary_inner(now, false);
        match self.until {
            None => {
                self.until = Some(now.saturating_add(self.interval));
                Verdict::Log
            }
            Some(_) => {
                self.suppressed += 1;
                Verdict::Suppress
            }
        }
    }

    /// The count of events suppressed in the window that has ended by `now`, if any. A window
    /// that counted some starts the next one (a flood still going gets one line per interval);
    /// a window that counted none ends the flood (the next event is logged in full again).
    pub fn summary(&mut self, now: Millis) -> Option<u64> {
        self.summary_inner(now, true)
    }

    fn summary_inner(&mut self, now: Millis, take: bool) -> Option<u64> {
        let until = self.until?;
        if now < until {
            return None;
        }
        if self.suppressed == 0 {
            self.until = None;
            return None;
        }
        if !take {
            // The caller did not ask: keep the count for the summary it will ask for, but do
            // not let the window grow stale.
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.until = Some(now.saturating_add(self.interval));
        Some(n)
    }

    /// When a summary will be due, for the loop's wake-up: only while something is counted.
    pub fn next_due(&self) -> Option<Millis> {
        self.until.filter(|_| self.suppressed > 0)
    }

    /// The summary line for `n` events, e.g. "12 more accept failures in the last 5 s".
    pub fn summary_line(&self, n: u64) -> String {
        format!(
            "{n} more {} in the last {} s (not logged one by one)",
            self.what,
            self.interval as f64 / 1000.0
        )
    }

    /// Logs a summary that is due, at warn level.
    pub fn flush(&mut self, now: Millis) {
        if let Some(n) = self.summary(now) {
            log::warn!("{}", self.summary_line(n));
        }
    }

    /// Logs a due summary, records an event, and says whether to log this one in full (the
    /// first of a quiet period). The caller logs it, with its own level and key-values.
    pub fn hit(&mut self, now: Millis) -> bool {
        self.flush(now);
        self.event(now) == Verdict::Log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays events at the given times, calling `summary` before each as the reactor does,
    /// and returns what would be logged: "E@t" for an event in full, "S<n>@t" for a summary.
    fn replay(log: &mut RateLimitedLog, events: &[Millis], flush_at: &[Millis]) -> Vec<String> {
        let mut out = Vec::new();
        let mut times: Vec<(Millis, bool)> =
            events.iter().map(|&t| (t, true)).chain(flush_at.iter().map(|&t| (t, false))).collect();
        times.sort();
        for (t, is_event) in times {
            if let Some(n) = log.summary(t) {
                out.push(format!("S{n}@{t}"));
            }
            if is_event && log.event(t) == Verdict::Log {
                out.push(format!("E@{t}"));
            }
        }
        out
    }

    #[test]
    fn a_flood_is_one_line_then_one_summary_per_interval() {
        let mut log = RateLimitedLog::new("accept failures", 5_000);
        // 850 failures, one every 10 ms for 8.5 s.
        let events: Vec<Millis> = (0..850).map(|i| i * 10).collect();
        let lines = replay(&mut log, &events, &[20_000]);
        assert_eq!(lines, ["E@0", "S499@5000", "S350@20000"]);
        // The flood is over: quiet again, the next one is logged in full.
        assert_eq!(replay(&mut log, &[30_000], &[]), ["E@30000"]);
    }

    #[test]
    fn isolated_events_are_each_logged() {
        let mut log = RateLimitedLog::new("x", 1_000);
        assert_eq!(replay(&mut log, &[0, 1_500, 3_000, 10_000], &[]), ["E@0", "E@1500", "E@3000", "E@10000"]);
        assert_eq!(log.next_due(), None);
    }

    #[test]
    fn the_last_count_is_due_at_the_window_end() {
        let mut log = RateLimitedLog::new("x", 1_000);
        assert_eq!(log.event(100), Verdict::Log);
        assert_eq!(log.event(200), Verdict::Suppress);
        assert_eq!(log.next_due(), Some(1_100));
        assert_eq!(log.summary(1_099), None);
        assert_eq!(log.summary(1_100), Some(1));
        assert_eq!(log.next_due(), None);
        assert_eq!(log.summary(5_000), None);
        assert_eq!(log.event(5_001), Verdict::Log);
    }

    #[test]
    fn an_event_after_the_window_without_a_summary_call_keeps_the_count() {
        let mut log = RateLimitedLog::new("x", 1_000);
        log.event(0);
        log.event(1);
        // The caller forgot summary(); the count is still reported, not lost.
        assert_eq!(log.event(2_000), Verdict::Suppress);
        assert_eq!(log.summary(2_000), Some(2));
        assert_eq!(log.summary_line(2), "2 more x in the last 1 s (not logged one by one)");
    }
}
