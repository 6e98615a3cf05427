//! Settings: command line, `WSHUB_*` environment variables and an optional TOML file, validated
//! before anything is bound.
//!
//! Precedence is flag > environment variable > file > default. One mechanism serves every flag,
//! present and future, with no per-flag code:
//! 1. [`load`] parses the command line (clap reads the environment for what is not on it);
//! 2. [`file`] reads `--config PATH`, turns each key into the flag of the same name (a
//!    `[section]` prefixes its keys: `[tls] cert` is `--tls-cert`) and refuses unknown keys;
//! 3. each file setting whose flag came neither from the command line nor from the environment
//!    is put in front of the real arguments, and the whole is parsed again;
//! 4. [`validate`] applies its table of rules to the result and reports every problem, one line
//!    each, naming the flag, variable or file key it came from (exit code 2, as clap's own);
//! 5. [`show`] prints the effective settings for `wshub check-config`, secrets masked.
//!
//! A new flag needs nothing here to work from the file; a flag naming a file to read gets
//! `value_hint = ValueHint::FilePath` (checked readable at start), and a secret gets
//! `hide_env_values = true` (masked by `check-config`).

pub mod file;
pub mod show;
pub mod validate;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::auth::rate::RateLimit;
use crate::auth::{Verifier, VerifierConfig};
use crate::backplane::url::RedisUrl;
use crate::http::HttpConfig;
use crate::hub::HubConfig;
use crate::protocol::deflate::DeflateConfig;
use crate::protocol::handshake::{OriginPolicy, UpgradePolicy, DEFAULT_MAX_HEAD_LEN};
use crate::protocol::session::{Millis, SessionConfig};

/// wshub: a WebSocket pub/sub server.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "wshub",
    version,
    about,
    long_about = None,
    after_help = "Check a configuration without starting: wshub check-config [--config PATH] [FLAGS]\n\
                  (validates, prints the effective settings with secrets masked, exits 0 or 2)."
)]
pub struct Config {
    /// TOML file of settings named like the flags (`max-message-size = 1048576`; `[tls] cert`
    /// is `--tls-cert`). Flags and WSHUB_* variables override it.
    #[arg(long, env = "WSHUB_CONFIG", value_hint = clap::ValueHint::FilePath)]
    pub config: Option<PathBuf>,

    /// Log line format: `text` (human) or `json` (one object per line). RUST_LOG sets the level.
    #[arg(long, env = "WSHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

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

    /// Most connections from one address at once (IPv6: one /64), in any phase; over it, 429
    /// before the upgrade. 0: unlimited.
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Most connections still sending their request head, apart from open ones; when full, the
    /// address holding the most gives up its oldest [default: a quarter of --max-connections].
    #[arg(long, env = "WSHUB_MAX_PENDING_HANDSHAKES")]
    pub max_pending_handshakes: Option<usize>,

    /// Kernel send buffer of each connection, in bytes (SO_SNDBUF; Linux reserves twice this).
    /// Bounds what a client that stops reading costs in kernel memory. 0: the kernel's default,
    /// autotuned up to net.ipv4.tcp_wmem's maximum.
    #[arg(long, env = "WSHUB_SOCKET_SEND_BUFFER", default_value_t = DEFAULT_SOCKET_SEND_BUFFER)]
    pub socket_send_buffer: usize,

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

    /// Most topics the server holds at once; subscribing to a new topic beyond it is refused
    /// with an error (the connection stays). About 200 bytes plus the name per topic.
    #[arg(long, env = "WSHUB_MAX_TOPICS", default_value_t = crate::hub::DEFAULT_MAX_TOPICS)]
    pub max_topics: usize,

    /// Bearer token required by POST /publish and /broadcast. Without it, those accept
    /// loopback peers only.
    #[arg(long, env = "WSHUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// File holding the API key (keeps it out of `ps` and the environment).
    #[arg(long, env = "WSHUB_API_KEY_FILE", conflicts_with = "api_key", value_hint = clap::ValueHint::FilePath)]
    pub api_key_file: Option<PathBuf>,

    /// HMAC secret for connection tokens (HS256/HS384/HS512). Any JWT option makes every
    /// upgrade require a token.
    #[arg(long, env = "WSHUB_JWT_SECRET", hide_env_values = true, conflicts_with = "jwt_secret_file")]
    pub jwt_secret: Option<Secret>,

    /// File holding the HMAC secret for connection tokens.
    #[arg(long, env = "WSHUB_JWT_SECRET_FILE", value_hint = clap::ValueHint::FilePath)]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key for connection tokens: RSA (RS256/384/512, PS256/384/512), EC P-256 or
    /// P-384 (ES256/ES384), or Ed25519 (EdDSA).
    #[arg(long, env = "WSHUB_JWT_PUBLIC_KEY", value_hint = clap::ValueHint::FilePath)]
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

