//! Session rules of RFC 6455 sections 5-7 over the public sans-IO API: framing errors and their
//! close codes, message assembly, control frames, the close handshake and heartbeats.

mod protocol_driver;

use protocol_driver::*;
use wshub::protocol::close::code;
use wshub::protocol::frame::{HeaderError, OpCode};
use wshub::protocol::session::{ProtocolError, TimerOutcome};
use wshub::protocol::SessionConfig;

fn config() -> SessionConfig {
    SessionConfig { max_message_size: 1 << 20, ping_interval: None, pong_wait: None, close_timeout: 5_000 }
}

fn small(max: usize) -> SessionConfig {
    SessionConfig { max_message_size: max, ..config() }
}

/// Asserts the session failed with `expected`, wrote exactly one close frame (with `close`) as
/// its last frame, preceded only by pongs, and refuses to send anything more.
fn assert_failed(d: &Driver, expected: ProtocolError, close: u16, what: &str) {
    assert_eq!(d.error, Some(expected), "{what}");
    assert_eq!(expected.close_code(), close, "{what}");
    let frames = d.out_frames();
    let (last, before) = frames.split_last().unwrap_or_else(|| panic!("{what}: no close written"));
    assert!(before.iter().all(|f| f.opcode == OpCode::Pong), "{what}: {frames:?}");
    assert_eq!(last.opcode, OpCode::Close, "{what}");
    assert_eq!(last.close_code(), Some(close), "{what}");
    assert!(std::str::from_utf8(&last.payload[2..]).is_ok(), "{what}: reason is UTF-8");
    assert!(d.session.is_closed(), "{what}: closed after an error");
    assert!(!d.session.can_send(), "{what}");
    let mut out = Vec::new();
    assert!(!d.session.send(&mut out, OpCode::Text, b"late"), "{what}");
    assert!(out.is_empty(), "{what}: nothing is sent after the close");
}

/// Runs one error case fed whole and fed one byte at a time: same error, same output.
fn check_error(cfg: &SessionConfig, bytes: &[u8], expected: ProtocolError, close: u16, what: &str) {
    let mut whole = Driver::new(cfg.clone());
    assert_eq!(whole.feed(bytes), Err(expected), "{what} (whole)");
    assert_failed(&whole, expected, close, &format!("{what} (whole)"));

    let mut bytewise = Driver::new(cfg.clone());
    assert_eq!(bytewise.feed_bytewise(bytes), Err(expected), "{what} (bytewise)");
    assert_failed(&bytewise, expected, close, &format!("{what} (bytewise)"));
    assert_eq!(whole.events, bytewise.events, "{what}");
    assert_eq!(whole.out, bytewise.out, "{what}");
    if !what.contains("ping") {
        assert_eq!(whole.out_frames().len(), 1, "{what}: the close is the only frame");
    }
}

