//! The real `wshub` binary on a loopback port, driven by an independent client (tungstenite)
//! and by raw sockets for what no polite client sends.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;
use wshub::protocol::OpCode;

fn tungstenite_client(
    server: &ServerProc,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>> {
    let (ws, response) = tungstenite::connect(server.url()).expect("tungstenite connects");
    assert_eq!(response.status().as_u16(), 101);
    ws
}

#[test]
fn echo_text_and_binary_with_tungstenite() {
    let server = ServerProc::start(&["--echo"]);
    let mut ws = tungstenite_client(&server);
    ws.send(Message::text("hello wshub")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello wshub"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn echo_sizes_from_zero_to_sixteen_mib() {
    let server =
        ServerProc::start(&["--echo", "--max-message-size", "17000000", "--max-queued-bytes", "40000000"]);
    let mut ws = tungstenite_client(&server);
    for size in [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        ws.send(Message::binary(data.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::binary(data), "binary size {size}");
        let text: String = (0..size).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text), "text size {size}");
    }
}

#[test]
fn first_frames_in_the_same_packet_as_the_handshake_are_kept() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = connect(server.addr);
    let mut bytes = upgrade_request("/ws", "").into_bytes();
    bytes.extend(masked(OpCode::Text, true, b"early"));
    s.write_all(&bytes).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
    assert_eq!(read_frame(&mut s).unwrap().payload, b"early");
}

#[test]
fn sixteen_frames_in_one_packet_echo_in_order() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws_connect(server.addr);
    let mut batch = Vec::new();
    for i in 0..16u8 {
        batch.extend(masked(OpCode::Binary, true, &[i; 16]));
    }
    s.write_all(&batch).unwrap();
    for i in 0..16u8 {
        assert_eq!(read_frame(&mut s).unwrap().payload, vec![i; 16]);
    }
}

#[test]
fn one_byte_per_write_fragmented_message() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws_connect(server.addr);
    let mut bytes = masked(OpCode::Text, false, "héllo ".as_bytes());
    bytes.extend(masked(OpCode::Ping, true, b"mid"));
    bytes.extend(masked(OpCode::Continuation, false, "wörld".as_bytes()));
    bytes.extend(masked(OpCode::Continuation, true, b"!"));
    for b in bytes {
        s.write_all(&[b]).unwrap();
        std::thread::sleep(Duration::from_micros(200));
    }
    let pong = read_frame(&mut s).unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (0xA, &b"mid"[..]));
    let msg = read_frame(&mut s).unwrap();
    assert_eq!((msg.opcode, msg.fin), (0x1, true));
    assert_eq!(msg.payload, "héllo wörld!".as_bytes());
}

#[test]
fn ping_gets_pong_with_same_payload() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws_connect(server.addr);
    s.write_all(&masked(OpCode::Ping, true, b"are you there")).unwrap();
    let f = read_frame(&mut s).unwrap();
    assert_eq!((f.opcode, f.payload.as_slice()), (0xA, &b"are you there"[..]));
}

#[test]
fn close_codes() {
    let server = ServerProc::start(&["--echo", "--max-message-size", "1000"]);
    // (frames to send, close code expected back)
    let mut too_big = vec![0x82u8, 0x80 | 126];
    too_big.extend_from_slice(&2000u16.to_be_bytes());
    too_big.extend_from_slice(&[0, 0, 0, 0]); // header only: refused before the payload
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("normal close echoed", masked(OpCode::Close, true, &[0x03, 0xe8, b'o', b'k']), 1000),
        ("empty close answered 1000", masked(OpCode::Close, true, b""), 1000),
        ("3000 echoed", masked(OpCode::Close, true, &3000u16.to_be_bytes()), 3000),
        ("1005 on the wire", masked(OpCode::Close, true, &1005u16.to_be_bytes()), 1002),
        ("one-byte close", masked(OpCode::Close, true, &[3]), 1002),
        ("close reason not utf-8", masked(OpCode::Close, true, &[0x03, 0xe8, 0xff]), 1007),
        ("bad utf-8 text", masked(OpCode::Text, true, &[0xce, 0xba, 0xff]), 1007),
        ("message too big", too_big, 1009),
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "reserved opcode",
            masked(OpCode::Binary, true, b"x")
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { 0x83 } else { b })
                .collect(),
            1002,
        ),
        (
            "rsv1 set",
            masked(OpCode::Text, true, b"x")
                .into_iter()
                .enumerate()
                .map(|(i, b)| if i == 0 { b | 0x40 } else { b })
                .collect(),
            1002,
        ),
        ("continuation first", masked(OpCode::Continuation, true, b"x"), 1002),
        ("fragmented ping", masked(OpCode::Ping, false, b"x"), 1002),
    ];
    for (name, bytes, expected) in cases {
        let mut s = ws_connect(server.addr);
        s.write_all(&bytes).unwrap();
        assert_eq!(expect_close(&mut s), Some(expected), "{name}");
        assert!(sees_eof(&mut s), "{name}: server closes the TCP connection");
    }
}

