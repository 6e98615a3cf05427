//! The hub under connection tokens: permission checks and refresh.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::tests::{frames, FakeOutbox};
use super::*;
use crate::auth::{Refusal, VerifierConfig};

const SECRET: &[u8] = b"hub access test secret";
const NOW_MS: u64 = 1_767_225_600_000;

fn verifier() -> Verifier {
    Verifier::new(&VerifierConfig { secret: Some(SECRET.to_vec()), leeway_secs: 30, ..Default::default() })
        .unwrap()
}

fn token(claims: Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn grant(claims: Value) -> Grant {
    verifier().verify(&token(claims), NOW_MS).unwrap()
}

struct Harness {
    hub: Hub,
    outbox: FakeOutbox,
    metrics: Metrics,
    verifier: Verifier,
}

impl Harness {
    fn new(config: HubConfig) -> Harness {
        Harness {
            hub: Hub::new(config),
            outbox: FakeOutbox::with_clients([1, 2]),
            metrics: Metrics::default(),
            verifier: verifier(),
        }
    }

    fn send(&mut self, from: ClientId, grant: &mut Grant, text: &str) -> Vec<Value> {
        let mut reply = Vec::new();
        let access = Access::Token { grant, verifier: &self.verifier, now_unix_ms: NOW_MS };
        self.hub.handle_text_as(from, access, text, &mut reply, &mut self.outbox, &mut self.metrics);
        frames(&reply)
    }
}

fn denied(id: u64) -> Vec<Value> {
    vec![json!({"type":"error","payload":{"message":"Permission denied"},"id":id})]
}

fn sub_msg(topic: &str, id: u64) -> String {
    json!({"type":"subscribe","payload":{"topic":topic},"id":id}).to_string()
}

fn pub_msg(topic: &str, id: u64) -> String {
    json!({"type":"publish","payload":{"topic":topic,"data":1},"id":id}).to_string()
}

#[test]
fn what_the_claims_do_not_grant_is_denied() {
    let mut h = Harness::new(HubConfig { allow_client_broadcast: true, ..HubConfig::default() });
    let mut g = grant(json!({"sub":"7","exp":NOW_MS / 1000 + 60,
        "wshub":{"subscribe":["news.*","user.{sub}"],"publish":["chat"]}}));
    #[rustfmt::skip]
    let cases: Vec<(String, Vec<Value>)> = vec![
        (sub_msg("news.sport", 1), vec![json!({"type":"subscribed","payload":{"topic":"news.sport"},"id":1})]),
        (sub_msg("news", 2), denied(2)),
        (sub_msg("user.7", 3), vec![json!({"type":"subscribed","payload":{"topic":"user.7"},"id":3})]),
        (sub_msg("user.8", 4), denied(4)),
        (sub_msg("chat", 5), denied(5)),
        (pub_msg("chat", 6), vec![json!({"type":"ack","payload":{"topic":"chat","delivered":0},"id":6})]),
        (pub_msg("news.sport", 7), denied(7)),
        (pub_msg("user.7", 8), denied(8)),
        // The claim decides broadcasts, even with --allow-client-broadcast.
        (json!({"type":"broadcast","payload":{"data":1},"id":9}).to_string(), denied(9)),
        // Unsubscribing is always allowed; ping too.
        (json!({"type":"unsubscribe","payload":{"topic":"secret"},"id":10}).to_string(),
            vec![json!({"type":"unsubscribed","payload":{"topic":"secret"},"id":10})]),
        (json!({"type":"ping","id":11}).to_string(), vec![json!({"type":"pong","id":11})]),
        // Format errors stay format errors.
        (sub_msg("", 12), vec![json!({"type":"error","payload":{"message":"Topic must not be empty"},"id":12})]),
    ];
    for (text, expected) in cases {
        assert_eq!(h.send(1, &mut g, &text), expected, "{text}");
    }
    assert_eq!(h.metrics.auth.permission_denied, 6);
    assert_eq!(h.hub.subscription_count(1), 2);
    assert!(h.outbox.received(2).is_empty(), "a denied publish reaches nobody");
}

#[test]
fn broadcast_when_the_claim_says_so_even_if_the_switch_is_off() {
    let mut h = Harness::new(HubConfig::default());
    let mut g = grant(json!({"sub":"op","exp":NOW_MS / 1000 + 60,"wshub":{"broadcast":true}}));
    let replies = h.send(1, &mut g, r#"{"type":"broadcast","payload":{"data":"hi"},"id":1}"#);
    assert_eq!(replies, vec![json!({"type":"ack","payload":{"delivered":2},"id":1})]);
    assert_eq!(h.outbox.received(2), vec![json!({"type":"message","payload":{"data":"hi"}})]);
}

#[test]
fn refresh_extends_and_narrows() {
    let mut h = Harness::new(HubConfig::default());
    let exp = NOW_MS / 1000 + 60;
    let mut g = grant(json!({"sub":"7","exp":exp,"wshub":{"subscribe":["a","b.*","c"]}}));
    for t in ["a", "b.1", "b.2", "c"] {
        assert_eq!(h.send(1, &mut g, &sub_msg(t, 0))[0]["type"], "subscribed");
    }
    let narrower =
        token(json!({"sub":"7","exp":exp + 600,"wshub":{"subscribe":["a","b.2"],"publish":["a"]}}));
    let text = json!({"type":"refresh","payload":{"token":narrower},"id":"r"}).to_string();
    let replies = h.send(1, &mut g, &text);
    let (last, unsubscribed) = replies.split_last().unwrap();
    assert_eq!(last, &json!({"type":"refreshed","payload":{"exp":exp + 600},"id":"r"}));
    let mut dropped: Vec<&str> = unsubscribed
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "unsubscribed");
            assert!(m.get("id").is_none());
            m["payload"]["topic"].as_str().unwrap()
        })
        .collect();
    dropped.sort();
    assert_eq!(dropped, ["b.1", "c"]);
    assert_eq!(g.exp_ms, (exp + 600) * 1000);
    assert_eq!(h.hub.subscription_count(1), 2);
    assert_eq!(h.hub.subscribers("b.1"), &[] as &[ClientId]);
    assert!(g.may_publish("a"), "the new permissions apply");
    assert_eq!(h.metrics.auth.refreshes, 1);
}