#[test]
fn protocol_errors_close_with_the_right_code() {
    use ProtocolError as P;
    let text = |fin, p: &[u8]| client(fin, OpCode::Text, p);
    let cont = |fin, p: &[u8]| client(fin, OpCode::Continuation, p);
    let mut cases: Vec<(String, Vec<u8>, ProtocolError, u16)> = vec![
        ("unmasked text".into(), vec![0x81, 0x02, b'h', b'i'], P::UnmaskedFrame, 1002),
        ("unmasked ping".into(), vec![0x89, 0x00], P::UnmaskedFrame, 1002),
        ("unmasked close".into(), vec![0x88, 0x02, 0x03, 0xe8], P::UnmaskedFrame, 1002),
        (
            "fragmented ping".into(),
            client(false, OpCode::Ping, b"x"),
            P::Header(HeaderError::FragmentedControl),
            1002,
        ),
        (
            "fragmented close".into(),
            client(false, OpCode::Close, &[]),
            P::Header(HeaderError::FragmentedControl),
            1002,
        ),
        (
            "ping of 126 bytes".into(),
            raw_header(0x89, true, 126, &126u16.to_be_bytes()),
            P::Header(HeaderError::ControlTooLong(126)),
            1002,
        ),
        (
            "pong of 127-encoded length".into(),
            raw_header(0x8A, true, 127, &70_000u64.to_be_bytes()),
            P::Header(HeaderError::ControlTooLong(127)),
            1002,
        ),
        (
            "64-bit length with top bit".into(),
            raw_header(0x82, true, 127, &(1u64 << 63).to_be_bytes()),
            P::Header(HeaderError::LengthOverflow),
            1002,
        ),
        (
            "64-bit length all ones".into(),
            raw_header(0x82, true, 127, &u64::MAX.to_be_bytes()),
            P::Header(HeaderError::LengthOverflow),
            1002,
        ),
        (
            "16-bit length 125".into(),
            raw_header(0x82, true, 126, &125u16.to_be_bytes()),
            P::Header(HeaderError::NonMinimalLength),
            1002,
        ),
        (
            "16-bit length 0".into(),
            raw_header(0x82, true, 126, &0u16.to_be_bytes()),
            P::Header(HeaderError::NonMinimalLength),
            1002,
        ),
        (
            "64-bit length 65535".into(),
            raw_header(0x82, true, 127, &65535u64.to_be_bytes()),
            P::Header(HeaderError::NonMinimalLength),
            1002,
        ),
        (
            "64-bit length 125".into(),
            raw_header(0x82, true, 127, &125u64.to_be_bytes()),
            P::Header(HeaderError::NonMinimalLength),
            1002,
        ),
        ("continuation first".into(), cont(true, b"x"), P::UnexpectedContinuation, 1002),
        (
            "continuation after a finished message".into(),
            cat(&[text(true, b"done"), cont(true, b"x")]),
            P::UnexpectedContinuation,
            1002,
        ),
        (
            "text while text is open".into(),
            cat(&[text(false, b"a"), text(true, b"b")]),
            P::ExpectedContinuation,
            1002,
        ),
        (
            "binary while text is open".into(),
            cat(&[text(false, b"a"), client(true, OpCode::Binary, b"b")]),
            P::ExpectedContinuation,
            1002,
        ),
        (
            "text while binary is open, after a ping".into(),
            cat(&[client(false, OpCode::Binary, b"a"), client(true, OpCode::Ping, b""), text(false, b"b")]),
            P::ExpectedContinuation,
            1002,
        ),
        ("close with 1-byte payload".into(), client(true, OpCode::Close, &[0x03]), P::CloseTooShort, 1002),
        ("close reason not UTF-8".into(), client_close(1000, b"bad \xff"), P::InvalidUtf8, 1007),
        ("close reason cut code point".into(), client_close(1001, b"\xc3"), P::InvalidUtf8, 1007),
        ("text not UTF-8".into(), text(true, b"ab\xffcd"), P::InvalidUtf8, 1007),
        ("text surrogate".into(), text(true, b"\xed\xa0\x80"), P::InvalidUtf8, 1007),
        ("text overlong".into(), text(true, b"\xc0\xaf"), P::InvalidUtf8, 1007),
        ("text ends mid code point".into(), text(true, b"ok\xe2\x82"), P::InvalidUtf8, 1007),
        (
            "fragmented text ends mid code point".into(),
            cat(&[text(false, b"ok\xe2"), cont(true, b"\x82")]),
            P::InvalidUtf8,
            1007,
        ),
    ];
    for op in (3..=7u8).chain(11..=15) {
        cases.push((
            format!("reserved opcode {op}"),
            vec![0x80 | op, 0x80, 1, 2, 3, 4],
            P::Header(HeaderError::ReservedOpcode(op)),
            1002,
        ));
    }
    for rsv in 1..8u8 {
        cases.push((
            format!("rsv bits {rsv:03b}"),
            client(true, OpCode::Text, b"hi")
                .iter()
                .enumerate()
                .map(|(i, &b)| if i == 0 { b | rsv << 4 } else { b })
                .collect(),
            P::Header(HeaderError::ReservedBits(rsv)),
            1002,
        ));
    }
    for (name, bytes, expected, close) in cases {
        check_error(&config(), &bytes, expected, close, &name);
    }
}

