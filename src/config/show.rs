//! `wshub check-config`: the effective settings as a TOML file, each with where it came from.
//!
//! The output is itself a valid config file (flat keys), so it can be saved and edited. Secrets
//! are masked: any flag declared with `hide_env_values = true` (as every secret's flag is) or
//! named `*-secret`, `*-password`, `*-token`, and the password part of any `scheme://user:pw@`.

use std::fmt::Write;

use clap::ArgAction;

use super::validate::origin_of;
use super::{command, Loaded};

const MASK: &str = "\"********\"";

/// The effective configuration of `loaded`, one `key = value  # source` line per flag.
pub fn render(loaded: &Loaded) -> String {
    let cmd = command();
    let applied = loaded.file.as_ref();
    let mut out = String::new();
    let _ = writeln!(out, "# wshub effective configuration (flag > WSHUB_* variable > file > default)");
    if let Some(a) = applied {
        let _ = writeln!(out, "# config file: {}", a.path.display());
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(id, "config" | "help" | "version") {
            continue;
        }
        let mut source = origin_of(&cmd, &loaded.matches, applied, long);
        let raw: Vec<String> = if id == "max_connections" {
            if loaded.matches.get_raw(id).is_none() {
                source = format!("derived from the open-file limit {}", loaded.budget.open_files);
            } else if loaded.budget.max_connections
                != loaded.matches.get_one::<usize>(id).copied().unwrap_or(0)
            {
                source = format!("{source}, lowered to fit the open-file limit {}", loaded.budget.open_files);
            }
            vec![loaded.budget.max_connections.to_string()]
        } else {
            loaded
                .matches
                .get_raw(id)
                .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        let value = if raw.is_empty() {
            let _ = writeln!(out, "# {long} is not set");
            continue;
        } else if is_secret(arg) {
            MASK.to_owned()
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| toml_value(v)).collect();
            format!("[{}]", items.join(", "))
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            (raw[0] == "true").to_string()
        } else {
            toml_value(&raw[0])
        };
        let _ = writeln!(out, "{long} = {value}  # {source}");
    }
    if let Some(a) = applied {
        for (_, key) in &a.overridden {
            let _ = writeln!(out, "# file key `{key}` is overridden by a flag or WSHUB_* variable");
        }
    }
    out
}

/// Whether `arg` holds a secret: declared with `hide_env_values = true` (as every secret's flag
/// is) or named like one.
fn is_secret(arg: &clap::Arg) -> bool {
    let long = arg.get_long().unwrap_or_default();
    arg.is_hide_env_values_set()
        || ["-secret", "-password", "-token"].iter().any(|s| long.ends_with(s))
        || long == "secret"
}

/// `value` of flag `long` as it may be shown (in `Debug` output, logs): a secret's value
/// masked whole, and the password of any URL.
pub fn masked(long: &str, value: &str) -> String {
    let secret = command().get_arguments().find(|a| a.get_long() == Some(long)).is_some_and(is_secret);
    if secret {
        "********".to_owned()
    } else {
        mask_password(value)
    }
}

/// A number stays a number; anything else is a quoted string with credentials masked.
fn toml_value(raw: &str) -> String {
    let number =
        !raw.starts_with(['+', '.']) && !raw.ends_with('.') && raw.parse::<f64>().is_ok_and(f64::is_finite);
    if number {
        raw.to_owned()
    } else {
        serde_json::to_string(&mask_password(raw)).unwrap_or_default()
    }
}

/// `redis://user:pw@host` -> `redis://user:********@host`.
pub fn mask_password(value: &str) -> String {
    if let Some((scheme, rest)) = value.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                return format!("{scheme}://{}:********{}", &rest[..colon], &rest[at..]);
            }
        }
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        assert_eq!(mask_password("redis://:pw@h:6379/0"), "redis://:********@h:6379/0");
        assert_eq!(mask_password("redis://u:pw@h"), "redis://u:********@h");
        assert_eq!(mask_password("redis://h:6379"), "redis://h:6379");
        assert_eq!(mask_password("https://a.example/x@y:z"), "https://a.example/x@y:z");
    }

    #[test]
    fn secrets_are_masked_by_flag_and_urls_by_password() {
        assert_eq!(masked("api-key", "hunter2"), "********");
        assert_eq!(masked("jwt-secret", "hunter2"), "********");
        assert_eq!(masked("redis", "redis://u:hunter2@h"), "********", "hides its env values");
        assert_eq!(masked("path", "/ws"), "/ws");
        assert_eq!(masked("no-such-flag", "x://u:hunter2@h"), "x://u:********@h");
    }

    #[test]
    fn values_keep_their_toml_type() {
        assert_eq!(toml_value("1048576"), "1048576");
        assert_eq!(toml_value("0.5"), "0.5");
        assert_eq!(toml_value("/ws"), "\"/ws\"");
        assert_eq!(toml_value("127.0.0.1:8080"), "\"127.0.0.1:8080\"");
        assert_eq!(toml_value("inf"), "\"inf\"");
    }
}
