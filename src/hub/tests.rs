//! Protocol tests against a fake outbox.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::protocol::frame::parse_header;

/// Send queues of a few fake connections.
#[derive(Default)]
pub(crate) struct FakeOutbox {
    /// Open clients and what they were sent.
    pub queues: BTreeMap<ClientId, Vec<Rc<[u8]>>>,
    /// Clients that refuse deliveries (cut off as slow consumers).
    pub refusing: BTreeSet<ClientId>,
    /// What `numbered` answered callers, in order.
    pub answers: Vec<(ClientId, Option<(String, u64)>)>,
}

impl FakeOutbox {
    pub fn with_clients(ids: impl IntoIterator<Item = ClientId>) -> FakeOutbox {
        FakeOutbox { queues: ids.into_iter().map(|id| (id, Vec::new())).collect(), ..FakeOutbox::default() }
    }

    /// The JSON messages `client` received, decoded from the shared frames.
    pub fn received(&self, client: ClientId) -> Vec<Value> {
        self.queues[&client].iter().flat_map(|frame| frames(frame)).collect()
    }
}

impl Outbox for FakeOutbox {
    fn deliver(&mut self, client: ClientId, message: &SharedMessage) -> bool {
        let frame = message.plain();
        if self.refusing.contains(&client) {
            return false;
        }
        match self.queues.get_mut(&client) {
            Some(queue) => {
                queue.push(Rc::clone(frame));
                true
            }
            None => false,
        }
    }

    fn deliver_all(&mut self, message: &SharedMessage) -> usize {
        let frame = message.plain();
        let mut taken = 0;
        for (id, queue) in &mut self.queues {
            if !self.refusing.contains(id) {
                queue.push(Rc::clone(frame));
                taken += 1;
            }
        }
        taken
    }

    fn numbered(&mut self, caller: ClientId, numbered: Option<(&str, history::Offset)>) {
        self.answers.push((caller, numbered.map(|(epoch, offset)| (epoch.to_string(), offset))));
    }
}

/// Decodes a run of whole server text frames into JSON values.
pub(crate) fn frames(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = parse_header(bytes).unwrap().expect("whole frame");
        assert!(h.fin && h.mask.is_none());
        assert_eq!(h.opcode, crate::protocol::OpCode::Text);
        let end = h.header_len + h.payload_len as usize;
        out.push(serde_json::from_slice(&bytes[h.header_len..end]).expect("valid JSON"));
        bytes = &bytes[end..];
    }
    out
}

struct Harness {
    hub: Hub,
    outbox: FakeOutbox,
    metrics: Metrics,
}

impl Harness {
    fn new(config: HubConfig, clients: impl IntoIterator<Item = ClientId>) -> Harness {
        Harness {
            hub: Hub::new(config),
            outbox: FakeOutbox::with_clients(clients),
            metrics: Metrics::default(),
        }
    }

    fn default_with(clients: impl IntoIterator<Item = ClientId>) -> Harness {
        Harness::new(HubConfig::default(), clients)
    }

    /// Sends `text` from `from`; returns the replies (decoded).
    fn send(&mut self, from: ClientId, text: &str) -> Vec<Value> {
        let mut reply = Vec::new();
        self.hub.handle_text(from, text, &mut reply, &mut self.outbox, &mut self.metrics);
        frames(&reply)
    }

    /// Sends `text` and expects exactly one reply.
    fn one(&mut self, from: ClientId, text: &str) -> Value {
        let mut replies = self.send(from, text);
        assert_eq!(replies.len(), 1, "replies to {text}: {replies:?}");
        replies.remove(0)
    }

    fn subscribe(&mut self, from: ClientId, topic: &str) {
        let text = json!({"type":"subscribe","payload":{"topic":topic}}).to_string();
        assert_eq!(self.one(from, &text)["type"], "subscribed");
    }
}

fn error(message: &str) -> Value {
    json!({"type":"error","payload":{"message":message}})
}

fn error_with_id(message: &str, id: Value) -> Value {
    json!({"type":"error","payload":{"message":message},"id":id})
}

