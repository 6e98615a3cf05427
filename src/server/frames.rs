//! Frames for an open connection: the hot path.
//!
//! [`on_frames`] runs the connection's session over the bytes just read (parsed and unmasked in
//! place, in the loop's one read buffer), queues what the session writes on its own (pongs,
//! closes), and hands each message to the mode: echo it back, or give it to the hub, whose
//! fan-out goes through [`Deliveries`]. The session is taken out of its slot for the call
//! ([`Phase::Busy`]) so the hub may deliver to every connection, the sender included.
//!
//! Echo mode has a loop of its own ([`echo_frames`]): it touches only the one connection, so it
//! borrows that connection's output tail once per read instead of once per message, and lets
//! the session write its pongs and closes straight into it. That is most of what an echoed
//! message costs beyond parsing (callgrind: about 70 instructions of 16 B echo per message).

use log::debug;
use slab::Slab;

use super::access;
use super::connection::{Connection, Ending, Phase};
use super::fanout::Deliveries;
use super::lifecycle::{flush, linger, mark};
use super::state::{Mode, Shared};
use crate::hub::Access;
use crate::protocol::close::code;
use crate::protocol::frame::OpCode;
use crate::protocol::session::{Event, ProtocolError, Step};

/// Message bytes one call handles for one connection before it stops and leaves the rest of
/// the input for the next turn ([`end_of_read`] keeps it, the reactor comes back to it first).
/// A plain read never reaches it (a read is 256 KiB); compressed messages can: a kilobyte on
/// the wire may inflate to a mebibyte, so one read of them was seconds of work while every
/// other client waited. A mebibyte keeps a turn to a millisecond or two.
pub(super) const MESSAGE_BYTES_PER_TURN: usize = 1 << 20;

/// Frames in `read_buf[start..end]` for an open connection: the hot path.
pub(super) fn on_frames(conns: &mut Slab<Connection>, s: &mut Shared, key: usize, start: usize, end: usize) {
    if s.settings.mode == Mode::Echo {
        // Two copies of echo's loop, so the one without `--rate-limit` pays nothing for it.
        return match s.settings.rate_limit {
            Some(_) => echo_frames::<true>(&mut conns[key], s, key, start, end),
            None => echo_frames::<false>(&mut conns[key], s, key, start, end),
        };
    }
    let Phase::Open(mut session) = std::mem::replace(&mut conns[key].phase, Phase::Busy) else {
        unreachable!("on_frames is only called for open connections");
    };
    let mut pos = start;
    let mut ended_by: Option<Ending> = None;
    let mut handled = 0;
    while pos < end {
        let buf = &mut s.read_buf[pos..end];
        let step = session.advance(buf, &s.settings.session, &mut s.control, s.now);
        // Over the rate limit, the frame is dropped (a ping gets no pong) and the connection
        // closes 1008.
        let over_rate = step.as_ref().is_ok_and(|step| {
            !access::admits(&mut conns[key].rate, s.settings.rate_limit, step.event.as_ref(), s.now)
        });
        if over_rate {
            s.control.clear();
        }
        if !s.control.is_empty() {
            conns[key].out.push_bytes(&mut s.pool, &s.control);
            s.control.clear();
        }
        let Step { consumed, event, .. } = match step {
            Ok(step) => step,
            Err(e) => {
                ended_by = Some(on_protocol_error(&mut conns[key], s, key, e));
                break;
            }
        };
        pos += consumed;
        if over_rate {
            access::rate_limited(&mut session, &mut conns[key], s, key);
            break;
        }
        let Some(event) = event else {
            break;
        };
        match event {
            Event::Text(text) => {
                s.metrics.message_in();
                handled += text.len();
                // The grant leaves its slot for the call, as the session does, so the
                // hub may deliver to this connection too.
                let mut grant = conns[key].grant.take();
                let mut outbox = Deliveries::new(conns, &mut s.dirty, &mut s.deflater, &s.settings)
                    .relaying(s.backplane.as_mut());
                match (grant.as_deref_mut(), &s.settings.verifier) {
                    (Some(grant), Some(verifier)) => {
                        let now_unix_ms = access::unix_ms(s.settings.wall_start_ms, s.now);
                        let access = Access::Token { grant, verifier, now_unix_ms };
                        s.hub.handle_text_as(key, access, text, &mut s.reply, &mut outbox, &mut s.metrics);
                    }
                    _ => s.hub.handle_text(key, text, &mut s.reply, &mut outbox, &mut s.metrics),
                }
                let cuts = outbox.finish();
                conns[key].grant = grant;
                if !s.reply.is_empty() {
                    s.metrics.message_out();
                    push_reply(&mut conns[key], s);
                }
                cuts.apply(conns, s);
            }
            Event::Binary(data) => {
                handled += data.len();
                s.metrics.message_in();
                s.hub.handle_binary(key, &mut s.reply, &mut s.metrics);
                s.metrics.message_out();
                push_reply(&mut conns[key], s);
            }
            Event::Ping(_) | Event::Pong(_) => {}
            Event::Closed { code: peer_code, reason } => {
                debug!(conn = key; "closed by peer: code {peer_code:?} reason {reason:?}");
                ended_by = Some(on_peer_close(&mut conns[key], s, peer_code));
                break;
            }
        }
        // A client that sends faster than it reads what it asks for (pongs, replies,
        // echoes) is judged after each message, not after a whole read budget of them.
        if conns[key].queued_bytes() > s.settings.max_queued_bytes {
            flush(&mut conns[key], s, key);
        }
        if conns[key].doomed || handled >= MESSAGE_BYTES_PER_TURN {
            break;
        }
    }
    let conn = &mut conns[key];
    let closed = session.is_closed();
    conn.phase = Phase::Open(session);
    let stopped = handled >= MESSAGE_BYTES_PER_TURN;
    end_of_read(conn, s, key, pos..end, closed, ended_by, stopped);
}

