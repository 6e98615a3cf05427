//! Topics and the JSON pub/sub protocol, sans-IO.
//!
//! The reactor hands every text message of a connection to
//! [`Hub::handle_text`](crate::hub::Hub::handle_text); replies meant for the sender come back
//! as whole server frames appended to a buffer, and fan-out goes through the reactor's
//! [`Outbox`](crate::hub::Outbox). The hub owns no sockets, timers or threads.
//!
//! # Protocol
//!
//! Every message, both ways, is one WebSocket **text** frame holding a JSON object:
//!
//! ```json
//! {"type": "<string>", "payload": <any JSON>, "id": <optional: any JSON, usually a number or string>}
//! ```
//!
//! When a client sends an `id`, the direct reply (`pong`, `subscribed`, `unsubscribed`, `ack`
//! or `error`) carries the same `id`, byte for byte. `"id": null` counts as no id.
//!
//! | Client sends | Sender receives |
//! |---|---|
//! | `{"type":"ping","id":1}` | `{"type":"pong","id":1}` |
//! | `{"type":"subscribe","payload":{"topic":"news"}}` | `{"type":"subscribed","payload":{"topic":"news"}}` |
//! | `{"type":"unsubscribe","payload":{"topic":"news"}}` | `{"type":"unsubscribed","payload":{"topic":"news"}}` |
//! | `{"type":"publish","payload":{"topic":"news","data":{"h":"hi"}},"id":"p1"}` | `{"type":"ack","payload":{"topic":"news","delivered":2},"id":"p1"}` |
//! | `{"type":"broadcast","payload":{"data":"hello all"},"id":9}` | `{"type":"ack","payload":{"delivered":40},"id":9}` |
//!
//! * **subscribe / unsubscribe** are idempotent: subscribing twice is harmless, and unsubscribing
//!   from a topic one is not in still answers `unsubscribed`.
//! * **publish** sends, to every current subscriber of the topic (the publisher too, if it is
//!   subscribed):
//!   `{"type":"message","payload":{"topic":"news","data":{"h":"hi"}}}`.
//!   `data` is any JSON value and is forwarded exactly as the publisher wrote it. The publisher
//!   gets an `ack` only when it sent an `id`; `delivered` counts the subscribers that took the
//!   message. Publishing to a topic nobody subscribes to is not an error (`delivered: 0`).
//! * **broadcast** sends `{"type":"message","payload":{"data":"hello all"}}` to every connected
//!   client (the sender included). WebSocket clients may broadcast only when the server runs with
//!   `--allow-client-broadcast`; the HTTP API (`POST /broadcast`) always may. Acked like publish.
//! * Messages published to one topic by one publisher reach every subscriber in publish order.
//! * With history (`--history-size`, [`history`]), `message` payloads carry `"offset"`,
//!   `subscribed` carries `offset` and `epoch`, and `subscribe` may carry
//!   `"since":{"offset":O,"epoch":E}`: the reply (with `recovered`) comes first, then every
//!   kept message after `O` (when all of them are kept and `E` matches), then live messages,
//!   all queued within one call so nothing falls in between.
//! * With a backplane joining other processes ([`Outbox::backplane`]), publishes and broadcasts
//!   are relayed to it after local delivery, acks add `"backplane":true|false` (handed over or
//!   not), and the backplane hears when a topic gains its first or loses its last subscriber;
//!   a subscribe that makes the node want a topic is answered once Redis confirms it. With
//!   history kept by the backplane, offsets come from it and every node delivers history
//!   messages from it, the publisher's own included ([`pending`]).
//!
//! Errors answer `{"type":"error","payload":{"message":"..."}}` (with the `id` whenever the
//! message was a JSON object carrying one) and leave the connection open:
//!
//! | `message` | Cause |
//! |---|---|
//! | `Invalid message format` | not JSON, not an object, or `type`/`payload` fields missing or of the wrong type |
//! | `Unknown message type` | `type` is a string but not one of the five above |
//! | `Topic must not be empty` | `"topic": ""` |
//! | `Topic too long (300 bytes, max 256)` | topic longer than `--max-topic-length` bytes (UTF-8) |
//! | `Invalid message format` | also: a lone surrogate escape (`"\ud800"`) anywhere in the message (not I-JSON, RFC 7493), or a control character in a topic |
//! | `Too many subscriptions (max 1024)` | the connection already has `--max-subscriptions` topics |
//! | `Too many topics on this server (max 100000)` | subscribing to a new topic when the server holds `--max-topics` |
//! | `Broadcast from clients is disabled` | `broadcast` without `--allow-client-broadcast` |
//! | `Binary messages are not supported` | a binary frame |
//!
//! # Cost model
//!
//! A published message is serialized and framed once into an `Rc<[u8]>` that every subscriber's
//! send queue shares (with permessage-deflate, compressed at most once more per window size in
//! use, lazily, into a second shared frame: see [`SharedMessage`]); `data` is spliced in as raw
//! text, never parsed into a tree or re-encoded. The plain frame is written in place: a counting
//! pass sizes it, then one exact-size allocation is filled, so `data` is copied once, from the
//! publisher's read buffer into the frame.
//! Fan-out walks a contiguous list of subscriber ids. A connection with no subscriptions has no
//! state in the hub at all. Subscriptions are indexed both ways (topic -> subscribers, client ->
//! topics) so unsubscribing and disconnecting are O(1) per subscription.
//! Per delivery the reactor then pays (callgrind, `bench/RESULTS.md`) about 95 instructions to
//! queue the frame (a reference count, a deque push, the end-of-turn mark, the bounds) and the
//! flush: a subscriber that got only this frame this turn has it written straight with one
//! `send` (the lone-chunk path of `server::outbuf`, about 145 more around the call), one that
//! gathered many shares one `writev` over them (about 35 per frame).

