use super::*;

/// One line per case, httparse style: the header values as sent, and what we agree to
/// (`None`: no extension; `Some((bits, echoed))`: server window and whether it is echoed).
#[test]
fn negotiation_table() {
    type Want = Option<(u8, bool)>;
    let table: &[(&[&str], Want)] = &[
        (&["permessage-deflate"], Some((15, false))),
        (&["PerMessage-Deflate"], Some((15, false))),
        (&["permessage-deflate; client_max_window_bits"], Some((15, false))),
        (&["permessage-deflate; client_max_window_bits=10"], Some((15, false))),
        (&["permessage-deflate; client_max_window_bits=\"12\""], Some((15, false))),
        (&["permessage-deflate; server_no_context_takeover"], Some((15, false))),
        (&["permessage-deflate; client_no_context_takeover"], Some((15, false))),
        (&["permessage-deflate;server_no_context_takeover;client_no_context_takeover"], Some((15, false))),
        (&["permessage-deflate; server_max_window_bits=10"], Some((10, true))),
        (&["permessage-deflate; server_max_window_bits=8"], Some((8, true))),
        (&["permessage-deflate; server_max_window_bits=9"], Some((9, true))),
        (&["permessage-deflate; server_max_window_bits=15"], Some((15, true))),
        (&["permessage-deflate; server_max_window_bits=\"11\""], Some((11, true))),
        (&["permessage-deflate; server_max_window_bits=\"1\\3\""], Some((13, true))),
        (&["permessage-deflate ; server_max_window_bits = 12 ; client_max_window_bits"], Some((12, true))),
        // Invalid values decline the offer.
        (&["permessage-deflate; server_max_window_bits"], None),
        (&["permessage-deflate; server_max_window_bits=7"], None),
        (&["permessage-deflate; server_max_window_bits=16"], None),
        (&["permessage-deflate; server_max_window_bits=010"], None),
        (&["permessage-deflate; server_max_window_bits=08"], None),
        (&["permessage-deflate; server_max_window_bits=1O"], None),
        (&["permessage-deflate; server_max_window_bits="], None),
        (&["permessage-deflate; server_max_window_bits=\"\""], None),
        (&["permessage-deflate; server_max_window_bits=\"10"], None),
        (&["permessage-deflate; server_max_window_bits=+9"], None),
        (&["permessage-deflate; client_max_window_bits=7"], None),
        (&["permessage-deflate; client_max_window_bits=abc"], None),
        (&["permessage-deflate; server_no_context_takeover=1"], None),
        (&["permessage-deflate; client_no_context_takeover=\"\""], None),
        // Unknown and duplicate parameters decline the offer.
        (&["permessage-deflate; foo"], None),
        (&["permessage-deflate; foo=1"], None),
        (&["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], None),
        (&["permessage-deflate; client_max_window_bits; client_max_window_bits=9"], None),
        (&["permessage-deflate; server_max_window_bits=9; server_max_window_bits=9"], None),
        (&["permessage-deflate; ; server_no_context_takeover"], None),
        // Other extensions, or none.
        (&[], None),
        (&[""], None),
        (&["x-webkit-deflate-frame"], None),
        (&["permessage-deflate-x"], None),
        (&["permessage-foo, x-bar"], None),
        // Several offers: the first acceptable one wins.
        (&["permessage-deflate; foo, permessage-deflate; server_max_window_bits=12"], Some((12, true))),
        (&["permessage-deflate; server_max_window_bits=7, permessage-deflate"], Some((15, false))),
        (&["x-other, permessage-deflate; server_max_window_bits=10, permessage-deflate"], Some((10, true))),
        (
            &["permessage-deflate; server_max_window_bits=9, permessage-deflate; server_max_window_bits=10"],
            Some((9, true)),
        ),
        // A comma inside a quoted value does not split offers (and the value is invalid).
        (&["permessage-deflate; server_max_window_bits=\"1,0\", permessage-deflate"], Some((15, false))),
        // Several headers: offers are taken in header order.
        (&["x-other", "permessage-deflate; server_max_window_bits=11"], Some((11, true))),
        (&["permessage-deflate; bad", "permessage-deflate; client_max_window_bits"], Some((15, false))),
        (&["permessage-deflate; bad", "x-other"], None),
    ];
    for (values, want) in table {
        let got = negotiate(values.iter().map(|v| v.as_bytes()));
        let got = got.map(|a| (a.server_max_window_bits, a.server_window_requested));
        assert_eq!(got, *want, "{values:?}");
    }
}

#[test]
fn offer_errors_name_the_rule() {
    let table: &[(&str, OfferError)] = &[
        ("x-foo", OfferError::NotDeflate),
        ("permessage-deflate; foo", OfferError::UnknownParameter),
        (
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
            OfferError::DuplicateParameter,
        ),
        ("permessage-deflate; server_max_window_bits=99", OfferError::InvalidValue),
        ("permessage-deflate; server_no_context_takeover=x", OfferError::InvalidValue),
        ("permessage-deflate; server_max_window_bits=\"1", OfferError::Syntax),
        ("permessage-deflate; a b", OfferError::Syntax),
    ];
    for (offer, want) in table {
        assert_eq!(parse_offer(offer.as_bytes()), Err(*want), "{offer}");
    }
}

#[test]
fn response_always_disables_context_takeover_both_ways() {
    let mut out = Vec::new();
    Agreed { server_max_window_bits: 15, server_window_requested: false }.write_header(&mut out);
    assert_eq!(
        out,
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    );
    for (bits, text) in [(8u8, "8"), (9, "9"), (10, "10"), (15, "15")] {
        let mut out = Vec::new();
        let agreed = Agreed { server_max_window_bits: bits, server_window_requested: true };
        agreed.write_header(&mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with(&format!("; server_max_window_bits={text}\r\n")), "{line}");
        assert!(line.contains("server_no_context_takeover; client_no_context_takeover"));
        // What we answer must itself parse as a valid offer with the same window.
        let value = line.trim_start_matches("Sec-WebSocket-Extensions: ").trim_end();
        assert_eq!(parse_offer(value.as_bytes()).unwrap().server_max_window_bits, bits);
    }
}

#[test]
fn window_8_is_accepted_but_never_compressed_with() {
    let agreed = negotiate([&b"permessage-deflate; server_max_window_bits=8"[..]]).unwrap();
    assert_eq!(agreed.send_window(), None);
    for bits in 9..=15 {
        let agreed = Agreed { server_max_window_bits: bits, server_window_requested: true };
        assert_eq!(agreed.send_window(), Some(bits));
    }
}

fn inflate_all(pieces: &[&[u8]], limit: usize) -> Result<Vec<u8>, InflateError> {
    let mut inflater = Inflater::borrow();
    let mut out = Vec::new();
    for piece in pieces {
        inflater.inflate(piece, &mut out, limit)?;
    }
    inflater.finish(&mut out, limit)?;
    Ok(out)
}

/// RFC 7692 section 7.2.3: the payloads of the examples (frame headers stripped).
#[test]
fn rfc7692_examples_inflate() {
    // 7.2.3.1: "Hello" in one compressed frame.
    let hello: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate_all(&[hello], 100).unwrap(), b"Hello");
    // 7.2.3.1, fragmented: 0x41 0x03 f2 48 cd, then 0x80 0x04 c9 c9 07 00.
    assert_eq!(inflate_all(&[&hello[..3], &hello[3..]], 100).unwrap(), b"Hello");
    // 7.2.3.2: the second message with no context takeover is the same bytes.
    assert_eq!(inflate_all(&[hello], 100).unwrap(), b"Hello");
    // 7.2.3.3: a stored (uncompressed) DEFLATE block.
    let stored: &[u8] = &[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
    assert_eq!(inflate_all(&[stored], 100).unwrap(), b"Hello");
    // 7.2.3.4: a block with BFINAL set (followed by a padding byte, which is ignored: nothing
    // after a final block belongs to the stream).
    let last: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
    assert_eq!(inflate_all(&[last], 100).unwrap(), b"Hello");
    // 7.2.3.5: two DEFLATE blocks in one message.
    let two: &[u8] = &[0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
    assert_eq!(inflate_all(&[two], 100).unwrap(), b"Hello");
    // An empty message compresses to a single 0x00 (section 7.2.3.6's empty block).
    assert_eq!(inflate_all(&[&[0x00]], 100).unwrap(), b"");
    // Every split of every example gives the same result.
    for example in [hello, stored, last, two] {
        for cut in 0..=example.len() {
            assert_eq!(
                inflate_all(&[&example[..cut], &example[cut..]], 100).unwrap(),
                b"Hello",
                "{example:x?} at {cut}"
            );
        }
    }
}

#[test]
fn compressor_reproduces_rfc_hello_and_strips_the_tail() {
    let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 1 });
    let mut out = Vec::new();
    // "Hello" does not get smaller (7 bytes for 5): it goes out plain.
    assert!(!d.compress(b"Hello", 15, &mut out));
    assert!(out.is_empty());
    let text = b"Hello Hello Hello Hello Hello Hello Hello Hello".repeat(4);
    for bits in 9..=15 {
        out.clear();
        assert!(d.compress(&text, bits, &mut out), "window {bits}");
        assert!(!out.ends_with(&TAIL), "tail stripped");
        assert!(out.len() < text.len() / 4, "compressed to {} of {}", out.len(), text.len());
        assert_eq!(inflate_all(&[&out], 1 << 20).unwrap(), text);
    }
}

#[test]
fn write_frame_sets_rsv1_only_when_compressed() {
    let mut d = Deflater::new(DeflateConfig { threshold: 16, level: 6 });
    let json =
        br#"{"type":"message","payload":{"topic":"news","data":{"a":1,"b":2,"a":1,"b":2,"a":1,"b":2}}}"#;
    for (payload, window, compressed) in [
        (&json[..], Some(15u8), true),
        (&json[..], None, false),
        (&json[..10], Some(15), false), // under the threshold
        (
            &[
                0x9f, 0x13, 0x77, 0x01, 0xee, 0x42, 0x11, 0x80, 0x3c, 0xd5, 0x6a, 0x2b, 0xf0, 0x07, 0x99,
                0x5e, 0xc1,
            ][..],
            Some(15),
            false,
        ), // incompressible
    ] {
        let mut out = Vec::new();
        d.write_frame(&mut out, OpCode::Text, payload, window);
        let h = crate::protocol::frame::parse_header_with(&out, crate::protocol::frame::RSV1_BIT)
            .unwrap()
            .unwrap();
        assert_eq!(h.rsv != 0, compressed, "{payload:?} {window:?}");
        assert!(h.fin);
        assert_eq!(h.header_len + h.payload_len as usize, out.len());
        let body = &out[h.header_len..];
        let plain = if compressed { inflate_all(&[body], 1 << 20).unwrap() } else { body.to_vec() };
        assert_eq!(plain, payload);
    }
    // A long message gets a 16-bit length and the header moves into place.
    let big = json.repeat(100);
    let mut out = b"prefix".to_vec();
    d.write_frame(&mut out, OpCode::Binary, &big, Some(12));
    assert_eq!(&out[..6], b"prefix");
    let h = crate::protocol::frame::parse_header_with(&out[6..], 0b100).unwrap().unwrap();
    assert_eq!(h.opcode, OpCode::Binary);
    assert_eq!(6 + h.header_len + h.payload_len as usize, out.len());
    assert_eq!(inflate_all(&[&out[6 + h.header_len..]], 1 << 20).unwrap(), big);
}

#[test]
fn a_bomb_costs_the_limit_and_no_more() {
    // 10 MB of zeros compresses to about 10 KB.
    let zeros = vec![0u8; 10 << 20];
    let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 9 });
    let mut bomb = Vec::new();
    assert!(d.compress(&zeros, 15, &mut bomb));
    assert!(bomb.len() < 20_000, "{}", bomb.len());
    let limit = 64 * 1024;
    let mut inflater = Inflater::borrow();
    let mut out = Vec::new();
    assert_eq!(inflater.inflate(&bomb, &mut out, limit), Err(InflateError::TooBig));
    assert_eq!(out.len(), limit + 1, "inflation stops one byte past the limit");
    assert!(out.capacity() <= 2 * (limit + 1), "capacity {}", out.capacity());
    // Exactly at the limit is fine.
    let exact = vec![7u8; limit];
    let mut packed = Vec::new();
    assert!(d.compress(&exact, 15, &mut packed));
    assert_eq!(inflate_all(&[&packed], limit).unwrap(), exact);
    assert_eq!(inflate_all(&[&packed], limit - 1), Err(InflateError::TooBig));
}

