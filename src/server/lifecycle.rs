//! The floor of the reactor: the steps of a connection's life that every handler shares.
//!
//! A handler queues output and calls [`mark`]; the loop flushes every marked connection once at
//! the end of the turn ([`flush_dirty`], one `writev` each). A connection that is done says its
//! last bytes with [`reject`] or [`linger`] (write them, shut down our side, drain, bounded by a
//! deadline) or ends at once with [`doom`]; [`reap`] removes the doomed at the end of the turn.
//! After any step that may move a deadline, [`rearm`] puts the connection's next one in the timer
//! queue. A client whose queue outgrows its bound is cut off by [`cut_slow_consumer`]; one whose
//! socket fails (a reset, a broken pipe) ends in [`socket_failed`], counted apart.
//!
//! Everything here takes one connection (or the slab) and [`Shared`], never the `Server`, and
//! calls nothing above it: handlers and the loop call down into this file, not the other way.

use std::io;
use std::os::fd::AsRawFd;

use log::{debug, warn};
use mio::Registry;
use slab::Slab;

use super::admission::AddrKey;
use super::connection::{Connection, Ending, Phase};
use super::state::{Mode, Shared};
use super::timers::NEVER;
use crate::http::Response;
use crate::metrics::TlsFailure;
use crate::protocol::close::code;
use crate::protocol::frame;
use crate::protocol::handshake::Rejection;
use crate::protocol::session::Millis;

/// The most time a connection that ended badly is given to drain.
const DRAIN_LIMIT: Millis = 2_000;

/// Most bytes one connection is handed per flush (so per turn, bar its own replies): a
/// subscriber with a big queue takes its share and the rest waits for the next turn.
pub(super) const CONN_WRITE_BUDGET: usize = 256 * 1024;
/// Most bytes the end-of-turn flush writes in one turn, over all connections. Copying into
/// sockets is the reactor's work in a big fan-out (1 MiB to 2,000 subscribers is 2 GB of
/// copies, 4 s here when done in one go); spread over turns of a millisecond or so, everyone
/// else's requests are read and answered in between. Measured on the loaded 2-core machine:
/// with 1 MiB the worst bystander ping during that fan-out was 10-18 ms (36-56 ms with 4 MiB),
/// and broadcast throughput (1,000 x 1,000) was the same within the run-to-run spread.
pub(super) const TURN_WRITE_BUDGET: usize = 1024 * 1024;

/// Queue the connection for the end-of-turn flush if it has output.
pub(super) fn mark(conn: &mut Connection, s: &mut Shared, key: usize) {
    if !conn.dirty && conn.has_output() {
        conn.dirty = true;
        s.dirty.push(key);
    }
}

/// Queue the connection for removal at the end of the turn (the first ending given wins).
pub(super) fn doom(conn: &mut Connection, s: &mut Shared, key: usize, ending: Ending) {
    if !conn.doomed {
        conn.doomed = true;
        if conn.ending == Ending::None {
            conn.ending = ending;
        }
        s.doomed.push(key);
    }
}

/// Writes what the socket takes, up to [`CONN_WRITE_BUDGET`]; a connection whose final bytes are
/// out shuts down its side.
pub(super) fn flush(conn: &mut Connection, s: &mut Shared, key: usize) {
    flush_limited(conn, s, key, CONN_WRITE_BUDGET);
}

