//! Invariant checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and the stable replay
//! test (`tests/fuzz_replay.rs`, which includes this file with `#[path]`).
//!
//! Each `check_*` function takes one raw fuzzer input, decodes it the same way wherever it runs
//! and panics when an invariant breaks, so a crash file found by libFuzzer replays identically
//! under `cargo test` on stable. Only crates the root package already depends on are used here
//! (wshub, sha1, base64, httparse): the replay test needs nothing new.
//!
//! Structured inputs are decoded with [`Reader`], a small "unstructured bytes" reader in the
//! manner of the `arbitrary` crate (exhausted input reads as zeros), kept here so that the
//! decoding is the same code on nightly and on stable.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use wshub::auth::extract::{find_token, MAX_TOKEN_LEN};
use wshub::auth::{Refusal, Verifier, VerifierConfig};
use wshub::protocol::close;
use wshub::protocol::deflate::{Agreed, DeflateConfig, Deflater};
use wshub::protocol::frame::{self, OpCode};
use wshub::protocol::handshake::{self, OriginPolicy, Rejection, RequestHead, UpgradePolicy};
use wshub::protocol::session::{Session, SessionConfig, TimerOutcome};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// ---------------------------------------------------------------------------------------------
// Input decoding
// ---------------------------------------------------------------------------------------------

/// Reads structure out of fuzzer bytes. Never fails: an exhausted input reads as zeros.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Little endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    pub fn array4(&mut self) -> [u8; 4] {
        [self.u8(), self.u8(), self.u8(), self.u8()]
    }

    /// A length-prefixed byte string of at most `max` bytes: the length is one byte when
    /// `max < 256`, else two (little endian), taken modulo `max + 1`.
    pub fn blob(&mut self, max: usize) -> &'a [u8] {
        let n = if max < 256 { usize::from(self.u8()) } else { usize::from(self.u16()) };
        self.bytes(n % (max + 1))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Splits `stream` into chunks whose sizes cycle through `sizes` (a size of 0 means "an empty
/// read, then one byte"). With no sizes the stream is one chunk.
pub fn chunks<'a>(stream: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    if sizes.is_empty() {
        out.push(stream);
        return out;
    }
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let mut n = usize::from(sizes[i % sizes.len()]);
        i += 1;
        if n == 0 {
            out.push(&stream[pos..pos]);
            n = 1;
        }
        let end = (pos + n).min(stream.len());
        out.push(&stream[pos..end]);
        pos = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Independent oracles
// ---------------------------------------------------------------------------------------------

/// base64(SHA-1(key ++ GUID)), computed here rather than by wshub.
pub fn expected_accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    B64.encode(sha.finalize())
}

/// Section 4.2.1: base64 of exactly 16 bytes, decoded here rather than by wshub.
pub fn key_decodes_to_16(key: &[u8]) -> bool {
    B64.decode(key).is_ok_and(|d| d.len() == 16)
}

/// HTTP optional whitespace (SP, HTAB) trimmed from both ends.
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

// ---------------------------------------------------------------------------------------------
// Driving a session
// ---------------------------------------------------------------------------------------------

// The driver (the documented caller loop around `Session::advance`, checking every step) and
// the strict parser of server output are shared with the integration tests: one copy, in
// tests/protocol_driver. The path is relative to this file, wherever it is included from.
#[path = "../../tests/protocol_driver/mod.rs"]
mod protocol_driver;
pub use protocol_driver::{parse_server_frames, Driver, Ev, OutFrame};