pub mod history;
mod pending;
mod registry;
mod wire;

use std::fmt;
use std::rc::Rc;

use serde_json::value::RawValue;

use crate::auth::{Grant, Refusal, Verifier};
use crate::backplane::{Backplane, Relay};
use crate::metrics::Metrics;
use crate::protocol::deflate::SharedMessage;
use crate::protocol::session::Millis;
use crate::protocol::OpCode;
use history::{HistoryStats, HistoryStore, Since};
use registry::{Registry, SubscribeOutcome};
use wire::{
    BroadcastPayload, Envelope, Kind, PublishPayload, RefreshPayload, SubscribePayload, TopicPayload,
};

pub(crate) use wire::{push_decimal, push_json_str, push_relay, scan};

/// The reactor's slab key for a connection.
pub type ClientId = usize;

/// Implemented by the reactor: the connections' send queues.
///
/// A message comes framed once, plain; the outbox picks the wire variant each client needs
/// ([`SharedMessage::frame_for`]: plain, or compressed once per window size when the client
/// negotiated permessage-deflate). The hub knows nothing of compression.
pub trait Outbox {
    /// Queue a shared, already-framed message for `client`. Returns false when the client
    /// could not take it (slow consumer cut off, or closing); the reactor will later call
    /// [`Hub::remove_client`] for clients it cut off.
    fn deliver(&mut self, client: ClientId, message: &SharedMessage) -> bool;
    /// Queue it for every open client; returns how many took it.
    fn deliver_all(&mut self, message: &SharedMessage) -> usize;
    /// The other nodes, when a backplane joins this process to them. Publishes and broadcasts
    /// are relayed to it after local delivery, and it is told when a topic gains its first
    /// local subscriber or loses its last. `None` (the default): a single node.
    fn backplane(&mut self) -> Option<&mut dyn Backplane> {
        None
    }
    /// The offset of a publish from `caller` ([`Hub::publish_as`]) came: the epoch and offset
    /// the backplane gave it, or `None` when it could not be numbered (Redis refused it, or
    /// was lost or stalled before it answered: the message may or may not have been kept).
    /// Never called for a caller that left ([`Hub::remove_client`]).
    fn numbered(&mut self, _caller: ClientId, _numbered: Option<(&str, history::Offset)>) {}
}