#[test]
fn invalid_utf8_fails_at_the_first_bad_fragment() {
    let server = ServerProc::start(&["--echo"]);
    let mut s = ws_connect(server.addr);
    s.write_all(&masked(OpCode::Text, false, b"valid ")).unwrap();
    s.write_all(&masked(OpCode::Continuation, false, &[0xed, 0xa0, 0x80])).unwrap(); // surrogate
                                                                                     // The message is not finished, yet the server must already have failed it.
    assert_eq!(expect_close(&mut s), Some(1007));
}

#[test]
fn handshake_rejections() {
    let server = ServerProc::start(&["--echo", "--max-head-size", "4096"]);
    let huge = format!("X-Filler: {}\r\n", "a".repeat(5000));
    let cases: Vec<(&str, String, u16)> = vec![
        ("missing key", "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".into(), 400),
        ("bad key", upgrade_request("/ws", "").replace(KEY, "c2hvcnQ="), 400),
        ("no connection upgrade", upgrade_request("/ws", "").replace("Connection: Upgrade", "Connection: keep-alive"), 400),
        ("post", upgrade_request("/ws", "").replace("GET", "POST"), 400),
        ("http/1.0", upgrade_request("/ws", "").replace("HTTP/1.1", "HTTP/1.0"), 400),
        ("version 8", upgrade_request("/ws", "").replace("Version: 13", "Version: 8"), 426),
        ("foreign origin", upgrade_request("/ws", "Origin: https://evil.example\r\n"), 403),
        ("head too large", upgrade_request("/ws", &huge), 431),
        ("wrong path", upgrade_request("/nope", ""), 404),
        ("garbage", "\x16\x03\x01 not http\r\n\r\n".into(), 400),
    ];
    for (name, request, expected) in cases {
        let mut s = connect(server.addr);
        let _ = s.write_all(request.as_bytes());
        let response = read_to_close(&mut s);
        assert_eq!(status_of(&response), expected, "{name}: {response}");
        if expected == 426 {
            assert!(response.contains("Sec-WebSocket-Version: 13"), "{response}");
        }
    }
    // Same-host origin is accepted by default.
    let mut s = connect(server.addr);
    s.write_all(upgrade_request("/ws", "Origin: http://localhost\r\n").as_bytes()).unwrap();
    assert!(read_head(&mut s).starts_with("HTTP/1.1 101"));
}

