//! Topic history: the last messages of each topic, with offsets and an epoch, so that a client
//! that reconnects can get exactly what it missed, or be told that it cannot.
//!
//! The contract, sans-IO like the rest of the hub:
//! * Time enters as `now` (milliseconds on the reactor's clock) on every call; nothing here
//!   reads a clock, owns a timer or a socket.
//! * [`HistoryStore::append`] gives a published message its offset (the topic's last + 1), has
//!   the caller encode the frame once with that offset, keeps that very frame (an `Rc`, shared
//!   with every subscriber's send queue) and returns it for fan-out.
//! * [`HistoryStore::subscribe`] reports the topic's position (last offset, epoch) and, given a
//!   `since`, either pushes every kept frame after it (in order) and says `recovered: true`, or
//!   pushes nothing and says `recovered: false`. There is no partial recovery.
//! * [`HistoryStore::expire`] drops what is due at `now`; [`HistoryStore::next_deadline`] says
//!   when the caller must come back. The caller asks at most once a second, so TTL expiry
//!   happens within a second of its deadline.
//!
//! ```text
//! publish:   frame = store.append(topic, now, |offset| encode(topic, data, offset)); fan out frame
//! subscribe: pos = store.subscribe(topic, since, now, &mut replay); reply(pos); send each replay frame
//! each turn: if store.next_deadline() <= now { store.expire(now, is_subscribed) }
//! ```
//!
//! An **epoch** names one continuous life of a topic's history: offsets are only comparable
//! within an epoch. A topic gets a new random epoch whenever its history starts afresh: at the
//! first publish or subscribe after a restart, or after the topic was idle (nothing kept, no
//! subscribers, nothing published, subscribed or unsubscribed) for the TTL. A topic that has subscribers
//! keeps its epoch however quiet it is, so a long-lived quiet subscription can still recover.
//!
//! # Memory
//!
//! A kept message costs its encoded frame plus [`PER_MESSAGE_OVERHEAD`] bytes (ring slot, due
//! entry, `Rc` counts); that sum is what `--history-max-bytes` bounds, evicting the oldest
//! messages of any topic first. A topic with history state costs [`PER_TOPIC_OVERHEAD`] bytes
//! plus its name twice, whether or not it keeps messages; such state exists only for topics
//! published to or subscribed within the last TTL, or subscribed now, and for at most
//! `max_topics` of them (`--max-topics`; the least recently used topic without subscribers
//! makes room). So, with `N` =
//! `--history-size`, `T` such topics and frames of `F` bytes:
//! `bytes <= min(T * N * (F + 72), max_bytes) + T * (PER_TOPIC_OVERHEAD + 2 * name)` (on 64-bit
//! Linux the overheads are 72 and 168 bytes).
//! With `--history-size 0` there is no store at all: topics cost nothing and `message`s carry
//! no offset.
//!
//! This in-memory store is the single-node history. With a Redis backplane, history is kept in
//! Redis instead and shared by every node (`backplane::shared`); the hub then has no store and
//! waits on the backplane for offsets and positions (`hub::pending`).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use slab::Slab;

use crate::protocol::session::Millis;

/// A kept message: the very frame (plain, encoded once at publish) the subscribers were sent.
/// Only the plain frame is kept: a replay to a client that compresses compresses again, which
/// costs less than keeping every message's compressed-variant slots (200 bytes each).
pub type Frame = Rc<[u8]>;

/// A topic's message counter: the first message published is 1; 0 means "none yet".
pub type Offset = u64;

/// Settings of the in-memory history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per topic (0 turns history off; the hub then holds no store).
    pub size: usize,
    /// How long a message is kept, and how long an unused topic keeps its epoch.
    pub ttl: Millis,
    /// Bound on the bytes all kept messages cost (frames plus [`PER_MESSAGE_OVERHEAD`]).
    pub max_bytes: usize,
    /// Bound on the topics with history state (`--max-topics`): at it, a topic that needs
    /// state takes the place of the least recently used one that has no subscribers.
    pub max_topics: usize,
}

/// Where a client says it stopped: the last offset it saw in that epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Since<'a> {
    pub offset: Offset,
    pub epoch: &'a str,
}