/// Re-encodes an event as client frames, whole and fragmented, and checks that fresh sessions
/// read the same event back. `key` and `cut` vary the masking and the split.
pub fn check_reencodes(event: &Ev, config: &SessionConfig, key: [u8; 4], cut: u8) {
    let chunk = usize::from(cut % 16) + 1;
    match event {
        Ev::Text(_) | Ev::Binary(_) => {
            let (opcode, payload) = match event {
                Ev::Text(s) => (OpCode::Text, s.as_bytes()),
                Ev::Binary(b) => (OpCode::Binary, &b[..]),
                _ => unreachable!(),
            };
            // Whole, in one read.
            let mut wire = Vec::new();
            frame::write_masked_frame(&mut wire, true, opcode, key, payload);
            let mut d = Driver::new(config.clone());
            let _ = d.feed(&wire);
            assert_eq!(d.error, None);
            assert_eq!(d.events, std::slice::from_ref(event), "whole frame re-read differently");
            assert!(d.pending.is_empty());
            // Two fragments (the cut may fall inside a code point) with a ping between them,
            // in small reads.
            let split = if payload.is_empty() { 0 } else { usize::from(cut) % (payload.len() + 1) };
            let mut wire = Vec::new();
            frame::write_masked_frame(&mut wire, false, opcode, key, &payload[..split]);
            frame::write_masked_frame(&mut wire, true, OpCode::Ping, key, b"p");
            frame::write_masked_frame(&mut wire, true, OpCode::Continuation, key, &payload[split..]);
            let mut d = Driver::new(config.clone());
            for piece in wire.chunks(chunk) {
                let _ = d.feed(piece);
            }
            assert_eq!(d.error, None);
            assert_eq!(d.events, [Ev::Ping(b"p".to_vec()), event.clone()], "fragments re-read differently");
            assert!(d.pending.is_empty());
        }
        Ev::Ping(p) | Ev::Pong(p) => {
            let opcode = if matches!(event, Ev::Ping(_)) { OpCode::Ping } else { OpCode::Pong };
            let mut wire = Vec::new();
            frame::write_masked_frame(&mut wire, true, opcode, key, p);
            let mut d = Driver::new(config.clone());
            for piece in wire.chunks(chunk) {
                let _ = d.feed(piece);
            }
            assert_eq!(d.error, None);
            assert_eq!(d.events, std::slice::from_ref(event), "control frame re-read differently");
        }
        Ev::Closed { code, reason } => {
            let mut payload = Vec::new();
            if let Some(c) = code {
                payload.extend_from_slice(&c.to_be_bytes());
                payload.extend_from_slice(reason.as_bytes());
            }
            let mut wire = Vec::new();
            frame::write_masked_frame(&mut wire, true, OpCode::Close, key, &payload);
            let mut d = Driver::new(config.clone());
            for piece in wire.chunks(chunk) {
                let _ = d.feed(piece);
            }
            assert_eq!(d.error, None);
            assert_eq!(d.events, std::slice::from_ref(event), "close frame re-read differently");
        }
    }
}

