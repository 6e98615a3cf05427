//! History and recovery through the hub: the wire format, the order of reply, replay and live
//! messages, and (proptest) exactness over publish/disconnect/reconnect interleavings.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::history::{HistoryConfig, MemoryHistory};
use super::tests::{frames, FakeOutbox};
use super::*;

const SEC: Millis = 1000;

fn hub(size: usize, ttl: Millis, max_bytes: usize, seed: u64) -> Hub {
    let store = MemoryHistory::new(HistoryConfig { size, ttl, max_bytes, max_topics: usize::MAX }, seed);
    Hub::new(HubConfig::default()).with_history(Box::new(store))
}

struct Net {
    hub: Hub,
    outbox: FakeOutbox,
    metrics: Metrics,
}

impl Net {
    fn new(hub: Hub) -> Net {
        Net { hub, outbox: FakeOutbox::default(), metrics: Metrics::default() }
    }

    fn connect(&mut self, id: ClientId) {
        self.outbox.queues.insert(id, Vec::new());
    }

    fn disconnect(&mut self, id: ClientId) {
        self.outbox.queues.remove(&id);
        self.hub.remove_client(id);
    }

    /// Sends `msg` from `id`; returns the direct replies, then what the outbox got for `id`
    /// during the call, as one sequence in the order the client would read them (the reactor
    /// queues outbox deliveries before the reply buffer).
    fn send(&mut self, id: ClientId, msg: Value) -> Vec<Value> {
        let before = self.outbox.queues.get(&id).map_or(0, Vec::len);
        let mut reply = Vec::new();
        self.hub.handle_text(id, &msg.to_string(), &mut reply, &mut self.outbox, &mut self.metrics);
        let mut out: Vec<Value> = self
            .outbox
            .queues
            .get(&id)
            .map_or(&[][..], |q| &q[before..])
            .iter()
            .flat_map(|f| frames(f))
            .collect();
        out.extend(frames(&reply));
        out
    }

    fn publish(&mut self, topic: &str, data: Value) {
        let raw = serde_json::value::to_raw_value(&data).unwrap();
        self.hub.publish(topic, &raw, &mut self.outbox, &mut self.metrics).unwrap();
    }

    /// Everything `id` was delivered through the outbox so far (and forgets it).
    fn take(&mut self, id: ClientId) -> Vec<Value> {
        std::mem::take(self.outbox.queues.get_mut(&id).unwrap()).iter().flat_map(|f| frames(f)).collect()
    }
}

#[test]
fn without_history_since_is_answered_not_recovered() {
    let mut net = Net::new(Hub::new(HubConfig::default()));
    net.connect(1);
    let got = net
        .send(1, json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":3,"epoch":"x"}},"id":1}));
    assert_eq!(got, [json!({"type":"subscribed","payload":{"topic":"t","recovered":false},"id":1})]);
    net.publish("t", json!(1));
    assert_eq!(net.take(1), [json!({"type":"message","payload":{"topic":"t","data":1}})], "no offset");
    assert_eq!(net.hub.history_stats(), HistoryStats::default());
}

#[test]
fn messages_carry_offsets_and_subscribed_the_position() {
    let mut net = Net::new(hub(10, 60 * SEC, 1 << 20, 1));
    net.connect(1);
    net.publish("t", json!("before anyone"));
    let got = net.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["payload"]["offset"], 1);
    assert!(got[0]["payload"]["epoch"].is_string());
    assert!(got[0]["payload"].get("recovered").is_none(), "no since, no recovered");
    net.publish("t", json!({"n":2}));
    assert_eq!(net.take(1), [json!({"type":"message","payload":{"topic":"t","data":{"n":2},"offset":2}})]);
}

#[test]
fn reply_then_replay_then_live() {
    let mut net = Net::new(hub(10, 60 * SEC, 1 << 20, 1));
    net.connect(1);
    let epoch =
        net.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}))[0]["payload"]["epoch"].clone();
    net.publish("t", json!("a"));
    net.take(1);
    net.disconnect(1);
    net.publish("t", json!("b"));
    net.publish("t", json!("c"));
    net.connect(2);
    let got = net.send(
        2,
        json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":1,"epoch":epoch}},"id":"s"}),
    );
    assert_eq!(
        got,
        [
            json!({"type":"subscribed","payload":{"topic":"t","offset":3,"epoch":epoch,"recovered":true},"id":"s"}),
            json!({"type":"message","payload":{"topic":"t","data":"b","offset":2}}),
            json!({"type":"message","payload":{"topic":"t","data":"c","offset":3}}),
        ]
    );
    net.publish("t", json!("d"));
    assert_eq!(net.take(2).last().unwrap()["payload"]["offset"], 4);
}