/// A topic's position, for the `subscribed` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The last offset published to the topic (0 if none in this epoch).
    pub offset: Offset,
    pub epoch: Rc<str>,
    /// Set when the request had a `since`: whether every message after it was replayed.
    pub recovered: Option<bool>,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    /// Topics with history state.
    pub topics: usize,
    /// Messages kept.
    pub messages: usize,
    /// Bytes the kept messages cost, as bounded by `max_bytes`.
    pub bytes: usize,
}

/// What the hub needs from a history, whatever keeps it.
pub trait HistoryStore {
    /// Records a message published to `topic`: assigns the next offset, lets `encode` build the
    /// frame with it (once), keeps that frame and returns it for fan-out.
    fn append(
        &mut self,
        topic: &str,
        now: Millis,
        in_use: &dyn Fn(&str) -> bool,
        encode: &mut dyn FnMut(Offset) -> Frame,
    ) -> Frame;

    /// A client subscribes to `topic`. Creates the topic's state (fresh epoch) if it had none.
    /// With `since`, pushes onto `replay` every kept frame after it, in order, when the epoch
    /// matches and nothing after it was dropped (`recovered: true`), and nothing otherwise.
    /// `in_use(topic)` says whether a topic has subscribers: a topic that needs new state at
    /// the topic bound takes the place of one that has none (so does `append`'s).
    fn subscribe(
        &mut self,
        topic: &str,
        since: Option<Since<'_>>,
        now: Millis,
        in_use: &dyn Fn(&str) -> bool,
        replay: &mut Vec<Frame>,
    ) -> Position;

    /// A subscriber left `topic`: its idle time counts from `now`, so a client that drops off
    /// a quiet topic can come back within the TTL and still find its epoch.
    fn touch(&mut self, topic: &str, now: Millis);

    /// Drops messages older than the TTL and the state of topics idle that long.
    /// `in_use(topic)` says whether a topic still has subscribers (then its epoch is kept).
    fn expire(&mut self, now: Millis, in_use: &dyn Fn(&str) -> bool);

    /// When `expire` next has something to do, if ever.
    fn next_deadline(&self) -> Option<Millis>;

    fn stats(&self) -> HistoryStats;
}

/// Cost of one kept message beyond its frame: its ring slot, its due entry and the `Rc`'s two
/// counters.
pub const PER_MESSAGE_OVERHEAD: usize =
    std::mem::size_of::<Kept>() + std::mem::size_of::<Due>() + 2 * std::mem::size_of::<usize>();

/// Cost of one topic's state beyond its name (kept twice: map key and epoch-owning record)
/// and its ring's slots: the record in the slab, the map entry, the epoch string.
pub const PER_TOPIC_OVERHEAD: usize = std::mem::size_of::<TopicHistory>()
    + std::mem::size_of::<(Rc<str>, usize)>()
    + EPOCH_LEN
    + 4 * std::mem::size_of::<usize>();

/// Epochs are 16 hex digits: 64 random bits.
const EPOCH_LEN: usize = 16;

/// One kept message.
struct Kept {
    offset: Offset,
    frame: Frame,
}

/// An entry of the due queue: a message to drop at `at + ttl`, or (`offset == 0`) a topic to
/// look at then, to free its state if it stayed idle.
#[derive(Clone, Copy)]
struct Due {
    at: Millis,
    key: usize,
    /// Which life of the slab slot this is for: a freed topic's entries are stale.
    serial: u64,
    offset: Offset,
}

struct TopicHistory {
    name: Rc<str>,
    serial: u64,
    epoch: Rc<str>,
    last: Offset,
    kept: VecDeque<Kept>,
    /// Last publish or subscribe.
    touched: Millis,
    /// A look-at entry (`offset == 0`) for this topic is in the due queue.
    look_pending: bool,
}

/// An entry of the use queue: topic `key` as of its last use `touched` when queued.
#[derive(Clone, Copy)]
struct Turn {
    key: usize,
    serial: u64,
    touched: Millis,
}

/// Topics looked at, at most, to find one to forget when a new topic needs state at the bound
/// (each in use, or used since it was queued, goes to the back: a second chance).
const MAKE_ROOM_STEPS: usize = 64;