#[test]
fn close_code_range_edges() {
    let table: &[(u16, bool)] = &[
        (0, false),
        (1, false),
        (999, false),
        (1000, true),
        (1001, true),
        (1002, true),
        (1003, true),
        (1004, false),
        (1005, false),
        (1006, false),
        (1007, true),
        (1008, true),
        (1009, true),
        (1010, true),
        (1011, true),
        (1012, false),
        (1013, false),
        (1014, false),
        (1015, false),
        (1016, false),
        (2000, false),
        (2999, false),
        (3000, true),
        (3001, true),
        (3999, true),
        (4000, true),
        (4999, true),
        (5000, false),
        (32768, false),
        (65535, false),
    ];
    for &(wire_code, valid) in table {
        let bytes = client_close(wire_code, b"bye");
        if valid {
            let mut d = Driver::new(config());
            let events = d.feed(&bytes).unwrap_or_else(|e| panic!("code {wire_code}: {e}"));
            assert_eq!(events, vec![Ev::Closed { code: Some(wire_code), reason: "bye".into() }]);
            let frames = d.out_frames();
            assert_eq!(frames.len(), 1, "code {wire_code}");
            assert_eq!(frames[0].close_code(), Some(wire_code), "echo of {wire_code}");
            assert!(d.session.is_closed());
        } else {
            let e = ProtocolError::InvalidCloseCode(wire_code);
            check_error(&config(), &bytes, e, 1002, &format!("close code {wire_code}"));
        }
    }
}

#[test]
fn close_without_code_is_answered_with_1000() {
    let mut d = Driver::new(config());
    let events = d.feed(&client(true, OpCode::Close, b"")).unwrap();
    assert_eq!(events, vec![Ev::Closed { code: None, reason: String::new() }]);
    let frames = d.out_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(1000));
    assert!(d.session.is_closed());
    assert!(!d.session.can_send());
    // The peer's bytes after its close are swallowed without events or output.
    let events =
        d.feed(&cat(&[client(true, OpCode::Text, b"after"), client(true, OpCode::Ping, b"p")])).unwrap();
    assert!(events.is_empty());
    assert_eq!(d.out_frames().len(), 1);
    let mut out = Vec::new();
    assert!(!d.session.send(&mut out, OpCode::Binary, b"x"));
    assert!(!d.session.close(&d.config, &mut out, 1000, "", 0), "no close after the peer's close");
    assert!(out.is_empty());
    assert_eq!(d.session.next_timeout(&d.config), None);
}

#[test]
fn close_with_code_and_reason_is_echoed_without_reason() {
    let mut d = Driver::new(config());
    let events = d.feed(&client_close(4001, "going away é".as_bytes())).unwrap();
    assert_eq!(events, vec![Ev::Closed { code: Some(4001), reason: "going away é".into() }]);
    let frames = d.out_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, 4001u16.to_be_bytes().to_vec());
}

#[test]
fn length_encoding_edges_through_a_session() {
    for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let bytes = client(true, OpCode::Binary, &payload);
        let expected_header = if len < 126 {
            6
        } else if len <= 65535 {
            8
        } else {
            14
        };
        assert_eq!(bytes.len(), expected_header + len, "len {len}");
        for chunk in [bytes.len(), 1000, 7, 1] {
            if chunk == 1 && len > 70_000 {
                continue;
            }
            let mut d = Driver::new(config());
            d.feed_chunked(&bytes, &[chunk]).unwrap();
            assert_eq!(d.events, vec![Ev::Binary(payload.clone())], "len {len} chunk {chunk}");
            assert!(d.out.is_empty());
        }
    }
}

#[test]
fn huge_lengths_are_refused_from_the_header_alone() {
    // 2^63 - 1 is a legal encoding, but over any limit: 1009 from the header alone.
    let header = raw_header(0x82, true, 127, &((1u64 << 63) - 1).to_be_bytes());
    check_error(
        &config(),
        &header,
        ProtocolError::MessageTooBig { at_least: (1 << 63) - 1, max: 1 << 20 },
        1009,
        "2^63-1",
    );
    // 2^63 is not a legal length at all: 1002.
    let header = raw_header(0x82, true, 127, &(1u64 << 63).to_be_bytes());
    check_error(&config(), &header, ProtocolError::Header(HeaderError::LengthOverflow), 1002, "2^63");
}

