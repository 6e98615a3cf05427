//! The hub's view of the connections: [`Deliveries`], the [`Outbox`] a publish writes into.
//!
//! A delivery queues the one shared frame (an `Rc` clone, no copy) on a subscriber: the plain
//! frame, or for a client that negotiated permessage-deflate the compressed one for its window,
//! compressed at most once per message and window by the reactor's [`Deflater`]; and marks it
//! for the end-of-turn flush. A subscriber whose queue grows past the eager-flush mark is written
//! at once, so the bounds judge the client, not the size of this turn; one over a bound is listed
//! in `cut_off` and cut off by the caller right after the hub returns (the hub is busy during the
//! call). Used by both callers of the hub: WebSocket messages (`frames`) and the HTTP publish API
//! (`http_route`).

use slab::Slab;

use super::connection::Connection;
use super::outbuf::BufferPool;
use super::state::Settings;
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
    /// Clients over a bound during this call; cut off right after it (the hub is busy).
    pub(super) cut_off: Vec<usize>,
    /// Bytes written by eager flushes, for the metrics.
    pub(super) written: u64,
    now: Millis,
    /// Where publishes go on to the other nodes; `None` for a single node and for messages that
    /// came from the backplane (never relayed back).
    backplane: Option<&'a mut RedisBackplane>,
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
            cut_off: Vec::new(),
            written: 0,
            now,
            backplane: None,
        }
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
        if !conn.accepts_messages() || self.cut_off.contains(&key) {
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
            match conn.out.flush(&mut conn.socket, self.pool) {
                Ok(f) => {
                    self.written += f.written as u64;
                    conn.note_flush(f.written, self.now);
                }
                Err(_) => {
                    self.cut_off.push(key);
                    return false;
                }
            }
        }
        if conn.out.shared_frames() > self.send_queue || conn.out.queued_bytes() > self.max_queued_bytes {
            self.cut_off.push(key);
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
