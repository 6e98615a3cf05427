//! The attacks of issue #18, each against the real binary over loopback, each with the bound
//! the server must respect: topics, hub memory after a churn, cross-site and rebinding requests
//! to the HTTP API, lone surrogates.
//!
//! Numbers printed here (`eprintln!`) are the measurements the README quotes; run with
//! `cargo test --release --test hardening -- --nocapture` to see them.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use wshub::protocol::OpCode;

// ----- helpers -----

/// The server to test: the cargo-built binary, or `WSHUB_TEST_BIN` (to measure an older build
/// with the same test).
fn start(args: &[&str]) -> ServerProc {
    match std::env::var_os("WSHUB_TEST_BIN") {
        Some(bin) => {
            let mut command = std::process::Command::new(bin);
            command.args(["--listen", "127.0.0.1:0"]).args(args);
            ServerProc::spawn(command)
        }
        None => ServerProc::start(args),
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Sends a raw request and returns (status, whole response).
fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request.as_bytes());
    let response = read_to_close(&mut s);
    (status_of(&response), response)
}

/// A sample from /metrics (`name` includes any labels).
fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, text) = raw_http(addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// Polls a metric until it reads `want`.
fn wait_metric(addr: SocketAddr, name: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = -1.0;
    while Instant::now() < deadline {
        last = metric(addr, name);
        if last == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} stayed at {last}, expected {want}");
}

fn send_json(s: &mut TcpStream, v: &Value) {
    s.write_all(&masked(OpCode::Text, true, v.to_string().as_bytes())).unwrap();
}

fn send_text(s: &mut TcpStream, text: &str) {
    s.write_all(&masked(OpCode::Text, true, text.as_bytes())).unwrap();
}

/// The next JSON message from the server (heartbeat pings skipped).
fn next_json(s: &mut TcpStream) -> Value {
    loop {
        let f = read_frame(s).expect("a frame");
        if f.opcode == 0x1 {
            return serde_json::from_slice(&f.payload).expect("JSON");
        }
        assert_eq!(f.opcode, 0x9, "unexpected frame {f:?}");
    }
}

/// A 256-byte topic name unique to (client, n).
fn long_topic(client: usize, n: usize) -> String {
    let head = format!("c{client}-t{n}-");
    format!("{head}{}", "x".repeat(256 - head.len()))
}

/// `clients` connections each subscribing to `per_client` distinct 256-byte topics, `threads`
/// at a time; every subscription's reply is read. Returns the connections, still open.
fn subscribe_many(addr: SocketAddr, clients: usize, per_client: usize) -> Vec<TcpStream> {
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for c in (t..clients).step_by(threads) {
                    let mut s = ws_connect(addr);
                    let mut batch = Vec::new();
                    for n in 0..per_client {
                        let msg = json!({"type":"subscribe","payload":{"topic":long_topic(c, n)}});
                        batch.extend_from_slice(&masked(OpCode::Text, true, msg.to_string().as_bytes()));
                    }
                    s.write_all(&batch).unwrap();
                    for _ in 0..per_client {
                        let reply = next_json(&mut s);
                        assert_eq!(reply["type"], "subscribed", "{reply}");
                    }
                    mine.push(s);
                }
                mine
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("subscriber thread")).collect()
}

// ----- topics and hub memory -----

#[test]
fn topic_cap_refuses_new_topics_and_keeps_the_connection() {
    let server = start(&["--max-topics", "100"]);
    let mut conns = subscribe_many(server.addr, 4, 25);
    assert_eq!(metric(server.addr, "wshub_topics"), 100.0);
    let s = &mut conns[0];
    send_json(s, &json!({"type":"subscribe","payload":{"topic":"one-too-many"},"id":7}));
    assert_eq!(
        next_json(s),
        json!({"type":"error","payload":{"message":"Too many topics on this server (max 100)"},"id":7})
    );
    // Existing topics are still open to everyone, and the connection is fine.
    send_json(s, &json!({"type":"subscribe","payload":{"topic":long_topic(1, 0)},"id":8}));
    assert_eq!(next_json(s)["type"], "subscribed");
    send_json(s, &json!({"type":"ping","id":9}));
    assert_eq!(next_json(s), json!({"type":"pong","id":9}));
    assert_eq!(metric(server.addr, "wshub_topics"), 100.0);
    assert_eq!(metric(server.addr, "wshub_topic_limit_refusals_total"), 1.0);
}

