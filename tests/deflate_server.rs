//! permessage-deflate over real sockets: negotiation in the 101, echo replies compressed, the
//! RSV1 rules end to end, and hub fan-out where compressed and plain subscribers of one topic
//! receive identical messages in order.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use common::*;
use flate2::{Decompress, FlushDecompress};
use wshub::protocol::deflate::{DeflateConfig, Deflater, TAIL};
use wshub::protocol::frame::{self, OpCode};

/// Connects offering `extensions` (None: no offer); returns the stream and the response head.
fn ws_offer(addr: SocketAddr, extensions: Option<&str>) -> (TcpStream, String) {
    let mut s = connect(addr);
    let extra = extensions.map_or(String::new(), |e| format!("Sec-WebSocket-Extensions: {e}\r\n"));
    s.write_all(upgrade_request("/ws", &extra).as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "handshake failed: {head}");
    (s, head)
}

fn extension_header(head: &str) -> Option<String> {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("sec-websocket-extensions:"))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string())
}

/// A frame with its RSV1 bit.
struct Frame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

fn read_raw(s: &mut TcpStream) -> Option<Frame> {
    let f = read_frame(s)?;
    assert_eq!(f.rsv & 0b011, 0, "RSV2/RSV3 never set");
    assert!(f.fin, "server frames are whole");
    Some(Frame { rsv1: f.rsv & 0b100 != 0, opcode: f.opcode, payload: f.payload })
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(data.len() * 20 + 64);
    loop {
        let before = d.total_in();
        d.decompress_vec(&input[(d.total_in() as usize)..], &mut out, FlushDecompress::Sync).unwrap();
        if d.total_in() as usize == input.len() || d.total_in() == before {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    out
}

/// Reads one data message and returns (was it compressed, its plain payload).
fn read_message(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let f = read_raw(s).expect("a frame");
    let payload = if f.rsv1 { inflate(&f.payload) } else { f.payload };
    (f.rsv1, f.opcode, payload)
}

fn compressed_client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 6 });
    let mut body = Vec::new();
    assert!(d.compress(payload, 15, &mut body), "test payload compresses");
    let mut out = Vec::new();
    frame::write_masked_frame_rsv1(&mut out, true, opcode, [9, 8, 7, 6], &body);
    out
}

fn json_payload(i: usize, size: usize) -> String {
    let filler: String = std::iter::repeat_n("abc ", size / 4).collect();
    format!("{{\"seq\":{i},\"text\":\"{filler}\"}}")
}

#[test]
fn echo_negotiates_and_compresses_replies() {
    let server = ServerProc::start(&["--echo", "--compression"]);
    let (mut s, head) = ws_offer(server.addr, Some("permessage-deflate; client_max_window_bits"));
    assert_eq!(
        extension_header(&head).as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // A compressed text message comes back compressed.
    let text = json_payload(1, 2000);
    s.write_all(&compressed_client_frame(OpCode::Text, text.as_bytes())).unwrap();
    let (rsv1, opcode, payload) = read_message(&mut s);
    assert!(rsv1, "reply compressed");
    assert_eq!(opcode, 0x1);
    assert_eq!(payload, text.as_bytes());
    // A plain one too (the choice is per message), if it reaches the threshold.
    s.write_all(&masked(OpCode::Text, true, text.as_bytes())).unwrap();
    assert_eq!(read_message(&mut s), (true, 0x1, text.as_bytes().to_vec()));
    // Under the threshold (128 bytes) it goes out plain.
    s.write_all(&compressed_client_frame(OpCode::Text, &b"short short short short".repeat(2))).unwrap();
    assert_eq!(read_message(&mut s), (false, 0x1, b"short short short short".repeat(2)));
    // Binary, fragmented: RSV1 on the first frame only.
    let bin = vec![0x5au8; 10_000];
    let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 1 });
    let mut body = Vec::new();
    assert!(d.compress(&bin, 15, &mut body));
    let mut wire = Vec::new();
    frame::write_masked_frame_rsv1(&mut wire, false, OpCode::Binary, [1, 2, 3, 4], &body[..body.len() / 2]);
    frame::write_masked_frame(&mut wire, true, OpCode::Continuation, [5, 6, 7, 8], &body[body.len() / 2..]);
    s.write_all(&wire).unwrap();
    assert_eq!(read_message(&mut s), (true, 0x2, bin));
    // RSV1 on a continuation: 1002.
    let mut wire = Vec::new();
    frame::write_masked_frame(&mut wire, false, OpCode::Text, [1, 2, 3, 4], b"ab");
    frame::write_masked_frame_rsv1(&mut wire, true, OpCode::Continuation, [1, 2, 3, 4], b"cd");
    s.write_all(&wire).unwrap();
    assert_eq!(expect_close(&mut s), Some(1002));
}

