//! The hub's view of the connections: [`Deliveries`], the [`Outbox`] a publish writes into.
//!
//! A delivery queues the one shared frame (an `Rc` clone, no copy) on a subscriber: the plain
//! frame, or for a client that negotiated permessage-deflate the compressed one for its window,
//! compressed at most once per message and window by the reactor's [`Deflater`]; marks it for
//! the end-of-turn flush and returns: nothing is written to a socket inside a publish. The
//! end-of-turn flush (`lifecycle::flush_dirty`) then writes with a per-connection and a per-turn
//! byte budget, so a fan-out of 1 MiB to thousands of subscribers is spread over turns and other
//! clients are read and answered in between; the publisher's ack leaves at once. A subscriber
//! whose queue reaches [`FLUSH_SOON_BYTES`] (or half its `--send-queue`) makes the loop stop
//! reading for this turn and flush, so bursts are written as fast as they are queued.
//!
//! Bounds, judged here and again after each flush: a subscriber whose socket has refused output
//! and whose unsent output (our queue plus what its socket held unsent when it last refused
//! more) passes `--max-queued-bytes`, or that holds more than `--send-queue` hub messages, is
//! refused further frames and listed; [`Deliveries::finish`] hands the list back and
//! [`Cuts::apply`] cuts those clients off (1008, counted as slow consumers) right after the hub
//! returns (the hub is busy during the call). Used by every caller of the hub: WebSocket
//! messages (`frames`), the HTTP publish API (`http_route`) and the backplane (`relay`).
//!
//! The answers to held HTTP publishes ([`Phase::Held`](super::connection::Phase::Held)),
//! which the hub gives through [`Outbox::numbered`] when Redis has numbered them, leave the
//! same way: built here, written by [`Cuts::apply`] once the hub has returned.

use slab::Slab;

use super::connection::Connection;
use super::lifecycle::{answer_held, cut_slow_consumer};
use super::state::{Settings, Shared};
use super::timers::NEVER;
use crate::backplane::redis::{BackplaneStats, RedisBackplane};
use crate::backplane::Backplane;
use crate::http::{self, Response};
use crate::hub::history::Offset;
use crate::hub::{ClientId, Outbox};
use crate::protocol::deflate::{DeflateStats, Deflater, SharedMessage};

/// A subscriber with this much queued ends the turn's reading early (see the module header).
const FLUSH_SOON_BYTES: usize = 256 * 1024;

/// The hub's view of the connections: queue a shared frame, bounded per client.
pub(super) struct Deliveries<'a> {
    pub(super) conns: &'a mut Slab<Connection>,
    dirty: &'a mut Vec<usize>,
    deflater: &'a mut Deflater,
    max_queued_bytes: usize,
    send_queue: usize,
    /// Clients over a bound during this call; cut off right after it (the hub is busy).
    cuts: Vec<usize>,
    /// Held HTTP requests answered during this call; written right after it.
    answers: Vec<(usize, Response)>,
    /// A subscriber's queue reached the flush-soon mark.
    flush_soon: bool,
    /// Where publishes go on to the other nodes; `None` for a single node and for messages that
    /// came from the backplane (never relayed back).
    backplane: Option<&'a mut RedisBackplane>,
}

/// What a fan-out leaves to do once the hub has returned.
#[must_use = "clients refused during the fan-out must be ended with `apply`"]
#[derive(Default)]
pub(super) struct Cuts {
    cuts: Vec<usize>,
    answers: Vec<(usize, Response)>,
    flush_soon: bool,
}

impl Cuts {
    /// Adds what another fan-out left, for a handler that runs several before it can end them.
    pub(super) fn absorb(&mut self, other: Cuts) {
        self.cuts.extend(other.cuts);
        self.answers.extend(other.answers);
        self.flush_soon |= other.flush_soon;
    }

