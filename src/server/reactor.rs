//! The readiness loop.
//!
//! Each turn: wait for readiness (or the earliest deadline), then
//! 1. accept until `WouldBlock`;
//! 2. for each readable connection, read until drained, feed the protocol core, and queue what
//!    the events produce (echoes, hub replies, fan-out to other connections);
//! 3. flush every connection that got output this turn, one `writev` each, so the 16 echoes of
//!    16 frames that arrived in one packet leave in one write;
//! 4. run due timers; 5. remove connections that ended.
//!
//! Hot paths: [`Server::on_readable`] -> [`Server::on_frames`] (parse and unmask in place, in the
//! loop's one read buffer) and [`Server::flush`].

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::connection::{Connection, Ending, Phase};
use super::outbuf::BufferPool;
use super::timers::{DeadlineQueue, NEVER};
use crate::config::{millis, Config};
use crate::http::{self, HttpConfig, HttpContext, HttpRequest};
use crate::hub::{ClientId, Hub, Outbox};
use crate::metrics::Metrics;
use crate::protocol::close::code;
use crate::protocol::frame::{self, OpCode};
use crate::protocol::handshake::{self, Rejection, UpgradePolicy};
use crate::protocol::session::{Event, Millis, Session, SessionConfig, Step, TimerOutcome, MAX_UNCONSUMED};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// One read buffer for the whole loop. The prefix holds a connection's unconsumed bytes (an
/// unfinished header) so the next read lands right after them and nothing larger is copied.
const READ_PREFIX: usize = MAX_UNCONSUMED;
const READ_SIZE: usize = 256 * 1024;
/// Full reads one connection may do per turn before the others get theirs (fairness).
const READS_PER_TURN: usize = 8;
/// A connection whose queue reaches this many shared frames or bytes in one turn is flushed at
/// once, so the send-queue bound measures what the socket refused, not this turn's burst.
const EAGER_FLUSH_FRAMES: usize = 128;
const EAGER_FLUSH_BYTES: usize = 256 * 1024;
/// Most turns a fan-out flush is put off while input keeps arriving.
const MAX_DEFERRED_TURNS: usize = 8;
/// How long accept stays paused after running out of file descriptors.
const ACCEPT_PAUSE: Millis = 100;
/// Connections beyond the limit are still accepted to be told 503, up to this many at once.
const OVERFLOW_SLOTS: usize = 256;
/// The most time a connection that ended badly is given to drain.
const DRAIN_LIMIT: Millis = 2_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Echo,
    Hub,
}

/// Settings derived once from the [`Config`].
struct Settings {
    mode: Mode,
    path: String,
    session: SessionConfig,
    upgrade: UpgradePolicy,
    http: HttpConfig,
    max_connections: usize,
    max_head: usize,
    max_queued_bytes: usize,
    send_queue: usize,
    handshake_timeout: Millis,
    write_wait: Millis,
    shutdown_timeout: Millis,
}

/// Everything the loop owns besides the connections, so handlers can borrow both at once.
struct Shared {
    settings: Settings,
    hub: Hub,
    metrics: Metrics,
    pool: BufferPool,
    timers: DeadlineQueue,
    /// Connections with output to flush at the end of this turn.
    dirty: Vec<usize>,
    /// Connections to remove at the end of this turn.
    doomed: Vec<usize>,
    /// Connections that used their read budget with input left: read again next turn.
    reread: Vec<usize>,
    read_buf: Vec<u8>,
    /// Frames the session writes on its own (pongs, closes, pings), moved to the queue at once.
    control: Vec<u8>,
    /// Replies the hub writes for the sender.
    reply: Vec<u8>,
    started: Instant,
    now: Millis,
    accept_paused_until: Option<Millis>,
    shutting_down: Option<Millis>,
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Option<Signals>,
    conns: Slab<Connection>,
    shared: Shared,
}