/// Echo mode's loop over `read_buf[start..end]`: each message goes straight back, compressed
/// when the client negotiated permessage-deflate, through the session's send rule (no data
/// after a close), within the rate limit as in hub mode (`RATED`: `--rate-limit` is set). The
/// output tail is borrowed once for as many messages as the queue bound allows; past it the
/// connection is flushed (and judged) before the next message.
#[inline(never)]
fn echo_frames<const RATED: bool>(
    conn: &mut Connection,
    s: &mut Shared,
    key: usize,
    start: usize,
    end: usize,
) {
    let (now, window, max_queued) = (s.now, conn.send_window, s.settings.max_queued_bytes);
    let rate_limit = s.settings.rate_limit;
    let mut pos = start;
    let (mut received, mut echoed) = (0u64, 0u64);
    let mut handled = 0;
    let mut ended: Option<EchoEnd> = None;
    loop {
        let Phase::Open(session) = &mut conn.phase else {
            unreachable!("on_frames is only called for open connections");
        };
        let (config, read_buf, deflater) = (&s.settings.session, &mut s.read_buf, &mut s.deflater);
        let rate = &mut conn.rate;
        let queued_before = conn.out.queued_bytes();
        let over_bound = conn.out.append_with(&mut s.pool, |tail| {
            let tail_start = tail.len();
            while pos < end {
                // The session writes a ping's pong straight into the tail.
                let before_step = tail.len();
                let step = match session.advance(&mut read_buf[pos..end], config, tail, now) {
                    Ok(step) => step,
                    Err(e) => {
                        ended = Some(EchoEnd::ProtocolError(e));
                        return false;
                    }
                };
                pos += step.consumed;
                if RATED && !access::admits(rate, rate_limit, step.event.as_ref(), now) {
                    tail.truncate(before_step);
                    ended = Some(EchoEnd::RateLimited);
                    return false;
                }
                let (opcode, payload) = match step.event {
                    None => return false,
                    Some(Event::Text(text)) => (OpCode::Text, text.as_bytes()),
                    Some(Event::Binary(data)) => (OpCode::Binary, data),
                    Some(Event::Ping(_) | Event::Pong(_)) => continue,
                    Some(Event::Closed { code, reason }) => {
                        debug!(conn = key; "closed by peer: code {code:?} reason {reason:?}");
                        ended = Some(EchoEnd::PeerClosed(code));
                        return false;
                    }
                };
                received += 1;
                handled += payload.len();
                if step.sender.can_send() {
                    deflater.write_frame(tail, opcode, payload, window);
                    echoed += 1;
                }
                if handled >= MESSAGE_BYTES_PER_TURN {
                    return false; // the rest of the input waits for the next turn
                }
                // A client that sends faster than it reads its echoes is judged after each
                // message, not after a whole read budget of them.
                if queued_before + (tail.len() - tail_start) > max_queued {
                    return true;
                }
            }
            false
        });
        if !over_bound {
            break;
        }
        flush(conn, s, key);
        if conn.doomed {
            break;
        }
    }
    s.metrics.messages_in(received);
    s.metrics.messages_out(echoed);
    let ended_by = match ended {
        Some(EchoEnd::ProtocolError(e)) => Some(on_protocol_error(conn, s, key, e)),
        Some(EchoEnd::PeerClosed(code)) => Some(on_peer_close(conn, s, code)),
        Some(EchoEnd::RateLimited) => {
            let Phase::Open(mut session) = std::mem::replace(&mut conn.phase, Phase::Busy) else {
                unreachable!("on_frames is only called for open connections");
            };
            access::rate_limited(&mut session, conn, s, key);
            conn.phase = Phase::Open(session);
            None
        }
        None => None,
    };
    let closed = matches!(&conn.phase, Phase::Open(session) if session.is_closed());
    let stopped = handled >= MESSAGE_BYTES_PER_TURN;
    end_of_read(conn, s, key, pos..end, closed, ended_by, stopped);
}

