//! What the hub waits on the backplane for, and the completions that answer it.
//!
//! With a backplane, two things cannot be answered within the call that asks for them:
//! * **A subscribe that makes this node want a topic's channel** waits until Redis confirms the
//!   SUBSCRIBE: a `subscribed` sent earlier would let the client publish on another node and
//!   miss its own message (issue 13's race). The subscriber is in the registry at once (limits,
//!   unsubscribe and disconnect work as usual) but *held*: fan-out skips it, and its reply goes
//!   out in [`Hub::topic_confirmed`]. Later subscribers of a confirmed topic are answered at once.
//! * **With history kept by the backplane**, a subscribe needs the topic's position (and, with
//!   `since`, the messages to replay) from Redis, asked only once the channel is confirmed, so
//!   nothing published after the answer can be missed. Live messages for the held client are
//!   buffered meanwhile (bounded); [`Hub::position_ready`] sends `subscribed`, the replay, then
//!   the buffered messages after the last offset replayed, in that order. A publish's offset
//!   comes from Redis too: its `ack` goes out in [`Hub::append_done`], or, for a caller that
//!   waits outside the protocol (the HTTP API, [`Hub::publish_as`]), the offset goes to
//!   [`Outbox::numbered`] and the caller's connection answers it.
//!
//! The reactor routes the backplane's completions here; [`Hub::backplane_down`] answers every
//! wait at once (local only: no position, `recovered: false`; publishes waiting for their offset
//! get an error, or `None` for a caller). A client that leaves drops its holds and acks
//! ([`Hub::forget_waits`]), so a completion that arrives later finds nothing and costs nothing.
//!
//! Bounds: a hold exists only for a subscription the registry accepted (so at most
//! `--max-subscriptions` per client); an id is kept as the client sent it (bounded by the
//! message size); `since.epoch` is kept only when epoch-shaped (16 bytes); a held client buffers
//! at most [`MAX_BUFFERED`] live messages (shared frames), after which it is answered from the
//! newest message seen instead of a replay; acks in flight (callers waiting included) are at
//! most [`MAX_PENDING_ACKS`] holding at most [`MAX_PENDING_ACK_BYTES`] (over either, a publish
//! that would wait is refused as unavailable).

use std::collections::HashMap;
use std::rc::Rc;

use serde_json::value::RawValue;

use super::history::{Offset, Since};
use super::{wire, ClientId, Hub, HubError, Outbox};
use crate::backplane::shared::{Fetched, Numbered, EPOCH_LEN};
use crate::backplane::{Relay, Ticket};
use crate::metrics::Metrics;
use crate::protocol::deflate::SharedMessage;
use crate::protocol::OpCode;

/// Live messages a client waiting for its position may buffer.
pub const MAX_BUFFERED: usize = 4096;
/// Publishes waiting for their offset (with an `id` to ack), and the bytes their ids and topics
/// (or built acks) take: a client's ids are as large as it likes, so both are bounded.
pub const MAX_PENDING_ACKS: usize = 16_384;
pub const MAX_PENDING_ACK_BYTES: usize = 8 << 20;
/// Bytes of ids the held subscribes may keep: over it, a subscribe is answered at once (local
/// only, as while Redis is down) rather than held with a client-sized id.
pub const MAX_HELD_ID_BYTES: usize = 8 << 20;

/// How a subscribe the registry accepted joined its topic.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Joined {
    /// It made the node want the topic's channel, and Redis will confirm it.
    Confirming,
    /// A new subscriber of a topic already wanted (or of one Redis will not confirm).
    Added,
    /// Already subscribed and not held: receiving live messages.
    Again,
}

/// A subscriber whose `subscribed` waits on the backplane.
pub(super) struct Hold {
    client: ClientId,
    id: Option<Box<RawValue>>,
    /// The request's `since`: offset and epoch (empty when not epoch-shaped: matches nothing).
    since: Option<(Offset, Box<str>)>,
    /// Already subscribed and receiving live messages (a repeated subscribe): what is buffered
    /// up to the position is what it would have had live, so it goes before `subscribed`.
    live: bool,
    stage: Stage,
}

