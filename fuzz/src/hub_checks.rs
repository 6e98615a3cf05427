//! Invariant checks for the hub's JSON pub/sub protocol, shared by the `hub_message` fuzz target
//! and the stable replay test (which includes this file and `checks.rs` with `#[path]`).
//!
//! A structured input drives a few clients of one [`Hub`]: messages built from a table of
//! JSON fragments (whose outcome a small model predicts exactly), raw text, binary messages,
//! disconnects and slow consumers. Every reply must be one server text frame holding a JSON
//! object of a documented shape, every fan-out frame a `message` reaching exactly the model's
//! subscribers, and the hub's subscription indexes must agree with the model after each step.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use wshub::protocol::deflate::SharedMessage;

use serde_json::Value;

use wshub::hub::{ClientId, Hub, HubConfig, Outbox};
use wshub::metrics::Metrics;
use wshub::protocol::frame::OpCode;

use super::checks::{parse_server_frames, Reader};

const CLIENTS: usize = 4;

/// Fan-out as the reactor would see it: one queue per client; a "full" client refuses.
#[derive(Default)]
struct Queues {
    frames: [Vec<Rc<[u8]>>; CLIENTS],
    full: [bool; CLIENTS],
}

impl Outbox for Queues {
    fn deliver(&mut self, client: ClientId, message: &SharedMessage) -> bool {
        let frame = message.plain();
        assert!(client < CLIENTS, "delivery to unknown client {client}");
        if self.full[client] {
            return false;
        }
        self.frames[client].push(Rc::clone(frame));
        true
    }

    fn deliver_all(&mut self, message: &SharedMessage) -> usize {
        (0..CLIENTS).filter(|&c| self.deliver(c, message)).count()
    }
}