impl Server {
    /// Binds the listener and prepares the loop. `handle_signals`: stop on SIGINT/SIGTERM
    /// (the binary does; in-process tests do not).
    pub fn bind(config: &Config, handle_signals: bool) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let signals = if handle_signals {
            let mut signals = Signals::new([SIGINT, SIGTERM])?;
            poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let max_connections = config
            .max_connections
            .unwrap_or_else(default_max_connections)
            .clamp(1, (1 << 24) - OVERFLOW_SLOTS - 1);
        let settings = Settings {
            mode: if config.echo { Mode::Echo } else { Mode::Hub },
            path: config.path.clone(),
            session: config.session(),
            upgrade: config.upgrade(),
            http: config.http(),
            max_connections,
            max_head: config.max_head_size.max(64),
            max_queued_bytes: config.max_queued_bytes.max(1),
            send_queue: config.send_queue.max(1),
            handshake_timeout: millis(config.handshake_timeout).max(1),
            write_wait: millis(config.write_wait).max(1),
            shutdown_timeout: millis(config.shutdown_timeout),
        };
        let hub = Hub::new(config.hub());
        // Sized for the limit up front: the slab's pages are only touched (and so only count
        // towards RSS) as connections arrive, and it never reallocates and copies under load.
        let conns = Slab::with_capacity((max_connections + OVERFLOW_SLOTS).min(1 << 24));
        let mut read_buf = vec![0u8; READ_PREFIX + READ_SIZE];
        read_buf.shrink_to_fit();
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            conns,
            shared: Shared {
                settings,
                hub,
                metrics: Metrics::default(),
                pool: BufferPool::default(),
                timers: DeadlineQueue::default(),
                dirty: Vec::new(),
                doomed: Vec::new(),
                reread: Vec::new(),
                read_buf,
                control: Vec::new(),
                reply: Vec::new(),
                started: Instant::now(),
                now: 0,
                accept_paused_until: None,
                shutting_down: None,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Runs until shut down by a signal; returns when every client is gone or the shutdown
    /// timeout has passed.
    pub fn run(mut self) -> io::Result<()> {
        info!(
            "wshub listening on {} (path {}, {} mode, max {} connections)",
            self.local_addr,
            self.shared.settings.path,
            if self.shared.settings.mode == Mode::Echo { "echo" } else { "hub" },
            self.shared.settings.max_connections
        );
        let mut events = Events::with_capacity(1024);
        // Turns whose fan-out flush was put off to gather more input first.
        let mut deferred = 0;
        loop {
            self.shared.now = self.shared.started.elapsed().as_millis() as Millis;
            if let Some(deadline) = self.shared.shutting_down {
                if self.conns.is_empty() || self.shared.now >= deadline {
                    info!("shutdown complete ({} connections left)", self.conns.len());
                    return Ok(());
                }
            }
            let timeout = if self.shared.reread.is_empty() && deferred == 0 {
                self.next_wakeup().map(|at| {
                    std::time::Duration::from_millis(at.saturating_sub(self.shared.now).min(60_000))
                })
            } else {
                Some(std::time::Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.shared.now = self.shared.started.elapsed().as_millis() as Millis;
            for key in std::mem::take(&mut self.shared.reread) {
                self.on_readable(key, true);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    SIGNALS => self.on_signal(),
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, event.is_read_closed() || event.is_error());
                        }
                        if event.is_writable() {
                            self.mark_dirty(key);
                        }
                    }
                }
            }
            // Fan-out queued this turn waits while input keeps arriving (checked with a
            // zero-timeout poll), for a few turns at most: publishes that arrive together then
            // leave in one writev per subscriber instead of one each.
            if !events.is_empty() && !self.shared.dirty.is_empty() && deferred < MAX_DEFERRED_TURNS {
                deferred += 1;
                continue;
            }
            deferred = 0;
            self.end_of_turn();
        }
    }

    fn next_wakeup(&self) -> Option<Millis> {
        let mut next = self.shared.timers.next().unwrap_or(NEVER);
        if let Some(at) = self.shared.accept_paused_until {
            next = next.min(at);
        }
        if let Some(at) = self.shared.shutting_down {
            next = next.min(at);
        }
        (next != NEVER).then_some(next)
    }

    /// Flush what this turn produced, run due timers, remove what ended.
    fn end_of_turn(&mut self) {
        self.flush_dirty();
        self.run_timers();
        self.flush_dirty();
        self.reap();
        if let Some(at) = self.shared.accept_paused_until {
            if self.shared.now >= at {
                self.shared.accept_paused_until = None;
                self.accept_all();
                self.flush_dirty();
                self.reap();
            }
        }
    }

    // ----- accept -----