/// The churn of the issue, scaled down: 100 clients x 1,024 distinct 256-byte topics (set
/// `WSHUB_CHURN_CLIENTS` for more), then they all leave. The server's resident memory afterwards must be back near where it was
/// before, not at the peak (it stayed at the peak before the hub gave memory back).
#[test]
fn topic_churn_does_not_ratchet_memory() {
    let clients = std::env::var("WSHUB_CHURN_CLIENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let per_client = 1024;
    // No heartbeat deadlines: on a loaded machine the first subscribers may sit idle for a
    // while before the last ones are done.
    let server = start(&[
        "--max-topics",
        "1000000",
        "--max-subscriptions",
        "1024",
        "--ping-interval",
        "0",
        "--pong-wait",
        "0",
    ]);
    let pid = server.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let conns = subscribe_many(server.addr, clients, per_client);
    assert_eq!(metric(server.addr, "wshub_topics"), (clients * per_client) as f64);
    let peak = rss_kib(pid);
    drop(conns);
    wait_metric(server.addr, "wshub_topics", 0.0, Duration::from_secs(30));
    wait_metric(server.addr, "wshub_connections", 1.0, Duration::from_secs(30));
    let after = rss_kib(pid);
    eprintln!(
        "topic churn ({clients} x {per_client} topics, {:?}): RSS before {before} KiB, peak {peak} KiB, \
         after {after} KiB",
        started.elapsed()
    );
    let grown = peak - before;
    assert!(grown > 30_000, "the churn should have cost memory ({grown} KiB); is it measuring anything?");
    assert!(
        after < before + grown / 5,
        "RSS after the churn is {after} KiB: more than a fifth of the peak's growth ({before} -> {peak}) kept"
    );
}

// ----- lone surrogates -----

#[test]
fn lone_surrogates_are_refused_over_the_wire() {
    let server = start(&[]);
    let mut sub = ws_connect(server.addr);
    send_json(&mut sub, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    assert_eq!(next_json(&mut sub)["type"], "subscribed");
    let mut publisher = ws_connect(server.addr);
    for text in [
        r#"{"type":"publish","payload":{"topic":"t","data":"\ud800"},"id":1}"#,
        r#"{"type":"publish","payload":{"topic":"t","data":"ok"},"id":"\udc00"}"#,
        r#"{"type":"subscribe","payload":{"topic":"a\ud800"},"id":1}"#,
        r#"{"type":"subscribe","payload":{"topic":"a\u0001"},"id":1}"#,
    ] {
        send_text(&mut publisher, text);
        let reply = next_json(&mut publisher);
        assert_eq!(reply["type"], "error", "{text}: {reply}");
        assert_eq!(reply["payload"]["message"], "Invalid message format", "{text}");
    }
    let (status, response) = raw_http(
        server.addr,
        &http_post(
            "/publish",
            r#"{"topic":"t","data":"\ud800"}"#,
            "Host: localhost\r\nContent-Type: application/json\r\n",
        ),
    );
    assert_eq!(status, 400, "{response}");
    // The subscriber got nothing but what follows.
    send_text(&mut publisher, r#"{"type":"publish","payload":{"topic":"t","data":"\ud83d\ude00"}}"#);
    assert_eq!(next_json(&mut sub), json!({"type":"message","payload":{"topic":"t","data":"😀"}}));
}

// ----- HTTP API: cross-site and rebinding -----

fn http_post(path: &str, body: &str, headers: &str) -> String {
    format!("POST {path} HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn http_api_refuses_cross_site_and_rebinding_requests() {
    let server = start(&[]);
    let addr = server.addr;
    let body = r#"{"topic":"t","data":1}"#;
    let json_type = "Content-Type: application/json\r\n";
    let cases: &[(&str, u16, &str)] = &[
        ("Host: localhost\r\nContent-Type: application/json\r\n", 200, "plain local publish"),
        ("Host: 127.0.0.1\r\nContent-Type: application/json; charset=utf-8\r\n", 200, "parameters allowed"),
        ("Host: [::1]:8080\r\nContent-Type: Application/JSON\r\n", 200, "case-insensitive type"),
        ("Host: localhost\r\nContent-Type: text/plain\r\n", 415, "a simple cross-site form type"),
        ("Host: localhost\r\n", 415, "no Content-Type"),
        ("Host: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n", 415, "form"),
        ("Host: localhost\r\nContent-Type: application/jsonx\r\n", 415, "prefix is not the type"),
        (
            "Host: localhost\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\n",
            403,
            "foreign Origin",
        ),
        (
            "Host: localhost\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\n",
            403,
            "the issue's request",
        ),
        ("Host: evil.example\r\nContent-Type: application/json\r\n", 403, "DNS rebinding: foreign Host"),
        ("Host: evil.example:8080\r\nContent-Type: application/json\r\n", 403, "foreign Host with port"),
        ("Host: localhost.evil.example\r\nContent-Type: application/json\r\n", 403, "lookalike Host"),
        ("Content-Type: application/json\r\n", 403, "no Host"),
    ];
    for (headers, want, why) in cases {
        let (status, response) = raw_http(addr, &http_post("/publish", body, headers));
        assert_eq!(status, *want, "{why}: {response}");
    }
    // The same Origin as Host is a page we served: allowed.
    let same = format!("Host: {addr}\r\nOrigin: http://{addr}\r\n{json_type}");
    assert_eq!(raw_http(addr, &http_post("/broadcast", r#"{"data":1}"#, &same)).0, 200);
    assert_eq!(metric(addr, "wshub_http_responses_total{status=\"415\"}"), 4.0);
}

#[test]
fn http_api_with_a_key_checks_origin_and_type_but_not_host() {
    let server = start(&["--api-key", "sekret", "--allowed-origin", "https://app.example"]);
    let addr = server.addr;
    let body = r#"{"data":1}"#;
    let auth = "Authorization: Bearer sekret\r\n";
    let ok = format!("Host: api.example\r\n{auth}Content-Type: application/json\r\n");
    assert_eq!(raw_http(addr, &http_post("/broadcast", body, &ok)).0, 200, "any Host with a key");
    let allowed = format!(
        "Host: api.example\r\nOrigin: https://app.example\r\n{auth}Content-Type: application/json\r\n"
    );
    assert_eq!(raw_http(addr, &http_post("/broadcast", body, &allowed)).0, 200, "allowed Origin");
    let foreign = format!(
        "Host: api.example\r\nOrigin: https://evil.example\r\n{auth}Content-Type: application/json\r\n"
    );
    assert_eq!(raw_http(addr, &http_post("/broadcast", body, &foreign)).0, 403, "other Origin");
    let text = format!("Host: api.example\r\n{auth}Content-Type: text/plain\r\n");
    assert_eq!(raw_http(addr, &http_post("/broadcast", body, &text)).0, 415);
    // GET routes carry no side effect: Origin and Host do not matter there.
    let (status, _) =
        raw_http(addr, "GET /healthz HTTP/1.1\r\nHost: x.example\r\nOrigin: http://evil.example\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn http_errors_are_counted_as_http_not_as_handshakes() {
    let server = start(&[]);
    let addr = server.addr;
    let chunked = "POST /publish HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(raw_http(addr, chunked).0, 411);
    let both = "POST /publish HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(raw_http(addr, both).0, 400);
    assert_eq!(metric(addr, "wshub_http_responses_total{status=\"411\"}"), 1.0);
    assert_eq!(metric(addr, "wshub_http_responses_total{status=\"400\"}"), 1.0);
    assert_eq!(metric(addr, "wshub_handshakes_rejected_total{status=\"400\"}"), 0.0);
    // A refused upgrade is still a rejected handshake.
    let bad_upgrade = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(raw_http(addr, bad_upgrade).0, 400);
    assert_eq!(metric(addr, "wshub_handshakes_rejected_total{status=\"400\"}"), 1.0);
    assert_eq!(metric(addr, "wshub_http_responses_total{status=\"400\"}"), 1.0);
}
