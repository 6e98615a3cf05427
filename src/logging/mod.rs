//! Log set-up (`--log-format text|json`) and [`RateLimitedLog`] for warnings that come in floods.
//!
//! A line about one connection carries its id and, where known, its peer as log key-values, so
//! both formats show them without parsing messages:
//!
//! ```ignore
//! log::warn!(conn = key, peer:% = peer; "cut off: slow consumer");
//! // text: [.. WARN wshub::server] cut off: slow consumer conn=7 peer=127.0.0.1:50312
//! // json: {"timestamp":"..","level":"WARN","target":"wshub::server","message":"cut off: slow consumer","conn":7,"peer":"127.0.0.1:50312"}
//! ```
//!
//! `RUST_LOG` sets the level in both formats (default `info`).

mod rate_limited;

use std::fmt::Write as _;
use std::io::Write as _;

use log::kv::{self, Key, Value, VisitSource};

pub use rate_limited::{RateLimitedLog, Verdict};

use crate::config::LogFormat;

/// Installs the global logger. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = json_line(&buf.timestamp_millis().to_string(), record);
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// One JSON object (no newline): timestamp, level, target, message, then the record's
/// key-values. Numbers and booleans stay numbers and booleans; anything else is a string.
pub fn json_line(timestamp: &str, record: &log::Record) -> String {
    let mut line = String::with_capacity(160);
    line.push_str("{\"timestamp\":");
    push_str(&mut line, timestamp);
    line.push_str(",\"level\":");
    push_str(&mut line, record.level().as_str());
    line.push_str(",\"target\":");
    push_str(&mut line, record.target());
    line.push_str(",\"message\":");
    push_str(&mut line, &record.args().to_string());
    let _ = record.key_values().visit(&mut JsonPairs(&mut line));
    line.push('}');
    line
}

fn push_str(line: &mut String, s: &str) {
    // serde_json's escaping, so a peer or a reason with quotes cannot break the object.
    line.push_str(&serde_json::Value::from(s).to_string());
}

struct JsonPairs<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonPairs<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        self.0.push(',');
        push_str(self.0, key.as_str());
        self.0.push(':');
        if let Some(n) = value.to_u64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(self.0, "{b}");
        } else {
            push_str(self.0, &value.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_the_connection() {
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let kvs: &[(&str, Value)] = &[("conn", Value::from(7u64)), ("peer", Value::from_display(&peer))];
        let line = json_line(
            "2026-11-30T18:00:00.000Z",
            &log::Record::builder()
                .level(log::Level::Warn)
                .target("wshub::server")
                .args(format_args!("cut off: \"slow\" consumer"))
                .key_values(&kvs)
                .build(),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"timestamp": "2026-11-30T18:00:00.000Z", "level": "WARN", "target": "wshub::server",
                "message": "cut off: \"slow\" consumer", "conn": 7, "peer": "127.0.0.1:5000"})
        );
        assert!(!line.contains('\n'));
    }
}
