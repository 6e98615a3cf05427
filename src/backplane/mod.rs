//! The backplane: what joins several wshub processes so a publish on one reaches subscribers
//! on all. The hub sees only the [`Backplane`] trait; [`redis`] implements it over Redis
//! pub/sub, and without `--redis` the reactor gives the hub no backplane at all, so the hot
//! path costs one `None` check.
pub mod link;
pub mod redis;
pub mod shared;
pub mod url;

use serde_json::value::RawValue;

use crate::hub::history::Since;

/// Names one request the hub waits on (a subscribe's position, a publish's offset), so its
/// completion finds its way back; unique per process.
pub type Ticket = u64;

/// What became of a message sent to the backplane; reported in `ack`s and HTTP replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Relay {
    /// No backplane is configured.
    #[default]
    Off,
    /// Queued on the connection to Redis. Redis pub/sub is at-most-once: this is not a
    /// delivery receipt from the other nodes.
    Sent,
    /// Redis is down or its outgoing buffer is full; only local subscribers got it.
    Failed,
}

/// The hub's view of the other nodes.
pub trait Backplane {
    /// A publish already delivered locally; the other nodes should deliver it too.
    fn publish(&mut self, topic: &str, data: &RawValue) -> Relay;
    /// A broadcast already delivered locally.
    fn broadcast(&mut self, data: &RawValue) -> Relay;
    /// `topic` got its first local subscriber: start receiving it from the other nodes. True
    /// when Redis will confirm it (the reactor then calls `Hub::topic_confirmed`, or
    /// `Hub::backplane_down` if the connection is lost first); false when the backplane is not
    /// up, and the subscribe is answered at once (local only).
    fn topic_wanted(&mut self, topic: &str) -> bool;
    /// `topic` lost its last local subscriber: stop receiving it.
    fn topic_unwanted(&mut self, topic: &str);
    /// Whether topic history is kept by the backplane (then shared by every node).
    fn keeps_history(&self) -> bool {
        false
    }
    /// A publish on a topic whose history the backplane keeps: it numbers, keeps and publishes
    /// it, and every node (this one included) delivers it when it comes back from the channel.
    /// With a ticket, the completion is `Hub::append_done`. `Failed`: nothing was sent.
    fn append(&mut self, _topic: &str, _data: &RawValue, _ticket: Option<Ticket>) -> Relay {
        Relay::Failed
    }
    /// Asks for `topic`'s position (and what a recovery from `since` needs); the completion is
    /// `Hub::position_ready`. False when it cannot be asked now.
    fn fetch_position(&mut self, _topic: &str, _since: Option<Since<'_>>, _ticket: Ticket) -> bool {
        false
    }
}