    fn accept_all(&mut self) {
        if self.shared.accept_paused_until.is_some() || self.shared.shutting_down.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            match listener.accept() {
                Ok((socket, peer)) => self.on_accepted(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_resource_exhaustion(&e) => {
                    // Out of descriptors or memory: pending clients wait in the backlog. Try
                    // again shortly rather than spin on a listener that stays readable.
                    warn!("accept failed ({e}); pausing accepts for {ACCEPT_PAUSE} ms");
                    self.shared.accept_paused_until = Some(self.shared.now + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => {
                    // ECONNABORTED and friends concern one client only.
                    debug!("accept error: {e}");
                }
            }
        }
    }

    fn on_accepted(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        let s = &mut self.shared;
        let over_limit = self.conns.len() >= s.settings.max_connections;
        if over_limit && self.conns.len() >= s.settings.max_connections + OVERFLOW_SLOTS {
            // Too many even to answer: drop at once.
            s.metrics.handshake_rejected(503);
            return;
        }
        let _ = socket.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) =
            self.poll.registry().register(&mut socket, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            warn!("register failed for {peer}: {e}");
            return;
        }
        let conn = entry.insert(Connection::new(socket, s.now + s.settings.handshake_timeout));
        s.metrics.connection_accepted();
        debug!("conn {key} accepted from {peer}");
        if over_limit {
            reject(conn, s, key, Rejection::new(503, "Too many connections"));
        }
        rearm(conn, s, key);
    }

    // ----- reading -----

    /// `read_to_end`: keep reading after a short read, because no new edge will come for what
    /// is already there (the peer's FIN arrived with the data, or a re-read after the budget).
    fn on_readable(&mut self, key: usize, read_to_end: bool) {
        for _ in 0..READS_PER_TURN {
            let s = &mut self.shared;
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.doomed {
                return;
            }
            // Read after any kept bytes so the parser sees one contiguous slice.
            let kept = if matches!(conn.phase, Phase::Open(_)) { conn.input.len() } else { 0 };
            if kept > READ_PREFIX {
                // The session never leaves more than MAX_UNCONSUMED; refuse to guess.
                doom(conn, s, key, Ending::IoError);
                return;
            }
            let start = READ_PREFIX - kept;
            let result = conn.socket.read(&mut s.read_buf[READ_PREFIX..]);
            let n = match result {
                Ok(0) => {
                    on_eof(conn, s, key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.flush_now(key);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("conn {key} read error: {e}");
                    doom(conn, s, key, Ending::IoError);
                    return;
                }
            };
            s.metrics.bytes_in(n as u64);
            if kept > 0 {
                s.read_buf[start..READ_PREFIX].copy_from_slice(&conn.input);
                conn.input.clear();
            }
            let end = READ_PREFIX + n;
            match conn.phase {
                Phase::Handshake { .. } => self.on_request_bytes(key, n),
                Phase::Open(_) => self.on_frames(key, start, end),
                Phase::Busy => unreachable!("the session is only out of its slot inside on_frames"),
                Phase::Lingering { .. } | Phase::Draining { .. } => {} // discarded
            }
            rearm_key(&mut self.conns, &mut self.shared, key);
            // A short read drained the socket: with edge-triggered readiness the next arrival
            // raises a new event, so skip the read that would only say WouldBlock. Not when the
            // peer's FIN came in the same event: the read that returns 0 is the only notice.
            if n < READ_SIZE && !read_to_end {
                self.flush_now(key);
                return;
            }
        }
        // Budget spent and the socket may hold more: come back next turn, after the others
        // had theirs (edge-triggered readiness will not remind us).
        self.shared.reread.push(key);
        self.flush_now(key);
    }

    /// Writes what this connection's reads produced right away, in one `writev`: its pooled
    /// buffer goes straight back to the pool for the next connection, and replies leave
    /// without waiting for the rest of the turn.
    fn flush_now(&mut self, key: usize) {
        let s = &mut self.shared;
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.doomed && !conn.out.is_empty() {
                flush(conn, s, key);
                rearm(conn, s, key);
            }
        }
    }

    /// Bytes of the request head (or HTTP body) arrived in `read_buf[READ_PREFIX..+n]`.
    fn on_request_bytes(&mut self, key: usize, n: usize) {
        let s = &mut self.shared;
        let conn = &mut self.conns[key];
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
            self.on_request(key);
        }
    }