/// Default of `--max-topics`. One topic costs about 200 bytes of tables plus its name (at most
/// `--max-topic-length`, 256), so 100,000 topics are about 45 MB at worst: a bound one host
/// cannot turn into gigabytes, and still room for a private topic per connection plus shared
/// ones at tens of thousands of connections.
pub const DEFAULT_MAX_TOPICS: usize = 100_000;

/// What the sender of a message may do.
pub enum Access<'a> {
    /// No connection tokens on this server: every topic is open and `--allow-client-broadcast`
    /// decides broadcasts.
    Open,
    /// The connection's token decides (least privilege: what it does not grant is denied).
    /// `verifier` and `now_unix_ms` (wall clock) serve the `refresh` message.
    Token { grant: &'a mut Grant, verifier: &'a Verifier, now_unix_ms: u64 },
}

/// Limits and switches of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubConfig {
    /// Longest topic name, in bytes of UTF-8.
    pub max_topic_length: usize,
    /// Most topics one connection may be subscribed to at once.
    pub max_subscriptions: usize,
    /// Most topics the server holds at once (topics with at least one subscriber): the bound
    /// on hub memory together with `max_subscriptions` (see README, "Bounds").
    pub max_topics: usize,
    /// Whether WebSocket clients may send `broadcast` (the HTTP API always may).
    pub allow_client_broadcast: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_topic_length: 256,
            max_subscriptions: 1024,
            max_topics: DEFAULT_MAX_TOPICS,
            allow_client_broadcast: false,
        }
    }
}

/// Why a client message (or an HTTP publish) was refused. `Display` is the exact text sent to
/// the client in the error reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubError {
    /// Not JSON, not an object, or a field missing or ill-typed; `detail` says which, for logs
    /// and the HTTP API (the WebSocket reply keeps the fixed text).
    InvalidFormat {
        detail: &'static str,
    },
    UnknownType,
    EmptyTopic,
    TopicTooLong {
        len: usize,
        max: usize,
    },
    TooManySubscriptions {
        max: usize,
    },
    /// The server holds `--max-topics` topics; subscribing to an existing one still works.
    TooManyTopics {
        max: usize,
    },
    /// A topic with a control character (they can only come escaped, e.g. `\u0007`).
    TopicControlCharacter,
    ClientBroadcastDisabled,
    BinaryNotSupported,
    /// The connection's token does not grant this subscribe, publish or broadcast.
    PermissionDenied,
    /// `refresh` on a server without connection tokens.
    AuthDisabled,
    /// `refresh` with a token that does not verify.
    RefreshRefused(Refusal),
    /// `refresh` with a valid token for another subject.
    RefreshOtherSubject,
    /// A publish on history kept in Redis while Redis cannot number it (down, or its output
    /// full): refused rather than delivered without an offset, which would break recovery.
    Unavailable,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::InvalidFormat { .. } => f.write_str("Invalid message format"),
            HubError::UnknownType => f.write_str("Unknown message type"),
            HubError::EmptyTopic => f.write_str("Topic must not be empty"),
            HubError::TopicTooLong { len, max } => write!(f, "Topic too long ({len} bytes, max {max})"),
            HubError::TooManySubscriptions { max } => write!(f, "Too many subscriptions (max {max})"),
            HubError::TooManyTopics { max } => write!(f, "Too many topics on this server (max {max})"),
            HubError::TopicControlCharacter => f.write_str("Invalid message format"),
            HubError::ClientBroadcastDisabled => f.write_str("Broadcast from clients is disabled"),
            HubError::BinaryNotSupported => f.write_str("Binary messages are not supported"),
            HubError::PermissionDenied => f.write_str("Permission denied"),
            HubError::AuthDisabled => f.write_str("Authentication is not enabled"),
            HubError::RefreshRefused(cause) => write!(f, "Token refused: {}", cause.reason()),
            HubError::RefreshOtherSubject => f.write_str("Token refused: another subject"),
            HubError::Unavailable => f.write_str("History unavailable: Redis is down"),
        }
    }
}

impl std::error::Error for HubError {}

