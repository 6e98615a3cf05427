//! RFC 6455 conformance of the real `wshub` binary, over real sockets, in every mode.
//!
//! Autobahn checks `--echo`; these tests check the same rules against `--echo` AND the JSON hub
//! wherever a rule does not depend on the mode (framing, control frames, close, UTF-8, limits),
//! so a regression in either path shows up in `cargo test`. Every frame is built byte by byte
//! here (not with the crate's own writer), and every server frame is checked strictly as it is
//! read (unmasked, RSV clear, minimal length, control frames whole and short).
//!
//! Sections follow the Autobahn layout: `s1_framing_`, `s2_pings_`, `s3_reserved_bits_`,
//! `s4_opcodes_`, `s5_fragmentation_`, `s6_utf8_`, `s7_close_`, `s9_limits_` / `s9_large_`,
//! plus `rfc4_handshake_` for the opening handshake.
//!
//! In hub mode a text message is a JSON `ping` whose `id` carries the test's bytes; the hub
//! echoes the id byte for byte in its `pong`, so content still arrives checked end to end. A
//! binary message in hub mode gets a JSON error reply (the hub refuses binary data).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, read_head, read_to_close, status_of, upgrade_request, ServerProc, KEY};

// ----- frames, built by hand -----

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// A masking key with every byte different and no zero byte, so a missed unmask shows.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// `Sec-WebSocket-Accept` for the RFC's sample key `dGhlIHNhbXBsZSBub25jZQ==` (section 1.3).
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A masked frame header for `len` payload bytes with the minimal length encoding.
fn header(b0: u8, len: u64) -> Vec<u8> {
    let mut h = vec![b0];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&MASK);
    h
}

fn masked_payload(payload: &[u8]) -> impl Iterator<Item = u8> + '_ {
    payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4])
}

/// A whole masked frame with first byte `b0` (FIN, RSV bits and opcode as given).
fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = header(b0, payload.len() as u64);
    f.extend(masked_payload(payload));
    f
}

/// A single-frame message.
fn msg(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(FIN | opcode, payload)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

// ----- deterministic randomness -----

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that are safe inside a JSON string (and plain ASCII), varied by `seed`.
fn ascii_pattern(len: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_.:";
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect()
}

/// Every byte value, in a seed-dependent order.
fn binary_pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

// ----- writing in pieces -----

#[derive(Clone, Copy, Debug)]
enum Chop {
    /// One `write_all`.
    Whole,
    /// One byte per write (the first bytes with a short pause, so they arrive apart).
    Bytes,
    /// Writes of 1..=max bytes, sizes drawn from the seed.
    Random { seed: u64, max: usize },
    /// Writes of exactly this many bytes (the last may be shorter).
    Fixed(usize),
}

fn send(s: &mut TcpStream, bytes: &[u8], chop: Chop) {
    let pause = |i: usize| {
        if i < 48 {
            std::thread::sleep(Duration::from_micros(150));
        }
    };
    match chop {
        Chop::Whole => s.write_all(bytes).expect("write"),
        Chop::Bytes => {
            for (i, b) in bytes.iter().enumerate() {
                s.write_all(std::slice::from_ref(b)).expect("write");
                pause(i);
            }
        }
        Chop::Random { seed, max } => {
            let mut rng = Rng(seed | 1);
            let mut rest = bytes;
            let mut i = 0;
            while !rest.is_empty() {
                let n = (1 + rng.below(max)).min(rest.len());
                s.write_all(&rest[..n]).expect("write");
                rest = &rest[n..];
                pause(i);
                i += 1;
            }
        }
        Chop::Fixed(n) => {
            for (i, piece) in bytes.chunks(n).enumerate() {
                s.write_all(piece).expect("write");
                pause(i);
            }
        }
    }
}

// ----- reading, strictly -----

/// How [`read_got`] reports a connection that ended (FIN or reset) before a frame began.
const END: &str = "connection ended";

#[derive(Debug)]
struct Got {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Got {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one server frame, checking what RFC 6455 section 5 demands of a server's frames.
/// `Err` says how the stream ended instead (EOF, reset, timeout).
fn read_got(s: &mut TcpStream) -> Result<Got, String> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => format!("{END}: {e}"),
        _ => format!("no frame: {e}"),
    })?;
    assert_eq!(h[0] & 0x70, 0, "server frame with RSV bits set: {:#04x}", h[0]);
    assert_eq!(h[1] & 0x80, 0, "server frame is masked (section 5.1)");
    let opcode = h[0] & 0x0f;
    assert!(matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10), "server frame with reserved opcode {opcode}");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).map_err(|e| format!("cut in header: {e}"))?;
            let n = u64::from(u16::from_be_bytes(b));
            assert!(n >= 126, "server used a non-minimal 16-bit length for {n}");
            n
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).map_err(|e| format!("cut in header: {e}"))?;
            let n = u64::from_be_bytes(b);
            assert!(n > 0xffff && n >> 63 == 0, "server used a bad 64-bit length {n}");
            n
        }
        n => u64::from(n),
    };
    if opcode >= 8 {
        assert!(h[0] & FIN != 0, "server sent a fragmented control frame");
        assert!(len <= 125, "server sent a control frame of {len} bytes");
    }
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).map_err(|e| format!("cut in payload of {len}: {e}"))?;
    Ok(Got { fin: h[0] & FIN != 0, opcode, payload })
}

fn next_frame(s: &mut TcpStream, ctx: &str) -> Got {
    read_got(s).unwrap_or_else(|e| panic!("{ctx}: expected a frame, {e}"))
}

/// What a message must be answered with.
#[derive(Clone, Debug)]
enum Reply {
    /// This exact frame (unfragmented).
    Exact(u8, Vec<u8>),
    /// A hub error message (`{"type":"error",...}`).
    HubError,
}

fn describe(payload: &[u8]) -> String {
    if payload.len() <= 64 {
        format!("{:?}", String::from_utf8_lossy(payload))
    } else {
        format!("{} bytes starting {:?}", payload.len(), String::from_utf8_lossy(&payload[..64]))
    }
}

fn expect_reply(s: &mut TcpStream, reply: &Reply, ctx: &str) {
    let got = next_frame(s, ctx);
    match reply {
        Reply::Exact(opcode, payload) => {
            assert_eq!(got.opcode, *opcode, "{ctx}: opcode; payload {}", describe(&got.payload));
            assert!(got.fin, "{ctx}: reply not a whole frame");
            if got.payload != *payload {
                let at = got.payload.iter().zip(payload).position(|(a, b)| a != b);
                panic!(
                    "{ctx}: payload differs (got {} bytes, want {}, first difference at {:?}): got {}",
                    got.payload.len(),
                    payload.len(),
                    at,
                    describe(&got.payload)
                );
            }
        }
        Reply::HubError => {
            assert_eq!(got.opcode, TEXT, "{ctx}: hub error reply opcode");
            let text = String::from_utf8(got.payload).expect("hub replies are UTF-8");
            assert!(text.starts_with("{\"type\":\"error\""), "{ctx}: expected a hub error, got {text}");
        }
    }
}

fn expect_pong(s: &mut TcpStream, payload: &[u8], ctx: &str) {
    expect_reply(s, &Reply::Exact(PONG, payload.to_vec()), ctx);
}

/// The stream ends cleanly (FIN; a reset counts too) within the read timeout, and nothing
/// else arrives first.
fn expect_eof(s: &mut TcpStream, ctx: &str) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{ctx}: the server did not close the TCP connection: {e}"),
    }
    assert!(
        rest.is_empty(),
        "{ctx}: {} unexpected bytes before EOF: {:02x?}",
        rest.len(),
        &rest[..rest.len().min(32)]
    );
}

/// The next frame is a close with `code` and the server then closes TCP, sending nothing more.
fn expect_close(s: &mut TcpStream, code: u16, ctx: &str) {
    let got = next_frame(s, ctx);
    assert_eq!(
        got.opcode,
        CLOSE,
        "{ctx}: expected close {code}, got opcode {} {}",
        got.opcode,
        describe(&got.payload)
    );
    assert!(got.payload.len() >= 2, "{ctx}: close without a code");
    let sent = u16::from_be_bytes([got.payload[0], got.payload[1]]);
    assert_eq!(sent, code, "{ctx}: close code; reason {}", describe(&got.payload[2..]));
    assert!(std::str::from_utf8(&got.payload[2..]).is_ok(), "{ctx}: close reason not UTF-8");
    expect_eof(s, ctx);
}

/// The next frame is a close with exactly `payload` (code, no reason), then TCP closes.
fn expect_close_exactly(s: &mut TcpStream, payload: &[u8], ctx: &str) {
    let got = next_frame(s, ctx);
    assert_eq!(
        got.opcode,
        CLOSE,
        "{ctx}: expected a close, got opcode {} {}",
        got.opcode,
        describe(&got.payload)
    );
    assert_eq!(got.payload, payload, "{ctx}: close payload");
    expect_eof(s, ctx);
}

