//! The core fed by hand: what it writes, what it delivers, how it fails and comes back.

use super::*;

const OTHER: &[u8] = b"N00000000000000ff ";

fn settings() -> RedisSettings {
    RedisSettings {
        url: RedisUrl::parse("redis://127.0.0.1:6379").unwrap(),
        prefix: "wshub:".into(),
        node_id: 0x1234_5678_9abc_def0,
        max_output: 1 << 20,
        max_data: 1 << 20,
        connect_timeout: 3_000,
        history: None,
    }
}

fn history_settings() -> RedisSettings {
    RedisSettings { history: Some(SharedHistory { size: 100, ttl: 60_000 }), ..settings() }
}

fn take_output(core: &mut RedisCore, which: usize) -> String {
    let link = core.link(which);
    let out = String::from_utf8_lossy(link.output()).into_owned();
    link.consume_output(usize::MAX);
    out
}

/// Inbound messages, rendered for comparison.
fn feed(core: &mut RedisCore, which: usize, bytes: &[u8]) -> (Vec<String>, Result<(), LinkError>) {
    core.link(which).feed(bytes);
    let mut got = Vec::new();
    let result = core.on_input(which, 10, |m| {
        got.push(match m {
            Inbound::Publish { topic, data } => format!("{topic}={}", data.get()),
            Inbound::Broadcast { data } => format!("*={}", data.get()),
            Inbound::Numbered { topic, message } => {
                format!("{topic}#{}@{}={}", message.offset, message.epoch, message.data.get())
            }
            Inbound::Confirmed { topic } => format!("confirmed {topic}"),
            Inbound::Appended { ticket, result } => format!("appended {ticket} {result:?}"),
            Inbound::Position { ticket, topic, fetched } => format!(
                "position {ticket} {topic} {:?}",
                fetched.map(|f| (f.epoch, f.offset, f.recovered, f.replay.len()))
            ),
        });
        true
    });
    (got, result)
}

fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n", channel.len(), payload.len())
        .into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

fn up_core() -> RedisCore {
    let mut core = RedisCore::new(settings(), 0);
    assert_eq!(core.on_timer(0), TimerAction::Connect);
    take_output(&mut core, SUB);
    take_output(&mut core, PUB);
    feed(&mut core, PUB, b"+PONG\r\n").1.unwrap();
    assert!(!core.is_up(), "the subscribe connection is not confirmed yet");
    feed(&mut core, SUB, b"*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n").1.unwrap();
    assert!(core.is_up());
    core
}

#[test]
fn handshake_subscribes_to_broadcast_and_pings() {
    let mut core = RedisCore::new(settings(), 0);
    assert_eq!(core.next_deadline(), 0, "the first attempt is due at once");
    assert_eq!(core.on_timer(0), TimerAction::Connect);
    assert_eq!(take_output(&mut core, SUB), "*2\r\n$9\r\nSUBSCRIBE\r\n$15\r\nwshub:broadcast\r\n");
    assert_eq!(take_output(&mut core, PUB), "*1\r\n$4\r\nPING\r\n");
    assert_eq!(core.next_deadline(), 3_000, "connect timeout armed");
}

#[test]
fn auth_and_select_come_first_on_both_connections() {
    let mut s = settings();
    s.url = RedisUrl::parse("redis://alice:secret@127.0.0.1:6379/2").unwrap();
    let mut core = RedisCore::new(s, 0);
    core.on_timer(0);
    let auth = "*3\r\n$4\r\nAUTH\r\n$5\r\nalice\r\n$6\r\nsecret\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n";
    assert!(take_output(&mut core, SUB).starts_with(auth));
    assert!(take_output(&mut core, PUB).starts_with(auth));
    feed(&mut core, PUB, b"+OK\r\n+OK\r\n+PONG\r\n").1.unwrap();
    feed(&mut core, SUB, b"+OK\r\n+OK\r\n*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n")
        .1
        .unwrap();
    assert!(core.is_up());
}

#[test]
fn a_refused_password_fails_the_attempt() {
    let mut s = settings();
    s.url = RedisUrl::parse("redis://:wrong@127.0.0.1:6379").unwrap();
    let mut core = RedisCore::new(s, 0);
    core.on_timer(0);
    let (_, result) = feed(&mut core, PUB, b"-WRONGPASS invalid username-password pair\r\n");
    assert!(result.is_err());
    assert!(!core.is_up());
    assert_eq!(core.next_deadline(), 10 + FIRST_BACKOFF);
}

