//! The rules a configuration must pass before anything is bound.
//!
//! Each rule is a row of a table ([`RANGES`], [`RULES`]) and each way to break one is a
//! [`Problem`] variant named after it. Every rule runs; every problem is reported, one line
//! naming where the value came from (flag, `WSHUB_*` variable or file key) and what is wrong.
//!
//! One setting is fitted rather than refused: `--max-connections` above what the open-file
//! limit can hold is lowered, with an [`Adjustment`] saying by how much and why.

use std::fmt;
use std::fs::File;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, ValueHint};

use super::file::Applied;
use super::Config;

/// The slab's key space ends at 2^24; connections plus the 503 overflow must fit below it.
const MAX_SLOTS: usize = (1 << 24) - 1;

/// How the open-file limit is shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE` in force.
    pub open_files: usize,
    /// Connections accepted beyond the limit only to be told 503 and closed. Keeping their
    /// descriptors inside the budget means clients over the limit get an answer instead of
    /// waiting in the backlog while accept fails.
    pub overflow: usize,
    /// The connection limit that takes effect.
    pub max_connections: usize,
}

impl FdBudget {
    /// Descriptors kept back from connections: the listener, the poll instance, the signal
    /// pipe, the standard streams, a backplane socket, and slack for what a library opens (a
    /// resolver, a log file). About ten are used; an eighth of the limit, 16 to 32, is kept.
    pub fn reserved_for(open_files: usize) -> usize {
        (open_files / 8).clamp(16, 32)
    }

    /// 503 slots for a limit: an eighth of it, at least 8, at most 256.
    pub fn overflow_for(open_files: usize) -> usize {
        (open_files / 8).clamp(8, 256)
    }

    /// The most connections `open_files` descriptors can serve, if any.
    pub fn fit(open_files: usize) -> Option<usize> {
        let fit = open_files.checked_sub(Self::reserved_for(open_files) + Self::overflow_for(open_files))?;
        (fit >= 1).then_some(fit.min(MAX_SLOTS - 256))
    }
}

/// A way a setting breaks a rule. `Display` is the rule and the offending value; the line
/// printed is prefixed by where the value came from (see [`describe`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// `--path` must start with `/` (request targets always do; anything else is 404 forever).
    PathNotAbsolute { value: String },
    /// `--path` must not hold `?`, `#`, spaces or control characters (the query is stripped
    /// before matching, so it could never match).
    PathNotPlain { value: String },
    /// `--ping-interval` must be below `--pong-wait`, unless either is 0.
    PingNotBelowPongWait { ping: f64, pong: f64 },
    /// A number outside its row of [`RANGES`].
    OutOfRange { flag: &'static str, value: f64, min: f64, max: f64, unit: &'static str },
    /// `--allowed-origin` must be `*` or `scheme://host[:port]`, exactly as browsers send it.
    OriginNotSchemeHostPort { value: String, why: &'static str },
    /// `--subprotocol` must be an HTTP token (RFC 7230 §3.2.6).
    SubprotocolNotToken { value: String },
    /// `--api-key` must be non-empty visible ASCII without spaces (it travels as a bearer token).
    ApiKeyNotToken,
    /// `--redis-prefix` must be at most 256 bytes without spaces or control characters (it
    /// starts every channel name, and operators type it into redis-cli).
    RedisPrefixNotPlain { value: String },
    /// `--redis` with `--echo`: echo mode has no hub, so nothing would be relayed.
    RedisWithEcho,
    /// A flag that names a file (`value_hint = FilePath`) must name a readable file.
    FileUnreadable { flag: String, path: PathBuf, error: String },
    /// The open-file limit leaves nothing for connections.
    OpenFileLimitTooLow { open_files: usize },
}

