//! What every part of the reactor reaches: the settings derived once from the [`Config`] and the
//! [`Shared`] state the loop owns besides the connections.
//!
//! Kept apart from the connections (a `Slab<Connection>`) so a handler can borrow both at once:
//! every handler below the loop takes `(&mut Slab<Connection>, &mut Shared)` or one connection and
//! `&mut Shared`, never the `Server`.
//!
//! [`Config`]: crate::config::Config

use std::time::Instant;

use super::admission::Admission;
use super::history_timer::HistoryTimer;
use super::outbuf::BufferPool;
use super::timers::DeadlineQueue;
use crate::auth::rate::RateLimit;
use crate::auth::Verifier;
use crate::backplane::redis::RedisBackplane;
use crate::http::HttpConfig;
use crate::hub::Hub;
use crate::logging::RateLimitedLog;
use crate::metrics::Metrics;
use crate::protocol::deflate::Deflater;
use crate::protocol::handshake::UpgradePolicy;
use crate::protocol::session::{Millis, SessionConfig, MAX_UNCONSUMED};
use crate::tls::TlsListener;

/// One read buffer for the whole loop. The prefix holds a connection's unconsumed bytes (an
/// unfinished header) so the next read lands right after them and nothing larger is copied.
pub(super) const READ_PREFIX: usize = MAX_UNCONSUMED;
pub(super) const READ_SIZE: usize = 256 * 1024;
/// Ciphertext read from a socket at once into the loop's one scratch buffer (TLS only).
pub(super) const TLS_READ_SIZE: usize = 64 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Echo,
    Hub,
}

/// Settings derived once from the [`Config`](crate::config::Config).
pub(super) struct Settings {
    pub(super) mode: Mode,
    pub(super) path: String,
    pub(super) session: SessionConfig,
    pub(super) upgrade: UpgradePolicy,
    pub(super) http: HttpConfig,
    pub(super) max_connections: usize,
    /// `--max-connections-per-ip` (0: unlimited) and `--max-pending-handshakes`.
    pub(super) max_connections_per_ip: usize,
    pub(super) max_pending_handshakes: usize,
    /// `--socket-send-buffer` (0: the kernel's default).
    pub(super) socket_send_buffer: usize,
    /// Connections accepted beyond `max_connections` only to be answered 503; their descriptors
    /// are part of the open-file budget (`config::validate::FdBudget`).
    pub(super) overflow_slots: usize,
    pub(super) max_head: usize,
    pub(super) max_queued_bytes: usize,
    pub(super) send_queue: usize,
    pub(super) handshake_timeout: Millis,
    pub(super) write_wait: Millis,
    pub(super) shutdown_timeout: Millis,
    /// Connection tokens, when any JWT option is set.
    pub(super) verifier: Option<Verifier>,
    /// `--rate-limit` / `--rate-burst`, when on.
    pub(super) rate_limit: Option<RateLimit>,
    /// Wall-clock Unix milliseconds when `now` was 0 (token times meet the loop's clock here).
    pub(super) wall_start_ms: u64,
}

/// Everything the loop owns besides the connections, so handlers can borrow both at once.
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) hub: Hub,
    /// The Redis backplane joining this process to others (`--redis`); `None`: a single node.
    pub(super) backplane: Option<RedisBackplane>,
    pub(super) metrics: Metrics,
    pub(super) pool: BufferPool,
    pub(super) timers: DeadlineQueue,
    /// The history's expiry, one entry in `timers`.
    pub(super) history_timer: HistoryTimer,
    /// Connections with output to flush at the end of this turn.
    pub(super) dirty: Vec<usize>,
    /// Connections to remove at the end of this turn.
    pub(super) doomed: Vec<usize>,
    /// Connections that used their read budget with input left: read again next turn.
    pub(super) reread: Vec<usize>,
    /// Connections whose output was left for the next turn by the write budget (still marked
    /// dirty); flushed first next turn, and the loop does not sleep while there are any.
    pub(super) backlog: Vec<usize>,
    /// Always empty between turns: the third list `lifecycle::flush_dirty` rotates with `dirty`
    /// and `backlog`, kept for its capacity.
    pub(super) flush_spare: Vec<usize>,
    /// A delivery left a subscriber with a big queue: read no more this turn (connections with
    /// input left go to `reread`) and flush at its end rather than gathering more turns.
    pub(super) flush_soon: bool,
    /// Bytes the end-of-turn flush may still write this turn (see `lifecycle::flush_dirty`).
    pub(super) turn_write_budget: usize,
    /// Connections refused at accept still draining their answer (at most `overflow_slots`).
    pub(super) refusing: usize,
    /// Per-address counts and the pending-handshake bound.
    pub(super) admission: Admission,
    pub(super) read_buf: Vec<u8>,
    /// Frames the session writes on its own (pongs, closes, pings), moved to the queue at once.
    pub(super) control: Vec<u8>,
    /// Replies the hub writes for the sender.
    pub(super) reply: Vec<u8>,
    /// permessage-deflate for everything sent: one compressor per window size, reactor-wide.
    pub(super) deflater: Deflater,
    pub(super) started: Instant,
    pub(super) now: Millis,
    pub(super) accept_paused_until: Option<Millis>,
    pub(super) shutting_down: Option<Millis>,
    /// TLS on the listener, if configured; SIGHUP reloads it.
    pub(super) tls: Option<TlsListener>,
    /// Ciphertext on its way into rustls (`TLS_READ_SIZE`); empty without TLS.
    pub(super) tls_scratch: Vec<u8>,
    pub(super) logs: StressLogs,
}

/// How often a warning that comes in floods is summarized.
const STRESS_LOG_INTERVAL: Millis = 5_000;

/// Warnings that come in floods under stress: each is logged in full once, then summarized
/// with a count once per interval (see [`RateLimitedLog`]). A new one is a field here and an
/// entry in `all`.
pub(super) struct StressLogs {
    pub(super) accept_failed: RateLimitedLog,
    pub(super) slow_consumer: RateLimitedLog,
    pub(super) rate_limited: RateLimitedLog,
}

impl Default for StressLogs {
    fn default() -> StressLogs {
        StressLogs {
            accept_failed: RateLimitedLog::new("accept failures", STRESS_LOG_INTERVAL),
            slow_consumer: RateLimitedLog::new("slow consumers cut off", STRESS_LOG_INTERVAL),
            rate_limited: RateLimitedLog::new("connections closed over the rate limit", STRESS_LOG_INTERVAL),
        }
    }
}

impl StressLogs {
    fn all(&mut self) -> [&mut RateLimitedLog; 3] {
        [&mut self.accept_failed, &mut self.slow_consumer, &mut self.rate_limited]
    }

    /// Logs the summaries due at `now`; called once per loop turn.
    pub(super) fn flush(&mut self, now: Millis) {
        for log in self.all() {
            log.flush(now);
        }
    }

    /// The earliest summary due, for the loop's wake-up.
    pub(super) fn next_due(&mut self) -> Option<Millis> {
        self.all().into_iter().filter_map(|l| l.next_due()).min()
    }
}