/// The single-node history: one ring per topic, one due queue for all.
///
/// Entries enter the due queue in publish order, so the queue's front is always the next
/// message to expire, and TTL expiry and the byte bound both pop from the front: no scan.
/// Messages a ring drops for its size leave stale entries behind; those are skipped when they
/// come up and swept out when they outnumber the live ones (amortized O(1) per publish).
pub struct MemoryHistory {
    config: HistoryConfig,
    topics: Slab<TopicHistory>,
    by_name: HashMap<Rc<str>, usize>,
    due: VecDeque<Due>,
    /// Every topic with state once (plus stale entries of freed ones), least recently queued
    /// first: who makes room at the topic bound.
    order: VecDeque<Turn>,
    messages: usize,
    bytes: usize,
    seed: u64,
    serial: u64,
}

impl MemoryHistory {
    /// `seed` makes the epochs: give each process a fresh random one ([`random_seed`]).
    pub fn new(config: HistoryConfig, seed: u64) -> MemoryHistory {
        MemoryHistory {
            config,
            topics: Slab::new(),
            by_name: HashMap::new(),
            due: VecDeque::new(),
            order: VecDeque::new(),
            messages: 0,
            bytes: 0,
            seed,
            serial: 0,
        }
    }

    fn new_topic(&mut self, topic: &str, now: Millis) -> usize {
        self.serial += 1;
        let serial = self.serial;
        let name: Rc<str> = Rc::from(topic);
        let epoch = epoch_text(splitmix64(self.seed ^ splitmix64(serial)));
        let key = self.topics.insert(TopicHistory {
            name: Rc::clone(&name),
            serial,
            epoch,
            last: 0,
            kept: VecDeque::new(),
            touched: now,
            look_pending: false,
        });
        self.by_name.insert(name, key);
        self.order.push_back(Turn { key, serial, touched: now });
        key
    }

    fn key_of(&mut self, topic: &str, now: Millis, in_use: &dyn Fn(&str) -> bool) -> usize {
        match self.by_name.get(topic) {
            Some(&key) => key,
            None => {
                self.make_room(in_use);
                self.new_topic(topic, now)
            }
        }
    }

    /// At the topic bound, forgets the state of the least recently used topic that has no
    /// subscribers: a client coming back to it is told `recovered: false`, as after the TTL.
    /// Without this, every name published to (or subscribed and left) within the TTL kept
    /// state, ~600 bytes each for a long name, however many. Second chance: a topic in use,
    /// or used since it was queued, goes to the back; at most [`MAKE_ROOM_STEPS`] of those per
    /// call, so a bound full of subscribed topics costs a few steps, never a scan (the state
    /// is then made anyway: subscribed topics are bounded by the hub's own `--max-topics`).
    fn make_room(&mut self, in_use: &dyn Fn(&str) -> bool) {
        let mut steps = MAKE_ROOM_STEPS;
        while self.topics.len() >= self.config.max_topics && steps > 0 {
            let Some(turn) = self.order.pop_front() else { return };
            let Some(topic) = self.topics.get(turn.key).filter(|t| t.serial == turn.serial) else {
                continue; // freed by the TTL: a stale entry
            };
            if topic.touched != turn.touched || in_use(&topic.name) {
                steps -= 1;
                let touched = topic.touched;
                self.order.push_back(Turn { touched, ..turn });
                continue;
            }
            self.forget(turn.key);
        }
        self.compact_order();
    }

    /// Frees topic `key`'s state and whatever it keeps (its due entries go stale).
    fn forget(&mut self, key: usize) {
        let topic = self.topics.remove(key);
        self.by_name.remove(&topic.name);
        self.messages -= topic.kept.len();
        self.bytes -= topic.kept.iter().map(|k| cost(&k.frame)).sum::<usize>();
    }