#[test]
fn too_big_is_refused_before_the_payload() {
    let max = 1000;
    // Exactly the limit is fine.
    let mut d = Driver::new(small(max));
    d.feed(&client(true, OpCode::Binary, &vec![1; max])).unwrap();
    assert_eq!(d.events, vec![Ev::Binary(vec![1; max])]);

    // One more: only the header is fed, and the error comes at once.
    let frame = client(true, OpCode::Binary, &vec![1; max + 1]);
    let header_len = 8;
    check_error(
        &small(max),
        &frame[..header_len],
        ProtocolError::MessageTooBig { at_least: max as u64 + 1, max },
        1009,
        "single frame over the limit",
    );

    // Running total: 600 + 400 is fine, 600 + 401 is refused at the second header.
    let ok =
        cat(&[client(false, OpCode::Text, &[b'a'; 600]), client(true, OpCode::Continuation, &[b'b'; 400])]);
    let mut d = Driver::new(small(max));
    d.feed(&ok).unwrap();
    assert_eq!(d.events.len(), 1);
    let first = client(false, OpCode::Text, &[b'a'; 600]);
    let second = client(true, OpCode::Continuation, &[b'b'; 401]);
    let mut bytes = first.clone();
    bytes.extend_from_slice(&second[..8]); // header only
    check_error(
        &small(max),
        &bytes,
        ProtocolError::MessageTooBig { at_least: 1001, max },
        1009,
        "running total over the limit",
    );
    // With control frames in between, the total still counts data only.
    let mut bytes = cat(&[first, client(true, OpCode::Ping, &[0; 125])]);
    bytes.extend_from_slice(&second[..8]);
    let mut d = Driver::new(small(max));
    assert!(matches!(d.feed(&bytes), Err(ProtocolError::MessageTooBig { at_least: 1001, .. })));
    let frames = d.out_frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].opcode, OpCode::Pong);
    assert_eq!(frames[1].close_code(), Some(1009));
}

#[test]
fn invalid_utf8_fails_at_the_first_bad_fragment() {
    // The second fragment is bad; the final one never arrives.
    let bytes = cat(&[
        client(false, OpCode::Text, "héllo ".as_bytes()),
        client(false, OpCode::Continuation, b"\xf4\x90\x80\x80"),
    ]);
    check_error(&config(), &bytes, ProtocolError::InvalidUtf8, 1007, "bad second fragment");

    // A code point split across fragments is fine.
    let euro = "€".as_bytes();
    let bytes = cat(&[
        client(false, OpCode::Text, &euro[..1]),
        client(false, OpCode::Continuation, &euro[1..2]),
        client(true, OpCode::Continuation, &euro[2..]),
    ]);
    let mut d = Driver::new(config());
    d.feed(&bytes).unwrap();
    assert_eq!(d.events, vec![Ev::Text("€".into())]);
}

#[test]
fn invalid_utf8_fails_at_the_first_bad_chunk_of_a_split_frame() {
    let mut payload = b"valid start ".to_vec();
    payload.extend_from_slice(b"\xff");
    payload.extend_from_slice(&[b'z'; 500]);
    let frame = client(true, OpCode::Text, &payload);
    let header_len = 8;
    let mut d = Driver::new(config());
    // Header and the valid part: no event, no error.
    assert_eq!(d.feed(&frame[..header_len + 12]), Ok(vec![]));
    assert!(d.out.is_empty());
    // The chunk holding the bad byte fails, though most of the frame is still to come.
    assert_eq!(d.feed(&frame[header_len + 12..header_len + 20]), Err(ProtocolError::InvalidUtf8));
    assert_failed(&d, ProtocolError::InvalidUtf8, 1007, "split frame");

    // Same inside a fragmented message, on a continuation frame split across reads.
    let first = client(false, OpCode::Text, b"abc");
    let second = client(true, OpCode::Continuation, b"de\xc0\xafgh");
    let mut d = Driver::new(config());
    assert_eq!(d.feed(&first), Ok(vec![]));
    assert_eq!(d.feed(&second[..6 + 2]), Ok(vec![]));
    assert_eq!(d.feed(&second[8..10]), Err(ProtocolError::InvalidUtf8));
    assert_failed(&d, ProtocolError::InvalidUtf8, 1007, "split continuation");
}

