//! The opening handshake (RFC 6455 section 4.2), server side.
//!
//! [`parse_head`] reads an HTTP/1.1 request head with `httparse`, borrowing from the caller's
//! buffer (an unfinished head is "need more", not an error). The caller then decides by path and
//! headers: [`RequestHead::is_upgrade`] requests are checked by [`RequestHead::validate_upgrade`],
//! which yields the 101 response or the 4xx [`Rejection`]; plain requests go to the HTTP side.
//! Any bytes after `head_len` that came in the same read are the client's first frames.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Default bound on a request head; larger heads get 431.
pub const DEFAULT_MAX_HEAD_LEN: usize = 8 * 1024;
/// Headers we parse at most; more is 431 as well.
pub const MAX_HEADERS: usize = 64;
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Which `Origin` values the server accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// A request with `Origin` is accepted only when the origin's host[:port] equals `Host`
    /// (the browser is on a page served by us). Requests without `Origin` (non-browser
    /// clients) are accepted.
    #[default]
    SameHost,
    /// Exactly these origins (e.g. `https://app.example.com`), compared case-insensitively;
    /// requests without `Origin` are accepted.
    AllowList(Vec<String>),
    /// Any origin (`--allowed-origin '*'`).
    Any,
}

impl OriginPolicy {
    /// Builds the policy from `--allowed-origin` values: none means same-host, `*` means any.
    pub fn from_allowed(origins: &[String]) -> OriginPolicy {
        if origins.is_empty() {
            OriginPolicy::SameHost
        } else if origins.iter().any(|o| o == "*") {
            OriginPolicy::Any
        } else {
            OriginPolicy::AllowList(origins.to_vec())
        }
    }

    /// The pure origin check.
    pub fn allows(&self, origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::AllowList(list) => {
                list.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(trim(origin)))
            }
            OriginPolicy::SameHost => {
                let Some(host) = host else {
                    return false;
                };
                match origin_authority(trim(origin)) {
                    Some(authority) => authority.eq_ignore_ascii_case(trim(host)),
                    None => false,
                }
            }
        }
    }
}

/// `scheme://host[:port]` -> `host[:port]`; `None` for `null` or anything without a scheme.
fn origin_authority(origin: &[u8]) -> Option<&[u8]> {
    let sep = origin.windows(3).position(|w| w == b"://")?;
    let rest = &origin[sep + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    let authority = &rest[..end];
    (!authority.is_empty()).then_some(authority)
}

/// What the server supports, configured once.
#[derive(Clone, Debug, Default)]
pub struct UpgradePolicy {
    /// Subprotocols in the server's order of preference... the client's order decides (first
    /// offered that we support), per section 4.2.2's "the first one the client offers".
    pub subprotocols: Vec<String>,
    pub origins: OriginPolicy,
    /// Negotiate permessage-deflate (RFC 7692) when a client offers it.
    pub deflate: bool,
}

/// A refused request: the status and a short plain-text reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    /// It answers a HEAD: headers only (RFC 9110 section 9.3.2).
    head_only: bool,
}

impl Rejection {
    pub const fn new(status: u16, reason: &'static str) -> Rejection {
        Rejection { status, reason, head_only: false }
    }

    /// This refusal as the answer to a request with `method`: without its body for a HEAD.
    pub fn answering(mut self, method: &str) -> Rejection {
        self.head_only = method == "HEAD";
        self
    }

    /// Writes a complete `Connection: close` response (426 carries the version we speak).
    pub fn write_response(&self, out: &mut Vec<u8>) {
        write_plain_response(out, self.status, self.reason, self.status == 426);
        if self.head_only {
            // Every header, `Content-Length` included, as a GET would get them; not the body
            // (the reason and its line end).
            out.truncate(out.len() - self.reason.len() - 1);
        }
    }
}

/// The standard reason phrase for the statuses we send.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes `HTTP/1.1 status` with a `text/plain` body and `Connection: close`. With
/// `version_header` (the 426), also the protocol to upgrade to: RFC 9110 section 15.5.22 requires
/// `Upgrade` on a 426 (and section 7.8 the `upgrade` connection option with it), RFC 6455
/// section 4.4 the version we speak.
pub fn write_plain_response(out: &mut Vec<u8>, status: u16, body: &str, version_header: bool) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n{}\r\n{}\n",
        status,
        status_text(status),
        body.len() + 1,
        if version_header { "Upgrade, close" } else { "close" },
        if version_header { "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" } else { "" },
        body
    );
}