    /// Sweeps stale entries out of the use queue once they outnumber the live ones.
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.topics.len() + 1024 {
            return;
        }
        let topics = &self.topics;
        self.order.retain(|turn| topics.get(turn.key).is_some_and(|t| t.serial == turn.serial));
    }

    /// Drops the oldest message topic `key` keeps, if any, from the totals too.
    fn drop_oldest(&mut self, key: usize) {
        if let Some(old) = self.topics[key].kept.pop_front() {
            self.messages -= 1;
            self.bytes -= cost(&old.frame);
        }
    }

    /// Pops the due queue's front and deals with it: drops its message if still kept, then
    /// frees or revisits the topic.
    fn pop_front(&mut self, now: Millis, in_use: &dyn Fn(&str) -> bool) {
        let Some(entry) = self.due.pop_front() else { return };
        let Some(topic) = self.topics.get_mut(entry.key).filter(|t| t.serial == entry.serial) else {
            return;
        };
        if entry.offset == 0 {
            topic.look_pending = false;
        } else if topic.kept.front().is_some_and(|k| k.offset == entry.offset) {
            self.drop_oldest(entry.key);
        }
        self.settle(entry.key, now, in_use);
    }

    /// A topic whose ring is empty and that nothing in the queue will come back to: free it if
    /// it was idle for the TTL and nobody subscribes, else make sure it is looked at again.
    fn settle(&mut self, key: usize, now: Millis, in_use: &dyn Fn(&str) -> bool) {
        let ttl = self.config.ttl;
        let Some(topic) = self.topics.get_mut(key) else { return };
        if !topic.kept.is_empty() || topic.look_pending {
            return;
        }
        let at = if topic.touched.saturating_add(ttl) > now {
            topic.touched
        } else if in_use(&topic.name) {
            topic.touched = now;
            now
        } else {
            let name = Rc::clone(&topic.name);
            self.by_name.remove(&name);
            self.topics.remove(key);
            return;
        };
        topic.look_pending = true;
        let serial = topic.serial;
        self.due.push_back(Due { at, key, serial, offset: 0 });
    }

    /// Sweeps stale entries out of the due queue once they outnumber the live ones.
    fn compact_if_stale(&mut self) {
        if self.due.len() <= 2 * (self.messages + self.topics.len()) + 1024 {
            return;
        }
        let topics = &self.topics;
        self.due.retain(|e| match topics.get(e.key) {
            Some(t) if t.serial == e.serial => {
                e.offset == 0 || t.kept.front().is_some_and(|k| k.offset <= e.offset)
            }
            _ => false,
        });
    }
}

/// What a kept message counts against the byte bound: its frame and the bookkeeping.
fn cost(frame: &Frame) -> usize {
    frame.len() + PER_MESSAGE_OVERHEAD
}

impl HistoryStore for MemoryHistory {
    fn append(
        &mut self,
        topic: &str,
        now: Millis,
        in_use: &dyn Fn(&str) -> bool,
        encode: &mut dyn FnMut(Offset) -> Frame,
    ) -> Frame {
        let key = self.key_of(topic, now, in_use);
        let t = &mut self.topics[key];
        t.last += 1;
        t.touched = now;
        let offset = t.last;
        let frame = encode(offset);
        t.kept.push_back(Kept { offset, frame: Rc::clone(&frame) });
        self.messages += 1;
        self.bytes += cost(&frame);
        let serial = t.serial;
        if t.kept.len() > self.config.size {
            self.drop_oldest(key);
        }
        self.due.push_back(Due { at: now, key, serial, offset });
        // Over the global bound: drop the oldest messages of any topic, this one's included.
        while self.bytes > self.config.max_bytes && !self.due.is_empty() {
            self.pop_front(now, &|_| true);
        }
        self.compact_if_stale();
        frame
    }

    fn subscribe(
        &mut self,
        topic: &str,
        since: Option<Since<'_>>,
        now: Millis,
        in_use: &dyn Fn(&str) -> bool,
        replay: &mut Vec<Frame>,
    ) -> Position {
        let key = self.key_of(topic, now, in_use);
        let t = &mut self.topics[key];
        t.touched = now;
        let recovered = since.map(|since| {
            if &*t.epoch != since.epoch || since.offset > t.last {
                return false;
            }
            // Every message after `since` is kept when the oldest kept one is at most the next.
            let first = t.kept.front().map_or(t.last + 1, |k| k.offset);
            if first > since.offset + 1 {
                return false;
            }
            let skip = (since.offset + 1 - first) as usize;
            replay.extend(t.kept.iter().skip(skip).map(|k| Rc::clone(&k.frame)));
            true
        });
        let position = Position { offset: t.last, epoch: Rc::clone(&t.epoch), recovered };
        self.settle(key, now, &|_| true);
        position
    }