// ----- modes -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Echo,
    Hub,
}

const MODES: [Mode; 2] = [Mode::Echo, Mode::Hub];

/// `{"type":"ping","id":""}`: what a hub probe adds around its body.
const HUB_OVERHEAD: usize = 23;

impl Mode {
    fn server(self, extra: &[&str]) -> ServerProc {
        let mut args = extra.to_vec();
        if self == Mode::Echo {
            args.push("--echo");
        }
        ServerProc::start(&args)
    }

    /// A text message carrying `body` (bytes safe inside a JSON string; possibly invalid
    /// UTF-8, for tests that expect a refusal) and the reply due when it is valid.
    fn text(self, body: &[u8]) -> (Vec<u8>, Reply) {
        match self {
            Mode::Echo => (body.to_vec(), Reply::Exact(TEXT, body.to_vec())),
            Mode::Hub => {
                let wrap = |kind: &str| {
                    let mut m = format!("{{\"type\":\"{kind}\",\"id\":\"").into_bytes();
                    m.extend_from_slice(body);
                    m.extend_from_slice(b"\"}");
                    m
                };
                (wrap("ping"), Reply::Exact(TEXT, wrap("pong")))
            }
        }
    }

    /// A text message of exactly `len` bytes and its reply.
    fn text_of_len(self, len: usize, seed: u64) -> (Vec<u8>, Reply) {
        match self {
            Mode::Echo => self.text(&ascii_pattern(len, seed)),
            Mode::Hub if len >= HUB_OVERHEAD => self.text(&ascii_pattern(len - HUB_OVERHEAD, seed)),
            Mode::Hub if len >= 15 => {
                let mut m = b"{\"type\":\"ping\"}".to_vec();
                m.resize(len, b' ');
                (m, Reply::Exact(TEXT, b"{\"type\":\"pong\"}".to_vec()))
            }
            // Too short for any JSON object: the hub answers with an error, still a reply.
            Mode::Hub => (vec![b' '; len], Reply::HubError),
        }
    }

    /// The reply to a binary message.
    fn binary_reply(self, data: &[u8]) -> Reply {
        match self {
            Mode::Echo => Reply::Exact(BINARY, data.to_vec()),
            Mode::Hub => Reply::HubError,
        }
    }

    /// A small valid text message that gets a reply: proves the connection still works.
    fn probe(self, seed: u64) -> (Vec<u8>, Reply) {
        let (payload, reply) = self.text(&ascii_pattern(12, seed));
        (msg(TEXT, &payload), reply)
    }
}

fn ws_connect(server: &ServerProc) -> TcpStream {
    let mut s = connect(server.addr);
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "handshake failed: {head}");
    s
}

/// Sends a valid message and then `bad` on a fresh connection, in one write: the valid
/// message is answered, then the connection fails with `code`.
fn valid_then_violation(server: &ServerProc, mode: Mode, bad: &[u8], code: u16, ctx: &str) {
    let mut s = ws_connect(server);
    let (probe, reply) = mode.probe(7);
    s.write_all(&concat(&[probe, bad.to_vec()])).unwrap();
    expect_reply(&mut s, &reply, &format!("{ctx}: the valid message before"));
    expect_close(&mut s, code, ctx);
}

/// Sends `bad` as the first thing on a fresh connection: the connection fails with `code`.
fn violation(server: &ServerProc, bad: &[u8], code: u16, ctx: &str) {
    let mut s = ws_connect(server);
    s.write_all(bad).unwrap();
    expect_close(&mut s, code, ctx);
}

// ===== section 1: framing =====

const FRAMING_LENGTHS: [usize; 7] = [0, 125, 126, 127, 128, 65535, 65536];

/// Every framing length, text and binary, on one connection, sent with `chop`.
fn framing_lengths(chop: Chop) {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        for (i, &len) in FRAMING_LENGTHS.iter().enumerate() {
            let seed = i as u64 + 1;
            let (text, reply) = mode.text_of_len(len, seed);
            assert_eq!(text.len(), len);
            send(&mut s, &msg(TEXT, &text), chop);
            expect_reply(&mut s, &reply, &format!("{mode:?} text of {len} bytes, {chop:?}"));
            let data = binary_pattern(len, seed);
            send(&mut s, &msg(BINARY, &data), chop);
            expect_reply(
                &mut s,
                &mode.binary_reply(&data),
                &format!("{mode:?} binary of {len} bytes, {chop:?}"),
            );
        }
    }
}

#[test]
fn s1_framing_lengths_in_one_write() {
    framing_lengths(Chop::Whole);
}

#[test]
fn s1_framing_lengths_byte_by_byte() {
    framing_lengths(Chop::Bytes);
}

#[test]
fn s1_framing_lengths_in_random_chunks() {
    framing_lengths(Chop::Random { seed: 0x5eed_0001, max: 7 });
    framing_lengths(Chop::Random { seed: 0x5eed_0002, max: 3000 });
}

#[test]
fn s1_framing_all_lengths_in_one_write_answered_in_order() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let mut batch = Vec::new();
        let mut replies = Vec::new();
        for (i, &len) in FRAMING_LENGTHS.iter().enumerate() {
            let (text, reply) = mode.text_of_len(len, 100 + i as u64);
            batch.extend(msg(TEXT, &text));
            replies.push((len, reply));
        }
        s.write_all(&batch).unwrap();
        for (len, reply) in replies {
            expect_reply(&mut s, &reply, &format!("{mode:?} batched text of {len} bytes"));
        }
    }
}

#[test]
fn s1_framing_non_minimal_lengths_are_refused() {
    // Policy: section 5.2's "minimal number of bytes MUST be used" is enforced (1002).
    let mut five_in_16 = vec![FIN | TEXT, 0x80 | 126, 0, 5];
    five_in_16.extend_from_slice(&MASK);
    five_in_16.extend(masked_payload(b"hello"));
    let mut five_in_64 = vec![FIN | TEXT, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5];
    five_in_64.extend_from_slice(&MASK);
    five_in_64.extend(masked_payload(b"hello"));
    let mut max16_in_64 = vec![FIN | BINARY, 0x80 | 127];
    max16_in_64.extend_from_slice(&0xffffu64.to_be_bytes());
    max16_in_64.extend_from_slice(&MASK); // header only: refused before any payload
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, bad) in
            [("5 in 16 bits", &five_in_16), ("5 in 64 bits", &five_in_64), ("65535 in 64 bits", &max16_in_64)]
        {
            valid_then_violation(&server, mode, bad, 1002, &format!("{mode:?} {name}"));
        }
    }
}

#[test]
fn s1_framing_64_bit_length_with_top_bit_set_is_refused() {
    let mut bad = vec![FIN | BINARY, 0x80 | 127];
    bad.extend_from_slice(&(1u64 << 63 | 16).to_be_bytes());
    bad.extend_from_slice(&MASK);
    for mode in MODES {
        let server = mode.server(&[]);
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} length 2^63+16"));
    }
}

#[test]
fn s1_framing_unmasked_client_frame_is_refused() {
    // Section 5.1: a server MUST close the connection on an unmasked client frame.
    for mode in MODES {
        let server = mode.server(&[]);
        valid_then_violation(
            &server,
            mode,
            &[FIN | TEXT, 2, b'h', b'i'],
            1002,
            &format!("{mode:?} unmasked text"),
        );
        valid_then_violation(&server, mode, &[FIN | PING, 0], 1002, &format!("{mode:?} unmasked ping"));
    }
}

// ===== section 2: pings and pongs =====

#[test]
fn s2_pings_empty_payload_echoed_in_pong() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        s.write_all(&msg(PING, b"")).unwrap();
        expect_pong(&mut s, b"", &format!("{mode:?} empty ping"));
    }
}

#[test]
fn s2_pings_125_byte_payload_echoed_in_pong_whole_and_chopped() {
    let payload = ascii_pattern(125, 2);
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        for chop in [Chop::Whole, Chop::Bytes, Chop::Random { seed: 3, max: 9 }] {
            send(&mut s, &msg(PING, &payload), chop);
            expect_pong(&mut s, &payload, &format!("{mode:?} 125-byte ping, {chop:?}"));
        }
    }
}

#[test]
fn s2_pings_126_byte_payload_is_refused() {
    // Section 5.5: control frames carry at most 125 bytes.
    let too_long = msg(PING, &[b'x'; 126]);
    assert_eq!(too_long[1] & 0x7f, 126);
    for mode in MODES {
        let server = mode.server(&[]);
        valid_then_violation(&server, mode, &too_long, 1002, &format!("{mode:?} 126-byte ping"));
        valid_then_violation(
            &server,
            mode,
            &too_long[..4],
            1002,
            &format!("{mode:?} 126-byte ping header only"),
        );
        valid_then_violation(
            &server,
            mode,
            &msg(PONG, &[b'x'; 126]),
            1002,
            &format!("{mode:?} 126-byte pong"),
        );
        let mut long64 = vec![FIN | PING, 0x80 | 127];
        long64.extend_from_slice(&70_000u64.to_be_bytes());
        valid_then_violation(&server, mode, &long64, 1002, &format!("{mode:?} ping with a 64-bit length"));
    }
}

