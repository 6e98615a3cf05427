//! Stopping: on SIGINT/SIGTERM (or [`Server::begin_shutdown`](super::Server::begin_shutdown)),
//! stop accepting, tell every client why, and let the loop run until they are gone or
//! `shutdown_timeout` has passed.
//!
//! A request still arriving gets 503; an open connection gets close 1001 (going away) and the
//! usual close handshake, bounded by its close timeout. A held HTTP publish keeps waiting for
//! its answer from Redis (which comes within the reply deadline). The loop checks the overall
//! deadline at the top of each turn.

use log::{info, warn};
use mio::net::TcpListener;
use mio::Registry;
use signal_hook::consts::SIGHUP;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::connection::{Connection, Ending, Phase};
use super::lifecycle::{doom, flush_dirty, mark, reap, rearm, reject};
use super::state::Shared;
use crate::protocol::close::code;
use crate::protocol::handshake::Rejection;

/// The signal pipe is readable: begin the shutdown once, on the first signal.
pub(super) fn on_signal(
    signals: &mut Signals,
    listener: &mut Option<TcpListener>,
    registry: &Registry,
    conns: &mut Slab<Connection>,
    s: &mut Shared,
) {
    let mut got: Vec<i32> = signals.pending().collect();
    if got.contains(&SIGHUP) {
        got.retain(|&sig| sig != SIGHUP);
        reload_tls(s);
    }
    if got.is_empty() || s.shutting_down.is_some() {
        return;
    }
    info!("signal {:?}: closing {} connections", got, conns.len());
    begin_shutdown(listener, registry, conns, s);
}

/// SIGHUP: load the certificate and key again. New handshakes use the new pair; open
/// connections keep theirs; a pair that fails to load leaves the current one in place.
fn reload_tls(s: &mut Shared) {
    let Some(tls) = s.tls.as_mut() else {
        info!("SIGHUP: no TLS certificate to reload");
        return;
    };
    match tls.reload() {
        Ok(()) => {
            s.metrics.tls_reload(true);
            info!("SIGHUP: TLS certificate and key reloaded from {}", tls.files.cert.display());
        }
        Err(e) => {
            s.metrics.tls_reload(false);
            warn!("SIGHUP: TLS reload failed, keeping the current certificate: {e}");
        }
    }
}

/// Stop accepting, send 1001 to every client, and give them `shutdown_timeout` to finish.
pub(super) fn begin_shutdown(
    listener: &mut Option<TcpListener>,
    registry: &Registry,
    conns: &mut Slab<Connection>,
    s: &mut Shared,
) {
    s.shutting_down = Some(s.now + s.settings.shutdown_timeout);
    if let Some(mut listener) = listener.take() {
        let _ = registry.deregister(&mut listener);
    }
    for (key, conn) in conns.iter_mut() {
        if conn.doomed {
            continue;
        }
        if conn.transport.handshaking() {
            // No TLS channel yet to say anything on.
            doom(conn, s, key, Ending::Shutdown);
            continue;
        }
        if matches!(conn.phase, Phase::Handshake { .. }) {
            // A request still arriving is told why it will not be served.
            conn.ending = Ending::Shutdown;
            reject(conn, s, key, Rejection::new(503, "server shutting down"));
            continue;
        }
        let Phase::Open(session) = &mut conn.phase else { continue };
        if session.close(&s.settings.session, &mut s.control, code::GOING_AWAY, "server shutting down", s.now)
        {
            conn.out.push_bytes(&mut s.pool, &s.control);
            s.control.clear();
            conn.close_code = code::GOING_AWAY;
            s.metrics.close_code_sent(code::GOING_AWAY);
            mark(conn, s, key);
            rearm(conn, s, key);
        }
    }
    flush_dirty(conns, s);
    reap(conns, s, registry);
}
