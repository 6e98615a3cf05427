//! wshub: a WebSocket pub/sub server.
//!
//! The layout is the architecture:
//! * [`protocol`]: the sans-IO RFC 6455 core (handshake, frames, sessions). No sockets, no clocks.

pub mod protocol;
/// Command line and environment configuration.
pub mod config;
/// The single-threaded mio reactor: connections, buffers, timers.
pub mod server;
/// Operating-system limits.
pub mod sys;