/// A parsed request head, borrowing from the read buffer.
#[derive(Debug)]
pub struct RequestHead<'b> {
    pub method: &'b str,
    /// The request target as sent (path and query).
    pub target: &'b str,
    /// 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    /// Bytes of the head, including the blank line; the body or first frames start here.
    pub head_len: usize,
    headers: [httparse::Header<'b>; MAX_HEADERS],
    header_count: usize,
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more (unless `buf` already holds `max_head_len` bytes, which is
/// a 431). Bytes are only scanned when a blank line may have arrived, so a client that
/// trickles its head costs a scan per line, not per byte.
pub fn parse_head(buf: &[u8], max_head_len: usize) -> Result<Option<RequestHead<'_>>, Rejection> {
    const TOO_LARGE: Rejection = Rejection::new(431, "request head too large");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::new(431, "too many headers")),
        Err(_) => return Err(Rejection::new(400, "malformed request")),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            return if buf.len() >= max_head_len { Err(TOO_LARGE) } else { Ok(None) };
        }
    };
    if head_len > max_head_len {
        return Err(TOO_LARGE);
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let version = req.version.unwrap_or(0);
    let header_count = req.headers.len();
    Ok(Some(RequestHead { method, target, version, head_len, headers, header_count }))
}

/// Where a partial head's blank line could end, given that `new_bytes` just arrived at the end
/// of `buf`: true if parsing is worth trying. Lets the caller skip re-parsing per byte.
///
/// httparse ends a head at an empty line after any mix of CRLF and bare LF line ends:
/// `\r\n\r\n`, `\r\n\n`, `\n\r\n` or `\n\n`, and each of those contains `\n\n` or `\n\r\n`.
pub fn may_be_complete(buf: &[u8], new_bytes: usize) -> bool {
    let from = buf.len().saturating_sub(new_bytes.saturating_add(3));
    buf[from..].windows(2).any(|w| w == b"\n\n") || buf[from..].windows(3).any(|w| w == b"\n\r\n")
}

impl<'b> RequestHead<'b> {
    pub fn headers(&self) -> &[httparse::Header<'b>] {
        &self.headers[..self.header_count]
    }

    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers().iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// Every value of `name`, split on commas and trimmed (for list headers that may repeat).
    fn tokens<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers()
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(trim)
            .filter(|t| !t.is_empty())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.tokens(name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// The path without the query string. An absolute-form target (`http://host/ws`) counts by
    /// its path: RFC 6455 section 4.2.1 item 1 allows "an absolute HTTP/HTTPS URI containing the
    /// /resource name/", and RFC 7230 section 5.3.2 says a server MUST accept the absolute-form.
    pub fn path(&self) -> &'b str {
        let target = self.target;
        let after_scheme = ["http://", "https://"].iter().find_map(|scheme| {
            let n = scheme.len();
            let matches =
                target.as_bytes().get(..n).is_some_and(|p| p.eq_ignore_ascii_case(scheme.as_bytes()));
            // The matched prefix is ASCII, so `n` is a char boundary.
            matches.then(|| &target[n..])
        });
        let origin_form = match after_scheme {
            // The authority ends at the path; with no path the resource is "/".
            Some(rest) => match rest.find(['/', '?']) {
                Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
                _ => "/",
            },
            None => target,
        };
        origin_form.split('?').next().unwrap_or("")
    }

