//! Several wshub processes joined by a real `redis-server` (`--redis`): cross-node publish and
//! broadcast, exactly-once delivery in order, Redis subscriptions that follow local interest,
//! Redis lost and back, garbage in a channel, and `--reuse-port`.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::{free_port, RedisProc};
use common::*;
use serde_json::{json, Value};
use wshub::protocol::OpCode;

/// Generous bounds: the machine running the tests may be loaded.
const SETTLE: Duration = Duration::from_secs(10);

fn node(redis: &RedisProc) -> ServerProc {
    ServerProc::start(&["--redis", &redis.url()])
}

/// True when nothing arrives within `wait`.
fn quiet(s: &mut TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(wait)).unwrap();
    let got = read_frame(s);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    got.is_none()
}

fn message(topic: &str, data: Value) -> Value {
    json!({"type":"message","payload":{"topic":topic,"data":data}})
}

/// An HTTP request whose answer is JSON (`Null` when it is not).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, body) = common::http(addr, method, path, "", body);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    common::metric(addr, name) as u64
}

/// Waits until `/healthz` answers `status` (200 up, 503 degraded).
fn wait_health(node: &ServerProc, status: u16, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = http(node.addr, "GET", "/healthz", "");
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/healthz still {got} {body} after {within:?}, want {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_up(nodes: &[&ServerProc]) {
    for n in nodes {
        let body = wait_health(n, 200, SETTLE);
        assert_eq!((body["status"].as_str(), body["backplane"].as_str()), (Some("ok"), Some("up")));
    }
}

#[test]
fn cross_node_publish_over_websocket_and_http() {
    let redis = RedisProc::start();
    let (one, two) = (node(&redis), node(&redis));
    wait_up(&[&one, &two]);
    let mut sub = ws_connect(one.addr);
    subscribe(&mut sub, "news");
    redis.wait_numsub("wshub:topic:news", 1, SETTLE);

    // A WebSocket publish on node two: the ack counts local deliveries (none there) and says the
    // message reached the backplane.
    let mut publisher = ws_connect(two.addr);
    send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"news","data":{"n":1}},"id":1}));
    assert_eq!(
        recv_json(&mut publisher),
        json!({"type":"ack","payload":{"topic":"news","delivered":0,"backplane":true},"id":1})
    );
    assert_eq!(recv_json(&mut sub), message("news", json!({"n":1})));

    // The HTTP API on node two.
    let (status, body) = http(two.addr, "POST", "/publish", r#"{"topic":"news","data":"over http"}"#);
    assert_eq!((status, body), (200, json!({"delivered":0,"backplane":true})));
    assert_eq!(recv_json(&mut sub), message("news", json!("over http")));

    // A publish on node one reaches its own subscriber once: served locally, and its copy back
    // from Redis is skipped. The next message proves no duplicate was queued before it.
    let (status, body) = http(one.addr, "POST", "/publish", r#"{"topic":"news","data":"local"}"#);
    assert_eq!((status, body), (200, json!({"delivered":1,"backplane":true})));
    assert_eq!(recv_json(&mut sub), message("news", json!("local")));
    http(two.addr, "POST", "/publish", r#"{"topic":"news","data":"marker"}"#);
    assert_eq!(recv_json(&mut sub), message("news", json!("marker")));

    // Subscribers on both nodes, publisher on one of them.
    let mut sub2 = ws_connect(two.addr);
    subscribe(&mut sub2, "news");
    redis.wait_numsub("wshub:topic:news", 2, SETTLE);
    send_json(&mut sub2, &json!({"type":"publish","payload":{"topic":"news","data":"both"},"id":2}));
    assert_eq!(recv_json(&mut sub2), message("news", json!("both")));
    assert_eq!(
        recv_json(&mut sub2),
        json!({"type":"ack","payload":{"topic":"news","delivered":1,"backplane":true},"id":2})
    );
    assert_eq!(recv_json(&mut sub), message("news", json!("both")));
    assert!(quiet(&mut sub, Duration::from_millis(300)) && quiet(&mut sub2, Duration::from_millis(100)));

    assert!(metric(two.addr, "wshub_backplane_published_total") >= 3);
    assert!(metric(one.addr, "wshub_backplane_received_total") >= 3);
    assert_eq!(metric(one.addr, "wshub_backplane_up"), 1);
}

#[test]
fn broadcast_reaches_every_client_on_three_nodes() {
    let redis = RedisProc::start();
    let nodes = [
        ServerProc::start(&["--redis", &redis.url(), "--allow-client-broadcast"]),
        node(&redis),
        node(&redis),
    ];
    wait_up(&[&nodes[0], &nodes[1], &nodes[2]]);
    redis.wait_numsub("wshub:broadcast", 3, SETTLE);
    let mut clients: Vec<TcpStream> = nodes.iter().map(|n| ws_connect(n.addr)).collect();

    let (status, body) = http(nodes[2].addr, "POST", "/broadcast", r#"{"data":"to all"}"#);
    assert_eq!((status, body), (200, json!({"delivered":1,"backplane":true})));
    for c in &mut clients {
        assert_eq!(recv_json(c), json!({"type":"message","payload":{"data":"to all"}}));
    }

    send_json(&mut clients[0], &json!({"type":"broadcast","payload":{"data":{"from":"ws"}},"id":"b"}));
    for c in &mut clients {
        assert_eq!(recv_json(c), json!({"type":"message","payload":{"data":{"from":"ws"}}}));
    }
    assert_eq!(
        recv_json(&mut clients[0]),
        json!({"type":"ack","payload":{"delivered":1,"backplane":true},"id":"b"})
    );
    for c in &mut clients {
        assert!(quiet(c, Duration::from_millis(200)), "a broadcast arrived twice");
    }
}

#[test]
fn exactly_once_and_in_order_across_three_nodes() {
    const N: usize = 1000;
    let redis = RedisProc::start();
    let nodes = [node(&redis), node(&redis), node(&redis)];
    wait_up(&[&nodes[0], &nodes[1], &nodes[2]]);
    // Two subscribers per node, and two publishers on different nodes.
    let mut subscribers: Vec<TcpStream> = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut s = ws_connect(n.addr);
            subscribe(&mut s, "seq");
            subscribers.push(s);
        }
    }
    redis.wait_numsub("wshub:topic:seq", 3, SETTLE);
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut next = [0u64; 2];
                while next != [N as u64; 2] {
                    let m = recv_json(&mut s);
                    let data = &m["payload"]["data"];
                    let (publisher, i) = (data["p"].as_u64().unwrap() as usize, data["i"].as_u64().unwrap());
                    assert_eq!(i, next[publisher], "publisher {publisher}: out of order or duplicated");
                    next[publisher] += 1;
                }
                // Anything more would be a duplicate.
                assert!(quiet(&mut s, Duration::from_millis(300)), "more than {N} messages per publisher");
            })
        })
        .collect();
    let writers: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|p| {
            let addr = nodes[p].addr;
            std::thread::spawn(move || {
                let mut s = ws_connect(addr);
                let mut batch = Vec::new();
                for i in 0..N {
                    let m = json!({"type":"publish","payload":{"topic":"seq","data":{"p":p,"i":i}}});
                    batch.extend(masked(OpCode::Text, true, m.to_string().as_bytes()));
                    if i % 50 == 49 {
                        s.write_all(&batch).unwrap();
                        batch.clear();
                        // Paced a little: each subscriber's send queue is bounded (256).
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                s.write_all(&batch).unwrap();
                s
            })
        })
        .collect();
    let _publishers: Vec<TcpStream> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for r in readers {
        r.join().expect("a subscriber saw a gap, a duplicate or disorder");
    }
    for n in &nodes {
        assert_eq!(metric(n.addr, "wshub_backplane_publish_failed_total"), 0);
        assert_eq!(metric(n.addr, "wshub_slow_consumers_dropped_total"), 0);
    }
}

