//! Who may take a connection slot: the per-address limit and the bound on connections still
//! sending their request head. Sans-IO policy: addresses and connection keys in, decisions out.
//!
//! Two rules, both decided when a connection is accepted:
//! - **Per address** (`--max-connections-per-ip N`, 0 = unlimited): an address with N
//!   connections (any phase, from accept to removal) gets 429 for the next one. IPv4 addresses
//!   count one by one; IPv6 addresses by /64, the block one subscriber line or host usually
//!   gets (anyone holding a /64 picks from 2^64 addresses); an IPv4-mapped IPv6 address counts
//!   as its IPv4 address.
//! - **Pending handshakes** (`--max-pending-handshakes`, default a quarter of
//!   `--max-connections`): connections that have not finished their request head are bounded
//!   on their own, so half-sent requests cannot hold the slots WebSocket clients need. When the
//!   bound is reached, a newcomer from an address with fewer pending requests than the
//!   address holding the most takes the place of that address's oldest pending request (which
//!   is told 503); a newcomer from the address holding the most is itself told 503. One host
//!   renewing half-sent requests can therefore only push out its own, and a client that sends
//!   its head at once gets through.
//!
//! The reactor calls [`Admission::admit`] on accept and then [`Admission::opened`] (unless it
//! refused), [`Admission::head_done`] when the connection leaves the request-head phase, and
//! [`Admission::closed`] when it is removed. Cost: one hash-map entry per address with a pending
//! request (at most the pending bound) and, when the per-address limit is on, one per address
//! with a connection; the eviction search walks only addresses with pending requests.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// An address as the limits count it: IPv4 whole, IPv6 by its /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4(u32),
    V6Prefix(u64),
}

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(u32::from(v4)),
                None => AddrKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// What to do with a connection just accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Take it (after evicting `evict`, a pending connection's key, when set: tell it 503).
    Admit { evict: Option<usize> },
    /// The address is at `--max-connections-per-ip`: 429.
    OverAddressLimit,
    /// Pending handshakes are at their bound and this address holds the most: 503.
    PendingFull,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    connections: u32,
    pending: u32,
}

#[derive(Debug)]
pub struct Admission {
    per_address: usize,
    max_pending: usize,
    /// Per address: connections (only kept when the per-address limit is on) and pending heads.
    addrs: HashMap<AddrKey, Counts>,
    /// Pending connections: key -> (address, admission sequence number).
    pending: HashMap<usize, (AddrKey, u64)>,
    /// Pending connections in admission order, for "oldest of this address"; entries whose
    /// sequence number no longer matches `pending` are stale and skipped.
    order: VecDeque<(usize, u64)>,
    next_seq: u64,
}