impl Problem {
    /// The flag (long name) the problem is about, for [`describe`].
    pub fn flag(&self) -> &str {
        match self {
            Problem::PathNotAbsolute { .. } | Problem::PathNotPlain { .. } => "path",
            Problem::PingNotBelowPongWait { .. } => "ping-interval",
            Problem::OutOfRange { flag, .. } => flag,
            Problem::OriginNotSchemeHostPort { .. } => "allowed-origin",
            Problem::SubprotocolNotToken { .. } => "subprotocol",
            Problem::ApiKeyNotToken => "api-key",
            Problem::RedisPrefixNotPlain { .. } => "redis-prefix",
            Problem::RedisWithEcho => "redis",
            Problem::FileUnreadable { flag, .. } => flag,
            Problem::OpenFileLimitTooLow { .. } => "max-connections",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PathNotAbsolute { value } => {
                write!(f, "{value:?} must start with '/' (request paths always do: every upgrade would get 404)")
            }
            Problem::PathNotPlain { value } => write!(
                f,
                "{value:?} must be a plain path, without '?', '#', spaces or control characters (it could never match)"
            ),
            Problem::PingNotBelowPongWait { ping, pong } => write!(
                f,
                "{ping} s must be below --pong-wait {pong} s (or either 0): idle clients would be cut off before \
                 the next ping"
            ),
            Problem::OutOfRange { value, min, max, unit, .. } => {
                write!(f, "{value} is out of range: must be from {min} to {max} {unit}")
            }
            Problem::OriginNotSchemeHostPort { value, why } => {
                write!(f, "{value:?} must be `*` or scheme://host[:port] as browsers send it: {why}")
            }
            Problem::SubprotocolNotToken { value } => {
                write!(f, "{value:?} must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~)")
            }
            Problem::ApiKeyNotToken => {
                write!(f, "must be non-empty visible ASCII without spaces (it is sent as `Authorization: Bearer KEY`)")
            }
            Problem::RedisPrefixNotPlain { value } => {
                write!(f, "{value:?} must be at most 256 bytes without spaces or control characters")
            }
            Problem::RedisWithEcho => {
                write!(f, "cannot be used with --echo: echo mode has no hub, so nothing would be relayed")
            }
            Problem::FileUnreadable { path, error, .. } => write!(f, "cannot read {}: {error}", path.display()),
            Problem::OpenFileLimitTooLow { open_files } => write!(
                f,
                "the open-file limit ({open_files}) leaves no descriptor for connections after {} reserved and {} \
                 for 503 answers; raise it (ulimit -n)",
                FdBudget::reserved_for(*open_files),
                FdBudget::overflow_for(*open_files)
            ),
        }
    }
}

/// A setting changed to fit, for a warning in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adjustment {
    MaxConnectionsLowered {
        asked: usize,
        fitted: usize,
        budget: FdBudget,
    },
    /// Not refused (a queue bound below the message size works while messages stay small, and
    /// tests rely on it), but worth a warning: a big message cuts its receivers off.
    QueueBelowMessageSize {
        queued: usize,
        message: usize,
    },
}

impl fmt::Display for Adjustment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Adjustment::MaxConnectionsLowered { asked, fitted, budget } => write!(
                f,
                "--max-connections {asked} lowered to {fitted} (by {}): the open-file limit is {}, and {} descriptors \
                 are kept for the listener, poll, signals and standard streams and {} for answering 503 to clients \
                 over the limit (raise it with ulimit -n or LimitNOFILE)",
                asked - fitted,
                budget.open_files,
                FdBudget::reserved_for(budget.open_files),
                budget.overflow
            ),
            Adjustment::QueueBelowMessageSize { queued, message } => write!(
                f,
                "--max-queued-bytes {queued} is below --max-message-size {message}: a receiver of a message that \
                 large is cut off as a slow consumer unless its socket takes it at once"
            ),
        }
    }
}

/// One row of the numeric rules. Rows name flags, not `Config` fields, and read the value as
/// given (flag, variable or file), so a row needs no code and survives a field changing type.
pub struct Range {
    pub flag: &'static str,
    pub min: f64,
    pub max: f64,
    pub unit: &'static str,
}