#[test]
fn corrupt_streams_are_errors() {
    // Block type 3 is reserved.
    assert_eq!(inflate_all(&[&[0xff, 0xff, 0xff]], 1000), Err(InflateError::Corrupt));
    // A stored block whose length check fails.
    assert_eq!(inflate_all(&[&[0x00, 0x05, 0x00, 0x00, 0x00, b'a']], 1000), Err(InflateError::Corrupt));
    // Truncated inside a stored block: the tail is read as its data and the stream never ends
    // cleanly, so the next real bytes are garbage; whatever zlib says, it must not panic.
    let _ = inflate_all(&[&[0x00, 0x05, 0x00, 0xfa, 0xff, b'H']], 1000);
}

#[test]
fn inflaters_are_lent_per_message_and_reused() {
    let before = inflaters_in_use();
    let a = Inflater::borrow();
    let b = Inflater::borrow();
    assert_eq!(inflaters_in_use(), before + 2);
    drop(a);
    drop(b);
    assert_eq!(inflaters_in_use(), before);
    // A returned inflater starts clean: an error in one message does not leak into the next.
    let mut broken = Inflater::borrow();
    let _ = broken.inflate(&[0xff, 0xff], &mut Vec::new(), 100);
    drop(broken);
    assert_eq!(inflate_all(&[&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]], 100).unwrap(), b"Hello");
}