#[test]
fn s2_pings_unsolicited_pong_is_ignored() {
    // Section 5.5.3: an unsolicited pong needs no response.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (probe, reply) = mode.probe(11);
        s.write_all(&concat(&[msg(PONG, b""), msg(PONG, b"unsolicited"), probe])).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} first frame after two pongs"));
    }
}

#[test]
fn s2_pings_ten_in_a_row_all_answered_in_order() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("ping #{i}").into_bytes()).collect();
        let batch: Vec<u8> = payloads.iter().flat_map(|p| msg(PING, p)).collect();
        s.write_all(&batch).unwrap();
        for p in &payloads {
            expect_pong(&mut s, p, &format!("{mode:?} batched {}", String::from_utf8_lossy(p)));
        }
        // And ten sent apart, each answered before the next is sent.
        for p in &payloads {
            s.write_all(&msg(PING, p)).unwrap();
            expect_pong(&mut s, p, &format!("{mode:?} separate {}", String::from_utf8_lossy(p)));
        }
    }
}

#[test]
fn s2_pings_binary_payload_echoed_in_pong() {
    let mut payload: Vec<u8> = vec![0x00, 0xff, 0xfe, 0xc0, 0x80, 0xed, 0xa0, 0x80];
    payload.extend(binary_pattern(117, 9));
    assert_eq!(payload.len(), 125);
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        s.write_all(&msg(PING, &payload)).unwrap();
        expect_pong(&mut s, &payload, &format!("{mode:?} binary ping"));
    }
}

#[test]
fn s2_pings_pong_comes_before_replies_to_later_messages() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (probe, reply) = mode.probe(13);
        s.write_all(&concat(&[msg(PING, b"first"), probe])).unwrap();
        expect_pong(&mut s, b"first", &format!("{mode:?} ping then text"));
        expect_reply(&mut s, &reply, &format!("{mode:?} the text after the ping"));
    }
}

// ===== section 3: reserved bits =====

/// Section 5.2: with no extension negotiated, a nonzero RSV bit MUST fail the connection.
fn reserved_bits_on(opcode: u8, payload: &[u8]) {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, bits) in [
            ("RSV1", RSV1),
            ("RSV2", RSV2),
            ("RSV3", RSV3),
            ("RSV1+RSV3", RSV1 | RSV3),
            ("all", RSV1 | RSV2 | RSV3),
        ] {
            let bad = frame(FIN | bits | opcode, payload);
            valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} {name} on opcode {opcode}"));
        }
    }
}

#[test]
fn s3_reserved_bits_on_text() {
    reserved_bits_on(TEXT, b"Hello, world!");
}

#[test]
fn s3_reserved_bits_on_binary() {
    reserved_bits_on(BINARY, &[0, 1, 2, 0xff]);
}

#[test]
fn s3_reserved_bits_on_ping() {
    reserved_bits_on(PING, b"ping");
}

#[test]
fn s3_reserved_bits_on_close() {
    reserved_bits_on(CLOSE, &close_payload(1000, b""));
}

#[test]
fn s3_reserved_bits_on_continuation_of_a_fragmented_message() {
    for mode in MODES {
        let server = mode.server(&[]);
        let (text, _) = mode.text(b"fragmented");
        let (a, b) = text.split_at(4);
        let bad = concat(&[frame(TEXT, a), frame(FIN | RSV2 | CONT, b)]);
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} RSV2 on a continuation"));
    }
}

// ===== section 4: opcodes =====

#[test]
fn s4_opcodes_reserved_data_opcodes_3_to_7_are_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        for opcode in 3..=7u8 {
            for payload in [&b""[..], b"reserved"] {
                let bad = msg(opcode, payload);
                let ctx = format!("{mode:?} opcode {opcode} with {} bytes", payload.len());
                valid_then_violation(&server, mode, &bad, 1002, &ctx);
            }
        }
    }
}

#[test]
fn s4_opcodes_reserved_control_opcodes_11_to_15_are_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        for opcode in 11..=15u8 {
            for payload in [&b""[..], b"reserved"] {
                let bad = msg(opcode, payload);
                let ctx = format!("{mode:?} opcode {opcode} with {} bytes", payload.len());
                valid_then_violation(&server, mode, &bad, 1002, &ctx);
            }
        }
    }
}

#[test]
fn s4_opcodes_reserved_opcode_inside_a_fragmented_message_is_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        let (text, _) = mode.text(b"fragmented");
        let bad = concat(&[frame(TEXT, &text[..3]), msg(0x3, b"x"), frame(FIN | CONT, &text[3..])]);
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} opcode 3 between fragments"));
    }
}

// ===== section 5: fragmentation =====

/// Splits `payload` into frames at `cuts` (positions), first with `opcode`, FIN on the last.
fn fragments(opcode: u8, payload: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(payload.len());
    let n = bounds.len() - 1;
    (0..n)
        .map(|i| {
            let op = if i == 0 { opcode } else { CONT };
            let fin = if i == n - 1 { FIN } else { 0 };
            frame(fin | op, &payload[bounds[i]..bounds[i + 1]])
        })
        .collect()
}

#[test]
fn s5_fragmentation_text_and_binary_in_fragments_arrive_whole() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text(&ascii_pattern(300, 21));
        for (name, cuts) in [("two", vec![100]), ("three", vec![1, 299]), ("four", vec![10, 130, 131])] {
            for chop in [Chop::Whole, Chop::Random { seed: 22, max: 17 }] {
                send(&mut s, &concat(&fragments(TEXT, &text, &cuts)), chop);
                expect_reply(&mut s, &reply, &format!("{mode:?} text in {name} fragments, {chop:?}"));
            }
        }
        let data = binary_pattern(300, 23);
        send(&mut s, &concat(&fragments(BINARY, &data, &[150])), Chop::Whole);
        expect_reply(&mut s, &mode.binary_reply(&data), &format!("{mode:?} binary in two fragments"));
    }
}

#[test]
fn s5_fragmentation_ping_between_fragments_answered_first() {
    // Section 5.4: control frames may be injected in the middle of a fragmented message.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text(b"fragmented with pings in between");
        let f = fragments(TEXT, &text, &[5, 20]);
        let bytes = concat(&[f[0].clone(), msg(PING, b"one"), f[1].clone(), msg(PING, b"two"), f[2].clone()]);
        for chop in [Chop::Whole, Chop::Bytes] {
            send(&mut s, &bytes, chop);
            expect_pong(&mut s, b"one", &format!("{mode:?} first pong, {chop:?}"));
            expect_pong(&mut s, b"two", &format!("{mode:?} second pong, {chop:?}"));
            expect_reply(&mut s, &reply, &format!("{mode:?} the message after its pings, {chop:?}"));
        }
        // Sent apart: the pong arrives while the message is still unfinished.
        s.write_all(&concat(&[f[0].clone(), msg(PING, b"mid")])).unwrap();
        expect_pong(&mut s, b"mid", &format!("{mode:?} pong during an unfinished message"));
        s.write_all(&concat(&[f[1].clone(), f[2].clone()])).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} message finished after the pong"));
    }
}

#[test]
fn s5_fragmentation_pong_between_fragments_ignored() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text(b"fragmented with a pong in between");
        let f = fragments(TEXT, &text, &[9]);
        s.write_all(&concat(&[f[0].clone(), msg(PONG, b"unsolicited"), f[1].clone()])).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} message after an interleaved pong"));
    }
}

#[test]
fn s5_fragmentation_continuation_without_a_start_is_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, bad) in [
            ("final continuation", msg(CONT, b"orphan")),
            ("non-final continuation", frame(CONT, b"orphan")),
            ("empty continuation", msg(CONT, b"")),
        ] {
            let ctx = format!("{mode:?} {name}");
            violation(&server, &bad, 1002, &format!("{ctx} as first frame"));
            // The valid message before has ended, so this is a continuation after a whole
            // message: no message is open either.
            valid_then_violation(&server, mode, &bad, 1002, &format!("{ctx} after a whole message"));
        }
    }
}

#[test]
fn s5_fragmentation_new_data_message_while_fragmented_is_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, second) in [
            ("whole text", msg(TEXT, b"x")),
            ("whole binary", msg(BINARY, b"x")),
            ("text start", frame(TEXT, b"x")),
            ("empty text", msg(TEXT, b"")),
        ] {
            let bad = concat(&[frame(TEXT, b"unfinished"), second]);
            valid_then_violation(
                &server,
                mode,
                &bad,
                1002,
                &format!("{mode:?} {name} inside a text message"),
            );
        }
        let bad = concat(&[frame(BINARY, b"unfinished"), msg(BINARY, b"x")]);
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} binary inside a binary message"));
        let bad = concat(&[frame(BINARY, b"unfinished"), msg(TEXT, b"x")]);
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} text inside a binary message"));
    }
}