    /// The client asks for a WebSocket (it sent `Upgrade: websocket` or a WebSocket key).
    /// Such a request is validated as an upgrade; anything else is ordinary HTTP.
    pub fn is_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket") || self.header("sec-websocket-key").is_some()
    }

    /// `Content-Length`, if present and a number (`Err` if present and malformed or repeated
    /// with different values: the request is then a 400). A number beyond `u64` reads as
    /// `u64::MAX`, so it is refused as too large.
    pub fn content_length(&self) -> Result<Option<u64>, Rejection> {
        let mut found: Option<u64> = None;
        for h in self.headers().iter().filter(|h| h.name.eq_ignore_ascii_case("content-length")) {
            let text = std::str::from_utf8(trim(h.value)).map_err(|_| BAD_LENGTH)?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BAD_LENGTH);
            }
            // All digits, so the only parse failure is overflow: a length no body limit admits
            // (413), not a malformed one.
            let n: u64 = text.parse().unwrap_or(u64::MAX);
            if found.is_some_and(|f| f != n) {
                return Err(BAD_LENGTH);
            }
            found = Some(n);
        }
        Ok(found)
    }

    /// The one `Host` of an HTTP/1.1 request (RFC 9112 section 3.2: a server MUST answer 400
    /// when it is missing, empty or repeated; a check must not see one Host while a proxy
    /// routes by another). HTTP/1.0 needs none, but may not repeat it either. Every request
    /// goes through this, upgrades and plain HTTP alike.
    pub fn host(&self) -> Result<Option<&'b [u8]>, Rejection> {
        let mut hosts = self.headers().iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
        let host = hosts.next().map(|h| h.value);
        if hosts.next().is_some() {
            return Err(Rejection::new(400, "more than one Host header"));
        }
        if self.version == 1 && host.is_none_or(|h| trim(h).is_empty()) {
            return Err(Rejection::new(400, "missing Host header"));
        }
        Ok(host)
    }

    /// `Transfer-Encoding` present (we do not accept chunked bodies).
    pub fn has_transfer_encoding(&self) -> bool {
        self.header("transfer-encoding").is_some()
    }

    /// Checks every rule of section 4.2.1 and the origin policy, in an order that gives the most
    /// useful answer first. On success, the 101 response to send.
    pub fn validate_upgrade(&self, policy: &UpgradePolicy) -> Result<Accepted, Rejection> {
        if self.method != "GET" {
            return Err(Rejection::new(400, "WebSocket upgrade requires GET"));
        }
        if self.version != 1 {
            return Err(Rejection::new(400, "WebSocket upgrade requires HTTP/1.1"));
        }
        let host = self.host()?;
        // RFC 9112 section 6: bytes after a head that announces a body are that body; accepting
        // the upgrade would read them as WebSocket frames.
        if self.has_transfer_encoding() || !matches!(self.content_length(), Ok(None | Some(0))) {
            return Err(Rejection::new(400, "WebSocket upgrade must not have a body"));
        }
        if !self.has_token("upgrade", "websocket") {
            return Err(Rejection::new(400, "Upgrade header must include websocket"));
        }
        if !self.has_token("connection", "upgrade") {
            return Err(Rejection::new(400, "Connection header must include Upgrade"));
        }
        match self.header("sec-websocket-version").map(trim) {
            Some(b"13") => {}
            _ => return Err(Rejection::new(426, "unsupported WebSocket version; use 13")),
        }
        let key = match self
            .headers()
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
            .count()
        {
            1 => trim(self.header("sec-websocket-key").expect("counted")),
            _ => return Err(Rejection::new(400, "exactly one Sec-WebSocket-Key required")),
        };
        if !is_valid_key(key) {
            return Err(Rejection::new(400, "Sec-WebSocket-Key must be 16 bytes in base64"));
        }
        if !policy.origins.allows(self.header("origin"), host) {
            return Err(Rejection::new(403, "origin not allowed"));
        }
        let subprotocol = self
            .tokens("sec-websocket-protocol")
            .find_map(|offered| policy.subprotocols.iter().position(|s| s.as_bytes() == offered));
        // No acceptable offer means no extension, never a failed handshake (RFC 7692 5.1).
        let deflate = if policy.deflate {
            super::deflate::negotiate(
                self.headers()
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                    .map(|h| h.value),
            )
        } else {
            None
        };
        Ok(Accepted { accept: accept_key(key), subprotocol, deflate })
    }
}

const BAD_LENGTH: Rejection = Rejection::new(400, "invalid Content-Length");

/// A validated upgrade: what goes in the 101 response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// `Sec-WebSocket-Accept`, base64 of a 20-byte SHA-1: always 28 ASCII bytes.
    pub accept: [u8; 28],
    /// Index into [`UpgradePolicy::subprotocols`] of the chosen subprotocol.
    pub subprotocol: Option<usize>,
    /// permessage-deflate, when enabled and offered acceptably.
    pub deflate: Option<super::deflate::Agreed>,
}

impl Accepted {
    /// Writes the `101 Switching Protocols` response.
    pub fn write_response(&self, policy: &UpgradePolicy, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
        out.extend_from_slice(&self.accept);
        out.extend_from_slice(b"\r\n");
        if let Some(name) = self.subprotocol.and_then(|i| policy.subprotocols.get(i)) {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(agreed) = &self.deflate {
            agreed.write_header(out);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A key is valid when it is base64 of exactly 16 bytes (section 4.2.1 item 5).
pub fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(BASE64.decode_slice(key, &mut decoded), Ok(16))
}

/// `Sec-WebSocket-Accept` for a client key: base64(SHA-1(key ++ GUID)) (section 4.2.2).
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WEBSOCKET_GUID);
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    let written = BASE64.encode_slice(digest, &mut out).expect("20 bytes encode to 28");
    debug_assert_eq!(written, 28);
    out
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_be_complete_sees_every_line_end_mix() {
        // Found by the handshake fuzz target: a head ending LF then CRLF was complete for
        // httparse but never re-parsed.
        for end in [&b"\r\n\r\n"[..], b"\r\n\n", b"\n\r\n", b"\n\n"] {
            let mut head = b"GET /ws HTTP/1.1\r\nHost: example.com".to_vec();
            head.extend_from_slice(end);
            assert!(parse_head(&head, DEFAULT_MAX_HEAD_LEN).unwrap().is_some(), "{end:?}");
            for new_bytes in 1..=head.len() {
                assert!(may_be_complete(&head, new_bytes), "{end:?} with {new_bytes} new bytes");
            }
        }
        assert!(!may_be_complete(b"GET /ws HTTP/1.1\r\nHost: x\r\n", 5));
    }
}