impl Admission {
    /// `per_address` 0 means unlimited; `max_pending` is at least 1.
    pub fn new(per_address: usize, max_pending: usize) -> Admission {
        Admission {
            per_address,
            max_pending: max_pending.max(1),
            addrs: HashMap::new(),
            pending: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    #[cfg(test)]
    fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Decides on a connection from `addr`. Changes nothing: on `Admit`, the caller evicts (and
    /// reports it through `closed` or `head_done` as usual) and then calls `opened`.
    pub fn admit(&mut self, addr: AddrKey) -> Decision {
        let mine = self.addrs.get(&addr).copied().unwrap_or_default();
        if self.per_address > 0 && mine.connections as usize >= self.per_address {
            return Decision::OverAddressLimit;
        }
        if self.pending.len() < self.max_pending {
            return Decision::Admit { evict: None };
        }
        // Full: the address holding the most pending requests gives up its oldest, unless that
        // is the newcomer's own address (or ties with it).
        let Some((&worst, worst_counts)) =
            self.addrs.iter().filter(|(_, c)| c.pending > 0).max_by_key(|(_, c)| c.pending)
        else {
            return Decision::PendingFull;
        };
        if worst_counts.pending <= mine.pending {
            return Decision::PendingFull;
        }
        match self.oldest_pending_of(worst) {
            Some(key) => Decision::Admit { evict: Some(key) },
            None => Decision::PendingFull,
        }
    }

    fn oldest_pending_of(&mut self, addr: AddrKey) -> Option<usize> {
        // Drop stale entries at the front as we go: each entry is skipped at most once there.
        while let Some(&(key, seq)) = self.order.front() {
            if self.pending.get(&key).is_some_and(|&(_, s)| s == seq) {
                break;
            }
            self.order.pop_front();
        }
        self.order
            .iter()
            .find(|&&(key, seq)| self.pending.get(&key).is_some_and(|&(a, s)| s == seq && a == addr))
            .map(|&(key, _)| key)
    }

    /// Connection `key` from `addr` was admitted and is reading its request head.
    pub fn opened(&mut self, key: usize, addr: AddrKey) {
        let counts = self.addrs.entry(addr).or_default();
        if self.per_address > 0 {
            counts.connections += 1;
        }
        counts.pending += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(key, (addr, seq));
        self.order.push_back((key, seq));
        if self.order.len() > 2 * self.max_pending + 64 {
            let pending = &self.pending;
            self.order.retain(|&(key, seq)| pending.get(&key).is_some_and(|&(_, s)| s == seq));
        }
    }

    /// Connection `key` is past its request head (upgraded, answered or refused). Idempotent.
    pub fn head_done(&mut self, key: usize) {
        let Some((addr, _)) = self.pending.remove(&key) else { return };
        if let Some(counts) = self.addrs.get_mut(&addr) {
            counts.pending = counts.pending.saturating_sub(1);
            if counts.pending == 0 && counts.connections == 0 {
                self.addrs.remove(&addr);
            }
        }
        if self.pending.is_empty() {
            self.order.clear();
        }
    }

    /// Connection `key` from `addr` is gone (it was `opened`).
    pub fn closed(&mut self, key: usize, addr: AddrKey) {
        self.head_done(key);
        if self.per_address == 0 {
            return;
        }
        if let Some(counts) = self.addrs.get_mut(&addr) {
            counts.connections = counts.connections.saturating_sub(1);
            if counts.pending == 0 && counts.connections == 0 {
                self.addrs.remove(&addr);
            }
        }
    }

    /// Whether every count is back to zero (tests).
    #[cfg(test)]
    fn is_idle(&self) -> bool {
        self.addrs.is_empty() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> AddrKey {
        AddrKey::of(s.parse().unwrap())
    }

    #[test]
    fn ipv4_counts_each_address_and_ipv6_each_slash_64() {
        assert_eq!(key("10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("2001:db8::1"), key("2001:db9::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"), "IPv4-mapped counts as IPv4");
        assert_ne!(key("::1"), key("127.0.0.1"));
    }

    #[test]
    fn per_address_limit_refuses_the_next_and_frees_on_close() {
        let mut a = Admission::new(2, 100);
        let (x, y) = (key("10.0.0.1"), key("2001:db8::1"));
        for k in 0..2 {
            assert_eq!(a.admit(x), Decision::Admit { evict: None });
            a.opened(k, x);
        }
        assert_eq!(a.admit(x), Decision::OverAddressLimit);
        // Leaving the head phase does not free the slot: the limit counts connections.
        a.head_done(0);
        assert_eq!(a.admit(x), Decision::OverAddressLimit);
        // Another /64 is another address; one in the same /64 is not.
        assert_eq!(a.admit(y), Decision::Admit { evict: None });
        a.opened(2, y);
        a.opened(3, key("2001:db8::2"));
        assert_eq!(a.admit(key("2001:db8::ffff")), Decision::OverAddressLimit);
        a.closed(0, x);
        assert_eq!(a.admit(x), Decision::Admit { evict: None });
        for (k, addr) in [(1, x), (2, y), (3, y)] {
            a.closed(k, addr);
        }
        assert!(a.is_idle());
    }

    #[test]
    fn unlimited_per_address_keeps_no_connection_counts() {
        let mut a = Admission::new(0, 100);
        let x = key("10.0.0.1");
        for k in 0..50 {
            assert_eq!(a.admit(x), Decision::Admit { evict: None });
            a.opened(k, x);
            a.head_done(k);
        }
        assert!(a.is_idle(), "open connections cost no entry without the limit");
        a.closed(7, x); // harmless
        assert!(a.is_idle());
    }

    #[test]
    fn a_full_pending_table_evicts_the_oldest_of_the_biggest_holder() {
        let mut a = Admission::new(0, 4);
        let (attacker, client) = (key("127.0.0.2"), key("127.0.0.1"));
        for k in 0..4 {
            assert_eq!(a.admit(attacker), Decision::Admit { evict: None });
            a.opened(k, attacker);
        }
        // The attacker cannot push out its own to grow: refused.
        assert_eq!(a.admit(attacker), Decision::PendingFull);
        // A client gets in, in place of the attacker's oldest.
        assert_eq!(a.admit(client), Decision::Admit { evict: Some(0) });
        a.head_done(0);
        a.opened(10, client);
        assert_eq!(a.pending_count(), 4);
        // The next client pushes out the next oldest; the client's own request is never chosen.
        assert_eq!(a.admit(key("127.0.0.3")), Decision::Admit { evict: Some(1) });
        a.closed(1, attacker);
        a.opened(11, key("127.0.0.3"));
        // Once the client finishes its head, its place is free again.
        a.head_done(10);
        assert_eq!(a.admit(attacker), Decision::Admit { evict: None });
        a.opened(12, attacker);
        // Now the client holds the most: a newcomer with fewer evicts the client's oldest, but
        // a tie is not enough.
        a.head_done(2);
        a.head_done(3);
        a.head_done(12);
        a.opened(13, client);
        a.opened(14, client);
        a.opened(15, key("127.0.0.4"));
        assert_eq!(a.pending_count(), 4);
        assert_eq!(a.admit(key("127.0.0.3")), Decision::Admit { evict: Some(13) });
        assert_eq!(a.admit(client), Decision::PendingFull);
    }

    #[test]
    fn stale_order_entries_are_skipped_and_trimmed() {
        let mut a = Admission::new(0, 2);
        let (x, y) = (key("10.0.0.1"), key("10.0.0.2"));
        // Many connections come and go through the same keys.
        for round in 0..1000 {
            a.opened(round % 3, x);
            a.head_done(round % 3);
        }
        assert!(a.order.len() <= 2 * 2 + 64);
        a.opened(5, x);
        a.opened(6, x);
        assert_eq!(a.admit(y), Decision::Admit { evict: Some(5) });
        a.closed(5, x);
        a.opened(5, y); // the key is reused by the newcomer
        a.opened(7, x);
        assert_eq!(a.admit(key("10.0.0.3")), Decision::Admit { evict: Some(6) });
    }
}