fn fuzz_config(max_message_size: usize) -> SessionConfig {
    SessionConfig { max_message_size, ..SessionConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Target 1: frame_parser
// ---------------------------------------------------------------------------------------------

/// Input: `max_message_size: u16 % 4097`, `n: u8 % 16`, `n` chunk sizes (u8), then the byte
/// stream the client sends after the handshake.
pub fn check_frame_parser(data: &[u8]) {
    let mut r = Reader::new(data);
    let max = usize::from(r.u16() % 4097);
    let n = usize::from(r.u8() % 16);
    let sizes = r.bytes(n).to_vec();
    let stream = r.rest();
    let config = fuzz_config(max);
    let mut d = Driver::new(config.clone());
    for chunk in chunks(stream, &sizes) {
        let _ = d.feed(chunk);
    }
    let frames = parse_server_frames(&d.out);
    let closes = frames.iter().filter(|f| f.opcode == OpCode::Close).count();
    assert_eq!(closes, usize::from(d.session.is_closed()), "one close frame iff closed");
    for (i, event) in d.events.iter().enumerate() {
        let key = [i as u8, 0x5a, 0xa5, sizes.first().copied().unwrap_or(7)];
        check_reencodes(event, &config, key, i as u8 ^ sizes.last().copied().unwrap_or(3));
    }
}

// ---------------------------------------------------------------------------------------------
// Target 2: handshake
// ---------------------------------------------------------------------------------------------

/// The server policy an input byte selects.
pub fn policy_from(byte: u8) -> UpgradePolicy {
    let origins = match byte & 3 {
        0 => OriginPolicy::SameHost,
        1 => OriginPolicy::Any,
        _ => {
            OriginPolicy::AllowList(vec!["http://example.com".into(), "https://app.example.com:8443".into()])
        }
    };
    let subprotocols =
        if byte & 4 != 0 { vec!["chat".into(), "superchat".into(), "wshub.v1".into()] } else { Vec::new() };
    // Bit 5 turns on permessage-deflate, so the offer parser sees every extensions header.
    UpgradePolicy { subprotocols, origins, deflate: byte & 0x20 != 0 }
}

fn max_head_from(byte: u8) -> usize {
    match (byte >> 3) & 3 {
        0 => handshake::DEFAULT_MAX_HEAD_LEN,
        1 => 512,
        2 => 128,
        _ => 1024,
    }
}

/// What a head amounted to.
pub enum HeadOutcome {
    /// Not complete yet (all the input was read).
    Incomplete,
    /// Refused with this status (the response is already in `out`).
    Rejected(u16),
    /// Not an upgrade: a plain HTTP request (answered 404 here).
    PlainHttp,
    /// Upgraded; the client's first frame bytes start at this offset of the buffer.
    Accepted { head_len: usize, deflate: Option<Agreed> },
}

/// Reads a head chunk by chunk as a server would, writes the response to `out`, and checks
/// every outcome against independent computations.
pub fn drive_handshake(
    buf: &mut Vec<u8>,
    chunks: &mut dyn Iterator<Item = &[u8]>,
    policy: &UpgradePolicy,
    max_head: usize,
    out: &mut Vec<u8>,
) -> HeadOutcome {
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        let maybe = handshake::may_be_complete(buf, chunk.len());
        match handshake::parse_head(buf, max_head) {
            Ok(None) => assert!(buf.len() < max_head, "incomplete head of {} bytes not refused", buf.len()),
            Ok(Some(head)) => {
                assert!(maybe, "may_be_complete said no but the head is complete: {:?}", &buf[..]);
                return check_head(&head, buf, policy, max_head, out);
            }
            Err(rejection) => {
                check_rejection(rejection, out);
                return HeadOutcome::Rejected(rejection.status);
            }
        }
    }
    HeadOutcome::Incomplete
}

/// The connection-token path of a request head: extraction never panics, never returns more than
/// the bound, refuses only as missing or malformed, and what it finds never passes verification
/// (the fuzzer cannot sign with a secret it never sees).
fn check_token_extraction(target: &str, authorization: Option<&[u8]>) {
    static VERIFIER: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        let config = VerifierConfig { secret: Some(b"fuzz secret".to_vec()), ..VerifierConfig::default() };
        Verifier::new(&config).expect("an HMAC verifier")
    });
    match find_token(target, authorization) {
        Ok(token) => {
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN_LEN, "token of {} bytes", token.len());
            let refusal = verifier.verify(&token, 0).expect_err("an unsigned token verified");
            assert_ne!(refusal, Refusal::Missing, "a token that is there cannot be missing");
        }
        Err(refusal) => {
            assert!(
                matches!(refusal, Refusal::Missing | Refusal::Malformed),
                "extraction refused as {refusal:?}"
            )
        }
    }
}

