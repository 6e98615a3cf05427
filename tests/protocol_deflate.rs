//! permessage-deflate in the sans-IO session (RFC 7692 sections 6 and 8): RSV1 rules, inflate
//! across frames and reads, the size bound against a bomb, corrupt streams, UTF-8 of inflated
//! text, and the inflater lent only while a compressed message is arriving.

mod protocol_driver;

use proptest::prelude::*;
use proptest::sample::Index;
use protocol_driver::*;
use wshub::protocol::deflate::{self, Agreed, DeflateConfig, Deflater};
use wshub::protocol::frame::{self, HeaderError, OpCode};
use wshub::protocol::session::ProtocolError;
use wshub::protocol::{Session, SessionConfig};

fn config(max: usize) -> SessionConfig {
    SessionConfig { max_message_size: max, ping_interval: None, pong_wait: None, close_timeout: 1_000 }
}

const AGREED: Agreed = Agreed { server_max_window_bits: 15, server_window_requested: false };

fn negotiated(max: usize) -> Driver {
    let mut d = Driver::new(config(max));
    d.session = Session::new(&d.config, 0).with_deflate(Some(AGREED));
    d
}

/// A masked client frame with RSV1.
fn compressed_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    frame::write_masked_frame_rsv1(&mut v, fin, opcode, KEY, payload);
    v
}

/// `payload` deflated as a client would send it (tail stripped), whatever its size.
fn deflate_bytes(payload: &[u8]) -> Vec<u8> {
    let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 6 });
    let mut out = Vec::new();
    if !d.compress(payload, 15, &mut out) {
        // Incompressible: a stored block is still a valid compressed message.
        out.clear();
        for chunk in payload.chunks(65_535) {
            out.push(0x00);
            out.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
            out.extend_from_slice(&(!(chunk.len() as u16)).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        if payload.is_empty() {
            out.push(0x00);
        }
    }
    out
}

const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

#[test]
fn rfc7692_hello_single_and_fragmented() {
    let mut d = negotiated(1 << 20);
    // 7.2.3.1: one frame (0xc1 0x07 ...).
    let one = compressed_frame(true, OpCode::Text, &HELLO);
    assert_eq!(d.feed(&one).unwrap(), vec![Ev::Text("Hello".into())]);
    // 7.2.3.1 fragmented: 0x41 0x03 f2 48 cd / 0x80 0x04 c9 c9 07 00.
    let mut two = compressed_frame(false, OpCode::Text, &HELLO[..3]);
    two.extend(client(true, OpCode::Continuation, &HELLO[3..]));
    assert_eq!(d.feed(&two).unwrap(), vec![Ev::Text("Hello".into())]);
    // Byte by byte.
    d.feed_bytewise(&two).unwrap();
    assert_eq!(d.events.last(), Some(&Ev::Text("Hello".into())));
    // A plain message on a negotiated connection still takes the fast path.
    assert_eq!(d.feed(&client(true, OpCode::Text, b"plain")).unwrap(), vec![Ev::Text("plain".into())]);
    assert_eq!(deflate::inflaters_in_use(), 0, "nothing borrowed between messages");
    assert!(!d.session.is_inflating());
}

#[test]
fn rsv1_rules() {
    // Without negotiation RSV1 is a reserved bit: 1002.
    let mut d = Driver::new(config(1 << 20));
    let err = d.feed(&compressed_frame(true, OpCode::Text, &HELLO)).unwrap_err();
    assert_eq!(err, ProtocolError::Header(HeaderError::ReservedBits(0b100)));
    assert_eq!(err.close_code(), 1002);
    // RSV2 and RSV3 stay reserved with the extension.
    let mut frame = client(true, OpCode::Text, b"x");
    frame[0] |= 0x20;
    assert_eq!(
        negotiated(100).feed(&frame).unwrap_err(),
        ProtocolError::Header(HeaderError::ReservedBits(0b010))
    );
    // RSV1 on a continuation: 1002.
    let mut d = negotiated(1 << 20);
    let mut wire = compressed_frame(false, OpCode::Text, &HELLO[..3]);
    wire.extend(compressed_frame(true, OpCode::Continuation, &HELLO[3..]));
    let err = d.feed(&wire).unwrap_err();
    assert_eq!(err, ProtocolError::CompressedContinuation);
    assert_eq!(err.close_code(), 1002);
    assert_eq!(d.out_frames().last().unwrap().close_code(), Some(1002));
    // RSV1 on a continuation of a plain message too.
    let mut wire = client(false, OpCode::Text, b"He");
    wire.extend(compressed_frame(true, OpCode::Continuation, b"llo"));
    assert_eq!(negotiated(100).feed(&wire).unwrap_err(), ProtocolError::CompressedContinuation);
    // RSV1 on control frames: 1002.
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let err = negotiated(100).feed(&compressed_frame(true, op, b"")).unwrap_err();
        assert_eq!(err, ProtocolError::CompressedControl, "{op:?}");
        assert_eq!(err.close_code(), 1002);
    }
    // A ping between compressed fragments is fine and does not disturb the message.
    let mut d = negotiated(100);
    let mut wire = compressed_frame(false, OpCode::Text, &HELLO[..3]);
    wire.extend(client(true, OpCode::Ping, b"p"));
    wire.extend(client(true, OpCode::Continuation, &HELLO[3..]));
    assert_eq!(d.feed(&wire).unwrap(), vec![Ev::Ping(b"p".to_vec()), Ev::Text("Hello".into())]);
    assert_eq!(deflate::inflaters_in_use(), 0);
}

