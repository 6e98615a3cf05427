//! Frames for an open connection: the hot path.
//!
//! [`on_frames`] runs the connection's session over the bytes just read (parsed and unmasked in
//! place, in the loop's one read buffer), queues what the session writes on its own (pongs,
//! closes), and hands each message to the mode: echo it back, or give it to the hub, whose
//! fan-out goes through [`Deliveries`]. The session is taken out of its slot for the call
//! ([`Phase::Busy`]) so the hub may deliver to every connection, the sender included.

use log::debug;
use slab::Slab;

use super::access::{self, FrameClass};
use super::connection::{Connection, Ending, Phase};
use super::fanout::Deliveries;
use super::lifecycle::{flush, linger, mark};
use super::state::{Mode, Shared};
use crate::hub::Access;
use crate::protocol::close::code;
use crate::protocol::frame::OpCode;
use crate::protocol::session::{Event, Step};

/// Frames in `read_buf[start..end]` for an open connection: the hot path.
pub(super) fn on_frames(conns: &mut Slab<Connection>, s: &mut Shared, key: usize, start: usize, end: usize) {
    let Phase::Open(mut session) = std::mem::replace(&mut conns[key].phase, Phase::Busy) else {
        unreachable!("on_frames is only called for open connections");
    };
    let mut pos = start;
    let mut ended_by: Option<Ending> = None;
    while pos < end {
        let buf = &mut s.read_buf[pos..end];
        let step = session.advance(buf, &s.settings.session, &mut s.control, s.now);
        // The rate limit: each message and each control frame takes a token from its bucket.
        // Over it, the frame is dropped (a ping gets no pong) and the connection closes 1008.
        let class = match &step {
            Ok(Step { event: Some(Event::Text(_) | Event::Binary(_)), .. }) => Some(FrameClass::Data),
            Ok(Step { event: Some(Event::Ping(_) | Event::Pong(_)), .. }) => Some(FrameClass::Control),
            _ => None,
        };
        let over_rate = class
            .is_some_and(|c| !access::within_rate(&mut conns[key].rate, s.settings.rate_limit, c, s.now));
        if over_rate {
            s.control.clear();
        }
        if !s.control.is_empty() {
            conns[key].out.push_bytes(&mut s.pool, &s.control);
            s.control.clear();
        }
        let Step { consumed, event, sender } = match step {
            Ok(step) => step,
            Err(e) => {
                debug!(conn = key; "protocol error: {e}");
                conns[key].close_code = e.close_code();
                s.metrics.close_code_sent(e.close_code());
                ended_by = Some(Ending::ProtocolError);
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
                match s.settings.mode {
                    Mode::Echo => {
                        // The session's send rule first: after our close (a shutdown's 1001), a
                        // message still in flight from the peer gets no echo. Then the frame as
                        // this client takes it (compressed when it negotiated permessage-deflate).
                        let conn = &mut conns[key];
                        if sender.can_send() {
                            let (window, deflater) = (conn.send_window, &mut s.deflater);
                            conn.out.append_with(&mut s.pool, |out| {
                                deflater.write_frame(out, OpCode::Text, text.as_bytes(), window)
                            });
                            s.metrics.message_out();
                        }
                    }
                    Mode::Hub => {
                        // The grant leaves its slot for the call, as the session does, so the
                        // hub may deliver to this connection too.
                        let mut grant = conns[key].grant.take();
                        let mut outbox = Deliveries::new(conns, &mut s.dirty, &mut s.deflater, &s.settings)
                            .relaying(s.backplane.as_mut());
                        match (grant.as_deref_mut(), &s.settings.verifier) {
                            (Some(grant), Some(verifier)) => {
                                let now_unix_ms = access::unix_ms(s.settings.wall_start_ms, s.now);
                                let access = Access::Token { grant, verifier, now_unix_ms };
                                s.hub.handle_text_as(
                                    key,
                                    access,
                                    text,
                                    &mut s.reply,
                                    &mut outbox,
                                    &mut s.metrics,
                                );
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
                }
            }
            Event::Binary(data) => {
                s.metrics.message_in();
                match s.settings.mode {
                    Mode::Echo => {
                        let conn = &mut conns[key];
                        if sender.can_send() {
                            let (window, deflater) = (conn.send_window, &mut s.deflater);
                            conn.out.append_with(&mut s.pool, |out| {
                                deflater.write_frame(out, OpCode::Binary, data, window)
                            });
                            s.metrics.message_out();
                        }
                    }
                    Mode::Hub => {
                        s.hub.handle_binary(key, &mut s.reply, &mut s.metrics);
                        s.metrics.message_out();
                        push_reply(&mut conns[key], s);
                    }
                }
            }
            Event::Ping(_) | Event::Pong(_) => {}
            Event::Closed { code: peer_code, reason } => {
                debug!(conn = key; "closed by peer: code {peer_code:?} reason {reason:?}");
                let c = peer_code.unwrap_or(code::NORMAL);
                conns[key].close_code = c;
                s.metrics.close_code_sent(c);
                ended_by = Some(Ending::Normal);
                break;
            }
        }
        // A client that sends faster than it reads what it asks for (pongs, replies,
        // echoes) is judged after each message, not after a whole read budget of them.
        if conns[key].queued_bytes() > s.settings.max_queued_bytes {
            flush(&mut conns[key], s, key);
        }
        if conns[key].doomed {
            break;
        }
    }
    let conn = &mut conns[key];
    // Keep an unfinished header or control frame for the next read.
    if pos < end && !session.is_closed() && !conn.doomed {
        conn.input.extend_from_slice(&s.read_buf[pos..end]);
    }
    let closed = session.is_closed();
    conn.phase = Phase::Open(session);
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
