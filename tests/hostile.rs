//! The server under attack: what an internet adversary sends, over real loopback sockets to the
//! real binary. Every attack is bounded in time and count and stops by itself; after each one the
//! server must still be alive and serve a fresh client at once (`assert_healthy`).
//!
//! The standard: bad input gets a precise answer (the right HTTP status before the upgrade, the
//! right close code after it) and costs nothing: no allocation sized by a claim, no other client
//! harmed, nothing already accepted lost.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use wshub::protocol::frame;
use wshub::protocol::OpCode;

// ----- helpers -----

/// The server process is alive and a fresh client gets its upgrade and a pong quickly.
fn assert_healthy(server: &ServerProc) {
    let pid = server.child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server process exists");
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    assert!(matches!(state, Some('R' | 'S')), "server process state {state:?}");
    let started = Instant::now();
    let mut s = connect(server.addr);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "healthy server upgrades, got {head:?}");
    s.write_all(&masked(OpCode::Ping, true, b"health")).unwrap();
    loop {
        let f = read_frame(&mut s).expect("pong from a healthy server");
        if f.opcode == 0xA {
            assert_eq!(f.payload, b"health");
            break;
        }
        assert_eq!(f.opcode, 0x9, "only heartbeat pings may come before the pong");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "healthy server answered in {:?}", started.elapsed());
    s.write_all(&masked(OpCode::Close, true, &1000u16.to_be_bytes())).unwrap();
    assert_eq!(expect_close(&mut s), Some(1000));
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Waits until the process has at most `max` descriptors open (connections just answered are
/// still being reaped for a moment); panics with the count if it does not get there.
fn wait_fds_at_most(pid: u32, max: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let fds = open_fds(pid);
        if fds <= max {
            return;
        }
        assert!(Instant::now() < deadline, "{fds} descriptors open, expected at most {max}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends raw bytes and reads the whole response until the server closes (or 5 s pass).
fn raw_http(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    read_to_close(&mut s)
}

/// Polls `/metrics` until `wshub_connections` is `want` (the metrics request itself counts as 1).
fn wait_connections(addr: SocketAddr, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = -1.0;
    while Instant::now() < deadline {
        last = metric(addr, "wshub_connections");
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("wshub_connections stayed at {last}, expected {want}");
}

/// A masked frame header announcing `len` bytes (minimal length encoding), mask key 0 so the
/// payload that follows (if any) goes as it is.
fn header(opcode: OpCode, fin: bool, len: u64) -> Vec<u8> {
    let mut v = Vec::new();
    frame::write_masked_header(&mut v, fin, opcode, [0; 4], usize::try_from(len).expect("64-bit"));
    v
}

/// Reads until the server's close frame or EOF; returns the close code and how long it took.
fn close_within(s: &mut TcpStream, limit: Duration) -> (Option<u16>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let code = expect_close(s);
    (code, started.elapsed())
}

fn ws(server: &ServerProc) -> TcpStream {
    ws_connect(server.addr)
}

// ----- before the upgrade -----

#[test]
fn slowloris_request_head_is_answered_408_at_the_handshake_timeout() {
    let server = ServerProc::start(&["--echo", "--handshake-timeout", "1"]);
    let mut s = connect(server.addr);
    let mut reader = s.try_clone().unwrap();
    let started = Instant::now();
    // Trickle a head that never ends: one byte every 50 ms, for at most 6 s.
    let writer = std::thread::spawn(move || {
        let line = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
        let deadline = Instant::now() + Duration::from_secs(6);
        for &b in line.iter().chain(std::iter::repeat(&b'a')) {
            if Instant::now() > deadline || s.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    reader.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let response = read_to_close(&mut reader);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3500),
        "closed after {took:?}"
    );
    assert_eq!(status_of(&response), 408, "response {response:?}");
    writer.join().unwrap();
    assert_healthy(&server);
}

#[test]
fn silent_client_and_missing_body_time_out_with_408() {
    let server = ServerProc::start(&["--handshake-timeout", "0.5"]);
    // Connects and says nothing.
    let mut silent = connect(server.addr);
    // Announces a body that never arrives.
    let mut no_body = connect(server.addr);
    no_body
        .write_all(b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"topic\":")
        .unwrap();
    let started = Instant::now();
    for s in [&mut silent, &mut no_body] {
        let response = read_to_close(s);
        assert_eq!(status_of(&response), 408, "response {response:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_healthy(&server);
}

#[test]
fn oversized_heads_get_431() {
    let server = ServerProc::start(&["--echo"]);
    // One header line larger than the head limit, never finished.
    let mut s = connect(server.addr);
    let mut big = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100_000));
    let _ = s.write_all(&big);
    assert_eq!(status_of(&read_to_close(&mut s)), 431);
    // A complete head over the limit.
    let mut head = b"GET /ws HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..400 {
        head.extend_from_slice(format!("X-Pad-{i}: {}\r\n", "b".repeat(40)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&raw_http(server.addr, &head)), 431);
    // Many small headers (over httparse's 64), well under the byte limit.
    let mut many = b"GET /ws HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&raw_http(server.addr, &many)), 431);
    assert_healthy(&server);
}

#[test]
fn invalid_bytes_in_a_head_get_400() {
    let server = ServerProc::start(&["--echo"]);
    let cases: &[&[u8]] = &[
        b"GET /ws HTTP/1.1\r\nHost: local\x01host\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHo st: localhost\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nX\x00: y\r\n\r\n",
        b"GET /w\x7fs HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /ws HTTP/9.9\r\nHost: localhost\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /ws\r\n\r\n",
        b" GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /ws HTTP/1.1\r\n Host: localhost\r\n\r\n",
    ];
    for case in cases {
        let response = raw_http(server.addr, case);
        assert_eq!(status_of(&response), 400, "{:?} -> {response:?}", String::from_utf8_lossy(case));
    }
    assert_healthy(&server);
}

#[test]
fn binary_garbage_and_tls_client_hello_get_400_at_once() {
    let server = ServerProc::start(&["--echo"]);
    // The start of a TLS 1.2/1.3 ClientHello: no line ends anywhere.
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0xf1, 0x01, 0x00, 0x00, 0xed, 0x03, 0x03];
    hello.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)));
    hello.extend_from_slice(&[0x20; 33]);
    hello.extend_from_slice(&[0x00, 0x08, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0x00, 0xff, 0x01, 0x00]);
    let cases: Vec<Vec<u8>> = vec![
        hello,
        vec![0u8; 64],
        vec![0xff; 10],
        b"\x00\x01\x02GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        b"SSH-2.0-OpenSSH_9.6\r\n".to_vec(),
    ];
    for case in cases {
        let started = Instant::now();
        let mut s = connect(server.addr);
        s.write_all(&case).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let response = read_to_close(&mut s);
        assert_eq!(status_of(&response), 400, "{case:x?} -> {response:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "answered after {:?}", started.elapsed());
    }
    assert_healthy(&server);
}

#[test]
fn garbage_trickled_byte_by_byte_is_refused_without_waiting_for_a_line_end() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = connect(server.addr);
    let started = Instant::now();
    s.write_all(b"GET").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // A control byte can never be part of a request head.
    let _ = s.write_all(b"\x01");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let response = read_to_close(&mut s);
    assert_eq!(status_of(&response), 400, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_healthy(&server);
}

#[test]
fn request_smuggling_shapes_are_refused() {
    let server = ServerProc::start(&[]);
    let publish = |headers: &str, body: &str| {
        let request = format!(
            "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{headers}\r\n{body}"
        );
        status_of(&raw_http(server.addr, request.as_bytes()))
    };
    let body = r#"{"topic":"t","data":1}"#;
    // Two different lengths: which one frames the body is exactly the ambiguity smuggling uses.
    assert_eq!(publish("Content-Length: 22\r\nContent-Length: 5\r\n", body), 400);
    assert_eq!(publish("Content-Length: 22, 5\r\n", body), 400);
    assert_eq!(publish("Content-Length: +22\r\n", body), 400);
    assert_eq!(publish("Content-Length: -1\r\n", body), 400);
    assert_eq!(publish("Content-Length: 0x16\r\n", body), 400);
    // Transfer-Encoding with Content-Length: the classic CL.TE desync; refused outright.
    assert_eq!(publish("Content-Length: 22\r\nTransfer-Encoding: chunked\r\n", body), 400);
    // Chunked alone: we need a length.
    assert_eq!(
        publish("Transfer-Encoding: chunked\r\n", "16\r\n{\"topic\":\"t\",\"data\":1}\r\n0\r\n\r\n"),
        411
    );
    // The same length twice is one length.
    assert_eq!(publish("Content-Length: 22\r\nContent-Length: 22\r\n", body), 200);
    // An upgrade carrying a body: the body would be read as frames.
    let upgrade = upgrade_request("/ws", "Content-Length: 6\r\n");
    let mut bytes = upgrade.into_bytes();
    bytes.extend_from_slice(&masked(OpCode::Text, true, b""));
    assert_eq!(status_of(&raw_http(server.addr, &bytes)), 400);
    assert_healthy(&server);
}

#[test]
fn enormous_content_length_is_413_without_reading_the_body() {
    let server = ServerProc::start(&[]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    for length in ["65537", "4611686018427387904", "18446744073709551615", "999999999999999999999999999999"] {
        let started = Instant::now();
        let mut s = connect(server.addr);
        let head = format!("POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // Send nothing more: the answer must not wait for the body.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let response = read_head(&mut s);
        assert_eq!(status_of(&response), 413, "Content-Length {length} -> {response:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    assert!(rss_kib(pid) < before + 4096, "RSS grew from {before} to {} KiB", rss_kib(pid));
    assert_healthy(&server);
}

#[test]
fn body_sent_anyway_after_413_does_not_turn_into_a_reset_of_the_answer() {
    let server = ServerProc::start(&[]);
    let mut s = connect(server.addr);
    let head = "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    // The body follows at once, as curl would send it.
    let _ = s.write_all(&vec![b'x'; 200_000]);
    let response = read_to_close(&mut s);
    assert_eq!(status_of(&response), 413, "{response:?}");
    assert_healthy(&server);
}

// ----- after the upgrade -----

#[test]
fn trickled_frame_is_bounded_by_pong_wait() {
    let server = ServerProc::start(&["--echo", "--pong-wait", "1", "--ping-interval", "0.4"]);
    let mut s = ws(&server);
    let mut writer = s.try_clone().unwrap();
    // A header announcing 100 000 bytes, then the payload: one byte every 100 ms, for at most 8 s.
    let t = std::thread::spawn(move || {
        let mut bytes = header(OpCode::Binary, true, 100_000);
        bytes.extend(std::iter::repeat_n(0u8, 100_000));
        let deadline = Instant::now() + Duration::from_secs(8);
        for b in bytes {
            if Instant::now() > deadline || writer.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (code, took) = close_within(&mut s, Duration::from_secs(6));
    assert!(took < Duration::from_millis(2500), "closed after {took:?} (code {code:?})");
    assert_eq!(code, Some(1008));
    drop(s);
    t.join().unwrap();
    assert_healthy(&server);
}

#[test]
fn frame_length_claims_are_refused_before_allocation() {
    let server = ServerProc::start(&["--echo"]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let cases: &[(Vec<u8>, u16)] = &[
        (header(OpCode::Binary, true, 1 << 62), 1009),
        (header(OpCode::Text, false, (1 << 63) - 1), 1009),
        (header(OpCode::Binary, true, (1 << 20) + 1), 1009),
        // Top bit set: not a length at all.
        (
            {
                let mut h = vec![0x82, 0xff];
                h.extend_from_slice(&u64::MAX.to_be_bytes());
                h.extend_from_slice(&[0; 4]);
                h
            },
            1002,
        ),
        // Non-minimal 64-bit length.
        (
            {
                let mut h = vec![0x82, 0xff];
                h.extend_from_slice(&5u64.to_be_bytes());
                h.extend_from_slice(&[0; 4]);
                h
            },
            1002,
        ),
        // A ping claiming 64 KiB.
        (header(OpCode::Ping, true, 65536), 1002),
    ];
    for (bytes, want) in cases {
        let mut s = ws(&server);
        s.write_all(bytes).unwrap();
        let (code, took) = close_within(&mut s, Duration::from_secs(3));
        assert_eq!(code, Some(*want), "{bytes:x?}");
        assert!(took < Duration::from_secs(1));
        assert!(sees_eof(&mut s));
    }
    // Fragments that together exceed the limit: refused at the fragment that crosses it.
    let mut s = ws(&server);
    s.write_all(&masked(OpCode::Binary, false, &vec![1; 600_000])).unwrap();
    s.write_all(&header(OpCode::Continuation, true, 600_000)).unwrap();
    assert_eq!(close_within(&mut s, Duration::from_secs(3)).0, Some(1009));
    assert!(rss_kib(pid) < before + 8192, "RSS grew from {before} to {} KiB", rss_kib(pid));
    assert_healthy(&server);
}

#[test]
fn many_slow_near_limit_frames_cost_only_what_arrived() {
    let server = ServerProc::start(&["--echo"]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    // 400 connections each announce 1 MiB - 1 and send 4 KiB of it: 400 MiB claimed, 1.6 MiB sent.
    let mut conns = Vec::new();
    for _ in 0..400 {
        let mut s = ws(&server);
        let mut bytes = header(OpCode::Binary, true, (1 << 20) - 1);
        bytes.extend(std::iter::repeat_n(7u8, 4096));
        s.write_all(&bytes).unwrap();
        conns.push(s);
    }
    assert_healthy(&server);
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 40 * 1024, "RSS grew by {grown} KiB for 1.6 MiB received");
    // Every one of them can still finish its message and get it back whole.
    for s in conns.iter_mut().take(3) {
        s.write_all(&vec![7u8; (1 << 20) - 1 - 4096]).unwrap();
        let f = read_frame(s).expect("echo");
        assert_eq!(f.payload.len(), (1 << 20) - 1);
        assert!(f.payload.iter().all(|&b| b == 7));
    }
    drop(conns);
    wait_connections(server.addr, 1.0, Duration::from_secs(5));
    assert_healthy(&server);
}

#[test]
fn ping_flood_without_reading_is_cut_off_by_max_queued_bytes() {
    let server = ServerProc::start(&["--echo", "--max-queued-bytes", "1000000", "--write-wait", "30"]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut s = ws(&server);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let ping = masked(OpCode::Ping, true, &[0x5a; 125]);
    let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 500).collect();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(10) && sent < 500 << 20 {
        match s.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "the server kept taking pings ({sent} bytes) from a client that reads nothing");
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");
    assert!(metric(server.addr, "wshub_slow_consumers_dropped_total") >= 1.0);
    assert_healthy(&server);
}

#[test]
fn hub_error_reply_flood_without_reading_is_cut_off() {
    let server = ServerProc::start(&["--max-queued-bytes", "1000000", "--write-wait", "30"]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut s = ws(&server);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    // 7 bytes in, about 70 bytes of error reply out.
    let junk = masked(OpCode::Text, true, b"x");
    let batch: Vec<u8> = junk.iter().copied().cycle().take(junk.len() * 20_000).collect();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < Duration::from_secs(10) {
        match s.write(&batch) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "never cut off");
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 24 * 1024, "RSS grew by {grown} KiB");
    assert_healthy(&server);
}

#[test]
fn bytes_after_close_are_ignored() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws(&server);
    s.write_all(&masked(OpCode::Text, true, b"before")).unwrap();
    let mut bytes = masked(OpCode::Close, true, &1000u16.to_be_bytes());
    bytes.extend_from_slice(&masked(OpCode::Text, true, b"after"));
    bytes.extend(std::iter::repeat_n(0xffu8, 20_000));
    s.write_all(&bytes).unwrap();
    let f = read_frame(&mut s).expect("echo of the message before the close");
    assert_eq!(f.payload, b"before");
    assert_eq!(expect_close(&mut s), Some(1000));
    assert!(sees_eof(&mut s));
    assert_healthy(&server);
}

#[test]
fn close_frame_abuse_gets_precise_codes() {
    let server = ServerProc::start(&["--echo"]);
    let cases: &[(&[u8], u16)] = &[
        (&[0x03], 1002),                   // one byte
        (&[0x03, 0xed], 1002),             // 1005 may not be sent
        (&[0x03, 0xee], 1002),             // 1006 neither
        (&[0x00, 0x00], 1002),             // 0
        (&[0x13, 0x88], 1002),             // 5000 is not assigned
        (&[0x03, 0xe8, 0xff, 0xfe], 1007), // reason not UTF-8
        (&[0x0f, 0xa0], 4000),             // private use: echoed
    ];
    for (payload, want) in cases {
        let mut s = ws(&server);
        s.write_all(&masked(OpCode::Close, true, payload)).unwrap();
        assert_eq!(expect_close(&mut s), Some(*want), "close payload {payload:x?}");
    }
    assert_healthy(&server);
}

#[test]
fn frame_level_garbage_gets_1002_or_1007() {
    let server = ServerProc::start(&["--echo"]);
    let mut unmasked = vec![0x81, 0x02];
    unmasked.extend_from_slice(b"hi");
    let mut split_utf8 = masked(OpCode::Text, false, &[b'a', 0xe2, 0x82]);
    split_utf8.extend_from_slice(&masked(OpCode::Continuation, true, &[0x28]));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (unmasked, 1002),
        (vec![0x83, 0x80, 0, 0, 0, 0], 1002), // reserved opcode
        (vec![0xc1, 0x80, 0, 0, 0, 0], 1002), // RSV1 without an extension
        (vec![0x09, 0x80, 0, 0, 0, 0], 1002), // fragmented ping
        (masked(OpCode::Continuation, true, b"x"), 1002),
        ([masked(OpCode::Text, false, b"a"), masked(OpCode::Binary, true, b"b")].concat(), 1002),
        (masked(OpCode::Text, true, &[0xc0, 0xaf]), 1007), // overlong
        (masked(OpCode::Text, true, &[0xed, 0xa0, 0x80]), 1007), // surrogate
        (split_utf8, 1007),
        (masked(OpCode::Text, true, &[0xf4, 0x90, 0x80, 0x80]), 1007), // > U+10FFFF
    ];
    for (bytes, want) in cases {
        let mut s = ws(&server);
        s.write_all(&bytes).unwrap();
        assert_eq!(close_within(&mut s, Duration::from_secs(3)).0, Some(want), "{bytes:x?}");
    }
    assert_healthy(&server);
}

#[test]
fn half_closed_client_after_upgrade_is_closed() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws(&server);
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    assert!(sees_eof(&mut s), "server kept a half-closed connection open");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A message sent just before the FIN is still answered.
    let mut s = ws(&server);
    s.write_all(&masked(OpCode::Text, true, b"last words")).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let f = read_frame(&mut s).expect("echo before the close");
    assert_eq!(f.payload, b"last words");
    wait_connections(server.addr, 1.0, Duration::from_secs(3));
    assert_healthy(&server);
}

#[test]
fn http_request_then_fin_still_gets_its_answer() {
    let server = ServerProc::start(&[]);
    let mut s = connect(server.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(status_of(&read_to_close(&mut s)), 200);
    assert_healthy(&server);
}

#[test]
fn resets_mid_message_and_mid_head_leave_nothing_behind() {
    let server = ServerProc::start(&["--echo"]);
    let baseline_fds = open_fds(server.child.id());
    for i in 0..200 {
        let mut s = connect(server.addr);
        match i % 4 {
            0 => s.write_all(b"GET /ws HTTP/1.1\r\nHo").unwrap(),
            1 => {
                s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
                read_head(&mut s);
                s.write_all(&header(OpCode::Binary, true, 50_000)).unwrap();
                s.write_all(&[1; 20_000]).unwrap();
            }
            2 => {
                s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
                s.write_all(&masked(OpCode::Text, false, b"part")).unwrap();
            }
            _ => {
                s.write_all(b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{").unwrap();
            }
        }
        reset(s);
    }
    wait_connections(server.addr, 1.0, Duration::from_secs(5));
    wait_fds_at_most(server.child.id(), baseline_fds, Duration::from_secs(3));
    assert_healthy(&server);
}

#[test]
fn connection_churn_leaks_nothing() {
    let server = ServerProc::start(&["--echo", "--handshake-timeout", "2"]);
    let pid = server.child.id();
    let baseline_fds = open_fds(pid);
    let started = Instant::now();
    let mut n = 0;
    while n < 3000 && started.elapsed() < Duration::from_secs(20) {
        let mut s = connect(server.addr);
        match n % 5 {
            0 => {}
            1 => {
                let _ = s.write_all(b"GET /ws HTTP/1.1\r\n");
            }
            2 => {
                let _ = s.write_all(upgrade_request("/ws", "").as_bytes());
            }
            3 => {
                let _ = s.write_all(upgrade_request("/ws", "").as_bytes());
                read_head(&mut s);
                let _ = s.write_all(&masked(OpCode::Text, true, b"bye"));
            }
            _ => {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            }
        }
        drop(s);
        n += 1;
    }
    assert_eq!(n, 3000, "churn too slow");
    wait_connections(server.addr, 1.0, Duration::from_secs(5));
    assert_eq!(
        metric(server.addr, "wshub_connections_opened_total"),
        metric(server.addr, "wshub_connections_closed_total")
    );
    wait_fds_at_most(pid, baseline_fds, Duration::from_secs(3));
    assert_healthy(&server);
}

// ----- the hub -----

#[test]
fn subscribing_to_ten_thousand_topics_stops_at_the_limit() {
    let server = ServerProc::start(&[]);
    let mut s = ws(&server);
    let mut batch = Vec::new();
    for i in 0..10_000 {
        let msg = json!({"type":"subscribe","payload":{"topic":format!("t{i}")},"id":i});
        batch.extend_from_slice(&masked(OpCode::Text, true, msg.to_string().as_bytes()));
    }
    let mut writer = s.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    for i in 0..10_000 {
        let reply = recv_json(&mut s);
        if i < 1024 {
            assert_eq!(reply["type"], "subscribed", "{reply}");
        } else {
            assert_eq!(
                reply,
                json!({"type":"error","payload":{"message":"Too many subscriptions (max 1024)"},"id":i})
            );
        }
    }
    t.join().unwrap();
    assert_eq!(metric(server.addr, "wshub_topics"), 1024.0);
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(metric(server.addr, "wshub_topics"), 0.0, "topics are freed with their last subscriber");
    assert_healthy(&server);
}

#[test]
fn endless_new_topics_cannot_grow_the_history_past_max_topics() {
    // With history on, publishing to a topic nobody subscribes to keeps its state (so a client
    // that comes back finds it), and so does subscribing then unsubscribing. Neither made a hub
    // topic, so --max-topics did not count them and --history-max-bytes bounds only messages:
    // one client publishing to new names grew the server ~580 bytes per name for the TTL.
    let server = ServerProc::start(&["--history-size", "10", "--max-topics", "100"]);
    let mut keeper = ws(&server);
    send_json(&mut keeper, &json!({"type":"subscribe","payload":{"topic":"kept"}}));
    let epoch = recv_json(&mut keeper)["payload"]["epoch"].as_str().unwrap().to_string();
    let mut attacker = ws(&server);
    let mut batch = Vec::new();
    let pad = "x".repeat(200);
    for i in 0..1000 {
        let churned = format!("churn-{i}-{pad}");
        let published = format!("publish-{i}-{pad}");
        for msg in [
            json!({"type":"subscribe","payload":{"topic":churned}}),
            json!({"type":"unsubscribe","payload":{"topic":churned}}),
            json!({"type":"publish","payload":{"topic":published,"data":i}}),
        ] {
            batch.extend_from_slice(&masked(OpCode::Text, true, msg.to_string().as_bytes()));
        }
    }
    // A publish to the subscribed topic after the flood: its history must have survived it.
    let publish = json!({"type":"publish","payload":{"topic":"kept","data":"after"},"id":"p"});
    batch.extend_from_slice(&masked(OpCode::Text, true, publish.to_string().as_bytes()));
    let mut writer = attacker.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    loop {
        let reply = recv_json(&mut attacker);
        if reply["id"] == "p" {
            break;
        }
    }
    t.join().unwrap();
    let topics = metric(server.addr, "wshub_history_topics");
    assert!(topics <= 100.0, "{topics} topics with history state, --max-topics 100");
    // The live subscriber's topic kept its epoch and what was published to it.
    let message = recv_json(&mut keeper);
    assert_eq!(message["payload"]["offset"], 1, "{message}");
    let mut back = ws(&server);
    let since = json!({"offset":0,"epoch":epoch});
    send_json(&mut back, &json!({"type":"subscribe","payload":{"topic":"kept","since":since}}));
    assert_eq!(recv_json(&mut back)["payload"]["recovered"], true);
    assert_eq!(recv_json(&mut back)["payload"]["data"], "after");
    assert_healthy(&server);
}

#[test]
fn giant_topic_names_are_refused_cheaply() {
    let server = ServerProc::start(&[]);
    let mut s = ws(&server);
    let topic = "x".repeat(900_000);
    for kind in ["subscribe", "unsubscribe", "publish"] {
        let msg = json!({"type":kind,"payload":{"topic":topic,"data":1},"id":kind});
        send_json(&mut s, &msg);
        assert_eq!(
            recv_json(&mut s),
            json!({"type":"error","payload":{"message":"Topic too long (900000 bytes, max 256)"},"id":kind})
        );
    }
    // Escapes that shrink below the limit are measured after decoding.
    let escaped = "\\u0041".repeat(256);
    let text = format!(r#"{{"type":"subscribe","payload":{{"topic":"{escaped}"}}}}"#);
    s.write_all(&masked(OpCode::Text, true, text.as_bytes())).unwrap();
    assert_eq!(recv_json(&mut s)["type"], "subscribed");
    let (status, body) = http(
        server.addr,
        "POST",
        "/publish",
        "",
        &format!(r#"{{"topic":"{}","data":1}}"#, "y".repeat(60_000)),
    );
    assert_eq!(status, 400, "{body}");
    assert_healthy(&server);
}

#[test]
fn json_nesting_bombs_get_an_error_not_a_crash() {
    let server = ServerProc::start(&[]);
    let mut s = ws(&server);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        format!(r#"{{"type":"publish","payload":{{"topic":"t","data":{deep}}},"id":1}}"#),
        format!(r#"{{"type":"ping","id":{deep}}}"#),
        format!(r#"{{"type":"ping","junk":{deep},"id":1}}"#),
        format!(r#"{{"type":"subscribe","payload":{{"topic":"t","x":{deep}}},"id":1}}"#),
        format!(r#"{{"type":"publish","payload":{{"topic":"t","data":{}}},"id":1}}"#, "[".repeat(200_000)),
        format!(r#"{{"type":"ping","id":{}}}"#, "{\"a\":".repeat(100_000)),
        deep.clone(),
    ];
    for case in &cases {
        s.write_all(&masked(OpCode::Text, true, case.as_bytes())).unwrap();
        let reply = recv_json(&mut s);
        assert_eq!(reply["type"], "error", "{}", &reply.to_string()[..reply.to_string().len().min(200)]);
        assert_eq!(reply["payload"]["message"], "Invalid message format");
    }
    // The HTTP API, within its 64 KiB body limit.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let (status, _) = http(server.addr, "POST", "/publish", "", &format!(r#"{{"topic":"t","data":{deep}}}"#));
    assert_eq!(status, 400);
    let (status, _) = http(server.addr, "POST", "/broadcast", "", &format!(r#"{{"data":{deep}}}"#));
    assert_eq!(status, 400);
    // Nesting within the limit is fine.
    let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
    send_json(&mut s, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    recv_json(&mut s);
    let text = format!(r#"{{"type":"publish","payload":{{"topic":"t","data":{ok}}}}}"#);
    s.write_all(&masked(OpCode::Text, true, text.as_bytes())).unwrap();
    let msg = recv_json(&mut s);
    assert_eq!(msg["type"], "message");
    assert_healthy(&server);
}

#[test]
fn big_publish_to_many_subscribers_is_shared_not_copied() {
    let server = ServerProc::start(&["--max-queued-bytes", "4000000", "--write-wait", "30"]);
    let pid = server.child.id();
    let mut subs = Vec::new();
    for _ in 0..200 {
        let mut s = ws(&server);
        send_json(&mut s, &json!({"type":"subscribe","payload":{"topic":"big"}}));
        assert_eq!(recv_json(&mut s)["type"], "subscribed");
        subs.push(s);
    }
    let before = rss_kib(pid);
    let data = "z".repeat(900_000);
    let mut publisher = ws(&server);
    send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"big","data":data},"id":1}));
    let ack = recv_json(&mut publisher);
    assert_eq!(ack["payload"]["delivered"], 200, "{ack}");
    // Nobody has read yet: what the sockets did not take waits in the queues, shared.
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 30 * 1024, "RSS grew by {grown} KiB for 200 x 900 KB (copies would be 176 MiB)");
    for s in subs.iter_mut() {
        let msg = recv_json(s);
        assert_eq!(msg["payload"]["data"].as_str().map(str::len), Some(900_000));
    }
    assert_healthy(&server);
}

#[test]
fn subscriber_that_reads_nothing_is_cut_off_and_others_get_everything() {
    let server = ServerProc::start(&["--max-queued-bytes", "2000000", "--write-wait", "30"]);
    let mut sleeper = ws(&server);
    send_json(&mut sleeper, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    recv_json(&mut sleeper);
    let mut reader = ws(&server);
    send_json(&mut reader, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    recv_json(&mut reader);
    let mut publisher = ws(&server);
    let data = "d".repeat(50_000);
    let mut got = 0;
    for i in 0..200 {
        send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"t","data":{"i":i,"d":data}}}));
        // Keep the reader current, the way a healthy client is.
        let msg = recv_json(&mut reader);
        assert_eq!(msg["payload"]["data"]["i"], i);
        got += 1;
    }
    assert_eq!(got, 200);
    assert!(metric(server.addr, "wshub_slow_consumers_dropped_total") >= 1.0);
    // The sleeper finds its stream ended (whatever it had queued before the cut).
    sleeper.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(sees_eof(&mut sleeper));
    assert_healthy(&server);
}

// ----- shutdown -----

#[test]
fn sigterm_with_clients_mid_message_closes_each_with_1001_and_exits() {
    let mut server = ServerProc::start(&["--echo", "--shutdown-timeout", "3"]);
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut s = ws(&server);
        // Half a frame: header and part of the payload.
        s.write_all(&header(OpCode::Text, true, 1000)).unwrap();
        s.write_all(&vec![b'a'; 500]).unwrap();
        if i % 2 == 0 {
            // And an unfinished fragmented message.
            s.write_all(&vec![b'a'; 500]).unwrap();
            s.write_all(&masked(OpCode::Text, false, b"frag")).unwrap();
        }
        clients.push(s);
    }
    // One more that only got as far as half a head.
    let mut half_head = connect(server.addr);
    half_head.write_all(b"GET /ws HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.child.id();
    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let started = Instant::now();
    for (i, s) in clients.iter_mut().enumerate() {
        let mut code = None;
        let mut echoes = Vec::new();
        while let Some(f) = read_frame(s) {
            if f.opcode == 0x8 {
                code = f.close_code();
                break;
            }
            assert_eq!(f.opcode, 0x1, "client {i}: only the finished echo may precede the close");
            echoes.push(f.payload);
        }
        assert_eq!(code, Some(1001), "client {i}");
        // The message that was whole before the signal is answered before the close.
        let want: Vec<Vec<u8>> = if i % 2 == 0 { vec![vec![b'a'; 1000]] } else { vec![] };
        assert_eq!(echoes, want, "client {i}");
        if i % 4 == 1 {
            // Finishing the message after the close is allowed and ignored.
            let _ = s.write_all(&vec![b'a'; 500]);
            let _ = s.write_all(&masked(OpCode::Close, true, &1001u16.to_be_bytes()));
        } else if i % 4 == 0 {
            // Completes the frame and the message, then closes.
            let _ = s.write_all(&masked(OpCode::Continuation, true, b"end"));
            let _ = s.write_all(&masked(OpCode::Close, true, &1000u16.to_be_bytes()));
        }
        // The rest never answer: the shutdown timeout ends them.
    }
    // The client with half a head is told the server is going away.
    half_head.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(status_of(&read_to_close(&mut half_head)), 503);
    let status = server.child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "exit took {:?}", started.elapsed());
    assert_eq!(status.code(), Some(0));
}

// ----- many attackers in one turn -----

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Fills `s` (non-blocking) with copies of `unit` until the kernel takes no more or `max` bytes.
fn fill(s: &mut TcpStream, unit: &[u8], max: usize) -> usize {
    let batch: Vec<u8> = unit.iter().copied().cycle().take(unit.len() * (65536 / unit.len())).collect();
    s.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < max {
        match s.write(&batch) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    s.set_nonblocking(false).unwrap();
    sent
}

#[test]
fn simultaneous_reply_floods_are_bounded_by_the_queue_limit() {
    let server = ServerProc::start(&["--max-queued-bytes", "1000000", "--write-wait", "30"]);
    let pid = server.child.id();
    let idle_fds = open_fds(pid);
    let mut attackers: Vec<TcpStream> = (0..10).map(|_| ws(&server)).collect();
    let before = peak_rss_kib(pid);
    // Freeze the server so every attacker's requests are waiting at once when it wakes: tiny
    // invalid messages, each drawing an error reply ten times its size, never read.
    signal(pid, "-STOP");
    let junk = masked(OpCode::Text, true, b"x");
    let mut queued = 0;
    for s in attackers.iter_mut() {
        queued += fill(s, &junk, 3 << 20);
    }
    signal(pid, "-CONT");
    let woke = Instant::now();
    // A bystander is answered; how soon depends on the machine's load (the debug server works
    // through the attackers' input for seconds on a loaded machine), so the wait is bounded by
    // the server's progress, not by the clock.
    let addr = server.addr;
    let probe = std::thread::spawn(move || {
        let mut probe = connect(addr);
        probe.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        probe.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        status_of(&read_to_close(&mut probe))
    });
    wait_while_working(pid, "the bystander's answer", || probe.is_finished());
    assert_eq!(probe.join().unwrap(), 200);
    eprintln!("{queued} bytes of requests; a bystander was answered after {:?}", woke.elapsed());
    // Each attacker is cut at its bound, one by one (watched through the server's descriptors,
    // which costs it nothing); then the server is all ours again.
    wait_while_working(pid, "every attacker to be cut off", || open_fds(pid) <= idle_fds);
    assert_eq!(metric(addr, "wshub_slow_consumers_dropped_total"), 10.0);
    assert_healthy(&server);
    let grown = peak_rss_kib(pid).saturating_sub(before);
    // 10 clients x 1 MB of queue is the budget; the reply amplification must not multiply it.
    assert!(grown < 32 * 1024, "peak RSS grew by {grown} KiB");
    drop(attackers);
}

#[test]
fn connection_flood_over_the_limit_gets_503_and_the_server_recovers() {
    let server = ServerProc::start(&["--echo", "--max-connections", "20", "--handshake-timeout", "3"]);
    let mut held: Vec<TcpStream> = (0..20).map(|_| ws(&server)).collect();
    // 300 more: the first 256 are told 503, the rest are dropped; none is upgraded.
    let mut refused = 0;
    let mut dropped = 0;
    let mut extra = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(server.addr) {
            Ok(s) => extra.push(s),
            Err(_) => dropped += 1,
        }
    }
    for s in extra.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(upgrade_request("/ws", "").as_bytes());
        let response = read_to_close(s);
        match status_of(&response) {
            503 => refused += 1,
            0 => dropped += 1,
            other => panic!("over the limit, got {other}: {response:?}"),
        }
    }
    assert!(refused >= 200, "{refused} told 503, {dropped} dropped");
    // The held clients were not disturbed.
    for s in held.iter_mut().take(3) {
        s.write_all(&masked(OpCode::Text, true, b"still here")).unwrap();
        assert_eq!(read_frame(s).unwrap().payload, b"still here");
    }
    drop(extra);
    held.truncate(0);
    std::thread::sleep(Duration::from_millis(300));
    wait_connections(server.addr, 1.0, Duration::from_secs(5));
    assert_healthy(&server);
}

#[test]
fn a_publish_followed_by_fin_is_still_delivered() {
    let server = ServerProc::start(&[]);
    let mut subscriber = ws(&server);
    send_json(&mut subscriber, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    recv_json(&mut subscriber);
    for i in 0..50 {
        let mut publisher = connect(server.addr);
        // Upgrade, publish and FIN in one go, without waiting for anything.
        let mut bytes = upgrade_request("/ws", "").into_bytes();
        let msg = json!({"type":"publish","payload":{"topic":"t","data":i}});
        bytes.extend_from_slice(&masked(OpCode::Text, true, msg.to_string().as_bytes()));
        publisher.write_all(&bytes).unwrap();
        publisher.shutdown(Shutdown::Write).unwrap();
        drop(publisher);
    }
    for i in 0..50 {
        assert_eq!(recv_json(&mut subscriber)["payload"]["data"], i);
    }
    assert_healthy(&server);
}

#[test]
fn odd_request_lines_for_an_upgrade_get_400() {
    let server = ServerProc::start(&["--echo"]);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let cases = [
        format!("GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\r\n"),
        format!("get /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\r\n"),
        format!("POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\r\n"),
        format!("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\r\n"),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nHost: y\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\r\n"),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}{key}\r\n"),
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            "QUFBQUFB".repeat(500)
        ),
    ];
    for case in &cases {
        let response = raw_http(server.addr, case.as_bytes());
        assert_eq!(status_of(&response), 400, "{case:?} -> {response:?}");
    }
    assert_healthy(&server);
}

#[test]
fn pong_and_empty_fragment_floods_cost_no_memory() {
    let server = ServerProc::start(&["--echo"]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let mut s = ws(&server);
    // Unsolicited pongs: no answer is owed.
    let pong = masked(OpCode::Pong, true, &[1; 125]);
    let pongs: Vec<u8> = pong.iter().copied().cycle().take(pong.len() * 40_000).collect();
    s.write_all(&pongs).unwrap();
    // A message of 200 000 empty fragments with pings between them.
    let mut frags = masked(OpCode::Text, false, b"");
    for _ in 0..200_000 / 100 {
        for _ in 0..100 {
            frags.extend_from_slice(&masked(OpCode::Continuation, false, b""));
        }
        frags.extend_from_slice(&masked(OpCode::Ping, true, b"p"));
    }
    frags.extend_from_slice(&masked(OpCode::Continuation, true, b"end"));
    let mut writer = s.try_clone().unwrap();
    let t = std::thread::spawn(move || writer.write_all(&frags).unwrap());
    let mut pongs_back = 0;
    loop {
        let f = read_frame(&mut s).expect("frames");
        match f.opcode {
            0xA => pongs_back += 1,
            0x1 => {
                assert_eq!(f.payload, b"end");
                break;
            }
            other => panic!("opcode {other}"),
        }
    }
    t.join().unwrap();
    assert_eq!(pongs_back, 2000);
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 8 * 1024, "RSS grew by {grown} KiB");
    assert_healthy(&server);
}

#[test]
fn a_thousand_slowloris_clients_do_not_starve_a_real_one() {
    let server = ServerProc::start(&["--echo", "--handshake-timeout", "1.5"]);
    let mut loris: Vec<TcpStream> = (0..1000).map(|_| connect(server.addr)).collect();
    let head = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nX-Loris: ";
    let started = Instant::now();
    let mut round = 0;
    // Every client trickles one byte per 100 ms; a real client is served meanwhile.
    while started.elapsed() < Duration::from_millis(800) {
        for s in loris.iter_mut() {
            let _ = s.write_all(&[*head.get(round).unwrap_or(&b'a')]);
        }
        round += 1;
        if round == 3 {
            assert_healthy(&server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // At the timeout every one of them is told 408 and closed.
    let mut told = 0;
    for s in loris.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if status_of(&read_to_close(s)) == 408 {
            told += 1;
        }
    }
    assert_eq!(told, 1000);
    assert!(started.elapsed() < Duration::from_secs(6));
    drop(loris);
    wait_connections(server.addr, 1.0, Duration::from_secs(5));
    assert_healthy(&server);
}

#[test]
fn a_client_that_keeps_sending_after_its_protocol_error_is_closed_within_the_drain_limit() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws(&server);
    let mut writer = s.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        // An unmasked frame (1002), then garbage for at most 8 s.
        let _ = writer.write_all(&[0x81, 0x01, b'x']);
        let junk = vec![0x42u8; 16 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            if writer.write_all(&junk).is_err() {
                return started.elapsed();
            }
        }
        started.elapsed()
    });
    assert_eq!(close_within(&mut s, Duration::from_secs(3)).0, Some(1002));
    let kept_sending_for = t.join().unwrap();
    assert!(kept_sending_for < Duration::from_secs(4), "server read garbage for {kept_sending_for:?}");
    assert_healthy(&server);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = ServerProc::start(&[]);
    let body = r#"{"topic":"t","data":"x"}"#;
    let mut s = connect(server.addr);
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(900))).unwrap();
    // curl waits a second for this before sending anyway; a server must not make it wait.
    assert_eq!(read_head(&mut s), "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(status_of(&read_to_close(&mut s)), 200);
    // A refusal needs no go-ahead: 413 at once, and no 100 before it.
    let mut s = connect(server.addr);
    s.write_all(
        b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status_of(&read_head(&mut s)), 413);
    assert_healthy(&server);
}

#[test]
fn echo_floods_that_read_do_not_starve_a_bystander() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let server = ServerProc::start(&["--echo"]);
    let pid = server.child.id();
    // The floods go on until told to stop (120 s at most): a starved bystander would be served
    // only once they end. Each writer says whether it was told (rather than ran out of time).
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..2 {
        let mut s = ws(&server);
        let mut reader = s.try_clone().unwrap();
        let stop_w = stop.clone();
        let echoed = Arc::new(AtomicU64::new(0));
        counters.push(echoed.clone());
        let echoed_w = echoed.clone();
        // Writer: 64 KiB batches of 100-byte frames (106 bytes masked, echoed in 102), as fast
        // as its reader drains the echoes, counting them. A flood that reads keeps at most
        // `WINDOW` of echoes unread, so it is never cut off as a slow consumer (4 MiB) when a
        // loaded machine delays the reader: the flood lasts until it is told to stop.
        const WINDOW: u64 = 1 << 20;
        writers.push(std::thread::spawn(move || {
            let frame = masked(OpCode::Binary, true, &[9; 100]);
            let batch: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 600).collect();
            let started = Instant::now();
            let mut sent = 0u64;
            while !stop_w.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                if sent / 106 * 102 > echoed_w.load(Ordering::Relaxed) + WINDOW {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                if s.write_all(&batch).is_err() {
                    break;
                }
                sent += batch.len() as u64;
            }
            let told = stop_w.load(Ordering::Relaxed);
            let _ = s.shutdown(Shutdown::Both);
            told
        }));
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            reader.set_read_timeout(Some(Duration::from_secs(150))).unwrap();
            while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
                echoed.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    let echoed = || counters.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0);
    // The floods are under way: echoes are coming back.
    wait_while_working(pid, "both floods to be echoed", || echoed() > 0);
    let mut worst = Duration::ZERO;
    for _ in 0..2 {
        let started = Instant::now();
        let mut b = connect(server.addr);
        b.set_read_timeout(Some(Duration::from_secs(100))).unwrap();
        b.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
        let head = read_head(&mut b);
        assert!(head.starts_with("HTTP/1.1 101"));
        b.write_all(&masked(OpCode::Ping, true, b"x")).unwrap();
        let f = read_frame(&mut b).expect("the bystander's pong");
        assert_eq!(f.opcode, 0xA);
        worst = worst.max(started.elapsed());
    }
    // Served while the floods go on: both are still being echoed after the bystander's pong.
    let after: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    wait_while_working(pid, "more echoes after the bystander's", || {
        counters.iter().zip(&after).all(|(c, a)| c.load(Ordering::Relaxed) > *a)
    });
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        assert!(w.join().unwrap(), "a flood ran out of time before the bystander was served");
    }
    for r in readers {
        r.join().unwrap();
    }
    // For the log only: on a loaded machine the debug server takes seconds; what is asserted is
    // the order (bystander served before the floods end), which load does not change.
    eprintln!("worst bystander round trip under two echo floods: {worst:?}");
}

/// Waits until `done()`, for as long as the server keeps working towards it: fails when its
/// CPU time stood still for 20 s (hung, or waiting on something that will not come), or
/// after 300 s in all. A slow, loaded machine only makes it wait longer, never fail.
fn wait_while_working(pid: u32, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    let (mut ticks, mut moved) = (cpu_ticks(pid), Instant::now());
    while !done() {
        let now_ticks = cpu_ticks(pid);
        if now_ticks != ticks {
            (ticks, moved) = (now_ticks, Instant::now());
        }
        assert!(moved.elapsed() < Duration::from_secs(20), "waiting for {what}: the server stopped working");
        assert!(started.elapsed() < Duration::from_secs(300), "waiting for {what}: 300 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_plain_request_to_the_websocket_path_gets_426_with_the_protocol_to_use() {
    let server = ServerProc::start(&[]);
    for request in [
        "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /ws?x=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let response = raw_http(server.addr, request.as_bytes());
        assert_eq!(status_of(&response), 426, "{request:?} -> {response:?}");
        assert!(response.contains("\r\nUpgrade: websocket\r\n"), "{response}");
        assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{response}");
    }
    // A wrong version on a real upgrade request says which protocol too.
    let response =
        raw_http(server.addr, upgrade_request("/ws", "").replace("Version: 13", "Version: 8").as_bytes());
    assert_eq!(status_of(&response), 426);
    assert!(response.contains("\r\nUpgrade: websocket\r\n"), "{response}");
    // Other paths are still plain HTTP.
    assert_eq!(http(server.addr, "GET", "/nowhere", "", "").0, 404);
    assert_eq!(http(server.addr, "GET", "/healthz", "", "").0, 200);
    assert_healthy(&server);
}

/// The status line of a raw response.
fn status_line(response: &str) -> &str {
    response.split("\r\n").next().unwrap_or("")
}

#[test]
fn every_refusal_has_its_standard_reason_phrase() {
    // A client (or a log) reading "415 Error" learns nothing; RFC 9110 names every status.
    let server = ServerProc::start(&[]);
    let text_plain = raw_http(
        server.addr,
        b"POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(status_line(&text_plain), "HTTP/1.1 415 Unsupported Media Type", "{text_plain}");
    let limited = ServerProc::start(&["--max-connections-per-ip", "1"]);
    let held = ws(&limited);
    let over = raw_http(limited.addr, upgrade_request("/ws", "").as_bytes());
    assert_eq!(status_line(&over), "HTTP/1.1 429 Too Many Requests", "{over}");
    drop(held);
    assert_healthy(&server);
}

#[test]
fn head_requests_get_the_get_headers_without_a_body() {
    // RFC 9110 section 9.1: HEAD is GET without the body; health checkers and `curl -I` use it.
    let server = ServerProc::start(&[]);
    for path in ["/healthz", "/metrics", "/wshub.js"] {
        let get = raw_http(server.addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        let head =
            raw_http(server.addr, format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        let (get_head, get_body) = get.split_once("\r\n\r\n").expect("a GET response");
        assert_eq!(status_line(&head), "HTTP/1.1 200 OK", "HEAD {path}: {head:?}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD {path} must carry no body: {head:?}");
        let content_type = |h: &str| h.lines().find(|l| l.starts_with("Content-Type:")).map(str::to_string);
        assert_eq!(content_type(&head), content_type(get_head), "HEAD {path}");
        if path == "/wshub.js" {
            // A fixed body: the length HEAD announces is the one GET sends.
            assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", get_body.len())), "{head}");
        }
    }
    // HEAD is no way around the POST routes, and their 405 names the method they take; the GET
    // routes' 405 names both methods they take.
    let publish = raw_http(server.addr, b"HEAD /publish HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status_of(&publish), 405, "{publish}");
    assert!(publish.contains("\r\nAllow: POST\r\n"), "{publish}");
    let post_health = raw_http(
        server.addr,
        b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(status_of(&post_health), 405, "{post_health}");
    assert!(post_health.contains("\r\nAllow: GET, HEAD\r\n"), "{post_health}");
    // HEAD on the WebSocket path is still not an upgrade.
    let ws_head = raw_http(server.addr, upgrade_request("/ws", "").replacen("GET", "HEAD", 1).as_bytes());
    assert_eq!(status_of(&ws_head), 400, "{ws_head}");
    // Refusals of a HEAD carry no body either: the 426 of the WebSocket path, a 400 for a
    // missing Host, a 404.
    for (request, status) in [
        ("HEAD /ws HTTP/1.1\r\nHost: localhost\r\n\r\n", 426),
        ("HEAD /healthz HTTP/1.1\r\n\r\n", 400),
        ("HEAD /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n", 404),
    ] {
        let response = raw_http(server.addr, request.as_bytes());
        assert_eq!(status_of(&response), status, "{request:?} -> {response:?}");
        assert!(response.ends_with("\r\n\r\n"), "{request:?} -> a body: {response:?}");
    }
    assert_healthy(&server);
}

#[test]
fn plain_http_1_1_needs_exactly_one_host() {
    // RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host or
    // with more than one (a proxy may route by one Host while we judge by the other).
    let server = ServerProc::start(&[]);
    let body = r#"{"topic":"t","data":1}"#;
    let publish = |hosts: &str| {
        format!(
            "POST /publish HTTP/1.1\r\n{hosts}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    for request in [
        "GET /healthz HTTP/1.1\r\n\r\n".to_string(),
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n".to_string(),
        publish(""),
        publish("Host: localhost\r\nHost: evil.example\r\n"),
        publish("Host: evil.example\r\nHost: localhost\r\n"),
    ] {
        let response = raw_http(server.addr, request.as_bytes());
        assert_eq!(status_of(&response), 400, "{request:?} -> {response:?}");
    }
    // HTTP/1.0 has no Host requirement; one Host is the normal case.
    assert_eq!(status_of(&raw_http(server.addr, b"GET /healthz HTTP/1.0\r\n\r\n")), 200);
    assert_eq!(status_of(&raw_http(server.addr, publish("Host: localhost\r\n").as_bytes())), 200);
    assert_healthy(&server);
}

#[test]
fn subscribers_resetting_during_fan_out_do_not_disturb_the_rest() {
    let server = ServerProc::start(&[]);
    let mut subs = Vec::new();
    for _ in 0..60 {
        let mut s = ws(&server);
        send_json(&mut s, &json!({"type":"subscribe","payload":{"topic":"t"}}));
        recv_json(&mut s);
        subs.push(s);
    }
    let publisher = ws(&server);
    let data = "r".repeat(100_000);
    let mut writer = publisher.try_clone().unwrap();
    let batch: Vec<u8> = (0..30)
        .flat_map(|i| {
            let msg = json!({"type":"publish","payload":{"topic":"t","data":{"i":i,"d":data}}});
            masked(OpCode::Text, true, msg.to_string().as_bytes())
        })
        .collect();
    let t = std::thread::spawn(move || writer.write_all(&batch).unwrap());
    // Every other subscriber resets as the messages pour in.
    let mut kept = Vec::new();
    for (i, s) in subs.into_iter().enumerate() {
        if i % 2 == 0 {
            reset(s);
        } else {
            kept.push(s);
        }
    }
    t.join().unwrap();
    for s in kept.iter_mut() {
        for i in 0..30 {
            assert_eq!(recv_json(s)["payload"]["data"]["i"], i);
        }
    }
    drop(publisher);
    drop(kept);
    wait_connections(server.addr, 1.0, Duration::from_secs(5));
    assert_eq!(metric(server.addr, "wshub_topics"), 0.0);
    assert_healthy(&server);
}