#[test]
fn s5_fragmentation_fragmented_control_frames_are_refused() {
    // Section 5.5: control frames MUST NOT be fragmented.
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, bad) in [
            ("ping", concat(&[frame(PING, b"a"), msg(CONT, b"b")])),
            ("pong", concat(&[frame(PONG, b"a"), msg(CONT, b"b")])),
            ("close", concat(&[frame(CLOSE, &close_payload(1000, b"")), msg(CONT, b"")])),
            ("ping header only", frame(PING, b"")[..2].to_vec()),
        ] {
            valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} fragmented {name}"));
        }
    }
}

#[test]
fn s5_fragmentation_many_one_byte_fragments() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text(&ascii_pattern(200, 31));
        let cuts: Vec<usize> = (1..text.len()).collect();
        let bytes = concat(&fragments(TEXT, &text, &cuts));
        for chop in [Chop::Whole, Chop::Bytes, Chop::Random { seed: 32, max: 11 }] {
            send(&mut s, &bytes, chop);
            expect_reply(&mut s, &reply, &format!("{mode:?} {} one-byte fragments, {chop:?}", text.len()));
        }
        let data = binary_pattern(100, 33);
        let cuts: Vec<usize> = (1..data.len()).collect();
        s.write_all(&concat(&fragments(BINARY, &data, &cuts))).unwrap();
        expect_reply(&mut s, &mode.binary_reply(&data), &format!("{mode:?} binary in one-byte fragments"));
    }
}

#[test]
fn s5_fragmentation_empty_fragments() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text(b"middle");
        let cases: Vec<(&str, Vec<u8>, Reply)> = vec![
            (
                "empty start, data, empty end",
                concat(&[frame(TEXT, b""), frame(CONT, &text), msg(CONT, b"")]),
                reply.clone(),
            ),
            (
                "empty fragments everywhere",
                concat(&[
                    frame(TEXT, b""),
                    frame(CONT, b""),
                    frame(CONT, &text[..2]),
                    frame(CONT, b""),
                    frame(CONT, &text[2..]),
                    msg(CONT, b""),
                ]),
                reply.clone(),
            ),
            (
                "binary, all empty",
                concat(&[frame(BINARY, b""), frame(CONT, b""), msg(CONT, b"")]),
                mode.binary_reply(b""),
            ),
        ];
        for (name, bytes, reply) in cases {
            s.write_all(&bytes).unwrap();
            expect_reply(&mut s, &reply, &format!("{mode:?} {name}"));
        }
        if mode == Mode::Echo {
            // All-empty text is the empty message (the hub would answer it with an error).
            s.write_all(&concat(&[frame(TEXT, b""), frame(CONT, b""), msg(CONT, b"")])).unwrap();
            expect_reply(&mut s, &Reply::Exact(TEXT, Vec::new()), "Echo text, all empty");
        }
    }
}

#[test]
fn s5_fragmentation_close_between_fragments_ends_the_connection_cleanly() {
    // A close is a control frame and may come mid-message; the unfinished message is dropped.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        s.write_all(&concat(&[frame(TEXT, b"never "), msg(CLOSE, &close_payload(1000, b"bye"))])).unwrap();
        expect_close_exactly(&mut s, &close_payload(1000, b""), &format!("{mode:?} close mid-message"));
    }
}

// ===== section 6: UTF-8 =====

/// Valid UTF-8 texts, none with characters JSON strings must escape.
fn valid_utf8_texts() -> Vec<Vec<u8>> {
    let strings = [
        "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!",
        "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}",
        "\u{7f} \u{80} \u{7ff} \u{800} \u{d7ff} \u{e000} \u{fffd} \u{ffff} \u{10000} \u{10ffff}",
        "\u{1f600}\u{1f4a9}\u{1f30d} emoji",
        "\u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30c6}\u{30ad}\u{30b9}\u{30c8}",
        "\u{feff}BOM is just a character",
    ];
    strings.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn s6_utf8_valid_multibyte_texts_echoed() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        for body in valid_utf8_texts() {
            let (text, reply) = mode.text(&body);
            s.write_all(&msg(TEXT, &text)).unwrap();
            expect_reply(&mut s, &reply, &format!("{mode:?} {}", String::from_utf8_lossy(&body)));
        }
    }
}

#[test]
fn s6_utf8_valid_text_split_inside_code_points() {
    // A code point cut between fragments (or between reads) is not an error.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        for body in valid_utf8_texts() {
            let (text, reply) = mode.text(&body);
            let name = String::from_utf8_lossy(&body).into_owned();
            let cuts: Vec<usize> = (1..text.len()).collect();
            s.write_all(&concat(&fragments(TEXT, &text, &cuts))).unwrap();
            expect_reply(&mut s, &reply, &format!("{mode:?} {name} in one-byte fragments"));
            send(&mut s, &msg(TEXT, &text), Chop::Bytes);
            expect_reply(&mut s, &reply, &format!("{mode:?} {name} in one frame, byte by byte"));
        }
    }
}

/// Invalid UTF-8 (each also invalid when complete: truncations sit at the very end).
fn invalid_utf8_sequences() -> Vec<(&'static str, Vec<u8>)> {
    let mut kosme_surrogate = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes().to_vec();
    kosme_surrogate.extend_from_slice(&[0xed, 0xa0, 0x80]);
    kosme_surrogate.extend_from_slice(b"edited");
    vec![
        ("0xff", vec![b'a', 0xff, b'b']),
        ("0xfe", vec![0xfe]),
        ("lone continuation byte", vec![b'a', 0x80, b'b']),
        ("overlong 2-byte NUL", vec![0xc0, 0x80]),
        ("overlong 2-byte 0xc1", vec![0xc1, 0xbf]),
        ("overlong 3-byte", vec![0xe0, 0x80, 0xaf]),
        ("overlong 4-byte", vec![0xf0, 0x8f, 0xbf, 0xbf]),
        ("surrogate U+D800", vec![0xed, 0xa0, 0x80]),
        ("surrogate U+DFFF", vec![0xed, 0xbf, 0xbf]),
        ("above U+10FFFF", vec![0xf4, 0x90, 0x80, 0x80]),
        ("0xf5 lead byte", vec![0xf5, 0x80, 0x80, 0x80]),
        ("5-byte form", vec![0xf8, 0x88, 0x80, 0x80, 0x80]),
        ("truncated 2-byte at end", vec![b'a', 0xc2]),
        ("truncated 3-byte at end", vec![b'a', 0xe2, 0x82]),
        ("truncated 4-byte at end", vec![b'a', 0xf0, 0x9f, 0x98]),
        ("lead byte then ASCII", vec![0xe2, b'a', b'b']),
        ("overlong 3-byte U+07FF", vec![0xe0, 0x9f, 0xbf]),
        ("4-byte sequence cut by ASCII", vec![0xf0, 0x9f, 0x98, b'A']),
        ("surrogate pair encoded separately", vec![0xed, 0xa0, 0xbd, 0xed, 0xb2, 0xa9]),
        ("kosme + surrogate + edited", kosme_surrogate),
    ]
}

#[test]
fn s6_utf8_invalid_sequences_refused_in_one_frame() {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, body) in invalid_utf8_sequences() {
            let (text, _) = mode.text(&body);
            valid_then_violation(&server, mode, &msg(TEXT, &text), 1007, &format!("{mode:?} {name}"));
        }
    }
}

#[test]
fn s6_utf8_invalid_sequences_refused_in_one_frame_sent_byte_by_byte() {
    // The frame is never whole in one read, so the incremental validator decides, including
    // for a sequence cut off by the end of the message.
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, body) in invalid_utf8_sequences() {
            let (text, _) = mode.text(&body);
            let mut s = ws_connect(&server);
            let (probe, reply) = mode.probe(8);
            s.write_all(&probe).unwrap();
            expect_reply(&mut s, &reply, "the valid message before");
            let bad = msg(TEXT, &text);
            for b in &bad {
                if s.write_all(std::slice::from_ref(b)).is_err() {
                    break; // refused before the end: fine, the close says why
                }
            }
            expect_close(&mut s, 1007, &format!("{mode:?} {name}, byte by byte"));
        }
    }
}

#[test]
fn s6_utf8_invalid_sequences_refused_in_one_byte_fragments() {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, body) in invalid_utf8_sequences() {
            let (text, _) = mode.text(&body);
            let cuts: Vec<usize> = (1..text.len()).collect();
            let bad = concat(&fragments(TEXT, &text, &cuts));
            valid_then_violation(&server, mode, &bad, 1007, &format!("{mode:?} {name}, fragmented"));
        }
    }
}