#[test]
fn publishes_carry_the_node_tag_and_fail_while_down() {
    let data: &RawValue = serde_json::from_str(r#"{"h":"hi"}"#).unwrap();
    let mut core = RedisCore::new(settings(), 0);
    assert_eq!(core.publish("news", data), Relay::Failed, "not connected yet");
    let mut core = up_core();
    assert_eq!(core.publish("news", data), Relay::Sent);
    assert_eq!(core.broadcast(data), Relay::Sent);
    assert_eq!(
        take_output(&mut core, PUB),
        "*3\r\n$7\r\nPUBLISH\r\n$16\r\nwshub:topic:news\r\n$28\r\nN123456789abcdef0 {\"h\":\"hi\"}\r\n\
         *3\r\n$7\r\nPUBLISH\r\n$15\r\nwshub:broadcast\r\n$28\r\nN123456789abcdef0 {\"h\":\"hi\"}\r\n"
    );
    feed(&mut core, PUB, b":1\r\n-ERR something\r\n").1.unwrap();
    let stats = core.stats();
    assert_eq!((stats.published, stats.publish_failed), (2, 1), "one refused by Redis");
}

#[test]
fn publishes_over_the_output_bound_fail_and_are_counted() {
    let mut s = settings();
    s.max_output = 1000;
    let mut core = RedisCore::new(s, 0);
    core.on_timer(0);
    take_output(&mut core, PUB);
    feed(&mut core, PUB, b"+PONG\r\n").1.unwrap();
    feed(&mut core, SUB, b"*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n").1.unwrap();
    let text = format!("\"{}\"", "x".repeat(100));
    let data: &RawValue = serde_json::from_str(&text).unwrap();
    let outcomes: Vec<Relay> = (0..20).map(|_| core.publish("t", data)).collect();
    let sent = outcomes.iter().filter(|&&r| r == Relay::Sent).count();
    assert!(sent > 0 && sent < 20, "{outcomes:?}");
    assert!(core.link(PUB).output().len() <= 1000);
    assert_eq!(core.stats().publish_failed, 20 - sent as u64);
}

#[test]
fn messages_from_other_nodes_are_delivered_own_ones_skipped() {
    let mut core = up_core();
    let mut bytes = message("wshub:topic:news", &[OTHER, b"{\"n\":1}"].concat());
    bytes.extend(message("wshub:topic:news", b"N123456789abcdef0 {\"n\":2}"));
    bytes.extend(message("wshub:broadcast", &[OTHER, b"[1,2]"].concat()));
    let (got, result) = feed(&mut core, SUB, &bytes);
    result.unwrap();
    assert_eq!(got, ["news={\"n\":1}", "*=[1,2]"]);
    let stats = core.stats();
    assert_eq!((stats.received, stats.garbage), (2, 0));
}

#[test]
fn garbage_is_dropped_and_counted_and_the_next_message_flows() {
    let mut core = up_core();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<(&str, Vec<u8>, Garbage)> = vec![
        ("wshub:topic:news", b"hello".to_vec(), Garbage::BadTag),
        ("wshub:topic:news", b"".to_vec(), Garbage::BadTag),
        ("wshub:topic:news", b"N00000000000000FF {}".to_vec(), Garbage::BadTag),
        ("wshub:topic:news", b"N00000000000000ff{}".to_vec(), Garbage::BadTag),
        ("wshub:topic:news", [OTHER, b"{not json"].concat(), Garbage::BadData),
        ("wshub:topic:news", [OTHER, b"{} {}"].concat(), Garbage::BadData),
        ("wshub:topic:news", [OTHER, b"\"\xff\""].concat(), Garbage::BadData),
        ("wshub:topic:news", [OTHER, deep.as_bytes()].concat(), Garbage::BadData),
        ("wshub:topic:news", OTHER.to_vec(), Garbage::BadData),
        ("other:topic:news", [OTHER, b"1"].concat(), Garbage::ForeignChannel),
        ("wshub:news", [OTHER, b"1"].concat(), Garbage::ForeignChannel),
    ];
    let mut bytes = Vec::new();
    for (channel, payload, why) in &cases {
        assert_eq!(core.check(channel.as_bytes(), payload).err(), Some(*why), "{channel} {payload:?}");
        bytes.extend(message(channel, payload));
    }
    bytes.extend(message("wshub:topic:news", &[OTHER, b"\"after\""].concat()));
    let (got, result) = feed(&mut core, SUB, &bytes);
    result.unwrap();
    assert_eq!(got, ["news=\"after\""]);
    assert_eq!(core.stats().garbage, cases.len() as u64);
    assert!(core.is_up(), "garbage costs nothing but itself");
}

#[test]
fn data_over_the_message_limit_is_garbage() {
    let mut s = settings();
    s.max_data = 10;
    let core = RedisCore::new(s, 0);
    assert_eq!(
        core.check(b"wshub:broadcast", &[OTHER, b"\"0123456789\""].concat()).err(),
        Some(Garbage::BadData)
    );
    assert!(core.check(b"wshub:broadcast", &[OTHER, b"\"0123\""].concat()).unwrap().is_some());
}

#[test]
fn a_message_the_hub_refuses_counts_as_garbage() {
    let mut core = up_core();
    core.link(SUB).feed(&message("wshub:topic:", &[OTHER, b"1"].concat()));
    core.on_input(SUB, 0, |_| false).unwrap();
    assert_eq!((core.stats().received, core.stats().garbage), (0, 1));
}

#[test]
fn subscriptions_follow_local_interest_and_survive_reconnects() {
    let mut core = RedisCore::new(settings(), 0);
    core.topic_wanted("a");
    core.on_timer(0);
    assert_eq!(
        take_output(&mut core, SUB),
        "*3\r\n$9\r\nSUBSCRIBE\r\n$15\r\nwshub:broadcast\r\n$13\r\nwshub:topic:a\r\n"
    );
    core.topic_wanted("b");
    core.topic_wanted("b");
    core.topic_unwanted("a");
    core.topic_unwanted("zzz");
    assert_eq!(
        take_output(&mut core, SUB),
        "*2\r\n$9\r\nSUBSCRIBE\r\n$13\r\nwshub:topic:b\r\n*2\r\n$11\r\nUNSUBSCRIBE\r\n$13\r\nwshub:topic:a\r\n"
    );
    core.fail(100, "test");
    core.topic_wanted("c");
    assert_eq!(take_output(&mut core, SUB), "", "nothing is queued while down");
    assert_eq!(core.on_timer(100 + FIRST_BACKOFF), TimerAction::Connect);
    let resubscribe = take_output(&mut core, SUB);
    assert!(resubscribe.starts_with("*4\r\n$9\r\nSUBSCRIBE\r\n$15\r\nwshub:broadcast\r\n"), "{resubscribe}");
    assert!(resubscribe.contains("wshub:topic:b") && resubscribe.contains("wshub:topic:c"));
    assert!(!resubscribe.contains("wshub:topic:a"));
    let mut wanted: Vec<&str> = core.wanted().collect();
    wanted.sort();
    assert_eq!(wanted, ["b", "c"]);
}

#[test]
fn many_topics_resubscribe_in_batches() {
    let mut core = RedisCore::new(settings(), 0);
    for i in 0..600 {
        core.topic_wanted(&format!("t{i}"));
    }
    core.on_timer(0);
    let out = take_output(&mut core, SUB);
    assert_eq!(out.matches("SUBSCRIBE").count(), 3);
    assert_eq!(out.matches("wshub:topic:").count(), 600);
}

#[test]
fn backoff_doubles_to_five_seconds_and_resets_when_up() {
    let mut core = RedisCore::new(settings(), 0);
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..10 {
        assert_eq!(core.on_timer(now), TimerAction::Connect);
        core.fail(now, "refused");
        let next = core.next_deadline();
        delays.push(next - now);
        assert_eq!(core.on_timer(next - 1), TimerAction::Nothing, "not before the backoff");
        now = next;
    }
    assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
    assert_eq!(core.stats().reconnects, 9);
    core.on_timer(now);
    feed(&mut core, PUB, b"+PONG\r\n").1.unwrap();
    feed(&mut core, SUB, b"*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n").1.unwrap();
    assert!(core.is_up());
    core.fail(now, "lost");
    assert_eq!(core.next_deadline() - now, FIRST_BACKOFF);
}

#[test]
fn an_attempt_that_hangs_times_out() {
    let mut core = RedisCore::new(settings(), 0);
    core.on_timer(0);
    assert_eq!(core.on_timer(2_999), TimerAction::Nothing);
    assert_eq!(core.on_timer(3_000), TimerAction::Disconnect);
    assert_eq!(core.next_deadline(), 3_000 + FIRST_BACKOFF);
}

#[test]
fn publishes_in_flight_at_a_loss_count_as_failed() {
    let data: &RawValue = serde_json::from_str("1").unwrap();
    let mut core = up_core();
    for _ in 0..3 {
        assert_eq!(core.publish("t", data), Relay::Sent);
    }
    feed(&mut core, PUB, b":0\r\n").1.unwrap();
    core.fail(50, "lost");
    assert_eq!(core.stats().publish_failed, 2);
    assert!(!core.stats().up);
}

#[test]
fn bytes_that_are_not_resp_fail_the_connection() {
    let mut core = up_core();
    let (_, result) = feed(&mut core, SUB, b"HTTP/1.1 200 OK\r\n");
    assert_eq!(result, Err(LinkError::NotResp));
    assert!(!core.is_up());
}

/// A core keeping history in Redis, connected: its handshake loads both scripts.
fn history_core() -> RedisCore {
    let mut core = RedisCore::new(history_settings(), 0);
    core.on_timer(0);
    take_output(&mut core, SUB);
    let handshake = take_output(&mut core, PUB);
    assert_eq!(handshake.matches("SCRIPT").count(), 2, "{handshake}");
    let shas = [shared::script_sha(shared::APPEND_SCRIPT), shared::script_sha(shared::POSITION_SCRIPT)];
    let mut replies = Vec::new();
    for sha in shas {
        replies.extend_from_slice(b"$40\r\n");
        replies.extend_from_slice(&sha);
        replies.extend_from_slice(b"\r\n");
    }
    replies.extend_from_slice(b"+PONG\r\n");
    feed(&mut core, PUB, &replies).1.unwrap();
    feed(&mut core, SUB, b"*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n").1.unwrap();
    assert!(core.is_up());
    core
}

fn confirmation(channel: &str) -> Vec<u8> {
    format!("*3\r\n$9\r\nsubscribe\r\n${}\r\n{channel}\r\n:2\r\n", channel.len()).into_bytes()
}

#[test]
fn a_wanted_topic_is_confirmed_once_its_last_subscribe_is() {
    let mut core = up_core();
    assert!(core.topic_wanted("a"), "up: Redis will confirm");
    core.topic_unwanted("a");
    assert!(core.topic_wanted("a"));
    let (got, _) = feed(&mut core, SUB, &confirmation("wshub:topic:a"));
    assert!(got.is_empty(), "the first SUBSCRIBE precedes an UNSUBSCRIBE: not yet");
    let (got, _) = feed(&mut core, SUB, &confirmation("wshub:topic:a"));
    assert_eq!(got, ["confirmed a"]);
    let (got, _) = feed(&mut core, SUB, &confirmation("wshub:topic:a"));
    assert!(got.is_empty(), "a confirmation nobody waits for is ignored");
    let mut down = RedisCore::new(settings(), 0);
    assert!(!down.topic_wanted("a"), "down: answered at once");
}

#[test]
fn history_commands_are_script_calls_answered_in_order() {
    let data: &RawValue = serde_json::from_str("{\"n\":1}").unwrap();
    let mut core = history_core();
    assert_eq!(core.append("news", data, Some(7)), Relay::Sent);
    assert_eq!(core.append("news", data, None), Relay::Sent);
    assert!(core.fetch_position("news", Some(Since { offset: 3, epoch: "0123456789abcdef" }), 8));
    let out = take_output(&mut core, PUB);
    assert_eq!(out.matches("EVALSHA").count(), 3);
    for key in ["wshub:epoch:news", "wshub:offset:news", "wshub:history:news", "wshub:topic:news"] {
        assert!(out.contains(key), "{key} in {out}");
    }
    let mut replies = b"*2\r\n$16\r\n0123456789abcdef\r\n:4\r\n-ERR oops\r\n".to_vec();
    replies.extend_from_slice(b"*4\r\n$16\r\n0123456789abcdef\r\n:4\r\n:1000\r\n$9\r\n4 999 \"x\"\r\n");
    let (got, result) = feed(&mut core, PUB, &replies);
    result.unwrap();
    assert_eq!(
        got,
        [
            "appended 7 Some((\"0123456789abcdef\", 4))".to_string(),
            "position 8 news Some((\"0123456789abcdef\", 4, Some(true), 1))".to_string(),
        ],
        "the untracked append's error is counted, not delivered"
    );
    assert_eq!(core.stats().publish_failed, 1);
}

#[test]
fn numbered_messages_come_from_every_node_and_garbage_is_counted() {
    let mut core = history_core();
    let mut bytes = message("wshub:topic:t", b"E0123456789abcdef 5 [1]");
    bytes.extend(message("wshub:topic:t", b"E0123456789abcdef x [1]"));
    bytes.extend(message("wshub:topic:t", b"E0123456789abcdef 6 [1"));
    bytes.extend(message("wshub:topic:t", b"E0123456789abcdef 7 2"));
    let (got, result) = feed(&mut core, SUB, &bytes);
    result.unwrap();
    assert_eq!(got, ["t#5@0123456789abcdef=[1]", "t#7@0123456789abcdef=2"]);
    assert_eq!((core.stats().received, core.stats().garbage), (2, 2));
}

#[test]
fn a_lost_connection_is_reported_once_and_history_waits_fail() {
    let data: &RawValue = serde_json::from_str("1").unwrap();
    let mut core = history_core();
    assert_eq!(core.append("t", data, Some(1)), Relay::Sent);
    core.fail(10, "lost");
    assert!(core.take_went_down());
    assert!(!core.take_went_down(), "once");
    assert_eq!(core.append("t", data, Some(2)), Relay::Failed);
    assert!(!core.fetch_position("t", None, 3));
    assert_eq!(core.stats().publish_failed, 2, "the one in flight and the one refused");
    let mut plain = up_core();
    assert_eq!(plain.append("t", data, None), Relay::Failed, "no history in Redis: nothing to append to");
}

#[test]
fn noscript_reloads_the_scripts_and_fails_only_that_call() {
    let data: &RawValue = serde_json::from_str("1").unwrap();
    let mut core = history_core();
    assert_eq!(core.append("t", data, Some(1)), Relay::Sent);
    take_output(&mut core, PUB);
    let (got, result) = feed(&mut core, PUB, b"-NOSCRIPT No matching script.\r\n");
    result.unwrap();
    assert_eq!(got, ["appended 1 None"]);
    assert_eq!(take_output(&mut core, PUB).matches("SCRIPT").count(), 2, "loaded again");
    let sha = shared::script_sha(shared::APPEND_SCRIPT);
    let reply = [&b"$40\r\n"[..], &sha, b"\r\n", b"$40\r\n", &sha, b"\r\n"].concat();
    feed(&mut core, PUB, &reply).1.unwrap();
    assert!(core.is_up());
    assert_eq!(core.append("t", data, Some(2)), Relay::Sent);
}

#[test]
fn wanted_topics_keep_their_history_alive() {
    let mut core = history_core();
    assert!(core.topic_wanted("quiet"));
    take_output(&mut core, SUB);
    let due = core.next_deadline();
    assert_eq!(due, 10 + 20_000, "a third of the TTL after coming up");
    assert_eq!(core.on_timer(due - 1), TimerAction::Nothing);
    assert_eq!(take_output(&mut core, PUB), "");
    assert_eq!(core.on_timer(due), TimerAction::Nothing);
    let out = take_output(&mut core, PUB);
    assert_eq!(out.matches("PEXPIRE").count(), 3, "{out}");
    assert!(out.contains("wshub:epoch:quiet") && out.contains("wshub:history:quiet"));
    assert!(out.contains("60000"));
    feed(&mut core, SUB, &confirmation("wshub:topic:quiet")).1.unwrap();
    assert_eq!(core.next_deadline(), due + REPLY_DEADLINE, "the replies are awaited");
    feed(&mut core, PUB, b":1\r\n:1\r\n:0\r\n").1.unwrap();
    assert!(core.is_up(), "the replies are consumed in order");
    assert_eq!(core.next_deadline(), due + 20_000);
    let plain = up_core();
    assert_eq!(plain.next_deadline(), NEVER, "no history: nothing to refresh");
}

#[test]
fn up_only_once_every_resubscribed_channel_is_confirmed() {
    let mut core = RedisCore::new(settings(), 0);
    for i in 0..300 {
        core.topic_wanted(&format!("t{i}"));
    }
    core.on_timer(0);
    core.topic_wanted("late");
    feed(&mut core, PUB, b"+PONG\r\n").1.unwrap();
    feed(&mut core, SUB, b"*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n").1.unwrap();
    let mut confirmations = Vec::new();
    for i in 0..300 {
        confirmations.extend(confirmation(&format!("wshub:topic:t{i}")));
    }
    feed(&mut core, SUB, &confirmations).1.unwrap();
    assert!(!core.is_up(), "the channel wanted while connecting is not confirmed yet");
    feed(&mut core, SUB, &confirmation("wshub:topic:late")).1.unwrap();
    assert!(core.is_up());
}

#[test]
fn a_subscribe_redis_never_confirms_is_a_lost_connection_at_the_deadline() {
    let mut core = up_core();
    assert_eq!(core.next_deadline(), NEVER, "nothing awaited, no history to refresh");
    assert!(core.topic_wanted("a"));
    assert_eq!(core.next_deadline(), NEVER, "sent at the end of the turn, not before");
    core.stamp(100);
    assert_eq!(core.next_deadline(), 100 + REPLY_DEADLINE);
    // A refusal (ACL) is no confirmation: the deadline stays.
    let (got, result) = feed(&mut core, SUB, b"-NOPERM this user has no permissions\r\n");
    assert!(got.is_empty() && result.is_ok());
    assert_eq!(core.next_deadline(), 100 + REPLY_DEADLINE);
    assert_eq!(core.on_timer(100 + REPLY_DEADLINE - 1), TimerAction::Nothing);
    assert!(core.is_up());
    assert_eq!(core.on_timer(100 + REPLY_DEADLINE), TimerAction::Disconnect);
    assert!(!core.is_up());
    assert_eq!(core.stats().stalled, 1);
    assert!(core.take_went_down(), "the hub answers the held subscribe at once");
    assert_eq!(core.next_deadline(), 100 + REPLY_DEADLINE + FIRST_BACKOFF, "reconnects after the backoff");
}

#[test]
fn a_confirmed_subscribe_and_answered_publishes_clear_the_deadline() {
    let data: &RawValue = serde_json::from_str("1").unwrap();
    let mut core = up_core();
    assert!(core.topic_wanted("a"));
    core.stamp(100);
    feed(&mut core, SUB, &confirmation("wshub:topic:a")).1.unwrap();
    assert_eq!(core.next_deadline(), NEVER);
    assert_eq!(core.publish("t", data), Relay::Sent);
    core.stamp(200);
    assert_eq!(core.publish("t", data), Relay::Sent);
    core.stamp(300);
    assert_eq!(core.next_deadline(), 200 + REPLY_DEADLINE, "the oldest one counts");
    feed(&mut core, PUB, b":0\r\n").1.unwrap();
    assert_eq!(core.next_deadline(), 300 + REPLY_DEADLINE);
    feed(&mut core, PUB, b":0\r\n").1.unwrap();
    assert_eq!(core.next_deadline(), NEVER);
    // A Redis that stops answering publishes is lost too, and those in flight count failed.
    assert_eq!(core.publish("t", data), Relay::Sent);
    core.stamp(400);
    assert_eq!(core.on_timer(400 + REPLY_DEADLINE), TimerAction::Disconnect);
    let stats = core.stats();
    assert_eq!((stats.stalled, stats.publish_failed, stats.up), (1, 1, false));
}

#[test]
fn history_waits_have_the_same_deadline() {
    let mut core = history_core();
    let topic_refresh = core.next_deadline();
    assert!(core.fetch_position("a", None, 7));
    core.stamp(1_000);
    assert_eq!(core.next_deadline(), topic_refresh.min(1_000 + REPLY_DEADLINE));
    assert_eq!(core.on_timer(1_000 + REPLY_DEADLINE), TimerAction::Disconnect);
    assert!(core.take_went_down(), "the hub answers the fetch (local only) at once");
}

#[test]
fn requests_in_flight_are_capped() {
    let data: &RawValue = serde_json::from_str("1").unwrap();
    let mut core = RedisCore::new(RedisSettings { max_output: usize::MAX, ..settings() }, 0);
    core.on_timer(0);
    feed(&mut core, PUB, b"+PONG\r\n").1.unwrap();
    feed(&mut core, SUB, b"*3\r\n$9\r\nsubscribe\r\n$15\r\nwshub:broadcast\r\n:1\r\n").1.unwrap();
    for _ in 0..MAX_IN_FLIGHT {
        assert_eq!(core.publish("t", data), Relay::Sent);
        // Written at once: the output bound alone would not stop them.
        take_output(&mut core, PUB);
    }
    assert_eq!(core.publish("t", data), Relay::Failed);
    assert_eq!(core.broadcast(data), Relay::Failed);
    assert_eq!(core.stats().publish_failed, 2);
    feed(&mut core, PUB, b":0\r\n").1.unwrap();
    assert_eq!(core.publish("t", data), Relay::Sent, "an answer makes room");
}
