//! The readiness loop: the top of the reactor, and the only part that owns the `Server`.
//!
//! Each turn: wait for readiness (or the earliest deadline), then
//! 1. accept until `WouldBlock` (`accept`);
//! 2. for each readable connection, read until drained and hand the bytes to the handler for its
//!    phase: the request head (`accept`, then `http_route` for plain HTTP) or frames (`frames`,
//!    whose fan-out goes through `fanout`); each queues what the events produce (echoes, hub
//!    replies, fan-out to other connections);
//! 3. flush every connection that got output this turn, one `writev` each, so the 16 echoes of
//!    16 frames that arrived in one packet leave in one write;
//! 4. run due timers (`timeouts`); 5. remove connections that ended.
//!
//! The arrows point one way: this loop calls the handlers, the handlers call the connection
//! lifecycle every one of them shares (`lifecycle`: mark, doom, linger, flush, re-arm, reap), and
//! nothing calls back up. They all reach the settings and the loop's buffers through `state`.
//! Stopping is `shutdown`.
//!
//! Hot paths: [`Server::on_readable`] -> `frames::on_frames` (parse and unmask in place, in the
//! loop's one read buffer) and `lifecycle::flush`.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use super::accept;
use super::admission::Admission;
use super::connection::{Connection, Ending, Phase};
use super::frames::on_frames;
use super::history_timer::HistoryTimer;
use super::lifecycle::{
    doom, flush_dirty, flush_now, mark_dirty, on_eof, reap, rearm_key, socket_failed, TURN_WRITE_BUDGET,
};
use super::outbuf::BufferPool;
use super::relay;
use super::shutdown;
use super::state::{Mode, Settings, Shared, StressLogs, READ_PREFIX, READ_SIZE, TLS_READ_SIZE};
use super::timeouts::run_timers;
use super::timers::{DeadlineQueue, FIRST_RESERVED_TOKEN, NEVER};
use super::transport::Received;
use crate::backplane::redis::{RedisBackplane, RedisSettings, SharedHistory, PUB, SUB};
use crate::config::validate::FdBudget;
use crate::config::{millis, Config};
use crate::http::HttpConfig;
use crate::hub::history::{random_seed, MemoryHistory};
use crate::hub::Hub;
use crate::metrics::{Metrics, TlsFailure};
use crate::protocol::deflate::Deflater;
use crate::protocol::handshake::OriginPolicy;
use crate::protocol::session::Millis;
use crate::tls::TlsListener;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
/// The backplane's two Redis connections (subscribe mode, and PUBLISH).
const BACKPLANE_SUB: Token = Token(usize::MAX - 3);
const BACKPLANE_PUB: Token = Token(usize::MAX - 4);

