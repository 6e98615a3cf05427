//! History and recovery over real sockets: a client drops, messages are published over HTTP
//! meanwhile, the client comes back with `since` and reads exactly what it missed; TTL expiry,
//! a restart, history off; and the routes serving the browser client and the demo.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = connect(addr);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let response = read_to_close(&mut s);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (status_of(&response), head.to_string(), body.to_string())
}

fn publish(addr: SocketAddr, topic: &str, data: Value) {
    let (status, _, body) = http(addr, "POST", "/publish", &json!({"topic":topic,"data":data}).to_string());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_client_that_drops_reads_exactly_what_it_missed_then_live() {
    let server = ServerProc::start(&["--history-size", "100"]);
    let mut a = ws_connect(server.addr);
    let first = subscribe_since(&mut a, "feed", None);
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().unwrap().to_string();
    for i in 1..=5 {
        publish(server.addr, "feed", json!(i));
        let m = recv_json(&mut a);
        assert_eq!(m, json!({"type":"message","payload":{"topic":"feed","data":i,"offset":i}}));
    }
    drop(a);
    for i in 6..=12 {
        publish(server.addr, "feed", json!(i));
    }
    let mut b = ws_connect(server.addr);
    let reply = subscribe_since(&mut b, "feed", Some(json!({"offset":5,"epoch":epoch})));
    assert_eq!(reply, json!({"topic":"feed","offset":12,"epoch":epoch,"recovered":true}));
    for i in 6..=12 {
        assert_eq!(recv_json(&mut b)["payload"], json!({"topic":"feed","data":i,"offset":i}));
    }
    publish(server.addr, "feed", json!(13));
    assert_eq!(recv_json(&mut b)["payload"]["offset"], 13, "live follows the replay with no gap");
}

#[test]
fn too_far_behind_expired_or_restarted_is_not_recovered() {
    let mut server = ServerProc::start(&["--history-size", "3", "--history-ttl", "1"]);
    let mut a = ws_connect(server.addr);
    let epoch = subscribe_since(&mut a, "t", None)["epoch"].clone();
    for i in 1..=5 {
        publish(server.addr, "t", json!(i));
        assert_eq!(recv_json(&mut a)["payload"]["offset"], i);
    }
    // Only 3, 4, 5 are kept: since 1 is a gap.
    let reply = subscribe_since(&mut a, "t", Some(json!({"offset":1,"epoch":epoch})));
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["offset"], 5);
    // After the TTL (1 s, swept within a second) nothing is kept: since 4 misses 5.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let (_, _, metrics) = http(server.addr, "GET", "/metrics", "");
        if metrics.contains("wshub_history_messages 0\n") {
            break;
        }
        assert!(Instant::now() < deadline, "history never expired:\n{metrics}");
    }
    let reply = subscribe_since(&mut a, "t", Some(json!({"offset":4,"epoch":epoch})));
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["epoch"], epoch, "the topic has a subscriber: same epoch");
    let reply = subscribe_since(&mut a, "t", Some(json!({"offset":5,"epoch":epoch})));
    assert_eq!(reply["recovered"], true, "up to date is recovered");
    drop(a);

    server.terminate();
    let server = ServerProc::start(&["--history-size", "3"]);
    publish(server.addr, "t", json!("after restart"));
    let mut b = ws_connect(server.addr);
    let reply = subscribe_since(&mut b, "t", Some(json!({"offset":5,"epoch":epoch})));
    assert_eq!(reply["recovered"], false);
    assert_ne!(reply["epoch"], epoch, "a restart starts a new epoch");
    assert_eq!(reply["offset"], 1);
}

#[test]
fn with_history_off_since_is_answered_and_messages_have_no_offset() {
    let server = ServerProc::start(&[]);
    let mut a = ws_connect(server.addr);
    let reply = subscribe_since(&mut a, "t", Some(json!({"offset":3,"epoch":"abc"})));
    assert_eq!(reply, json!({"topic":"t","recovered":false}));
    publish(server.addr, "t", json!(1));
    assert_eq!(recv_json(&mut a)["payload"], json!({"topic":"t","data":1}));
}

#[test]
fn the_client_is_served_and_the_demo_only_with_the_flag() {
    let server = ServerProc::start(&[]);
    let (status, head, body) = http(server.addr, "GET", "/wshub.js", "");
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: text/javascript\r\n"), "{head}");
    assert!(body.contains("export class WsHub"));
    assert_eq!(http(server.addr, "GET", "/", "").0, 404);
    let demo = ServerProc::start(&["--demo"]);
    let (status, _, body) = http(demo.addr, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(body.contains("<title>wshub demo</title>"));
}

#[test]
fn a_replay_longer_than_the_send_queue_reaches_a_reading_client() {
    // 600 kept messages, replayed to a client whose send queue holds 256: eager flushes write
    // them out as they are queued, so a client that reads gets every one.
    let server = ServerProc::start(&["--history-size", "1000"]);
    let mut a = ws_connect(server.addr);
    let epoch = subscribe_since(&mut a, "long", None)["epoch"].clone();
    drop(a);
    for i in 1..=600 {
        publish(server.addr, "long", json!({"i": i, "pad": "x".repeat(200)}));
    }
    let mut b = ws_connect(server.addr);
    let reply = subscribe_since(&mut b, "long", Some(json!({"offset":0,"epoch":epoch})));
    assert_eq!(reply["recovered"], true);
    for i in 1..=600 {
        assert_eq!(recv_json(&mut b)["payload"]["offset"], i);
    }
}