#[test]
fn rsv1_on_control_corrupt_data_and_bombs_are_refused() {
    let server = ServerProc::start(&["--echo", "--compression", "--max-message-size", "65536"]);
    let (mut s, _) = ws_offer(server.addr, Some("permessage-deflate"));
    let mut ping = Vec::new();
    frame::write_masked_frame_rsv1(&mut ping, true, OpCode::Ping, [1, 2, 3, 4], b"");
    s.write_all(&ping).unwrap();
    assert_eq!(expect_close(&mut s), Some(1002));

    let (mut s, _) = ws_offer(server.addr, Some("permessage-deflate"));
    let mut bad = Vec::new();
    frame::write_masked_frame_rsv1(&mut bad, true, OpCode::Binary, [1, 2, 3, 4], &[0xff, 0xff, 0xff, 0xff]);
    s.write_all(&bad).unwrap();
    assert_eq!(expect_close(&mut s), Some(1007));

    let (mut s, _) = ws_offer(server.addr, Some("permessage-deflate"));
    s.write_all(&compressed_client_frame(OpCode::Binary, &vec![0u8; 8 << 20])).unwrap();
    assert_eq!(expect_close(&mut s), Some(1009));

    // The server is still fine.
    let (mut s, _) = ws_offer(server.addr, Some("permessage-deflate"));
    s.write_all(&masked(OpCode::Text, true, b"still here")).unwrap();
    assert_eq!(read_message(&mut s), (false, 0x1, b"still here".to_vec()));
}

#[test]
fn without_the_flag_nothing_is_negotiated_and_rsv1_is_1002() {
    let server = ServerProc::start(&["--echo"]);
    let (mut s, head) = ws_offer(server.addr, Some("permessage-deflate; client_max_window_bits"));
    assert_eq!(extension_header(&head), None);
    s.write_all(&compressed_client_frame(OpCode::Text, json_payload(0, 500).as_bytes())).unwrap();
    assert_eq!(expect_close(&mut s), Some(1002));
}

#[test]
fn window_offers_and_declines() {
    let server = ServerProc::start(&["--echo", "--compression"]);
    let text = json_payload(7, 3000);
    // 10 bits: agreed and echoed; replies inflate with a 10-bit window.
    let (mut s, head) = ws_offer(server.addr, Some("permessage-deflate; server_max_window_bits=10"));
    assert!(extension_header(&head).unwrap().ends_with("; server_max_window_bits=10"), "{head}");
    s.write_all(&masked(OpCode::Text, true, text.as_bytes())).unwrap();
    let f = read_raw(&mut s).unwrap();
    assert!(f.rsv1);
    let mut d = Decompress::new_with_window_bits(false, 10);
    let mut input = f.payload.clone();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(10_000);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    assert_eq!(out, text.as_bytes());
    // 8 bits: accepted with 8 (we may not answer more), and every reply goes out plain.
    let (mut s, head) = ws_offer(server.addr, Some("permessage-deflate; server_max_window_bits=8"));
    assert!(extension_header(&head).unwrap().ends_with("; server_max_window_bits=8"), "{head}");
    s.write_all(&compressed_client_frame(OpCode::Text, text.as_bytes())).unwrap();
    assert_eq!(read_message(&mut s), (false, 0x1, text.as_bytes().to_vec()));
    // An invalid first offer falls through to the next; none acceptable: no extension.
    let (_, head) = ws_offer(
        server.addr,
        Some("permessage-deflate; foo=1, permessage-deflate; server_max_window_bits=12"),
    );
    assert!(extension_header(&head).unwrap().ends_with("=12"), "{head}");
    let (_, head) = ws_offer(server.addr, Some("permessage-deflate; server_max_window_bits=16"));
    assert_eq!(extension_header(&head), None);
}