/// Full reads one connection may do per turn before the others get theirs (fairness).
const READS_PER_TURN: usize = 8;
/// Time one connection attempt to Redis (TCP and handshake) may take.
const BACKPLANE_CONNECT_TIMEOUT: Millis = 3_000;
/// Most turns a fan-out flush is put off while input keeps arriving.
const MAX_DEFERRED_TURNS: usize = 8;

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
        // Certificate problems are reported before the port is taken.
        let tls = match config.tls_files() {
            Some(files) => {
                Some(TlsListener::load(files).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?)
            }
            None => None,
        };
        let poll = Poll::new()?;
        let mut listener = if config.reuse_port {
            TcpListener::from_std(crate::sys::listen_reuse_port(config.listen)?)
        } else {
            TcpListener::bind(config.listen)?
        };
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let signals = if handle_signals {
            // SIGHUP reloads the TLS pair (and is ignored without TLS rather than fatal).
            let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
            poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        // `config::load` has fitted the limit already; a `Config` built in code gets the same
        // share of the open-file limit: the connections, the 503 overflow and a reserve.
        let open_files = crate::sys::open_file_limit();
        let overflow_slots = FdBudget::overflow_for(open_files);
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| FdBudget::fit(open_files).unwrap_or(1))
            .clamp(1, FIRST_RESERVED_TOKEN - overflow_slots);
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let verifier = config.verifier().map_err(invalid)?;
        let api_key = config.effective_api_key().map_err(invalid)?;
        let settings = Settings {
            mode: if config.echo { Mode::Echo } else { Mode::Hub },
            path: config.path.clone(),
            session: config.session(),
            upgrade: config.upgrade(),
            http: HttpConfig {
                api_key,
                max_body_bytes: config.max_body_size,
                origins: OriginPolicy::from_allowed(&config.allowed_origins),
                demo: config.demo,
            },
            max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
            max_pending_handshakes: config.max_pending_handshakes.unwrap_or(max_connections / 4).max(1),
            socket_send_buffer: config.socket_send_buffer,
            overflow_slots,
            max_head: config.max_head_size.max(64),
            max_queued_bytes: config.max_queued_bytes.max(1),
            send_queue: config.send_queue.max(1),
            handshake_timeout: millis(config.handshake_timeout).max(1),
            write_wait: millis(config.write_wait).max(1),
            shutdown_timeout: millis(config.shutdown_timeout),
            verifier,
            rate_limit: config.rate_limit(),
            wall_start_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        match &settings.verifier {
            Some(verifier) => info!("connection tokens required ({:?})", verifier.algorithms()),
            None if !config.listen.ip().is_loopback() => warn!(
                "listening on {} with no authentication: anyone who can reach it may subscribe and \
                 publish (see --jwt-secret, --jwt-public-key)",
                config.listen
            ),
            None => {}
        }
        let (per_ip, max_pending) = (settings.max_connections_per_ip, settings.max_pending_handshakes);
        let hub = Hub::new(config.hub());
        // With Redis, history is kept there and shared by every node (see `backplane::shared`);
        // the in-memory store is the single-node history.
        let keep_in_redis = config.redis.is_some() && !config.echo;
        let hub = match config.history() {
            Some(history) if !keep_in_redis => {
                hub.with_history(Box::new(MemoryHistory::new(history, random_seed())))
            }
            _ => hub,
        };
        // Sized for the limit up front: the slab's pages are only touched (and so only count
        // towards RSS) as connections arrive, and it never reallocates and copies under load.
        let conns = Slab::with_capacity((max_connections + overflow_slots).min(1 << 24));
        let backplane = config.redis.as_ref().filter(|_| !config.echo).map(|url| {
            let settings = RedisSettings {
                url: url.clone(),
                prefix: config.redis_prefix.clone(),
                node_id: crate::sys::random_u64(),
                max_output: config.redis_max_queued_bytes.max(1),
                max_data: config.max_message_size,
                connect_timeout: BACKPLANE_CONNECT_TIMEOUT,
                history: config.history().map(|h| SharedHistory { size: h.size, ttl: h.ttl }),
            };
            RedisBackplane::new(settings, [BACKPLANE_SUB, BACKPLANE_PUB], 0)
        });
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
                backplane,
                metrics: Metrics::default(),
                pool: BufferPool::default(),
                timers: DeadlineQueue::default(),
                history_timer: HistoryTimer::default(),
                dirty: Vec::new(),
                doomed: Vec::new(),
                reread: Vec::new(),
                backlog: Vec::new(),
                flush_spare: Vec::new(),
                flush_soon: false,
                refusing: 0,
                turn_write_budget: TURN_WRITE_BUDGET,
                admission: Admission::new(per_ip, max_pending),
                read_buf,
                control: Vec::new(),
                reply: Vec::new(),
                deflater: Deflater::new(config.deflate()),
                started: Instant::now(),
                now: 0,
                accept_paused_until: None,
                shutting_down: None,
                tls_scratch: if tls.is_some() { vec![0u8; TLS_READ_SIZE] } else { Vec::new() },
                tls,
                logs: StressLogs::default(),
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
            "wshub listening on {} ({}path {}, {} mode, max {} connections)",
            self.local_addr,
            if self.shared.tls.is_some() { "TLS, " } else { "" },
            self.shared.settings.path,
            if self.shared.settings.mode == Mode::Echo { "echo" } else { "hub" },
            self.shared.settings.max_connections
        );
        // The backplane's first connection attempt is due at once.
        relay::arm(&mut self.shared);
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
            let backplane_reread = self.shared.backplane.as_ref().is_some_and(|b| b.wants_reread());
            let timeout = if self.shared.reread.is_empty()
                && self.shared.backlog.is_empty()
                && deferred == 0
                && !backplane_reread
            {
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
            self.shared.hub.set_clock(self.shared.now);
            for key in std::mem::take(&mut self.shared.reread) {
                self.on_readable(key, true);
            }
            relay::reread(&mut self.conns, &mut self.shared, self.poll.registry());
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    SIGNALS => self.on_signal(),
                    BACKPLANE_SUB => {
                        relay::on_event(&mut self.conns, &mut self.shared, self.poll.registry(), SUB)
                    }
                    BACKPLANE_PUB => {
                        relay::on_event(&mut self.conns, &mut self.shared, self.poll.registry(), PUB)
                    }
                    Token(key) => {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, event.is_read_closed() || event.is_error());
                        }
                        if event.is_writable() {
                            mark_dirty(&mut self.conns, &mut self.shared, key);
                        }
                    }
                }
            }
            // Fan-out queued this turn waits while input keeps arriving (checked with a
            // zero-timeout poll), for a few turns at most: publishes that arrive together then
            // leave in one writev per subscriber instead of one each.
            if !events.is_empty()
                && !self.shared.dirty.is_empty()
                && deferred < MAX_DEFERRED_TURNS
                && !self.shared.flush_soon
            {
                deferred += 1;
                continue;
            }
            deferred = 0;
            self.end_of_turn();
        }
    }

    fn next_wakeup(&mut self) -> Option<Millis> {
        let mut next = self.shared.timers.next().unwrap_or(NEVER);
        if let Some(at) = self.shared.logs.next_due() {
            next = next.min(at);
        }
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
        self.shared.turn_write_budget = TURN_WRITE_BUDGET;
        self.shared.flush_soon = false;
        relay::flush(&mut self.conns, &mut self.shared, self.poll.registry());
        flush_dirty(&mut self.conns, &mut self.shared);
        run_timers(&mut self.conns, &mut self.shared, self.poll.registry());
        // This turn's publishes may have given the history its first deadline.
        self.shared.history_timer.arm(&self.shared.hub, &mut self.shared.timers);
        flush_dirty(&mut self.conns, &mut self.shared);
        reap(&mut self.conns, &mut self.shared, self.poll.registry());
        self.shared.logs.flush(self.shared.now);
        if let Some(at) = self.shared.accept_paused_until {
            if self.shared.now >= at {
                self.shared.accept_paused_until = None;
                self.accept_all();
                flush_dirty(&mut self.conns, &mut self.shared);
                reap(&mut self.conns, &mut self.shared, self.poll.registry());
            }
        }
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
            if s.flush_soon && matches!(conn.phase, Phase::Open(_)) {
                // A big fan-out is waiting to be written: read this connection next turn, after
                // the flush, so queues are written as fast as they are filled.
                s.reread.push(key);
                return;
            }
            if std::mem::take(&mut conn.paused) && matches!(conn.phase, Phase::Open(_)) {
                // The rest of a read the message budget stopped (`frames::MESSAGE_BYTES_PER_TURN`;
                // at most a read plus what was kept before it): handle it before reading more,
                // then let the others have their turn.
                let backlog = std::mem::take(&mut conn.input);
                if backlog.len() > s.read_buf.len() {
                    doom(conn, s, key, Ending::IoError); // cannot happen; refuse to guess
                    return;
                }
                s.read_buf[..backlog.len()].copy_from_slice(&backlog);
                on_frames(&mut self.conns, s, key, 0, backlog.len());
                rearm_key(&mut self.conns, &mut self.shared, key);
                if !self.conns.get(key).is_some_and(|c| c.paused) {
                    // Done with it: read the socket next turn (its readiness edge may have
                    // come and gone meanwhile). Paused again, it is queued already.
                    self.shared.reread.push(key);
                }
                flush_now(&mut self.conns, &mut self.shared, key);
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
            let result = conn.transport.read(&mut s.read_buf[READ_PREFIX..], &mut s.tls_scratch);
            if conn.transport.handshake_completed() {
                s.metrics.tls_handshake_completed();
            }
            let (n, more) = match result {
                Ok(Received { n: 0, .. }) => {
                    on_eof(conn, s, key);
                    return;
                }
                Ok(Received { n, more }) => (n, more),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    flush_now(&mut self.conns, &mut self.shared, key);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData && conn.transport.is_tls() => {
                    log::debug!(conn = key; "TLS error: {e}");
                    if conn.transport.handshaking() {
                        s.metrics.tls_handshake_failed(TlsFailure::Error);
                    }
                    // The alert, if any, is already written; nothing else is owed.
                    doom(conn, s, key, Ending::TlsError);
                    return;
                }
                Err(e) => {
                    socket_failed(conn, s, key, "read", &e);
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
                Phase::Handshake { .. } => accept::on_request_bytes(&mut self.conns, s, key, n),
                Phase::Open(_) => on_frames(&mut self.conns, s, key, start, end),
                Phase::Busy => unreachable!("the session is only out of its slot inside on_frames"),
                Phase::Held { .. } | Phase::Lingering { .. } | Phase::Draining { .. } => {} // discarded
            }
            rearm_key(&mut self.conns, &mut self.shared, key);
            if self.conns.get(key).is_some_and(|c| c.paused) {
                // The message budget stopped this read: the rest next turn (queued already).
                flush_now(&mut self.conns, &mut self.shared, key);
                return;
            }
            // A short read drained the socket: with edge-triggered readiness the next arrival
            // raises a new event, so skip the read that would only say WouldBlock. Not when the
            // peer's FIN came in the same event: the read that returns 0 is the only notice.
            if !more && !read_to_end {
                flush_now(&mut self.conns, &mut self.shared, key);
                return;
            }
        }
        // Budget spent and the socket may hold more: come back next turn, after the others
        // had theirs (edge-triggered readiness will not remind us).
        self.shared.reread.push(key);
        flush_now(&mut self.conns, &mut self.shared, key);
    }

    fn accept_all(&mut self) {
        if let Some(listener) = &self.listener {
            accept::accept_all(listener, self.poll.registry(), &mut self.conns, &mut self.shared);
        }
    }

    fn on_signal(&mut self) {
        let Some(signals) = self.signals.as_mut() else { return };
        shutdown::on_signal(
            signals,
            &mut self.listener,
            self.poll.registry(),
            &mut self.conns,
            &mut self.shared,
        );
    }

    /// Stop accepting, send 1001 to every client, and give them `shutdown_timeout` to finish.
    pub fn begin_shutdown(&mut self) {
        shutdown::begin_shutdown(&mut self.listener, self.poll.registry(), &mut self.conns, &mut self.shared);
    }
}
