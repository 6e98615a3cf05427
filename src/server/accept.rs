//! New connections, up to the upgrade: accept, read the request head, then upgrade, refuse, or
//! hand the request to plain HTTP.
//!
//! [`accept_all`] takes connections until `WouldBlock` (pausing a moment when out of descriptors,
//! and still answering 503 past the connection limit, up to `overflow_slots` at once). Each
//! connection is first put to `admission`: 429 over the per-address limit, 503 when pending
//! requests are at their bound and this address holds the most (or another's oldest is pushed
//! out in its place). The peer address is kept with the connection from here on, for logs.
//! [`on_request_bytes`] collects the head, re-parsing only when it may be complete;
//! [`on_request`] then routes it: a valid upgrade on our path opens a session and passes any
//! bytes after the head to `frames` (they are the client's first frames), a bad one gets its
//! precise status, and any other request goes to `http_route`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::access;
use super::admission::{AddrKey, Decision};
use super::connection::{Connection, Ending, Phase};
use super::frames::on_frames;
use super::http_route::on_http;
use super::lifecycle::{doom, mark, rearm, reject, reject_http, socket_failed};
use super::state::{Shared, READ_PREFIX, READ_SIZE};
use super::transport::Transport;
use crate::protocol::handshake::{self, Rejection};
use crate::protocol::session::{Millis, Session};

/// How long accept stays paused after running out of file descriptors.
const ACCEPT_PAUSE: Millis = 100;

/// Accept until `WouldBlock`.
pub(super) fn accept_all(
    listener: &TcpListener,
    registry: &Registry,
    conns: &mut Slab<Connection>,
    s: &mut Shared,
) {
    if s.accept_paused_until.is_some() || s.shutting_down.is_some() {
        return;
    }
    loop {
        match listener.accept() {
            Ok((socket, peer)) => on_accepted(registry, conns, s, socket, peer),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_resource_exhaustion(&e) => {
                // Out of descriptors or memory: pending clients wait in the backlog. Try
                // again shortly rather than spin on a listener that stays readable. Logged
                // once per flood, then counted (ten a second otherwise).
                if s.logs.accept_failed.hit(s.now) {
                    warn!("accept failed ({e}); pausing accepts for {ACCEPT_PAUSE} ms at a time");
                }
                s.accept_paused_until = Some(s.now + ACCEPT_PAUSE);
                return;
            }
            Err(e) => {
                // ECONNABORTED and friends concern one client only.
                debug!("accept error: {e}");
            }
        }
    }
}

fn on_accepted(
    registry: &Registry,
    conns: &mut Slab<Connection>,
    s: &mut Shared,
    mut socket: TcpStream,
    peer: SocketAddr,
) {
    // Connections refused here linger in the overflow slots while their answer drains, so
    // they never take the slots of the connections we serve.
    let over_limit = conns.len() - s.refusing >= s.settings.max_connections;
    let addr = AddrKey::of(peer.ip());
    let decision = if over_limit { None } else { Some(s.admission.admit(addr)) };
    let refusal = match decision {
        None => Some(Rejection::new(503, "Too many connections")),
        Some(Decision::OverAddressLimit) => {
            Some(Rejection::new(429, "Too many connections from this address"))
        }
        Some(Decision::PendingFull) => Some(Rejection::new(503, "Too many requests in progress")),
        Some(Decision::Admit { .. }) => None,
    };
    if let Some(refusal) = &refusal {
        if s.refusing >= s.settings.overflow_slots {
            // Too many even to answer: drop at once.
            s.metrics.handshake_rejected(refusal.status);
            return;
        }
    }
    if let Some(Decision::Admit { evict: Some(old) }) = decision {
        evict_pending(conns, s, old);
    }
    let _ = socket.set_nodelay(true);
    if s.settings.socket_send_buffer > 0 {
        if let Err(e) = crate::sys::set_send_buffer(socket.as_raw_fd(), s.settings.socket_send_buffer) {
            debug!("SO_SNDBUF for {peer}: {e}");
        }
    }
    let entry = conns.vacant_entry();
    let key = entry.key();
    if let Err(e) = registry.register(&mut socket, Token(key), Interest::READABLE | Interest::WRITABLE) {
        warn!(peer:% = peer; "register failed: {e}");
        return;
    }
    let transport = match &s.tls {
        None => Transport::plain(socket),
        Some(tls) => match Transport::tls(socket, &tls.config) {
            Ok(t) => t,
            Err(e) => {
                // Not expected (a server config is always usable); the socket closes.
                warn!(peer:% = peer; "TLS setup failed: {e}");
                return;
            }
        },
    };
    let conn = entry.insert(Connection::new(transport, peer, s.now + s.settings.handshake_timeout));
    s.metrics.connection_accepted();
    debug!(conn = key, peer:% = peer; "accepted");
    match refusal {
        Some(refusal) => {
            conn.overflow = true;
            s.refusing += 1;
            reject(conn, s, key, refusal);
        }
        None => {
            s.admission.opened(key, addr);
            conn.admitted = true;
            conn.pending = true;
        }
    }
    rearm(conn, s, key);
}