fn check_head(
    head: &RequestHead<'_>,
    buf: &[u8],
    policy: &UpgradePolicy,
    max_head: usize,
    out: &mut Vec<u8>,
) -> HeadOutcome {
    assert!(head.head_len <= buf.len() && head.head_len <= max_head);
    assert!(buf[..head.head_len].ends_with(b"\n"), "head does not end at a line end");
    let _ = head.content_length();
    let _ = head.has_transfer_encoding();
    let _ = head.path();
    check_token_extraction(head.target, head.header("authorization"));
    let keys: Vec<&[u8]> = head
        .headers()
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .map(|h| trim_ows(h.value))
        .collect();
    for key in &keys {
        assert_eq!(handshake::is_valid_key(key), key_decodes_to_16(key), "is_valid_key disagrees on {key:?}");
    }
    if !head.is_upgrade() {
        handshake::write_plain_response(out, 404, "not found", false);
        return HeadOutcome::PlainHttp;
    }
    match head.validate_upgrade(policy) {
        Ok(accepted) => {
            assert_eq!(head.method, "GET");
            assert_eq!(head.version, 1);
            assert_eq!(keys.len(), 1, "accepted with {} keys", keys.len());
            let key = keys[0];
            assert!(handshake::is_valid_key(key), "accepted an invalid key {key:?}");
            assert!(key_decodes_to_16(key), "accepted a key that is not 16 bytes: {key:?}");
            let expected = expected_accept(key);
            assert_eq!(&accepted.accept[..], expected.as_bytes(), "wrong Sec-WebSocket-Accept");
            assert_eq!(accepted.accept, handshake::accept_key(key));
            let version = head.header("sec-websocket-version").map(trim_ows);
            assert_eq!(version, Some(&b"13"[..]));
            assert!(head.header("host").is_some_and(|h| !trim_ows(h).is_empty()));
            if let Some(i) = accepted.subprotocol {
                let name = policy.subprotocols[i].as_bytes();
                let offered = head
                    .headers()
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
                    .flat_map(|h| h.value.split(|&b| b == b','))
                    .any(|t| trim_ows(t) == name);
                assert!(offered, "chose a subprotocol the client did not offer");
            }
            let start = out.len();
            accepted.write_response(policy, out);
            let response = parse_response(&out[start..]);
            assert_eq!(response.status, 101);
            assert_eq!(response.len, out.len() - start);
            assert_eq!(response.accept.as_deref(), Some(expected.as_bytes()));
            // permessage-deflate: agreed only when enabled, and then always with both
            // no_context_takeover parameters in the response.
            let ext = response_header(&out[start..], "sec-websocket-extensions");
            match accepted.deflate {
                Some(agreed) => {
                    assert!(policy.deflate, "deflate agreed while disabled");
                    let ext = ext.expect("agreed deflate is answered");
                    assert!(ext.starts_with(
                        b"permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                    ));
                    assert!((8..=15).contains(&agreed.server_max_window_bits));
                }
                None => assert!(ext.is_none()),
            }
            HeadOutcome::Accepted { head_len: head.head_len, deflate: accepted.deflate }
        }
        Err(rejection) => {
            check_rejection(rejection, out);
            HeadOutcome::Rejected(rejection.status)
        }
    }
}

fn check_rejection(rejection: Rejection, out: &mut Vec<u8>) {
    assert!(matches!(rejection.status, 400 | 403 | 426 | 431), "unexpected status {}", rejection.status);
    let start = out.len();
    rejection.write_response(out);
    let response = parse_response(&out[start..]);
    assert_eq!(response.status, rejection.status);
    assert_eq!(response.len, out.len() - start, "response length disagrees with Content-Length");
}

struct Response {
    status: u16,
    /// Head plus body.
    len: usize,
    accept: Option<Vec<u8>>,
}

/// The value of one header of a complete response head.
fn response_header(bytes: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(bytes).ok()?;
    response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.to_vec())
}

fn parse_response(bytes: &[u8]) -> Response {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("server response does not parse: {other:?}: {bytes:?}"),
    };
    let status = response.code.expect("status");
    let header = |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name));
    let body = header("content-length").map_or(0, |h| {
        std::str::from_utf8(h.value).expect("ascii").parse::<usize>().expect("Content-Length")
    });
    let accept = header("sec-websocket-accept").map(|h| h.value.to_vec());
    Response { status, len: head_len + body, accept }
}

