//! The hub's waits on a backplane, driven by hand: what is held, what each completion sends,
//! in which order, and that a client that leaves costs nothing later.

use serde_json::{json, Value};

use super::tests::FakeOutbox;
use super::*;
use crate::backplane::shared::{Fetched, Numbered};
use crate::backplane::Ticket;

/// A position request: topic, `since` (offset, epoch), ticket.
type Fetch = (String, Option<(u64, String)>, Ticket);

/// A backplane that records what the hub asks of it.
#[derive(Default)]
struct FakeBackplane {
    history: bool,
    /// `topic_wanted` answers this (Redis up: it will confirm).
    up: bool,
    wanted: Vec<String>,
    fetches: Vec<Fetch>,
    appends: Vec<(String, String, Option<Ticket>)>,
}

impl Backplane for FakeBackplane {
    fn publish(&mut self, _: &str, _: &RawValue) -> Relay {
        Relay::Sent
    }
    fn broadcast(&mut self, _: &RawValue) -> Relay {
        Relay::Sent
    }
    fn topic_wanted(&mut self, topic: &str) -> bool {
        self.wanted.push(topic.into());
        self.up
    }
    fn topic_unwanted(&mut self, topic: &str) {
        self.wanted.retain(|t| t != topic);
    }
    fn keeps_history(&self) -> bool {
        self.history
    }
    fn append(&mut self, topic: &str, data: &RawValue, ticket: Option<Ticket>) -> Relay {
        if !self.up {
            return Relay::Failed;
        }
        self.appends.push((topic.into(), data.get().into(), ticket));
        Relay::Sent
    }
    fn fetch_position(&mut self, topic: &str, since: Option<Since<'_>>, ticket: Ticket) -> bool {
        if !self.up {
            return false;
        }
        self.fetches.push((topic.into(), since.map(|s| (s.offset, s.epoch.into())), ticket));
        true
    }
}

/// The fake outbox with a backplane attached.
struct Relayed {
    outbox: FakeOutbox,
    backplane: FakeBackplane,
}

impl Outbox for Relayed {
    fn deliver(&mut self, client: ClientId, message: &SharedMessage) -> bool {
        self.outbox.deliver(client, message)
    }
    fn deliver_all(&mut self, message: &SharedMessage) -> usize {
        self.outbox.deliver_all(message)
    }
    fn backplane(&mut self) -> Option<&mut dyn Backplane> {
        Some(&mut self.backplane)
    }
    fn numbered(&mut self, caller: ClientId, numbered: Option<(&str, history::Offset)>) {
        self.outbox.numbered(caller, numbered);
    }
}

const EPOCH: &str = "0123456789abcdef";

struct Node {
    hub: Hub,
    net: Relayed,
    metrics: Metrics,
}

impl Node {
    fn new(history: bool, clients: impl IntoIterator<Item = ClientId>) -> Node {
        Node {
            hub: Hub::new(HubConfig::default()),
            net: Relayed {
                outbox: FakeOutbox::with_clients(clients),
                backplane: FakeBackplane { history, up: true, ..FakeBackplane::default() },
            },
            metrics: Metrics::default(),
        }
    }

    /// Sends `msg` from `client`; returns its direct replies.
    fn send(&mut self, client: ClientId, msg: Value) -> Vec<Value> {
        let mut reply = Vec::new();
        self.hub.handle_text(client, &msg.to_string(), &mut reply, &mut self.net, &mut self.metrics);
        super::tests::frames(&reply)
    }

    /// Everything `client` got through the outbox so far, then forgotten.
    fn take(&mut self, client: ClientId) -> Vec<Value> {
        let got = self.net.outbox.received(client);
        self.net.outbox.queues.get_mut(&client).unwrap().clear();
        got
    }

    fn numbered(&mut self, topic: &str, offset: u64, data: &str) {
        let data: &RawValue = serde_json::from_str(data).unwrap();
        let message = Numbered { epoch: EPOCH, offset, data };
        // Messages from the backplane come through an outbox without it.
        assert!(self.hub.deliver_numbered(topic, message, &mut self.net.outbox, &mut self.metrics));
    }