enum Stage {
    /// Waiting for Redis to confirm the channel's SUBSCRIBE.
    Joining,
    /// Waiting for the topic's position; live messages are kept until it comes.
    Fetching {
        ticket: Ticket,
        buffered: Vec<(Offset, Rc<str>, Rc<[u8]>)>,
        /// Over [`MAX_BUFFERED`]: the newest message seen (offset, epoch), answered from.
        overflowed: Option<(Offset, Rc<str>)>,
    },
}

/// A client answered with a position (epoch, offset) ahead of the subscribe connection.
type Ahead = (ClientId, Rc<str>, Offset);

/// Who waits for a publish's offset.
#[derive(Clone, Copy)]
pub(super) enum Waiter<'a> {
    /// A client of the protocol, acked with an `ack` frame carrying its id.
    Acked(ClientId, &'a RawValue),
    /// A caller answered through [`Outbox::numbered`] (see [`Hub::publish_as`]).
    Caller(ClientId),
}

/// A publish whose ack waits for its offset.
pub(super) struct AckWait {
    client: ClientId,
    /// `None`: a caller, answered through [`Outbox::numbered`] rather than with a frame.
    id: Option<Box<RawValue>>,
    topic: Box<str>,
}

/// The hub's waits, empty (and free) without a backplane.
#[derive(Default)]
pub(super) struct Waits {
    holds: HashMap<Box<str>, Vec<Hold>>,
    acks: HashMap<Ticket, AckWait>,
    next_ticket: Ticket,
    /// The last history message delivered here per topic with local subscribers: a message
    /// that does not follow it (a new epoch, or a gap after the connection to Redis was lost)
    /// is announced to the subscribers as not recovered.
    pub(super) streams: HashMap<Box<str>, Stream>,
    /// Acks held back until the publisher, subscribed to its own topic here, has been sent its
    /// copy of the message (which comes on the other Redis connection, maybe later): a
    /// subscriber reads its own message before the ack, with or without shared history.
    deferred: Vec<DeferredAck>,
    /// What `acks` and `deferred` hold in ids, topics and frames (see [`MAX_PENDING_ACK_BYTES`]).
    ack_bytes: usize,
    /// What the holds keep in ids (see [`MAX_HELD_ID_BYTES`]).
    held_bytes: usize,
    /// Clients answered with a position (epoch, offset) the subscribe connection had not
    /// delivered yet: the position's reply came on the other connection first, so messages up
    /// to it may still arrive, and they are skipped for these clients (replayed or before their
    /// position). Dropped once a later message (or another epoch) comes through.
    ahead: HashMap<Box<str>, Vec<Ahead>>,
}

impl Hold {
    fn cost(&self) -> usize {
        self.id.as_ref().map_or(0, |id| id.get().len())
    }
}

impl AckWait {
    fn cost(&self) -> usize {
        self.id.as_ref().map_or(0, |id| id.get().len()) + self.topic.len()
    }
}

pub(super) struct DeferredAck {
    client: ClientId,
    topic: Box<str>,
    epoch: Box<str>,
    offset: Offset,
    frame: Rc<[u8]>,
}

/// Where a topic's history messages delivered on this node stand.
pub(super) struct Stream {
    epoch: Rc<str>,
    last: Offset,
    /// Clients answered since with a position after a break (a newer epoch or offset than
    /// `last`): already in step with the next message, they need no notice.
    synced: Vec<ClientId>,
}

/// Whether a history message follows the last one delivered on its topic.
#[derive(Debug, PartialEq, Eq)]
enum Continuity {
    Follows,
    /// A new epoch, or offsets missed: the subscribers cannot have what came in between.
    Breaks,
}

impl Waits {
    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Whether `client` is held on `topic` (fan-out skips it).
    pub(super) fn is_held(&self, topic: &str, client: ClientId) -> bool {
        !self.holds.is_empty() && self.holds.get(topic).is_some_and(|h| h.iter().any(|h| h.client == client))
    }

    /// Whether any subscriber of `topic` is held.
    pub(super) fn holds_topic(&self, topic: &str) -> bool {
        !self.holds.is_empty() && self.holds.contains_key(topic)
    }

    fn joining(&self, topic: &str) -> bool {
        self.holds.get(topic).is_some_and(|h| h.iter().any(|h| matches!(h.stage, Stage::Joining)))
    }

