//! The sans-IO protocol core: bytes in, events and bytes out, no sockets, no clocks.
//!
//! * [`handshake`] parses the HTTP/1.1 upgrade request (RFC 6455 section 4.2) and writes the
//!   101/4xx responses.
//! * [`frame`] reads and writes single frame headers and whole server frames (section 5).
//! * [`mask`] unmasks client payloads in place.
//! * [`utf8`] validates text incrementally, so a bad fragment fails at once.
//! * [`deflate`] is permessage-deflate (RFC 7692): offer negotiation, the pooled bounded
//!   inflater, the shared compressor and the once-per-variant fan-out message.
//! * [`close`] knows which close codes may travel on the wire (section 7.4).
//! * [`session`] is the per-connection state machine after the upgrade: message assembly,
//!   control frames, the close handshake and heartbeat timers, driven by `now` passed in.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod session;
pub mod utf8;

pub use frame::OpCode;
pub use session::{Event, Sender, Session, SessionConfig};