#[test]
fn a_bomb_is_1009_after_at_most_the_limit() {
    let max = 64 * 1024;
    let bomb = deflate_bytes(&vec![b'a'; 20 << 20]);
    assert!(bomb.len() < 100_000, "bomb of {} bytes", bomb.len());
    let mut d = negotiated(max);
    let err = d.feed(&compressed_frame(true, OpCode::Text, &bomb)).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooBig { at_least: max as u64 + 1, max });
    assert_eq!(err.close_code(), 1009);
    assert_eq!(d.out_frames().last().unwrap().close_code(), Some(1009));
    assert_eq!(deflate::inflaters_in_use(), 0, "the inflater went back to the pool");
    // In small reads and fragments, the same: it fails as soon as the limit is passed.
    let mut d = negotiated(max);
    let mut wire = compressed_frame(false, OpCode::Binary, &bomb[..10]);
    for piece in bomb[10..].chunks(100) {
        wire.extend(client(false, OpCode::Continuation, piece));
    }
    wire.extend(client(true, OpCode::Continuation, b""));
    let err = d.feed_chunked(&wire, &[7, 300, 1]).unwrap_err();
    assert!(matches!(err, ProtocolError::MessageTooBig { .. }), "{err:?}");
    assert!(d.session.buffered() == 0 && !d.session.is_inflating());
    // Exactly the limit is accepted.
    let exact = vec![b'z'; max];
    let mut d = negotiated(max);
    assert_eq!(
        d.feed(&compressed_frame(true, OpCode::Binary, &deflate_bytes(&exact))).unwrap(),
        vec![Ev::Binary(exact)]
    );
}

#[test]
fn compressed_bytes_on_the_wire_count_against_the_limit_too() {
    // A frame whose compressed length alone exceeds the limit is refused from its header.
    let mut d = negotiated(1000);
    let mut header = Vec::new();
    frame::write_masked_frame_rsv1(&mut header, true, OpCode::Binary, KEY, &[0u8; 2000]);
    let err = d.feed(&header[..8]).unwrap_err();
    assert_eq!(err, ProtocolError::MessageTooBig { at_least: 2000, max: 1000 });
}

