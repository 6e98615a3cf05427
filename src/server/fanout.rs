//! The hub's view of the connections: [`Deliveries`], the [`Outbox`] a publish writes into.
//!
//! A delivery queues the one shared frame (an `Rc` clone, no copy) on a subscriber: the plain
//! frame, or for a client that negotiated permessage-deflate the compressed one for its window,
//! compressed at most once per message and window by the reactor's [`Deflater`]; and marks it
//! for the end-of-turn flush. A subscriber whose queue grows past the eager-flush mark is written
//! at once, so the bounds judge the client, not the size of this turn. A client over a bound, or
//! whose socket failed in that write (a peer that reset), is refused further frames and listed
//! with the reason; [`Deliveries::finish`] hands the list back and [`Cuts::apply`] ends those
//! clients right after the hub returns (the hub is busy during the call): a slow consumer is cut
//! off (1008, counted as such), a reset is counted as a reset. Used by both callers of the hub:
//! WebSocket messages (`frames`) and the HTTP publish API (`http_route`).

use std::io;

use slab::Slab;

use super::connection::Connection;
use super::lifecycle::{cut_slow_consumer, socket_failed};
use super::outbuf::BufferPool;
use super::state::{Settings, Shared};
use crate::backplane::redis::{BackplaneStats, RedisBackplane};
use crate::backplane::Backplane;
use crate::hub::{ClientId, Outbox};
use crate::protocol::deflate::{Deflater, SharedMessage};
use crate::protocol::session::Millis;

/// A connection whose queue reaches this many shared frames or bytes in one turn is flushed at
/// once, so the send-queue bound measures what the socket refused, not this turn's burst.
const EAGER_FLUSH_FRAMES: usize = 128;
const EAGER_FLUSH_BYTES: usize = 256 * 1024;

/// The hub's view of the connections: queue a shared frame, bounded per client.
pub(super) struct Deliveries<'a> {
    pub(super) conns: &'a mut Slab<Connection>,
    pool: &'a mut BufferPool,
    dirty: &'a mut Vec<usize>,
    deflater: &'a mut Deflater,
    max_queued_bytes: usize,
    send_queue: usize,
    /// Clients refused during this call, and why; ended right after it (the hub is busy).
    cuts: Vec<(usize, Cut)>,
    /// Bytes written by eager flushes, for the metrics.
    written: u64,
    now: Millis,
    /// Where publishes go on to the other nodes; `None` for a single node and for messages that
    /// came from the backplane (never relayed back).
    backplane: Option<&'a mut RedisBackplane>,
}

/// Why a client takes no more frames in this fan-out.
enum Cut {
    /// Its queue passed the frame or byte bound: a slow consumer.
    OverBound,
    /// Writing to it failed: the peer reset or is gone. Not a slow consumer.
    Failed(io::Error),
}

/// What a fan-out leaves to do once the hub has returned.
#[must_use = "clients refused during the fan-out must be ended with `apply`"]
#[derive(Default)]
pub(super) struct Cuts {
    cuts: Vec<(usize, Cut)>,
    written: u64,
}

impl Cuts {
    /// Adds what another fan-out left, for a handler that runs several before it can end them.
    pub(super) fn absorb(&mut self, other: Cuts) {
        self.cuts.extend(other.cuts);
        self.written += other.written;
    }

    /// Counts the bytes the eager flushes wrote, then ends each refused client for its reason.
    pub(super) fn apply(self, conns: &mut Slab<Connection>, s: &mut Shared) {
        s.metrics.bytes_out(self.written);
        for (key, cut) in self.cuts {
            let Some(conn) = conns.get_mut(key) else { continue };
            match cut {
                Cut::OverBound => cut_slow_consumer(conn, s, key),
                Cut::Failed(e) => socket_failed(conn, s, key, "fan-out write", &e),
            }
        }
    }
}

impl<'a> Deliveries<'a> {
    pub(super) fn new(
        conns: &'a mut Slab<Connection>,
        pool: &'a mut BufferPool,
        dirty: &'a mut Vec<usize>,
        deflater: &'a mut Deflater,
        settings: &Settings,
        now: Millis,
    ) -> Deliveries<'a> {
        Deliveries {
            conns,
            pool,
            dirty,
            deflater,
            max_queued_bytes: settings.max_queued_bytes,
            send_queue: settings.send_queue,
            cuts: Vec::new(),
            written: 0,
            now,
            backplane: None,
        }
    }

    /// Ends the fan-out, releasing the connections; what is left to do is in the [`Cuts`].
    pub(super) fn finish(self) -> Cuts {
        Cuts { cuts: self.cuts, written: self.written }
    }

    /// The backplane's state and counters, for `/healthz` and `/metrics`.
    pub(super) fn backplane_stats(&self) -> Option<BackplaneStats> {
        self.backplane.as_ref().map(|b| b.stats())
    }

    /// Relays this call's publishes and subscription changes to `backplane`.
    pub(super) fn relaying(mut self, backplane: Option<&'a mut RedisBackplane>) -> Deliveries<'a> {
        self.backplane = backplane;
        self
    }

    fn deliver_to(&mut self, key: usize, message: &SharedMessage) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if !conn.accepts_messages() || self.cuts.iter().any(|&(k, _)| k == key) {
            return false;
        }
        // Plain, or the compressed variant for this client's window (built on first need).
        conn.out.push_shared(message.frame_for(conn.send_window, self.deflater));
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        let eager_frames = EAGER_FLUSH_FRAMES.min(self.send_queue / 2).max(1);
        if conn.out.shared_frames() >= eager_frames || conn.out.queued_bytes() >= EAGER_FLUSH_BYTES {
            // Write now so the bounds below judge the client, not the size of this turn.
            match conn.transport.flush(&mut conn.out, self.pool) {
                Ok(f) => {
                    self.written += f.written as u64;
                    conn.note_flush(f.written, self.now);
                }
                Err(e) => {
                    self.cuts.push((key, Cut::Failed(e)));
                    return false;
                }
            }
        }
        if conn.out.shared_frames() > self.send_queue || conn.queued_bytes() > self.max_queued_bytes {
            self.cuts.push((key, Cut::OverBound));
            return false;
        }
        true
    }
}

impl Outbox for Deliveries<'_> {
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
}
