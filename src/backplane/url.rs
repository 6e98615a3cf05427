//! `redis://[user:password@]host:port[/db]`, parsed once at start.
//!
//! The password is kept for `AUTH` and never shown: `Debug` and `Display` print `***` in its
//! place, so a URL that reaches a log line does not leak it.

use std::fmt;

/// Why a `--redis` URL was refused; `Display` is the message printed at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// Not `redis://...` (`rediss://` would need TLS to Redis, which wshub does not speak).
    Scheme,
    /// No host before the port.
    MissingHost,
    /// The port is missing, not a number, or 0.
    BadPort,
    /// The path after the port is not a database number.
    BadDatabase,
    /// A `%` escape that is not two hex digits, or one that decodes to invalid UTF-8.
    BadEscape,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "the Redis URL must start with redis://",
            UrlError::MissingHost => "the Redis URL has no host",
            UrlError::BadPort => "the Redis URL needs a port from 1 to 65535 (redis://host:6379)",
            UrlError::BadDatabase => "the Redis URL's path must be a database number (/0)",
            UrlError::BadEscape => "the Redis URL has a bad %-escape",
        })
    }
}

impl std::error::Error for UrlError {}

#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address, without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// `AUTH user password` when both are set, `AUTH password` with the password alone.
    pub user: Option<String>,
    pub password: Option<String>,
    /// `SELECT db` when set. Pub/sub channels are global in Redis, so this only matters to
    /// operators who share an instance and want wshub's connections to be told apart.
    pub db: Option<u32>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let rest = url.strip_prefix("redis://").ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (info, None),
                };
                let user = (!user.is_empty()).then(|| unescape(user)).transpose()?;
                let password = password.filter(|p| !p.is_empty()).map(unescape).transpose()?;
                // `redis://secret@host` is the common shorthand for a password alone.
                match (user, password) {
                    (Some(user), None) => (None, Some(user)),
                    pair => pair,
                }
            }
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or(UrlError::MissingHost)?;
            (host, after.strip_prefix(':').ok_or(UrlError::BadPort)?)
        } else {
            hostport.rsplit_once(':').ok_or(UrlError::BadPort)?
        };
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(UrlError::BadPort),
        };
        let path = path.split(['?', '#']).next().unwrap_or("");
        let db = match path {
            "" => None,
            digits if digits.bytes().all(|b| b.is_ascii_digit()) => {
                Some(digits.parse().map_err(|_| UrlError::BadDatabase)?)
            }
            _ => return Err(UrlError::BadDatabase),
        };
        Ok(RedisUrl { host: host.to_owned(), port, user, password, db })
    }
}

/// Percent-decoding, for passwords holding `@`, `:` or `/`.
fn unescape(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UrlError::BadEscape)?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::BadEscape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::BadEscape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::BadEscape)
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.user, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if let Some(db) = self.db {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str, host: &str, port: u16, user: Option<&str>, password: Option<&str>, db: Option<u32>) {
        let parsed = RedisUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(
            (
                parsed.host.as_str(),
                parsed.port,
                parsed.user.as_deref(),
                parsed.password.as_deref(),
                parsed.db
            ),
            (host, port, user, password, db),
            "{url}"
        );
    }

    #[test]
    fn accepted() {
        ok("redis://127.0.0.1:6379", "127.0.0.1", 6379, None, None, None);
        ok("redis://localhost:6380/", "localhost", 6380, None, None, None);
        ok("redis://localhost:6380/3", "localhost", 6380, None, None, Some(3));
        ok("redis://:pw@h:1", "h", 1, None, Some("pw"), None);
        ok("redis://pw@h:1", "h", 1, None, Some("pw"), None);
        ok("redis://alice:pw@h:1/2", "h", 1, Some("alice"), Some("pw"), Some(2));
        ok("redis://alice:p%40ss%3Aw@h:1", "h", 1, Some("alice"), Some("p@ss:w"), None);
        ok("redis://a:b@c@h:1", "h", 1, Some("a"), Some("b@c"), None);
        ok("redis://[::1]:6379/0", "::1", 6379, None, None, Some(0));
    }

    #[test]
    fn refused() {
        let cases: &[(&str, UrlError)] = &[
            ("http://h:1", UrlError::Scheme),
            ("rediss://h:1", UrlError::Scheme),
            ("redis://h", UrlError::BadPort),
            ("redis://h:", UrlError::BadPort),
            ("redis://h:0", UrlError::BadPort),
            ("redis://h:70000", UrlError::BadPort),
            ("redis://h:+1", UrlError::BadPort),
            ("redis://:1", UrlError::MissingHost),
            ("redis://h:1/x", UrlError::BadDatabase),
            ("redis://h:1/99999999999", UrlError::BadDatabase),
            ("redis://a:%4@h:1", UrlError::BadEscape),
            ("redis://a:%zz@h:1", UrlError::BadEscape),
            ("redis://a:%ff@h:1", UrlError::BadEscape),
        ];
        for (url, error) in cases {
            assert_eq!(RedisUrl::parse(url), Err(*error), "{url}");
        }
    }

    #[test]
    fn password_never_shown() {
        let url = RedisUrl::parse("redis://alice:hunter2@h:1/2").unwrap();
        assert_eq!(url.to_string(), "redis://alice:***@h:1/2");
        assert!(!format!("{url:?}").contains("hunter2"));
        let url = RedisUrl::parse("redis://:hunter2@[::1]:1").unwrap();
        assert_eq!(url.to_string(), "redis://:***@[::1]:1");
    }
}
