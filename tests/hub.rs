//! The hub over real sockets: many clients, fan-out, slow consumers, the HTTP side, metrics.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use wshub::protocol::OpCode;

#[test]
fn ping_subscribe_publish_unsubscribe() {
    let server = ServerProc::start(&[]);
    let mut a = ws_connect(server.addr);
    let mut b = ws_connect(server.addr);
    send_json(&mut a, &json!({"type":"ping","id":1}));
    assert_eq!(recv_json(&mut a), json!({"type":"pong","id":1}));

    subscribe(&mut a, "news");
    subscribe(&mut a, "news"); // twice is harmless
    send_json(&mut b, &json!({"type":"publish","payload":{"topic":"news","data":{"x":1}},"id":7}));
    assert_eq!(recv_json(&mut a), json!({"type":"message","payload":{"topic":"news","data":{"x":1}}}));
    let ack = recv_json(&mut b);
    assert_eq!((ack["type"].as_str(), &ack["id"]), (Some("ack"), &json!(7)));

    // The publisher receives its own message when subscribed, and no ack without an id.
    subscribe(&mut b, "news");
    send_json(&mut b, &json!({"type":"publish","payload":{"topic":"news","data":"both"}}));
    for s in [&mut a, &mut b] {
        assert_eq!(recv_json(s), json!({"type":"message","payload":{"topic":"news","data":"both"}}));
    }

    send_json(&mut a, &json!({"type":"unsubscribe","payload":{"topic":"news"},"id":"u"}));
    assert_eq!(recv_json(&mut a), json!({"type":"unsubscribed","payload":{"topic":"news"},"id":"u"}));
    send_json(&mut a, &json!({"type":"unsubscribe","payload":{"topic":"never"}}));
    assert_eq!(recv_json(&mut a)["type"], "unsubscribed", "not subscribed is not an error");
    send_json(&mut b, &json!({"type":"publish","payload":{"topic":"news","data":"only b"}}));
    assert_eq!(recv_json(&mut b)["payload"]["data"], "only b");
    // a is out of the topic: the next thing it gets is the answer to its own ping.
    send_json(&mut a, &json!({"type":"ping"}));
    assert_eq!(recv_json(&mut a), json!({"type":"pong"}));
}

#[test]
fn error_replies_keep_the_connection() {
    let server = ServerProc::start(&["--max-topic-length", "8", "--max-subscriptions", "2"]);
    let mut c = ws_connect(server.addr);
    let error = |m: &str| json!({"type":"error","payload":{"message":m}});
    let cases: Vec<(String, Value)> = vec![
        ("not json".into(), error("Invalid message format")),
        ("[1,2]".into(), error("Invalid message format")),
        (json!({"payload":{}}).to_string(), error("Invalid message format")),
        (json!({"type":"subscribe","payload":{"topic":5}}).to_string(), error("Invalid message format")),
        (json!({"type":"launch"}).to_string(), error("Unknown message type")),
        (json!({"type":"subscribe","payload":{"topic":""}}).to_string(), error("Topic must not be empty")),
        (
            json!({"type":"broadcast","payload":{"data":1}}).to_string(),
            error("Broadcast from clients is disabled"),
        ),
    ];
    for (text, expected) in cases {
        c.write_all(&masked(OpCode::Text, true, text.as_bytes())).unwrap();
        assert_eq!(recv_json(&mut c), expected, "{text}");
    }
    send_json(&mut c, &json!({"type":"subscribe","payload":{"topic":"much-too-long"},"id":3}));
    let reply = recv_json(&mut c);
    assert_eq!((reply["type"].as_str(), &reply["id"]), (Some("error"), &json!(3)));
    assert!(reply["payload"]["message"].as_str().unwrap().starts_with("Topic too long"));
    subscribe(&mut c, "t1");
    subscribe(&mut c, "t2");
    send_json(&mut c, &json!({"type":"subscribe","payload":{"topic":"t3"}}));
    assert!(recv_json(&mut c)["payload"]["message"].as_str().unwrap().starts_with("Too many subscriptions"));
    c.write_all(&masked(OpCode::Binary, true, b"\x00\x01")).unwrap();
    assert_eq!(recv_json(&mut c), error("Binary messages are not supported"));
    send_json(&mut c, &json!({"type":"ping","id":"still"}));
    assert_eq!(recv_json(&mut c), json!({"type":"pong","id":"still"}));
}

