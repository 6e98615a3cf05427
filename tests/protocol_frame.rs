//! Frame headers, length encodings, masking and close payloads (RFC 6455 sections 5 and 7)
//! over the public API, including the RFC's own example frames.

mod protocol_driver;

use protocol_driver::*;
use wshub::protocol::close::is_valid_on_wire;
use wshub::protocol::frame::{self, parse_header, HeaderError, OpCode, ServerHeader};
use wshub::protocol::mask::apply_mask;
use wshub::protocol::session::{parse_close_payload, ProtocolError};
use wshub::protocol::SessionConfig;

/// A header with the given 7-bit length field and extension bytes, masked or not.
fn header(b0: u8, masked: bool, len7: u8, ext: &[u8]) -> Vec<u8> {
    raw_header(b0, masked, len7, ext)
}

#[test]
fn length_encoding_edges() {
    // (payload length, minimal header bytes: server (unmasked), client (masked))
    let table: &[(u64, usize)] = &[
        (0, 2),
        (1, 2),
        (125, 2),
        (126, 4),
        (127, 4),
        (65535, 4),
        (65536, 10),
        (u64::from(u32::MAX) + 1, 10),
        ((1 << 63) - 1, 10),
    ];
    for &(len, server_len) in table {
        let (len7, ext): (u8, Vec<u8>) = if len < 126 {
            (len as u8, vec![])
        } else if len <= 65535 {
            (126, (len as u16).to_be_bytes().to_vec())
        } else {
            (127, len.to_be_bytes().to_vec())
        };
        for masked in [false, true] {
            let bytes = header(0x82, masked, len7, &ext);
            let expected_len = server_len + if masked { 4 } else { 0 };
            assert_eq!(bytes.len(), expected_len);
            let h = parse_header(&bytes).unwrap().unwrap_or_else(|| panic!("len {len} complete"));
            assert_eq!(h.payload_len, len, "len {len}");
            assert_eq!(h.header_len, expected_len, "len {len}");
            assert_eq!(h.mask, masked.then_some(KEY));
            assert!(h.fin);
            assert_eq!(h.rsv, 0);
            assert_eq!(h.opcode, OpCode::Binary);
            for cut in 0..bytes.len() {
                assert_eq!(parse_header(&bytes[..cut]), Ok(None), "len {len} masked {masked} cut {cut}");
            }
        }
        // Encoding only: no payload is allocated.
        let len = usize::try_from(len).expect("64-bit target");
        let server = ServerHeader::new(true, OpCode::Binary, len);
        assert_eq!(server.as_bytes(), &header(0x82, false, len7, &ext)[..], "server header for {len}");
    }
    // 2^63 and above: not a length.
    for len in [1u64 << 63, (1 << 63) + 1, u64::MAX] {
        for masked in [false, true] {
            let bytes = header(0x82, masked, 127, &len.to_be_bytes());
            assert_eq!(parse_header(&bytes), Err(HeaderError::LengthOverflow), "len {len}");
        }
    }
}

#[test]
fn non_minimal_encodings_are_refused() {
    for len in [0u16, 1, 125] {
        let bytes = header(0x82, true, 126, &len.to_be_bytes());
        assert_eq!(parse_header(&bytes), Err(HeaderError::NonMinimalLength), "16-bit {len}");
    }
    for len in [0u64, 125, 126, 65535] {
        let bytes = header(0x82, true, 127, &len.to_be_bytes());
        assert_eq!(parse_header(&bytes), Err(HeaderError::NonMinimalLength), "64-bit {len}");
    }
    // The smallest legal values of each encoding.
    assert_eq!(
        parse_header(&header(0x82, true, 126, &126u16.to_be_bytes())).unwrap().unwrap().payload_len,
        126
    );
    assert_eq!(
        parse_header(&header(0x82, true, 127, &65536u64.to_be_bytes())).unwrap().unwrap().payload_len,
        65536
    );
}