/// Parses the JSON body of `POST /publish`: `{"topic": T, "data": any}`.
pub fn parse_publish_body(text: &str) -> Result<(std::borrow::Cow<'_, str>, &RawValue), HubError> {
    wire::scan(text).map_err(wire::TextFault::into_error)?;
    let body: PublishPayload<'_> =
        wire::parse_object(text, "expected {\"topic\": string, \"data\": any JSON}")?;
    Ok((body.topic, body.data))
}

/// Parses the JSON body of `POST /broadcast`: `{"data": any}`.
pub fn parse_broadcast_body(text: &str) -> Result<&RawValue, HubError> {
    wire::scan(text).map_err(wire::TextFault::into_error)?;
    let body: BroadcastPayload<'_> = wire::parse_object(text, "expected {\"data\": any JSON}")?;
    Ok(body.data)
}

/// Topics, subscriptions and the message protocol.
pub struct Hub {
    config: HubConfig,
    registry: Registry,
    /// What the last publish or broadcast did on the backplane, for its ack or HTTP reply.
    last_relay: Relay,
    /// Staging for outgoing JSON, reused so steady-state replies and publishes allocate nothing
    /// but the shared frame itself.
    scratch: Vec<u8>,
    /// Topic history, when `--history-size` is above 0; `None` costs nothing per topic.
    history: Option<Box<dyn HistoryStore>>,
    /// Frames a recovering subscribe replays, reused.
    replay: Vec<Rc<[u8]>>,
    /// The reactor's clock, as of its last [`Hub::tick`].
    now: Millis,
    /// Subscribes and publishes waiting on the backplane (see [`pending`]).
    waits: pending::Waits,
}

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        Hub {
            config,
            registry: Registry::default(),
            last_relay: Relay::Off,
            scratch: Vec::new(),
            history: None,
            replay: Vec::new(),
            now: 0,
            waits: pending::Waits::default(),
        }
    }

    /// Keeps topic history in `store`: messages then carry offsets and subscribers may recover.
    pub fn with_history(mut self, store: Box<dyn HistoryStore>) -> Hub {
        self.history = Some(store);
        self
    }

    /// The reactor's clock, once per turn: history stamps messages by it, and publishes and
    /// subscribes expire what is due by it.
    pub fn set_clock(&mut self, now: Millis) {
        self.now = now;
    }

    /// The clock, and a sweep of the history: drops what is due at `now` (the reactor calls
    /// it when [`Hub::history_deadline`] comes up in its timer queue).
    pub fn tick(&mut self, now: Millis) {
        self.now = now;
        self.expire_history();
    }

    /// When [`Hub::tick`] next has history to expire, if ever.
    pub fn history_deadline(&self) -> Option<Millis> {
        self.history.as_ref().and_then(|h| h.next_deadline())
    }

    /// What the history keeps (all zero without history).
    pub fn history_stats(&self) -> HistoryStats {
        self.history.as_ref().map(|h| h.stats()).unwrap_or_default()
    }

    fn expire_history(&mut self) {
        let Some(history) = &mut self.history else { return };
        if history.next_deadline().is_some_and(|at| at <= self.now) {
            let registry = &self.registry;
            history.expire(self.now, &|topic| !registry.subscribers(topic).is_empty());
        }
    }

    /// A client is leaving its topics: their idle time (for the history's TTL) starts now.
    fn touch_topics_of(&mut self, client: ClientId) {
        if let Some(history) = &mut self.history {
            for topic in self.registry.topics_of(client) {
                history.touch(topic, self.now);
            }
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// A text message from a client. The reply meant for the sender only (pong, subscribed,
    /// unsubscribed, ack or error; at most one frame, sometimes none) is appended as a whole
    /// server text frame to `reply`; fan-out goes through `outbox`, during this call.
    pub fn handle_text(
        &mut self,
        from: ClientId,
        text: &str,
        reply: &mut Vec<u8>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) {
        self.handle_text_as(from, Access::Open, text, reply, outbox, metrics);
    }

    /// [`Hub::handle_text`] for a sender whose `access` is checked before each subscribe,
    /// publish and broadcast (a denied action is an error reply; the connection stays). A
    /// `refresh` replaces the grant: subscriptions the new one does not permit are dropped, each
    /// told with an `unsubscribed` (no id), and then `refreshed` answers with the id.
    pub fn handle_text_as(
        &mut self,
        from: ClientId,
        access: Access<'_>,
        text: &str,
        reply: &mut Vec<u8>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) {
        let parsed = wire::parse_envelope(text);
        let result = match parsed.envelope {
            Ok(envelope) => self.dispatch(from, access, envelope, reply, outbox, metrics),
            Err(e) => Err(e),
        };
        if let Err(error) = result {
            log::debug!("client {from}: {error} ({error:?})");
            self.write_error(reply, &error, parsed.id, metrics);
        }
    }

    /// A binary message from a client: not part of the protocol, answered with an error.
    pub fn handle_binary(&mut self, from: ClientId, reply: &mut Vec<u8>, metrics: &mut Metrics) {
        log::debug!("client {from}: binary message refused");
        self.write_error(reply, &HubError::BinaryNotSupported, None, metrics);
    }

    /// The client is gone: drop it from every topic and free emptied topics. Must be called
    /// before its `ClientId` is reused for another connection.
    pub fn remove_client(&mut self, client: ClientId) {
        self.forget_waits(client);
        self.touch_topics_of(client);
        let waits = &mut self.waits;
        self.registry.remove_client_with(client, |topic| waits.topic_left(topic));
    }

    /// [`Hub::remove_client`], telling `backplane` about every topic left without a subscriber.
    pub fn remove_client_relayed(&mut self, client: ClientId, backplane: &mut dyn Backplane) {
        self.forget_waits(client);
        self.touch_topics_of(client);
        let waits = &mut self.waits;
        self.registry.remove_client_with(client, |topic| {
            waits.topic_left(topic);
            backplane.topic_unwanted(topic);
        });
    }

    /// What the last [`Hub::publish`] or [`Hub::broadcast`] did on the backplane
    /// ([`Relay::Off`] without one).
    pub fn last_relay(&self) -> Relay {
        self.last_relay
    }

    /// Publishes `data` to `topic` (HTTP API and client `publish`): returns the number of
    /// subscribers that took it.
    pub fn publish(
        &mut self,
        topic: &str,
        data: &RawValue,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) -> Result<usize, HubError> {
        self.publish_from(topic, data, None, outbox, metrics).map(|d| d.unwrap_or(0))
    }

    /// [`Hub::publish`] for `caller`, which waits for the offset when the backplane keeps the
    /// history (the HTTP API: the connection is held). `Ok(None)`: it waits, and the epoch and
    /// offset (or the failure) come to [`Outbox::numbered`] once Redis answers, bounded with
    /// the acks in flight ([`pending::MAX_PENDING_ACKS`]: over it, `Unavailable` at once).
    /// Without history in the backplane, as [`Hub::publish`].
    pub fn publish_as(
        &mut self,
        caller: ClientId,
        topic: &str,
        data: &RawValue,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) -> Result<Option<usize>, HubError> {
        self.publish_from(topic, data, Some(pending::Waiter::Caller(caller)), outbox, metrics)
    }

    /// [`Hub::publish`]; `waiter`: who wants the offset (a publisher and its id, or a caller).
    /// `Ok(None)`: the history is kept by the backplane, which numbers the message; delivery
    /// (here too) comes back from it and the ack follows from [`Hub::append_done`].
    fn publish_from(
        &mut self,
        topic: &str,
        data: &RawValue,
        waiter: Option<pending::Waiter<'_>>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) -> Result<Option<usize>, HubError> {
        self.check_topic(topic)?;
        if outbox.backplane().is_some_and(|b| b.keeps_history()) {
            self.append(topic, data, waiter, outbox, metrics)?;
            return Ok(None);
        }
        self.expire_history();
        let mut delivered = 0;
        let registry = &self.registry;
        let kept = match &mut self.history {
            // Kept even when nobody listens now: that is when a reconnecting client needs it.
            Some(history) => {
                let in_use = |t: &str| !registry.subscribers(t).is_empty();
                let frame = history.append(topic, self.now, &in_use, &mut |offset| {
                    wire::build_shared_text_frame(|out| {
                        wire::write_message_at(out, Some(topic), data, Some(offset));
                    })
                });
                Some(SharedMessage::from_frame(OpCode::Text, frame))
            }
            None => None,
        };
        let subscribers = self.registry.subscribers(topic);
        if !subscribers.is_empty() {
            let built;
            let message = match &kept {
                Some(kept) => kept,
                None => {
                    let frame = wire::build_shared_text_frame(|out| {
                        wire::write_message(out, Some(topic), data);
                    });
                    built = SharedMessage::from_frame(OpCode::Text, frame);
                    &built
                }
            };
            let held = self.waits.holds_topic(topic);
            for &client in subscribers {
                // A subscriber still waiting for Redis's confirmation gets nothing before its
                // `subscribed`.
                if held && self.waits.is_held(topic, client) {
                    continue;
                }
                if outbox.deliver(client, message) {
                    delivered += 1;
                }
            }
        }
        metrics.record_publish(delivered);
        self.last_relay = outbox.backplane().map_or(Relay::Off, |b| b.publish(topic, data));
        Ok(Some(delivered))
    }

    /// Sends `data` to every open client (HTTP API and permitted client `broadcast`): returns
    /// how many took it.
    pub fn broadcast(&mut self, data: &RawValue, outbox: &mut impl Outbox, metrics: &mut Metrics) -> usize {
        let frame = wire::build_shared_text_frame(|out| {
            wire::write_message(out, None, data);
        });
        let delivered = outbox.deliver_all(&SharedMessage::from_frame(OpCode::Text, frame));
        metrics.record_broadcast(delivered);
        self.last_relay = outbox.backplane().map_or(Relay::Off, |b| b.broadcast(data));
        delivered
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.registry.topic_count()
    }

    /// How many topics `client` is subscribed to.
    pub fn subscription_count(&self, client: ClientId) -> usize {
        self.registry.subscription_count(client)
    }

    /// The current subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> &[ClientId] {
        self.registry.subscribers(topic)
    }

    fn dispatch(
        &mut self,
        from: ClientId,
        mut access: Access<'_>,
        envelope: Envelope<'_>,
        reply: &mut Vec<u8>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) -> Result<(), HubError> {
        let id = envelope.id;
        match envelope.kind {
            Kind::Ping => {
                wire::append_text_frame(reply, &mut self.scratch, |out| wire::write_pong(out, id));
            }
            Kind::Subscribe => {
                const DETAIL: &str =
                    "subscribe needs {\"topic\": string, \"since\"?: {\"offset\": integer, \"epoch\": string}}";
                let payload: SubscribePayload<'_> = payload_of(envelope.payload, DETAIL)?;
                let since = payload.since(DETAIL)?;
                let topic = payload.topic;
                self.check_topic(&topic)?;
                if let Access::Token { grant, .. } = &access {
                    if !grant.may_subscribe(&topic) {
                        return Err(HubError::PermissionDenied);
                    }
                }
                let max = self.config.max_subscriptions;
                let max_topics = self.config.max_topics;
                let mut joined = pending::Joined::Added;
                match self.registry.subscribe(from, &topic, max, max_topics) {
                    SubscribeOutcome::LimitReached => return Err(HubError::TooManySubscriptions { max }),
                    SubscribeOutcome::TopicLimitReached => {
                        metrics.record_topic_limit_refusal();
                        return Err(HubError::TooManyTopics { max: max_topics });
                    }
                    SubscribeOutcome::Added if self.registry.subscribers(&topic).len() == 1 => {
                        if let Some(backplane) = outbox.backplane() {
                            if backplane.topic_wanted(&topic) {
                                joined = pending::Joined::Confirming;
                            }
                        }
                    }
                    SubscribeOutcome::AlreadySubscribed if !self.waits.is_held(&topic, from) => {
                        joined = pending::Joined::Again;
                    }
                    _ => {}
                }
                let since = since.as_ref().map(|s| Since { offset: s.offset, epoch: &s.epoch });
                // With a backplane, the reply may wait for Redis (see `pending`).
                if !self.hold_subscribe(from, &topic, since, id, joined, outbox) {
                    self.subscribed(from, &topic, since, id, reply, outbox);
                }
            }
            Kind::Unsubscribe => {
                let TopicPayload { topic } =
                    payload_of(envelope.payload, "unsubscribe needs {\"topic\": string}")?;
                self.check_topic(&topic)?;
                // Not being subscribed is fine: the client's view ("not subscribed") holds.
                self.unsubscribe_one(from, &topic, outbox);
                wire::append_text_frame(reply, &mut self.scratch, |out| {
                    wire::write_topic_reply(out, "unsubscribed", &topic, id);
                });
            }
            Kind::Publish => {
                let PublishPayload { topic, data } =
                    payload_of(envelope.payload, "publish needs {\"topic\": string, \"data\": any}")?;
                if let Access::Token { grant, .. } = &access {
                    self.check_topic(&topic)?;
                    if !grant.may_publish(&topic) {
                        return Err(HubError::PermissionDenied);
                    }
                }
                let ack = id.map(|id| pending::Waiter::Acked(from, id));
                let delivered = self.publish_from(&topic, data, ack, outbox, metrics)?;
                if let (Some(id), Some(delivered)) = (id, delivered) {
                    wire::append_text_frame(reply, &mut self.scratch, |out| {
                        wire::write_ack(out, Some(&topic), delivered, self.last_relay, id);
                    });
                }
            }
            Kind::Broadcast => {
                match &access {
                    // With tokens, the claim decides (the switch is for servers without them).
                    Access::Token { grant, .. } if !grant.may_broadcast() => {
                        return Err(HubError::PermissionDenied)
                    }
                    Access::Token { .. } => {}
                    Access::Open if !self.config.allow_client_broadcast => {
                        return Err(HubError::ClientBroadcastDisabled)
                    }
                    Access::Open => {}
                }
                let BroadcastPayload { data } =
                    payload_of(envelope.payload, "broadcast needs {\"data\": any}")?;
                let delivered = self.broadcast(data, outbox, metrics);
                if let Some(id) = id {
                    wire::append_text_frame(reply, &mut self.scratch, |out| {
                        wire::write_ack(out, None, delivered, self.last_relay, id);
                    });
                }
            }
            Kind::Refresh => {
                let Access::Token { grant, verifier, now_unix_ms } = &mut access else {
                    return Err(HubError::AuthDisabled);
                };
                let RefreshPayload { token } =
                    payload_of(envelope.payload, "refresh needs {\"token\": string}")?;
                let fresh = verifier.verify(&token, *now_unix_ms).map_err(HubError::RefreshRefused)?;
                if fresh.sub() != grant.sub() {
                    return Err(HubError::RefreshOtherSubject);
                }
                **grant = fresh;
                metrics.auth.refreshed();
                self.drop_unpermitted(from, grant, reply, outbox);
                wire::append_text_frame(reply, &mut self.scratch, |out| {
                    wire::write_refreshed(out, grant.exp_ms / 1000, id);
                });
            }
        }
        Ok(())
    }

    /// Unsubscribes `client` from `topic` (false if it was not subscribed); a topic left
    /// without subscribers is let go on the backplane.
    fn unsubscribe_one(&mut self, client: ClientId, topic: &str, outbox: &mut impl Outbox) -> bool {
        if self.waits.is_held(topic, client) {
            self.release_hold(client, topic, outbox);
        }
        self.waits.forget_ahead(topic, client);
        if !self.registry.unsubscribe(client, topic) {
            return false;
        }
        if let Some(history) = &mut self.history {
            history.touch(topic, self.now);
        }
        if self.registry.subscribers(topic).is_empty() {
            self.waits.topic_left(topic);
            if let Some(backplane) = outbox.backplane() {
                backplane.topic_unwanted(topic);
            }
        }
        true
    }

    /// After a refresh: unsubscribes `client` from every topic `grant` no longer permits,
    /// telling it with an `unsubscribed` each. Cold path (one refresh per token lifetime).
    fn drop_unpermitted(
        &mut self,
        client: ClientId,
        grant: &Grant,
        reply: &mut Vec<u8>,
        outbox: &mut impl Outbox,
    ) {
        let dropped: Vec<String> =
            self.registry.topics_of(client).filter(|t| !grant.may_subscribe(t)).map(String::from).collect();
        for topic in dropped {
            self.unsubscribe_one(client, &topic, outbox);
            wire::append_text_frame(reply, &mut self.scratch, |out| {
                wire::write_topic_reply(out, "unsubscribed", &topic, None);
            });
        }
    }

    /// Answers a subscribe that was accepted. Without history, or with nothing to replay, the
    /// reply goes to `reply` like any other. With messages to replay, the reply and then the
    /// replayed messages go through `outbox`, in that order and within this call, so the
    /// client reads `subscribed`, then every missed message, then live ones: nothing can be
    /// published in between, so nothing is missed or repeated.
    fn subscribed(
        &mut self,
        from: ClientId,
        topic: &str,
        since: Option<Since<'_>>,
        id: Option<&RawValue>,
        reply: &mut Vec<u8>,
        outbox: &mut impl Outbox,
    ) {
        if self.history.is_none() {
            // No history: a `since` is answered, not refused, so clients need not know.
            let recovered = since.map(|_| false);
            wire::append_text_frame(reply, &mut self.scratch, |out| {
                wire::write_subscribed(out, topic, None, recovered, id);
            });
            return;
        }
        // Exact at `now`, not only as of the last sweep: never replay an expired message.
        self.expire_history();
        let Some(history) = &mut self.history else { return };
        self.replay.clear();
        let registry = &self.registry;
        let in_use = |t: &str| !registry.subscribers(t).is_empty();
        let position = history.subscribe(topic, since, self.now, &in_use, &mut self.replay);
        let write = |out: &mut dyn wire::Sink| {
            wire::write_subscribed(
                out,
                topic,
                Some((position.offset, &position.epoch)),
                position.recovered,
                id,
            );
        };
        if self.replay.is_empty() {
            wire::append_text_frame(reply, &mut self.scratch, |out| write(out));
            return;
        }
        let frame = wire::build_shared_text_frame(write);
        // A client cut off as a slow consumer refuses the rest; the reactor then drops it.
        if outbox.deliver(from, &SharedMessage::from_frame(OpCode::Text, frame)) {
            for frame in &self.replay {
                // The kept plain frame, shared; a compressed variant is built if the client needs one.
                if !outbox.deliver(from, &SharedMessage::from_frame(OpCode::Text, Rc::clone(frame))) {
                    break;
                }
            }
        }
        self.replay.clear();
    }

    fn check_topic(&self, topic: &str) -> Result<(), HubError> {
        if topic.is_empty() {
            return Err(HubError::EmptyTopic);
        }
        let max = self.config.max_topic_length;
        if topic.len() > max {
            return Err(HubError::TopicTooLong { len: topic.len(), max });
        }
        if wire::topic_has_control_char(topic) {
            return Err(HubError::TopicControlCharacter);
        }
        Ok(())
    }

    fn write_error(
        &mut self,
        reply: &mut Vec<u8>,
        error: &HubError,
        id: Option<&RawValue>,
        metrics: &mut Metrics,
    ) {
        metrics.record_error_reply();
        match error {
            HubError::PermissionDenied => metrics.auth.permission_denied(),
            HubError::RefreshRefused(_) | HubError::RefreshOtherSubject => metrics.auth.refresh_refused(),
            _ => {}
        }
        // Error text is short and the error path is cold: formatting may allocate here.
        let message = error.to_string();
        wire::append_text_frame(reply, &mut self.scratch, |out| wire::write_error(out, &message, id));
    }
}

/// Parses a message's payload object, which the message type requires.
fn payload_of<'a, T: serde::Deserialize<'a>>(
    payload: Option<&'a RawValue>,
    detail: &'static str,
) -> Result<T, HubError> {
    let payload = payload.ok_or(HubError::InvalidFormat { detail })?;
    wire::parse_object(payload.get(), detail)
}

#[cfg(test)]
mod access_tests;
#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod pending_tests;
#[cfg(test)]
pub(crate) mod tests;
