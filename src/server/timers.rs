//! Deadlines for many connections, cheaply.
//!
//! A min-heap of `(deadline, token)` with at most one live entry per connection (the earliest it
//! asked for). Deadlines that move later (every message received pushes the pong deadline out)
//! cost nothing: the old entry fires, the connection finds nothing due and re-arms for its real
//! deadline. So the cost per connection is O(log n) per timer period, never a scan of all
//! connections per tick.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::protocol::session::Millis;

pub const NEVER: Millis = Millis::MAX;

/// Entries pack the deadline (high 40 bits: 34 years of milliseconds) and the token (low 24
/// bits: 16M connections, far beyond any descriptor limit) into one `u64`, so the heap costs 8
/// bytes per connection.
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
/// The top token, above every connection key, for a deadline that is not a connection's: the
/// backplane's reconnect backoff.
pub const RESERVED_TOKEN: usize = TOKEN_MASK as usize;
/// The lowest token reserved for such deadlines (the one below is the history's expiry); the
/// reactor caps connection keys below it.
pub const FIRST_RESERVED_TOKEN: usize = RESERVED_TOKEN - 1;

#[derive(Default)]
pub struct DeadlineQueue {
    heap: BinaryHeap<Reverse<u64>>,
}

#[inline]
fn pack(deadline: Millis, token: usize) -> u64 {
    (deadline.min(NEVER >> TOKEN_BITS) << TOKEN_BITS) | (token as u64 & TOKEN_MASK)
}

#[inline]
fn unpack(entry: u64) -> (Millis, usize) {
    (entry >> TOKEN_BITS, (entry & TOKEN_MASK) as usize)
}

impl DeadlineQueue {
    /// Arms `token` for `deadline` if that is earlier than the entry it already has
    /// (`armed` is the connection's record of that entry, updated here).
    #[inline]
    pub fn arm(&mut self, token: usize, armed: &mut Millis, deadline: Millis) {
        debug_assert!(token as u64 <= TOKEN_MASK);
        if deadline < *armed && deadline < NEVER >> TOKEN_BITS {
            self.heap.push(Reverse(pack(deadline, token)));
            *armed = deadline;
        }
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse(e)| unpack(*e).0)
    }

    /// Pops one entry due at `now`. The caller checks it against the connection's `armed`
    /// record (stale entries are ignored) and re-arms as needed.
    pub fn pop_due(&mut self, now: Millis) -> Option<(Millis, usize)> {
        match self.heap.peek() {
            Some(Reverse(e)) if unpack(*e).0 <= now => self.heap.pop().map(|Reverse(e)| unpack(e)),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_later_deadlines_do_not_add_entries() {
        let mut q = DeadlineQueue::default();
        let (mut a, mut b) = (NEVER, NEVER);
        q.arm(1, &mut a, 50);
        q.arm(2, &mut b, 10);
        q.arm(1, &mut a, 70); // later: no new entry
        assert_eq!(q.len(), 2);
        q.arm(1, &mut a, 5); // earlier: new entry
        assert_eq!(q.len(), 3);
        assert_eq!(q.next(), Some(5));
        assert_eq!(q.pop_due(4), None);
        assert_eq!(q.pop_due(100), Some((5, 1)));
        assert_eq!(q.pop_due(100), Some((10, 2)));
        assert_eq!(q.pop_due(100), Some((50, 1)), "stale entry still pops; caller ignores it");
        assert!(q.is_empty());
    }
}