#[test]
fn replay_reuses_the_frames_encoded_at_publish() {
    let mut net = Net::new(hub(10, 60 * SEC, 1 << 20, 1));
    net.connect(1);
    net.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}));
    net.publish("t", json!("a"));
    let live = Rc::clone(&net.outbox.queues[&1][0]);
    net.connect(2);
    let epoch =
        net.send(2, json!({"type":"subscribe","payload":{"topic":"t"}}))[0]["payload"]["epoch"].clone();
    net.send(2, json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":0,"epoch":epoch}}}));
    let replayed = net.outbox.queues[&2].last().unwrap();
    assert!(Rc::ptr_eq(&live, replayed), "the same allocation, not a re-encoding");
}

#[test]
fn a_bad_since_is_an_invalid_format() {
    let mut net = Net::new(hub(10, 60 * SEC, 1 << 20, 1));
    net.connect(1);
    for since in [json!([1, "e"]), json!({"offset":"1","epoch":"e"}), json!({"offset":1}), json!(5)] {
        let got = net.send(1, json!({"type":"subscribe","payload":{"topic":"t","since":since},"id":9}));
        assert_eq!(got, [json!({"type":"error","payload":{"message":"Invalid message format"},"id":9})]);
    }
    assert_eq!(net.hub.subscription_count(1), 0, "a refused subscribe subscribes nothing");
}

#[test]
fn epoch_changes_on_restart() {
    let epoch_of = |seed| {
        let mut net = Net::new(hub(10, 60 * SEC, 1 << 20, seed));
        net.connect(1);
        net.publish("t", json!(1));
        net.send(1, json!({"type":"subscribe","payload":{"topic":"t"}}))[0]["payload"].clone()
    };
    let first = epoch_of(history::random_seed());
    let second = epoch_of(history::random_seed());
    assert_eq!(first["offset"], second["offset"]);
    assert_ne!(first["epoch"], second["epoch"], "a restarted server is a new epoch");
    // And a client that recovers against the restarted server is told it could not.
    let mut net = Net::new(hub(10, 60 * SEC, 1 << 20, history::random_seed()));
    net.connect(1);
    net.publish("t", json!(1));
    let got = net.send(
        1,
        json!({"type":"subscribe","payload":{"topic":"t","since":{"offset":0,"epoch":first["epoch"]}}}),
    );
    assert_eq!(got.len(), 1, "nothing replayed");
    assert_eq!(got[0]["payload"]["recovered"], false);
}

#[test]
fn ttl_expiry_goes_through_tick() {
    let mut net = Net::new(hub(10, 5 * SEC, 1 << 20, 1));
    net.publish("t", json!(1));
    assert_eq!(net.hub.history_deadline(), Some(5 * SEC));
    net.hub.tick(5 * SEC - 1);
    assert_eq!(net.hub.history_stats().messages, 1);
    net.hub.tick(5 * SEC);
    assert_eq!(net.hub.history_stats().messages, 0);
}

#[test]
fn memory_stays_under_the_byte_bound() {
    let max = 64 * 1024;
    let mut net = Net::new(hub(1000, 3600 * SEC, max, 1));
    for i in 0..20_000 {
        net.publish(&format!("topic-{}", i % 50), json!({"i": i, "pad": "x".repeat(i % 200)}));
        assert!(net.hub.history_stats().bytes <= max);
    }
    assert!(net.hub.history_stats().messages > 100, "the bound is used, not emptied");
}