#[test]
fn redis_subscriptions_follow_local_subscribers() {
    let redis = RedisProc::start();
    let one = node(&redis);
    wait_up(&[&one]);
    assert_eq!(redis.channels(), ["wshub:broadcast"]);

    let mut a = ws_connect(one.addr);
    let mut b = ws_connect(one.addr);
    subscribe(&mut a, "t1");
    subscribe(&mut a, "t2");
    subscribe(&mut b, "t1");
    redis.wait_numsub("wshub:topic:t2", 1, SETTLE);
    assert_eq!(redis.channels(), ["wshub:broadcast", "wshub:topic:t1", "wshub:topic:t2"]);
    assert_eq!(redis.numsub("wshub:topic:t1"), 1, "one Redis subscription per node, not per client");

    // The last local subscriber leaves: promptly unsubscribed (asked for within a second;
    // allowed more here only because the test machine may be loaded).
    send_json(&mut a, &json!({"type":"unsubscribe","payload":{"topic":"t2"}}));
    let started = Instant::now();
    redis.wait_numsub("wshub:topic:t2", 0, Duration::from_secs(3));
    let took = started.elapsed();
    assert_eq!(redis.channels(), ["wshub:broadcast", "wshub:topic:t1"]);

    // t1 keeps a subscriber (b) when a disconnects; when b goes too, t1 goes.
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(redis.numsub("wshub:topic:t1"), 1);
    drop(b);
    redis.wait_numsub("wshub:topic:t1", 0, Duration::from_secs(3));
    assert_eq!(redis.channels(), ["wshub:broadcast"]);
    eprintln!("unsubscribe reached Redis in {took:?}");
}