    /// Records `offset` as `topic`'s last delivered message and says whether it follows the one
    /// before (the first one seen follows: the subscribers got their position from Redis), with
    /// the clients that need no notice either way.
    fn follow(&mut self, topic: &str, epoch: &str, offset: Offset) -> (Continuity, Vec<ClientId>) {
        let Some(stream) = self.streams.get_mut(topic) else {
            self.streams
                .insert(topic.into(), Stream { epoch: Rc::from(epoch), last: offset, synced: Vec::new() });
            return (Continuity::Follows, Vec::new());
        };
        let follows = *stream.epoch == *epoch && offset <= stream.last + 1;
        if *stream.epoch != *epoch {
            stream.epoch = Rc::from(epoch);
            stream.last = offset;
        } else {
            stream.last = stream.last.max(offset);
        }
        let synced = std::mem::take(&mut stream.synced);
        (if follows { Continuity::Follows } else { Continuity::Breaks }, synced)
    }

    /// `client` was answered with `topic`'s position (`epoch`, `offset`).
    fn synced(&mut self, topic: &str, client: ClientId, epoch: &str, offset: Offset) {
        match self.streams.get_mut(topic) {
            None => {
                let stream = Stream { epoch: Rc::from(epoch), last: offset, synced: Vec::new() };
                self.streams.insert(topic.into(), stream);
            }
            Some(stream) if *stream.epoch == *epoch && stream.last == offset => {}
            Some(stream) => {
                if !stream.synced.contains(&client) {
                    stream.synced.push(client);
                }
            }
        }
    }

    /// `topic` has no local subscriber left.
    pub(super) fn topic_left(&mut self, topic: &str) {
        if !self.streams.is_empty() {
            self.streams.remove(topic);
        }
        if !self.ahead.is_empty() {
            self.ahead.remove(topic);
        }
    }

    /// `client` no longer takes `topic` (left, unsubscribed): it skips nothing there any more.
    pub(super) fn forget_ahead(&mut self, topic: &str, client: ClientId) {
        if let Some(ahead) = self.ahead.get_mut(topic) {
            ahead.retain(|(c, _, _)| *c != client);
            if ahead.is_empty() {
                self.ahead.remove(topic);
            }
        }
    }

    /// Whether `client` skips `topic`'s message (`epoch`, `offset`): its position covers it.
    fn covered(&self, topic: &str, client: ClientId, epoch: &str, offset: Offset) -> bool {
        self.ahead.get(topic).is_some_and(|ahead| {
            ahead.iter().any(|(c, e, last)| *c == client && **e == *epoch && offset <= *last)
        })
    }

    /// Holds and acks (tests, diagnostics).
    pub(super) fn counts(&self) -> (usize, usize) {
        debug_assert!(self.acks.is_empty() && self.deferred.is_empty() || self.ack_bytes > 0);
        debug_assert!(!(self.acks.is_empty() && self.deferred.is_empty()) || self.ack_bytes == 0);
        debug_assert!(!self.holds.is_empty() || self.held_bytes == 0);
        (self.holds.values().map(Vec::len).sum(), self.acks.len() + self.deferred.len())
    }
}

fn owned_since(since: Option<Since<'_>>) -> Option<(Offset, Box<str>)> {
    since.map(|s| (s.offset, Box::from(if s.epoch.len() == EPOCH_LEN { s.epoch } else { "" })))
}

fn as_since(since: &Option<(Offset, Box<str>)>) -> Option<Since<'_>> {
    since.as_ref().map(|(offset, epoch)| Since { offset: *offset, epoch })
}

/// Queues one reply frame for `client` through the outbox (a completion has no reply buffer).
fn send(outbox: &mut impl Outbox, client: ClientId, write: impl Fn(&mut dyn wire::Sink)) -> bool {
    let frame = wire::build_shared_text_frame(write);
    outbox.deliver(client, &SharedMessage::from_frame(OpCode::Text, frame))
}