/// Input: policy byte, `n: u8 % 16`, `n` chunk sizes, then the request bytes.
pub fn check_handshake(data: &[u8]) {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let policy = policy_from(flags);
    let max_head = max_head_from(flags);
    let n = usize::from(r.u8() % 16);
    let sizes = r.bytes(n).to_vec();
    let request = r.rest();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let pieces = chunks(request, &sizes);
    let outcome = drive_handshake(&mut buf, &mut pieces.into_iter(), &policy, max_head, &mut out);
    // The whole request at once must come to the same answer as the pieces.
    let mut buf2 = Vec::new();
    let mut out2 = Vec::new();
    let whole = drive_handshake(&mut buf2, &mut std::iter::once(request), &policy, max_head, &mut out2);
    match (&outcome, &whole) {
        (HeadOutcome::Accepted { head_len: a, .. }, HeadOutcome::Accepted { head_len: b, .. }) => {
            assert_eq!(a, b)
        }
        (HeadOutcome::Accepted { .. }, _) => panic!("accepted in pieces, not whole"),
        (HeadOutcome::Rejected(status), HeadOutcome::Accepted { .. }) => {
            panic!("refused with {status} in pieces, accepted whole")
        }
        _ => {}
    }
    if matches!(outcome, HeadOutcome::Accepted { .. }) {
        assert_eq!(out, out2, "same head, different response");
    }
}

// ---------------------------------------------------------------------------------------------
// Target 3: connection
// ---------------------------------------------------------------------------------------------

/// The client-side parts of a structured connection input.
pub fn build_head(r: &mut Reader<'_>) -> Vec<u8> {
    let flags = r.u16();
    let key_bytes = r.bytes(16).to_vec();
    let extra = r.blob(48);
    let on = |bit: u16| flags & (1 << bit) == 0; // mostly valid: a set bit breaks something
    let eol: &[u8] = if flags & (1 << 12) != 0 { b"\n" } else { b"\r\n" };
    let mut head = Vec::new();
    head.extend_from_slice(if on(0) { b"GET" } else { b"POST" });
    head.extend_from_slice(b" /ws?x=1 ");
    head.extend_from_slice(if on(1) { b"HTTP/1.1" } else { b"HTTP/1.0" });
    head.extend_from_slice(eol);
    let mut header = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(eol);
    };
    if on(2) {
        header(b"Host", b"example.com");
    }
    if on(3) {
        header(b"Upgrade", if flags & (1 << 13) != 0 { b"h2c, WebSocket" } else { b"websocket" });
    }
    if on(4) {
        header(b"Connection", if flags & (1 << 14) != 0 { b"keep-alive, Upgrade" } else { b"Upgrade" });
    }
    if on(5) {
        header(b"Sec-WebSocket-Version", b"13");
    }
    if on(6) {
        let key =
            if on(7) { B64.encode(&key_bytes) } else { String::from_utf8_lossy(&key_bytes).into_owned() };
        header(b"Sec-WebSocket-Key", key.as_bytes());
    }
    if !on(8) {
        header(b"Origin", if flags & (1 << 15) != 0 { b"http://example.com" } else { b"http://evil.test" });
    }
    if !on(9) {
        header(b"Sec-WebSocket-Protocol", b"mqtt, superchat, chat");
    }
    if !on(10) {
        head.extend_from_slice(extra);
        head.extend_from_slice(eol);
    }
    head.extend_from_slice(eol);
    if !on(11) {
        // Lose the end of the head.
        let cut = usize::from(flags >> 8) % (head.len() + 1);
        head.truncate(cut);
    }
    head
}

