//! What every part of the reactor reaches: the settings derived once from the [`Config`] and the
//! [`Shared`] state the loop owns besides the connections.
//!
//! Kept apart from the connections (a `Slab<Connection>`) so a handler can borrow both at once:
//! every handler below the loop takes `(&mut Slab<Connection>, &mut Shared)` or one connection and
//! `&mut Shared`, never the `Server`.
//!
//! [`Config`]: crate::config::Config

use std::time::Instant;

use super::outbuf::BufferPool;
use super::timers::DeadlineQueue;
use crate::http::HttpConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::handshake::UpgradePolicy;
use crate::protocol::session::{Millis, SessionConfig, MAX_UNCONSUMED};

/// One read buffer for the whole loop. The prefix holds a connection's unconsumed bytes (an
/// unfinished header) so the next read lands right after them and nothing larger is copied.
pub(super) const READ_PREFIX: usize = MAX_UNCONSUMED;
pub(super) const READ_SIZE: usize = 256 * 1024;

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
    pub(super) max_head: usize,
    pub(super) max_queued_bytes: usize,
    pub(super) send_queue: usize,
    pub(super) handshake_timeout: Millis,
    pub(super) write_wait: Millis,
    pub(super) shutdown_timeout: Millis,
}

/// Everything the loop owns besides the connections, so handlers can borrow both at once.
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) hub: Hub,
    pub(super) metrics: Metrics,
    pub(super) pool: BufferPool,
    pub(super) timers: DeadlineQueue,
    /// Connections with output to flush at the end of this turn.
    pub(super) dirty: Vec<usize>,
    /// Connections to remove at the end of this turn.
    pub(super) doomed: Vec<usize>,
    /// Connections that used their read budget with input left: read again next turn.
    pub(super) reread: Vec<usize>,
    pub(super) read_buf: Vec<u8>,
    /// Frames the session writes on its own (pongs, closes, pings), moved to the queue at once.
    pub(super) control: Vec<u8>,
    /// Replies the hub writes for the sender.
    pub(super) reply: Vec<u8>,
    pub(super) started: Instant,
    pub(super) now: Millis,
    pub(super) accept_paused_until: Option<Millis>,
    pub(super) shutting_down: Option<Millis>,
}