impl Hub {
    /// A subscribe the registry accepted, with a backplane: held until Redis confirms the
    /// channel (`will_confirm`: this subscribe made the node want it) or, with history in
    /// Redis, until the position comes. Returns false when it is to be answered at once, as
    /// without a backplane.
    pub(super) fn hold_subscribe(
        &mut self,
        from: ClientId,
        topic: &str,
        since: Option<Since<'_>>,
        id: Option<&RawValue>,
        how: Joined,
        outbox: &mut impl Outbox,
    ) -> bool {
        let (will_confirm, live) = (how == Joined::Confirming, how == Joined::Again);
        let Some(backplane) = outbox.backplane() else { return false };
        let shared = backplane.keeps_history();
        if self.waits.held_bytes + id.map_or(0, |id| id.get().len()) > MAX_HELD_ID_BYTES {
            return false;
        }
        if self.waits.is_held(topic, from) {
            // Already waiting on this topic (a repeated subscribe): answered at once below.
            return false;
        }
        let stage = if will_confirm || self.waits.joining(topic) {
            Stage::Joining
        } else if shared {
            let ticket = self.waits.ticket();
            if !backplane.fetch_position(topic, since, ticket) {
                return false;
            }
            Stage::Fetching { ticket, buffered: Vec::new(), overflowed: None }
        } else {
            return false;
        };
        let hold =
            Hold { client: from, id: id.map(ToOwned::to_owned), since: owned_since(since), live, stage };
        self.waits.held_bytes += hold.cost();
        self.waits.holds.entry(topic.into()).or_default().push(hold);
        true
    }

    /// Redis confirmed `topic`'s channel: every subscriber joining it is answered now (or, with
    /// history in Redis, its position is asked for).
    pub fn topic_confirmed(&mut self, topic: &str, outbox: &mut impl Outbox) {
        let Some(mut holds) = self.waits.holds.remove(topic) else { return };
        let shared = outbox.backplane().is_some_and(|b| b.keeps_history());
        let mut kept = Vec::with_capacity(holds.len());
        for mut hold in holds.drain(..) {
            // Counted again below for those that stay.
            self.waits.held_bytes -= hold.cost();
            if !matches!(hold.stage, Stage::Joining) {
                kept.push(hold);
                continue;
            }
            if shared {
                let ticket = self.waits.ticket();
                let asked = outbox
                    .backplane()
                    .is_some_and(|b| b.fetch_position(topic, as_since(&hold.since), ticket));
                if asked {
                    hold.stage = Stage::Fetching { ticket, buffered: Vec::new(), overflowed: None };
                    kept.push(hold);
                    continue;
                }
            }
            self.answer_local(topic, hold, outbox);
        }
        if !kept.is_empty() {
            self.waits.held_bytes += kept.iter().map(Hold::cost).sum::<usize>();
            self.waits.holds.insert(topic.into(), kept);
        }
    }

    /// The position asked for by `ticket` came (`None`: Redis could not answer): `subscribed`,
    /// then the replay, then the live messages buffered meanwhile that follow it.
    pub fn position_ready(
        &mut self,
        topic: &str,
        ticket: Ticket,
        fetched: Option<Fetched<'_>>,
        outbox: &mut impl Outbox,
    ) {
        let Some(holds) = self.waits.holds.get_mut(topic) else { return };
        let Some(at) =
            holds.iter().position(|h| matches!(h.stage, Stage::Fetching { ticket: t, .. } if t == ticket))
        else {
            return; // the client left or unsubscribed meanwhile
        };
        let hold = holds.swap_remove(at);
        if holds.is_empty() {
            self.waits.holds.remove(topic);
        }
        self.waits.held_bytes -= hold.cost();
        let Some(fetched) = fetched else {
            self.answer_local(topic, hold, outbox);
            return;
        };
        let Hold { client, id, since, live, stage } = hold;
        let Stage::Fetching { buffered, overflowed, .. } = stage else { return };
        let id = id.as_deref();
        if let Some((offset, epoch)) = overflowed {
            // More live messages came than a client may buffer: answer as of the newest one
            // (nothing replayed), so what follows is exactly the live stream after it.
            let recovered = since.as_ref().map(|_| false);
            send(outbox, client, |out| {
                wire::write_subscribed(out, topic, Some((offset, &epoch)), recovered, id)
            });
            return;
        }
        let caught_up = self
            .waits
            .streams
            .get(topic)
            .is_some_and(|s| *s.epoch == *fetched.epoch && s.last >= fetched.offset);
        if !caught_up && fetched.offset > 0 {
            self.waits.forget_ahead(topic, client);
            let entry = (client, Rc::from(fetched.epoch), fetched.offset);
            self.waits.ahead.entry(topic.into()).or_default().push(entry);
        }
        self.waits.synced(topic, client, fetched.epoch, fetched.offset);
        let before = |offset: Offset, epoch: &str| *epoch == *fetched.epoch && offset <= fetched.offset;
        if live {
            for (offset, epoch, frame) in &buffered {
                let frame = SharedMessage::from_frame(OpCode::Text, Rc::clone(frame));
                if before(*offset, epoch) && !outbox.deliver(client, &frame) {
                    return;
                }
            }
        }
        let position = Some((fetched.offset, fetched.epoch));
        if !send(outbox, client, |out| wire::write_subscribed(out, topic, position, fetched.recovered, id)) {
            return;
        }
        for (offset, data) in &fetched.replay {
            let written =
                send(outbox, client, |out| wire::write_message_at(out, Some(topic), data, Some(*offset)));
            if !written {
                return;
            }
        }
        for (offset, epoch, frame) in buffered {
            if !before(offset, &epoch)
                && !outbox.deliver(client, &SharedMessage::from_frame(OpCode::Text, frame))
            {
                return;
            }
        }
    }