#[test]
fn redis_killed_and_restarted_mid_stream() {
    let mut redis = RedisProc::start();
    let (one, two) = (node(&redis), node(&redis));
    wait_up(&[&one, &two]);
    let mut far = ws_connect(one.addr);
    subscribe(&mut far, "live");
    let mut near = ws_connect(two.addr);
    subscribe(&mut near, "live");
    redis.wait_numsub("wshub:topic:live", 2, SETTLE);
    let mut publisher = ws_connect(two.addr);
    let publish = |p: &mut TcpStream, i: u64| {
        send_json(p, &json!({"type":"publish","payload":{"topic":"live","data":i},"id":i}));
        recv_json(p)
    };
    for i in 0..5 {
        assert_eq!(publish(&mut publisher, i)["payload"]["backplane"], json!(true));
        assert_eq!(recv_json(&mut far), message("live", json!(i)));
        assert_eq!(recv_json(&mut near), message("live", json!(i)));
    }

    redis.kill();
    let body = wait_health(&one, 503, SETTLE);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["backplane"], "down");
    wait_health(&two, 503, SETTLE);
    // Down: local delivery goes on, the ack says the other nodes were not reached.
    let ack = publish(&mut publisher, 100);
    assert_eq!(ack["payload"], json!({"topic":"live","delivered":1,"backplane":false}));
    assert_eq!(recv_json(&mut near), message("live", json!(100)));
    assert!(metric(two.addr, "wshub_backplane_publish_failed_total") >= 1);
    // Nodes keep serving new clients meanwhile.
    let mut newcomer = ws_connect(one.addr);
    send_json(&mut newcomer, &json!({"type":"ping","id":1}));
    assert_eq!(recv_json(&mut newcomer), json!({"type":"pong","id":1}));

    redis.restart();
    // Reconnect backoff is capped at 5 s.
    wait_up(&[&one, &two]);
    redis.wait_numsub("wshub:topic:live", 2, SETTLE);
    for i in 200..205 {
        assert_eq!(publish(&mut publisher, i)["payload"]["backplane"], json!(true));
        assert_eq!(recv_json(&mut far), message("live", json!(i)), "messages flow again");
        assert_eq!(recv_json(&mut near), message("live", json!(i)));
    }
    assert!(metric(one.addr, "wshub_backplane_reconnects_total") >= 1);
    assert!(quiet(&mut far, Duration::from_millis(200)));
}