    /// The head may be complete in `conn.input`: upgrade, answer HTTP, or wait for more.
    fn on_request(&mut self, key: usize) {
        let s = &mut self.shared;
        let conn = &mut self.conns[key];
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
            let head_len = head.head_len;
            s.control.clear();
            accepted.write_response(&s.settings.upgrade, &mut s.control);
            match conn.out.write_or_queue(&mut conn.socket, &mut s.pool, &s.control) {
                Ok(n) => s.metrics.bytes_out(n as u64),
                Err(e) => {
                    s.control.clear();
                    debug!("conn {key} write error: {e}");
                    doom(conn, s, key, Ending::IoError);
                    return;
                }
            }
            s.control.clear();
            conn.phase = Phase::Open(Session::new(&s.settings.session, s.now));
            s.metrics.connection_opened();
            mark(conn, s, key);
            debug!("conn {key} upgraded");
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
            self.on_frames(key, READ_PREFIX, end);
            return;
        }
        if head.path() == s.settings.path {
            // The WebSocket endpoint exists; this request just did not ask to upgrade. 426 says
            // so (404 said there was nothing here).
            reject(
                conn,
                s,
                key,
                Rejection::new(426, "this endpoint speaks WebSocket only; send an upgrade request"),
            );
            return;
        }
        self.on_http(key, input);
    }

    /// A plain HTTP request (healthz, metrics, publish API). `input` holds head and body so far.
    fn on_http(&mut self, key: usize, input: Vec<u8>) {
        let s = &mut self.shared;
        let conns = &mut self.conns;
        let head = match handshake::parse_head(&input, s.settings.max_head) {
            Ok(Some(head)) => head,
            _ => unreachable!("parsed just before"),
        };
        let content_length = match head.content_length() {
            Ok(n) => n,
            Err(rejection) => {
                reject_http(&mut conns[key], s, key, rejection);
                return;
            }
        };
        if head.has_transfer_encoding() {
            // With a Content-Length too, the framing is ambiguous (the request-smuggling shape,
            // RFC 9112 section 6.3): 400. Alone, we lack the length we require: 411.
            let rejection = if content_length.is_some() {
                Rejection::new(400, "Content-Length with Transfer-Encoding")
            } else {
                Rejection::new(411, "chunked bodies are not accepted")
            };
            reject_http(&mut conns[key], s, key, rejection);
            return;
        }
        let peer_is_loopback = conns[key].socket.peer_addr().map(|a| a.ip().is_loopback()).unwrap_or(false);
        let request = HttpRequest {
            method: head.method,
            path: head.path(),
            authorization: head.header("authorization"),
            content_length,
            peer_is_loopback,
            content_type: head.header("content-type"),
            origin: head.header("origin"),
            host: head.header("host"),
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
            // RFC 9110 section 10.1.1: a client that waits to be told to send its body is told,
            // once (never an HTTP/1.0 client, which may not get a 1xx).
            let go_ahead = head.version == 1
                && head
                    .header("expect")
                    .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"));
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
        let mut outbox = Deliveries::new(conns, &mut s.pool, &mut s.dirty, &s.settings, s.now);
        let connections = outbox.conns.len();
        let response = http::respond(
            &request,
            body,
            &s.settings.http,
            &mut HttpContext {
                hub: &mut s.hub,
                outbox: &mut outbox,
                metrics: &mut s.metrics,
                uptime_seconds: s.now / 1000,
                connections,
            },
        );
        let cut_off = std::mem::take(&mut outbox.cut_off);
        s.metrics.bytes_out(outbox.written);
        let conn = &mut conns[key];
        conn.out.append_with(&mut s.pool, |out| response.write_to(out));
        linger(conn, s, key, Ending::Normal);
        for victim in cut_off {
            if let Some(c) = conns.get_mut(victim) {
                cut_slow_consumer(c, s, victim);
            }
        }
    }

    /// Frames in `read_buf[start..end]` for an open connection: the hot path.
    fn on_frames(&mut self, key: usize, start: usize, end: usize) {
        let s = &mut self.shared;
        let conns = &mut self.conns;
        let Phase::Open(mut session) = std::mem::replace(&mut conns[key].phase, Phase::Busy) else {
            unreachable!("on_frames is only called for open connections");
        };
        let mut pos = start;
        let mut ended_by: Option<Ending> = None;
        while pos < end {
            let buf = &mut s.read_buf[pos..end];
            let step = session.advance(buf, &s.settings.session, &mut s.control, s.now);
            if !s.control.is_empty() {
                conns[key].out.push_bytes(&mut s.pool, &s.control);
                s.control.clear();
            }
            let Step { consumed, event } = match step {
                Ok(step) => step,
                Err(e) => {
                    debug!("conn {key} protocol error: {e}");
                    conns[key].close_code = e.close_code();
                    s.metrics.close_code_sent(e.close_code());
                    ended_by = Some(Ending::ProtocolError);
                    break;
                }
            };
            pos += consumed;
            let Some(event) = event else {
                break;
            };
            match event {
                Event::Text(text) => {
                    s.metrics.message_in();
                    match s.settings.mode {
                        Mode::Echo => {
                            let conn = &mut conns[key];
                            conn.out.append_with(&mut s.pool, |out| {
                                frame::write_frame(out, OpCode::Text, text.as_bytes())
                            });
                            s.metrics.message_out();
                        }
                        Mode::Hub => {
                            let mut outbox =
                                Deliveries::new(conns, &mut s.pool, &mut s.dirty, &s.settings, s.now);
                            s.hub.handle_text(key, text, &mut s.reply, &mut outbox, &mut s.metrics);
                            let cut_off = std::mem::take(&mut outbox.cut_off);
                            s.metrics.bytes_out(outbox.written);
                            if !s.reply.is_empty() {
                                s.metrics.message_out();
                                conns[key].out.push_bytes(&mut s.pool, &s.reply);
                                s.reply.clear();
                            }
                            for victim in cut_off {
                                if let Some(c) = conns.get_mut(victim) {
                                    cut_slow_consumer(c, s, victim);
                                }
                            }
                        }
                    }
                }
                Event::Binary(data) => {
                    s.metrics.message_in();
                    match s.settings.mode {
                        Mode::Echo => {
                            let conn = &mut conns[key];
                            conn.out.append_with(&mut s.pool, |out| {
                                frame::write_frame(out, OpCode::Binary, data)
                            });
                            s.metrics.message_out();
                        }
                        Mode::Hub => {
                            s.hub.handle_binary(key, &mut s.reply, &mut s.metrics);
                            s.metrics.message_out();
                            conns[key].out.push_bytes(&mut s.pool, &s.reply);
                            s.reply.clear();
                        }
                    }
                }
                Event::Ping(_) | Event::Pong(_) => {}
                Event::Closed { code: peer_code, reason } => {
                    debug!("conn {key} closed by peer: code {peer_code:?} reason {reason:?}");
                    let c = peer_code.unwrap_or(code::NORMAL);
                    conns[key].close_code = c;
                    s.metrics.close_code_sent(c);
                    ended_by = Some(Ending::Normal);
                    break;
                }
            }
            // A client that sends faster than it reads what it asks for (pongs, replies,
            // echoes) is judged after each message, not after a whole read budget of them.
            if conns[key].out.queued_bytes() > s.settings.max_queued_bytes {
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

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.out.is_empty() {
                mark(conn, &mut self.shared, key);
            }
        }
    }

    // ----- writing -----

    fn flush_dirty(&mut self) {
        let s = &mut self.shared;
        let mut i = 0;
        // `dirty` may grow while we go (a flush that fails dooms, never adds); index loop.
        while i < s.dirty.len() {
            let key = s.dirty[i];
            i += 1;
            let Some(conn) = self.conns.get_mut(key) else { continue };
            conn.dirty = false;
            if conn.doomed {
                continue;
            }
            flush(conn, s, key);
            rearm(conn, s, key);
        }
        s.dirty.clear();
    }

    // ----- timers -----

    fn run_timers(&mut self) {
        let s = &mut self.shared;
        while let Some((deadline, key)) = s.timers.pop_due(s.now) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.timer_armed != deadline || conn.doomed {
                continue; // superseded by an earlier entry, or the slot was reused
            }
            conn.timer_armed = NEVER;
            on_timer(conn, s, key);
            rearm(conn, s, key);
        }
    }

    // ----- ending -----

    fn reap(&mut self) {
        let s = &mut self.shared;
        while let Some(key) = s.doomed.pop() {
            let Some(mut conn) = self.conns.try_remove(key) else { continue };
            if conn.is_open() {
                s.metrics.connection_closed();
            }
            if s.settings.mode == Mode::Hub {
                s.hub.remove_client(key);
            }
            let _ = self.poll.registry().deregister(&mut conn.socket);
            if log::log_enabled!(log::Level::Debug) {
                let peer = conn.socket.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
                debug!("conn {key} from {peer} closed: {:?}, close code {}", conn.ending, conn.close_code);
            }
            conn.out.clear(&mut s.pool);
        }
    }

    fn on_signal(&mut self) {
        let Some(signals) = self.signals.as_mut() else { return };
        let got: Vec<i32> = signals.pending().collect();
        if got.is_empty() || self.shared.shutting_down.is_some() {
            return;
        }
        info!("signal {:?}: closing {} connections", got, self.conns.len());
        self.begin_shutdown();
    }

    /// Stop accepting, send 1001 to every client, and give them `shutdown_timeout` to finish.
    pub fn begin_shutdown(&mut self) {
        let s = &mut self.shared;
        s.shutting_down = Some(s.now + s.settings.shutdown_timeout);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        for (key, conn) in self.conns.iter_mut() {
            if conn.doomed {
                continue;
            }
            if matches!(conn.phase, Phase::Handshake { .. }) {
                // A request still arriving is told why it will not be served.
                conn.ending = Ending::Shutdown;
                reject(conn, s, key, Rejection::new(503, "server shutting down"));
                continue;
            }
            let Phase::Open(session) = &mut conn.phase else { continue };
            if session.close(
                &s.settings.session,
                &mut s.control,
                code::GOING_AWAY,
                "server shutting down",
                s.now,
            ) {
                conn.out.push_bytes(&mut s.pool, &s.control);
                s.control.clear();
                conn.close_code = code::GOING_AWAY;
                s.metrics.close_code_sent(code::GOING_AWAY);
                mark(conn, s, key);
                rearm(conn, s, key);
            }
        }
        self.flush_dirty();
        self.reap();
    }
}

