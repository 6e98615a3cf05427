//! The backplane's events in the loop: readiness on its two Redis sockets, its one deadline,
//! and the end-of-turn write of what this turn published.
//!
//! The Redis client ([`RedisBackplane`](crate::backplane::redis::RedisBackplane)) does the
//! protocol; this handler only moves its events into the hub: a message from another node is
//! published or broadcast to the local clients through [`Deliveries`] with no backplane (so it
//! is never relayed back), framed once like a local publish; a history message (any node's) is
//! delivered with its offset; the completions of what the hub waits for (a channel confirmed, a
//! topic's position, a publish's offset) go to the hub's `pending` side. When the connection
//! is lost, the hub answers every wait at once. The backplane's deadline (connect timeout,
//! reconnect backoff, TTL refresh or reply deadline) is one entry in the timer queue under the token reserved for it,
//! [`BACKPLANE_TIMER`].

use mio::Registry;
use slab::Slab;

use super::connection::Connection;
use super::fanout::{Cuts, Deliveries};
use super::state::Shared;
use super::timers::{NEVER, RESERVED_TOKEN};
use crate::backplane::redis::Inbound;
use crate::protocol::session::Millis;

/// The timer-queue token of the backplane's deadline (never a connection's slab key).
pub(super) const BACKPLANE_TIMER: usize = RESERVED_TOKEN;

/// Readiness on the backplane's connection `which` (`redis::SUB` or `redis::PUB`).
pub(super) fn on_event(conns: &mut Slab<Connection>, s: &mut Shared, registry: &Registry, which: usize) {
    let Some(backplane) = s.backplane.as_mut() else { return };
    let mut cuts = Cuts::default();
    // Confirmed channels may ask the backplane for positions: done once it has finished reading.
    let mut confirmed: Vec<Box<str>> = Vec::new();
    backplane.on_event(which, registry, s.now, |inbound| {
        let mut outbox = Deliveries::new(conns, &mut s.dirty, &mut s.deflater, &s.settings);
        let deliverable = match inbound {
            Inbound::Publish { topic, data } => {
                s.hub.publish(topic, data, &mut outbox, &mut s.metrics).is_ok()
            }
            Inbound::Broadcast { data } => {
                s.hub.broadcast(data, &mut outbox, &mut s.metrics);
                true
            }
            Inbound::Numbered { topic, message } => {
                s.hub.deliver_numbered(topic, message, &mut outbox, &mut s.metrics)
            }
            Inbound::Confirmed { topic } => {
                confirmed.push(topic.into());
                true
            }
            Inbound::Appended { ticket, result } => {
                s.hub.append_done(ticket, result, &mut outbox, &mut s.metrics);
                true
            }
            Inbound::Position { ticket, topic, fetched } => {
                s.hub.position_ready(topic, ticket, fetched, &mut outbox);
                true
            }
        };
        cuts.absorb(outbox.finish());
        deliverable
    });
    if !confirmed.is_empty() {
        let mut outbox =
            Deliveries::new(conns, &mut s.dirty, &mut s.deflater, &s.settings).relaying(s.backplane.as_mut());
        for topic in confirmed {
            s.hub.topic_confirmed(&topic, &mut outbox);
        }
        cuts.absorb(outbox.finish());
    }
    after(conns, s, cuts);
}

/// At the start of a turn: reads again the connections that stopped at their read budget.
pub(super) fn reread(conns: &mut Slab<Connection>, s: &mut Shared, registry: &Registry) {
    let Some(links) = s.backplane.as_mut().map(|b| b.take_reread()) else { return };
    for (which, again) in links.into_iter().enumerate() {
        if again {
            on_event(conns, s, registry, which);
        }
    }
}

/// The backplane's deadline came due at `deadline` (ignored when superseded).
pub(super) fn on_timer(conns: &mut Slab<Connection>, s: &mut Shared, registry: &Registry, deadline: Millis) {
    let Some(backplane) = s.backplane.as_mut() else { return };
    if backplane.timer_armed != deadline {
        return;
    }
    backplane.timer_armed = NEVER;
    backplane.on_timer(registry, s.now);
    after(conns, s, Cuts::default());
}

/// Writes the publishes and subscription changes this turn queued.
pub(super) fn flush(conns: &mut Slab<Connection>, s: &mut Shared, registry: &Registry) {
    if let Some(backplane) = s.backplane.as_mut() {
        backplane.flush(registry, s.now);
        after(conns, s, Cuts::default());
    }
}

/// After any backplane event: if the connection was lost, the hub answers what it waited for;
/// then the refused clients are cut off and the deadline re-armed.
fn after(conns: &mut Slab<Connection>, s: &mut Shared, mut cuts: Cuts) {
    if s.backplane.as_mut().is_some_and(|b| b.take_went_down()) {
        let mut outbox = Deliveries::new(conns, &mut s.dirty, &mut s.deflater, &s.settings);
        s.hub.backplane_down(&mut outbox, &mut s.metrics);
        cuts.absorb(outbox.finish());
    }
    cuts.apply(conns, s);
    arm(s);
}

/// Puts the backplane's next deadline in the queue (only ever earlier; see `timers`).
pub(super) fn arm(s: &mut Shared) {
    if let Some(backplane) = s.backplane.as_mut() {
        let next = backplane.next_deadline();
        s.timers.arm(BACKPLANE_TIMER, &mut backplane.timer_armed, next);
    }
}