#[test]
fn allow_list_and_subprotocols() {
    let server = ServerProc::start(&[
        "--echo",
        "--allowed-origin",
        "https://app.example",
        "--subprotocol",
        "chat.v2",
        "--subprotocol",
        "chat.v1",
    ]);
    let mut s = connect(server.addr);
    s.write_all(
        upgrade_request(
            "/ws",
            "Origin: https://app.example\r\nSec-WebSocket-Protocol: x, chat.v1, chat.v2\r\n",
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Protocol: chat.v1\r\n"),
        "the client's first supported choice: {head}"
    );
    let mut s = connect(server.addr);
    s.write_all(upgrade_request("/ws", "Origin: http://localhost\r\n").as_bytes()).unwrap();
    assert_eq!(status_of(&read_to_close(&mut s)), 403, "the allow-list replaces same-host");
}

#[test]
fn max_connections_answers_503() {
    let server = ServerProc::start(&["--echo", "--max-connections", "2"]);
    let _a = ws_connect(server.addr);
    let _b = ws_connect(server.addr);
    let mut c = connect(server.addr);
    let _ = c.write_all(upgrade_request("/ws", "").as_bytes());
    let response = read_to_close(&mut c);
    assert_eq!(status_of(&response), 503, "{response}");
    assert!(response.contains("Too many connections"));
    drop(c);
    drop(_a);
    // A slot frees up once the first client is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = connect(server.addr);
        d.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
        if read_head(&mut d).starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn handshake_timeout_closes_silent_clients() {
    let server = ServerProc::start(&["--echo", "--handshake-timeout", "0.3"]);
    let mut s = connect(server.addr);
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap(); // and then nothing
    let started = Instant::now();
    assert!(sees_eof(&mut s));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[test]
fn heartbeat_pings_and_pong_timeout() {
    let server = ServerProc::start(&["--echo", "--ping-interval", "0.2", "--pong-wait", "0.7"]);
    // A client that never answers: gets pings, then is closed with 1008.
    let mut silent = ws_connect(server.addr);
    let first = read_frame(&mut silent).unwrap();
    assert_eq!(first.opcode, 0x9, "a heartbeat ping");
    let started = Instant::now();
    assert_eq!(expect_close(&mut silent), Some(1008));
    assert!(started.elapsed() < Duration::from_secs(3));
    // A client that answers pings stays.
    let mut alive = ws_connect(server.addr);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let f = read_frame(&mut alive).expect("still connected");
        assert_eq!(f.opcode, 0x9);
        alive.write_all(&masked(OpCode::Pong, true, &f.payload)).unwrap();
    }
    alive.write_all(&masked(OpCode::Text, true, b"still here")).unwrap();
    loop {
        let f = read_frame(&mut alive).expect("still connected");
        if f.opcode == 0x1 {
            assert_eq!(f.payload, b"still here");
            break;
        }
    }
}

#[test]
fn slow_reader_is_cut_off_while_fast_reader_continues() {
    let server = ServerProc::start(&["--echo", "--max-queued-bytes", "1000000", "--write-wait", "30"]);
    let mut slow = ws_connect(server.addr);
    slow.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut fast = ws_connect(server.addr);
    let chunk = masked(OpCode::Binary, true, &vec![7u8; 60_000]);
    let started = Instant::now();
    let mut slow_gone = false;
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(20) {
        // The slow client sends and never reads: its echoes pile up in the server.
        if !slow_gone && slow.write_all(&chunk).is_err() {
            slow_gone = true;
        }
        // The fast client keeps getting its echoes.
        fast.write_all(&masked(OpCode::Text, true, b"tick")).unwrap();
        assert_eq!(read_frame(&mut fast).unwrap().payload, b"tick");
        rounds += 1;
        if slow_gone && rounds > 50 {
            break;
        }
    }
    assert!(slow_gone, "the slow reader was never cut off");
}

#[test]
fn graceful_shutdown_sends_1001_and_exits_zero() {
    let mut server = ServerProc::start(&["--echo", "--shutdown-timeout", "5"]);
    let mut ws = tungstenite_client(&server);
    ws.send(Message::text("hi")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hi"));
    unsafe_sigterm(server.child.id());
    match ws.read() {
        Ok(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // tungstenite answers the close; the server then finishes and exits 0.
    let _ = ws.flush();
    let _ = ws.read();
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// After the server's close (1001 on shutdown) no data frame may follow (RFC 6455 section 5.5.1):
/// a message the client sends before it has read that close gets no echo.
#[test]
fn echo_sends_nothing_after_its_close() {
    let mut server = ServerProc::start(&["--echo", "--shutdown-timeout", "5"]);
    let mut s = ws_connect(server.addr);
    s.write_all(&masked(OpCode::Text, true, b"before")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().payload, b"before");
    unsafe_sigterm(server.child.id());
    assert_eq!(expect_close(&mut s), Some(1001));
    // Still our turn to speak: data, then our close.
    s.write_all(&masked(OpCode::Text, true, b"after")).unwrap();
    s.write_all(&masked(OpCode::Binary, true, b"after")).unwrap();
    s.write_all(&masked(OpCode::Close, true, &1000u16.to_be_bytes())).unwrap();
    let mut after = Vec::new();
    while let Some(f) = read_frame(&mut s) {
        after.push(f);
    }
    assert!(after.is_empty(), "frames after the server's close: {after:?}");
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
}

fn unsafe_sigterm(pid: u32) {
    std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
}

#[test]
fn listens_on_ipv6_loopback() {
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        panic!("IPv6 loopback is unavailable on this machine; the IPv6 listener cannot be tested");
    };
    drop(probe);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"));
    command.args(["--listen", "[::1]:0", "--echo"]);
    let server = ServerProc::spawn(command);
    let addr = server.addr;
    assert!(addr.is_ipv6());
    let mut s = ws_connect(addr);
    s.write_all(&masked(OpCode::Text, true, b"over v6")).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().payload, b"over v6");
}

/// Out of file descriptors: accept fails with EMFILE. The server must neither exit nor spin,
/// and must accept again once descriptors free up.
#[test]
fn survives_running_out_of_file_descriptors() {
    let mut command = std::process::Command::new("bash");
    command.arg("-c").arg(format!(
        "ulimit -n 40 && exec {} --listen 127.0.0.1:0 --echo --max-connections 1000",
        env!("CARGO_BIN_EXE_wshub")
    ));
    let mut server = ServerProc::spawn(command);
    let addr = server.addr;
    // Far more clients than descriptors: the extra ones wait in the backlog.
    let mut held: Vec<TcpStream> = (0..60).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_ticks(server.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let cpu_used = cpu_ticks(server.child.id()) - cpu_before;
    // 2 s of wall time; a spinning accept loop would burn ~200 ticks. Allow a tenth of that.
    assert!(cpu_used < 20, "server used {cpu_used} ticks of CPU in 2 s while out of descriptors");
    assert!(server.child.try_wait().unwrap().is_none(), "server exited");
    // Free descriptors: new clients are served again.
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = connect(addr);
        if s.write_all(upgrade_request("/ws", "").as_bytes()).is_ok()
            && read_head(&mut s).starts_with("HTTP/1.1 101")
        {
            s.write_all(&masked(OpCode::Text, true, b"back")).unwrap();
            assert_eq!(read_frame(&mut s).unwrap().payload, b"back");
            break;
        }
        assert!(Instant::now() < deadline, "server never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
