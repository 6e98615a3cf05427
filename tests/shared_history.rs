//! Topic history kept in Redis and shared by every node (`--redis` with `--history-size`), and
//! subscribes that complete only once Redis confirms them, against a real `redis-server`:
//! recovery on another node and across a restart, offsets exactly once and in order with two
//! publishing nodes, the subscribe race of issue 13, Redis down, and a trimmed history.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::redis::RedisProc;
use common::*;
use serde_json::{json, Value};

/// Generous bounds: the machine running the tests may be loaded.
const SETTLE: Duration = Duration::from_secs(10);

fn node(redis: &RedisProc, history: usize) -> ServerProc {
    let size = history.to_string();
    let node = ServerProc::start(&["--redis", &redis.url(), "--history-size", &size]);
    wait_health(&node, 200);
    node
}

fn wait_health(node: &ServerProc, status: u16) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (got, _) = http(node.addr, "GET", "/healthz", "", "");
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "/healthz still {got}, want {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes over WebSocket and waits for the ack: the message is then numbered and kept in
/// Redis, so a subscribe that follows sees it (as after an HTTP publish's 200).
fn publish_acked(addr: SocketAddr, topic: &str, data: Value) -> u64 {
    let mut p = ws_connect(addr);
    send_json(&mut p, &json!({"type":"publish","payload":{"topic":topic,"data":data},"id":"p"}));
    let ack = recv_json(&mut p);
    assert_eq!(ack["type"], "ack", "{ack}");
    ack["payload"]["offset"].as_u64().expect("an offset")
}