#[test]
fn shared_message_compresses_once_per_window() {
    let mut d = Deflater::new(DeflateConfig { threshold: 32, level: 1 });
    let payload = br#"{"type":"message","payload":{"topic":"t","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#;
    let msg = SharedMessage::new(OpCode::Text, payload);
    assert_eq!(msg.payload(), payload);
    assert_eq!(msg.compressed_variants(), 0);
    let plain = msg.frame_for(None, &mut d).clone();
    assert!(Rc::ptr_eq(&plain, msg.plain()));
    assert_eq!(msg.compressed_variants(), 0, "plain subscribers cost no compression");
    let a = msg.frame_for(Some(15), &mut d).clone();
    let b = msg.frame_for(Some(15), &mut d).clone();
    assert!(Rc::ptr_eq(&a, &b), "one compressed frame shared by every subscriber");
    assert_eq!(msg.compressed_variants(), 1);
    let c = msg.frame_for(Some(10), &mut d).clone();
    assert!(!Rc::ptr_eq(&a, &c));
    assert_eq!(msg.compressed_variants(), 2);
    assert_eq!(a[0], 0xc1, "FIN + RSV1 + text");
    // Under the threshold everyone shares the plain frame.
    let small = SharedMessage::new(OpCode::Text, b"{}");
    assert!(Rc::ptr_eq(small.frame_for(Some(15), &mut d), small.plain()));
    assert_eq!(small.compressed_variants(), 0);
}