#[test]
fn s6_utf8_fail_fast_at_the_first_bad_fragment_of_an_unfinished_message() {
    // Section 8.1: an endpoint that finds invalid UTF-8 MUST fail the connection; the server
    // does so as soon as the bad bytes arrive, not at the end of the message.
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("bad second fragment", vec![frame(TEXT, b"valid "), frame(CONT, &[0xed, 0xa0, 0x80])]),
        ("bad first fragment", vec![frame(TEXT, &[b'a', 0xff])]),
        ("sequence completed wrongly", vec![frame(TEXT, &[b'a', 0xe0]), frame(CONT, &[0x80, b'x'])]),
        ("above U+10FFFF at its second byte", vec![frame(TEXT, b"x"), frame(CONT, &[0xf4, 0x90])]),
    ];
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, frames) in &cases {
            let mut s = ws_connect(&server);
            let ctx = format!("{mode:?} {name}");
            // Not wrapped in JSON: these bytes never complete a message, so the mode does not
            // matter and the hub must fail them just the same.
            for f in frames {
                s.write_all(f).unwrap();
            }
            // No final fragment was sent: the close must come anyway.
            expect_close(&mut s, 1007, &ctx);
        }
    }
}

#[test]
fn s6_utf8_fail_fast_inside_one_frame_sent_in_pieces() {
    // One text frame announcing 200 bytes; the payload is sent up to just past a bad byte, and
    // the close must arrive before the rest of the frame is sent.
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, bad_at, bad) in [
            ("0xff after 10 bytes", 10, vec![0xffu8]),
            ("surrogate after 50 bytes", 50, vec![0xed, 0xa0]),
            ("overlong after 0 bytes", 0, vec![0xc0, 0xaf]),
        ] {
            let mut payload = ascii_pattern(200, 41);
            payload[bad_at..bad_at + bad.len()].copy_from_slice(&bad);
            let whole = msg(TEXT, &payload);
            let header_len = whole.len() - payload.len();
            let cut = header_len + bad_at + bad.len();
            let mut s = ws_connect(&server);
            let ctx = format!("{mode:?} {name}");
            send(&mut s, &whole[..header_len], Chop::Whole);
            std::thread::sleep(Duration::from_millis(20));
            send(&mut s, &whole[header_len..cut], Chop::Random { seed: 42, max: 8 });
            expect_close(&mut s, 1007, &ctx);
            // The rest may be refused by now; that is fine.
            let _ = s.write_all(&whole[cut..]);
        }
    }
}

// ===== section 7: close =====

#[test]
fn s7_close_valid_codes_are_echoed_without_the_reason() {
    let valid = [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999];
    for mode in MODES {
        let server = mode.server(&[]);
        for code in valid {
            for reason in [&b""[..], b"a reason"] {
                let mut s = ws_connect(&server);
                s.write_all(&msg(CLOSE, &close_payload(code, reason))).unwrap();
                let ctx = format!("{mode:?} close {code} with reason {:?}", String::from_utf8_lossy(reason));
                expect_close_exactly(&mut s, &code.to_be_bytes(), &ctx);
            }
        }
    }
}

#[test]
fn s7_close_invalid_codes_are_refused() {
    // Section 7.4: 1004-1006 and 1015 are never sent on the wire; 0-999 are unused; 1012-2999
    // are reserved for future RFCs (policy: refused); 5000+ are not defined.
    let invalid =
        [0u16, 1, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535];
    for mode in MODES {
        let server = mode.server(&[]);
        for code in invalid {
            violation(
                &server,
                &msg(CLOSE, &close_payload(code, b"")),
                1002,
                &format!("{mode:?} close code {code}"),
            );
        }
    }
}

#[test]
fn s7_close_empty_payload_is_answered_with_1000() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        s.write_all(&msg(CLOSE, b"")).unwrap();
        expect_close_exactly(&mut s, &1000u16.to_be_bytes(), &format!("{mode:?} empty close"));
    }
}

#[test]
fn s7_close_one_byte_payload_is_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        for byte in [0x03u8, 0x00] {
            valid_then_violation(
                &server,
                mode,
                &msg(CLOSE, &[byte]),
                1002,
                &format!("{mode:?} close [{byte:#04x}]"),
            );
        }
    }
}

#[test]
fn s7_close_reason_that_is_not_utf8_is_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, reason) in [
            ("0xff", vec![b'o', 0xff]),
            ("surrogate", vec![0xed, 0xa0, 0x80]),
            ("truncated", vec![b'o', b'k', 0xe2, 0x82]),
        ] {
            let bad = msg(CLOSE, &close_payload(1000, &reason));
            valid_then_violation(&server, mode, &bad, 1007, &format!("{mode:?} close reason {name}"));
        }
    }
}

#[test]
fn s7_close_reason_of_123_bytes_is_accepted_and_124_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let mut reason = ascii_pattern(121, 51);
        reason.extend_from_slice("\u{e9}".as_bytes()); // end on a multi-byte character
        assert_eq!(reason.len(), 123);
        s.write_all(&msg(CLOSE, &close_payload(1000, &reason))).unwrap();
        expect_close_exactly(&mut s, &1000u16.to_be_bytes(), &format!("{mode:?} 123-byte reason"));
        // 124 bytes make a 126-byte control frame: too long (section 5.5).
        let bad = msg(CLOSE, &close_payload(1000, &ascii_pattern(124, 52)));
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} 124-byte reason"));
    }
}

#[test]
fn s7_close_data_after_close_is_ignored() {
    // Section 5.5.1: after sending a close, an endpoint sends no more data; the server answers
    // nothing that follows the client's close.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (probe, _) = mode.probe(61);
        let after = concat(&[probe, msg(PING, b"after close"), msg(BINARY, b"x"), msg(0x3, b"junk")]);
        s.write_all(&concat(&[msg(CLOSE, &close_payload(1000, b"")), after])).unwrap();
        // Only the close comes back, and then TCP ends: no reply, no pong, no error close.
        expect_close_exactly(&mut s, &1000u16.to_be_bytes(), &format!("{mode:?} frames after close"));
    }
}

#[test]
fn s7_close_server_closes_tcp_promptly_after_the_closing_handshake() {
    // Section 7.1.1: the server should close the TCP connection first, right after the close
    // handshake; the close timeout is set far away so only a prompt close passes.
    for mode in MODES {
        let server = mode.server(&["--close-timeout", "30"]);
        for (name, trigger, code) in [
            ("client-initiated close", msg(CLOSE, &close_payload(1000, b"")), 1000u16),
            ("protocol error", msg(0x4, b""), 1002),
            ("invalid UTF-8", msg(TEXT, &[0xff]), 1007),
        ] {
            let mut s = ws_connect(&server);
            let started = Instant::now();
            s.write_all(&trigger).unwrap();
            // The client never sends (another) close: the server must not wait for one.
            expect_close(&mut s, code, &format!("{mode:?} {name}"));
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{mode:?} {name}: TCP closed only after {:?}",
                started.elapsed()
            );
        }
    }
}

#[test]
fn s7_close_after_a_protocol_error_the_clients_close_reply_is_harmless() {
    // The client answers the server's error close with its own close, as a polite client does:
    // the server sends nothing more, and the TCP connection still ends cleanly.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        s.write_all(&msg(0xB, b"")).unwrap();
        let got = next_frame(&mut s, "error close");
        assert_eq!((got.opcode, got.payload.get(..2)), (CLOSE, Some(&1002u16.to_be_bytes()[..])));
        let _ = s.write_all(&msg(CLOSE, &close_payload(1002, b"")));
        expect_eof(&mut s, &format!("{mode:?} after the client's close reply"));
    }
}

// ===== section 9: limits and large messages =====

const SMALL_MAX: usize = 1000;

#[test]
fn s9_limits_message_of_exactly_the_maximum_is_accepted() {
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "1000"]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text_of_len(SMALL_MAX, 71);
        s.write_all(&msg(TEXT, &text)).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} text of exactly the maximum"));
        s.write_all(&concat(&fragments(TEXT, &text, &[1, 600, 999]))).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} fragmented text of exactly the maximum"));
        let data = binary_pattern(SMALL_MAX, 72);
        s.write_all(&msg(BINARY, &data)).unwrap();
        expect_reply(&mut s, &mode.binary_reply(&data), &format!("{mode:?} binary of exactly the maximum"));
    }
}

#[test]
fn s9_limits_one_byte_over_the_maximum_is_refused_at_the_header() {
    // Only the header is sent: the 1009 must come without the payload.
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "1000"]);
        for (name, b0, len) in [
            ("text max+1", FIN | TEXT, SMALL_MAX as u64 + 1),
            ("binary max+1", FIN | BINARY, SMALL_MAX as u64 + 1),
            ("non-final text max+1", TEXT, SMALL_MAX as u64 + 1),
            ("binary 64-bit 70000", FIN | BINARY, 70_000),
            ("binary 2^63-1", FIN | BINARY, (1u64 << 63) - 1),
        ] {
            let bad = header(b0, len);
            valid_then_violation(&server, mode, &bad, 1009, &format!("{mode:?} {name}, header only"));
            let mut s = ws_connect(&server);
            send(&mut s, &bad, Chop::Bytes);
            expect_close(&mut s, 1009, &format!("{mode:?} {name}, header only, byte by byte"));
        }
    }
}