#[test]
fn ping_is_answered_with_the_same_payload() {
    for len in [0usize, 1, 60, 125] {
        let payload: Vec<u8> = (0..len as u8).collect();
        let mut d = Driver::new(config());
        let events = d.feed(&client(true, OpCode::Ping, &payload)).unwrap();
        assert_eq!(events, vec![Ev::Ping(payload.clone())]);
        let frames = d.out_frames();
        assert_eq!(frames, vec![OutFrame { fin: true, opcode: OpCode::Pong, payload }]);
        assert!(d.session.can_send());
    }
}

#[test]
fn unsolicited_pong_is_an_event_without_output() {
    let mut d = Driver::new(config());
    let events = d.feed(&client(true, OpCode::Pong, b"hb")).unwrap();
    assert_eq!(events, vec![Ev::Pong(b"hb".to_vec())]);
    assert!(d.out.is_empty());
    assert!(d.session.can_send());
}

#[test]
fn control_frames_interleave_with_a_fragmented_message() {
    let bytes = cat(&[
        client(false, OpCode::Text, b"Hel"),
        client(true, OpCode::Ping, b"p1"),
        client(false, OpCode::Continuation, b"lo, "),
        client(true, OpCode::Pong, b"q"),
        client(true, OpCode::Ping, b""),
        client(true, OpCode::Continuation, "wörld".as_bytes()),
        client(true, OpCode::Binary, b"\x00\x01"),
    ]);
    for chunk in [bytes.len(), 5, 1] {
        let mut d = Driver::new(config());
        d.feed_chunked(&bytes, &[chunk]).unwrap();
        assert_eq!(
            d.events,
            vec![
                Ev::Ping(b"p1".to_vec()),
                Ev::Pong(b"q".to_vec()),
                Ev::Ping(vec![]),
                Ev::Text("Hello, wörld".into()),
                Ev::Binary(vec![0, 1]),
            ],
            "chunk {chunk}"
        );
        let frames = d.out_frames();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].payload, b"p1");
        assert_eq!(frames[1].payload, b"");
        assert!(frames.iter().all(|f| f.opcode == OpCode::Pong));
        assert_eq!(d.session.buffered(), 0, "chunk {chunk}");
    }
}

#[test]
fn client_close_in_the_middle_of_a_fragmented_message() {
    let bytes = cat(&[client(false, OpCode::Binary, b"part"), client_close(1001, b"")]);
    let mut d = Driver::new(config());
    let events = d.feed(&bytes).unwrap();
    assert_eq!(events, vec![Ev::Closed { code: Some(1001), reason: String::new() }]);
    assert_eq!(d.out_frames().len(), 1);
    assert_eq!(d.out_frames()[0].close_code(), Some(1001));
    assert_eq!(d.session.buffered(), 0);
}