#[test]
fn fan_out_to_1000_subscribers_exactly_once_in_order() {
    let server = ServerProc::start(&[]);
    let mut subscribers: Vec<TcpStream> = (0..1000).map(|_| ws_connect(server.addr)).collect();
    for s in subscribers.iter_mut() {
        send_json(s, &json!({"type":"subscribe","payload":{"topic":"fan"}}));
    }
    for s in subscribers.iter_mut() {
        assert_eq!(recv_json(s)["type"], "subscribed");
    }
    let mut publisher = ws_connect(server.addr);
    const MESSAGES: u64 = 50;
    for seq in 0..MESSAGES {
        send_json(
            &mut publisher,
            &json!({"type":"publish","payload":{"topic":"fan","data":{"seq":seq}},"id":seq}),
        );
    }
    for seq in 0..MESSAGES {
        let ack = recv_json(&mut publisher);
        assert_eq!(ack["id"], json!(seq));
        assert_eq!(ack["payload"]["delivered"], json!(1000));
    }
    for (i, s) in subscribers.iter_mut().enumerate() {
        for seq in 0..MESSAGES {
            let m = recv_json(s);
            assert_eq!(m["payload"]["data"]["seq"], json!(seq), "subscriber {i}");
        }
    }
    // Exactly once: nothing more is waiting for anyone.
    for s in subscribers.iter_mut().take(20) {
        send_json(s, &json!({"type":"ping"}));
        assert_eq!(recv_json(s), json!({"type":"pong"}));
    }
    assert_eq!(metric(server.addr, "wshub_deliveries_total"), (MESSAGES * 1000) as f64);
}

#[test]
fn slow_subscriber_is_cut_off_while_others_get_everything() {
    let server = ServerProc::start(&["--send-queue", "64", "--max-queued-bytes", "1000000"]);
    let mut slow = ws_connect(server.addr);
    subscribe(&mut slow, "firehose");
    let mut fast = ws_connect(server.addr);
    subscribe(&mut fast, "firehose");
    const MESSAGES: usize = 3000;
    // The reading subscriber must keep up with the publisher to be "fast": fan-out no longer
    // slows a publisher down, and a debug-built reader parsing 20 KB of JSON per message on a
    // loaded machine can fall behind a publisher that never waits. So the publisher stays at
    // most 32 messages ahead of it; the slow one still reads nothing and must be cut off.
    let read_so_far = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = std::sync::Arc::clone(&read_so_far);
    let reader = std::thread::spawn(move || {
        for seq in 0..MESSAGES {
            let m = recv_json(&mut fast);
            assert_eq!(m["payload"]["data"]["seq"], json!(seq));
            progress.store(seq + 1, std::sync::atomic::Ordering::Release);
        }
    });
    let mut publisher = ws_connect(server.addr);
    let blob = "x".repeat(20_000);
    let paced_until = std::time::Instant::now() + Duration::from_secs(120);
    for seq in 0..MESSAGES {
        while seq >= read_so_far.load(std::sync::atomic::Ordering::Acquire) + 32
            && !reader.is_finished()
            && std::time::Instant::now() < paced_until
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        send_json(
            &mut publisher,
            &json!({"type":"publish","payload":{"topic":"firehose","data":{"seq":seq,"blob":blob}}}),
        );
    }
    reader.join().expect("the fast subscriber got every message in order");
    // The slow one was dropped: reading now ends before all messages (close 1008 or EOF).
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = 0;
    let mut close = None;
    while let Some(f) = read_frame(&mut slow) {
        if f.opcode == 0x8 {
            close = f.close_code();
            break;
        }
        got += 1;
    }
    assert!(got < MESSAGES, "slow subscriber received everything ({got}) and was never cut off");
    assert!(close.is_none() || close == Some(1008), "close code {close:?}");
    assert!(metric(server.addr, "wshub_slow_consumers_dropped_total") >= 1.0);
}