#[test]
fn corrupt_streams_are_1007() {
    for bad in [&[0xffu8, 0xff, 0xff][..], &[0x00, 0x05, 0x00, 0x00, 0x00, b'a']] {
        let mut d = negotiated(1 << 20);
        let err = d.feed(&compressed_frame(true, OpCode::Binary, bad)).unwrap_err();
        assert_eq!(err, ProtocolError::CorruptCompression, "{bad:x?}");
        assert_eq!(err.close_code(), 1007);
        assert_eq!(d.out_frames().last().unwrap().close_code(), Some(1007));
        assert_eq!(deflate::inflaters_in_use(), 0);
    }
}

#[test]
fn inflated_text_is_utf8_checked_and_fails_fast() {
    // Valid compression of invalid UTF-8: 1007.
    let mut d = negotiated(1 << 20);
    let bad = deflate_bytes(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited");
    let err = d.feed(&compressed_frame(true, OpCode::Text, &bad)).unwrap_err();
    assert_eq!(err, ProtocolError::InvalidUtf8);
    assert_eq!(err.close_code(), 1007);
    // Fail fast: a first fragment that inflates to an impossible byte fails before the rest.
    let mut text = b"ok \xff".to_vec();
    text.extend(std::iter::repeat_n(b'x', 10_000));
    let stored = {
        let mut v = vec![0x00];
        v.extend_from_slice(&(text.len() as u16).to_le_bytes());
        v.extend_from_slice(&(!(text.len() as u16)).to_le_bytes());
        v.extend_from_slice(&text);
        v
    };
    let mut d = negotiated(1 << 20);
    let wire = compressed_frame(false, OpCode::Text, &stored);
    // Only the first 20 bytes of the first frame have arrived.
    assert_eq!(d.feed(&wire[..20]).unwrap_err(), ProtocolError::InvalidUtf8);
    // A code point split across fragments is fine.
    let euro = "€€€€".as_bytes();
    let mut d = negotiated(1 << 20);
    let stored = |b: &[u8]| {
        let mut v = vec![0x00];
        v.extend_from_slice(&(b.len() as u16).to_le_bytes());
        v.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        v.extend_from_slice(b);
        v
    };
    let mut wire = compressed_frame(false, OpCode::Text, &stored(&euro[..4]));
    wire.extend(client(true, OpCode::Continuation, &stored(&euro[4..])));
    assert_eq!(d.feed(&wire).unwrap(), vec![Ev::Text("€€€€".into())]);
    // A message that ends inside a code point: 1007.
    let mut d = negotiated(1 << 20);
    let err = d.feed(&compressed_frame(true, OpCode::Text, &deflate_bytes(&euro[..5]))).unwrap_err();
    assert_eq!(err, ProtocolError::InvalidUtf8);
}

#[test]
fn the_inflater_is_lent_only_while_a_compressed_message_arrives() {
    let mut d = negotiated(1 << 20);
    let before = deflate::inflaters_in_use();
    let msg = deflate_bytes(&b"{\"type\":\"publish\"}".repeat(50));
    let wire = compressed_frame(true, OpCode::Text, &msg);
    d.feed(&wire[..wire.len() / 2]).unwrap();
    assert!(d.session.is_inflating());
    assert_eq!(deflate::inflaters_in_use(), before + 1);
    d.feed(&wire[wire.len() / 2..]).unwrap();
    assert_eq!(deflate::inflaters_in_use(), before, "given back when the message ends");
    // A connection dropped mid-message gives it back too.
    let mut d = negotiated(1 << 20);
    d.feed(&wire[..wire.len() / 2]).unwrap();
    assert_eq!(deflate::inflaters_in_use(), before + 1);
    drop(d);
    assert_eq!(deflate::inflaters_in_use(), before);
    // And a close in the middle of a message.
    let mut d = negotiated(1 << 20);
    let mut part = compressed_frame(false, OpCode::Text, &msg[..10]);
    part.extend(client_close(1000, b""));
    d.feed(&part).unwrap();
    assert_eq!(deflate::inflaters_in_use(), before);
}

/// A message, compressed or not, cut into fragments.
#[derive(Clone, Debug)]
struct Case {
    text: bool,
    payload: Vec<u8>,
    compress: bool,
    cuts: Vec<Index>,
    pings: Vec<Index>,
}

fn case() -> impl Strategy<Value = Case> {
    let json = prop::collection::vec(
        prop_oneof![
            Just("{\"type\":\"message\",".to_string()),
            "[a-z0-9 ]{0,12}",
            Just("κόσμε€𝄞".to_string())
        ],
        0..300,
    )
    .prop_map(|parts| (true, parts.concat().into_bytes()));
    let binary = prop::collection::vec(any::<u8>(), 0..3000).prop_map(|b| (false, b));
    (
        prop_oneof![3 => json, 1 => binary],
        any::<bool>(),
        prop::collection::vec(any::<Index>(), 0..6),
        prop::collection::vec(any::<Index>(), 0..3),
    )
        .prop_map(|((text, payload), compress, cuts, pings)| Case {
            text,
            payload,
            compress,
            cuts,
            pings,
        })
}

impl Case {
    fn wire(&self) -> (Vec<u8>, Vec<Ev>) {
        let body = if self.compress { deflate_bytes(&self.payload) } else { self.payload.clone() };
        let mut cuts: Vec<usize> = self.cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        cuts.extend([0, body.len()]);
        cuts.sort_unstable();
        let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &body[w[0]..w[1]]).collect();
        let mut wire = Vec::new();
        let mut events = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            for p in &self.pings {
                if p.index(pieces.len()) == i {
                    wire.extend(client(true, OpCode::Ping, b"hi"));
                    events.push(Ev::Ping(b"hi".to_vec()));
                }
            }
            let fin = i == pieces.len() - 1;
            let opcode = match (i, self.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let mut f = Vec::new();
            if i == 0 && self.compress {
                frame::write_masked_frame_rsv1(&mut f, fin, opcode, KEY, piece);
            } else {
                frame::write_masked_frame(&mut f, fin, opcode, KEY, piece);
            }
            wire.extend(f);
        }
        events.push(if self.text {
            Ev::Text(String::from_utf8(self.payload.clone()).unwrap())
        } else {
            Ev::Binary(self.payload.clone())
        });
        (wire, events)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Compressed messages in every fragmentation and every chunking of the reads give the same
    /// events as the plain message, and leave no inflater borrowed.
    #[test]
    fn fragmented_compressed_messages_in_any_chunking(
        cases in prop::collection::vec(case(), 1..4),
        splits in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for c in &cases {
            let (w, e) = c.wire();
            wire.extend(w);
            want.extend(e);
        }
        let mut points: Vec<usize> = splits.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.extend([0, wire.len()]);
        points.sort_unstable();
        let mut d = negotiated(1 << 20);
        for w in points.windows(2) {
            d.feed(&wire[w[0]..w[1]]).unwrap();
        }
        prop_assert_eq!(&d.events, &want);
        prop_assert_eq!(deflate::inflaters_in_use(), 0);
        prop_assert!(!d.session.is_inflating());
    }

    /// Whatever bytes follow RSV1, the session answers with a close code, never a panic, and
    /// returns the inflater.
    #[test]
    fn garbage_compressed_payloads_fail_cleanly(payload in prop::collection::vec(any::<u8>(), 0..400), text in any::<bool>()) {
        let mut d = negotiated(4096);
        let op = if text { OpCode::Text } else { OpCode::Binary };
        match d.feed(&compressed_frame(true, op, &payload)) {
            Ok(_) => {}
            Err(e) => prop_assert!([1002u16, 1007, 1009].contains(&e.close_code()), "{:?}", e),
        }
        prop_assert_eq!(deflate::inflaters_in_use(), 0);
    }
}