    /// PEM certificate chain, end entity first. With --tls-key the listener speaks only TLS
    /// (wss:// and https://); SIGHUP reloads both files.
    #[arg(long, env = "WSHUB_TLS_CERT", requires = "tls_key", value_hint = clap::ValueHint::FilePath)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, RSA or SEC1) matching --tls-cert.
    #[arg(long, env = "WSHUB_TLS_KEY", requires = "tls_cert", value_hint = clap::ValueHint::FilePath)]
    pub tls_key: Option<PathBuf>,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it, always with no
    /// context takeover both ways (no compression state kept per connection).
    #[arg(long, env = "WSHUB_COMPRESSION")]
    pub compression: bool,

    /// Messages shorter than this many bytes are sent uncompressed.
    #[arg(long, env = "WSHUB_COMPRESSION_THRESHOLD", default_value_t = 128)]
    pub compression_threshold: usize,

    /// zlib compression level for what the server sends: 1 (fastest) to 9 (smallest).
    #[arg(long, env = "WSHUB_COMPRESSION_LEVEL", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: u32,

    /// Join other wshub processes through Redis pub/sub: redis://[user:password@]host:port[/db].
    /// Publishes and broadcasts on any node then reach subscribers on every node.
    #[arg(long, env = "WSHUB_REDIS", hide_env_values = true, value_parser = RedisUrlParser)]
    pub redis: Option<RedisUrl>,

    /// Prefix of the Redis channels (`<prefix>topic:<topic>`, `<prefix>broadcast`); nodes that
    /// share it form one hub.
    #[arg(long, env = "WSHUB_REDIS_PREFIX", default_value = "wshub:")]
    pub redis_prefix: String,

    /// Bound on publishes waiting to be written to Redis, in bytes; over it a publish reaches
    /// local subscribers only and is counted as failed.
    #[arg(long, env = "WSHUB_REDIS_MAX_QUEUED_BYTES", default_value_t = 8 << 20)]
    pub redis_max_queued_bytes: usize,

    /// Set SO_REUSEPORT on the listener, so several processes on this machine can listen on the
    /// same port (the kernel spreads new connections across them).
    #[arg(long, env = "WSHUB_REUSE_PORT")]
    pub reuse_port: bool,

    /// Messages kept per topic for clients that reconnect (`subscribe` with `since`); 0 = off.
    /// With --redis, kept in Redis and shared by every node.
    #[arg(long, env = "WSHUB_HISTORY_SIZE", default_value_t = 0)]
    pub history_size: usize,

    /// Seconds a kept message lives, and an unused topic keeps its epoch.
    #[arg(long, env = "WSHUB_HISTORY_TTL", default_value_t = 300.0, value_parser = parse_secs)]
    pub history_ttl: f64,

    /// Bound on the memory all kept messages take, in bytes (oldest evicted first). In-memory
    /// history only: with --redis, Redis's own maxmemory bounds it.
    #[arg(long, env = "WSHUB_HISTORY_MAX_BYTES", default_value_t = 64 << 20)]
    pub history_max_bytes: usize,

    /// Serve a demo page (live chat and counter, built on the browser client) at `GET /`.
    #[arg(long, env = "WSHUB_DEMO")]
    pub demo: bool,
}

/// Parses `--redis`; unlike clap's usual error, the refusal does not repeat the value, which
/// may hold a password.
#[derive(Clone)]
struct RedisUrlParser;

impl clap::builder::TypedValueParser for RedisUrlParser {
    type Value = RedisUrl;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<RedisUrl, clap::Error> {
        use clap::error::ErrorKind;
        let text =
            value.to_str().ok_or_else(|| clap::Error::raw(ErrorKind::InvalidUtf8, "--redis: not UTF-8\n"))?;
        RedisUrl::parse(text)
            .map_err(|e| clap::Error::raw(ErrorKind::ValueValidation, format!("--redis: {e}\n")))
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Default of `--socket-send-buffer` (see README, "Bounds", for the measurement behind it).
pub const DEFAULT_SOCKET_SEND_BUFFER: usize = 64 * 1024;

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

    pub fn hub(&self) -> HubConfig {
        HubConfig {
            max_topic_length: self.max_topic_length,
            max_subscriptions: self.max_subscriptions,
            max_topics: self.max_topics,
            allow_client_broadcast: self.allow_client_broadcast,
        }
    }

    pub fn http(&self) -> HttpConfig {
        HttpConfig {
            api_key: self.api_key.as_ref().map(|Secret(key)| key.clone()),
            max_body_bytes: self.max_body_size,
            origins: OriginPolicy::from_allowed(&self.allowed_origins),
            demo: self.demo,
        }
    }

    pub fn upgrade(&self) -> UpgradePolicy {
        UpgradePolicy {
            subprotocols: self.subprotocols.clone(),
            origins: OriginPolicy::from_allowed(&self.allowed_origins),
            deflate: self.compression,
        }
    }

    /// The certificate and key files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        }
    }