#[test]
fn ping_answers_pong_and_echoes_the_id() {
    let mut h = Harness::default_with([1]);
    assert_eq!(h.one(1, r#"{"type":"ping"}"#), json!({"type":"pong"}));
    assert_eq!(h.one(1, r#"{"type":"ping","id":42}"#), json!({"type":"pong","id":42}));
    assert_eq!(h.one(1, r#"{"type":"ping","id":"abc","payload":[1]}"#), json!({"type":"pong","id":"abc"}));
}

#[test]
fn id_is_echoed_byte_for_byte() {
    let mut h = Harness::default_with([1]);
    let mut reply = Vec::new();
    h.hub.handle_text(1, r#"{"type":"ping","id":1.50e3}"#, &mut reply, &mut h.outbox, &mut h.metrics);
    let header = parse_header(&reply).unwrap().unwrap();
    assert_eq!(&reply[header.header_len..], br#"{"type":"pong","id":1.50e3}"#);
}

#[test]
fn subscribe_and_unsubscribe_reply_with_the_topic() {
    let mut h = Harness::default_with([1]);
    let sub = r#"{"type":"subscribe","payload":{"topic":"news"},"id":1}"#;
    let expected = json!({"type":"subscribed","payload":{"topic":"news"},"id":1});
    assert_eq!(h.one(1, sub), expected);
    assert_eq!(h.one(1, sub), expected, "subscribing twice is harmless");
    assert_eq!(h.hub.subscription_count(1), 1);
    assert_eq!(h.hub.topic_count(), 1);

    let unsub = r#"{"type":"unsubscribe","payload":{"topic":"news"},"id":2}"#;
    let expected = json!({"type":"unsubscribed","payload":{"topic":"news"},"id":2});
    assert_eq!(h.one(1, unsub), expected);
    assert_eq!(h.hub.topic_count(), 0);
    assert_eq!(h.one(1, unsub), expected, "unsubscribing when not subscribed is not an error");
    assert_eq!(h.metrics.error_replies, 0);
}

#[test]
fn escaped_topic_names_are_the_same_topic() {
    let mut h = Harness::default_with([1, 2]);
    h.subscribe(1, "ab");
    assert_eq!(h.one(2, r#"{"type":"subscribe","payload":{"topic":"a\u0062"}}"#)["payload"]["topic"], "ab");
    assert_eq!(h.hub.subscribers("ab").len(), 2);
    assert_eq!(h.hub.topic_count(), 1);
}

#[test]
fn publish_reaches_every_subscriber_including_the_sender() {
    let mut h = Harness::default_with([1, 2, 3, 4]);
    h.subscribe(1, "t");
    h.subscribe(2, "t");
    h.subscribe(3, "other");
    let replies = h.send(1, r#"{"type":"publish","payload":{"topic":"t","data":{"n":1}}}"#);
    assert!(replies.is_empty(), "no id, no ack: {replies:?}");
    let message = json!({"type":"message","payload":{"topic":"t","data":{"n":1}}});
    assert_eq!(h.outbox.received(1), vec![message.clone()]);
    assert_eq!(h.outbox.received(2), vec![message]);
    assert!(h.outbox.received(3).is_empty());
    assert!(h.outbox.received(4).is_empty());
    assert_eq!((h.metrics.publishes, h.metrics.deliveries), (1, 2));
}

#[test]
fn publish_with_an_id_is_acked_with_the_delivered_count() {
    let mut h = Harness::default_with([1, 2, 3]);
    h.subscribe(2, "t");
    h.subscribe(3, "t");
    h.outbox.refusing.insert(3);
    let ack = h.one(1, r#"{"type":"publish","payload":{"topic":"t","data":null},"id":"p1"}"#);
    assert_eq!(ack, json!({"type":"ack","payload":{"topic":"t","delivered":1},"id":"p1"}));
    let ack = h.one(1, r#"{"type":"publish","payload":{"topic":"nobody","data":1},"id":2}"#);
    assert_eq!(ack, json!({"type":"ack","payload":{"topic":"nobody","delivered":0},"id":2}));
    assert_eq!(h.hub.topic_count(), 1, "publishing creates no topic");
}

#[test]
fn data_is_forwarded_verbatim() {
    let mut h = Harness::default_with([1]);
    h.subscribe(1, "t");
    // A serde_json::Value round trip would turn 1.0e5 into 100000.0 and drop the spaces.
    h.send(1, r#"{"type":"publish","payload":{"data": [1.0e5, "\u00e9" ] ,"topic":"t"}}"#);
    let frame = &h.outbox.queues[&1][0];
    let header = parse_header(frame).unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&frame[header.header_len..]).unwrap(),
        r#"{"type":"message","payload":{"topic":"t","data":[1.0e5, "\u00e9" ]}}"#
    );
}

#[test]
fn one_shared_buffer_for_all_subscribers() {
    let mut h = Harness::default_with(0..50);
    for c in 0..50 {
        h.subscribe(c, "t");
    }
    h.send(7, r#"{"type":"publish","payload":{"topic":"t","data":"x"}}"#);
    let first = &h.outbox.queues[&0][0];
    for c in 1..50 {
        assert!(Rc::ptr_eq(first, &h.outbox.queues[&c][0]), "client {c} got its own copy");
    }
    assert_eq!(Rc::strong_count(first), 50, "the hub keeps no reference");
}

#[test]
fn messages_from_one_publisher_arrive_in_order() {
    let mut h = Harness::default_with([1, 2, 3]);
    h.subscribe(2, "t");
    h.subscribe(3, "t");
    for n in 0..200 {
        h.send(1, &format!(r#"{{"type":"publish","payload":{{"topic":"t","data":{n}}}}}"#));
    }
    for c in [2, 3] {
        let data: Vec<_> =
            h.outbox.received(c).iter().map(|m| m["payload"]["data"].as_u64().unwrap()).collect();
        assert_eq!(data, (0..200).collect::<Vec<_>>());
    }
}

#[test]
fn broadcast_is_refused_unless_enabled() {
    let mut h = Harness::default_with([1, 2]);
    let text = r#"{"type":"broadcast","payload":{"data":"hi"},"id":5}"#;
    assert_eq!(h.one(1, text), error_with_id("Broadcast from clients is disabled", json!(5)));
    assert!(h.outbox.received(2).is_empty());
    assert_eq!(h.metrics.broadcasts, 0);
}

#[test]
fn broadcast_reaches_every_client_when_enabled() {
    let config = HubConfig { allow_client_broadcast: true, ..HubConfig::default() };
    let mut h = Harness::new(config, [1, 2, 3]);
    h.outbox.refusing.insert(3);
    let ack = h.one(1, r#"{"type":"broadcast","payload":{"data":{"a":1}},"id":5}"#);
    assert_eq!(ack, json!({"type":"ack","payload":{"delivered":2},"id":5}));
    let message = json!({"type":"message","payload":{"data":{"a":1}}});
    assert_eq!(h.outbox.received(1), vec![message.clone()]);
    assert_eq!(h.outbox.received(2), vec![message]);
    assert!(h.send(1, r#"{"type":"broadcast","payload":{"data":0}}"#).is_empty(), "no id, no ack");
    assert_eq!((h.metrics.broadcasts, h.metrics.deliveries), (2, 4));
    assert_eq!(h.one(1, r#"{"type":"broadcast"}"#), error("Invalid message format"));
}

#[test]
fn invalid_format_cases() {
    let mut h = Harness::default_with([1]);
    let invalid = error("Invalid message format");
    for text in [
        "",
        "not json",
        "null",
        "[]",
        r#"["ping"]"#,
        r#"{"type":"ping""#,
        r#"{"payload":{}}"#,
        r#"{"type":null}"#,
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","payload":"t"}"#,
        r#"{"type":"subscribe","payload":["t"]}"#,
        r#"{"type":"subscribe","payload":{}}"#,
        r#"{"type":"subscribe","payload":{"topic":5}}"#,
        r#"{"type":"unsubscribe","payload":{"topic":null}}"#,
        r#"{"type":"publish","payload":{"topic":"t"}}"#,
        r#"{"type":"publish","payload":{"data":1}}"#,
    ] {
        assert_eq!(h.one(1, text), invalid, "{text:?}");
    }
    // When the text was an object with an id, the error carries it.
    assert_eq!(h.one(1, r#"{"type":7,"id":"x"}"#), error_with_id("Invalid message format", json!("x")));
    assert_eq!(
        h.one(1, r#"{"type":"publish","payload":{"topic":"t"},"id":3}"#),
        error_with_id("Invalid message format", json!(3))
    );
    assert_eq!(h.metrics.error_replies, 18);
    assert_eq!(h.hub.topic_count(), 0);
}

#[test]
fn unknown_type_is_its_own_error() {
    let mut h = Harness::default_with([1]);
    assert_eq!(h.one(1, r#"{"type":"dance"}"#), error("Unknown message type"));
    assert_eq!(h.one(1, r#"{"type":"PING","id":1}"#), error_with_id("Unknown message type", json!(1)));
}

#[test]
fn topic_limits() {
    let config = HubConfig { max_topic_length: 8, ..HubConfig::default() };
    let mut h = Harness::new(config, [1]);
    assert_eq!(
        h.one(1, r#"{"type":"subscribe","payload":{"topic":""},"id":1}"#),
        error_with_id("Topic must not be empty", json!(1))
    );
    h.subscribe(1, "12345678");
    assert_eq!(
        h.one(1, r#"{"type":"subscribe","payload":{"topic":"123456789"}}"#),
        error("Topic too long (9 bytes, max 8)")
    );
    // Bytes, not characters: five two-byte characters are 10 bytes.
    assert_eq!(
        h.one(1, r#"{"type":"subscribe","payload":{"topic":"ééééé"}}"#),
        error("Topic too long (10 bytes, max 8)")
    );
    assert_eq!(
        h.one(1, r#"{"type":"publish","payload":{"topic":"","data":1}}"#),
        error("Topic must not be empty")
    );
    assert_eq!(
        h.one(1, r#"{"type":"unsubscribe","payload":{"topic":""}}"#),
        error("Topic must not be empty")
    );
    assert_eq!(h.hub.topic_count(), 1);
    let data = RawValue::from_string("1".into()).unwrap();
    assert_eq!(
        h.hub.publish("123456789", &data, &mut h.outbox, &mut h.metrics),
        Err(HubError::TopicTooLong { len: 9, max: 8 })
    );
    assert_eq!(h.metrics.publishes, 0, "a refused publish is not counted");
}

#[test]
fn subscription_limit() {
    let config = HubConfig { max_subscriptions: 2, ..HubConfig::default() };
    let mut h = Harness::new(config, [1, 2]);
    h.subscribe(1, "a");
    h.subscribe(1, "b");
    assert_eq!(
        h.one(1, r#"{"type":"subscribe","payload":{"topic":"c"},"id":9}"#),
        error_with_id("Too many subscriptions (max 2)", json!(9))
    );
    h.subscribe(1, "a"); // already in: still fine at the limit
    h.subscribe(2, "c"); // the limit is per connection
    h.one(1, r#"{"type":"unsubscribe","payload":{"topic":"a"}}"#);
    h.subscribe(1, "c");
    assert_eq!(h.hub.subscription_count(1), 2);
}

#[test]
fn binary_messages_get_an_error() {
    let mut h = Harness::default_with([1]);
    let mut reply = Vec::new();
    h.hub.handle_binary(1, &mut reply, &mut h.metrics);
    assert_eq!(frames(&reply), vec![error("Binary messages are not supported")]);
    assert_eq!(h.metrics.error_replies, 1);
}

#[test]
fn remove_client_frees_empty_topics() {
    let mut h = Harness::default_with([1, 2]);
    h.subscribe(1, "mine");
    h.subscribe(1, "ours");
    h.subscribe(2, "ours");
    h.hub.remove_client(1);
    assert_eq!(h.hub.topic_count(), 1);
    assert_eq!(h.hub.subscription_count(1), 0);
    assert_eq!(h.hub.subscribers("ours"), &[2]);
    let ack = h.one(2, r#"{"type":"publish","payload":{"topic":"mine","data":1},"id":1}"#);
    assert_eq!(ack["payload"]["delivered"], 0);
    assert!(h.outbox.received(1).is_empty());
    h.hub.remove_client(2);
    assert_eq!(h.hub.topic_count(), 0);
}

#[test]
fn reply_buffer_is_appended_to_not_overwritten() {
    let mut h = Harness::default_with([1]);
    let mut reply = b"earlier".to_vec();
    h.hub.handle_text(1, r#"{"type":"ping"}"#, &mut reply, &mut h.outbox, &mut h.metrics);
    assert!(reply.starts_with(b"earlier"));
    assert_eq!(frames(&reply[7..]), vec![json!({"type":"pong"})]);
}

#[test]
fn hostile_inputs_do_not_panic() {
    let mut h = Harness::default_with([1]);
    let deep = "[".repeat(100_000);
    let deep_id = format!(r#"{{"type":"ping","id":{deep}"#);
    let deep_data =
        format!(r#"{{"type":"publish","payload":{{"topic":"t","data":{}}}}},"id":1}}"#, "[".repeat(100_000));
    let long_topic = format!(r#"{{"type":"subscribe","payload":{{"topic":"{}"}}}}"#, "x".repeat(1 << 20));
    for text in [
        deep.as_str(),
        deep_id.as_str(),
        deep_data.as_str(),
        long_topic.as_str(),
        r#"{"type":"publish","payload":{"topic":"t","data":"\ud800"},"id":1}"#,
        r#"{"type":"ping","id":{"nested":[1,2,{"a":null}]}}"#,
        "\u{feff}{}",
    ] {
        let replies = h.send(1, text);
        assert_eq!(replies.len(), 1);
    }
    assert_eq!(h.hub.topic_count(), 0);
}

#[test]
fn topic_limit_is_global_and_keeps_the_connection() {
    let config = HubConfig { max_topics: 2, ..HubConfig::default() };
    let mut h = Harness::new(config, [1, 2]);
    h.subscribe(1, "a");
    h.subscribe(2, "b");
    assert_eq!(
        h.one(2, r#"{"type":"subscribe","payload":{"topic":"c"},"id":3}"#),
        error_with_id("Too many topics on this server (max 2)", json!(3))
    );
    assert_eq!(h.metrics.topic_limit_refusals, 1);
    h.subscribe(2, "a"); // existing topics stay open to everyone
    assert_eq!(h.one(2, r#"{"type":"ping","id":1}"#), json!({"type":"pong","id":1}));
    h.hub.remove_client(1);
    h.one(2, r#"{"type":"unsubscribe","payload":{"topic":"b"}}"#);
    h.subscribe(1, "c"); // a freed topic frees a place
    assert_eq!(h.hub.topic_count(), 2);
}

#[test]
fn lone_surrogates_are_refused_everywhere() {
    let mut h = Harness::default_with([1, 2]);
    h.subscribe(2, "t");
    let invalid = error("Invalid message format");
    for text in [
        r#"{"type":"publish","payload":{"topic":"t","data":"\ud800"}}"#,
        r#"{"type":"publish","payload":{"topic":"t","data":{"k":["x\uDBFFy"]}}}"#,
        r#"{"type":"publish","payload":{"topic":"t","data":"\udc00"}}"#,
        r#"{"type":"publish","payload":{"topic":"t","data":"\ud800\u0041"}}"#,
        r#"{"type":"publish","payload":{"topic":"t","data":{"\ud800":1}}}"#,
        r#"{"type":"publish","payload":{"topic":"t","data":"\ud800"},"id":"\udfff"}"#,
        r#"{"type":"ping","id":"\ud800"}"#,
        r#"{"type":"subscribe","payload":{"topic":"\ud800"}}"#,
        r#"{"type":"ping","extra":"\udbff"}"#,
    ] {
        assert_eq!(h.one(1, text), invalid, "{text}");
    }
    assert!(h.outbox.received(2).is_empty(), "nothing was forwarded");
    // A proper pair is a character; an escaped backslash before "u" is no escape.
    assert_eq!(h.one(1, r#"{"type":"ping","id":"\ud83d\ude00"}"#), json!({"type":"pong","id":"😀"}));
    assert_eq!(h.one(1, r#"{"type":"ping","id":"\\ud800"}"#), json!({"type":"pong","id":"\\ud800"}));
    let data = r#"{"type":"publish","payload":{"topic":"t","data":"\uD83D\uDE00"},"id":1}"#;
    assert_eq!(h.one(1, data)["payload"]["delivered"], 1);
    // The HTTP bodies go through the same check.
    assert!(matches!(
        parse_publish_body(r#"{"topic":"t","data":"\ud800"}"#),
        Err(HubError::InvalidFormat { .. })
    ));
    assert!(matches!(parse_broadcast_body(r#"{"data":["\udc00"]}"#), Err(HubError::InvalidFormat { .. })));
    assert!(parse_broadcast_body(r#"{"data":"\ud800\udc00"}"#).is_ok());
}

#[test]
fn control_characters_in_topics_are_refused() {
    let mut h = Harness::default_with([1]);
    let invalid = error("Invalid message format");
    for text in [
        r#"{"type":"subscribe","payload":{"topic":"a\u0000b"}}"#,
        r#"{"type":"subscribe","payload":{"topic":"a\nb"}}"#,
        r#"{"type":"subscribe","payload":{"topic":"\u007f"}}"#,
        r#"{"type":"subscribe","payload":{"topic":"\u0085"}}"#,
        r#"{"type":"publish","payload":{"topic":"a\tb","data":1}}"#,
        r#"{"type":"unsubscribe","payload":{"topic":"\u001b[31m"}}"#,
    ] {
        assert_eq!(h.one(1, text), invalid, "{text}");
    }
    assert_eq!(h.hub.topic_count(), 0);
    let data = RawValue::from_string("1".into()).unwrap();
    assert_eq!(
        h.hub.publish("a\u{7}", &data, &mut h.outbox, &mut h.metrics),
        Err(HubError::TopicControlCharacter)
    );
    // Printable non-ASCII is fine.
    h.subscribe(1, "café ☕");
}