/// One client frame, valid unless its flags say how to break it.
pub fn build_frame(r: &mut Reader<'_>, wire: &mut Vec<u8>) {
    const OPS: [u8; 6] = [0x0, 0x1, 0x2, 0x8, 0x9, 0xA];
    let b0 = r.u8();
    let flags = r.u8();
    let key = r.array4();
    let fin = b0 & 0x80 != 0 || flags & 0x80 != 0;
    let opcode = if flags & 0x40 != 0 { b0 & 0x0f } else { OPS[usize::from(b0 & 0x0f) % OPS.len()] };
    let payload: Vec<u8> = if opcode == 0x8 && flags & 0x20 == 0 {
        // A close frame with a code (mostly a valid one) and a reason.
        let code = match r.u8() % 4 {
            0 => 1000,
            1 => 1001 + u16::from(r.u8() % 12),
            2 => 3000 + r.u16() % 2000,
            _ => r.u16(),
        };
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(r.blob(130));
        p
    } else if opcode & 0x8 != 0 && flags & 0x10 == 0 {
        r.blob(125).to_vec()
    } else {
        let n = usize::from(r.u16()) % 1200;
        // Text mostly, to get past UTF-8 checks: whole characters of a sample string.
        if opcode == 0x1 && flags & 0x08 == 0 {
            "héllo wörld ✓ 🎉 "
                .chars()
                .cycle()
                .skip(usize::from(b0 >> 4))
                .take(n)
                .collect::<String>()
                .into_bytes()
        } else {
            (0..n).map(|i| (i as u8).wrapping_mul(b0 | 1)).collect()
        }
    };
    // A compressed frame (RSV1 and a valid DEFLATE payload when it compresses, the raw bytes
    // when it does not): the inflate path with real streams, split over frames and reads.
    let compressed = flags & 0x07 == 6;
    let payload = if compressed {
        let mut deflater = Deflater::new(DeflateConfig { threshold: 0, level: 1 });
        let mut packed = Vec::new();
        if deflater.compress(&payload, 9 + (b0 >> 4) % 7, &mut packed) {
            packed
        } else {
            payload
        }
    } else {
        payload
    };
    let start = wire.len();
    let rsv = match flags & 0x07 {
        1 => (b0 >> 4) & 0x7,
        6 => 0b100,
        _ => 0,
    };
    wire.push(if fin { 0x80 } else { 0 } | rsv << 4 | opcode);
    let masked = flags & 0x07 != 2;
    let mbit = if masked { 0x80 } else { 0 };
    let len = payload.len() as u64;
    let claimed = if flags & 0x07 == 3 { len + 1 + u64::from(key[0]) } else { len };
    if flags & 0x07 == 4 {
        // Non-minimal length.
        wire.push(mbit | 127);
        wire.extend_from_slice(&claimed.to_be_bytes());
    } else if claimed < 126 {
        wire.push(mbit | claimed as u8);
    } else if claimed <= 0xffff {
        wire.push(mbit | 126);
        wire.extend_from_slice(&(claimed as u16).to_be_bytes());
    } else {
        wire.push(mbit | 127);
        wire.extend_from_slice(&claimed.to_be_bytes());
    }
    if masked {
        wire.extend_from_slice(&key);
    }
    let body = wire.len();
    wire.extend_from_slice(&payload);
    if masked {
        for (i, b) in wire[body..].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    if flags & 0x07 == 5 {
        // Flip one bit somewhere in the frame.
        let at = start + usize::from(key[1]) % (wire.len() - start);
        wire[at] ^= 1 << (key[2] % 8);
    }
}

/// Input: server policy byte, session limits, final chunk size, the head (see [`build_head`]),
/// then up to 48 operations: client frames and raw bytes queued on the wire, deliveries of the
/// next bytes of the wire, clock ticks, server sends and server-initiated closes.
pub fn check_connection(data: &[u8]) {
    run_connection(data).finish();
}

/// Decodes and runs a connection input (all but the end-of-input checks).
pub fn run_connection(data: &[u8]) -> Connection {
    let mut r = Reader::new(data);
    let policy_byte = r.u8();
    let policy = policy_from(policy_byte);
    let max_head = max_head_from(policy_byte);
    let limits = r.u8();
    let config = SessionConfig {
        max_message_size: [0, 125, 1000, 4096][usize::from(limits & 3)],
        ping_interval: if limits & 4 != 0 { Some(1_000) } else { None },
        pong_wait: if limits & 8 != 0 { Some(3_000) } else { None },
        close_timeout: if limits & 16 != 0 { 500 } else { 5_000 },
    };
    let final_chunk = usize::from(r.u8()) + 1;
    let mut wire = build_head(&mut r);
    let mut ops = Vec::new();
    for _ in 0..48 {
        if r.is_empty() {
            break;
        }
        let tag = r.u8();
        let op = match tag % 8 {
            0..=2 => {
                build_frame(&mut r, &mut wire);
                continue;
            }
            3 => {
                wire.extend_from_slice(r.blob(32));
                continue;
            }
            4 => Op::Deliver(usize::from(r.u8()) + 1),
            5 => Op::Tick(u64::from(r.u16()) * 4),
            6 => Op::Send(tag & 0x80 != 0, String::from_utf8_lossy(r.blob(300)).into_owned()),
            _ => Op::Close(r.u16(), String::from_utf8_lossy(r.blob(140)).into_owned()),
        };
        ops.push(op);
    }
    let mut conn = Connection::new(policy, max_head, config);
    let mut sent = 0;
    for op in ops {
        match op {
            Op::Deliver(n) => {
                let end = (sent + n).min(wire.len());
                conn.read(&wire[sent..end]);
                sent = end;
            }
            Op::Tick(dt) => conn.tick(dt),
            Op::Send(binary, text) => conn.send(binary, &text),
            Op::Close(code, reason) => conn.close(code, &reason),
        }
    }
    for piece in wire[sent..].chunks(final_chunk) {
        conn.read(piece);
    }
    conn
}

enum Op {
    Deliver(usize),
    Tick(u64),
    Send(bool, String),
    Close(u16, String),
}

/// A whole sans-IO server connection, the way the I/O layer composes the protocol pieces:
/// head, then 101 and a session fed with the bytes after the head.
pub struct Connection {
    policy: UpgradePolicy,
    max_head: usize,
    config: SessionConfig,
    head_buf: Vec<u8>,
    /// Bytes written before the session (the HTTP response).
    response: Vec<u8>,
    outcome: Option<HeadOutcome>,
    driver: Option<Driver>,
    now: u64,
    /// Data frames the server sent through `Session::send`.
    sent_data: usize,
}

impl Connection {
    pub fn new(policy: UpgradePolicy, max_head: usize, config: SessionConfig) -> Connection {
        Connection {
            policy,
            max_head,
            config,
            head_buf: Vec::new(),
            response: Vec::new(),
            outcome: None,
            driver: None,
            now: 1_000,
            sent_data: 0,
        }
    }

    pub fn read(&mut self, bytes: &[u8]) {
        if let Some(driver) = &mut self.driver {
            driver.now = self.now;
            let _ = driver.feed(bytes);
            return;
        }
        if self.outcome.is_some() {
            return; // rejected: the connection is being closed, input is ignored
        }
        let outcome = drive_handshake(
            &mut self.head_buf,
            &mut std::iter::once(bytes),
            &self.policy,
            self.max_head,
            &mut self.response,
        );
        match outcome {
            HeadOutcome::Incomplete => {}
            HeadOutcome::Accepted { head_len, deflate } => {
                let mut driver = Driver::at(self.config.clone(), self.now);
                driver.session = Session::new(&self.config, self.now).with_deflate(deflate);
                let rest = self.head_buf[head_len..].to_vec();
                let _ = driver.feed(&rest);
                self.driver = Some(driver);
                self.outcome = Some(outcome);
            }
            other => self.outcome = Some(other),
        }
    }

    pub fn tick(&mut self, dt: u64) {
        self.now += dt;
        let Some(d) = &mut self.driver else { return };
        d.now = self.now;
        let due = d.session.next_timeout(&d.config);
        if due.is_some_and(|t| t <= self.now) {
            let was_closed = d.session.is_closed();
            let before = d.out.len();
            let outcome = d.session.handle_timeout(&d.config, &mut d.out, self.now);
            if outcome == TimerOutcome::Expired {
                assert!(d.session.is_closed(), "expired but not closed");
            }
            let written = parse_server_frames(&d.out[before..]);
            assert!(written.len() <= 1, "one frame per timeout at most");
            if was_closed {
                assert!(written.is_empty());
            }
        }
    }

    pub fn send(&mut self, binary: bool, text: &str) {
        let Some(d) = &mut self.driver else { return };
        let before = d.out.len();
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        let ok = d.session.send(&mut d.out, opcode, text.as_bytes());
        assert_eq!(ok, d.session.can_send());
        if ok {
            self.sent_data += 1;
            let frames = parse_server_frames(&d.out[before..]);
            assert_eq!(frames, [OutFrame { fin: true, opcode, payload: text.as_bytes().to_vec() }]);
        } else {
            assert_eq!(d.out.len(), before, "data sent after a close");
        }
    }

    pub fn close(&mut self, code: u16, reason: &str) {
        let Some(d) = &mut self.driver else { return };
        let code = if close::is_valid_on_wire(code) { code } else { 1000 };
        let was_open = d.session.can_send();
        let before = d.out.len();
        let ok = d.session.close(&d.config, &mut d.out, code, reason, self.now);
        assert_eq!(ok, was_open);
        assert!(!d.session.can_send());
        let frames = parse_server_frames(&d.out[before..]);
        assert_eq!(frames.len(), usize::from(ok));
        if ok {
            assert_eq!(frames[0].payload[..2], code.to_be_bytes());
            assert!(reason.as_bytes().starts_with(&frames[0].payload[2..]), "reason not a prefix");
        }
    }

    /// A one-line account of where the connection got to (for debugging inputs).
    pub fn summary(&self) -> String {
        let outcome = match &self.outcome {
            None | Some(HeadOutcome::Incomplete) => "head incomplete".to_string(),
            Some(HeadOutcome::Rejected(s)) => format!("rejected {s}"),
            Some(HeadOutcome::PlainHttp) => "plain http".to_string(),
            Some(HeadOutcome::Accepted { .. }) => "accepted".to_string(),
        };
        match &self.driver {
            None => outcome,
            Some(d) => format!(
                "{outcome}; events {:?}; error {:?}; open {} closed {}; out {} bytes",
                d.events.iter().map(|e| format!("{e:.40?}")).collect::<Vec<_>>(),
                d.error,
                d.session.can_send(),
                d.session.is_closed(),
                d.out.len()
            ),
        }
    }

    /// End-of-input checks: everything written parses, and the state agrees with it.
    pub fn finish(mut self) {
        let Some(mut d) = self.driver.take() else {
            match self.outcome {
                None | Some(HeadOutcome::Incomplete) => assert!(self.response.is_empty()),
                Some(_) => {
                    let response = parse_response(&self.response);
                    assert_ne!(response.status, 101);
                    assert_eq!(response.len, self.response.len(), "bytes after a refusal");
                }
            }
            return;
        };
        let response = parse_response(&self.response);
        assert_eq!(response.status, 101);
        assert_eq!(response.len, self.response.len());
        // Let every timer run out: the session must come to an end by itself.
        for _ in 0..8 {
            if let Some(t) = d.session.next_timeout(&d.config) {
                let t = t.max(self.now);
                self.now = t;
                d.session.handle_timeout(&d.config, &mut d.out, t);
            }
        }
        let frames = parse_server_frames(&d.out);
        let closes = frames.iter().filter(|f| f.opcode == OpCode::Close).count();
        assert_eq!(closes, usize::from(!d.session.can_send()), "one close frame iff not open");
        if d.session.is_closed() {
            assert_eq!(d.session.next_timeout(&d.config), None);
            let mut more = Vec::new();
            assert!(!d.session.send(&mut more, OpCode::Text, b"late"));
            assert_eq!(d.session.handle_timeout(&d.config, &mut more, u64::MAX), TimerOutcome::Expired);
            assert!(more.is_empty(), "a closed session wrote more");
        } else if d.config.pong_wait.is_some() || !d.session.can_send() {
            panic!("a session with a deadline outlived it: {:?}", d.session);
        }
        let data_frames = frames.iter().filter(|f| matches!(f.opcode, OpCode::Text | OpCode::Binary)).count();
        assert_eq!(data_frames, self.sent_data);
        let pings = d.events.iter().filter(|e| matches!(e, Ev::Ping(_))).count();
        let pongs = frames.iter().filter(|f| f.opcode == OpCode::Pong).count();
        assert_eq!(pongs, pings, "every delivered ping was answered");
    }
}