/// JSON text of a topic, and the topic it decodes to.
const TOPICS: &[(&str, &str)] = &[
    (r#""news""#, "news"),
    (r#""sport""#, "sport"),
    (r#""a\"b\n""#, "a\"b\n"),
    (r#""n\u0065ws""#, "news"),
    (r#""""#, ""),
    (r#""日本""#, "日本"),
    (r#""\ud83d\ude00""#, "😀"),
    (r#""12345678""#, "12345678"),
    (r#""123456789""#, "123456789"),
];

/// JSON text of a data value (always valid JSON).
const DATA: &[&str] =
    &["1", r#"{"h":"hi"}"#, r#"[1, 2, {"x": null}]"#, r#""str\"\u00e9""#, "null", "-1.5e300", "{}"];

/// JSON text of an id (`null` counts as none).
const IDS: &[&str] = &["1", r#""p1""#, r#""a\"b""#, "null", r#"{"k":[1,2]}"#, "-0.25e-3", "true", "[]"];

const TYPES: &[&str] = &[
    r#""ping""#,
    r#""subscribe""#,
    r#""unsubscribe""#,
    r#""publish""#,
    r#""broadcast""#,
    r#""p\u0069ng""#,
    r#""nope""#,
    "5",
    r#"["ping"]"#,
];

/// What the model expects a modelled message to do.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// A reply of this type (error: with this message).
    Reply(&'static str, Option<String>),
    /// No reply (publish or broadcast without an id).
    Nothing,
}

struct Built {
    text: String,
    /// The model's prediction; `None` when the message is not modelled exactly.
    expect: Option<Expect>,
    /// Raw id text that must be echoed, if any.
    id: Option<&'static str>,
    /// Kind, topic and data, for updating the model and checking fan-out.
    action: Action,
}

#[derive(Debug)]
enum Action {
    None,
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, &'static str),
    Broadcast(&'static str),
}

struct Model {
    config: HubConfig,
    subs: [BTreeSet<String>; CLIENTS],
}

impl Model {
    fn subscribers(&self, topic: &str) -> BTreeSet<ClientId> {
        (0..CLIENTS).filter(|&c| self.subs[c].contains(topic)).collect()
    }

    fn topics(&self) -> BTreeSet<&String> {
        self.subs.iter().flatten().collect()
    }

    fn topic_error(&self, topic: &str) -> Option<String> {
        if topic.is_empty() {
            return Some("Topic must not be empty".into());
        }
        let max = self.config.max_topic_length;
        if topic.len() > max {
            return Some(format!("Topic too long ({} bytes, max {max})", topic.len()));
        }
        topic.chars().any(char::is_control).then(|| "Invalid message format".into())
    }
}

fn pick<T: Copy>(r: &mut Reader<'_>, table: &[T]) -> T {
    table[usize::from(r.u8()) % table.len()]
}

/// Builds a message from table fragments; some choices make it unmodelled (raw bytes spliced).
fn build_message(r: &mut Reader<'_>, model: &Model, from: ClientId) -> Built {
    let shape = r.u8();
    let kind = pick(r, TYPES);
    let (topic_json, topic) = pick(r, TOPICS);
    let data = pick(r, DATA);
    let id_choice = r.u8();
    let id = (id_choice & 8 == 0).then(|| IDS[usize::from(id_choice) % IDS.len()]);
    let mut modelled = true;
    let long_topic;
    let (topic_json, topic): (String, &str) = if shape & 0x40 != 0 {
        // A topic around the length limit.
        long_topic = "t".repeat(model.config.max_topic_length + usize::from(r.u8() % 3) - 1);
        (format!("\"{long_topic}\""), &long_topic)
    } else {
        (topic_json.to_string(), topic)
    };
    let payload = match shape & 7 {
        0..=2 => format!(r#"{{"topic":{topic_json},"data":{data}}}"#),
        3 => format!(r#"{{ "data" : {data} , "topic" : {topic_json} , "extra": [1] }}"#),
        4 => format!(r#"{{"data":{data}}}"#),
        5 => format!(r#"{{"topic":{topic_json}}}"#),
        6 => format!("[{topic_json}]"),
        _ => {
            modelled = false;
            String::from_utf8_lossy(r.blob(40)).into_owned()
        }
    };
    let mut fields = Vec::new();
    if shape & 0x08 == 0 {
        fields.push(format!(r#""type":{kind}"#));
    }
    if shape & 0x10 == 0 {
        fields.push(format!(r#""payload":{payload}"#));
    }
    if let Some(id) = id {
        fields.push(format!(r#""id":{id}"#));
    }
    if shape & 0x20 != 0 {
        fields.reverse();
    }
    let mut text = format!("{{{}}}", fields.join(if shape & 0x80 != 0 { " ,\n\t" } else { "," }));
    if id_choice & 0x80 != 0 {
        // Splice raw bytes somewhere: anything may happen, the weak checks still hold.
        modelled = false;
        let at = usize::from(r.u8()) % (text.len() + 1);
        let junk = String::from_utf8_lossy(r.blob(16)).into_owned();
        let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.insert_str(at, &junk);
    }
    let echoed = id.filter(|&i| i != "null");
    if !modelled {
        return Built { text, expect: None, id: None, action: Action::None };
    }
    let invalid = || Expect::Reply("error", Some("Invalid message format".into()));
    let has_type = shape & 0x08 == 0;
    let has_payload = shape & 0x10 == 0;
    let payload_has_topic = matches!(shape & 7, 0..=3 | 5);
    let payload_has_data = matches!(shape & 7, 0..=4);
    let mut action = Action::None;
    let expect = if !has_type {
        invalid()
    } else {
        match kind {
            r#""ping""# | r#""p\u0069ng""# => Expect::Reply("pong", None),
            r#""nope""# => Expect::Reply("error", Some("Unknown message type".into())),
            "5" | r#"["ping"]"# => invalid(),
            r#""subscribe""# | r#""unsubscribe""# => {
                if !has_payload || !payload_has_topic {
                    invalid()
                } else if let Some(e) = model.topic_error(topic) {
                    Expect::Reply("error", Some(e))
                } else if kind == r#""subscribe""# {
                    let max = model.config.max_subscriptions;
                    let max_topics = model.config.max_topics;
                    if !model.subs[from].contains(topic) && model.subs[from].len() >= max {
                        Expect::Reply("error", Some(format!("Too many subscriptions (max {max})")))
                    } else if !model.topics().iter().any(|t| t.as_str() == topic)
                        && model.topics().len() >= max_topics
                    {
                        Expect::Reply(
                            "error",
                            Some(format!("Too many topics on this server (max {max_topics})")),
                        )
                    } else {
                        action = Action::Subscribe(topic.to_string());
                        Expect::Reply("subscribed", None)
                    }
                } else {
                    action = Action::Unsubscribe(topic.to_string());
                    Expect::Reply("unsubscribed", None)
                }
            }
            r#""publish""# => {
                if !has_payload || !payload_has_topic || !payload_has_data {
                    invalid()
                } else if let Some(e) = model.topic_error(topic) {
                    Expect::Reply("error", Some(e))
                } else {
                    action = Action::Publish(topic.to_string(), data);
                    if echoed.is_some() {
                        Expect::Reply("ack", None)
                    } else {
                        Expect::Nothing
                    }
                }
            }
            r#""broadcast""# => {
                if !model.config.allow_client_broadcast {
                    Expect::Reply("error", Some("Broadcast from clients is disabled".into()))
                } else if !has_payload || !payload_has_data || shape & 7 == 6 {
                    invalid()
                } else {
                    action = Action::Broadcast(data);
                    if echoed.is_some() {
                        Expect::Reply("ack", None)
                    } else {
                        Expect::Nothing
                    }
                }
            }
            other => panic!("type {other} not modelled"),
        }
    };
    Built { text, expect: Some(expect), id: echoed, action }
}

/// Parses a fan-out `message` frame. Its `data` is forwarded as the publisher wrote it, and a
/// number beyond f64 is valid JSON that `Value` refuses: the fields are parsed raw (syntax only)
/// and a `data` that `Value` cannot hold is kept as its raw text (the modelled publishes, whose
/// data is compared, always fit).
fn parse_message(payload: &[u8]) -> Value {
    use serde_json::value::RawValue;
    type Raw = std::collections::BTreeMap<String, Box<RawValue>>;
    let text = std::str::from_utf8(payload).expect("message is UTF-8");
    let outer: Raw =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("message is not JSON ({e}): {text}"));
    let mut map = serde_json::Map::new();
    for (key, raw) in outer {
        let field = if key == "payload" {
            let inner: Raw =
                serde_json::from_str(raw.get()).unwrap_or_else(|e| panic!("payload ({e}): {text}"));
            Value::Object(
                inner
                    .into_iter()
                    .map(|(k, v)| {
                        let value = serde_json::from_str(v.get())
                            .unwrap_or_else(|_| Value::String(v.get().to_owned()));
                        (k, value)
                    })
                    .collect(),
            )
        } else {
            serde_json::from_str(raw.get()).unwrap_or_else(|e| panic!("field {key} ({e}): {text}"))
        };
        map.insert(key, field);
    }
    Value::Object(map)
}

/// Checks a reply's JSON shape; returns its type and parsed value.
fn check_reply_shape(payload: &[u8]) -> (String, Value) {
    let text = std::str::from_utf8(payload).expect("reply is UTF-8");
    // The id is echoed as the client wrote it, and a number beyond f64 (`1e6666666`) is valid
    // JSON that `Value` refuses: parse the fields raw (syntax only), then all but the id as
    // values; the id stays its raw text (as a string) for the byte-for-byte check.
    let fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("reply is not a JSON object ({e}): {text}"));
    let mut map = serde_json::Map::new();
    for (key, raw) in fields {
        let field = if key == "id" {
            assert_ne!(raw.get(), "null", "null id echoed: {text}");
            Value::String(raw.get().to_owned())
        } else {
            serde_json::from_str(raw.get()).unwrap_or_else(|e| panic!("field {key} ({e}): {text}"))
        };
        map.insert(key, field);
    }
    let value = Value::Object(map);
    let obj = value.as_object().expect("an object");
    let kind =
        obj.get("type").and_then(Value::as_str).unwrap_or_else(|| panic!("reply without type: {text}"));
    for key in obj.keys() {
        assert!(matches!(key.as_str(), "type" | "payload" | "id"), "unexpected field {key} in {text}");
    }
    let payload = obj.get("payload");
    let field = |name: &str| payload.and_then(|p| p.get(name));
    match kind {
        "pong" => assert!(payload.is_none(), "pong with a payload: {text}"),
        "subscribed" | "unsubscribed" => {
            assert!(field("topic").is_some_and(Value::is_string), "{kind} without topic: {text}");
            assert_eq!(payload.and_then(Value::as_object).map(|p| p.len()), Some(1), "{text}");
        }
        "ack" => {
            assert!(field("delivered").is_some_and(Value::is_u64), "ack without delivered: {text}");
            assert!(obj.contains_key("id"), "ack without id: {text}");
            if let Some(topic) = field("topic") {
                assert!(topic.is_string());
            }
        }
        "error" => {
            assert!(field("message").is_some_and(Value::is_string), "error without message: {text}")
        }
        "message" => panic!("a message frame as a direct reply: {text}"),
        other => panic!("reply of unknown type {other}: {text}"),
    }
    (kind.to_string(), value)
}

/// Input: hub config byte, then up to 64 operations by client.
pub fn check_hub_message(data: &[u8]) {
    let mut r = Reader::new(data);
    let cfg = r.u8();
    let config = HubConfig {
        max_topic_length: [256, 8, 1, 16][usize::from(cfg & 3)],
        max_subscriptions: [1024, 2, 0, 3][usize::from((cfg >> 2) & 3)],
        allow_client_broadcast: cfg & 0x10 != 0,
        max_topics: [100_000, 2][usize::from((cfg >> 5) & 1)],
    };
    let mut hub = Hub::new(config.clone());
    let mut model = Model { config, subs: Default::default() };
    let mut queues = Queues::default();
    let mut metrics = Metrics::default();
    for _ in 0..64 {
        if r.is_empty() {
            break;
        }
        let tag = r.u8();
        let from = usize::from(tag >> 4) % CLIENTS;
        let mut reply = Vec::new();
        let errors_before = metrics.error_replies;
        let built = match tag % 8 {
            0 => {
                let text = String::from_utf8_lossy(r.blob(300)).into_owned();
                Built { text, expect: None, id: None, action: Action::None }
            }
            1..=4 => build_message(&mut r, &model, from),
            5 => {
                hub.remove_client(from);
                model.subs[from].clear();
                check_indexes(&hub, &model);
                continue;
            }
            6 => {
                queues.full[from] = !queues.full[from];
                continue;
            }
            _ => {
                hub.handle_binary(from, &mut reply, &mut metrics);
                let frames = parse_server_frames(&reply);
                assert_eq!(frames.len(), 1);
                let (kind, value) = check_reply_shape(&frames[0].payload);
                assert_eq!(kind, "error");
                assert_eq!(value["payload"]["message"], "Binary messages are not supported");
                continue;
            }
        };
        let queued_before: Vec<usize> = queues.frames.iter().map(Vec::len).collect();
        hub.handle_text(from, &built.text, &mut reply, &mut queues, &mut metrics);

        // The direct reply: at most one text frame with a documented shape.
        let frames = parse_server_frames(&reply);
        assert!(frames.len() <= 1, "{} reply frames to {:?}", frames.len(), built.text);
        let reply = frames.first().map(|f| {
            assert_eq!(f.opcode, OpCode::Text);
            let (kind, value) = check_reply_shape(&f.payload);
            (kind, value, String::from_utf8(f.payload.clone()).expect("UTF-8"))
        });
        let is_error = reply.as_ref().is_some_and(|(k, _, _)| k == "error");
        assert_eq!(metrics.error_replies - errors_before, u64::from(is_error), "error replies counted");

        // Fan-out: whatever was queued is one identical `message` frame per recipient.
        let recipients: BTreeSet<ClientId> =
            (0..CLIENTS).filter(|&c| queues.frames[c].len() > queued_before[c]).collect();
        let mut fanned: Option<Rc<[u8]>> = None;
        for &c in &recipients {
            assert_eq!(queues.frames[c].len(), queued_before[c] + 1, "two frames to one client");
            let frame = queues.frames[c].last().expect("queued").clone();
            if let Some(first) = &fanned {
                assert!(
                    Rc::ptr_eq(first, &frame) || first[..] == frame[..],
                    "recipients got different frames"
                );
            }
            fanned = Some(frame);
        }
        let message = fanned.as_ref().map(|frame| {
            let frames = parse_server_frames(frame);
            assert_eq!(frames.len(), 1, "a shared frame is one frame");
            assert_eq!(frames[0].opcode, OpCode::Text);
            let value = parse_message(&frames[0].payload);
            assert_eq!(value["type"], "message", "{value}");
            let payload = value["payload"].as_object().expect("message payload object");
            assert!(payload.contains_key("data"), "{value}");
            for key in payload.keys() {
                assert!(matches!(key.as_str(), "topic" | "data"), "unexpected {key} in {value}");
            }
            value
        });

        match (&built.expect, &reply) {
            (Some(Expect::Nothing), None) | (None, _) => {}
            (Some(Expect::Nothing), Some((_, _, text))) => panic!("reply {text} to {:?}", built.text),
            (Some(Expect::Reply(kind, _)), None) => panic!("no {kind} reply to {:?}", built.text),
            (Some(Expect::Reply(kind, error)), Some((got, value, text))) => {
                assert_eq!(got, kind, "reply {text} to {:?}", built.text);
                if let Some(error) = error {
                    assert_eq!(value["payload"]["message"].as_str(), Some(error.as_str()), "reply {text}");
                }
                match built.id {
                    Some(id) => assert!(
                        text.ends_with(&format!(",\"id\":{id}}}")),
                        "id {id} not echoed byte for byte: {text}"
                    ),
                    None => assert!(value.get("id").is_none(), "id in {text} to {:?}", built.text),
                }
            }
        }

        // Follow the reply in the model (this also covers raw text that happened to be valid),
        // and check fan-out against it.
        let reply_kind = reply.as_ref().map(|(k, _, _)| k.as_str());
        let reply_topic =
            reply.as_ref().and_then(|(_, v, _)| v["payload"]["topic"].as_str().map(String::from));
        match reply_kind {
            Some("subscribed") => {
                let topic = reply_topic.expect("subscribed topic");
                if let Action::Subscribe(t) = &built.action {
                    assert_eq!(&topic, t);
                }
                model.subs[from].insert(topic);
            }
            Some("unsubscribed") => {
                let topic = reply_topic.expect("unsubscribed topic");
                if let Action::Unsubscribe(t) = &built.action {
                    assert_eq!(&topic, t);
                }
                model.subs[from].remove(&topic);
            }
            _ => {}
        }
        let accepting = |set: &BTreeSet<ClientId>| -> BTreeSet<ClientId> {
            set.iter().copied().filter(|&c| !queues.full[c]).collect()
        };
        match (&built.action, &message) {
            (Action::Publish(topic, data), Some(value)) => {
                assert_eq!(recipients, accepting(&model.subscribers(topic)), "publish to {topic:?}");
                assert_eq!(value["payload"]["topic"].as_str(), Some(topic.as_str()));
                let sent: Value = serde_json::from_str(data).expect("table data is JSON");
                assert_eq!(value["payload"]["data"], sent);
            }
            (Action::Publish(topic, _), None) => {
                assert!(
                    accepting(&model.subscribers(topic)).is_empty(),
                    "publish to {topic:?} reached nobody"
                );
            }
            (Action::Broadcast(data), _) => {
                assert_eq!(recipients, accepting(&(0..CLIENTS).collect()), "broadcast recipients");
                // With every client refusing, no frame is seen (and none needs to be).
                if let Some(value) = &message {
                    assert!(value["payload"].get("topic").is_none());
                    let sent: Value = serde_json::from_str(data).expect("table data is JSON");
                    assert_eq!(value["payload"]["data"], sent);
                }
            }
            (_, Some(value)) => {
                // Raw text that published: recipients are the topic's accepting subscribers.
                if let Some(topic) = value["payload"]["topic"].as_str() {
                    assert_eq!(recipients, accepting(&model.subscribers(topic)), "publish to {topic:?}");
                } else {
                    assert!(model.config.allow_client_broadcast, "broadcast while disabled");
                    assert_eq!(recipients, accepting(&(0..CLIENTS).collect()));
                }
            }
            (_, None) => {}
        }
        if let (Some("ack"), Some(value)) = (reply_kind, reply.as_ref().map(|(_, v, _)| v)) {
            let delivered = value["payload"]["delivered"].as_u64().expect("delivered");
            assert_eq!(delivered, recipients.len() as u64, "ack counts the recipients");
        }
        check_indexes(&hub, &model);
    }
}

/// The hub's indexes agree with the model.
fn check_indexes(hub: &Hub, model: &Model) {
    let topics = model.topics();
    assert_eq!(hub.topic_count(), topics.len(), "topic count");
    for c in 0..CLIENTS {
        assert_eq!(hub.subscription_count(c), model.subs[c].len(), "subscriptions of client {c}");
    }
    let mut seen = BTreeMap::new();
    for topic in topics {
        let got: Vec<ClientId> = hub.subscribers(topic).to_vec();
        let set: BTreeSet<ClientId> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "duplicate subscriber of {topic:?}");
        assert_eq!(set, model.subscribers(topic), "subscribers of {topic:?}");
        seen.insert(topic, set);
    }
    for (_, t) in TOPICS {
        if !seen.contains_key(&t.to_string()) {
            assert!(hub.subscribers(t).is_empty(), "stale subscribers of {t:?}");
        }
    }
}