    fn position(
        &mut self,
        topic: &str,
        ticket: Ticket,
        offset: u64,
        recovered: Option<bool>,
        replay: &[(u64, &str)],
    ) {
        let raws: Vec<Box<RawValue>> =
            replay.iter().map(|(_, d)| RawValue::from_string((*d).to_string()).unwrap()).collect();
        let replay = replay.iter().zip(&raws).map(|((o, _), r)| (*o, &**r)).collect();
        let fetched = Fetched { epoch: EPOCH, offset, recovered, replay };
        self.hub.position_ready(topic, ticket, Some(fetched), &mut self.net.outbox);
    }
}

fn subscribed(payload: Value) -> Value {
    json!({"type":"subscribed","payload":payload})
}

fn message(topic: &str, data: Value, offset: u64) -> Value {
    json!({"type":"message","payload":{"topic":topic,"data":data,"offset":offset}})
}

#[test]
fn a_first_subscriber_waits_for_the_confirmation_and_misses_nothing_after_it() {
    let mut node = Node::new(false, [1, 2]);
    assert!(node.send(1, json!({"type":"subscribe","payload":{"topic":"t"},"id":1})).is_empty(), "held");
    assert_eq!(node.net.backplane.wanted, ["t"]);
    // A second subscriber before the confirmation waits too; a local publish skips both.
    assert!(node.send(2, json!({"type":"subscribe","payload":{"topic":"t"}})).is_empty());
    node.send(2, json!({"type":"publish","payload":{"topic":"t","data":0}}));
    assert_eq!((node.take(1), node.take(2)), (vec![], vec![]));
    node.hub.topic_confirmed("t", &mut node.net);
    assert_eq!(node.take(1), [json!({"type":"subscribed","payload":{"topic":"t"},"id":1})]);
    assert_eq!(node.take(2), [subscribed(json!({"topic":"t"}))]);
    // Confirmed: later subscribers are answered at once, and everyone gets live messages.
    let mut three = Node::new(false, [3]);
    three.net.backplane.up = false;
    assert_eq!(
        three.send(3, json!({"type":"subscribe","payload":{"topic":"t"}})),
        [subscribed(json!({"topic":"t"}))],
        "Redis down: at once"
    );
    node.send(2, json!({"type":"publish","payload":{"topic":"t","data":1}}));
    assert_eq!(node.take(1), [json!({"type":"message","payload":{"topic":"t","data":1}})]);
    assert_eq!(node.hub.waiting(), (0, 0));
}

#[test]
fn a_recovery_sends_reply_then_replay_then_the_live_messages_after_it() {
    let mut node = Node::new(true, [1]);
    let since = json!({"offset":3,"epoch":EPOCH});
    assert!(node.send(1, json!({"type":"subscribe","payload":{"topic":"t","since":since}})).is_empty());
    assert!(node.net.backplane.fetches.is_empty(), "the position is asked once the channel is confirmed");
    node.hub.topic_confirmed("t", &mut node.net);
    let (topic, since, ticket) = node.net.backplane.fetches[0].clone();
    assert_eq!((topic.as_str(), since), ("t", Some((3, EPOCH.to_string()))));
    // Live messages while the position is on its way: 5 is also in the replay, 6 is not.
    node.numbered("t", 5, "\"e\"");
    node.numbered("t", 6, "\"f\"");
    assert!(node.take(1).is_empty(), "buffered, not sent before `subscribed`");
    node.position("t", ticket, 5, Some(true), &[(4, "\"d\""), (5, "\"e\"")]);
    assert_eq!(
        node.take(1),
        [
            subscribed(json!({"topic":"t","offset":5,"epoch":EPOCH,"recovered":true})),
            message("t", json!("d"), 4),
            message("t", json!("e"), 5),
            message("t", json!("f"), 6),
        ]
    );
    node.numbered("t", 7, "\"g\"");
    assert_eq!(node.take(1), [message("t", json!("g"), 7)]);
}