/// As [`flush`], writing at most `limit` bytes; returns how many were written. Output left by
/// the limit (not refused by the socket) goes to the backlog for the next turn. Always inlined
/// (two callers): [`flush_dirty`] runs it once per delivery in a wide fan-out, where as a call
/// it cost about 25 instructions of its own (see bench/RESULTS.md).
#[inline(always)]
fn flush_limited(conn: &mut Connection, s: &mut Shared, key: usize, limit: usize) -> usize {
    if !conn.has_output() {
        finish_lingering(conn, s, key);
        return 0;
    }
    let f = match conn.transport.flush_limited(&mut conn.out, &mut s.pool, limit) {
        Ok(f) => f,
        Err(e) => {
            socket_failed(conn, s, key, "write", &e);
            return 0;
        }
    };
    s.metrics.bytes_out(f.written as u64);
    if !conn.has_output() {
        // Everything is out, the usual end of a flush (a fan-out pays this once per delivery):
        // no stall clock, nothing unsent anywhere, so no bound to judge.
        conn.last_progress = NEVER;
        conn.kernel_queued = 0;
        finish_lingering(conn, s, key);
        return f.written;
    }
    conn.note_progress(f.written, s.now);
    if f.blocked {
        // The socket refused more: what it holds unsent is this client's too.
        let unsent = crate::sys::unsent_bytes(conn.transport.socket().as_raw_fd()).unwrap_or(0);
        conn.kernel_queued = u32::try_from(unsent).unwrap_or(u32::MAX);
    } else if !conn.dirty {
        // Stopped by the budget: carry on next turn, after everyone else had theirs.
        conn.dirty = true;
        s.backlog.push(key);
    }
    if conn.is_open()
        && (conn.unsent_bytes() > s.settings.max_queued_bytes
            || f.blocked && conn.out.shared_frames() > s.settings.send_queue)
    {
        cut_slow_consumer(conn, s, key);
    }
    f.written
}

/// A lingering connection whose output is all out: close_notify (TLS) and FIN after the last
/// byte, then wait for the peer's FIN so unread input does not turn our close into a reset.
/// Always inlined: every flush asks, and as a call the question cost 12 instructions.
#[inline(always)]
fn finish_lingering(conn: &mut Connection, s: &mut Shared, key: usize) {
    if let Phase::Lingering { deadline } = conn.phase {
        match conn.transport.finish() {
            Ok(true) => conn.phase = Phase::Draining { deadline },
            Ok(false) => mark(conn, s, key), // close_notify waits for the socket
            Err(e) => socket_failed(conn, s, key, "write", &e),
        }
    }
}

/// Queue a refusal and end the connection after it is written.
pub(super) fn reject(conn: &mut Connection, s: &mut Shared, key: usize, rejection: Rejection) {
    debug!(conn = key, peer:% = conn.peer; "rejected: {} {}", rejection.status, rejection.reason);
    s.metrics.handshake_rejected(rejection.status);
    conn.out.append_with(&mut s.pool, |out| rejection.write_response(out));
    linger(conn, s, key, Ending::Rejected);
}

/// As [`reject`], for a request that was not an upgrade (or not readable as one): counted as
/// an HTTP response, not a refused handshake.
pub(super) fn reject_http(conn: &mut Connection, s: &mut Shared, key: usize, rejection: Rejection) {
    debug!(conn = key, peer:% = conn.peer; "refused: {} {}", rejection.status, rejection.reason);
    s.metrics.http_response(rejection.status);
    conn.out.append_with(&mut s.pool, |out| rejection.write_response(out));
    linger(conn, s, key, Ending::Rejected);
}

/// The answer to a held HTTP request ([`Phase::Held`]) came: written, counted, then the
/// connection ends like any HTTP exchange. A connection no longer held (answered by the
/// backstop, closing) drops it.
pub(super) fn answer_held(conn: &mut Connection, s: &mut Shared, key: usize, response: &Response) {
    if conn.doomed || !matches!(conn.phase, Phase::Held { .. }) {
        return;
    }
    s.metrics.http_response(response.status);
    conn.out.append_with(&mut s.pool, |out| response.write_to(out));
    linger(conn, s, key, Ending::Normal);
    rearm(conn, s, key);
}

/// The last bytes are queued: write them, then shut down, bounded by the close timeout.
pub(super) fn linger(conn: &mut Connection, s: &mut Shared, key: usize, ending: Ending) {
    if conn.ending == Ending::None {
        conn.ending = ending;
    }
    if conn.is_open() {
        s.metrics.connection_closed();
    }
    conn.input = Vec::new();
    let wait = s.settings.session.close_timeout.clamp(1, DRAIN_LIMIT);
    conn.phase = Phase::Lingering { deadline: s.now + wait };
    mark(conn, s, key);
    if !conn.has_output() {
        flush(conn, s, key);
    }
}

