//! What a passed deadline means for a connection.
//!
//! Every connection has at most one live entry in the timer queue ([`super::timers`]), armed by
//! `lifecycle::rearm` for its phase's next deadline. When it comes due, [`on_timer`] decides:
//! a request head that never finished gets 408; a held HTTP request that was never answered gets
//! 503; a lingering or draining connection is dropped;
//! an open one that made no write progress for `write_wait` is dropped, and otherwise its session
//! sends a ping or gives up on a missing pong or close.

use log::debug;
use mio::Registry;
use slab::Slab;

use super::connection::{Connection, Ending, Phase};
use super::history_timer::HISTORY_TIMER;
use super::lifecycle::{answer_held, doom, linger, mark, rearm, reject_http};
use super::relay::{self, BACKPLANE_TIMER};
use super::state::Shared;
use super::timers::NEVER;
use crate::metrics::TlsFailure;
use crate::protocol::close::code;
use crate::protocol::handshake::Rejection;
use crate::protocol::session::TimerOutcome;

/// Runs every deadline that is due (the connections', and the backplane's and the history's
/// under their reserved tokens), and re-arms each connection's next one.
pub(super) fn run_timers(conns: &mut Slab<Connection>, s: &mut Shared, registry: &Registry) {
    while let Some((deadline, key)) = s.timers.pop_due(s.now) {
        if key == BACKPLANE_TIMER {
            relay::on_timer(conns, s, registry, deadline);
            continue;
        }
        if key == HISTORY_TIMER {
            s.history_timer.on_timer(&mut s.hub, &mut s.timers, deadline, s.now);
            continue;
        }
        let Some(conn) = conns.get_mut(key) else { continue };
        if conn.timer_armed != deadline || conn.doomed {
            continue; // superseded by an earlier entry, or the slot was reused
        }
        conn.timer_armed = NEVER;
        on_timer(conn, s, key);
        rearm(conn, s, key);
    }
}

pub(super) fn on_timer(conn: &mut Connection, s: &mut Shared, key: usize) {
    let now = s.now;
    let stalled = conn.write_stalled(now, s.settings.write_wait);
    // A token that expired closes the connection with 4001 (the session then times the close).
    if !stalled && super::access::on_expiry(conn, s, key) {
        mark(conn, s, key);
        return;
    }
    match &mut conn.phase {
        Phase::Handshake { deadline, .. } if now >= *deadline && conn.transport.handshaking() => {
            // The TLS handshake did not finish: there is no channel to answer 408 on.
            debug!(conn = key; "TLS handshake timeout");
            s.metrics.tls_handshake_failed(TlsFailure::Timeout);
            doom(conn, s, key, Ending::HandshakeTimeout);
        }
        Phase::Handshake { deadline, .. } if now >= *deadline => {
            debug!(conn = key; "handshake timeout");
            // Say why (RFC 9110 section 15.5.9) rather than vanish; the answer lingers at most
            // the drain limit.
            conn.ending = Ending::HandshakeTimeout;
            reject_http(conn, s, key, Rejection::new(408, "request not received in time"));
        }
        Phase::Held { deadline } if now >= *deadline => {
            // The backplane answers within its reply deadline, so this is not expected: the
            // request is not left waiting for ever all the same.
            debug!(conn = key; "held HTTP request not answered in time");
            answer_held(conn, s, key, &crate::http::unavailable());
        }
        Phase::Lingering { deadline } | Phase::Draining { deadline } if now >= *deadline => {
            doom(conn, s, key, Ending::CloseTimeout);
        }
        Phase::Open(session) => {
            if stalled {
                debug!(conn = key; "no write progress for {} ms", s.settings.write_wait);
                doom(conn, s, key, Ending::WriteTimeout);
                return;
            }
            match session.handle_timeout(&s.settings.session, &mut s.control, now) {
                TimerOutcome::Alive => {}
                TimerOutcome::Expired => {
                    let ending = if session.can_send() || session.is_closed() && conn.close_code == 0 {
                        Ending::PongTimeout
                    } else {
                        Ending::CloseTimeout
                    };
                    if !s.control.is_empty() {
                        conn.out.push_bytes(&mut s.pool, &s.control);
                        s.control.clear();
                        conn.close_code = code::POLICY;
                        s.metrics.close_code_sent(code::POLICY);
                        linger(conn, s, key, ending);
                    } else {
                        doom(conn, s, key, ending);
                    }
                    return;
                }
            }
            if !s.control.is_empty() {
                conn.out.push_bytes(&mut s.pool, &s.control);
                s.control.clear();
                mark(conn, s, key);
            }
        }
        _ => {}
    }
}