// ----- per-connection steps, as free functions over split borrows -----

fn mark(conn: &mut Connection, s: &mut Shared, key: usize) {
    if !conn.dirty && !conn.out.is_empty() {
        conn.dirty = true;
        s.dirty.push(key);
    }
}

fn doom(conn: &mut Connection, s: &mut Shared, key: usize, ending: Ending) {
    if !conn.doomed {
        conn.doomed = true;
        if conn.ending == Ending::None {
            conn.ending = ending;
        }
        s.doomed.push(key);
    }
}

/// Writes what the socket takes; a connection whose final bytes are out shuts down its side.
fn flush(conn: &mut Connection, s: &mut Shared, key: usize) {
    if !conn.out.is_empty() {
        match conn.out.flush(&mut conn.socket, &mut s.pool) {
            Ok(f) => {
                conn.note_flush(f.written, s.now);
                s.metrics.bytes_out(f.written as u64);
            }
            Err(e) => {
                debug!("conn {key} write error: {e}");
                doom(conn, s, key, Ending::IoError);
                return;
            }
        }
        if conn.out.queued_bytes() > s.settings.max_queued_bytes && conn.is_open() {
            cut_slow_consumer(conn, s, key);
            return;
        }
    }
    if conn.out.is_empty() {
        if let Phase::Lingering { deadline } = conn.phase {
            // Everything is out: FIN after the last byte, then wait for the peer's FIN so
            // unread input does not turn our close into a reset.
            let _ = conn.socket.shutdown(Shutdown::Write);
            conn.phase = Phase::Draining { deadline };
        }
    }
}

