//! The hub's view of the connections: [`Deliveries`], the [`Outbox`] a publish writes into.
//!
//! A delivery queues the one shared frame (an `Rc` clone, no copy) on a subscriber and marks it
//! for the end-of-turn flush. A subscriber whose queue grows past the eager-flush mark is written
//! at once, so the bounds judge the client, not the size of this turn; one over a bound is listed
//! in `cut_off` and cut off by the caller right after the hub returns (the hub is busy during the
//! call). Used by both callers of the hub: WebSocket messages (`frames`) and the HTTP publish API
//! (`http_route`).

use std::rc::Rc;

use slab::Slab;

use super::connection::Connection;
use super::outbuf::BufferPool;
use super::state::Settings;
use crate::hub::{ClientId, Outbox};
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
    max_queued_bytes: usize,
    send_queue: usize,
    /// Clients over a bound during this call; cut off right after it (the hub is busy).
    pub(super) cut_off: Vec<usize>,
    /// Bytes written by eager flushes, for the metrics.
    pub(super) written: u64,
    now: Millis,
}

impl<'a> Deliveries<'a> {
    pub(super) fn new(
        conns: &'a mut Slab<Connection>,
        pool: &'a mut BufferPool,
        dirty: &'a mut Vec<usize>,
        settings: &Settings,
        now: Millis,
    ) -> Deliveries<'a> {
        Deliveries {
            conns,
            pool,
            dirty,
            max_queued_bytes: settings.max_queued_bytes,
            send_queue: settings.send_queue,
            cut_off: Vec::new(),
            written: 0,
            now,
        }
    }

    fn deliver_to(&mut self, key: usize, frame: &Rc<[u8]>) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if !conn.accepts_messages() || self.cut_off.contains(&key) {
            return false;
        }
        conn.out.push_shared(frame);
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
    fn deliver(&mut self, client: ClientId, frame: &Rc<[u8]>) -> bool {
        self.deliver_to(client, frame)
    }

    fn deliver_all(&mut self, frame: &Rc<[u8]>) -> usize {
        let keys: Vec<usize> =
            self.conns.iter().filter(|(_, c)| c.accepts_messages()).map(|(k, _)| k).collect();
        keys.into_iter().filter(|&k| self.deliver_to(k, frame)).count()
    }
}