#[test]
fn s9_limits_fragmented_total_over_the_maximum_is_refused_at_the_crossing_fragment() {
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "1000"]);
        for (name, first, second) in [("600 then 401", 600usize, 401u64), ("1000 then 1", 1000, 1)] {
            let mut s = ws_connect(&server);
            let ctx = format!("{mode:?} {name}");
            s.write_all(&frame(BINARY, &binary_pattern(first, 73))).unwrap();
            // Only the crossing fragment's header, no payload and no final fragment.
            s.write_all(&header(FIN | CONT, second)).unwrap();
            expect_close(&mut s, 1009, &ctx);
        }
        // An empty final fragment after exactly the maximum is fine.
        let mut s = ws_connect(&server);
        let data = binary_pattern(SMALL_MAX, 74);
        s.write_all(&concat(&[frame(BINARY, &data), msg(CONT, b"")])).unwrap();
        expect_reply(&mut s, &mode.binary_reply(&data), &format!("{mode:?} maximum plus empty fragment"));
    }
}

/// Large messages: the payload is sent whole, in chunked writes, and as many fragments.
fn large_messages(size: usize, chunkings: &[Chop]) {
    let max = (size + 1024).to_string();
    for mode in MODES {
        let server = mode.server(&["--max-message-size", &max, "--max-queued-bytes", "40000000"]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text_of_len(size, size as u64);
        let whole = msg(TEXT, &text);
        for &chop in chunkings {
            send(&mut s, &whole, chop);
            expect_reply(&mut s, &reply, &format!("{mode:?} {size}-byte text, {chop:?}"));
        }
        // Fragments of 64 KiB, then of random sizes, each sent in random chunks.
        let cuts: Vec<usize> = (1..size.div_ceil(65536)).map(|i| i * 65536).collect();
        send(&mut s, &concat(&fragments(TEXT, &text, &cuts)), Chop::Random { seed: 81, max: 200_000 });
        expect_reply(&mut s, &reply, &format!("{mode:?} {size}-byte text in 64 KiB fragments"));
        let mut rng = Rng(82);
        let mut cuts = Vec::new();
        let mut at = 0;
        loop {
            at += 1 + rng.below(300_000);
            if at >= size {
                break;
            }
            cuts.push(at);
        }
        send(&mut s, &concat(&fragments(TEXT, &text, &cuts)), Chop::Whole);
        expect_reply(
            &mut s,
            &reply,
            &format!("{mode:?} {size}-byte text in {} random fragments", cuts.len() + 1),
        );
        if mode == Mode::Echo {
            let data = binary_pattern(size, 83);
            send(&mut s, &msg(BINARY, &data), Chop::Random { seed: 84, max: 100_000 });
            expect_reply(&mut s, &mode.binary_reply(&data), &format!("{mode:?} {size}-byte binary"));
        }
    }
}

#[test]
fn s9_large_1_mib_messages_intact_in_several_chunkings() {
    large_messages(
        1 << 20,
        &[Chop::Whole, Chop::Fixed(1000), Chop::Random { seed: 91, max: 70_000 }, Chop::Fixed(65536)],
    );
}

#[test]
fn s9_large_8_mib_messages_intact_in_several_chunkings() {
    large_messages(8 << 20, &[Chop::Whole, Chop::Random { seed: 92, max: 1 << 20 }, Chop::Fixed(4096)]);
}

#[test]
fn s9_large_a_huge_message_does_not_stall_another_connection() {
    let size = 8 << 20;
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "9000000", "--max-queued-bytes", "40000000"]);
        let mut big = ws_connect(&server);
        let mut small = ws_connect(&server);
        let (text, reply) = mode.text_of_len(size, 95);
        let whole = msg(TEXT, &text);
        // Half the huge message, then stop: its sender is mid-frame.
        let half = whole.len() / 2;
        big.write_all(&whole[..half]).unwrap();
        for i in 0..5 {
            let (probe, r) = mode.probe(200 + i);
            let started = Instant::now();
            small.write_all(&probe).unwrap();
            expect_reply(
                &mut small,
                &r,
                &format!("{mode:?} small echo {i} while a huge message is unfinished"),
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{mode:?} small echo took {:?}",
                started.elapsed()
            );
        }
        // The rest streams in from another thread while the small connection keeps talking.
        let mut writer = big.try_clone().unwrap();
        let rest = whole[half..].to_vec();
        let sender = std::thread::spawn(move || {
            for piece in rest.chunks(16 * 1024) {
                writer.write_all(piece).unwrap();
            }
        });
        for i in 0..20 {
            let (probe, r) = mode.probe(300 + i);
            let started = Instant::now();
            small.write_all(&probe).unwrap();
            expect_reply(&mut small, &r, &format!("{mode:?} small echo {i} while a huge message streams"));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{mode:?} small echo took {:?}",
                started.elapsed()
            );
        }
        sender.join().unwrap();
        expect_reply(&mut big, &reply, &format!("{mode:?} the huge message itself"));
    }
}

// ===== RFC 6455 section 4: the opening handshake =====

/// Response headers by lower-case name (the last one wins).
fn response_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

fn header_value(head: &str, name: &str) -> Option<String> {
    response_headers(head).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Sends `request` (a whole head) and expects a 101 with the right accept value; returns the
/// socket, ready for frames.
fn upgrade_ok(server: &ServerProc, request: &str, ctx: &str) -> TcpStream {
    let mut s = connect(server.addr);
    s.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{ctx}: {head}");
    assert_eq!(header_value(&head, "sec-websocket-accept").as_deref(), Some(SAMPLE_ACCEPT), "{ctx}: {head}");
    assert!(
        header_value(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{ctx}: {head}"
    );
    assert!(
        header_value(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")),
        "{ctx}: {head}"
    );
    // Nothing was negotiated that the client did not offer, and no extension is supported.
    assert_eq!(header_value(&head, "sec-websocket-extensions"), None, "{ctx}: {head}");
    if !request.to_ascii_lowercase().contains("sec-websocket-protocol") {
        assert_eq!(header_value(&head, "sec-websocket-protocol"), None, "{ctx}: {head}");
    }
    s
}

/// After an upgrade, a message round trip works.
fn works(s: &mut TcpStream, mode: Mode, ctx: &str) {
    let (probe, reply) = mode.probe(401);
    s.write_all(&probe).unwrap();
    expect_reply(s, &reply, ctx);
}

#[test]
fn rfc4_handshake_header_names_are_case_insensitive() {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHOST: localhost\r\nupgrade: websocket\r\nCONNECTION: Upgrade\r\n\
         sec-websocket-key: {KEY}\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n"
    );
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = upgrade_ok(&server, &request, &format!("{mode:?} odd-case names"));
        works(&mut s, mode, &format!("{mode:?} after odd-case names"));
    }
}

#[test]
fn rfc4_handshake_connection_header_with_a_token_list() {
    for mode in MODES {
        let server = mode.server(&[]);
        for value in ["keep-alive, Upgrade", "Upgrade, keep-alive", "keep-alive,upgrade", "UPGRADE"] {
            let request =
                upgrade_request("/ws", "").replace("Connection: Upgrade", &format!("Connection: {value}"));
            let mut s = upgrade_ok(&server, &request, &format!("{mode:?} Connection: {value}"));
            works(&mut s, mode, &format!("{mode:?} after Connection: {value}"));
        }
    }
}

#[test]
fn rfc4_handshake_upgrade_value_is_case_insensitive() {
    for mode in MODES {
        let server = mode.server(&[]);
        for value in ["WebSocket", "WEBSOCKET"] {
            let request =
                upgrade_request("/ws", "").replace("Upgrade: websocket", &format!("Upgrade: {value}"));
            let mut s = upgrade_ok(&server, &request, &format!("{mode:?} Upgrade: {value}"));
            works(&mut s, mode, &format!("{mode:?} after Upgrade: {value}"));
        }
    }
}

#[test]
fn rfc4_handshake_key_with_surrounding_whitespace() {
    // Leading and trailing whitespace is not part of a header value (RFC 7230 section 3.2);
    // the accept value is computed from the key itself.
    for mode in MODES {
        let server = mode.server(&[]);
        for padded in [format!("   {KEY}   "), format!("\t{KEY} \t")] {
            let request = upgrade_request("/ws", "")
                .replace(&format!("Sec-WebSocket-Key: {KEY}"), &format!("Sec-WebSocket-Key:{padded}"));
            let mut s = upgrade_ok(&server, &request, &format!("{mode:?} key {padded:?}"));
            works(&mut s, mode, &format!("{mode:?} after key {padded:?}"));
        }
    }
}

#[test]
fn rfc4_handshake_duplicate_keys_are_rejected() {
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, extra) in [
            ("same key twice", format!("Sec-WebSocket-Key: {KEY}\r\n")),
            ("different second key", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n".to_string()),
        ] {
            let mut s = connect(server.addr);
            s.write_all(upgrade_request("/ws", &extra).as_bytes()).unwrap();
            let response = read_to_close(&mut s);
            assert_eq!(status_of(&response), 400, "{mode:?} {name}: {response}");
        }
        // Two keys folded into one comma list are no valid key either.
        let request = upgrade_request("/ws", "")
            .replace(&format!("Sec-WebSocket-Key: {KEY}"), &format!("Sec-WebSocket-Key: {KEY}, {KEY}"));
        let mut s = connect(server.addr);
        s.write_all(request.as_bytes()).unwrap();
        let response = read_to_close(&mut s);
        assert_eq!(status_of(&response), 400, "{mode:?} key list: {response}");
    }
}