    /// Cuts off each refused client, answers the held requests, and tells the loop to flush
    /// soon if a queue grew big.
    pub(super) fn apply(self, conns: &mut Slab<Connection>, s: &mut Shared) {
        s.flush_soon |= self.flush_soon;
        for key in self.cuts {
            let Some(conn) = conns.get_mut(key) else { continue };
            cut_slow_consumer(conn, s, key);
        }
        for (key, response) in self.answers {
            let Some(conn) = conns.get_mut(key) else { continue };
            answer_held(conn, s, key, &response);
        }
    }
}

impl<'a> Deliveries<'a> {
    pub(super) fn new(
        conns: &'a mut Slab<Connection>,
        dirty: &'a mut Vec<usize>,
        deflater: &'a mut Deflater,
        settings: &Settings,
    ) -> Deliveries<'a> {
        Deliveries {
            conns,
            dirty,
            deflater,
            max_queued_bytes: settings.max_queued_bytes,
            send_queue: settings.send_queue,
            cuts: Vec::new(),
            answers: Vec::new(),
            flush_soon: false,
            backplane: None,
        }
    }

    /// Ends the fan-out, releasing the connections; what is left to do is in the [`Cuts`].
    pub(super) fn finish(self) -> Cuts {
        Cuts { cuts: self.cuts, answers: self.answers, flush_soon: self.flush_soon }
    }

    /// The backplane's state and counters, for `/healthz` and `/metrics`.
    pub(super) fn backplane_stats(&self) -> Option<BackplaneStats> {
        self.backplane.as_ref().map(|b| b.stats())
    }

    /// The compressor's counters, for `/metrics`.
    pub(super) fn deflate_stats(&self) -> DeflateStats {
        self.deflater.stats()
    }

    /// Relays this call's publishes and subscription changes to `backplane`.
    pub(super) fn relaying(mut self, backplane: Option<&'a mut RedisBackplane>) -> Deliveries<'a> {
        self.backplane = backplane;
        self
    }

    /// Called once per delivery: always inlined (into the hub's fan-out loop through
    /// `deliver`; as a call of its own it paid a register save and restore per delivery), and
    /// the list of clients cut during this call (almost always empty) searched only when there
    /// is one (93 -> 85 instructions per delivery in broadcast 100x100).
    #[inline(always)]
    fn deliver_to(&mut self, key: usize, message: &SharedMessage) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if !conn.accepts_messages() || (!self.cuts.is_empty() && self.cuts.contains(&key)) {
            return false;
        }
        // Plain, or the compressed variant for this client's window (built on first need).
        conn.out.push_shared(message.frame_for(conn.send_window, self.deflater));
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        // Judged only once the socket has refused output (`last_progress` is set while refused
        // output waits): what one turn queues is a burst to be written, not yet the client's
        // doing. `lifecycle::flush` judges again after writing.
        let refused_before = conn.last_progress != NEVER;
        if refused_before
            && (conn.unsent_bytes() > self.max_queued_bytes || conn.out.shared_frames() > self.send_queue)
        {
            self.cuts.push(key);
            return false;
        }
        if conn.out.queued_bytes() >= FLUSH_SOON_BYTES || conn.out.shared_frames() >= self.send_queue / 2 {
            self.flush_soon = true;
        }
        true
    }
}

impl Outbox for Deliveries<'_> {
    #[inline(always)]
    fn deliver(&mut self, client: ClientId, message: &SharedMessage) -> bool {
        self.deliver_to(client, message)
    }

    fn deliver_all(&mut self, message: &SharedMessage) -> usize {
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.accepts_messages()).map(|(k, _)| k).collect();
        keys.into_iter().filter(|&k| self.deliver_to(k, message)).count()
    }

    fn backplane(&mut self) -> Option<&mut dyn Backplane> {
        self.backplane.as_deref_mut().map(|b| b as &mut dyn Backplane)
    }

    fn numbered(&mut self, caller: ClientId, numbered: Option<(&str, Offset)>) {
        self.answers.push((caller, http::numbered(numbered)));
    }
}