    /// Answers a hold without a position from Redis (down, or unable to ask): `subscribed`
    /// (local only: no offset, `recovered: false` for a `since`), then what it buffered.
    fn answer_local(&mut self, topic: &str, hold: Hold, outbox: &mut impl Outbox) {
        let recovered = hold.since.as_ref().map(|_| false);
        let id = hold.id.as_deref();
        let sent = send(outbox, hold.client, |out| wire::write_subscribed(out, topic, None, recovered, id));
        if let Stage::Fetching { buffered, .. } = hold.stage {
            if sent {
                for (_, _, frame) in buffered {
                    if !outbox.deliver(hold.client, &SharedMessage::from_frame(OpCode::Text, frame)) {
                        break;
                    }
                }
            }
        }
    }

    /// A history message from the backplane's channel (any node's, this one's included): framed
    /// once with its offset, delivered to the topic's subscribers, buffered for those waiting for
    /// their position. False when the topic is not one a client could name (dropped, counted).
    pub fn deliver_numbered(
        &mut self,
        topic: &str,
        message: Numbered<'_>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) -> bool {
        if self.check_topic(topic).is_err() {
            return false;
        }
        let subscribers = self.registry.subscribers(topic);
        let mut delivered = 0;
        if !subscribers.is_empty() {
            let frame = wire::build_shared_text_frame(|out| {
                wire::write_message_at(out, Some(topic), message.data, Some(message.offset));
            });
            let shared = SharedMessage::from_frame(OpCode::Text, frame);
            // Not the next offset: tell each subscriber it could not recover (as a `subscribed`
            // with `recovered:false` and the position just before this message), so a client
            // never takes a new epoch's offsets for old ones or silently skips a gap.
            let (continuity, synced) = self.waits.follow(topic, message.epoch, message.offset);
            let notice = (continuity == Continuity::Breaks).then(|| {
                let before = Some((message.offset.saturating_sub(1), message.epoch));
                let frame = wire::build_shared_text_frame(|out| {
                    wire::write_subscribed(out, topic, before, Some(false), None);
                });
                SharedMessage::from_frame(OpCode::Text, frame)
            });
            let held = self.waits.holds_topic(topic);
            let ahead = !self.waits.ahead.is_empty() && self.waits.ahead.contains_key(topic);
            let mut epoch: Option<Rc<str>> = None;
            for &client in subscribers {
                if ahead && self.waits.covered(topic, client, message.epoch, message.offset) {
                    continue;
                }
                if held {
                    if let Some(hold) = self
                        .waits
                        .holds
                        .get_mut(topic)
                        .and_then(|h| h.iter_mut().find(|h| h.client == client))
                    {
                        if let Stage::Fetching { buffered, overflowed, .. } = &mut hold.stage {
                            let epoch = epoch.get_or_insert_with(|| Rc::from(message.epoch)).clone();
                            if overflowed.is_some() || buffered.len() >= MAX_BUFFERED {
                                buffered.clear();
                                *overflowed = Some((message.offset, epoch));
                            } else {
                                buffered.push((message.offset, epoch, Rc::clone(shared.plain())));
                            }
                        }
                        continue;
                    }
                }
                if let Some(notice) = notice.as_ref().filter(|_| !synced.contains(&client)) {
                    if !outbox.deliver(client, notice) {
                        continue;
                    }
                }
                if outbox.deliver(client, &shared) {
                    delivered += 1;
                }
            }
        }
        metrics.record_publish(delivered);
        if let Some(ahead) = self.waits.ahead.get_mut(topic) {
            // Channel order is offset order: nothing at or before this message comes after it.
            ahead.retain(|(_, e, last)| **e == *message.epoch && message.offset < *last);
            if ahead.is_empty() {
                self.waits.ahead.remove(topic);
            }
        }
        if !self.waits.deferred.is_empty() {
            self.release_acks(
                |a| *a.topic == *topic && (*a.epoch != *message.epoch || a.offset <= message.offset),
                outbox,
            );
        }
        true
    }