fn publish(addr: SocketAddr, topic: &str, data: Value) -> (u16, Value) {
    let (status, body) = http(addr, "POST", "/publish", "", &json!({"topic":topic,"data":data}).to_string());
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Sends `POST /publish` on a connection of its own and leaves it open (the answer unread).
fn raw_request(addr: SocketAddr, topic: &str, data: Value) -> TcpStream {
    let body = json!({"topic":topic,"data":data}).to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
    s
}

/// `POST /publish`, waiting up to `within` for the whole response.
fn raw_publish(addr: SocketAddr, topic: &str, data: Value, within: Duration) -> String {
    let mut s = raw_request(addr, topic, data);
    s.set_read_timeout(Some(within)).unwrap();
    read_to_close(&mut s)
}

fn message(topic: &str, data: Value, offset: u64) -> Value {
    json!({"type":"message","payload":{"topic":topic,"data":data,"offset":offset}})
}

#[test]
fn a_client_recovers_on_another_node() {
    let redis = RedisProc::start();
    let (a, b) = (node(&redis, 100), node(&redis, 100));
    let mut client = ws_connect(a.addr);
    let first = subscribe_since(&mut client, "feed", None);
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().expect("an epoch from Redis").to_string();
    for i in 1..=5u64 {
        // Answered once Redis has numbered it, with the fields of the WebSocket ack.
        assert_eq!(
            publish(b.addr, "feed", json!(i)),
            (200, json!({"offset":i,"epoch":epoch,"backplane":true}))
        );
        assert_eq!(recv_json(&mut client), message("feed", json!(i), i));
    }
    drop(client);
    for i in 6..=12u64 {
        assert_eq!(publish_acked(a.addr, "feed", json!(i)), i);
    }
    // Back on the other node, from offset 5: exactly 6..=12, then live ones.
    let mut client = ws_connect(b.addr);
    let reply = subscribe_since(&mut client, "feed", Some(json!({"offset":5,"epoch":epoch})));
    assert_eq!(reply, json!({"topic":"feed","offset":12,"epoch":epoch,"recovered":true}));
    for i in 6..=12u64 {
        assert_eq!(recv_json(&mut client), message("feed", json!(i), i));
    }
    publish(a.addr, "feed", json!(13));
    assert_eq!(recv_json(&mut client), message("feed", json!(13), 13));
    // A plain subscribe on either node reports the same position.
    let mut other = ws_connect(a.addr);
    let reply = subscribe_since(&mut other, "feed", None);
    assert_eq!((reply["offset"].as_u64(), reply["epoch"].as_str()), (Some(13), Some(epoch.as_str())));
    // A subscriber publishing to its own topic reads its message, then the ack with the offset.
    for round in 0..20u64 {
        send_json(&mut other, &json!({"type":"publish","payload":{"topic":"feed","data":"mine"},"id":round}));
        assert_eq!(recv_json(&mut other), message("feed", json!("mine"), 14 + round));
        assert_eq!(
            recv_json(&mut other),
            json!({"type":"ack","payload":{"topic":"feed","offset":14 + round,"epoch":epoch,"backplane":true},"id":round})
        );
    }
}

#[test]
fn a_node_restart_loses_nothing() {
    let redis = RedisProc::start();
    let a = node(&redis, 100);
    let mut client = ws_connect(a.addr);
    let epoch = subscribe_since(&mut client, "t", None)["epoch"].as_str().unwrap().to_string();
    for i in 1..=3u64 {
        publish(a.addr, "t", json!(i));
        assert_eq!(recv_json(&mut client)["payload"]["offset"], i);
    }
    drop(client);
    drop(a);
    // A new process (a deploy): the history is in Redis, not in the process.
    let a = node(&redis, 100);
    for i in 4..=6u64 {
        assert_eq!(publish_acked(a.addr, "t", json!(i)), i);
    }
    let mut client = ws_connect(a.addr);
    let reply = subscribe_since(&mut client, "t", Some(json!({"offset":3,"epoch":epoch})));
    assert_eq!(reply, json!({"topic":"t","offset":6,"epoch":epoch,"recovered":true}));
    for i in 4..=6u64 {
        assert_eq!(recv_json(&mut client), message("t", json!(i), i));
    }
}

#[test]
fn two_publishing_nodes_number_every_message_once_and_in_order() {
    const PER_PUBLISHER: u64 = 250;
    let redis = RedisProc::start();
    let (a, b) = (node(&redis, 1000), node(&redis, 1000));
    let mut subscribers: Vec<TcpStream> =
        [a.addr, a.addr, b.addr, b.addr].iter().map(|&n| ws_connect(n)).collect();
    for s in &mut subscribers {
        assert_eq!(subscribe_since(s, "seq", None)["offset"], 0);
    }
    // Two publishers, one per node, interleaving freely; each waits for nothing but its acks.
    let publishers: Vec<_> = [("a", a.addr), ("b", b.addr)]
        .into_iter()
        .map(|(name, addr)| {
            std::thread::spawn(move || {
                let mut p = ws_connect(addr);
                for i in 0..PER_PUBLISHER {
                    send_json(&mut p, &json!({"type":"publish","payload":{"topic":"seq","data":format!("{name}{i}")},"id":i}));
                }
                let mut offsets = Vec::new();
                for i in 0..PER_PUBLISHER {
                    let ack = recv_json(&mut p);
                    assert_eq!(ack["type"], "ack", "{ack}");
                    assert_eq!(ack["id"], i, "acks in publish order");
                    assert_eq!(ack["payload"]["backplane"], true);
                    offsets.push(ack["payload"]["offset"].as_u64().expect("an offset"));
                }
                assert!(offsets.windows(2).all(|w| w[0] < w[1]), "one publisher's offsets increase");
                offsets
            })
        })
        .collect();
    let mut acked: Vec<u64> = publishers.into_iter().flat_map(|p| p.join().unwrap()).collect();
    acked.sort();
    assert_eq!(acked, (1..=2 * PER_PUBLISHER).collect::<Vec<_>>(), "every offset given once");
    let mut first: Option<Vec<String>> = None;
    for s in &mut subscribers {
        let mut seen = Vec::new();
        for expected in 1..=2 * PER_PUBLISHER {
            let m = recv_json(s);
            assert_eq!(m["payload"]["offset"], expected, "offsets strictly increasing: {m}");
            seen.push(m["payload"]["data"].as_str().unwrap().to_string());
        }
        // Each publisher's messages in its order, and the same sequence on every node.
        for name in ["a", "b"] {
            let mine: Vec<&String> = seen.iter().filter(|d| d.starts_with(name)).collect();
            let want: Vec<String> = (0..PER_PUBLISHER).map(|i| format!("{name}{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
        match &first {
            Some(first) => assert_eq!(&seen, first, "every subscriber sees the one order"),
            None => first = Some(seen),
        }
    }
}

#[test]
fn a_message_published_elsewhere_right_after_subscribed_is_not_missed() {
    let redis = RedisProc::start();
    for history in [0, 10] {
        let (a, b) = (node(&redis, history), node(&redis, history));
        let mut sub = ws_connect(a.addr);
        for round in 0..30 {
            // A fresh topic each round: this subscribe is what makes node a want its channel.
            let topic = format!("race-{history}-{round}");
            send_json(&mut sub, &json!({"type":"subscribe","payload":{"topic":topic}}));
            assert_eq!(recv_json(&mut sub)["type"], "subscribed");
            let (status, _) = publish(b.addr, &topic, json!(round));
            assert_eq!(status, 200);
            let m = recv_json(&mut sub);
            assert_eq!(
                (m["payload"]["topic"].as_str(), &m["payload"]["data"]),
                (Some(topic.as_str()), &json!(round))
            );
        }
    }
}

#[test]
fn with_redis_down_history_publishes_are_refused_and_subscribes_do_not_recover() {
    let mut redis = RedisProc::start();
    let a = node(&redis, 10);
    let mut client = ws_connect(a.addr);
    let epoch = subscribe_since(&mut client, "t", None)["epoch"].as_str().unwrap().to_string();
    publish(a.addr, "t", json!(1));
    assert_eq!(recv_json(&mut client)["payload"]["offset"], 1);
    redis.kill();
    wait_health(&a, 503);
    send_json(&mut client, &json!({"type":"publish","payload":{"topic":"t","data":2},"id":9}));
    assert_eq!(
        recv_json(&mut client),
        json!({"type":"error","payload":{"message":"History unavailable: Redis is down"},"id":9})
    );
    let (status, body) = publish(a.addr, "t", json!(3));
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    let mut late = ws_connect(a.addr);
    let reply = subscribe_since(&mut late, "t", Some(json!({"offset":1,"epoch":epoch})));
    assert_eq!(reply, json!({"topic":"t","recovered":false}), "no position without Redis");
    assert!(metric(a.addr, "wshub_history_unavailable_total") >= 2.0);
    // Redis back (empty: it kept nothing on disk): publishing works again, in a new epoch.
    redis.restart();
    wait_health(&a, 200);
    let mut fresh = ws_connect(a.addr);
    let reply = subscribe_since(&mut fresh, "t", Some(json!({"offset":1,"epoch":epoch})));
    assert_eq!(reply["recovered"], false);
    assert_ne!(reply["epoch"].as_str(), Some(epoch.as_str()), "a history that started afresh");
    let (status, _) = publish(a.addr, "t", json!(4));
    assert_eq!(status, 200);
    assert_eq!(recv_json(&mut fresh), message("t", json!(4), 1));
    // The subscriber that stayed through it is told its history could not continue, then
    // gets the new epoch's messages (a client would otherwise take offset 1 for an old one).
    let new_epoch = reply["epoch"].clone();
    assert_eq!(
        recv_json(&mut client),
        json!({"type":"subscribed","payload":{"topic":"t","offset":0,"epoch":new_epoch,"recovered":false}})
    );
    assert_eq!(recv_json(&mut client), message("t", json!(4), 1));
}

#[test]
fn a_trimmed_history_is_not_recovered() {
    let redis = RedisProc::start();
    let a = node(&redis, 3);
    let mut client = ws_connect(a.addr);
    let epoch = subscribe_since(&mut client, "t", None)["epoch"].as_str().unwrap().to_string();
    drop(client);
    for i in 1..=10u64 {
        assert_eq!(publish_acked(a.addr, "t", json!(i)), i);
    }
    let mut client = ws_connect(a.addr);
    // Only 8, 9 and 10 are kept: from 7 is whole, from 6 is not.
    let reply = subscribe_since(&mut client, "t", Some(json!({"offset":7,"epoch":epoch})));
    assert_eq!(reply["recovered"], true);
    for i in 8..=10u64 {
        assert_eq!(recv_json(&mut client), message("t", json!(i), i));
    }
    let mut client = ws_connect(a.addr);
    let reply = subscribe_since(&mut client, "t", Some(json!({"offset":6,"epoch":epoch})));
    assert_eq!(reply, json!({"topic":"t","offset":10,"epoch":epoch,"recovered":false}));
    publish(a.addr, "t", json!(11));
    assert_eq!(recv_json(&mut client), message("t", json!(11), 11), "then live only");
    assert_eq!(redis_list_len(&redis, "wshub:history:t"), 3, "Redis keeps exactly the last N");
}

fn redis_list_len(redis: &RedisProc, key: &str) -> i64 {
    match common::redis::command(redis.addr(), &["LLEN", key]) {
        common::redis::Resp::Int(n) => n,
        other => panic!("LLEN answered {other:?}"),
    }
}

#[test]
fn a_quiet_topic_keeps_its_epoch_while_subscribed_and_expires_after() {
    let redis = RedisProc::start();
    let a = ServerProc::start(&["--redis", &redis.url(), "--history-size", "10", "--history-ttl", "2"]);
    wait_health(&a, 200);
    let mut client = ws_connect(a.addr);
    let epoch = subscribe_since(&mut client, "quiet", None)["epoch"].as_str().unwrap().to_string();
    publish(a.addr, "quiet", json!(1));
    assert_eq!(recv_json(&mut client), message("quiet", json!(1), 1));
    // Twice the TTL with a subscriber and no traffic: the node refreshes the keys' TTL.
    std::thread::sleep(Duration::from_millis(4_500));
    publish(a.addr, "quiet", json!(2));
    assert_eq!(recv_json(&mut client), message("quiet", json!(2), 2), "same epoch, next offset");
    let mut other = ws_connect(a.addr);
    let reply = subscribe_since(&mut other, "quiet", Some(json!({"offset":2,"epoch":epoch})));
    assert_eq!(reply, json!({"topic":"quiet","offset":2,"epoch":epoch,"recovered":true}));
    // Nobody subscribed any more: the keys go at the TTL.
    drop(client);
    drop(other);
    let key = "wshub:epoch:quiet";
    let deadline = Instant::now() + SETTLE;
    while common::redis::command(redis.addr(), &["EXISTS", key]) != common::redis::Resp::Int(0) {
        assert!(Instant::now() < deadline, "{key} never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stalled_redis_fails_held_publishes_and_subscribes_at_the_reply_deadline() {
    let redis = RedisProc::start();
    let a = node(&redis, 10);
    let a_addr = a.addr;
    let mut client = ws_connect(a.addr);
    let epoch = subscribe_since(&mut client, "t", None)["epoch"].as_str().unwrap().to_string();
    publish(a.addr, "t", json!(1));
    assert_eq!(recv_json(&mut client)["payload"]["offset"], 1);
    // Redis keeps its connections but answers nothing (as under `DEBUG SLEEP`).
    let pid = redis.pid().to_string();
    let signal = |sig: &str| std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success();
    assert!(signal("-STOP"));
    let asked = Instant::now();
    send_json(&mut client, &json!({"type":"publish","payload":{"topic":"t","data":2},"id":9}));
    let mut late = ws_connect(a.addr);
    late.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    send_json(
        &mut late,
        &json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":1,"epoch":epoch}}}),
    );
    // An HTTP publish is held like the ack; another one's client gives up before the answer.
    let held = std::thread::spawn(move || {
        let asked = Instant::now();
        let response = raw_publish(a_addr, "t", json!("held"), Duration::from_secs(30));
        (response, asked.elapsed())
    });
    let gone = raw_request(a.addr, "t", json!("gone"));
    std::thread::sleep(Duration::from_millis(300));
    gone.shutdown(std::net::Shutdown::Both).unwrap();
    drop(gone);
    std::thread::sleep(Duration::from_millis(300));
    // Likely in the slot the one that left had: it must get nothing meant for that one.
    let mut bystander = ws_connect(a.addr);
    let subscribed = recv_json(&mut late);
    let acked = recv_json(&mut client);
    let waited = asked.elapsed();
    let (response, http_waited) = held.join().unwrap();
    assert!(signal("-CONT"));
    assert_eq!(subscribed, json!({"type":"subscribed","payload":{"topic":"t","recovered":false}}));
    assert_eq!(
        acked,
        json!({"type":"error","payload":{"message":"History unavailable: Redis is down"},"id":9})
    );
    assert_eq!(status_of(&response), 503, "{response}");
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "unavailable");
    // Held until the reply deadline (5 s), answered soon after it (slack for a loaded machine).
    for waited in [waited, http_waited] {
        assert!(
            waited >= Duration::from_secs(4) && waited < Duration::from_secs(15),
            "answered after {waited:?}"
        );
    }
    assert!(metric(a.addr, "wshub_backplane_stalled_total") >= 1.0);
    // The three appends in flight when the connection was given up count as unavailable: the
    // acked one, the held one and the one whose client left.
    assert_eq!(metric(a.addr, "wshub_history_unavailable_total"), 3.0);
    send_json(&mut bystander, &json!({"type":"ping","id":"b"}));
    assert_eq!(recv_json(&mut bystander), json!({"type":"pong","id":"b"}), "nothing stray before it");
    // Redis back with its data: publishes are numbered and delivered again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while publish(a.addr, "t", json!(3)).0 != 200 {
        assert!(Instant::now() < deadline, "Redis never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Answered local-only, the subscriber is told its position once Redis is back (the
    // publish that stalled may have reached Redis after all: at most once, never retried).
    let notice = recv_json(&mut late);
    assert_eq!(
        (&notice["type"], &notice["payload"]["recovered"]),
        (&json!("subscribed"), &json!(false)),
        "{notice}"
    );
    assert_eq!(notice["payload"]["epoch"], json!(epoch), "Redis kept the history");
    let got = recv_json(&mut late);
    assert_eq!(got["payload"]["data"], json!(3), "messages flow again: {got}");
}

#[test]
fn received_counts_every_message_read_from_redis_the_own_history_ones_included() {
    let redis = RedisProc::start();
    let (a, b) = (node(&redis, 10), node(&redis, 10));
    let mut on_a = ws_connect(a.addr);
    let mut on_b = ws_connect(b.addr);
    let epoch = subscribe_since(&mut on_a, "h", None)["epoch"].as_str().unwrap().to_string();
    subscribe_since(&mut on_b, "h", None);
    // Three history messages published on a, two on b: each node reads all five from Redis
    // and delivers them, its own included.
    for (i, node) in [a.addr, a.addr, b.addr, a.addr, b.addr].into_iter().enumerate() {
        let offset = i as u64 + 1;
        assert_eq!(
            publish(node, "h", json!(i)),
            (200, json!({"offset":offset,"epoch":epoch,"backplane":true}))
        );
    }
    // A broadcast from b: delivered on b at once, its copy from Redis skipped there.
    let (status, _) = http(b.addr, "POST", "/broadcast", "", r#"{"data":"all"}"#);
    assert_eq!(status, 200);
    for sub in [&mut on_a, &mut on_b] {
        for i in 0..5u64 {
            assert_eq!(recv_json(sub), message("h", json!(i), i + 1));
        }
        assert_eq!(recv_json(sub), json!({"type":"message","payload":{"data":"all"}}));
    }
    assert_eq!(metric(a.addr, "wshub_backplane_received_total"), 6.0);
    assert_eq!(metric(b.addr, "wshub_backplane_received_total"), 5.0);
    assert_eq!(metric(a.addr, "wshub_backplane_published_total"), 3.0);
    assert_eq!(metric(b.addr, "wshub_backplane_published_total"), 3.0);
}

#[test]
fn an_append_redis_refuses_is_answered_unavailable_and_counted() {
    let redis = RedisProc::start();
    let a = node(&redis, 10);
    // A key of the wrong type where the topic's epoch goes: the append script fails in Redis,
    // after the node sent it (the connection stays).
    let pushed = common::redis::command(redis.addr(), &["RPUSH", "wshub:epoch:broken", "x"]);
    assert_eq!(pushed, common::redis::Resp::Int(1));
    let (status, body) = publish(a.addr, "broken", json!(1));
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")), "{body}");
    let mut client = ws_connect(a.addr);
    send_json(&mut client, &json!({"type":"publish","payload":{"topic":"broken","data":2},"id":1}));
    assert_eq!(
        recv_json(&mut client),
        json!({"type":"error","payload":{"message":"History unavailable: Redis is down"},"id":1})
    );
    // Without an id nobody hears of it, but it is counted all the same.
    send_json(&mut client, &json!({"type":"publish","payload":{"topic":"broken","data":3}}));
    // Read (and sent to Redis) before the next publish, whose reply therefore comes after its.
    send_json(&mut client, &json!({"type":"ping","id":2}));
    assert_eq!(recv_json(&mut client), json!({"type":"pong","id":2}));
    let (status, body) = publish(a.addr, "fine", json!(4));
    assert_eq!((status, &body["offset"]), (200, &json!(1)), "{body}");
    assert_eq!(metric(a.addr, "wshub_history_unavailable_total"), 3.0);
    assert_eq!(metric(a.addr, "wshub_backplane_up"), 1.0);
}
