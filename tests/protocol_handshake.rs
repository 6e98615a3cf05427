//! The opening handshake (RFC 6455 section 4.2) over the public API: head parsing, upgrade
//! validation, the accept value, subprotocols and the origin policy.

use wshub::protocol::frame::{self, OpCode};
use wshub::protocol::handshake::{
    accept_key, is_valid_key, parse_head, Accepted, OriginPolicy, Rejection, RequestHead, UpgradePolicy,
    DEFAULT_MAX_HEAD_LEN,
};
use wshub::protocol::{Event, Session, SessionConfig};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A valid upgrade request head, with `extra` header lines added and any line starting with a
/// name in `drop` left out.
fn request_with(drop: &[&str], extra: &[&str]) -> Vec<u8> {
    let lines = [
        "GET /ws?room=1 HTTP/1.1".to_string(),
        "Host: example.com".into(),
        "Upgrade: websocket".into(),
        "Connection: Upgrade".into(),
        format!("Sec-WebSocket-Key: {KEY}"),
        "Sec-WebSocket-Version: 13".into(),
    ];
    let mut head = String::new();
    for line in &lines {
        if drop.iter().any(|d| line.to_ascii_lowercase().starts_with(&d.to_ascii_lowercase())) {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn request() -> Vec<u8> {
    request_with(&[], &[])
}

fn parse(buf: &[u8]) -> RequestHead<'_> {
    parse_head(buf, DEFAULT_MAX_HEAD_LEN).expect("parses").expect("complete")
}

fn validate(buf: &[u8], policy: &UpgradePolicy) -> Result<Accepted, Rejection> {
    parse(buf).validate_upgrade(policy)
}

fn response_text(accepted: &Accepted, policy: &UpgradePolicy) -> String {
    let mut out = Vec::new();
    accepted.write_response(policy, &mut out);
    String::from_utf8(out).expect("ASCII response")
}

#[test]
fn accept_value_of_the_rfc_example() {
    assert_eq!(&accept_key(KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let accepted = validate(&request(), &UpgradePolicy::default()).unwrap();
    assert_eq!(&accepted.accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(accepted.subprotocol, None);
    let text = response_text(&accepted, &UpgradePolicy::default());
    assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{text}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{text}");
    assert!(text.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{text}");
    assert!(!lower.contains("sec-websocket-protocol"), "{text}");
    assert!(text.ends_with("\r\n\r\n"));
}

#[test]
fn incomplete_head_is_need_more_byte_by_byte() {
    let head = request();
    for cut in 0..head.len() {
        assert!(matches!(parse_head(&head[..cut], DEFAULT_MAX_HEAD_LEN), Ok(None)), "cut {cut}");
    }
    let parsed = parse(&head);
    assert_eq!(parsed.head_len, head.len());
    assert_eq!(parsed.method, "GET");
    assert_eq!(parsed.target, "/ws?room=1");
    assert_eq!(parsed.path(), "/ws");
    assert_eq!(parsed.version, 1);
    assert!(parsed.is_upgrade());
}

#[test]
fn head_over_the_limit_is_431() {
    // A head that never ends: once the buffer reaches the limit, 431.
    let mut endless = b"GET /ws HTTP/1.1\r\nX-Filler: ".to_vec();
    endless.resize(DEFAULT_MAX_HEAD_LEN - 1, b'a');
    assert!(matches!(parse_head(&endless, DEFAULT_MAX_HEAD_LEN), Ok(None)));
    endless.push(b'a');
    assert_eq!(parse_head(&endless, DEFAULT_MAX_HEAD_LEN).unwrap_err().status, 431);

    // A complete head exactly at the limit is fine; one byte more is 431.
    let exact = padded_head(DEFAULT_MAX_HEAD_LEN);
    assert_eq!(exact.len(), DEFAULT_MAX_HEAD_LEN);
    assert_eq!(parse(&exact).head_len, DEFAULT_MAX_HEAD_LEN);
    let over = padded_head(DEFAULT_MAX_HEAD_LEN + 1);
    assert_eq!(parse_head(&over, DEFAULT_MAX_HEAD_LEN).unwrap_err().status, 431);

    // A smaller configured limit applies the same way.
    let head = request();
    assert!(parse_head(&head, head.len()).unwrap().is_some());
    assert_eq!(parse_head(&head, head.len() - 1).unwrap_err().status, 431);

    let mut out = Vec::new();
    parse_head(&over, DEFAULT_MAX_HEAD_LEN).unwrap_err().write_response(&mut out);
    assert!(out.starts_with(b"HTTP/1.1 431 "));
}

/// A valid upgrade head of exactly `len` bytes (a filler header makes up the size).
fn padded_head(len: usize) -> Vec<u8> {
    let base = request_with(&[], &["X-Filler: "]);
    let fill = len - base.len();
    request_with(&[], &[&format!("X-Filler: {}", "f".repeat(fill))])
}

#[test]
fn bytes_after_the_head_are_preserved() {
    let mut buf = request();
    let head_len = buf.len();
    frame::write_masked_frame(&mut buf, true, OpCode::Text, [1, 2, 3, 4], b"early");
    let parsed = parse(&buf);
    assert_eq!(parsed.head_len, head_len);
    assert!(parsed.validate_upgrade(&UpgradePolicy::default()).is_ok());
    // Those bytes are the client's first frame.
    let config = SessionConfig::default();
    let mut session = Session::new(&config, 0);
    let mut out = Vec::new();
    let mut rest = buf[head_len..].to_vec();
    let step = session.advance(&mut rest, &config, &mut out, 0).unwrap();
    assert_eq!(step.event, Some(Event::Text("early")));
}

#[test]
fn upgrade_validation_table() {
    let policy = UpgradePolicy::default();
    // (what, request, expected status or None for accepted)
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("valid", request(), None),
        ("POST", replace_line(&request(), "GET /ws?room=1 HTTP/1.1", "POST /ws HTTP/1.1"), Some(400)),
        ("get lowercase", replace_line(&request(), "GET /ws?room=1 HTTP/1.1", "get /ws HTTP/1.1"), Some(400)),
        ("HTTP/1.0", replace_line(&request(), "GET /ws?room=1 HTTP/1.1", "GET /ws HTTP/1.0"), Some(400)),
        ("no Host", request_with(&["host:"], &[]), Some(400)),
        ("empty Host", request_with(&["host:"], &["Host: "]), Some(400)),
        ("two Hosts", request_with(&[], &["Host: example.com"]), Some(400)),
        ("two different Hosts", request_with(&[], &["Host: evil.com"]), Some(400)),
        ("no Upgrade", request_with(&["upgrade:"], &[]), Some(400)),
        ("Upgrade: h2c", request_with(&["upgrade:"], &["Upgrade: h2c"]), Some(400)),
        ("Upgrade: WebSocket", request_with(&["upgrade:"], &["Upgrade: WebSocket"]), None),
        ("Upgrade: WEBSOCKET", request_with(&["upgrade:"], &["Upgrade: WEBSOCKET"]), None),
        ("Upgrade list", request_with(&["upgrade:"], &["Upgrade: foo/2, websocket"]), None),
        ("Upgrade: websocketx", request_with(&["upgrade:"], &["Upgrade: websocketx"]), Some(400)),
        ("no Connection", request_with(&["connection:"], &[]), Some(400)),
        ("Connection: keep-alive", request_with(&["connection:"], &["Connection: keep-alive"]), Some(400)),
        ("Connection list", request_with(&["connection:"], &["Connection: keep-alive, Upgrade"]), None),
        (
            "Connection list no space",
            request_with(&["connection:"], &["Connection: keep-alive,upgrade"]),
            None,
        ),
        ("Connection: UPGRADE", request_with(&["connection:"], &["Connection: UPGRADE"]), None),
        (
            "Connection repeated",
            request_with(&["connection:"], &["Connection: close", "Connection: Upgrade"]),
            None,
        ),
        ("Connection: upgraded", request_with(&["connection:"], &["Connection: upgraded"]), Some(400)),
        ("no key", request_with(&["sec-websocket-key:"], &[]), Some(400)),
        ("key of 15 bytes", with_key(&b64(&[7; 15])), Some(400)),
        ("key of 17 bytes", with_key(&b64(&[7; 17])), Some(400)),
        ("key of 16 bytes", with_key(&b64(&[7; 16])), None),
        ("key not base64", with_key("!!!!!!!!!!!!!!!!!!!!!!=="), Some(400)),
        ("key without padding", with_key("dGhlIHNhbXBsZSBub25jZQ"), Some(400)),
        ("two keys", request_with(&[], &[&format!("Sec-WebSocket-Key: {KEY}")]), Some(400)),
        ("Content-Length: 0", request_with(&[], &["Content-Length: 0"]), None),
        ("Content-Length: 5", request_with(&[], &["Content-Length: 5"]), Some(400)),
        ("Content-Length: junk", request_with(&[], &["Content-Length: 5x"]), Some(400)),
        ("Transfer-Encoding", request_with(&[], &["Transfer-Encoding: chunked"]), Some(400)),
        ("no version", request_with(&["sec-websocket-version:"], &[]), Some(426)),
        ("version 8", with_version("8"), Some(426)),
        ("version 12", with_version("12"), Some(426)),
        ("version 14", with_version("14"), Some(426)),
        ("version 13 padded", with_version(" 13 "), None),
    ];
    for (what, req, expected) in cases {
        let got = validate(&req, &policy);
        match expected {
            None => assert!(got.is_ok(), "{what}: {got:?}"),
            Some(status) => {
                let rejection = got.expect_err(what);
                assert_eq!(rejection.status, status, "{what}: {rejection:?}");
                assert!(!rejection.reason.is_empty() && rejection.reason.len() < 80, "{what}");
                let mut out = Vec::new();
                rejection.write_response(&mut out);
                let text = String::from_utf8(out).unwrap();
                assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{what}: {text}");
                assert!(text.contains(rejection.reason), "{what}: {text}");
                let versioned = text.contains("\r\nSec-WebSocket-Version: 13\r\n");
                assert_eq!(versioned, status == 426, "{what}: {text}");
            }
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn with_key(key: &str) -> Vec<u8> {
    request_with(&["sec-websocket-key:"], &[&format!("Sec-WebSocket-Key: {key}")])
}

fn with_version(version: &str) -> Vec<u8> {
    request_with(&["sec-websocket-version:"], &[&format!("Sec-WebSocket-Version: {version}")])
}

fn replace_line(head: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8(head.to_vec()).unwrap().replacen(from, to, 1).into_bytes()
}

#[test]
fn key_validity() {
    assert!(is_valid_key(KEY.as_bytes()));
    assert!(!is_valid_key(b""));
    assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=")); // 23 chars
    assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ===")); // 25 chars
    assert!(!is_valid_key(b64(&[0; 18]).as_bytes())); // 24 chars, 18 bytes
}

#[test]
fn plain_get_is_not_an_upgrade() {
    let head = b"GET /stats HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
    let parsed = parse(head);
    assert!(!parsed.is_upgrade());
    assert_eq!(parsed.path(), "/stats");
    // Connection: Upgrade alone (e.g. h2c) is not a WebSocket request either.
    let h2c = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
    assert!(!parse(h2c).is_upgrade());
    // Either the Upgrade token or a key marks a WebSocket attempt (then validated as one).
    assert!(parse(&request_with(&["sec-websocket-key:"], &[])).is_upgrade());
    assert!(parse(&request_with(&["upgrade:"], &[])).is_upgrade());
}

#[test]
fn subprotocol_is_the_first_the_client_offers_that_we_support() {
    let policy =
        UpgradePolicy { subprotocols: vec!["chat.v2".into(), "chat.v1".into()], ..Default::default() };
    // (offered header lines, expected choice)
    let cases: &[(&[&str], Option<&str>)] = &[
        (&[], None),
        (&["Sec-WebSocket-Protocol: mqtt"], None),
        (&["Sec-WebSocket-Protocol: chat.v1"], Some("chat.v1")),
        (&["Sec-WebSocket-Protocol: chat.v1, chat.v2"], Some("chat.v1")),
        (&["Sec-WebSocket-Protocol: mqtt,chat.v2 , chat.v1"], Some("chat.v2")),
        (&["Sec-WebSocket-Protocol: mqtt", "Sec-WebSocket-Protocol: chat.v1"], Some("chat.v1")),
        (&["Sec-WebSocket-Protocol: CHAT.V1"], None),
    ];
    for &(offered, expected) in cases {
        let req = request_with(&[], offered);
        let accepted = validate(&req, &policy).unwrap();
        let chosen = accepted.subprotocol.map(|i| policy.subprotocols[i].as_str());
        assert_eq!(chosen, expected, "{offered:?}");
        let text = response_text(&accepted, &policy);
        match expected {
            Some(name) => {
                assert!(text.contains(&format!("\r\nSec-WebSocket-Protocol: {name}\r\n")), "{text}")
            }
            None => assert!(!text.to_ascii_lowercase().contains("sec-websocket-protocol"), "{text}"),
        }
    }
    // A server that supports none never answers with the header.
    let none = UpgradePolicy::default();
    let accepted = validate(&request_with(&[], &["Sec-WebSocket-Protocol: chat.v1"]), &none).unwrap();
    assert_eq!(accepted.subprotocol, None);
    assert!(!response_text(&accepted, &none).to_ascii_lowercase().contains("sec-websocket-protocol"));
}

#[test]
fn origin_policy_table() {
    let same = UpgradePolicy::default();
    let listed = UpgradePolicy {
        origins: OriginPolicy::from_allowed(&[
            "https://app.example.org".into(),
            "http://localhost:3000".into(),
        ]),
        ..Default::default()
    };
    let any = UpgradePolicy { origins: OriginPolicy::from_allowed(&["*".into()]), ..Default::default() };
    assert_eq!(any.origins, OriginPolicy::Any);
    assert_eq!(OriginPolicy::from_allowed(&[]), OriginPolicy::SameHost);

    // (host, origin, same-host verdict, allow-list verdict)
    let table: &[(&str, Option<&str>, bool, bool)] = &[
        ("example.com", None, true, true),
        ("example.com", Some("http://example.com"), true, false),
        ("example.com", Some("https://example.com"), true, false),
        ("example.com", Some("https://EXAMPLE.com"), true, false),
        ("example.com", Some("http://example.com/"), true, false),
        ("example.com:8080", Some("http://example.com:8080"), true, false),
        ("example.com:8080", Some("http://example.com"), false, false),
        ("example.com", Some("http://example.com:8080"), false, false),
        ("example.com", Some("http://evil.com"), false, false),
        ("example.com", Some("http://example.com.evil.com"), false, false),
        ("example.com", Some("http://evil.com/example.com"), false, false),
        ("example.com", Some("null"), false, false),
        ("example.com", Some("example.com"), false, false),
        ("example.com", Some(""), false, false),
        ("example.com", Some("https://app.example.org"), false, true),
        ("example.com", Some("HTTPS://APP.EXAMPLE.ORG"), false, true),
        ("example.com", Some("https://app.example.org.evil"), false, false),
        ("example.com", Some("http://app.example.org"), false, false),
        ("localhost:3000", Some("http://localhost:3000"), true, true),
        ("example.com", Some("http://localhost:3001"), false, false),
    ];
    for &(host, origin, same_ok, list_ok) in table {
        let host_line = format!("Host: {host}");
        let origin_line = origin.map(|o| format!("Origin: {o}"));
        let mut extra = vec![host_line.as_str()];
        extra.extend(origin_line.as_deref());
        let req = request_with(&["host:"], &extra);
        for (policy, expect_ok, name) in [(&same, same_ok, "same-host"), (&listed, list_ok, "allow-list")] {
            match validate(&req, policy) {
                Ok(_) => assert!(expect_ok, "{name}: {host} / {origin:?} accepted"),
                Err(r) => {
                    assert!(!expect_ok, "{name}: {host} / {origin:?} refused: {r:?}");
                    assert_eq!(r.status, 403, "{name}: {host} / {origin:?}");
                }
            }
        }
        assert!(validate(&req, &any).is_ok(), "any: {host} / {origin:?}");
    }
}

#[test]
fn a_second_host_cannot_steer_the_origin_check() {
    // RFC 7230 section 5.4: more than one Host is a 400. Otherwise the origin check would see one
    // Host while a proxy in front of us routes by the other.
    let req = request_with(
        &["host:"],
        &["Host: example.com", "Host: internal.example", "Origin: http://example.com"],
    );
    let rejection = validate(&req, &UpgradePolicy::default()).unwrap_err();
    assert_eq!(rejection.status, 400);
}

#[test]
fn an_upgrade_with_a_body_is_refused() {
    // RFC 9112 section 6: the bytes after a head with Content-Length are its body. Accepting
    // the upgrade would read that body as WebSocket frames (here, a valid masked text frame).
    let mut frame_bytes = Vec::new();
    frame::write_masked_frame(&mut frame_bytes, true, OpCode::Text, [1, 2, 3, 4], b"smuggled");
    let mut buf = request_with(&[], &[&format!("Content-Length: {}", frame_bytes.len())]);
    buf.extend_from_slice(&frame_bytes);
    let rejection = validate(&buf, &UpgradePolicy::default()).unwrap_err();
    assert_eq!(rejection.status, 400);
}

#[test]
fn malformed_heads_are_400() {
    for head in [
        &b"GET /ws HTTP/1.1\r\nBad Header\r\n\r\n"[..],
        b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
        b"GET /ws HTTP/9.9\r\n\r\n",
    ] {
        let err = parse_head(head, DEFAULT_MAX_HEAD_LEN).unwrap_err();
        assert_eq!(err.status, 400, "{head:?}");
    }
}