pub(super) fn cut_slow_consumer(conn: &mut Connection, s: &mut Shared, key: usize) {
    if conn.doomed {
        return;
    }
    if s.logs.slow_consumer.hit(s.now) {
        let peer = conn.peer.to_string();
        warn!(
            conn = key, peer = peer.as_str();
            "cut off: slow consumer ({} bytes queued, {} unsent in the kernel)",
            conn.queued_bytes(),
            conn.kernel_queued
        );
    }
    s.metrics.slow_consumer_dropped();
    conn.close_code = code::POLICY;
    s.metrics.close_code_sent(code::POLICY);
    // Attempt the close frame: it goes behind what the client is not reading, so it arrives
    // only if the client catches up within this one write.
    let mut close = Vec::new();
    frame::write_close(&mut close, code::POLICY, "slow consumer");
    conn.out.push_bytes(&mut s.pool, &close);
    let _ = conn.transport.flush(&mut conn.out, &mut s.pool);
    // Nothing more will be written: free the queue now, not at the end of the turn, so many
    // cut-off clients in one turn do not hold their queues at once.
    conn.out.clear(&mut s.pool);
    doom(conn, s, key, Ending::SlowConsumer);
}

/// A read or write failed: the peer reset the connection, or it is otherwise unusable. Logged
/// and counted as a reset (`connection_resets_total`), not as a slow consumer, and ended at once:
/// nothing more can be written to it.
pub(super) fn socket_failed(conn: &mut Connection, s: &mut Shared, key: usize, during: &str, e: &io::Error) {
    if conn.doomed {
        return;
    }
    debug!(conn = key; "{during} error: {e}");
    s.metrics.connection_reset();
    // Queued output can never leave: give its buffers back now.
    conn.out.clear(&mut s.pool);
    doom(conn, s, key, Ending::IoError);
}

pub(super) fn on_eof(conn: &mut Connection, s: &mut Shared, key: usize) {
    // The peer closed only its sending side: what we owe it (the echo of its close, replies)
    // still goes out, best effort, before the socket is dropped.
    flush(conn, s, key);
    let ending = if matches!(conn.phase, Phase::Draining { .. }) { Ending::Normal } else { Ending::PeerGone };
    if conn.transport.handshaking() {
        if !conn.doomed {
            s.metrics.tls_handshake_failed(TlsFailure::Closed);
        }
    } else if !conn.doomed && !matches!(conn.phase, Phase::Draining { .. }) {
        // Then our end, best effort: over TLS a close_notify (RFC 8446 section 6.1: each side
        // sends one before closing), so a client that left mid-frame or mid-request sees a
        // clean end rather than a truncation. Draining has sent it already.
        let _ = conn.transport.finish();
    }
    doom(conn, s, key, ending);
}

/// Arms the connection's next deadline (only ever earlier; see `timers`).
pub(super) fn rearm(conn: &mut Connection, s: &mut Shared, key: usize) {
    if conn.doomed {
        return;
    }
    if conn.pending && !matches!(conn.phase, Phase::Handshake { .. }) {
        // Past the request head (upgraded, answered or refused): no longer pending.
        conn.pending = false;
        s.admission.head_done(key);
    }
    let deadline = match &conn.phase {
        Phase::Handshake { deadline, .. }
        | Phase::Held { deadline }
        | Phase::Lingering { deadline }
        | Phase::Draining { deadline } => *deadline,
        Phase::Open(session) => {
            let mut d = session.next_timeout(&s.settings.session).unwrap_or(NEVER);
            if conn.has_output() {
                d = d.min(conn.last_progress.saturating_add(s.settings.write_wait));
            }
            d.min(super::access::deadline(conn, &s.settings))
        }
        Phase::Busy => return,
    };
    s.timers.arm(key, &mut conn.timer_armed, deadline);
}

pub(super) fn rearm_key(conns: &mut Slab<Connection>, s: &mut Shared, key: usize) {
    if let Some(conn) = conns.get_mut(key) {
        rearm(conn, s, key);
    }
}