#[test]
fn not_recovered_means_the_position_then_only_what_follows_it() {
    let mut node = Node::new(true, [1, 2]);
    // Client 2 makes the topic confirmed; client 1 then asks its position at once.
    node.send(2, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.hub.topic_confirmed("t", &mut node.net);
    let since = json!({"offset":1,"epoch":"ffffffffffffffff"});
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t","since":since}}));
    assert_eq!(node.net.backplane.fetches.len(), 2);
    let ticket = node.net.backplane.fetches[1].2;
    node.numbered("t", 9, "9");
    node.numbered("t", 10, "10");
    node.position("t", ticket, 9, Some(false), &[]);
    assert_eq!(
        node.take(1),
        [
            subscribed(json!({"topic":"t","offset":9,"epoch":EPOCH,"recovered":false})),
            message("t", json!(10), 10)
        ]
    );
}

#[test]
fn publishes_are_acked_with_their_offset_or_refused_while_redis_is_down() {
    let mut node = Node::new(true, [1]);
    assert!(node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":"p"})).is_empty());
    assert!(node.send(1, json!({"type":"publish","payload":{"topic":"t","data":2}})).is_empty());
    let tickets: Vec<Option<Ticket>> = node.net.backplane.appends.iter().map(|a| a.2).collect();
    assert!(tickets[0].is_some() && tickets[1].is_none(), "only a publish with an id waits for its ack");
    node.hub.append_done(tickets[0].unwrap(), Some((EPOCH, 42)), &mut node.net.outbox, &mut node.metrics);
    assert_eq!(
        node.take(1),
        [json!({"type":"ack","payload":{"topic":"t","offset":42,"epoch":EPOCH,"backplane":true},"id":"p"})]
    );
    node.net.backplane.up = false;
    assert_eq!(
        node.send(1, json!({"type":"publish","payload":{"topic":"t","data":3},"id":4})),
        [json!({"type":"error","payload":{"message":"History unavailable: Redis is down"},"id":4})]
    );
    assert_eq!(node.metrics.history_unavailable, 1);
}

#[test]
fn a_caller_hears_its_offset_or_the_failure_through_the_outbox() {
    // Caller 7 (an HTTP connection): not a protocol client, it never gets a frame.
    let mut node = Node::new(true, [1]);
    let data: &RawValue = serde_json::from_str("{\"n\":1}").unwrap();
    let publish = |node: &mut Node| node.hub.publish_as(7, "t", data, &mut node.net, &mut node.metrics);
    assert_eq!(publish(&mut node), Ok(None), "waits for its offset");
    assert_eq!(node.net.backplane.appends[0].1, "{\"n\":1}");
    let ticket = node.net.backplane.appends[0].2.expect("a ticket: someone waits");
    assert_eq!(node.hub.waiting(), (0, 1));
    node.hub.append_done(ticket, Some((EPOCH, 42)), &mut node.net.outbox, &mut node.metrics);
    assert_eq!(node.net.outbox.answers, [(7, Some((EPOCH.to_string(), 42)))]);
    assert_eq!(node.hub.waiting(), (0, 0));
    // Failed late (an error reply), or lost with the connection: `None`, no error frame.
    assert_eq!(publish(&mut node), Ok(None));
    let ticket = node.net.backplane.appends[1].2.unwrap();
    node.hub.append_done(ticket, None, &mut node.net.outbox, &mut node.metrics);
    assert_eq!(publish(&mut node), Ok(None));
    node.hub.backplane_down(&mut node.net.outbox, &mut node.metrics);
    assert_eq!(node.net.outbox.answers[1..], [(7, None), (7, None)]);
    assert_eq!(node.metrics.error_replies, 0, "no protocol error was sent");
    // Gone before the answer: it is dropped. Redis down: refused at once, counted.
    assert_eq!(publish(&mut node), Ok(None));
    node.hub.remove_client(7);
    assert_eq!(node.hub.waiting(), (0, 0));
    let ticket = node.net.backplane.appends[3].2.unwrap();
    node.hub.append_done(ticket, Some((EPOCH, 43)), &mut node.net.outbox, &mut node.metrics);
    assert_eq!(node.net.outbox.answers.len(), 3);
    node.net.backplane.up = false;
    assert_eq!(publish(&mut node), Err(HubError::Unavailable));
    assert_eq!(node.metrics.history_unavailable, 1);
    assert!(node.take(1).is_empty());
}

#[test]
fn callers_waiting_count_against_the_acks_in_flight() {
    let mut node = Node::new(true, [1]);
    let data: &RawValue = serde_json::from_str("1").unwrap();
    for caller in 0..pending::MAX_PENDING_ACKS {
        assert_eq!(node.hub.publish_as(caller, "t", data, &mut node.net, &mut node.metrics), Ok(None));
    }
    let over = pending::MAX_PENDING_ACKS;
    assert_eq!(
        node.hub.publish_as(over, "t", data, &mut node.net, &mut node.metrics),
        Err(HubError::Unavailable)
    );
    let refused = node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":1}));
    assert_eq!(refused[0]["payload"]["message"], "History unavailable: Redis is down");
    assert_eq!(node.metrics.history_unavailable, 2);
    // One answered: room for one more.
    let ticket = node.net.backplane.appends[0].2.unwrap();
    node.hub.append_done(ticket, Some((EPOCH, 1)), &mut node.net.outbox, &mut node.metrics);
    assert_eq!(node.hub.publish_as(over, "t", data, &mut node.net, &mut node.metrics), Ok(None));
}

#[test]
fn a_client_that_leaves_while_waiting_costs_nothing_later() {
    let mut node = Node::new(true, [1, 2]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":1}));
    assert_eq!(node.hub.waiting(), (1, 1));
    node.hub.topic_confirmed("t", &mut node.net);
    node.hub.remove_client(1);
    assert_eq!(node.hub.waiting(), (0, 0));
    let fetch = node.net.backplane.fetches[0].2;
    let append = node.net.backplane.appends[0].2.unwrap();
    node.position("t", fetch, 0, None, &[]);
    node.hub.append_done(append, Some((EPOCH, 1)), &mut node.net.outbox, &mut node.metrics);
    assert!(node.take(1).is_empty() && node.take(2).is_empty());
}

#[test]
fn unsubscribing_while_held_answers_subscribed_first() {
    let mut node = Node::new(true, [1]);
    node.send(
        1,
        json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":0,"epoch":EPOCH}},"id":1}),
    );
    let replies = node.send(1, json!({"type":"unsubscribe","payload":{"topic":"t"},"id":2}));
    assert_eq!(node.take(1), [json!({"type":"subscribed","payload":{"topic":"t","recovered":false},"id":1})]);
    assert_eq!(replies, [json!({"type":"unsubscribed","payload":{"topic":"t"},"id":2})]);
    assert_eq!(node.hub.waiting(), (0, 0));
    node.hub.topic_confirmed("t", &mut node.net);
    assert!(node.take(1).is_empty());
}

#[test]
fn redis_lost_answers_every_wait_at_once() {
    let mut node = Node::new(true, [1, 2]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"a","since":{"offset":0,"epoch":EPOCH}}}));
    node.send(2, json!({"type":"subscribe","payload":{"topic":"b"}}));
    node.hub.topic_confirmed("b", &mut node.net);
    node.numbered("b", 3, "3");
    node.send(2, json!({"type":"publish","payload":{"topic":"b","data":1},"id":5}));
    node.hub.backplane_down(&mut node.net.outbox, &mut node.metrics);
    assert_eq!(node.take(1), [subscribed(json!({"topic":"a","recovered":false}))]);
    assert_eq!(
        node.take(2),
        [
            subscribed(json!({"topic":"b"})),
            message("b", json!(3), 3),
            json!({"type":"error","payload":{"message":"History unavailable: Redis is down"},"id":5}),
        ]
    );
    assert_eq!(node.hub.waiting(), (0, 0));
}

