//! The backplane: what joins several wshub processes so a publish on one reaches subscribers
//! on all. The hub sees only the [`Backplane`] trait; [`redis`] implements it over Redis
//! pub/sub, and without `--redis` the reactor gives the hub no backplane at all, so the hot
//! path costs one `None` check.
pub mod link;
pub mod redis;
pub mod url;

use serde_json::value::RawValue;

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
    /// `topic` got its first local subscriber: start receiving it from the other nodes.
    fn topic_wanted(&mut self, topic: &str);
    /// `topic` lost its last local subscriber: stop receiving it.
    fn topic_unwanted(&mut self, topic: &str);
}