#[test]
fn server_close_waits_for_the_client_close() {
    let cfg = SessionConfig { ping_interval: Some(100), pong_wait: Some(10_000), ..config() };
    let mut d = Driver::new(cfg.clone());
    assert!(d.session.close(&cfg, &mut d.out, code::GOING_AWAY, "shutting down", 0));
    assert!(!d.session.can_send());
    assert!(!d.session.is_closed());
    assert!(!d.session.close(&cfg, &mut d.out, code::NORMAL, "again", 0), "only one close");
    let mut out = Vec::new();
    assert!(!d.session.send(&mut out, OpCode::Text, b"late"));
    assert!(out.is_empty());

    // Data, fragmented data and pings meanwhile: no events, no pong. A pong is still noted.
    let meanwhile = cat(&[
        client(true, OpCode::Text, b"ignored"),
        client(false, OpCode::Binary, &[9; 300]),
        client(true, OpCode::Ping, b"ping"),
        client(true, OpCode::Continuation, &[9; 10]),
        client(true, OpCode::Binary, &[1; 200]),
    ]);
    for chunk in [meanwhile.len(), 3] {
        let mut d2 = Driver::new(cfg.clone());
        assert!(d2.session.close(&cfg, &mut d2.out, code::GOING_AWAY, "shutting down", 0));
        d2.feed_chunked(&meanwhile, &[chunk]).unwrap();
        assert!(d2.events.is_empty(), "chunk {chunk}: {:?}", d2.events);
        assert_eq!(d2.out_frames().len(), 1, "chunk {chunk}: only our close");
    }
    d.feed(&meanwhile).unwrap();
    assert!(d.events.is_empty());
    // No heartbeat ping either after our close.
    d.now = 500;
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 500), TimerOutcome::Alive);
    // The client's close ends it, without a second close from us.
    let events = d.feed(&client_close(1000, b"")).unwrap();
    assert_eq!(events, vec![Ev::Closed { code: Some(1000), reason: String::new() }]);
    assert!(d.session.is_closed());
    let frames = d.out_frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].close_code(), Some(1001));
    assert_eq!(&frames[0].payload[2..], b"shutting down");
    assert_eq!(d.session.next_timeout(&cfg), None);
}

#[test]
fn server_close_gives_up_after_close_timeout() {
    let cfg = SessionConfig { close_timeout: 2_000, ping_interval: Some(500), ..config() };
    let mut d = Driver::at(cfg.clone(), 10_000);
    assert!(d.session.close(&cfg, &mut d.out, 1000, "", 10_300));
    assert_eq!(d.session.next_timeout(&cfg), Some(12_300));
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 12_299), TimerOutcome::Alive);
    assert!(!d.session.is_closed());
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 12_300), TimerOutcome::Expired);
    assert!(d.session.is_closed());
    let frames = d.out_frames();
    assert_eq!(frames.len(), 1, "only the one close: {frames:?}");
    assert_eq!(frames[0].close_code(), Some(1000));
}

#[test]
fn errors_after_our_close_do_not_write_a_second_close() {
    let cfg = config();
    let mut d = Driver::new(cfg.clone());
    assert!(d.session.close(&cfg, &mut d.out, 1001, "bye", 0));
    assert_eq!(d.feed(&[0x81, 0x00]), Err(ProtocolError::UnmaskedFrame));
    assert!(d.session.is_closed());
    let frames = d.out_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].close_code(), Some(1001));
}

#[test]
fn heartbeat_pings_on_schedule_and_expires_on_silence() {
    let cfg = SessionConfig { ping_interval: Some(1_000), pong_wait: Some(2_500), ..config() };
    let mut d = Driver::at(cfg.clone(), 0);
    assert_eq!(d.session.next_timeout(&cfg), Some(1_000));
    // Early: nothing.
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 999), TimerOutcome::Alive);
    assert!(d.out.is_empty());
    // Due: one empty ping.
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 1_000), TimerOutcome::Alive);
    assert_eq!(d.out_frames(), vec![OutFrame { fin: true, opcode: OpCode::Ping, payload: vec![] }]);
    assert_eq!(d.session.next_timeout(&cfg), Some(2_000));
    // The pong at 1_800 resets the silence: expiry moves to 4_300.
    d.now = 1_800;
    assert_eq!(d.feed(&client(true, OpCode::Pong, b"")).unwrap(), vec![Ev::Pong(vec![])]);
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 2_000), TimerOutcome::Alive);
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 3_000), TimerOutcome::Alive);
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 4_000), TimerOutcome::Alive);
    assert_eq!(d.out_frames().len(), 4, "pings at 1000, 2000, 3000, 4000");
    assert_eq!(d.session.next_timeout(&cfg), Some(4_300));
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 4_299), TimerOutcome::Alive);
    assert!(!d.session.is_closed());
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 4_300), TimerOutcome::Expired);
    assert!(d.session.is_closed());
    let frames = d.out_frames();
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[4].opcode, OpCode::Close);
    assert!(!d.session.send(&mut Vec::new(), OpCode::Text, b"x"));
}

