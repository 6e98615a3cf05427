//! One client connection as the reactor sees it: its socket, where it is in its life, its
//! unconsumed input and its output queue.
//!
//! Kept small on purpose: an idle open connection is this struct plus one timer entry, with no
//! heap buffers (uWebSockets' 0.27 KiB per idle connection is the bar).

use std::net::SocketAddr;

use super::outbuf::OutQueue;
use super::transport::Transport;
use crate::auth::rate::Buckets;
use crate::auth::Grant;
use crate::protocol::session::{Millis, Session};

/// Where a connection is in its life.
pub enum Phase {
    /// Reading the HTTP request head (and, for the publish API, its body) into `input`.
    Handshake {
        deadline: Millis,
        /// The head is complete and announced a body that has not all arrived.
        awaiting_body: bool,
    },
    /// Upgraded: frames flow through the session.
    Open(Session),
    /// The session is out of its slot while the reactor hands its events to the hub (so the hub
    /// may deliver to every connection, this one included).
    Busy,
    /// An HTTP request whose answer waits on the backplane (a publish's offset from Redis):
    /// input is discarded, and the answer comes through the hub (`Outbox::numbered`), within
    /// the backplane's reply deadline; `deadline` is only a backstop (503 if ever reached).
    Held { deadline: Millis },
    /// A last response or close frame is queued: once it is written, shut down our side.
    Lingering { deadline: Millis },
    /// Our side is shut down: discard input until the peer closes or the deadline passes.
    /// Closing with unread input would send a reset that can destroy our last bytes in flight.
    Draining { deadline: Millis },
}

/// Why a connection ended, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Not ending.
    None,
    /// Close handshake completed or HTTP exchange done.
    Normal,
    /// The peer closed TCP without a close frame (1006).
    PeerGone,
    /// The peer's bytes broke the protocol (close code in `close_code`).
    ProtocolError,
    /// Output bound exceeded.
    SlowConsumer,
    /// No output progress for `write_wait`.
    WriteTimeout,
    /// Request head not complete within the handshake timeout.
    HandshakeTimeout,
    /// No pong or data within `pong_wait`.
    PongTimeout,
    /// Our close or final response was not acknowledged in time.
    CloseTimeout,
    /// A socket error.
    IoError,
    /// Bytes that are not TLS, or a TLS record or handshake rustls refused.
    TlsError,
    /// Refused before the upgrade (4xx/503 sent).
    Rejected,
    /// Server shutting down.
    Shutdown,
}

pub struct Connection {
    /// The socket, plain or under TLS.
    pub transport: Transport,
    /// The peer, as accept gave it: for logs (a reset socket no longer knows it) and the
    /// per-address counts.
    pub peer: SocketAddr,
    pub phase: Phase,
    pub out: OutQueue,
    /// Bytes read but not yet consumed: the request head during the handshake; afterwards at
    /// most an unfinished frame header or control frame (`session::MAX_UNCONSUMED`), or, while
    /// `paused`, the rest of a read.
    pub input: Vec<u8>,
    /// The deadline this connection has an entry for in the reactor's queue.
    pub timer_armed: Millis,
    /// Since when queued output has waited without the socket taking any of it, for
    /// `write_wait`; `NEVER` while the last flush emptied the queue.
    pub last_progress: Millis,
    /// The close code we sent (0: none yet), for the log line; the first close sent is the one
    /// counted (see `frames::session_closed_with`).
    pub close_code: u16,
    pub ending: Ending,
    /// Queued for a flush at the end of this event round.
    pub dirty: bool,
    /// Will be removed at the end of this event round; takes no more output.
    pub doomed: bool,
    /// Counted by the reactor's `Admission` (per address), and still as a pending handshake.
    pub admitted: bool,
    pub pending: bool,
    /// Refused at accept (or pushed out while pending): drains its answer in an overflow slot.
    pub overflow: bool,
    /// The message budget (`frames::MESSAGE_BYTES_PER_TURN`) stopped its last read: `input`
    /// holds the rest of it, handled next turn before the socket is read again.
    pub paused: bool,
    /// What the kernel held unsent (`SIOCOUTQ`) when the socket last refused output: counted
    /// with the queue against `--max-queued-bytes`. 0 after a flush that emptied the queue.
    pub kernel_queued: u32,
    /// What the connection's token grants (None: no tokens on this server). Boxed so servers
    /// without tokens pay one null pointer.
    pub grant: Option<Box<Grant>>,
    /// Rate-limit buckets (untouched without `--rate-limit`).
    pub rate: Buckets,
    /// permessage-deflate window to compress what we send this client with (None: send plain).
    /// Kept here, not only in the session, because fan-out reaches a sender whose session is
    /// out of its slot ([`Phase::Busy`]).
    pub send_window: Option<u8>,
}

impl Connection {
    pub fn new(transport: Transport, peer: SocketAddr, handshake_deadline: Millis) -> Connection {
        Connection {
            transport,
            peer,
            phase: Phase::Handshake { deadline: handshake_deadline, awaiting_body: false },
            out: OutQueue::default(),
            input: Vec::new(),
            timer_armed: super::timers::NEVER,
            last_progress: super::timers::NEVER,
            close_code: 0,
            ending: Ending::None,
            dirty: false,
            doomed: false,
            admitted: false,
            pending: false,
            overflow: false,
            paused: false,
            kernel_queued: 0,
            grant: None,
            rate: Buckets::default(),
            send_window: None,
        }
    }

    /// Whether hub messages may be queued: open, no close sent or received, not doomed.
    #[inline]
    pub fn accepts_messages(&self) -> bool {
        !self.doomed
            && match &self.phase {
                Phase::Open(session) => session.can_send(),
                Phase::Busy => true,
                _ => false,
            }
    }

    /// Output waits: queued plaintext, or TLS records not yet written.
    #[inline]
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || self.transport.has_pending()
    }

    /// Output not yet taken by the socket, for the slow-consumer bound: the plaintext queue plus
    /// what the TLS layer holds.
    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.out.queued_bytes() + self.transport.pending_bytes()
    }

    /// Records the outcome of a flush that left output waiting, for the write-progress timer
    /// (a flush that left none clears it: `last_progress` is `NEVER` while nothing waits).
    #[inline]
    pub fn note_progress(&mut self, written: usize, now: Millis) {
        if written > 0 || self.last_progress == super::timers::NEVER {
            // Progress, or the first time output is left waiting: the stall clock (re)starts.
            self.last_progress = now;
        }
    }

    /// Output has waited for `write_wait` with no progress.
    #[inline]
    pub fn write_stalled(&self, now: Millis, write_wait: Millis) -> bool {
        self.has_output() && now >= self.last_progress.saturating_add(write_wait)
    }

    /// Output not yet taken by the peer: our queue (and TLS records) plus what the kernel held
    /// unsent when the socket last refused more.
    #[inline]
    pub fn unsent_bytes(&self) -> usize {
        self.queued_bytes() + self.kernel_queued as usize
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_) | Phase::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_is_small() {
        // The budget for an idle connection is ~256 bytes all in; this struct is most of it.
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 224, "Connection grew to {size} bytes");
    }
}