/// zlib-rs 0.6.8's level-1 ("quick") path panicked on incompressible input when the output
/// buffer filled up mid-call (found by Autobahn 12.2.3, a bitmap): the compressor now always
/// gives it room for the worst case. Random bytes over 0x90 take 9 bits each in the static code.
#[test]
fn incompressible_input_at_every_level_and_window_does_not_panic() {
    let mut seed = 12345u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    for level in [1u32, 2, 6, 9] {
        let mut d = Deflater::new(DeflateConfig { threshold: 0, level });
        for size in [16usize, 256, 4096, 70_000] {
            for bits in [9u8, 12, 15] {
                let payload: Vec<u8> = (0..size).map(|_| rnd() | 0x90).collect();
                let mut out = vec![1, 2, 3];
                if d.compress(&payload, bits, &mut out) {
                    // Dynamic codes can shrink a 112-symbol alphabet a little.
                    assert_eq!(inflate_all(&[&out[3..]], 1 << 20).unwrap(), payload);
                    out.truncate(3);
                }
                assert_eq!(out, [1, 2, 3], "left as it was when it did not pay");
                let text = b"wshub ".repeat(size / 6 + 1);
                assert!(d.compress(&text, bits, &mut out));
                assert_eq!(inflate_all(&[&out[3..]], 1 << 20).unwrap(), text);
                out.truncate(3);
            }
        }
    }
}

