//! What this build can do, for `wshub --version`: one row per optional capability.
//!
//! A capability that lands adds or flips its row here (`enabled: true`), nothing else.

use std::sync::OnceLock;

/// One optional capability.
pub struct Capability {
    pub name: &'static str,
    pub enabled: bool,
    /// What it is, in a few words.
    pub what: &'static str,
}

pub const CAPABILITIES: &[Capability] = &[
    Capability { name: "tls", enabled: true, what: "wss:// on the same port (rustls)" },
    Capability { name: "compression", enabled: true, what: "permessage-deflate (RFC 7692)" },
    Capability { name: "backplane", enabled: true, what: "Redis pub/sub between servers" },
    Capability { name: "config-file", enabled: true, what: "--config FILE.toml, wshub check-config" },
    Capability { name: "json-logs", enabled: true, what: "--log-format json" },
];

/// The text after `wshub ` in `wshub --version`: the version, then a line per capability.
pub fn version_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = env!("CARGO_PKG_VERSION").to_owned();
        text.push_str("\ncapabilities:");
        for c in CAPABILITIES {
            let state = if c.enabled { "yes" } else { "no " };
            text.push_str(&format!("\n  {:<12} {state}  {}", c.name, c.what));
        }
        text
    })
}
