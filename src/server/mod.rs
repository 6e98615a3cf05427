//! The reactor: one thread, one `mio::Poll`, every socket, buffer and timer.
//!
//! * [`reactor`] is the readiness loop: accept, read, hand bytes to the protocol core and the
//!   hub, flush, run timers, shut down.
//! * [`connection`] is one client's state; [`outbuf`] its output queue (shared frames and owned
//!   bytes, one `writev` per flush); [`timers`] the deadline queue.

pub mod connection;
pub mod outbuf;
pub mod reactor;
pub mod timers;
pub mod transport;

pub use reactor::Server;