#[test]
fn header_rules_table() {
    let table: &[(&[u8], Result<(), HeaderError>)] = &[
        (&[0x81, 0x80, 0, 0, 0, 0], Ok(())),
        (&[0x01, 0x80, 0, 0, 0, 0], Ok(())),
        (&[0x00, 0x80, 0, 0, 0, 0], Ok(())),
        (&[0x80, 0x80, 0, 0, 0, 0], Ok(())),
        (&[0x89, 0xfd, 0, 0, 0, 0], Ok(())), // ping of 125
        (&[0x8a, 0x80, 0, 0, 0, 0], Ok(())),
        (&[0x88, 0x80, 0, 0, 0, 0], Ok(())),
        (&[0x09, 0x80], Err(HeaderError::FragmentedControl)),
        (&[0x0a, 0x80], Err(HeaderError::FragmentedControl)),
        (&[0x08, 0x80], Err(HeaderError::FragmentedControl)),
        (&[0x89, 0xfe], Err(HeaderError::ControlTooLong(126))),
        (&[0x88, 0xff], Err(HeaderError::ControlTooLong(127))),
        (&[0xc1, 0x80], Err(HeaderError::ReservedBits(0b100))),
        (&[0xa1, 0x80], Err(HeaderError::ReservedBits(0b010))),
        (&[0x91, 0x80], Err(HeaderError::ReservedBits(0b001))),
        (&[0xf1, 0x80], Err(HeaderError::ReservedBits(0b111))),
        (&[0xc9, 0x80], Err(HeaderError::ReservedBits(0b100))),
    ];
    for &(bytes, expected) in table {
        let got = parse_header(bytes).map(|h| assert!(h.is_some(), "{bytes:x?} is complete"));
        assert_eq!(got, expected, "{bytes:x?}");
    }
    for op in (3..=7u8).chain(11..=15) {
        for fin in [0, 0x80] {
            assert_eq!(parse_header(&[fin | op, 0x80]), Err(HeaderError::ReservedOpcode(op)), "op {op}");
            // Needs no more than the first byte's worth of information.
            assert_eq!(parse_header(&[fin | op, 0xff]), Err(HeaderError::ReservedOpcode(op)), "op {op}");
        }
    }
}