const fn range(flag: &'static str, min: f64, max: f64, unit: &'static str) -> Range {
    Range { flag, min, max, unit }
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * KIB;
const GIB: f64 = 1024.0 * MIB;
const HOUR: f64 = 3600.0;
const DAY: f64 = 24.0 * HOUR;

/// Sane ranges. Sizes stop at a gigabyte (a per-connection bound over that is a typo or a
/// denial of service waiting to happen); timeouts that must fire are above zero; 0 stays
/// allowed where it means "off".
#[rustfmt::skip]
pub const RANGES: &[Range] = &[
    range("max-message-size", 1.0, GIB, "bytes"),
    range("max-queued-bytes", KIB, GIB, "bytes"),
    range("send-queue", 1.0, 1e6, "messages"),
    range("max-head-size", KIB, 64.0 * KIB, "bytes"),
    range("max-body-size", 1.0, 64.0 * MIB, "bytes"),
    range("max-topic-length", 1.0, 64.0 * KIB, "bytes"),
    range("max-subscriptions", 1.0, 1e6, "topics"),
    range("max-connections", 1.0, (MAX_SLOTS - 256) as f64, "connections"),
    range("handshake-timeout", 0.001, HOUR, "s"),
    range("write-wait", 0.001, HOUR, "s"),
    range("close-timeout", 0.001, HOUR, "s"),
    range("shutdown-timeout", 0.0, HOUR, "s"),
    range("ping-interval", 0.0, DAY, "s"),
    range("pong-wait", 0.0, DAY, "s"),
    range("compression-threshold", 0.0, GIB, "bytes"),
    range("redis-max-queued-bytes", KIB, GIB, "bytes"),
    range("max-connections-per-ip", 0.0, 1e6, "connections"),
    range("max-pending-handshakes", 1.0, (MAX_SLOTS - 256) as f64, "connections"),
    range("socket-send-buffer", 0.0, 64.0 * MIB, "bytes"),
    range("max-topics", 1.0, 1e8, "topics"),
    range("jwt-leeway", 0.0, HOUR, "s"),
    range("rate-limit", 0.0, 1e6, "messages/s"),
    range("rate-burst", 1.0, 1e6, "messages"),
    range("history-size", 0.0, 1e6, "messages"),
    range("history-ttl", 0.001, 7.0 * DAY, "s"),
    range("history-max-bytes", 0.0, 64.0 * GIB, "bytes"),
];

/// The value of flag `long` as given, if it was given or has a default.
fn raw<'a>(cmd: &Command, matches: &'a ArgMatches, long: &str) -> Option<Vec<&'a std::ffi::OsStr>> {
    let arg = cmd.get_arguments().find(|a| a.get_long() == Some(long))?;
    Some(matches.get_raw(arg.get_id().as_str())?.collect())
}

/// What a rule sees.
pub struct Input<'a> {
    pub config: &'a Config,
    pub cmd: &'a Command,
    pub matches: &'a ArgMatches,
}

/// A rule beyond a range: the problems it finds.
pub type Rule = fn(&Input) -> Vec<Problem>;

/// The rules that are not plain ranges, each with the flag it is about (for the table test).
pub const RULES: &[(&str, Rule)] = &[
    ("path", path),
    ("ping-interval", ping_below_pong),
    ("allowed-origin", origins),
    ("subprotocol", subprotocols),
    ("api-key", api_key),
    ("redis-prefix", redis_prefix),
    ("redis", redis_without_echo),
    ("(any FilePath flag)", files_readable),
];

fn path(i: &Input) -> Vec<Problem> {
    let value = &i.config.path;
    if !value.starts_with('/') {
        vec![Problem::PathNotAbsolute { value: value.clone() }]
    } else if value.chars().any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control()) {
        vec![Problem::PathNotPlain { value: value.clone() }]
    } else {
        Vec::new()
    }
}

fn ping_below_pong(i: &Input) -> Vec<Problem> {
    let (ping, pong) = (i.config.ping_interval, i.config.pong_wait);
    if ping > 0.0 && pong > 0.0 && ping >= pong {
        vec![Problem::PingNotBelowPongWait { ping, pong }]
    } else {
        Vec::new()
    }
}

fn origins(i: &Input) -> Vec<Problem> {
    i.config
        .allowed_origins
        .iter()
        .filter_map(|o| {
            origin_problem(o).map(|why| Problem::OriginNotSchemeHostPort { value: o.clone(), why })
        })
        .collect()
}