#[test]
fn redis_down_at_start_the_node_serves_and_joins_later() {
    let mut redis = RedisProc::not_started();
    let one = node(&redis);
    let body = wait_health(&one, 503, SETTLE);
    assert_eq!(body["backplane"], "down");
    let mut a = ws_connect(one.addr);
    subscribe(&mut a, "t");
    let (status, body) = http(one.addr, "POST", "/publish", r#"{"topic":"t","data":1}"#);
    assert_eq!((status, body), (200, json!({"delivered":1,"backplane":false})));
    assert_eq!(recv_json(&mut a), message("t", json!(1)));

    redis.restart();
    wait_up(&[&one]);
    redis.wait_numsub("wshub:topic:t", 1, SETTLE);
    let two = node(&redis);
    wait_up(&[&two]);
    http(two.addr, "POST", "/publish", r#"{"topic":"t","data":2}"#);
    assert_eq!(recv_json(&mut a), message("t", json!(2)));
}

#[test]
fn garbage_published_into_a_channel_is_dropped_and_counted() {
    let redis = RedisProc::start();
    let one = node(&redis);
    wait_up(&[&one]);
    let mut a = ws_connect(one.addr);
    subscribe(&mut a, "news");
    redis.wait_numsub("wshub:topic:news", 1, SETTLE);

    let deep = format!("N00000000000000aa {}{}", "[".repeat(500), "]".repeat(500));
    let garbage = [
        ("wshub:topic:news", "hello"),
        ("wshub:topic:news", "N00000000000000aa {not json"),
        ("wshub:topic:news", "N00000000000000aa 1 2"),
        ("wshub:topic:news", deep.as_str()),
        ("wshub:broadcast", "{\"data\":1}"),
        ("wshub:topic:news", ""),
    ];
    for (channel, payload) in garbage {
        redis.cli_publish(channel, payload);
    }
    redis.cli_publish("wshub:topic:news", r#"N00000000000000aa {"ok":true}"#);
    assert_eq!(recv_json(&mut a), message("news", json!({"ok":true})), "the next valid message is delivered");
    assert!(quiet(&mut a, Duration::from_millis(200)));
    assert_eq!(metric(one.addr, "wshub_backplane_garbage_total"), garbage.len() as u64);
    assert_eq!(metric(one.addr, "wshub_backplane_received_total"), 1);
    assert_eq!(metric(one.addr, "wshub_backplane_reconnects_total"), 0, "garbage cost no connection");
    wait_up(&[&one]);
}

#[test]
fn reuse_port_two_processes_share_one_port() {
    let redis = RedisProc::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wshub"));
        command.args(["--listen", &listen, "--reuse-port", "--redis", &redis.url()]);
        ServerProc::spawn(command)
    };
    let (one, two) = (start(), start());
    assert_eq!((one.addr.port(), two.addr.port()), (port, port));
    wait_up(&[&one, &two]);
    redis.wait_numsub("wshub:broadcast", 2, SETTLE);

    // Clients spread by the kernel over both processes; the backplane still reaches them all.
    let mut clients: Vec<TcpStream> = (0..24).map(|_| ws_connect(one.addr)).collect();
    for c in &mut clients {
        subscribe(c, "shared");
    }
    redis.wait_numsub("wshub:topic:shared", 2, SETTLE);
    let (status, body) = http(one.addr, "POST", "/publish", r#"{"topic":"shared","data":"hi"}"#);
    assert_eq!(status, 200);
    let local = body["delivered"].as_u64().unwrap();
    assert!(local < 24, "every client landed on one process ({local} local deliveries)");
    for c in &mut clients {
        assert_eq!(recv_json(c), message("shared", json!("hi")));
    }
}

#[test]
fn a_flood_from_redis_is_read_over_several_turns_and_delivered_whole() {
    use std::io::Read;
    let redis = RedisProc::start();
    let one = node(&redis);
    wait_up(&[&one]);
    let mut sub = ws_connect(one.addr);
    subscribe(&mut sub, "flood");
    redis.wait_numsub("wshub:topic:flood", 1, SETTLE);
    // 48 messages of 48 KiB pipelined straight into the channel: well over what one
    // readiness event may read (the rest must be read on the next turns, with no new edge).
    let filler = "x".repeat(48 * 1024);
    let mut pipeline = Vec::new();
    for i in 0..48 {
        let payload = format!("N00000000000000ff [{i},\"{filler}\"]");
        pipeline.extend_from_slice(
            format!("*3\r\n$7\r\nPUBLISH\r\n$17\r\nwshub:topic:flood\r\n${}\r\n{payload}\r\n", payload.len())
                .as_bytes(),
        );
    }
    // The node is stopped meanwhile, so the flood waits whole in its socket when it resumes.
    let pid = one.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let mut r = TcpStream::connect(redis.addr()).unwrap();
    r.write_all(&pipeline).unwrap();
    let mut replies = vec![0u8; 48 * 4];
    r.read_exact(&mut replies).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    for i in 0..48 {
        let m = recv_json(&mut sub);
        assert_eq!(m["payload"]["data"][0], i, "in order, none missing");
    }
    // The node still answers at once.
    send_json(&mut sub, &json!({"type":"ping","id":1}));
    assert_eq!(recv_json(&mut sub), json!({"type":"pong","id":1}));
}

#[test]
fn a_stalled_redis_does_not_hold_a_subscribe_for_ever() {
    let redis = RedisProc::start();
    let (one, two) = (node(&redis), node(&redis));
    wait_up(&[&one, &two]);
    let pid = redis.pid().to_string();
    // Redis keeps its connections but answers nothing (as under `DEBUG SLEEP`).
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let mut sub = ws_connect(one.addr);
    sub.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let asked = Instant::now();
    send_json(&mut sub, &json!({"type":"subscribe","payload":{"topic":"fresh"}}));
    let answer = recv_json(&mut sub);
    let waited = asked.elapsed();
    let resumed = Command::new("kill").args(["-CONT", &pid]).status().unwrap().success();
    assert!(resumed);
    assert_eq!(answer, json!({"type":"subscribed","payload":{"topic":"fresh"}}));
    // Held until the reply deadline (5 s), answered soon after it (slack for a loaded machine).
    assert!(waited >= Duration::from_secs(4), "answered after {waited:?}: not held for Redis?");
    assert!(waited < Duration::from_secs(15), "answered after {waited:?}");
    assert!(metric(one.addr, "wshub_backplane_stalled_total") >= 1);

    // Redis back: the node reconnects (backoff capped at 5 s) and resubscribes the topic.
    wait_health(&one, 200, Duration::from_secs(30));
    redis.wait_numsub("wshub:topic:fresh", 1, Duration::from_secs(30));
    let (status, body) = http(two.addr, "POST", "/publish", r#"{"topic":"fresh","data":"again"}"#);
    assert_eq!((status, body), (200, json!({"delivered":0,"backplane":true})));
    assert_eq!(recv_json(&mut sub), message("fresh", json!("again")), "messages flow again");
}
