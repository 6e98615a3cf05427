//! Plain HTTP requests on the server's port: health, metrics and the publish API.
//!
//! [`on_http`] has [`http::request_from_head`] check the framing the reactor relies on (one
//! exact `Content-Length`, never chunked, one `Host`), waits for the body (answering
//! `Expect: 100-continue` once), then lets [`crate::http`] decide the response, sans-IO. A
//! publish fans out through [`Deliveries`] like a WebSocket message does. Every answer is the
//! connection's last: it lingers, then closes.
//!
//! A publish on history kept in Redis is answered once Redis has numbered it: the connection
//! is [held](Phase::Held) (its input discarded, its buffer freed) and the hub's answer comes
//! back through the outbox of the backplane's events (`fanout::Cuts::apply`). The backplane
//! answers or fails every request within [`REPLY_DEADLINE`]; a client that closes meanwhile is
//! reaped as usual, which drops its wait in the hub, so the answer finds nothing.

use slab::Slab;

use super::connection::{Connection, Ending, Phase};
use super::fanout::Deliveries;
use super::lifecycle::{linger, mark, reject_http};
use super::state::Shared;
use crate::backplane::redis::REPLY_DEADLINE;
use crate::http::{self, HttpContext};
use crate::protocol::handshake;
use crate::protocol::session::Millis;

/// How long a held request may wait at most: a backstop, since the backplane answers or fails
/// within its reply deadline (plus a turn) and the hub then answers at once.
const HELD_BACKSTOP: Millis = 2 * REPLY_DEADLINE;

/// A plain HTTP request (healthz, metrics, publish API). `input` holds head and body so far.
pub(super) fn on_http(conns: &mut Slab<Connection>, s: &mut Shared, key: usize, input: Vec<u8>) {
    let head = match handshake::parse_head(&input, s.settings.max_head) {
        Ok(Some(head)) => head,
        _ => unreachable!("parsed just before"),
    };
    let peer_is_loopback = conns[key].peer.ip().is_loopback();
    let request = match http::request_from_head(&head, peer_is_loopback) {
        Ok(request) => request,
        Err(rejection) => {
            reject_http(&mut conns[key], s, key, rejection);
            return;
        }
    };
    let body_len = match http::body_plan(&request, &s.settings.http) {
        Ok(n) => n,
        Err(response) => {
            s.metrics.http_response(response.status);
            let conn = &mut conns[key];
            conn.out.append_with(&mut s.pool, |out| response.write_to(out));
            linger(conn, s, key, Ending::Rejected);
            return;
        }
    };
    let have = input.len() - head.head_len;
    if have < body_len {
        // A client that waits to be told to send its body is told, once.
        let go_ahead = http::wants_continue(&head);
        let conn = &mut conns[key];
        conn.input = input;
        if let Phase::Handshake { awaiting_body, .. } = &mut conn.phase {
            let first = !std::mem::replace(awaiting_body, true);
            if go_ahead && first {
                conn.out.push_bytes(&mut s.pool, b"HTTP/1.1 100 Continue\r\n\r\n");
                mark(conn, s, key);
            }
        }
        return;
    }
    let body = &input[head.head_len..head.head_len + body_len];
    let mut outbox =
        Deliveries::new(conns, &mut s.dirty, &mut s.deflater, &s.settings).relaying(s.backplane.as_mut());
    let backplane = outbox.backplane_stats();
    let deflate = outbox.deflate_stats();
    let connections = outbox.conns.len();
    let response = http::respond(
        &request,
        body,
        &s.settings.http,
        &mut HttpContext {
            caller: key,
            hub: &mut s.hub,
            outbox: &mut outbox,
            metrics: &mut s.metrics,
            uptime_seconds: s.now / 1000,
            connections,
            backplane,
            deflate,
        },
    );
    let cuts = outbox.finish();
    let conn = &mut conns[key];
    match response {
        Some(response) => {
            conn.out.append_with(&mut s.pool, |out| response.write_to(out));
            linger(conn, s, key, Ending::Normal);
        }
        // The answer waits for Redis (see `Phase::Held`); the reactor re-arms the backstop.
        None => conn.phase = Phase::Held { deadline: s.now + HELD_BACKSTOP },
    }
    cuts.apply(conns, s);
}
