//! Command line and environment: every flag also reads `WSHUB_<FLAG>`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::auth::rate::RateLimit;
use crate::auth::{Verifier, VerifierConfig};
use crate::protocol::handshake::{OriginPolicy, UpgradePolicy, DEFAULT_MAX_HEAD_LEN};
use crate::protocol::session::{Millis, SessionConfig};

/// wshub: a WebSocket pub/sub server.
#[derive(Parser, Debug, Clone)]
#[command(name = "wshub", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (IPv4 or IPv6, e.g. 0.0.0.0:8080 or [::]:8080).
    #[arg(long, env = "WSHUB_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Path that accepts WebSocket upgrades.
    #[arg(long, env = "WSHUB_PATH", default_value = "/ws")]
    pub path: String,

    /// Echo every message back unchanged (for conformance testing); no JSON handling.
    #[arg(long, env = "WSHUB_ECHO")]
    pub echo: bool,

    /// Maximum simultaneous connections [default: derived from the open-file limit].
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Maximum size of one message, in bytes, after reassembly (bigger: close 1009).
    #[arg(long, env = "WSHUB_MAX_MESSAGE_SIZE", default_value_t = 1 << 20)]
    pub max_message_size: usize,

    /// Per-connection bound on output not yet taken by the socket, in bytes; a client over it
    /// is disconnected as a slow consumer.
    #[arg(long, env = "WSHUB_MAX_QUEUED_BYTES", default_value_t = 4 << 20)]
    pub max_queued_bytes: usize,

    /// Per-connection bound on queued hub messages; a client over it is disconnected.
    #[arg(long, env = "WSHUB_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// Largest request head accepted, in bytes (bigger: 431).
    #[arg(long, env = "WSHUB_MAX_HEAD_SIZE", default_value_t = DEFAULT_MAX_HEAD_LEN)]
    pub max_head_size: usize,

    /// Seconds a client has to send its request head.
    #[arg(long, env = "WSHUB_HANDSHAKE_TIMEOUT", default_value_t = 10.0, value_parser = parse_secs)]
    pub handshake_timeout: f64,

    /// Seconds between heartbeat pings (0 disables them).
    #[arg(long, env = "WSHUB_PING_INTERVAL", default_value_t = 54.0, value_parser = parse_secs)]
    pub ping_interval: f64,

    /// Seconds without a whole frame from the client (pong, data or other) after which a
    /// connection is closed (0 disables). A frame trickled slower than this is cut off.
    #[arg(long, env = "WSHUB_PONG_WAIT", default_value_t = 60.0, value_parser = parse_secs)]
    pub pong_wait: f64,

    /// Seconds queued output may make no progress before the connection is dropped.
    #[arg(long, env = "WSHUB_WRITE_WAIT", default_value_t = 10.0, value_parser = parse_secs)]
    pub write_wait: f64,

    /// Seconds to wait for the peer's close after we send one.
    #[arg(long, env = "WSHUB_CLOSE_TIMEOUT", default_value_t = 5.0, value_parser = parse_secs)]
    pub close_timeout: f64,

    /// Seconds to wait for clients to close on SIGINT/SIGTERM before exiting.
    #[arg(long, env = "WSHUB_SHUTDOWN_TIMEOUT", default_value_t = 5.0, value_parser = parse_secs)]
    pub shutdown_timeout: f64,

    /// Allowed browser origin, e.g. https://app.example.com (repeatable; `*` allows any).
    /// Without it, a request carrying Origin must come from the same host:port as `Host`.
    #[arg(long = "allowed-origin", env = "WSHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Subprotocol the server speaks (repeatable); the first one the client offers wins.
    #[arg(long = "subprotocol", env = "WSHUB_SUBPROTOCOLS", value_delimiter = ',')]
    pub subprotocols: Vec<String>,

    /// Let WebSocket clients send `broadcast` messages (the HTTP API always may).
    #[arg(long, env = "WSHUB_ALLOW_CLIENT_BROADCAST")]
    pub allow_client_broadcast: bool,

    /// Longest topic name, in bytes.
    #[arg(long, env = "WSHUB_MAX_TOPIC_LENGTH", default_value_t = 256)]
    pub max_topic_length: usize,

    /// Most topics one connection may subscribe to.
    #[arg(long, env = "WSHUB_MAX_SUBSCRIPTIONS", default_value_t = 1024)]
    pub max_subscriptions: usize,

    /// Bearer token required by POST /publish and /broadcast. Without it, those accept
    /// loopback peers only.
    #[arg(long, env = "WSHUB_API_KEY", hide_env_values = true, conflicts_with = "api_key_file")]
    pub api_key: Option<Secret>,

    /// File holding the API key (keeps it out of `ps` and the environment).
    #[arg(long, env = "WSHUB_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,

    /// HMAC secret for connection tokens (HS256/HS384/HS512). Any JWT option makes every
    /// upgrade require a token.
    #[arg(long, env = "WSHUB_JWT_SECRET", hide_env_values = true, conflicts_with = "jwt_secret_file")]
    pub jwt_secret: Option<Secret>,

    /// File holding the HMAC secret for connection tokens.
    #[arg(long, env = "WSHUB_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key for connection tokens: RSA (RS256/384/512, PS256/384/512), EC P-256 or
    /// P-384 (ES256/ES384), or Ed25519 (EdDSA).
    #[arg(long, env = "WSHUB_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `aud` of connection tokens.
    #[arg(long, env = "WSHUB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of connection tokens.
    #[arg(long, env = "WSHUB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock leeway in seconds for `exp` and `nbf` when a token is checked (connect, refresh).
    #[arg(long, env = "WSHUB_JWT_LEEWAY", default_value_t = crate::auth::DEFAULT_LEEWAY_SECS)]
    pub jwt_leeway: u64,

    /// Data messages per second one connection may send (0: no limit); over it, close 1008.
    /// Control frames (pings) are limited separately at the same rate.
    #[arg(long, env = "WSHUB_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Messages a connection may send in a burst above `--rate-limit` [default: the rate].
    #[arg(long, env = "WSHUB_RATE_BURST")]
    pub rate_burst: Option<u32>,

    /// Largest HTTP request body accepted by the publish API, in bytes (bigger: 413).
    #[arg(long, env = "WSHUB_MAX_BODY_SIZE", default_value_t = 64 * 1024)]
    pub max_body_size: usize,
}