    fn touch(&mut self, topic: &str, now: Millis) {
        if let Some(&key) = self.by_name.get(topic) {
            self.topics[key].touched = now;
        }
    }

    fn expire(&mut self, now: Millis, in_use: &dyn Fn(&str) -> bool) {
        while self.due.front().is_some_and(|e| e.at.saturating_add(self.config.ttl) <= now) {
            self.pop_front(now, in_use);
        }
    }

    fn next_deadline(&self) -> Option<Millis> {
        self.due.front().map(|e| e.at.saturating_add(self.config.ttl))
    }

    fn stats(&self) -> HistoryStats {
        HistoryStats { topics: self.topics.len(), messages: self.messages, bytes: self.bytes }
    }
}

/// 64 random bits from the kernel (`/dev/urandom`), for epochs that differ across restarts.
/// Falls back on the clock and the process id if the device cannot be read (then epochs
/// still differ across restarts, which is all they need; they are not secrets).
pub fn random_seed() -> u64 {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    match read {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(e) => {
            log::warn!("/dev/urandom unreadable ({e}); history epochs seeded from the clock");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            splitmix64(nanos ^ u64::from(std::process::id()) << 32)
        }
    }
}

/// SplitMix64's finalizer: a bijection that spreads a counter over 64 bits.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn epoch_text(bits: u64) -> Rc<str> {
    Rc::from(format!("{bits:016x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Millis = 1000;

    fn store(size: usize, ttl: Millis, max_bytes: usize) -> MemoryHistory {
        MemoryHistory::new(HistoryConfig { size, ttl, max_bytes, max_topics: usize::MAX }, 7)
    }

    /// Appends a message whose frame is its offset in text, padded to `len` bytes.
    fn put(h: &mut MemoryHistory, topic: &str, now: Millis) -> Offset {
        let mut got = 0;
        h.append(topic, now, &|_| false, &mut |offset| {
            got = offset;
            Rc::from(format!("{topic}:{offset}").as_bytes())
        });
        got
    }

    fn replayed(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(|f| String::from_utf8(f.to_vec()).unwrap()).collect()
    }

    /// The cost of the message whose payload is `text`.
    fn cost_of(text: &str) -> usize {
        cost(&Rc::from(text.as_bytes()))
    }

    fn since(
        h: &mut MemoryHistory,
        topic: &str,
        offset: Offset,
        epoch: &str,
        now: Millis,
    ) -> (Position, Vec<String>) {
        let mut replay = Vec::new();
        let pos = h.subscribe(topic, Some(Since { offset, epoch }), now, &|_| false, &mut replay);
        (pos, replayed(&replay))
    }

    #[test]
    fn offsets_count_from_one_per_topic() {
        let mut h = store(10, 60 * SEC, 1 << 20);
        assert_eq!(put(&mut h, "a", 0), 1);
        assert_eq!(put(&mut h, "a", 0), 2);
        assert_eq!(put(&mut h, "b", 0), 1);
        let mut replay = Vec::new();
        let pos = h.subscribe("a", None, 0, &|_| false, &mut replay);
        assert_eq!((pos.offset, pos.recovered), (2, None));
        assert!(replay.is_empty(), "no since, no replay");
        assert_eq!(pos.epoch.len(), EPOCH_LEN);
    }

    #[test]
    fn recovers_exactly_what_follows_since() {
        let mut h = store(10, 60 * SEC, 1 << 20);
        let epoch = h.subscribe("t", None, 0, &|_| false, &mut Vec::new()).epoch;
        for _ in 0..5 {
            put(&mut h, "t", 0);
        }
        let (pos, got) = since(&mut h, "t", 2, &epoch, 0);
        assert_eq!(pos.recovered, Some(true));
        assert_eq!(pos.offset, 5);
        assert_eq!(got, ["t:3", "t:4", "t:5"]);
        let (pos, got) = since(&mut h, "t", 5, &epoch, 0);
        assert_eq!((pos.recovered, got.len()), (Some(true), 0), "up to date: recovered, nothing to send");
        let (pos, got) = since(&mut h, "t", 0, &epoch, 0);
        assert_eq!((pos.recovered, got.len()), (Some(true), 5), "from the start of the epoch");
    }

    #[test]
    fn refuses_a_gap_a_wrong_epoch_or_an_offset_from_the_future() {
        let mut h = store(3, 60 * SEC, 1 << 20);
        let epoch = h.subscribe("t", None, 0, &|_| false, &mut Vec::new()).epoch;
        for _ in 0..6 {
            put(&mut h, "t", 0);
        }
        // Kept: 4, 5, 6. Since 3 is whole; since 2 misses 3.
        assert_eq!(since(&mut h, "t", 3, &epoch, 0).1, ["t:4", "t:5", "t:6"]);
        let (pos, got) = since(&mut h, "t", 2, &epoch, 0);
        assert_eq!((pos.recovered, got.len(), pos.offset), (Some(false), 0, 6));
        let (pos, got) = since(&mut h, "t", 5, "0000000000000000", 0);
        assert_eq!((pos.recovered, got.len()), (Some(false), 0));
        let (pos, _) = since(&mut h, "t", 7, &epoch, 0);
        assert_eq!(pos.recovered, Some(false));
    }

    #[test]
    fn keeps_exactly_the_last_n() {
        let mut h = store(4, 60 * SEC, 1 << 20);
        for _ in 0..100 {
            put(&mut h, "t", 0);
        }
        assert_eq!(h.stats().messages, 4);
        assert_eq!(
            h.stats().bytes,
            ["t:97", "t:98", "t:99", "t:100"].iter().map(|s| cost_of(s)).sum::<usize>()
        );
    }

    #[test]
    fn messages_expire_at_the_ttl_and_idle_topics_lose_their_epoch() {
        let mut h = store(10, 10 * SEC, 1 << 20);
        put(&mut h, "t", 0);
        let epoch = h.subscribe("t", None, 0, &|_| false, &mut Vec::new()).epoch;
        put(&mut h, "t", 5 * SEC);
        assert_eq!(h.next_deadline(), Some(10 * SEC));
        h.expire(10 * SEC - 1, &|_| false);
        assert_eq!(h.stats().messages, 2, "not before the deadline");
        h.expire(10 * SEC, &|_| false);
        assert_eq!(h.stats().messages, 1, "the first is gone at its deadline");
        assert_eq!(since(&mut h, "t", 0, &epoch, 10 * SEC).0.recovered, Some(false), "1 was lost");
        assert_eq!(since(&mut h, "t", 1, &epoch, 10 * SEC).1, ["t:2"]);
        // The subscribe just now touched the topic: its state lives until 20 s of idleness.
        h.expire(15 * SEC, &|_| false);
        assert_eq!(h.stats(), HistoryStats { topics: 1, messages: 0, bytes: 0 });
        h.expire(20 * SEC, &|_| false);
        assert_eq!(h.stats(), HistoryStats::default(), "idle for the TTL: nothing left");
        assert!(h.due.is_empty());
        let pos = h.subscribe("t", None, 20 * SEC, &|_| false, &mut Vec::new());
        assert_ne!(pos.epoch, epoch, "a fresh history is a new epoch");
        assert_eq!(pos.offset, 0);
    }

    #[test]
    fn a_subscribed_quiet_topic_keeps_its_epoch() {
        let mut h = store(10, 10 * SEC, 1 << 20);
        let epoch = h.subscribe("t", None, 0, &|_| false, &mut Vec::new()).epoch;
        for s in 1..100 {
            h.expire(s * SEC, &|t| t == "t");
        }
        assert!(h.due.len() <= 1, "one look-at entry, not one per sweep");
        put(&mut h, "t", 100 * SEC);
        assert_eq!(since(&mut h, "t", 0, &epoch, 100 * SEC).1, ["t:1"]);
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_of_any_topic() {
        let one = cost_of("a:1");
        let mut h = store(100, 60 * SEC, 3 * one);
        put(&mut h, "a", 0);
        put(&mut h, "b", 1);
        put(&mut h, "a", 2);
        assert_eq!(h.stats().messages, 3);
        put(&mut h, "c", 3);
        assert_eq!(h.stats().messages, 3);
        assert!(h.stats().bytes <= 3 * one);
        let epoch = h.subscribe("a", None, 3, &|_| false, &mut Vec::new()).epoch;
        assert_eq!(since(&mut h, "a", 0, &epoch, 3).0.recovered, Some(false), "a:1 was evicted");
        assert_eq!(since(&mut h, "a", 1, &epoch, 3).1, ["a:2"]);
        // A single message bigger than the bound is not kept at all.
        let mut h = store(100, 60 * SEC, cost_of("a:1") - 1);
        put(&mut h, "a", 0);
        assert_eq!(h.stats().messages, 0);
        assert_eq!(
            h.subscribe("a", None, 0, &|_| false, &mut Vec::new()).offset,
            1,
            "its offset still counts"
        );
    }

    #[test]
    fn topic_states_stop_at_the_bound_and_the_least_recently_used_unsubscribed_go() {
        let mut h = MemoryHistory::new(
            HistoryConfig { size: 10, ttl: 3600 * SEC, max_bytes: 1 << 20, max_topics: 3 },
            7,
        );
        let subscribed = |t: &str| t == "live";
        let live = h.subscribe("live", None, 0, &subscribed, &mut Vec::new()).epoch;
        h.append("old", 1, &subscribed, &mut |o| Rc::from(format!("old:{o}").as_bytes()));
        h.append("used", 2, &subscribed, &mut |o| Rc::from(format!("used:{o}").as_bytes()));
        // "old" is used again: a second chance. The bound is full.
        h.append("old", 3, &subscribed, &mut |o| Rc::from(format!("old:{o}").as_bytes()));
        assert_eq!(h.stats().topics, 3);
        // A new topic: "live" has a subscriber, "old" was used since it was queued, so "used"
        // (least recently used, no subscriber) makes room, with what it kept.
        h.append("new", 4, &subscribed, &mut |o| Rc::from(format!("new:{o}").as_bytes()));
        assert_eq!(h.stats().topics, 3);
        assert_eq!(h.stats().messages, 3, "old:1, old:2, new:1");
        assert!(!h.by_name.contains_key("used") && h.by_name.contains_key("old"));
        // Ten thousand more names: never more than the bound, and the subscribed topic keeps
        // its epoch and its messages throughout.
        put(&mut h, "live", 5);
        for i in 0..10_000 {
            let name = format!("flood{i}");
            if i % 2 == 0 {
                h.append(&name, 6, &subscribed, &mut |o| Rc::from(format!("f:{o}").as_bytes()));
            } else {
                h.subscribe(&name, None, 6, &subscribed, &mut Vec::new());
            }
            assert!(h.stats().topics <= 3);
        }
        assert!(h.order.len() <= 2 * 3 + 1024, "use queue compacted: {}", h.order.len());
        let mut replay = Vec::new();
        let pos = h.subscribe("live", Some(Since { offset: 0, epoch: &live }), 7, &subscribed, &mut replay);
        assert_eq!((pos.recovered, replayed(&replay)), (Some(true), vec!["live:1".to_string()]));
        // The byte count follows what was forgotten.
        let kept: usize = h.topics.iter().flat_map(|(_, t)| t.kept.iter()).map(|k| cost(&k.frame)).sum();
        assert_eq!(h.stats().bytes, kept);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let mut h = store(2, 3600 * SEC, 1 << 30);
        for i in 0..100_000 {
            put(&mut h, "t", i / 100);
        }
        assert_eq!(h.stats().messages, 2);
        assert!(h.due.len() < 2100, "due queue compacted: {}", h.due.len());
    }

    #[test]
    fn epochs_differ_by_topic_and_by_seed() {
        let mut a =
            MemoryHistory::new(HistoryConfig { size: 1, ttl: SEC, max_bytes: 1000, max_topics: 10 }, 1);
        let mut b =
            MemoryHistory::new(HistoryConfig { size: 1, ttl: SEC, max_bytes: 1000, max_topics: 10 }, 2);
        let ea = a.subscribe("t", None, 0, &|_| false, &mut Vec::new()).epoch;
        let eu = a.subscribe("u", None, 0, &|_| false, &mut Vec::new()).epoch;
        let eb = b.subscribe("t", None, 0, &|_| false, &mut Vec::new()).epoch;
        assert_ne!(ea, eu);
        assert_ne!(ea, eb);
        assert_ne!(random_seed(), random_seed());
    }
}