/// The socket became writable: flush this connection at the end of the turn if it has output.
pub(super) fn mark_dirty(conns: &mut Slab<Connection>, s: &mut Shared, key: usize) {
    if let Some(conn) = conns.get_mut(key) {
        if conn.has_output() {
            mark(conn, s, key);
        }
    }
}

/// Writes what this connection's reads produced right away, in one `writev`: its pooled
/// buffer goes straight back to the pool for the next connection, and replies leave
/// without waiting for the rest of the turn.
pub(super) fn flush_now(conns: &mut Slab<Connection>, s: &mut Shared, key: usize) {
    if let Some(conn) = conns.get_mut(key) {
        if !conn.doomed && conn.has_output() {
            flush(conn, s, key);
            rearm(conn, s, key);
        }
    }
}

/// Flush every connection marked this turn, one `writev` each, those the write budget left
/// over from the last turn first. Once this turn's [`TURN_WRITE_BUDGET`] is spent, the rest
/// wait in the backlog for the next turn (the loop does not sleep while it is not empty).
pub(super) fn flush_dirty(conns: &mut Slab<Connection>, s: &mut Shared) {
    // Three lists take turns (this turn's marks, the backlog, the list being flushed), so each
    // keeps its capacity and a steady fan-out allocates and copies none: a fan-out to 10,000
    // subscribers marks 10,000 connections, 80 KB that were copied into a list regrown from
    // nothing every turn (and the backlog regrown whenever the turn budget ran out).
    let mut work = std::mem::replace(&mut s.backlog, std::mem::take(&mut s.flush_spare));
    if work.is_empty() {
        // The usual turn, with no backlog: this turn's marks are the work as they are.
        std::mem::swap(&mut work, &mut s.dirty);
    } else {
        work.append(&mut s.dirty);
    }
    for key in work.drain(..) {
        let Some(conn) = conns.get_mut(key) else { continue };
        conn.dirty = false;
        if conn.doomed {
            continue;
        }
        if s.turn_write_budget == 0 && !conn.out.is_empty() {
            conn.dirty = true;
            s.backlog.push(key);
            continue;
        }
        let limit = CONN_WRITE_BUDGET.min(s.turn_write_budget).max(1);
        let written = flush_limited(conn, s, key, limit);
        s.turn_write_budget = s.turn_write_budget.saturating_sub(written);
        if needs_rearm_after_flush(conn) {
            rearm(conn, s, key);
        }
    }
    s.flush_spare = work;
}

/// Whether a connection flushed at the end of the turn needs [`rearm`]. Not an open one whose
/// queue the flush emptied, the fan-out's common case (one per subscriber per delivery turn):
/// writing moves none of its deadlines. The session's and the token's are armed whenever they
/// change (after every read and every timer), and the write-progress deadline exists only
/// while output waits. Anything else (output left, a phase that ends by a deadline, a request
/// head still counted as pending) goes through `rearm` as before.
#[inline]
fn needs_rearm_after_flush(conn: &Connection) -> bool {
    conn.has_output() || conn.pending || !matches!(conn.phase, Phase::Open(_))
}

/// Remove the connections doomed this turn: from the slab, the hub and the poll.
pub(super) fn reap(conns: &mut Slab<Connection>, s: &mut Shared, registry: &Registry) {
    while let Some(key) = s.doomed.pop() {
        let Some(mut conn) = conns.try_remove(key) else { continue };
        if conn.is_open() {
            s.metrics.connection_closed();
        }
        if s.settings.mode == Mode::Hub {
            match s.backplane.as_mut() {
                Some(backplane) => s.hub.remove_client_relayed(key, backplane),
                None => s.hub.remove_client(key),
            }
        }
        if conn.admitted {
            s.admission.closed(key, AddrKey::of(conn.peer.ip()));
        }
        if conn.overflow {
            s.refusing -= 1;
        }
        let _ = registry.deregister(conn.transport.socket_mut());
        if log::log_enabled!(log::Level::Debug) {
            // The address kept from accept: a socket the peer reset no longer knows it.
            let peer = conn.peer.to_string();
            debug!(conn = key, peer = peer.as_str(); "closed: {:?}, close code {}", conn.ending, conn.close_code);
        }
        conn.out.clear(&mut s.pool);
    }
}