/// A secret from the command line or environment: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret kept in a file: its content without the trailing line break.
fn read_secret_file(path: &Path, flag: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(format!("--{flag} {}: the file is empty", path.display()));
    }
    Ok(secret)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(format!("{s} is not a duration in seconds"));
    }
    Ok(v)
}

/// Seconds (as given on the command line) to milliseconds.
pub fn millis(secs: f64) -> Millis {
    Duration::from_secs_f64(secs).as_millis() as Millis
}

fn optional_millis(secs: f64) -> Option<Millis> {
    (secs > 0.0).then(|| millis(secs).max(1))
}

impl Config {
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            max_message_size: self.max_message_size,
            ping_interval: optional_millis(self.ping_interval),
            pong_wait: optional_millis(self.pong_wait),
            close_timeout: millis(self.close_timeout),
        }
    }

    pub fn upgrade(&self) -> UpgradePolicy {
        UpgradePolicy {
            subprotocols: self.subprotocols.clone(),
            origins: OriginPolicy::from_allowed(&self.allowed_origins),
        }
    }

    /// Whether any connection-token option is set (then every upgrade needs a token).
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || self.jwt_public_key.is_some()
            || self.jwt_audience.is_some()
            || self.jwt_issuer.is_some()
    }

    /// The token verifier, reading key files; `None` without JWT options.
    pub fn verifier(&self) -> Result<Option<Verifier>, String> {
        if !self.jwt_enabled() {
            return Ok(None);
        }
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(Secret(s)), _) => Some(s.clone().into_bytes()),
            (None, Some(path)) => Some(read_secret_file(path, "jwt-secret-file")?.into_bytes()),
            (None, None) => None,
        };
        let public_key_pem = match &self.jwt_public_key {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?)
            }
            None => None,
        };
        let config = VerifierConfig {
            secret,
            public_key_pem,
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            leeway_secs: self.jwt_leeway,
        };
        Verifier::new(&config).map(Some).map_err(|e| e.to_string())
    }

    /// The API key for POST /publish and /broadcast, from `--api-key` or `--api-key-file`.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        match (&self.api_key, &self.api_key_file) {
            (Some(Secret(key)), _) => Ok(Some(key.clone())),
            (None, Some(path)) => read_secret_file(path, "api-key-file").map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The per-connection rate limit, if on.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        RateLimit::new(self.rate_limit, self.rate_burst)
    }

    /// Defaults for tests and embedding: what `wshub` with no flags would use.
    pub fn defaults() -> Config {
        Config::parse_from(["wshub"])
    }
}