/// Subscribes over a raw stream and reads the `subscribed` reply.
fn subscribe(s: &mut TcpStream, topic: &str) {
    let msg = format!("{{\"type\":\"subscribe\",\"payload\":{{\"topic\":\"{topic}\"}}}}");
    s.write_all(&masked(OpCode::Text, true, msg.as_bytes())).unwrap();
    let (_, _, reply) = read_message(s);
    assert!(String::from_utf8(reply).unwrap().contains("subscribed"));
}

#[test]
fn fan_out_reaches_compressed_and_plain_subscribers_identically_in_order() {
    let server = ServerProc::start(&["--compression", "--send-queue", "1024"]);
    let (mut a, head) = ws_offer(server.addr, Some("permessage-deflate"));
    assert!(extension_header(&head).is_some());
    let (mut b, head) = ws_offer(server.addr, None);
    assert!(extension_header(&head).is_none());
    let (mut c, _) = ws_offer(server.addr, Some("permessage-deflate; server_max_window_bits=10"));
    let (mut e, _) = ws_offer(server.addr, Some("permessage-deflate; server_max_window_bits=8"));
    for s in [&mut a, &mut b, &mut c, &mut e] {
        subscribe(s, "news");
    }
    let (mut publisher, _) = ws_offer(server.addr, Some("permessage-deflate"));
    let mut sent = Vec::new();
    for i in 0..40 {
        let data = json_payload(i, [0, 50, 300, 5000][i % 4]);
        let msg = format!("{{\"type\":\"publish\",\"payload\":{{\"topic\":\"news\",\"data\":{data}}}}}");
        // Half of them sent compressed by the publisher.
        if i % 2 == 0 {
            publisher.write_all(&compressed_client_frame(OpCode::Text, msg.as_bytes())).unwrap();
        } else {
            publisher.write_all(&masked(OpCode::Text, true, msg.as_bytes())).unwrap();
        }
        sent.push(format!("{{\"type\":\"message\",\"payload\":{{\"topic\":\"news\",\"data\":{data}}}}}"));
    }
    // One through the HTTP publish API as well.
    let data = json_payload(99, 2000);
    let body = format!("{{\"topic\":\"news\",\"data\":{data}}}");
    let mut http = connect(server.addr);
    write!(http, "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let response = read_to_close(&mut http);
    assert_eq!(status_of(&response), 200, "{response}");
    sent.push(format!("{{\"type\":\"message\",\"payload\":{{\"topic\":\"news\",\"data\":{data}}}}}"));

    for (name, s, compresses) in
        [("a", &mut a, true), ("b", &mut b, false), ("c", &mut c, true), ("e", &mut e, false)]
    {
        let mut compressed = 0;
        for (i, want) in sent.iter().enumerate() {
            let (rsv1, opcode, payload) = read_message(s);
            assert_eq!(opcode, 0x1);
            assert_eq!(String::from_utf8(payload).unwrap(), *want, "subscriber {name}, message {i}");
            if rsv1 {
                compressed += 1;
                assert!(want.len() >= 128, "under the threshold goes plain");
            }
        }
        if compresses {
            assert!(compressed >= 20, "subscriber {name}: only {compressed} compressed");
        } else {
            assert_eq!(compressed, 0, "subscriber {name} must get plain frames");
        }
    }
}

#[test]
fn hub_replies_are_compressed_when_long_enough() {
    let server = ServerProc::start(&["--compression"]);
    let (mut a, _) = ws_offer(server.addr, Some("permessage-deflate"));
    let topic = "t".repeat(200);
    let msg = format!("{{\"type\":\"subscribe\",\"payload\":{{\"topic\":\"{topic}\"}},\"id\":1}}");
    a.write_all(&masked(OpCode::Text, true, msg.as_bytes())).unwrap();
    let (rsv1, _, reply) = read_message(&mut a);
    assert!(rsv1, "a 200-byte topic makes the reply long enough to compress");
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("{{\"type\":\"subscribed\",\"payload\":{{\"topic\":\"{topic}\"}},\"id\":1}}")
    );
    // A short reply stays plain.
    a.write_all(&masked(OpCode::Text, true, br#"{"type":"ping","id":2}"#)).unwrap();
    assert_eq!(read_message(&mut a), (false, 0x1, br#"{"type":"pong","id":2}"#.to_vec()));
}

/// A `/metrics` sample as an integer.
fn metric_u64(addr: SocketAddr, name: &str) -> u64 {
    metric(addr, name) as u64
}

#[test]
fn metrics_count_compression_both_ways() {
    let server = ServerProc::start(&["--compression", "--max-message-size", "65536"]);
    let addr = server.addr;
    for name in ["deflate_connections_total", "deflate_messages_compressed_total", "inflate_messages_total"] {
        assert_eq!(metric_u64(addr, &format!("wshub_{name}")), 0, "{name} before any traffic");
    }
    // Two compressing subscribers and one plain one, and a compressing publisher.
    let (mut a1, _) = ws_offer(addr, Some("permessage-deflate"));
    let (mut a2, _) = ws_offer(addr, Some("permessage-deflate; client_max_window_bits"));
    let (mut b, head) = ws_offer(addr, None);
    assert_eq!(extension_header(&head), None);
    for s in [&mut a1, &mut a2, &mut b] {
        subscribe(s, "news");
    }
    let (mut publisher, _) = ws_offer(addr, Some("permessage-deflate"));
    assert_eq!(metric_u64(addr, "wshub_deflate_connections_total"), 3);

    // Four messages over the threshold (three of them published compressed) and one under it.
    let (mut inflated_in, mut inflated_out) = (0u64, 0u64);
    let mut sent = Vec::new();
    for i in 0..5 {
        let data = json_payload(i, if i == 4 { 8 } else { 1500 + 100 * i });
        let msg = format!("{{\"type\":\"publish\",\"payload\":{{\"topic\":\"news\",\"data\":{data}}}}}");
        if i < 3 {
            let mut d = Deflater::new(DeflateConfig { threshold: 0, level: 6 });
            let mut body = Vec::new();
            assert!(d.compress(msg.as_bytes(), 15, &mut body));
            inflated_in += body.len() as u64;
            inflated_out += msg.len() as u64;
            publisher.write_all(&compressed_client_frame(OpCode::Text, msg.as_bytes())).unwrap();
        } else {
            publisher.write_all(&masked(OpCode::Text, true, msg.as_bytes())).unwrap();
        }
        sent.push(format!("{{\"type\":\"message\",\"payload\":{{\"topic\":\"news\",\"data\":{data}}}}}"));
    }
    // What the compressing subscribers got: the same compressed bytes, one compression each.
    let (mut plain_bytes, mut compressed_bytes) = (0u64, 0u64);
    for want in &sent {
        let f1 = read_raw(&mut a1).unwrap();
        let f2 = read_raw(&mut a2).unwrap();
        assert_eq!(f1.payload, f2.payload, "both share one compressed frame");
        assert_eq!(f1.rsv1, want.len() >= 128);
        if f1.rsv1 {
            plain_bytes += want.len() as u64;
            compressed_bytes += f1.payload.len() as u64;
        }
        assert_eq!(read_message(&mut b), (false, 0x1, want.as_bytes().to_vec()));
    }
    assert!(compressed_bytes * 2 < plain_bytes, "{compressed_bytes} of {plain_bytes}");
    let expect = [
        ("wshub_deflate_messages_compressed_total", 4),
        ("wshub_deflate_messages_not_smaller_total", 0),
        ("wshub_deflate_frames_sent_total", 8),
        ("wshub_deflate_input_bytes_total", plain_bytes),
        ("wshub_deflate_output_bytes_total", compressed_bytes),
        ("wshub_inflate_messages_total", 3),
        ("wshub_inflate_input_bytes_total", inflated_in),
        ("wshub_inflate_output_bytes_total", inflated_out),
        ("wshub_inflate_refused_total{reason=\"corrupt\"}", 0),
        ("wshub_inflate_refused_total{reason=\"too_big\"}", 0),
    ];
    for (name, value) in expect {
        assert_eq!(metric_u64(addr, name), value, "{name}");
    }

    // A corrupt stream (1007) and a bomb (1009) are counted as refusals, nothing else moves.
    let (mut s, _) = ws_offer(addr, Some("permessage-deflate"));
    let mut bad = Vec::new();
    frame::write_masked_frame_rsv1(&mut bad, true, OpCode::Text, [1, 2, 3, 4], &[0xff, 0xff, 0xff, 0xff]);
    s.write_all(&bad).unwrap();
    assert_eq!(expect_close(&mut s), Some(1007));
    let (mut s, _) = ws_offer(addr, Some("permessage-deflate"));
    s.write_all(&compressed_client_frame(OpCode::Binary, &vec![0u8; 8 << 20])).unwrap();
    assert_eq!(expect_close(&mut s), Some(1009));
    assert_eq!(metric_u64(addr, "wshub_inflate_refused_total{reason=\"corrupt\"}"), 1);
    assert_eq!(metric_u64(addr, "wshub_inflate_refused_total{reason=\"too_big\"}"), 1);
    assert_eq!(metric_u64(addr, "wshub_close_frames_sent_total{code=\"1007\"}"), 1);
    assert_eq!(metric_u64(addr, "wshub_close_frames_sent_total{code=\"1009\"}"), 1);
    assert_eq!(metric_u64(addr, "wshub_inflate_messages_total"), 3);
    assert_eq!(metric_u64(addr, "wshub_deflate_connections_total"), 5);
}

#[test]
fn a_compressed_flood_cannot_hold_the_loop_for_others() {
    // A kilobyte on the wire inflates to hundreds: a read of compressed messages is work out
    // of all proportion to its bytes. One read (256 KiB) of such messages used to be handled
    // in one go, up to eight reads a turn, while every other client waited (a bystander's
    // ping took ~2 s in the release build). The loop now stops a connection after a mebibyte
    // of messages per turn and takes the rest of its input next turn.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let server = ServerProc::start(&["--compression", "--max-message-size", "300000"]);
    let (mut flooder, _) = ws_offer(server.addr, Some("permessage-deflate"));
    let data = "a".repeat(250_000);
    let count = 400;
    let mut burst = Vec::new();
    for i in 0..count {
        let msg = format!(r#"{{"type":"publish","payload":{{"topic":"void","data":"{data}"}},"id":{i}}}"#);
        burst.extend(compressed_client_frame(OpCode::Text, msg.as_bytes()));
    }
    assert!(burst.len() < 256 * 1024, "the whole flood fits one read: {} bytes", burst.len());
    // A bystander pings all along; each pong must come within a turn, not after the flood.
    let mut bystander = ws_connect(server.addr);
    bystander.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&done);
    let pinger = std::thread::spawn(move || {
        let mut worst = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            bystander.write_all(&masked(OpCode::Ping, true, b"here?")).unwrap();
            while read_frame(&mut bystander).expect("a pong").opcode != 0xA {}
            worst = worst.max(sent.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
        worst
    });
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    flooder.write_all(&burst).unwrap();
    // Every message of the flood is still handled, in order.
    flooder.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    for i in 0..count {
        let (_, _, ack) = read_message(&mut flooder);
        let ack: serde_json::Value = serde_json::from_slice(&ack).unwrap();
        assert_eq!(ack["id"], i, "{ack}");
    }
    let flood = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let worst = pinger.join().unwrap();
    // Relative to the flood, so a slow (debug, loaded) machine slows both alike: before, the
    // worst ping waited for about the whole flood.
    assert!(
        worst < (flood / 4).max(Duration::from_millis(100)),
        "a bystander's ping waited {worst:?} while the flood took {flood:?}"
    );
}