/// Why echo's loop stopped before the end of the input.
enum EchoEnd {
    ProtocolError(ProtocolError),
    PeerClosed(Option<u16>),
    /// Over `--rate-limit`: the frame was dropped; close 1008.
    RateLimited,
}

/// The peer broke the protocol: the session has written its close, unless it had sent one.
fn on_protocol_error(conn: &mut Connection, s: &mut Shared, key: usize, e: ProtocolError) -> Ending {
    debug!(conn = key; "protocol error: {e}");
    session_closed_with(conn, s, e.close_code());
    Ending::ProtocolError
}

/// The peer closed: the session has answered with its close, unless it had sent one (the
/// peer is then answering ours).
fn on_peer_close(conn: &mut Connection, s: &mut Shared, peer_code: Option<u16>) -> Ending {
    session_closed_with(conn, s, peer_code.unwrap_or(code::NORMAL));
    Ending::Normal
}

/// Remembers and counts the close the session just wrote with `close_code`. A session writes
/// at most one close, and every close we start (token expiry, rate limit, shutdown, timeouts)
/// records its code when it is sent: a code already there means the session wrote nothing now
/// (the peer's close or error came after ours), and that close was counted when it went out.
fn session_closed_with(conn: &mut Connection, s: &mut Shared, close_code: u16) {
    if conn.close_code == 0 {
        conn.close_code = close_code;
        s.metrics.close_code_sent(close_code);
    }
}

/// After a read's frames: keep an unfinished header or control frame (`read_buf[rest]`) for
/// the next read, or, when [`MESSAGE_BYTES_PER_TURN`] stopped the call, the whole rest of the
/// read for the next turn; queue the connection for the end-of-turn flush; linger if it closed.
fn end_of_read(
    conn: &mut Connection,
    s: &mut Shared,
    key: usize,
    rest: std::ops::Range<usize>,
    closed: bool,
    ended_by: Option<Ending>,
    stopped: bool,
) {
    if !rest.is_empty() && !closed && !conn.doomed {
        conn.input.extend_from_slice(&s.read_buf[rest]);
        if stopped {
            // Whole frames may wait in it, and no readiness edge will come for them.
            conn.paused = true;
            s.reread.push(key);
        }
    }
    mark(conn, s, key);
    if closed {
        linger(conn, s, key, ended_by.unwrap_or(Ending::Normal));
    }
}

/// Queues the hub's reply frames (in `s.reply`) for the sender, compressed when it negotiated
/// permessage-deflate and a reply reaches the threshold (most replies are short and go plain).
fn push_reply(conn: &mut Connection, s: &mut Shared) {
    match conn.send_window {
        Some(window) if s.reply.len() >= s.deflater.config().threshold => {
            let (reply, deflater) = (&s.reply, &mut s.deflater);
            conn.out.append_with(&mut s.pool, |out| deflater.rewrite_frames(out, reply, window));
        }
        _ => conn.out.push_bytes(&mut s.pool, &s.reply),
    }
    s.reply.clear();
}
