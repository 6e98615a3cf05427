//! wshub: a WebSocket pub/sub server.
//!
//! The layout is the architecture:
//! * [`protocol`]: the sans-IO RFC 6455 core (handshake, frames, sessions). No sockets, no clocks.
//! * [`server`]: the single-threaded mio reactor that drives it: connections, buffers, timers.
//! * [`config`]: flags, environment and config file, validated; [`logging`]: log format and
//!   rate-limited warnings; [`sys`]: the few OS calls std lacks.

/// Connection tokens (JWT), topic permissions and per-connection rate limits, sans-IO.
pub mod auth;
/// Joins several wshub processes through Redis pub/sub (`--redis`).
pub mod backplane;
/// What this build can do, for `--version`.
pub mod capabilities;
/// Settings from flags, environment and a TOML file, validated before anything is bound.
pub mod config;
/// Plain HTTP/1.1 on the WebSocket port: health, Prometheus metrics, publish and broadcast API.
pub mod http;
/// Topics, subscriptions and the JSON pub/sub protocol; fan-out encodes each message once.
pub mod hub;
/// Log set-up (text or JSON) and rate-limited warnings.
pub mod logging;
/// Server counters and their Prometheus text rendering.
pub mod metrics;
pub mod protocol;
/// The single-threaded mio reactor: connections, buffers, timers.
pub mod server;
/// Operating-system limits.
pub mod sys;
/// TLS certificate and key loading (rustls with ring).
pub mod tls;