/// Queue a refusal and end the connection after it is written.
fn reject(conn: &mut Connection, s: &mut Shared, key: usize, rejection: Rejection) {
    debug!("conn {key} rejected: {} {}", rejection.status, rejection.reason);
    s.metrics.handshake_rejected(rejection.status);
    conn.out.append_with(&mut s.pool, |out| rejection.write_response(out));
    linger(conn, s, key, Ending::Rejected);
}

/// As [`reject`], for a request that was not an upgrade (or not readable as one): counted as
/// an HTTP response, not a refused handshake.
fn reject_http(conn: &mut Connection, s: &mut Shared, key: usize, rejection: Rejection) {
    debug!("conn {key} refused: {} {}", rejection.status, rejection.reason);
    s.metrics.http_response(rejection.status);
    conn.out.append_with(&mut s.pool, |out| rejection.write_response(out));
    linger(conn, s, key, Ending::Rejected);
}

/// The last bytes are queued: write them, then shut down, bounded by the close timeout.
fn linger(conn: &mut Connection, s: &mut Shared, key: usize, ending: Ending) {
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
    if conn.out.is_empty() {
        flush(conn, s, key);
    }
}

fn cut_slow_consumer(conn: &mut Connection, s: &mut Shared, key: usize) {
    if conn.doomed {
        return;
    }
    warn!("conn {key} cut off: slow consumer ({} bytes queued)", conn.out.queued_bytes());
    s.metrics.slow_consumer_dropped();
    conn.close_code = code::POLICY;
    s.metrics.close_code_sent(code::POLICY);
    // Attempt the close frame: it goes behind what the client is not reading, so it arrives
    // only if the client catches up within this one write.
    let mut close = Vec::new();
    frame::write_close(&mut close, code::POLICY, "slow consumer");
    conn.out.push_bytes(&mut s.pool, &close);
    let _ = conn.out.flush(&mut conn.socket, &mut s.pool);
    // Nothing more will be written: free the queue now, not at the end of the turn, so many
    // cut-off clients in one turn do not hold their queues at once.
    conn.out.clear(&mut s.pool);
    doom(conn, s, key, Ending::SlowConsumer);
}