/// Why `origin` can never equal a browser's `Origin` header, if it cannot.
pub fn origin_problem(origin: &str) -> Option<&'static str> {
    if origin == "*" {
        return None;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Some("no scheme:// (e.g. https://app.example.com)");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Some("the scheme is not a URL scheme");
    }
    if rest.contains(['/', '?', '#']) {
        return Some("it has a path (browsers send none, not even a trailing '/')");
    }
    if rest.contains('@') {
        return Some("it has user information (browsers never send it)");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, after))
                if !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') =>
            {
                match after {
                    "" => (h, None),
                    p => match p.strip_prefix(':') {
                        Some(p) => (h, Some(p)),
                        None => return Some("junk after the IPv6 address"),
                    },
                }
            }
            _ => return Some("the IPv6 address is malformed"),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Some("the host is empty");
    }
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)) {
        return Some("the host has characters no host name has");
    }
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|n| n > 0) || p.starts_with('+') {
            return Some("the port is not a number from 1 to 65535");
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn subprotocols(i: &Input) -> Vec<Problem> {
    i.config
        .subprotocols
        .iter()
        .filter(|p| !is_token(p))
        .map(|p| Problem::SubprotocolNotToken { value: p.clone() })
        .collect()
}

fn api_key(i: &Input) -> Vec<Problem> {
    let values = raw(i.cmd, i.matches, "api-key").unwrap_or_default();
    let bad = |k: &&std::ffi::OsStr| k.is_empty() || !k.as_encoded_bytes().iter().all(u8::is_ascii_graphic);
    values.into_iter().filter(bad).map(|_| Problem::ApiKeyNotToken).collect()
}

fn redis_prefix(i: &Input) -> Vec<Problem> {
    let values = raw(i.cmd, i.matches, "redis-prefix").unwrap_or_default();
    let bad = |p: &&std::ffi::OsStr| {
        p.len() > 256 || p.as_encoded_bytes().iter().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    };
    values
        .into_iter()
        .filter(bad)
        .map(|p| Problem::RedisPrefixNotPlain { value: p.to_string_lossy().into_owned() })
        .collect()
}

fn redis_without_echo(i: &Input) -> Vec<Problem> {
    let given = raw(i.cmd, i.matches, "redis").is_some_and(|v| !v.is_empty());
    if given && i.config.echo {
        vec![Problem::RedisWithEcho]
    } else {
        Vec::new()
    }
}

/// Every flag declared with `value_hint = ValueHint::FilePath` names a file we can open now,
/// so a typo in a certificate path fails at start, not at the first TLS client.
fn files_readable(i: &Input) -> Vec<Problem> {
    let mut problems = Vec::new();
    for arg in i.cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_value_hint() != ValueHint::FilePath || id == "config" {
            continue;
        }
        let Some(values) = i.matches.get_raw(id) else { continue };
        let flag = arg.get_long().unwrap_or(id).to_owned();
        for value in values {
            let path = PathBuf::from(value);
            let error = match File::open(&path).and_then(|f| f.metadata()) {
                Ok(m) if m.is_file() => continue,
                Ok(_) => "not a regular file".to_owned(),
                Err(e) => e.to_string(),
            };
            problems.push(Problem::FileUnreadable { flag: flag.clone(), path, error });
        }
    }
    problems
}

/// What [`validate`] found.
pub struct Outcome {
    pub problems: Vec<Problem>,
    pub adjustments: Vec<Adjustment>,
    pub budget: FdBudget,
}

/// Runs every rule; fits `--max-connections` (or fills in its default) to `open_files`.
pub fn validate(config: &mut Config, cmd: &Command, matches: &ArgMatches, open_files: usize) -> Outcome {
    let mut problems = Vec::new();
    for r in RANGES {
        let values = raw(cmd, matches, r.flag).unwrap_or_default();
        for value in values.iter().filter_map(|v| v.to_str()?.parse::<f64>().ok()) {
            if !(r.min..=r.max).contains(&value) {
                problems.push(Problem::OutOfRange {
                    flag: r.flag,
                    value,
                    min: r.min,
                    max: r.max,
                    unit: r.unit,
                });
            }
        }
    }
    let input = Input { config, cmd, matches };
    for (_, rule) in RULES {
        problems.extend(rule(&input));
    }
    let mut adjustments = Vec::new();
    let (queued, message) = (config.max_queued_bytes, config.max_message_size);
    if queued < message {
        adjustments.push(Adjustment::QueueBelowMessageSize { queued, message });
    }
    let overflow = FdBudget::overflow_for(open_files);
    let max_connections = match FdBudget::fit(open_files) {
        None => {
            problems.push(Problem::OpenFileLimitTooLow { open_files });
            config.max_connections.unwrap_or(1)
        }
        Some(fit) => match config.max_connections {
            None => fit,
            Some(asked) if asked > fit => {
                let budget = FdBudget { open_files, overflow, max_connections: fit };
                adjustments.push(Adjustment::MaxConnectionsLowered { asked, fitted: fit, budget });
                fit
            }
            Some(asked) => asked,
        },
    };
    if problems.is_empty() {
        config.max_connections = Some(max_connections);
    }
    Outcome { problems, adjustments, budget: FdBudget { open_files, overflow, max_connections } }
}

