//! The reactor: one thread, one `mio::Poll`, every socket, buffer and timer.
//!
//! Read top-down, the files are the architecture; calls only go down the list:
//!
//! * [`reactor`] is the readiness loop: it owns the `Server`, waits, dispatches each event to a
//!   handler, and ends the turn (flush, timers, reap).
//! * The handlers, one concern each: `accept` (accept, request head, upgrade or refusal),
//!   `frames` (an open connection's frames to echo or hub; the hot path), `http_route` (plain
//!   HTTP: health, metrics, publish), `timeouts` (what a passed deadline means), `shutdown`
//!   (signals, graceful stop), `relay` (the Redis backplane's sockets and deadline, when
//!   `--redis` is set), `history_timer` (history expiry, one entry in the timer queue).
//!   `fanout` is the hub's outbox over the connections, shared by `frames`, `http_route` and
//!   `relay`.
//! * `lifecycle` is the floor every handler stands on: mark dirty, doom, linger, flush, re-arm,
//!   cut a slow consumer, reap.
//! * `state` holds the settings and the loop's shared buffers, reachable from every file.
//! * [`connection`] is one client's state; [`transport`] what carries its bytes (the socket, or
//!   rustls over it); [`outbuf`] its output queue (shared frames and owned bytes, one `writev`
//!   per flush); [`timers`] the deadline queue.

mod accept;
mod access;
mod admission;
pub mod connection;
mod fanout;
mod frames;
mod history_timer;
mod http_route;
mod lifecycle;
pub mod outbuf;
pub mod reactor;
mod relay;
mod shutdown;
mod state;
mod timeouts;
pub mod timers;
pub mod transport;

pub use reactor::Server;
