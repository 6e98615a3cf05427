//! From a parsed request head to an [`HttpRequest`], sans-IO: the framing rules the reactor
//! relies on before it reads a body.
//!
//! The reactor parses the head ([`parse_head`](crate::protocol::handshake::parse_head)), calls
//! [`request_from_head`] with what it knows of the peer, and either writes the [`Rejection`]
//! and closes, or hands the request to [`body_plan`](super::body_plan). While the body is
//! short it asks [`wants_continue`] whether to send `100 Continue` (once).
//!
//! The rules, in the order they answer:
//! - one `Host` (400 when repeated, or missing or empty on HTTP/1.1; RFC 9112 section 3.2);
//! - at most one `Content-Length` value, all digits (400 otherwise);
//! - no `Transfer-Encoding`: with a `Content-Length` too the framing is ambiguous, the
//!   request-smuggling shape (RFC 9112 section 6.3), 400; alone, we lack the length we
//!   require, 411.
//!
//! Every refusal answers a `HEAD` without its body.

use super::HttpRequest;
use crate::protocol::handshake::{Rejection, RequestHead};

/// The request `head` describes, coming from a peer that is (or is not) on loopback, or the
/// refusal to write instead (see the module header).
pub fn request_from_head<'b>(
    head: &RequestHead<'b>,
    peer_is_loopback: bool,
) -> Result<HttpRequest<'b>, Rejection> {
    framing(head, peer_is_loopback).map_err(|rejection| rejection.answering(head.method))
}

fn framing<'b>(head: &RequestHead<'b>, peer_is_loopback: bool) -> Result<HttpRequest<'b>, Rejection> {
    let host = head.host()?;
    let content_length = head.content_length()?;
    if head.has_transfer_encoding() {
        return Err(if content_length.is_some() {
            Rejection::new(400, "Content-Length with Transfer-Encoding")
        } else {
            Rejection::new(411, "chunked bodies are not accepted")
        });
    }
    Ok(HttpRequest {
        method: head.method,
        path: head.path(),
        authorization: head.header("authorization"),
        content_length,
        peer_is_loopback,
        content_type: head.header("content-type"),
        origin: head.header("origin"),
        host,
    })
}

/// Whether a client still sending its body waits to be told to (RFC 9110 section 10.1.1:
/// `Expect: 100-continue`), and may be: never an HTTP/1.0 client, which may not get a 1xx.
/// The caller answers it once.
pub fn wants_continue(head: &RequestHead<'_>) -> bool {
    head.version == 1
        && head.header("expect").is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::parse_head;

    /// The request or the refusal's status, for `raw` from a remote peer.
    fn decide(raw: &str) -> Result<HttpRequest<'_>, u16> {
        let head = parse_head(raw.as_bytes(), 8192).unwrap().unwrap();
        // The head borrows `raw`, not the parser's frame, so the request outlives it.
        request_from_head(&head, false).map_err(|r| r.status)
    }

    #[test]
    fn framing_rules() {
        let ok = decide("POST /publish?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\nOrigin: o\r\n\r\n")
            .unwrap();
        assert_eq!((ok.method, ok.path, ok.content_length), ("POST", "/publish", Some(7)));
        assert_eq!((ok.host, ok.origin, ok.peer_is_loopback), (Some(&b"a"[..]), Some(&b"o"[..]), false));
        assert_eq!(decide("GET / HTTP/1.0\r\n\r\n").unwrap().host, None);
        for (raw, status) in [
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost:  \r\n\r\n", 400),
            ("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            // Host is checked first: a request with no Host and a bad length is refused for it.
            ("POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ] {
            assert_eq!(decide(raw).err(), Some(status), "{raw:?}");
        }
    }

    #[test]
    fn a_head_refusal_has_no_body() {
        let raw = b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = parse_head(raw, 8192).unwrap().unwrap();
        let mut out = Vec::new();
        request_from_head(&head, true).unwrap_err().write_response(&mut out);
        assert!(out.starts_with(b"HTTP/1.1 411 ") && out.ends_with(b"\r\n\r\n"), "{out:?}");
    }

    #[test]
    fn continue_only_for_http_1_1_that_asks() {
        let wants = |raw: &str| wants_continue(&parse_head(raw.as_bytes(), 8192).unwrap().unwrap());
        assert!(wants("POST / HTTP/1.1\r\nExpect:  100-Continue \r\n\r\n"));
        assert!(!wants("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"));
        assert!(!wants("POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n"));
        assert!(!wants("POST / HTTP/1.1\r\n\r\n"));
    }
}