#[test]
fn rfc_example_frames() {
    // RFC 6455 section 5.7.
    let cfg = SessionConfig::default();
    let examples: Vec<(Vec<u8>, Vec<Ev>, Vec<u8>)> = vec![
        // A single-frame masked text message "Hello".
        (
            vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
            vec![Ev::Text("Hello".into())],
            vec![],
        ),
        // A fragmented masked text message "Hel" + "lo" (same masking per frame).
        (
            cat(&[
                vec![0x01, 0x83, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d],
                vec![0x80, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x5b, 0x95],
            ]),
            vec![Ev::Text("Hello".into())],
            vec![],
        ),
        // A masked ping with body "Hello": answered by the unmasked pong of the RFC example.
        (
            vec![0x89, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58],
            vec![Ev::Ping(b"Hello".to_vec())],
            vec![0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f],
        ),
    ];
    for (bytes, events, out) in examples {
        let mut d = Driver::new(cfg.clone());
        d.feed(&bytes).unwrap();
        assert_eq!(d.events, events);
        assert_eq!(d.out, out);
    }
    // The unmasked examples are what the server writes.
    assert_eq!(frame::build_frame(OpCode::Text, b"Hello"), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(&frame::build_frame(OpCode::Binary, &[0; 256])[..4], [0x82, 0x7e, 0x01, 0x00]);
    assert_eq!(&frame::build_frame(OpCode::Binary, &[0; 65536])[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    // An unmasked "Hello" from a client is refused.
    let mut d = Driver::new(cfg);
    assert_eq!(d.feed(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]), Err(ProtocolError::UnmaskedFrame));
}

#[test]
fn masked_frame_writer_matches_the_rfc() {
    let mut out = Vec::new();
    frame::write_masked_frame(&mut out, true, OpCode::Text, [0x37, 0xfa, 0x21, 0x3d], b"Hello");
    assert_eq!(out, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    let mut out = Vec::new();
    frame::write_masked_frame(&mut out, false, OpCode::Binary, [9, 9, 9, 9], &[0; 70_000]);
    let h = parse_header(&out).unwrap().unwrap();
    assert!(!h.fin);
    assert_eq!(h.payload_len, 70_000);
    assert_eq!(h.header_len, 14);
    assert!(out[14..].iter().all(|&b| b == 9));
}

#[test]
fn mask_is_positional() {
    let key = [1, 2, 4, 8];
    for offset in 0..8 {
        let mut buf = [0u8; 9];
        apply_mask(&mut buf, key, offset);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, key[(offset + i) % 4], "offset {offset} byte {i}");
        }
    }
    let mut empty: [u8; 0] = [];
    apply_mask(&mut empty, key, 3);
}

#[test]
fn close_payload_table() {
    use ProtocolError as P;
    type Parsed = Result<(Option<u16>, &'static str), ProtocolError>;
    let table: &[(&[u8], Parsed)] = &[
        (b"", Ok((None, ""))),
        (b"\x03", Err(P::CloseTooShort)),
        (b"\x03\xe8", Ok((Some(1000), ""))),
        (b"\x03\xe8ok", Ok((Some(1000), "ok"))),
        (b"\x0b\xb8\xce\xba", Ok((Some(3000), "κ"))),
        (b"\x03\xe8\xce", Err(P::InvalidUtf8)),
        (b"\x03\xe8\xff", Err(P::InvalidUtf8)),
        (b"\x03\xed", Err(P::InvalidCloseCode(1005))),
        (b"\x03\xee", Err(P::InvalidCloseCode(1006))),
        (b"\x03\xec", Err(P::InvalidCloseCode(1004))),
        (b"\x03\xf7", Err(P::InvalidCloseCode(1015))),
        (b"\x13\x88", Err(P::InvalidCloseCode(5000))),
        (b"\x00\x00", Err(P::InvalidCloseCode(0))),
        // An invalid code is refused even with a bad reason: 1002 wins over 1007.
        (b"\x00\x00\xff", Err(P::InvalidCloseCode(0))),
    ];
    for &(payload, ref expected) in table {
        assert_eq!(&parse_close_payload(payload), expected, "{payload:x?}");
    }
    for code in 0..=u16::MAX {
        let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
        assert_eq!(is_valid_on_wire(code), valid, "code {code}");
        assert_eq!(parse_close_payload(&code.to_be_bytes()).is_ok(), valid, "code {code}");
    }
}

#[test]
fn close_frames_written_by_the_server() {
    let mut out = Vec::new();
    frame::write_close(&mut out, 1001, "bye");
    assert_eq!(out, [0x88, 0x05, 0x03, 0xe9, b'b', b'y', b'e']);
    // A long reason is cut to fit 125 bytes, on a character boundary.
    for reason in ["x".repeat(200), "€".repeat(60), "ab€".repeat(40)] {
        let mut out = Vec::new();
        frame::write_close(&mut out, 4000, &reason);
        let frames = parse_server_frames(&out);
        assert_eq!(frames.len(), 1);
        let payload = &frames[0].payload;
        assert!(payload.len() <= 125, "{}", payload.len());
        assert!(payload.len() >= 123, "cut no more than a character: {}", payload.len());
        assert_eq!(frames[0].close_code(), Some(4000));
        let text = std::str::from_utf8(&payload[2..]).expect("UTF-8 reason");
        assert!(reason.starts_with(text));
    }
}

#[test]
fn error_reasons_fit_a_close_frame_and_map_to_codes() {
    use ProtocolError as P;
    let all = [
        (P::Header(HeaderError::ReservedOpcode(3)), 1002),
        (P::Header(HeaderError::ReservedBits(1)), 1002),
        (P::Header(HeaderError::LengthOverflow), 1002),
        (P::Header(HeaderError::NonMinimalLength), 1002),
        (P::Header(HeaderError::FragmentedControl), 1002),
        (P::Header(HeaderError::ControlTooLong(126)), 1002),
        (P::UnmaskedFrame, 1002),
        (P::UnexpectedContinuation, 1002),
        (P::ExpectedContinuation, 1002),
        (P::MessageTooBig { at_least: 10, max: 5 }, 1009),
        (P::InvalidUtf8, 1007),
        (P::CloseTooShort, 1002),
        (P::InvalidCloseCode(5), 1002),
    ];
    for (e, code) in all {
        assert_eq!(e.close_code(), code, "{e:?}");
        assert!(!e.reason().is_empty() && e.reason().len() <= 123, "{e:?}");
        assert!(!e.to_string().is_empty());
    }
}
