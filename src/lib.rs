//! wshub: a WebSocket pub/sub server.
//!
//! The layout is the architecture:
//! * [`protocol`]: the sans-IO RFC 6455 core (handshake, frames, sessions). No sockets, no clocks.
//! * [`server`]: the single-threaded mio reactor that drives it: connections, buffers, timers.
//! * [`config`]: the command line; [`sys`]: the few OS calls std lacks.

/// Joins several wshub processes through Redis pub/sub (`--redis`).
pub mod backplane;
/// Command line and environment configuration.
pub mod config;
/// Plain HTTP/1.1 on the WebSocket port: health, Prometheus metrics, publish and broadcast API.
pub mod http;
/// Topics, subscriptions and the JSON pub/sub protocol; fan-out encodes each message once.
pub mod hub;
/// Server counters and their Prometheus text rendering.
pub mod metrics;
pub mod protocol;
/// The single-threaded mio reactor: connections, buffers, timers.
pub mod server;
/// Operating-system limits.
pub mod sys;