    /// Sends the deferred acks `due` picks, in the order they were numbered.
    fn release_acks(&mut self, due: impl Fn(&DeferredAck) -> bool, outbox: &mut impl Outbox) {
        let mut at = 0;
        while at < self.waits.deferred.len() {
            if due(&self.waits.deferred[at]) {
                let ack = self.waits.deferred.remove(at);
                self.waits.ack_bytes -= ack.frame.len();
                outbox.deliver(ack.client, &SharedMessage::from_frame(OpCode::Text, ack.frame));
            } else {
                at += 1;
            }
        }
    }

    /// A publish on a topic whose history the backplane keeps: sent to Redis, delivered when it
    /// comes back from the channel (here as on every node). With `waiter` (a WebSocket publish
    /// with an id, or a caller of [`Hub::publish_as`]), its offset follows in
    /// [`Hub::append_done`].
    pub(super) fn append(
        &mut self,
        topic: &str,
        data: &RawValue,
        waiter: Option<Waiter<'_>>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) -> Result<(), HubError> {
        let Some(backplane) = outbox.backplane() else { return Err(HubError::Unavailable) };
        let id = match waiter {
            Some(Waiter::Acked(_, id)) => Some(id),
            _ => None,
        };
        let ticket = match waiter {
            Some(_)
                if self.waits.acks.len() + self.waits.deferred.len() >= MAX_PENDING_ACKS
                    || self.waits.ack_bytes + id.map_or(0, |id| id.get().len()) + topic.len()
                        > MAX_PENDING_ACK_BYTES =>
            {
                None
            }
            Some(_) => Some(self.waits.ticket()),
            None => None,
        };
        if waiter.is_some() && ticket.is_none() {
            metrics.record_history_unavailable();
            return Err(HubError::Unavailable);
        }
        match backplane.append(topic, data, ticket) {
            Relay::Sent => {
                self.last_relay = Relay::Sent;
                if let (Some(ticket), Some(waiter)) = (ticket, waiter) {
                    let wait = match waiter {
                        Waiter::Acked(client, id) => {
                            AckWait { client, id: Some(id.to_owned()), topic: topic.into() }
                        }
                        Waiter::Caller(client) => AckWait { client, id: None, topic: topic.into() },
                    };
                    self.waits.ack_bytes += wait.cost();
                    self.waits.acks.insert(ticket, wait);
                }
                Ok(())
            }
            _ => {
                self.last_relay = Relay::Failed;
                metrics.record_history_unavailable();
                Err(HubError::Unavailable)
            }
        }
    }