#[test]
fn only_whole_frames_reset_the_silence() {
    let cfg = SessionConfig { ping_interval: None, pong_wait: Some(1_000), ..config() };
    let mut d = Driver::at(cfg.clone(), 0);
    assert_eq!(d.session.next_timeout(&cfg), Some(1_000));
    let frame = client(true, OpCode::Binary, b"slowly");
    // A whole frame at 500 is hearing from the peer.
    d.now = 500;
    assert_eq!(d.feed(&frame).unwrap(), vec![Ev::Binary(b"slowly".to_vec())]);
    assert_eq!(d.session.next_timeout(&cfg), Some(1_500));
    // Parts of a frame are not: a peer trickling bytes cannot hold the connection forever.
    d.now = 900;
    assert_eq!(d.feed(&frame[..1]).unwrap(), vec![]);
    d.now = 1_400;
    assert_eq!(d.feed(&frame[1..8]).unwrap(), vec![]);
    assert_eq!(d.session.next_timeout(&cfg), Some(1_500));
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 1_499), TimerOutcome::Alive);
    assert!(d.out.is_empty(), "no ping without ping_interval");
    assert_eq!(d.session.handle_timeout(&cfg, &mut d.out, 1_500), TimerOutcome::Expired);
    // Frames of a fragmented message count one by one, as they complete.
    let mut d = Driver::at(cfg.clone(), 0);
    d.now = 800;
    assert_eq!(d.feed(&client(false, OpCode::Text, b"he")).unwrap(), vec![]);
    assert_eq!(d.session.next_timeout(&cfg), Some(1_800));
    d.now = 1_600;
    assert_eq!(d.feed(&client(true, OpCode::Continuation, b"llo")).unwrap(), vec![Ev::Text("hello".into())]);
    assert_eq!(d.session.next_timeout(&cfg), Some(2_600));
}

#[test]
fn no_timers_when_disabled() {
    let cfg = config();
    let d = Driver::new(cfg.clone());
    assert_eq!(d.session.next_timeout(&cfg), None);
}

#[test]
fn send_writes_whole_server_frames_while_open() {
    let cfg = config();
    let mut d = Driver::new(cfg.clone());
    assert!(d.session.send(&mut d.out, OpCode::Text, "hé".as_bytes()));
    assert!(d.session.send(&mut d.out, OpCode::Binary, &[0; 70_000]));
    assert!(d.session.close(&cfg, &mut d.out, 1000, "", 0));
    let before = d.out.len();
    assert!(!d.session.send(&mut d.out, OpCode::Text, b"after"));
    assert_eq!(d.out.len(), before, "nothing follows the close frame");
    let frames = d.out_frames();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].payload, "hé".as_bytes());
    assert_eq!(frames[1].payload.len(), 70_000);
    assert_eq!(frames.last().unwrap().opcode, OpCode::Close);
}

#[test]
fn empty_messages_and_empty_fragments() {
    let bytes = cat(&[
        client(true, OpCode::Text, b""),
        client(true, OpCode::Binary, b""),
        client(false, OpCode::Text, b""),
        client(false, OpCode::Continuation, b""),
        client(true, OpCode::Continuation, b""),
        client(false, OpCode::Binary, b"x"),
        client(true, OpCode::Continuation, b""),
    ]);
    for chunk in [bytes.len(), 1] {
        let mut d = Driver::new(config());
        d.feed_chunked(&bytes, &[chunk]).unwrap();
        assert_eq!(
            d.events,
            vec![
                Ev::Text(String::new()),
                Ev::Binary(vec![]),
                Ev::Text(String::new()),
                Ev::Binary(b"x".to_vec())
            ]
        );
    }
}