#[test]
fn rfc4_handshake_frames_pipelined_after_the_head_are_kept() {
    for mode in MODES {
        let server = mode.server(&[]);
        let (text, reply) = mode.text(b"pipelined");
        let f = fragments(TEXT, &text, &[3]);
        let frames = concat(&[msg(TEXT, &text), msg(PING, b"early"), f[0].clone(), f[1].clone()]);
        let request = upgrade_request("/ws", "").into_bytes();
        for (name, chop) in [("one write", Chop::Whole), ("byte by byte", Chop::Bytes)] {
            let mut s = connect(server.addr);
            let mut bytes = request.clone();
            bytes.extend_from_slice(&frames);
            send(&mut s, &bytes, chop);
            let head = read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 101"), "{mode:?} {name}: {head}");
            expect_reply(&mut s, &reply, &format!("{mode:?} {name}: first pipelined message"));
            expect_pong(&mut s, b"early", &format!("{mode:?} {name}: pipelined ping"));
            expect_reply(&mut s, &reply, &format!("{mode:?} {name}: pipelined fragments"));
        }
        // The head and the first frame split inside the blank line.
        let mut bytes = request.clone();
        bytes.extend_from_slice(&msg(PING, b"split"));
        let mut s = connect(server.addr);
        let at = request.len() - 1;
        s.write_all(&bytes[..at]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        s.write_all(&bytes[at..]).unwrap();
        assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
        expect_pong(&mut s, b"split", &format!("{mode:?} ping after a head split in its blank line"));
    }
}

#[test]
fn rfc4_handshake_a_large_message_pipelined_after_the_head_is_kept() {
    // More bytes after the head than the server's request-head buffer holds, in one write.
    for mode in MODES {
        let server = mode.server(&[]);
        for size in [100_000usize, 200_000] {
            let (text, reply) = mode.text_of_len(size, 501);
            let mut bytes = upgrade_request("/ws", "").into_bytes();
            bytes.extend(msg(TEXT, &text));
            bytes.extend(msg(PING, b"after"));
            let mut s = connect(server.addr);
            s.write_all(&bytes).unwrap();
            let head = read_head(&mut s);
            assert!(head.starts_with("HTTP/1.1 101"), "{mode:?} {size}: {head}");
            expect_reply(&mut s, &reply, &format!("{mode:?} {size}-byte message pipelined after the head"));
            expect_pong(&mut s, b"after", &format!("{mode:?} ping after the {size}-byte message"));
        }
    }
}

#[test]
fn rfc4_handshake_connection_upgrade_in_a_second_connection_header() {
    // Repeated list headers combine (RFC 7230 section 3.2.2).
    for mode in MODES {
        let server = mode.server(&[]);
        let request = upgrade_request("/ws", "")
            .replace("Connection: Upgrade", "Connection: keep-alive\r\nConnection: Upgrade");
        let mut s = upgrade_ok(&server, &request, &format!("{mode:?} two Connection headers"));
        works(&mut s, mode, &format!("{mode:?} after two Connection headers"));
    }
}

#[test]
fn s2_pings_control_frames_are_not_subject_to_the_message_limit() {
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "10"]);
        let mut s = ws_connect(&server);
        let payload = ascii_pattern(125, 3);
        s.write_all(&msg(PING, &payload)).unwrap();
        expect_pong(&mut s, &payload, &format!("{mode:?} 125-byte ping with a 10-byte message limit"));
        s.write_all(&msg(CLOSE, &close_payload(1000, &ascii_pattern(100, 4)))).unwrap();
        expect_close_exactly(&mut s, &1000u16.to_be_bytes(), &format!("{mode:?} long close reason"));
    }
}

#[test]
fn s7_close_frame_arriving_byte_by_byte() {
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let mut reason = ascii_pattern(120, 5);
        reason.extend_from_slice("\u{20ac}".as_bytes());
        send(&mut s, &msg(CLOSE, &close_payload(4001, &reason)), Chop::Bytes);
        expect_close_exactly(&mut s, &4001u16.to_be_bytes(), &format!("{mode:?} chopped close"));
    }
}

#[test]
fn s7_close_with_a_bad_code_while_a_message_is_open_is_refused() {
    for mode in MODES {
        let server = mode.server(&[]);
        let bad = concat(&[frame(TEXT, b"open "), msg(CLOSE, &close_payload(1005, b""))]);
        valid_then_violation(&server, mode, &bad, 1002, &format!("{mode:?} close 1005 mid-message"));
        let bad = concat(&[frame(TEXT, b"open "), msg(CLOSE, &close_payload(1000, &[0xff]))]);
        valid_then_violation(&server, mode, &bad, 1007, &format!("{mode:?} bad close reason mid-message"));
    }
}

#[test]
fn s7_close_nothing_after_a_protocol_error_is_answered() {
    // Section 7.1.7: after failing the connection the server processes no further data.
    for mode in MODES {
        let server = mode.server(&[]);
        let (probe, _) = mode.probe(62);
        for (name, error, code) in [
            ("reserved opcode", msg(0x5, b""), 1002u16),
            ("invalid UTF-8", msg(TEXT, &[0xc0, 0x80]), 1007),
            ("invalid close code", msg(CLOSE, &close_payload(999, b"")), 1002),
        ] {
            let bad =
                concat(&[error, msg(PING, b"ignored"), probe.clone(), msg(CLOSE, &close_payload(1000, b""))]);
            valid_then_violation(&server, mode, &bad, code, &format!("{mode:?} frames after {name}"));
        }
    }
}

#[test]
fn s7_close_then_half_close_from_the_client() {
    // The client sends its close and shuts down its side at once: the server still answers
    // the close and then closes its side.
    for mode in MODES {
        let server = mode.server(&["--close-timeout", "30"]);
        let mut s = ws_connect(&server);
        s.write_all(&msg(CLOSE, &close_payload(3333, b""))).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        expect_close_exactly(&mut s, &3333u16.to_be_bytes(), &format!("{mode:?} close then FIN"));
    }
}

#[test]
fn s7_close_tcp_end_without_a_close_frame_ends_the_connection() {
    // An abrupt end (1006 for the server, which never sends 1006 on the wire, section 7.4.1):
    // the server closes its side too, promptly, whether the client's FIN comes alone, right
    // behind a whole message (answered first), or in the middle of a message. The FIN often
    // arrives in the same readiness event as the data before it.
    for mode in MODES {
        let server = mode.server(&["--close-timeout", "30"]);
        let (probe, reply) = mode.probe(63);
        for (name, before, answer) in [
            ("idle", Vec::new(), None),
            ("right after a whole message", probe.clone(), Some(reply.clone())),
            ("mid-message", frame(TEXT, b"unfinished"), None),
        ] {
            let ctx = format!("{mode:?} FIN {name}");
            let mut s = ws_connect(&server);
            let started = Instant::now();
            s.write_all(&before).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            // A whole message before the FIN is still answered (the socket can still carry
            // it); then nothing else, or at most a close with no local-only code.
            if let Some(reply) = &answer {
                expect_reply(&mut s, reply, &ctx);
            }
            let got = read_got(&mut s);
            match got {
                Ok(got) => {
                    assert_eq!(got.opcode, CLOSE, "{ctx}: unexpected frame {got:?}");
                    let code = got.payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    assert!(!matches!(code, Some(1005 | 1006 | 1015)), "{ctx}: close {code:?} on the wire");
                    expect_eof(&mut s, &ctx);
                }
                Err(e) => assert!(e.starts_with(END), "{ctx}: the server kept the connection: {e}"),
            }
            assert!(started.elapsed() < Duration::from_secs(3), "{ctx}: took {:?}", started.elapsed());
        }
    }
}

#[test]
fn s9_large_frames_right_behind_a_huge_message_in_the_same_write_are_answered() {
    // More than one read's worth of bytes in one write: the frames after the huge message must
    // still be read (the server must come back for the rest of its socket buffer).
    let size = 4 << 20;
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "5000000", "--max-queued-bytes", "40000000"]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text_of_len(size, 97);
        let (probe, probe_reply) = mode.probe(98);
        let bytes = concat(&[msg(TEXT, &text), msg(PING, b"behind"), probe]);
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || writer.write_all(&bytes).unwrap());
        expect_reply(&mut s, &reply, &format!("{mode:?} huge message"));
        expect_pong(&mut s, b"behind", &format!("{mode:?} ping behind the huge message"));
        expect_reply(&mut s, &probe_reply, &format!("{mode:?} message behind the huge message"));
        sender.join().unwrap();
    }
}