#[test]
fn a_full_buffer_answers_from_the_newest_message_seen() {
    let mut node = Node::new(true, [1]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":0,"epoch":EPOCH}}}));
    node.hub.topic_confirmed("t", &mut node.net);
    let ticket = node.net.backplane.fetches[0].2;
    for offset in 1..=(pending::MAX_BUFFERED as u64 + 10) {
        node.numbered("t", offset, "0");
    }
    node.position("t", ticket, 5, Some(true), &[]);
    let newest = pending::MAX_BUFFERED as u64 + 10;
    assert_eq!(
        node.take(1),
        [subscribed(json!({"topic":"t","offset":newest,"epoch":EPOCH,"recovered":false}))]
    );
    node.numbered("t", newest + 1, "1");
    assert_eq!(node.take(1), [message("t", json!(1), newest + 1)]);
}

#[test]
fn a_new_epoch_or_a_gap_is_announced_as_not_recovered() {
    let mut node = Node::new(true, [1]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.hub.topic_confirmed("t", &mut node.net);
    let ticket = node.net.backplane.fetches[0].2;
    node.position("t", ticket, 4, None, &[]);
    node.take(1);
    node.numbered("t", 5, "5");
    assert_eq!(node.take(1), [message("t", json!(5), 5)], "follows the position");
    // Offsets 6 and 7 never came (the connection to Redis was lost meanwhile).
    node.numbered("t", 8, "8");
    assert_eq!(
        node.take(1),
        [
            subscribed(json!({"topic":"t","offset":7,"epoch":EPOCH,"recovered":false})),
            message("t", json!(8), 8)
        ]
    );
    // The topic's history started afresh (its keys expired): offsets restart in a new epoch.
    let data: &RawValue = serde_json::from_str("1").unwrap();
    let fresh = Numbered { epoch: "fedcba9876543210", offset: 1, data };
    node.hub.deliver_numbered("t", fresh, &mut node.net.outbox, &mut node.metrics);
    assert_eq!(
        node.take(1),
        [
            subscribed(json!({"topic":"t","offset":0,"epoch":"fedcba9876543210","recovered":false})),
            json!({"type":"message","payload":{"topic":"t","data":1,"offset":1}}),
        ]
    );
    node.hub.remove_client(1);
    assert!(node.hub.waits.streams.is_empty(), "no subscriber left: nothing kept");
}

#[test]
fn a_subscribed_publisher_reads_its_message_before_its_ack() {
    let mut node = Node::new(true, [1]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.hub.topic_confirmed("t", &mut node.net);
    let fetch = node.net.backplane.fetches[0].2;
    node.position("t", fetch, 0, None, &[]);
    node.take(1);
    node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":"p"}));
    let ticket = node.net.backplane.appends[0].2.unwrap();
    // The offset comes back before the copy (two Redis connections): the ack waits.
    node.hub.append_done(ticket, Some((EPOCH, 1)), &mut node.net.outbox, &mut node.metrics);
    assert!(node.take(1).is_empty());
    assert_eq!(node.hub.waiting(), (0, 1));
    node.numbered("t", 1, "1");
    assert_eq!(
        node.take(1),
        [
            message("t", json!(1), 1),
            json!({"type":"ack","payload":{"topic":"t","offset":1,"epoch":EPOCH,"backplane":true},"id":"p"}),
        ]
    );
    // The copy first this time: the ack goes at once.
    node.send(1, json!({"type":"publish","payload":{"topic":"t","data":2},"id":"q"}));
    node.numbered("t", 2, "2");
    let ticket = node.net.backplane.appends[1].2.unwrap();
    node.hub.append_done(ticket, Some((EPOCH, 2)), &mut node.net.outbox, &mut node.metrics);
    assert_eq!(node.take(1).len(), 2);
    assert_eq!(node.hub.waiting(), (0, 0));
}

#[test]
fn ids_waiting_for_their_ack_are_bounded_in_bytes() {
    let mut node = Node::new(true, [1]);
    let id = "x".repeat(60_000);
    let fits = pending::MAX_PENDING_ACK_BYTES / (id.len() + 3);
    for _ in 0..fits {
        assert!(node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":id})).is_empty());
    }
    let refused = node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":id}));
    assert_eq!(refused[0]["payload"]["message"], "History unavailable: Redis is down");
    assert_eq!(node.hub.waiting(), (0, fits));
    // Small ids still fit; a client that leaves gives its bytes back.
    assert!(node.send(1, json!({"type":"publish","payload":{"topic":"t","data":1},"id":1})).is_empty());
    node.hub.remove_client(1);
    assert_eq!(node.hub.waiting(), (0, 0));
}

#[test]
fn ids_of_held_subscribes_are_bounded_in_bytes() {
    let clients: Vec<ClientId> = (1..=200).collect();
    let mut node = Node::new(false, clients.clone());
    let id = "x".repeat(60_000);
    let fits = pending::MAX_HELD_ID_BYTES / (id.len() + 2);
    for &c in &clients[..fits] {
        assert!(node.send(c, json!({"type":"subscribe","payload":{"topic":"t"},"id":id})).is_empty(), "held");
    }
    // Over the bound: answered at once, local only, rather than held.
    let now = node.send(clients[fits], json!({"type":"subscribe","payload":{"topic":"t"},"id":id}));
    assert_eq!(now[0]["type"], "subscribed");
    assert_eq!(node.hub.waiting(), (fits, 0));
    node.hub.remove_client(clients[0]);
    node.hub.topic_confirmed("t", &mut node.net);
    assert_eq!(node.hub.waiting(), (0, 0));
    assert_eq!(node.take(clients[1])[0]["type"], "subscribed");
}

#[test]
fn an_offset_of_zero_from_redis_costs_nothing() {
    // Only garbage put into Redis by hand can say offset 0 (here in another epoch, so the
    // sequence breaks and a notice is built from it): it must not underflow.
    let mut node = Node::new(true, [1]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.hub.topic_confirmed("t", &mut node.net);
    let ticket = node.net.backplane.fetches[0].2;
    node.position("t", ticket, 7, None, &[]);
    node.take(1);
    let data: &RawValue = serde_json::from_str("0").unwrap();
    let odd = Numbered { epoch: "fedcba9876543210", offset: 0, data };
    assert!(node.hub.deliver_numbered("t", odd, &mut node.net.outbox, &mut node.metrics));
    let got = node.take(1);
    assert_eq!(got[0]["payload"]["offset"], 0);
    assert_eq!(got[1]["payload"]["offset"], 0);
}

#[test]
fn a_live_subscriber_that_subscribes_again_misses_nothing() {
    let mut node = Node::new(true, [1]);
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.hub.topic_confirmed("t", &mut node.net);
    let ticket = node.net.backplane.fetches[0].2;
    node.position("t", ticket, 0, None, &[]);
    node.numbered("t", 1, "1");
    assert_eq!(
        node.take(1),
        [subscribed(json!({"topic":"t","offset":0,"epoch":EPOCH})), message("t", json!(1), 1)]
    );
    // Subscribed and live, it asks again: 2 and 3 come while the position is on its way, and
    // the position (read after both were published) is 3. The client was getting them live.
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    let ticket = node.net.backplane.fetches[1].2;
    node.numbered("t", 2, "2");
    node.numbered("t", 3, "3");
    node.position("t", ticket, 3, None, &[]);
    node.numbered("t", 4, "4");
    assert_eq!(
        node.take(1),
        [
            message("t", json!(2), 2),
            message("t", json!(3), 3),
            subscribed(json!({"topic":"t","offset":3,"epoch":EPOCH})),
            message("t", json!(4), 4),
        ]
    );
}

#[test]
fn a_position_read_before_the_channel_caught_up_is_not_followed_by_older_messages() {
    let mut node = Node::new(true, [1, 2]);
    node.send(2, json!({"type":"subscribe","payload":{"topic":"t"}}));
    node.hub.topic_confirmed("t", &mut node.net);
    node.position("t", node.net.backplane.fetches[0].2, 0, None, &[]);
    node.numbered("t", 1, "1");
    node.take(2);
    // Client 1 recovers from 0. Redis published 2 before it read the position (2), but the
    // reply on the PUBLISH connection is read before message 2 on the subscribe connection.
    let since = json!({"offset":0,"epoch":EPOCH});
    node.send(1, json!({"type":"subscribe","payload":{"topic":"t","since":since}}));
    node.position("t", node.net.backplane.fetches[1].2, 2, Some(true), &[(1, "1"), (2, "2")]);
    node.numbered("t", 2, "2");
    node.numbered("t", 3, "3");
    assert_eq!(
        node.take(1),
        [
            subscribed(json!({"topic":"t","offset":2,"epoch":EPOCH,"recovered":true})),
            message("t", json!(1), 1),
            message("t", json!(2), 2),
            message("t", json!(3), 3),
        ],
        "2 once, from the replay"
    );
    assert_eq!(node.take(2), [message("t", json!(2), 2), message("t", json!(3), 3)]);
}