#[test]
fn bytes_after_a_message_in_the_same_read_are_kept() {
    // A whole message followed by half a header: the event comes, the half header waits.
    let second = client(true, OpCode::Text, b"second");
    let mut bytes = client(true, OpCode::Text, b"first");
    bytes.extend_from_slice(&second[..3]);
    let mut d = Driver::new(config());
    assert_eq!(d.feed(&bytes).unwrap(), vec![Ev::Text("first".into())]);
    assert_eq!(d.pending, second[..3].to_vec());
    assert_eq!(d.feed(&second[3..]).unwrap(), vec![Ev::Text("second".into())]);
    assert!(d.pending.is_empty());
}

#[test]
fn an_idle_session_stays_small() {
    // The per-connection cost the session module promises; message state is boxed on demand.
    assert!(std::mem::size_of::<wshub::protocol::Session>() <= 32);
}

#[test]
fn assembly_buffer_is_released_after_delivery() {
    let mut d = Driver::new(config());
    let first = client(false, OpCode::Binary, &[5; 100]);
    d.feed(&first).unwrap();
    assert_eq!(d.session.buffered(), 100);
    d.feed(&client(true, OpCode::Continuation, &[6; 50])).unwrap();
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.session.buffered(), 0, "the driver's next advance dropped the delivered message");
    // The next message starts from an empty total: 100 + 50 must not count against it.
    let cfg = small(120);
    let mut d = Driver::new(cfg);
    d.feed(&cat(&[first.clone(), client(true, OpCode::Continuation, &[6; 20])])).unwrap();
    d.feed(&client(true, OpCode::Binary, &[7; 120])).unwrap();
    assert_eq!(d.events.len(), 2);
}

#[test]
fn a_message_open_when_we_close_is_never_delivered() {
    let cfg = config();
    let mut d = Driver::new(cfg.clone());
    let last = client(true, OpCode::Continuation, "ó fin".as_bytes());
    d.feed(&client(false, OpCode::Text, b"started ")).unwrap();
    assert!(d.session.close(&cfg, &mut d.out, 1001, "", 0));
    // The rest is still checked (split across reads) but produces no event.
    d.feed(&last[..7]).unwrap();
    d.feed(&last[7..]).unwrap();
    d.feed(&client(true, OpCode::Text, b"another")).unwrap();
    assert!(d.events.is_empty(), "{:?}", d.events);
    assert_eq!(d.out_frames().len(), 1);
    // A protocol error meanwhile still ends the session, without a second close.
    assert_eq!(d.feed(&client(true, OpCode::Continuation, b"x")), Err(ProtocolError::UnexpectedContinuation));
    assert!(d.session.is_closed());
    assert_eq!(d.out_frames().len(), 1);
}

/// The send path handed out with each step follows the session: it sends while open, and after
/// our close it refuses data frames and writes nothing (what echo mode answers through, since
/// the step's event borrows the session).
#[test]
fn step_sender_refuses_data_after_our_close() {
    let cfg = config();
    let mut session = wshub::protocol::Session::new(&cfg, 0);
    let mut out = Vec::new();
    let mut input = client(true, OpCode::Ping, b"p");
    let step = session.advance(&mut input, &cfg, &mut out, 0).unwrap();
    assert!(step.sender.can_send());
    let mut echo = Vec::new();
    assert!(step.sender.send(&mut echo, OpCode::Text, b"hi"));
    assert_eq!(echo, [0x81, 0x02, b'h', b'i']);

    assert!(session.close(&cfg, &mut out, code::GOING_AWAY, "bye", 0));
    // A pong still reaches the caller after our close (data and pings are dropped).
    let mut input = client(true, OpCode::Pong, b"p");
    let step = session.advance(&mut input, &cfg, &mut out, 0).unwrap();
    assert!(matches!(step.event, Some(wshub::protocol::Event::Pong(b"p"))));
    assert!(!step.sender.can_send());
    let mut late = Vec::new();
    assert!(!step.sender.send(&mut late, OpCode::Text, b"late"));
    assert!(late.is_empty(), "nothing is sent after our close");
    let sender = step.sender;
    assert_eq!(session.sender(), sender);
}