#[test]
fn a_bad_refresh_changes_nothing() {
    let mut h = Harness::new(HubConfig::default());
    let exp = NOW_MS / 1000 + 60;
    let mut g = grant(json!({"sub":"7","exp":exp,"wshub":{"subscribe":["a"]}}));
    h.send(1, &mut g, &sub_msg("a", 0));
    let before = g.clone();
    let refresh = |t: &str| json!({"type":"refresh","payload":{"token":t},"id":5}).to_string();
    let error = |m: &str| vec![json!({"type":"error","payload":{"message":m},"id":5})];
    let other_sub = token(json!({"sub":"8","exp":exp + 600}));
    let expired = token(json!({"sub":"7","exp":NOW_MS / 1000 - 31}));
    let forged =
        encode(&Header::default(), &json!({"sub":"7","exp":exp + 600}), &EncodingKey::from_secret(b"x"))
            .unwrap();
    assert_eq!(h.send(1, &mut g, &refresh(&other_sub)), error("Token refused: another subject"));
    assert_eq!(h.send(1, &mut g, &refresh(&expired)), error(&format!("Token refused: {}", Refusal::Expired)));
    assert_eq!(h.send(1, &mut g, &refresh(&forged)), error("Token refused: bad token signature"));
    assert_eq!(h.send(1, &mut g, &refresh("garbage")), error("Token refused: malformed token"));
    assert_eq!(
        h.send(1, &mut g, r#"{"type":"refresh","payload":{},"id":5}"#),
        error("Invalid message format")
    );
    assert_eq!(g, before);
    assert_eq!(h.hub.subscription_count(1), 1);
    assert_eq!(h.metrics.auth.refreshes_refused, 4);
}

#[test]
fn refresh_without_tokens_is_refused() {
    let mut h = Harness::new(HubConfig::default());
    let mut reply = Vec::new();
    h.hub.handle_text(
        1,
        r#"{"type":"refresh","payload":{"token":"x"},"id":1}"#,
        &mut reply,
        &mut h.outbox,
        &mut h.metrics,
    );
    assert_eq!(
        frames(&reply),
        vec![json!({"type":"error","payload":{"message":"Authentication is not enabled"},"id":1})]
    );
}