    pub fn deflate(&self) -> DeflateConfig {
        DeflateConfig { threshold: self.compression_threshold, level: self.compression_level }
    }

    /// The history settings, or `None` when history is off.
    pub fn history(&self) -> Option<crate::hub::history::HistoryConfig> {
        (self.history_size > 0).then(|| crate::hub::history::HistoryConfig {
            size: self.history_size,
            ttl: millis(self.history_ttl).max(1),
            max_bytes: self.history_max_bytes,
            max_topics: self.max_topics,
        })
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
    pub fn effective_api_key(&self) -> Result<Option<String>, String> {
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

/// What the binary was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Serve.
    Run,
    /// `wshub check-config`: validate, print the effective settings, bind nothing.
    Check,
}

/// A configuration that passed every rule, and how it came to be.
pub struct Loaded {
    pub mode: Mode,
    pub config: Config,
    /// The final parse, for [`show`]: every value and where it came from.
    pub matches: ArgMatches,
    /// File keys that supplied a setting, by argument id (`"max_message_size"` -> `max-message-size`).
    pub file: Option<file::Applied>,
    /// Settings changed to fit (e.g. `--max-connections` lowered to the open-file limit), for
    /// the log once it is set up.
    pub adjustments: Vec<validate::Adjustment>,
    pub budget: validate::FdBudget,
}

/// Why loading stopped.
#[derive(Debug)]
pub enum LoadError {
    /// A syntax error, `--help` or `--version`: clap prints it and picks the exit code.
    Clap(clap::Error),
    /// The file could not be read or holds unknown keys or bad values.
    File(Vec<file::FileError>),
    /// Settings that parse but cannot work.
    Invalid(Vec<String>),
}

impl LoadError {
    /// Prints the problems (one line each) and exits: 0 for `--help`/`--version`, 2 otherwise.
    pub fn exit(self) -> ! {
        let lines = match self {
            LoadError::Clap(e) => e.exit(),
            LoadError::File(errors) => errors.iter().map(|e| e.to_string()).collect(),
            LoadError::Invalid(lines) => lines,
        };
        for line in lines {
            eprintln!("wshub: error: {line}");
        }
        std::process::exit(2)
    }
}

/// The `clap::Command` with `--version` naming the capabilities this build has.
pub fn command() -> clap::Command {
    Config::command().version(crate::capabilities::version_text())
}

/// Parses `args` (the program name first; `check-config` second selects [`Mode::Check`]), reads
/// the config file, validates everything against the open-file limit `open_files`.
pub fn load<I, T>(args: I, open_files: usize) -> Result<Loaded, LoadError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mode = if args.get(1).is_some_and(|a| a == "check-config") {
        args.remove(1);
        Mode::Check
    } else {
        Mode::Run
    };
    let first = command().try_get_matches_from(&args).map_err(LoadError::Clap)?;
    let (matches, applied) = match first.get_one::<PathBuf>("config") {
        None => (first, None),
        Some(path) => {
            let settings = file::read(path).map_err(|e| LoadError::File(vec![e]))?;
            let applied = settings.apply(&command(), &first).map_err(LoadError::File)?;
            let mut merged = Vec::with_capacity(args.len() + applied.args.len());
            merged.push(args[0].clone());
            merged.extend(applied.args.iter().map(OsString::from));
            merged.extend(args[1..].iter().cloned());
            // Every file value was parsed alone already; a failure here is clap's to report.
            let matches = command().try_get_matches_from(&merged).map_err(LoadError::Clap)?;
            (matches, Some(applied))
        }
    };
    let mut config = Config::from_arg_matches(&matches).map_err(LoadError::Clap)?;
    let cmd = command();
    let outcome = validate::validate(&mut config, &cmd, &matches, open_files);
    if !outcome.problems.is_empty() {
        let describe = |p| validate::describe(&cmd, &matches, applied.as_ref(), p);
        return Err(LoadError::Invalid(outcome.problems.iter().map(describe).collect()));
    }
    let adjustments = outcome.adjustments;
    Ok(Loaded { mode, config, matches, file: applied, adjustments, budget: outcome.budget })
}