/// Where the value of flag `long` came from, as a user would look for it.
pub fn origin_of(cmd: &Command, matches: &ArgMatches, applied: Option<&Applied>, long: &str) -> String {
    let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long)) else {
        return format!("--{long}");
    };
    let id = arg.get_id().as_str();
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => match applied.and_then(|a| a.key_for(id).map(|k| (a, k))) {
            Some((a, key)) => format!("{}: key `{key}`", a.path.display()),
            None => format!("--{long}"),
        },
        Some(ValueSource::EnvVariable) => {
            arg.get_env().map_or_else(|| format!("--{long}"), |e| e.to_string_lossy().into_owned())
        }
        _ => format!("--{long} (default)"),
    }
}

/// One line for a problem: where the value came from, then the rule it breaks.
pub fn describe(cmd: &Command, matches: &ArgMatches, applied: Option<&Applied>, problem: &Problem) -> String {
    format!("{}: {problem}", origin_of(cmd, matches, applied, problem.flag()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_budget_leaves_room_for_503_answers() {
        assert_eq!(FdBudget::overflow_for(256), 32);
        assert_eq!(FdBudget::fit(256), Some(256 - 32 - 32));
        assert_eq!(FdBudget::overflow_for(1 << 20), 256);
        assert_eq!(FdBudget::fit(1 << 20), Some((1 << 20) - 32 - 256));
        assert_eq!(FdBudget::fit(128), Some(128 - 16 - 16));
        assert_eq!(FdBudget::fit(40), Some(40 - 16 - 8));
        assert_eq!(FdBudget::fit(24), None);
    }

    /// The file rule knows no flag by name: any flag declared `value_hint = FilePath` is checked.
    #[test]
    fn flags_that_name_files_must_name_readable_files() {
        use clap::{Arg, CommandFactory, FromArgMatches};
        let cmd =
            Config::command().arg(Arg::new("test_file").long("test-file").value_hint(ValueHint::FilePath));
        let dir = std::env::temp_dir();
        let readable = dir.join(format!("wshub-validate-{}.pem", std::process::id()));
        std::fs::write(&readable, "x").unwrap();
        for (value, expected) in [
            (readable.to_str().unwrap(), None),
            ("/nonexistent/cert.pem", Some("No such file or directory")),
            (dir.to_str().unwrap(), Some("not a regular file")),
        ] {
            let matches = cmd.clone().try_get_matches_from(["wshub", "--test-file", value]).unwrap();
            let config = Config::from_arg_matches(&matches).unwrap();
            let problems = files_readable(&Input { config: &config, cmd: &cmd, matches: &matches });
            match expected {
                None => assert!(problems.is_empty(), "{problems:?}"),
                Some(error) => {
                    assert_eq!(problems.len(), 1);
                    assert_eq!(problems[0].flag(), "test-file");
                    let line = describe(&cmd, &matches, None, &problems[0]);
                    assert!(line.starts_with(&format!("--test-file: cannot read {value}: ")), "{line}");
                    assert!(line.contains(error), "{line}");
                }
            }
        }
        let _ = std::fs::remove_file(readable);
    }

    #[test]
    fn origins() {
        for ok in
            ["*", "https://app.example.com", "http://localhost:8080", "http://[::1]:3000", "app-x+y://h"]
        {
            assert_eq!(origin_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("notaurl", "no scheme"),
            ("https://app.example.com/", "path"),
            ("https://", "host is empty"),
            ("https://h:0", "port"),
            ("https://h:99999", "port"),
            ("https://u@h", "user information"),
            ("1http://h", "scheme"),
            ("https://h h", "characters"),
            ("http://[::1", "IPv6"),
        ] {
            let got = origin_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(got.contains(why), "{bad}: {got}");
        }
    }
}