/// A realistic ~1 KiB JSON message (a hub `message` carrying an order-book update): what the
/// compression costs on the wire at each level. Printed with `--nocapture`; the assertion keeps
/// the fast default honest.
#[test]
fn realistic_json_shrinks_at_the_default_level() {
    let mut levels = Vec::new();
    let mut data = String::from(
        r#"{"type":"message","payload":{"topic":"book.BTC-USD","data":{"seq":184467,"ts":"2026-11-30T18:42:07.123Z","bids":["#,
    );
    for i in 0..12 {
        data.push_str(&format!(
            r#"{{"price":"{}.{:02}","size":"0.{:04}","orders":{}}},"#,
            91_000 - i * 3,
            (i * 37) % 100,
            1200 + i * 91,
            i % 5 + 1
        ));
    }
    data.push_str(r#"{"price":"90000.00","size":"1.0000","orders":1}],"asks":["#);
    for i in 0..12 {
        data.push_str(&format!(
            r#"{{"price":"{}.{:02}","size":"0.{:04}","orders":{}}},"#,
            91_010 + i * 4,
            (i * 53) % 100,
            800 + i * 77,
            i % 4 + 1
        ));
    }
    data.push_str(r#"{"price":"92000.00","size":"2.5000","orders":3}]}}}"#);
    assert!(data.len() > 900, "{}", data.len());
    for level in [1, 6, 9] {
        let mut d = Deflater::new(DeflateConfig { threshold: 0, level });
        let mut out = Vec::new();
        assert!(d.compress(data.as_bytes(), 15, &mut out));
        assert_eq!(inflate_all(&[&out], 1 << 20).unwrap(), data.as_bytes());
        levels.push((level, out.len()));
    }
    println!("{} bytes of JSON -> {levels:?} (level, compressed bytes)", data.len());
    assert!(levels[0].1 * 2 < data.len(), "level 1 at least halves it: {levels:?}");
}

#[test]
fn deflater_counts_messages_bytes_and_frames() {
    let mut d = Deflater::new(DeflateConfig { threshold: 32, level: 1 });
    assert_eq!(d.stats(), DeflateStats::default());
    let payload = br#"{"type":"message","payload":{"topic":"t","data":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#;
    // A fan-out: compressed once, one frame counted per compressing subscriber.
    let msg = SharedMessage::new(OpCode::Text, payload);
    let frame = msg.frame_for(Some(15), &mut d).clone();
    for _ in 0..4 {
        msg.frame_for(Some(15), &mut d);
    }
    msg.frame_for(None, &mut d);
    let s = d.stats();
    assert_eq!((s.messages_compressed, s.frames_sent, s.not_smaller), (1, 5, 0));
    assert_eq!(s.bytes_in, payload.len() as u64);
    let header = 2; // a short compressed frame
    assert_eq!(s.bytes_out, (frame.len() - header) as u64);
    // An echo reply: one compression, one frame; under the threshold: nothing counted.
    let mut out = Vec::new();
    d.write_frame(&mut out, OpCode::Text, payload, Some(15));
    d.write_frame(&mut out, OpCode::Text, b"short", Some(15));
    d.write_frame(&mut out, OpCode::Text, payload, None);
    let s = d.stats();
    assert_eq!((s.messages_compressed, s.frames_sent, s.not_smaller), (2, 6, 0));
    assert_eq!(s.bytes_in, 2 * payload.len() as u64);
    // Incompressible: tried, sent plain, counted as such; its fan-out frames are plain ones.
    let noise: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let msg = SharedMessage::new(OpCode::Binary, &noise);
    assert!(Rc::ptr_eq(msg.frame_for(Some(15), &mut d), msg.plain()));
    assert!(Rc::ptr_eq(msg.frame_for(Some(15), &mut d), msg.plain()));
    let s = d.stats();
    assert_eq!((s.messages_compressed, s.frames_sent, s.not_smaller), (2, 6, 1));
}

#[test]
fn inflaters_count_messages_bytes_and_refusals() {
    let before = inflate_stats();
    let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 6 });
    let payload = b"hello hello hello hello hello hello".repeat(10);
    let mut packed = Vec::new();
    assert!(d.compress(&payload, 15, &mut packed));
    let (a, b) = packed.split_at(packed.len() / 2);
    assert_eq!(inflate_all(&[a, b], 10_000).unwrap(), payload);
    let after = inflate_stats();
    assert_eq!(after.messages - before.messages, 1);
    assert_eq!(after.bytes_in - before.bytes_in, packed.len() as u64);
    assert_eq!(after.bytes_out - before.bytes_out, payload.len() as u64);
    assert_eq!((after.corrupt, after.too_big), (before.corrupt, before.too_big));
    // A bomb and a corrupt stream: refused, counted, and not as messages.
    assert_eq!(inflate_all(&[&packed], payload.len() - 1), Err(InflateError::TooBig));
    assert_eq!(inflate_all(&[&[0xff, 0xff, 0xff]], 1000), Err(InflateError::Corrupt));
    let last = inflate_stats();
    assert_eq!(last.messages, after.messages);
    assert_eq!((last.corrupt - after.corrupt, last.too_big - after.too_big), (1, 1));
}