fn on_eof(conn: &mut Connection, s: &mut Shared, key: usize) {
    // The peer closed only its sending side: what we owe it (the echo of its close, replies)
    // still goes out, best effort, before the socket is dropped.
    flush(conn, s, key);
    let ending = if matches!(conn.phase, Phase::Draining { .. }) { Ending::Normal } else { Ending::PeerGone };
    doom(conn, s, key, ending);
}

fn on_timer(conn: &mut Connection, s: &mut Shared, key: usize) {
    let now = s.now;
    let stalled = conn.write_stalled(now, s.settings.write_wait);
    match &mut conn.phase {
        Phase::Handshake { deadline, .. } if now >= *deadline => {
            debug!("conn {key}: handshake timeout");
            // Say why (RFC 9110 section 15.5.9) rather than vanish; the answer lingers at most
            // the drain limit.
            conn.ending = Ending::HandshakeTimeout;
            reject_http(conn, s, key, Rejection::new(408, "request not received in time"));
        }
        Phase::Lingering { deadline } | Phase::Draining { deadline } if now >= *deadline => {
            doom(conn, s, key, Ending::CloseTimeout);
        }
        Phase::Open(session) => {
            if stalled {
                debug!("conn {key}: no write progress for {} ms", s.settings.write_wait);
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

/// Arms the connection's next deadline (only ever earlier; see `timers`).
fn rearm(conn: &mut Connection, s: &mut Shared, key: usize) {
    if conn.doomed {
        return;
    }
    let deadline = match &conn.phase {
        Phase::Handshake { deadline, .. } | Phase::Lingering { deadline } | Phase::Draining { deadline } => {
            *deadline
        }
        Phase::Open(session) => {
            let mut d = session.next_timeout(&s.settings.session).unwrap_or(NEVER);
            if !conn.out.is_empty() {
                d = d.min(conn.last_progress.saturating_add(s.settings.write_wait));
            }
            d
        }
        Phase::Busy => return,
    };
    s.timers.arm(key, &mut conn.timer_armed, deadline);
}

fn rearm_key(conns: &mut Slab<Connection>, s: &mut Shared, key: usize) {
    if let Some(conn) = conns.get_mut(key) {
        rearm(conn, s, key);
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM
    matches!(e.raw_os_error(), Some(24) | Some(23) | Some(105) | Some(12))
}

/// The default connection limit: what the open-file limit leaves after a small reserve.
fn default_max_connections() -> usize {
    crate::sys::open_file_limit().saturating_sub(64).max(16)
}

/// The hub's view of the connections: queue a shared frame, bounded per client.
struct Deliveries<'a> {
    conns: &'a mut Slab<Connection>,
    pool: &'a mut BufferPool,
    dirty: &'a mut Vec<usize>,
    max_queued_bytes: usize,
    send_queue: usize,
    /// Clients over a bound during this call; cut off right after it (the hub is busy).
    cut_off: Vec<usize>,
    /// Bytes written by eager flushes, for the metrics.
    written: u64,
    now: Millis,
}

impl<'a> Deliveries<'a> {
    fn new(
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