/// One step of a client's life against a topic that keeps being published to.
#[derive(Clone, Debug)]
enum Op {
    Publish,
    /// Publish to another topic (competes for the byte bound).
    PublishOther,
    Disconnect,
    Reconnect,
    Advance(Millis),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Publish),
        2 => Just(Op::PublishOther),
        2 => Just(Op::Disconnect),
        2 => Just(Op::Reconnect),
        2 => (0..4 * SEC).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever the interleaving, each connection of the client reads `subscribed`, then
    /// (if recovered) exactly the messages it missed, then live ones: so the data it has read
    /// over all its connections is exactly what was published since it first subscribed,
    /// unless a reply said `recovered: false`, after which it is exactly what was published
    /// since that reply. And when history certainly covered the gap, the reply says recovered.
    #[test]
    fn recovery_is_exact_or_refused(
        size in 1usize..8,
        ttl in prop_oneof![Just(3 * SEC), Just(3600 * SEC)],
        tight in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let max_bytes = if tight { 600 } else { 1 << 30 };
        let mut net = Net::new(hub(size, ttl, max_bytes, 42));
        let mut now: Millis = 0;
        let mut published: Vec<u64> = Vec::new(); // data values of topic "t", in order
        let mut received: Vec<u64> = Vec::new();
        let mut expected_from = 0usize; // index into `published` the client's view starts at
        let mut client: ClientId = 1;
        let mut connected = true;
        let mut position: (u64, Value); // last offset seen, epoch
        let mut left_at: Millis = 0;
        let mut missed = 0usize;

        net.connect(client);
        let got = net.send(client, json!({"type":"subscribe","payload":{"topic":"t"}}));
        prop_assert_eq!(got.len(), 1);
        position = (got[0]["payload"]["offset"].as_u64().unwrap(), got[0]["payload"]["epoch"].clone());

        // Reads the client's deliveries: checks offsets are consecutive and records the data.
        fn read(net: &mut Net, client: ClientId, position: &mut (u64, Value), received: &mut Vec<u64>) -> Result<(), TestCaseError> {
            for m in net.take(client) {
                prop_assert_eq!(&m["type"], "message");
                let offset = m["payload"]["offset"].as_u64().unwrap();
                prop_assert_eq!(offset, position.0 + 1, "offsets are consecutive");
                position.0 = offset;
                received.push(m["payload"]["data"].as_u64().unwrap());
            }
            Ok(())
        }

        for op in ops {
            match op {
                Op::Publish => {
                    let n = published.len() as u64;
                    published.push(n);
                    net.publish("t", json!(n));
                    if connected {
                        read(&mut net, client, &mut position, &mut received)?;
                    } else {
                        missed += 1;
                    }
                }
                Op::PublishOther => net.publish("other", json!("some bytes to take room in the bound")),
                Op::Disconnect if connected => {
                    net.disconnect(client);
                    connected = false;
                    left_at = now;
                    missed = 0;
                }
                Op::Reconnect if !connected => {
                    client += 1;
                    net.connect(client);
                    let since = json!({"offset": position.0, "epoch": position.1});
                    let mut got = net.send(client, json!({"type":"subscribe","payload":{"topic":"t","since":since}}));
                    let reply = got.remove(0);
                    prop_assert_eq!(&reply["type"], "subscribed");
                    let recovered = reply["payload"]["recovered"].as_bool().unwrap();
                    let certain = !tight && missed <= size && now - left_at < ttl;
                    prop_assert!(recovered || !certain, "history covered the gap but recovery was refused");
                    if !recovered {
                        prop_assert!(got.is_empty(), "nothing replayed when not recovered");
                        received.clear();
                        expected_from = published.len();
                        position = (reply["payload"]["offset"].as_u64().unwrap(), reply["payload"]["epoch"].clone());
                    } else {
                        prop_assert_eq!(&reply["payload"]["epoch"], &position.1);
                    }
                    // Put the replayed messages back where `read` finds them.
                    net.outbox.queues.get_mut(&client).unwrap().clear();
                    for m in got {
                        let offset = m["payload"]["offset"].as_u64().unwrap();
                        prop_assert_eq!(offset, position.0 + 1, "replay is consecutive from since");
                        position.0 = offset;
                        received.push(m["payload"]["data"].as_u64().unwrap());
                    }
                    prop_assert_eq!(position.0, reply["payload"]["offset"].as_u64().unwrap(), "replay reaches the head");
                    connected = true;
                }
                Op::Advance(ms) => {
                    now += ms;
                    net.hub.tick(now);
                }
                _ => {}
            }
            if connected {
                prop_assert_eq!(&received[..], &published[expected_from..]);
            }
        }
    }
}