    /// The publish `ticket` was numbered (`Some((epoch, offset))`) or failed: its ack, or an
    /// error, goes to the publisher if it is still here (a caller hears either through
    /// [`Outbox::numbered`]).
    pub fn append_done(
        &mut self,
        ticket: Ticket,
        result: Option<(&str, Offset)>,
        outbox: &mut impl Outbox,
        metrics: &mut Metrics,
    ) {
        let Some(wait) = self.waits.acks.remove(&ticket) else { return };
        self.waits.ack_bytes -= wait.cost();
        let Some(id) = wait.id.as_deref() else {
            outbox.numbered(wait.client, result);
            return;
        };
        match result {
            Some((epoch, offset)) => {
                let frame = wire::build_shared_text_frame(|out| {
                    wire::write_offset_ack(out, &wait.topic, offset, epoch, id)
                });
                // Subscribed here (and live) to what it published, the publisher gets its copy
                // first: the ack waits for it unless it went out already.
                let subscribed = self.registry.topics_of(wait.client).any(|t| t == &*wait.topic)
                    && !self.waits.is_held(&wait.topic, wait.client);
                let copy_sent = self
                    .waits
                    .streams
                    .get(&*wait.topic)
                    .is_some_and(|s| *s.epoch == *epoch && s.last >= offset);
                if subscribed && !copy_sent {
                    let AckWait { client, topic, .. } = wait;
                    let epoch = epoch.into();
                    self.waits.ack_bytes += frame.len();
                    self.waits.deferred.push(DeferredAck { client, topic, epoch, offset, frame });
                } else {
                    outbox.deliver(wait.client, &SharedMessage::from_frame(OpCode::Text, frame));
                }
            }
            None => {
                metrics.record_error_reply();
                let message = HubError::Unavailable.to_string();
                send(outbox, wait.client, |out| wire::write_error(out, &message, Some(id)));
            }
        }
    }

    /// The backplane's connection was lost: every wait is answered now (subscribes local only,
    /// publishes waiting for their offset with an error: they may or may not have been kept).
    pub fn backplane_down(&mut self, outbox: &mut impl Outbox, metrics: &mut Metrics) {
        let holds = std::mem::take(&mut self.waits.holds);
        self.waits.held_bytes = 0;
        for (topic, holds) in holds {
            for hold in holds {
                self.answer_local(&topic, hold, outbox);
            }
        }
        // Their copies may never come now: the acks go at once.
        self.release_acks(|_| true, outbox);
        let acks: Vec<Ticket> = self.waits.acks.keys().copied().collect();
        for ticket in acks {
            self.append_done(ticket, None, outbox, metrics);
        }
    }

    /// `client` unsubscribes from `topic` while held: its `subscribed` goes out first (local
    /// only), so the client reads `subscribed` then `unsubscribed`, in the order it asked.
    pub(super) fn release_hold(&mut self, client: ClientId, topic: &str, outbox: &mut impl Outbox) {
        let Some(holds) = self.waits.holds.get_mut(topic) else { return };
        let Some(at) = holds.iter().position(|h| h.client == client) else { return };
        let hold = holds.swap_remove(at);
        if holds.is_empty() {
            self.waits.holds.remove(topic);
        }
        self.waits.held_bytes -= hold.cost();
        self.answer_local(topic, hold, outbox);
    }

    /// `client` is leaving: its holds and acks go, so their completions find nothing.
    pub(super) fn forget_waits(&mut self, client: ClientId) {
        if !self.waits.ahead.is_empty() {
            let topics: Vec<Box<str>> = self.registry.topics_of(client).map(Box::from).collect();
            for topic in topics {
                self.waits.forget_ahead(&topic, client);
            }
        }
        if !self.waits.holds.is_empty() {
            let topics: Vec<Box<str>> = self.registry.topics_of(client).map(Box::from).collect();
            for topic in topics {
                if let Some(holds) = self.waits.holds.get_mut(&*topic) {
                    let bytes = &mut self.waits.held_bytes;
                    holds.retain(|h| {
                        let keep = h.client != client;
                        if !keep {
                            *bytes -= h.cost();
                        }
                        keep
                    });
                    if holds.is_empty() {
                        self.waits.holds.remove(&*topic);
                    }
                }
            }
        }
        let bytes = &mut self.waits.ack_bytes;
        if !self.waits.acks.is_empty() {
            self.waits.acks.retain(|_, a| {
                let keep = a.client != client;
                if !keep {
                    *bytes -= a.cost();
                }
                keep
            });
        }
        if !self.waits.deferred.is_empty() {
            self.waits.deferred.retain(|a| {
                let keep = a.client != client;
                if !keep {
                    *bytes -= a.frame.len();
                }
                keep
            });
        }
    }

    /// Subscribes held and publishes waiting for an ack (tests, diagnostics).
    pub fn waiting(&self) -> (usize, usize) {
        self.waits.counts()
    }
}