/// A newcomer takes the place of pending request `key` (see `admission`): it is told 503.
fn evict_pending(conns: &mut Slab<Connection>, s: &mut Shared, key: usize) {
    s.admission.head_done(key);
    let Some(conn) = conns.get_mut(key) else { return };
    conn.pending = false;
    if matches!(conn.phase, Phase::Handshake { .. }) && !conn.doomed {
        debug!(conn = key, peer:% = conn.peer; "pending request pushed out by a newcomer");
        if s.refusing >= s.settings.overflow_slots {
            s.metrics.handshake_rejected(503);
            doom(conn, s, key, Ending::Rejected);
            return;
        }
        // From now on it is a refusal draining in an overflow slot.
        conn.overflow = true;
        s.refusing += 1;
        reject(conn, s, key, Rejection::new(503, "Too many requests in progress"));
        rearm(conn, s, key);
    }
}

/// Bytes of the request head (or HTTP body) arrived in `read_buf[READ_PREFIX..+n]`.
pub(super) fn on_request_bytes(conns: &mut Slab<Connection>, s: &mut Shared, key: usize, n: usize) {
    let conn = &mut conns[key];
    let Phase::Handshake { awaiting_body, .. } = conn.phase else { return };
    // Keep the whole read: after a complete head these bytes are the client's first frames
    // (or the body), and dropping any desynchronizes the frame stream. Still bounded, and
    // never sized by what the client claims: before this read the buffer held less than
    // the head limit (a longer partial head is refused below) or a head plus a body within
    // its limit, and one read adds at most READ_SIZE.
    let take = n;
    conn.input.extend_from_slice(&s.read_buf[READ_PREFIX..READ_PREFIX + take]);
    // Re-parse only when a blank line may have arrived (or a body is being read), so a
    // client trickling its head byte by byte costs a scan of new bytes, not of the head.
    // Also on the first bytes and on a control byte no head may contain: a TLS ClientHello
    // or other binary sent to this port gets its 400 at once, not silence until the timeout.
    let first = conn.input.len() == take;
    let impossible = s.read_buf[READ_PREFIX..READ_PREFIX + take]
        .iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f);
    if awaiting_body
        || first
        || impossible
        || handshake::may_be_complete(&conn.input, take)
        || conn.input.len() >= s.settings.max_head
    {
        on_request(conns, s, key);
    }
}

/// The head may be complete in `conn.input`: upgrade, answer HTTP, or wait for more.
fn on_request(conns: &mut Slab<Connection>, s: &mut Shared, key: usize) {
    let conn = &mut conns[key];
    let input = std::mem::take(&mut conn.input);
    let head = match handshake::parse_head(&input, s.settings.max_head) {
        Ok(Some(head)) => head,
        Ok(None) => {
            conn.input = input;
            return;
        }
        Err(rejection) => {
            // Not a readable request, so not a handshake either: an HTTP error.
            reject_http(conn, s, key, rejection);
            return;
        }
    };
    if head.is_upgrade() {
        if head.path() != s.settings.path {
            reject(conn, s, key, Rejection::new(404, "no WebSocket endpoint at this path"));
            return;
        }
        let accepted = match head.validate_upgrade(&s.settings.upgrade) {
            Ok(a) => a,
            Err(rejection) => {
                reject(conn, s, key, rejection);
                return;
            }
        };
        let grant = match access::admit(&head, s) {
            Ok(grant) => grant,
            Err(refusal) => {
                access::refuse(conn, s, key, refusal);
                return;
            }
        };
        let head_len = head.head_len;
        s.control.clear();
        accepted.write_response(&s.settings.upgrade, &mut s.control);
        match conn.transport.write_or_queue(&mut conn.out, &mut s.pool, &s.control) {
            Ok(n) => s.metrics.bytes_out(n as u64),
            Err(e) => {
                s.control.clear();
                socket_failed(conn, s, key, "write", &e);
                return;
            }
        }
        s.control.clear();
        conn.phase = Phase::Open(Session::new(&s.settings.session, s.now).with_deflate(accepted.deflate));
        conn.send_window = accepted.deflate.and_then(|a| a.send_window());
        conn.grant = grant;
        conn.rate = access::buckets(&s.settings, s.now);
        s.metrics.connection_opened();
        if accepted.deflate.is_some() {
            s.metrics.deflate_negotiated();
        }
        mark(conn, s, key);
        debug!(conn = key; "upgraded");
        // Bytes after the head are the first frames: never lose them.
        let rest = &input[head_len..];
        if rest.is_empty() {
            return;
        }
        if rest.len() > READ_SIZE {
            // Cannot happen (the head buffer is bounded well below READ_SIZE); refuse
            // rather than truncate.
            doom(conn, s, key, Ending::IoError);
            return;
        }
        s.read_buf[READ_PREFIX..READ_PREFIX + rest.len()].copy_from_slice(rest);
        let end = READ_PREFIX + rest.len();
        on_frames(conns, s, key, READ_PREFIX, end);
        return;
    }
    if head.path() == s.settings.path {
        // The WebSocket endpoint exists; this request just did not ask to upgrade. 426 says
        // so (404 said there was nothing here).
        let refusal = Rejection::new(426, "this endpoint speaks WebSocket only; send an upgrade request");
        reject(conn, s, key, refusal.answering(head.method));
        return;
    }
    on_http(conns, s, key, input);
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}