#[test]
fn s7_close_server_initiated_close_handshake_on_shutdown() {
    // SIGTERM: the server sends 1001 first. After its close it sends no data frame (section
    // 5.5.1) and no second close whatever the client sends; the client's close completes the
    // handshake and the server closes TCP at once.
    for mode in MODES {
        let mut server = mode.server(&["--shutdown-timeout", "10", "--close-timeout", "10"]);
        let mut s = ws_connect(&server);
        let (probe, reply) = mode.probe(64);
        s.write_all(&probe).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} before shutdown"));
        std::process::Command::new("kill").arg("-TERM").arg(server.child.id().to_string()).status().unwrap();
        let got = next_frame(&mut s, &format!("{mode:?} shutdown close"));
        assert_eq!((got.opcode, got.payload.get(..2)), (CLOSE, Some(&1001u16.to_be_bytes()[..])), "{got:?}");
        let started = Instant::now();
        let after = concat(&[
            probe.clone(),
            msg(PING, b"after the server's close"),
            msg(TEXT, &[0xff]), // would be a 1007, but a close was already sent
            msg(CLOSE, &close_payload(1001, b"")),
        ]);
        s.write_all(&after).unwrap();
        expect_eof(&mut s, &format!("{mode:?} after the client's close reply"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{mode:?}: TCP closed after {:?}",
            started.elapsed()
        );
        let status = server.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{mode:?} exit status");
    }
}

#[test]
fn s1_framing_thousands_of_small_frames_in_random_chunks() {
    // Mixed small messages and pings, one stream cut at random places: every one is answered,
    // in order.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let mut rng = Rng(0xf00d);
        let mut bytes = Vec::new();
        let mut replies = Vec::new();
        for i in 0..2000u64 {
            let len = rng.below(300);
            match rng.below(4) {
                0 => {
                    let p = binary_pattern(len.min(125), i);
                    bytes.extend(msg(PING, &p));
                    replies.push(Reply::Exact(PONG, p));
                }
                1 if mode == Mode::Echo => {
                    let p = binary_pattern(len, i);
                    bytes.extend(msg(BINARY, &p));
                    replies.push(Reply::Exact(BINARY, p));
                }
                _ => {
                    let (text, reply) = mode.text_of_len(len.max(HUB_OVERHEAD), i);
                    bytes.extend(msg(TEXT, &text));
                    replies.push(reply);
                }
            }
        }
        let mut writer = s.try_clone().unwrap();
        let sender =
            std::thread::spawn(move || send(&mut writer, &bytes, Chop::Random { seed: 0xbeef, max: 1500 }));
        for (i, reply) in replies.iter().enumerate() {
            expect_reply(&mut s, reply, &format!("{mode:?} reply {i}"));
        }
        sender.join().unwrap();
    }
}

#[test]
fn rfc4_handshake_request_target_forms() {
    // Section 4.2.1 item 1: the Request-URI is the /resource name/, "or an absolute HTTP/HTTPS
    // URI containing the /resource name/"; a query belongs to the resource name (section 3).
    for mode in MODES {
        let server = mode.server(&[]);
        let host = format!("localhost:{}", server.addr.port());
        for target in [
            "/ws?token=abc".to_string(),
            format!("http://{host}/ws"),
            format!("HTTP://{host}/ws?x=1"),
            format!("https://{host}/ws"),
        ] {
            let request = upgrade_request("/ws", "")
                .replacen("GET /ws ", &format!("GET {target} "), 1)
                .replace("Host: localhost", &format!("Host: {host}"));
            let mut s = upgrade_ok(&server, &request, &format!("{mode:?} GET {target}"));
            works(&mut s, mode, &format!("{mode:?} after GET {target}"));
        }
    }
}

#[test]
fn s1_framing_all_zero_masking_key_is_fine() {
    // Section 5.3: the key is whatever the client picked; zero is a key like any other.
    for mode in MODES {
        let server = mode.server(&[]);
        let mut s = ws_connect(&server);
        let (text, reply) = mode.text(b"zero key");
        let mut f = vec![FIN | TEXT, 0x80 | text.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(&text);
        s.write_all(&f).unwrap();
        expect_reply(&mut s, &reply, &format!("{mode:?} zero masking key"));
    }
}

#[test]
fn s7_close_server_gives_up_on_a_silent_peer_after_the_close_timeout() {
    // The server closed (shutdown) and the client never answers: the server does not wait
    // forever for the client's close (section 7.1.1 lets it close the TCP connection).
    for mode in MODES {
        let server = mode.server(&["--close-timeout", "0.5", "--shutdown-timeout", "10"]);
        let mut s = ws_connect(&server);
        std::process::Command::new("kill").arg("-TERM").arg(server.child.id().to_string()).status().unwrap();
        let got = next_frame(&mut s, &format!("{mode:?} shutdown close"));
        assert_eq!(got.close_code(), Some(1001), "{mode:?}: {got:?}");
        let started = Instant::now();
        expect_eof(&mut s, &format!("{mode:?} silent client"));
        assert!(started.elapsed() < Duration::from_secs(4), "{mode:?}: closed after {:?}", started.elapsed());
    }
}

#[test]
fn s9_large_pings_between_fragments_of_a_large_message_are_answered_at_once() {
    for mode in MODES {
        let server = mode.server(&["--max-message-size", "3000000"]);
        let mut s = ws_connect(&server);
        let size = 2 << 20;
        let (text, reply) = mode.text_of_len(size, 99);
        let cuts: Vec<usize> = (1..8).map(|i| i * size / 8).collect();
        let frags = fragments(TEXT, &text, &cuts);
        for (i, f) in frags.iter().enumerate() {
            send(&mut s, f, Chop::Random { seed: 100 + i as u64, max: 200_000 });
            if i + 1 < frags.len() {
                let p = format!("after fragment {i}").into_bytes();
                s.write_all(&msg(PING, &p)).unwrap();
                // The message is unfinished: the pong must not wait for it.
                expect_pong(&mut s, &p, &format!("{mode:?} pong {i} during a large message"));
            }
        }
        expect_reply(&mut s, &reply, &format!("{mode:?} the large message"));
    }
}

#[test]
fn rfc4_handshake_offered_extensions_are_declined_and_rsv1_stays_an_error() {
    // Section 9.1: the server accepts no extension it does not support; without one, RSV1 on a
    // frame (a compressed message) is still a protocol error (section 5.2).
    for mode in MODES {
        let server = mode.server(&[]);
        let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
                     Sec-WebSocket-Protocol: chat\r\n";
        let request = upgrade_request("/ws", offer);
        let mut s = upgrade_ok(&server, &request, &format!("{mode:?} extension offered"));
        works(&mut s, mode, &format!("{mode:?} after declining the extension"));
        s.write_all(&frame(FIN | RSV1 | TEXT, b"not compressed")).unwrap();
        expect_close(&mut s, 1002, &format!("{mode:?} RSV1 after declining permessage-deflate"));
        // No subprotocol configured: none is chosen, whatever the client offers.
        let mut s = connect(server.addr);
        s.write_all(request.as_bytes()).unwrap();
        let head = read_head(&mut s);
        assert_eq!(header_value(&head, "sec-websocket-protocol"), None, "{mode:?}: {head}");
    }
}

#[test]
fn s7_close_the_close_frame_survives_input_the_server_never_reads() {
    // After its close the server reads no more frames, yet it must not reset the connection
    // while the client's bytes keep arriving: a reset could destroy the close frame in flight
    // (section 7.1.1 wants the server to close TCP cleanly). Here 2 MB follow the trigger.
    for mode in MODES {
        let server = mode.server(&[]);
        for (name, trigger, code, exact) in [
            ("client close", msg(CLOSE, &close_payload(1000, b"")), 1000u16, true),
            ("protocol error", msg(0x6, b""), 1002, false),
        ] {
            let ctx = format!("{mode:?} {name} then 2 MB");
            let mut s = ws_connect(&server);
            let mut bytes = trigger;
            let junk = msg(BINARY, &binary_pattern(60_000, 1));
            for _ in 0..35 {
                bytes.extend_from_slice(&junk);
            }
            let mut writer = s.try_clone().unwrap();
            let sender = std::thread::spawn(move || {
                let _ = writer.write_all(&bytes); // may be cut off once the server is done
            });
            let got = next_frame(&mut s, &ctx);
            assert_eq!(got.close_code(), Some(code), "{ctx}: {got:?}");
            if exact {
                assert_eq!(got.payload.len(), 2, "{ctx}: the echo carries no reason");
            }
            expect_eof(&mut s, &ctx);
            sender.join().unwrap();
        }
    }
}