#[test]
fn http_publish_reaches_websocket_subscribers() {
    let server = ServerProc::start(&[]);
    let mut sub = ws_connect(server.addr);
    subscribe(&mut sub, "alerts");
    let (status, body) =
        http(server.addr, "POST", "/publish", "", r#"{"topic":"alerts","data":{"level":"high"}}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["delivered"], json!(1));
    assert_eq!(
        recv_json(&mut sub),
        json!({"type":"message","payload":{"topic":"alerts","data":{"level":"high"}}})
    );
    let (status, _) = http(server.addr, "POST", "/broadcast", "", r#"{"data":"to all"}"#);
    assert_eq!(status, 200);
    assert_eq!(recv_json(&mut sub), json!({"type":"message","payload":{"data":"to all"}}));
    assert_eq!(http(server.addr, "POST", "/publish", "", "{not json").0, 400);
    assert_eq!(http(server.addr, "GET", "/nothing-here", "", "").0, 404);
    let big = format!(r#"{{"topic":"alerts","data":"{}"}}"#, "x".repeat(100_000));
    assert_eq!(http(server.addr, "POST", "/publish", "", &big).0, 413);
    let (status, body) = http(server.addr, "GET", "/healthz", "", "");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert!(health["connections"].as_u64().unwrap() >= 1, "{body}");
}

#[test]
fn http_api_key_is_required_when_set() {
    let server = ServerProc::start(&["--api-key", "s3cret"]);
    let body = r#"{"topic":"t","data":1}"#;
    assert_eq!(http(server.addr, "POST", "/publish", "", body).0, 401);
    assert_eq!(http(server.addr, "POST", "/publish", "Authorization: Bearer wrong\r\n", body).0, 401);
    assert_eq!(http(server.addr, "POST", "/publish", "Authorization: Bearer s3cret\r\n", body).0, 200);
}

#[test]
fn client_broadcast_when_enabled() {
    let server = ServerProc::start(&["--allow-client-broadcast"]);
    let mut a = ws_connect(server.addr);
    let mut b = ws_connect(server.addr);
    send_json(&mut a, &json!({"type":"broadcast","payload":{"data":"hi all"}}));
    for s in [&mut a, &mut b] {
        assert_eq!(recv_json(s), json!({"type":"message","payload":{"data":"hi all"}}));
    }
}

#[test]
fn metrics_counters_move() {
    let server = ServerProc::start(&[]);
    let accepted_before = metric(server.addr, "wshub_connections_accepted_total");
    let mut a = ws_connect(server.addr);
    subscribe(&mut a, "m");
    send_json(&mut a, &json!({"type":"publish","payload":{"topic":"m","data":1}}));
    recv_json(&mut a);
    let mut bad = connect(server.addr);
    bad.write_all(upgrade_request("/ws", "").replace("Version: 13", "Version: 7").as_bytes()).unwrap();
    assert_eq!(status_of(&read_to_close(&mut bad)), 426);
    // Each /metrics request is itself a connection: the count moves by at least ours.
    assert!(metric(server.addr, "wshub_connections_accepted_total") >= accepted_before + 2.0);
    assert_eq!(metric(server.addr, "wshub_publishes_total"), 1.0);
    assert_eq!(metric(server.addr, "wshub_messages_received_total"), 2.0);
    assert!(metric(server.addr, "wshub_received_bytes_total") > 0.0);
    assert!(metric(server.addr, "wshub_sent_bytes_total") > 0.0);
    assert_eq!(metric(server.addr, "wshub_handshakes_rejected_total{status=\"426\"}"), 1.0);
    assert_eq!(metric(server.addr, "wshub_topics"), 1.0);
    assert!(metric(server.addr, "wshub_connections") >= 1.0);
}

/// Subscribers that reset while fan-out is being written to them end as resets, never as slow
/// consumers (1,000 benchmark clients closing at once used to show hundreds of "slow consumer"
/// cut-offs, none of them slow).
#[test]
fn subscribers_that_reset_during_fan_out_count_as_resets_not_slow_consumers() {
    // A send queue of 2: every delivery is written at once (eager flush), so publishes keep
    // writing to sockets whose reset the server has not read yet.
    let server = ServerProc::start(&["--send-queue", "2"]);
    let addr = server.addr;
    const SUBSCRIBERS: usize = 40;
    const PUBLISHES: usize = 400;
    let subs: Vec<TcpStream> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut s = ws_connect(addr);
            subscribe(&mut s, "t");
            s
        })
        .collect();
    let mut publisher = ws_connect(addr);
    let publishing = std::thread::spawn(move || {
        // No id: no ack to read. ~60-byte frames: 400 of them fit every subscriber's socket
        // buffer, so nobody here is slow.
        for i in 0..PUBLISHES {
            send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"t","data":i}}));
            if i % 8 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        publisher
    });
    for s in subs {
        reset(s);
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut publisher = publishing.join().unwrap();
    // The publisher is still served: its ping gets its pong after all the publishes.
    send_json(&mut publisher, &json!({"type":"ping","id":1}));
    assert_eq!(recv_json(&mut publisher), json!({"type":"pong","id":1}));
    // Every reset is seen (on read or on a fan-out write) within a generous bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut resets = 0.0;
    while std::time::Instant::now() < deadline {
        resets = metric(addr, "wshub_connection_resets_total");
        if resets >= SUBSCRIBERS as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(resets, SUBSCRIBERS as f64, "every subscriber that reset counts as one reset");
    assert_eq!(metric(addr, "wshub_slow_consumers_dropped_total"), 0.0);
    assert_eq!(metric(addr, "wshub_close_frames_sent_total{code=\"1008\"}"), 0.0);
}

/// A fan-out bigger than one turn's write budget (1 MiB: 40 subscribers x 3 messages of 60 KB
/// is 7.2 MB) is spread over turns through the backlog, and still reaches every subscriber
/// whole and in order; so does a small publish queued behind it.
#[test]
fn a_fan_out_over_the_turn_budget_reaches_everyone_in_order() {
    let server = ServerProc::start(&[]);
    let mut subscribers: Vec<TcpStream> = (0..40).map(|_| ws_connect(server.addr)).collect();
    for s in &mut subscribers {
        subscribe(s, "big");
    }
    let mut publisher = ws_connect(server.addr);
    let big = |i: usize| format!("{i}{}", "x".repeat(60_000));
    for i in 0..3 {
        send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"big","data":big(i)}}));
    }
    send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"big","data":"small"}}));
    for (n, s) in subscribers.iter_mut().enumerate() {
        for i in 0..3 {
            let m = recv_json(s);
            assert_eq!(m["payload"]["data"].as_str(), Some(big(i).as_str()), "subscriber {n}, message {i}");
        }
        assert_eq!(recv_json(s)["payload"]["data"], "small", "subscriber {n}");
    }
}
