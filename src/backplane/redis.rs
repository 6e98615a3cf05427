//! The Redis backplane: two RESP connections, one in subscribe mode and one for PUBLISH.
//!
//! [`RedisCore`] is the whole policy, sans-IO: it is told when a connection attempt is due,
//! fed the bytes each connection received and the time, and it produces the bytes to write,
//! the messages to deliver locally and its next deadline. [`RedisBackplane`] is the thin
//! shell the reactor drives: two non-blocking `mio` sockets registered in the same `Poll`
//! as the clients, and one entry in the reactor's deadline queue (connect timeout, reconnect
//! backoff, TTL refresh, or the reply deadline of the oldest request in flight):
//!
//! ```text
//! event on SUB/PUB token -> backplane.on_event(which, ..., deliver)   // read, decode, write
//! deadline reached       -> backplane.on_timer(...)                   // connect / give up
//! end of turn            -> backplane.flush(...)                      // publishes of this turn
//! after each of them     -> timers.arm(BACKPLANE, backplane.next_deadline())
//! ```
//!
//! # On Redis
//!
//! Channels are `<prefix>topic:<topic>` and `<prefix>broadcast`. Every payload is
//! `N<16 hex digits of the node id> <data as JSON>`; a node skips messages carrying its own id,
//! having served its local subscribers without a round trip, so no message is delivered twice.
//! The node id is random per process. Payloads are checked like any client input: a channel
//! outside the prefix, a malformed tag, data that is not JSON, nested too deeply or larger than
//! `--max-message-size` is dropped and counted (`garbage`), and the connection stays.
//!
//! The subscribe connection subscribes to the broadcast channel and to the channel of every
//! topic with a local subscriber, and unsubscribes as soon as the last one leaves. After a
//! connection loss both connections are dropped, and the next attempt comes after a backoff
//! (100 ms, doubling, capped at 5 s) and re-subscribes everything wanted. A request left
//! unanswered for [`REPLY_DEADLINE`] (a stalled Redis, a refused SUBSCRIBE) counts as such a
//! loss.
//!
//! # Cost model
//!
//! A publish costs, on top of local delivery, one copy of the data into the payload staging
//! buffer and one into the PUBLISH command in the output buffer; all publishes of a reactor
//! turn leave in one `write`. Output is bounded (`max_output`); a publish over it, or while
//! Redis is down, is refused and counted (`publish_failed`), never queued without bound; so
//! are the requests awaiting a reply ([`MAX_IN_FLIGHT`]).
//! A message from Redis is decoded in place in the input buffer, validated once, framed once
//! by the hub and shared by every local subscriber, like a local publish.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};

use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use serde_json::value::RawValue;

use super::link::{Link, LinkError, Reply};
use super::shared::{self, Fetched, Numbered};
use super::url::RedisUrl;
use super::{Backplane, Relay, Ticket};
use crate::hub::history::{Offset, Since};
use crate::protocol::session::Millis;

/// The subscribe-mode connection.
pub const SUB: usize = 0;
/// The connection PUBLISH goes through.
pub const PUB: usize = 1;

const FIRST_BACKOFF: Millis = 100;
const MAX_BACKOFF: Millis = 5_000;
/// Channels per SUBSCRIBE when re-subscribing everything after a reconnect.
const SUBSCRIBE_BATCH: usize = 256;
const NEVER: Millis = Millis::MAX;
/// Reads one connection may do per readiness event (64 KiB each): a flood from Redis is taken a
/// megabyte at a time, the rest on the next turns, so clients are served in between.
const READS_PER_EVENT: usize = 16;
/// Most bytes of entries one position reply may carry (a longer gap is not recovered): also
/// what the PUBLISH connection's input bound grows by when history is kept in Redis.
const POSITION_REPLY_BUDGET: usize = 8 << 20;
/// How long a request to Redis (a PUBLISH, a script call, a topic's SUBSCRIBE) may wait for its
/// reply. A Redis that keeps the connection but stops answering (`DEBUG SLEEP`, a stopped
/// process) or refuses a SUBSCRIBE (`-NOPERM`, answered by no confirmation) would otherwise
/// hold subscribers and acks for ever: past this, the connection counts as lost (`stalled`),
/// and the usual path answers every wait at once and reconnects with the backoff. Replies come
/// in order, so one look at the oldest request of each connection is the whole check.
pub const REPLY_DEADLINE: Millis = 5_000;
/// Requests awaiting a reply on the PUBLISH connection at most. Written commands leave the
/// output bound, so this bounds what a slow Redis makes this node remember (an entry is a few
/// dozen bytes): over it, publishes fail like over the output bound.
pub const MAX_IN_FLIGHT: usize = 64 * 1024;
/// The send time of a request queued this turn, until the end of the turn stamps it.
const UNSTAMPED: Millis = Millis::MAX;

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: RedisUrl,
    pub prefix: String,
    /// Identifies this process in payloads (random per process).
    pub node_id: u64,
    /// Bound on PUBLISH bytes not yet taken by the socket.
    pub max_output: usize,
    /// Largest `data` accepted from Redis (the node's `--max-message-size`).
    pub max_data: usize,
    /// Time a connection attempt (TCP connect and handshake) may take.
    pub connect_timeout: Millis,
    /// Topic history kept in Redis (`--history-size` > 0 with `--redis`); `None`: no history.
    pub history: Option<SharedHistory>,
}

/// What the history kept in Redis is bounded by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedHistory {
    /// Messages kept per topic (`LTRIM`).
    pub size: usize,
    /// How long keys live after a topic's last publish or subscribe (`PEXPIRE`), and how old a
    /// replayed message may be.
    pub ttl: Millis,
}

/// Counters for `/metrics`, and whether the backplane is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackplaneStats {
    pub up: bool,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Messages handed to Redis (PUBLISH queued).
    pub published: u64,
    /// Messages that could not be handed to Redis (down, output full, refused by Redis, or
    /// in flight when the connection was lost).
    pub publish_failed: u64,
    /// Messages read from Redis's channels and handed to the hub (garbage excluded): other
    /// nodes' publishes and broadcasts (a node's own plain messages are skipped, served
    /// locally already) and every history message, this node's own included (with history in
    /// Redis every node delivers from the channel).
    pub received: u64,
    /// History publishes sent to Redis that got no offset after all: the append was answered
    /// with an error (or a reply that does not parse), or was in flight when the connection
    /// was lost or stalled. Part of `wshub_history_unavailable_total`.
    pub appends_failed: u64,
    /// Messages from Redis dropped because they did not parse.
    pub garbage: u64,
    /// Connections dropped because a request went unanswered past [`REPLY_DEADLINE`].
    pub stalled: u64,
}

/// What Redis brought, checked, for the hub: messages to deliver locally and the completions
/// of what the hub asked for.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A publish from another node (no history).
    Publish {
        topic: &'a str,
        data: &'a RawValue,
    },
    Broadcast {
        data: &'a RawValue,
    },
    /// A history message, from any node this one included: every node delivers these from the
    /// channel, so each subscriber sees offsets in order.
    Numbered {
        topic: &'a str,
        message: Numbered<'a>,
    },
    /// Redis confirmed the SUBSCRIBE of `topic`'s channel asked for by `topic_wanted`.
    Confirmed {
        topic: &'a str,
    },
    /// The append of a history publish: its epoch and offset, or `None` when it failed.
    Appended {
        ticket: Ticket,
        result: Option<(&'a str, Offset)>,
    },
    /// A topic's position for a subscribe; `None` when Redis could not answer.
    Position {
        ticket: Ticket,
        topic: &'a str,
        fetched: Option<Fetched<'a>>,
    },
}

/// What a reply on the PUBLISH connection answers, in the order the commands were sent.
#[derive(Debug)]
enum Expect {
    Publish,
    Append {
        ticket: Option<Ticket>,
    },
    /// `since`: the offset and the client's epoch (kept only when it is epoch-shaped, else empty:
    /// it matches nothing, and an attacker's 60 KB epoch costs nothing here).
    Position {
        ticket: Ticket,
        topic: Box<str>,
        since: Option<(Offset, Box<str>)>,
    },
    ScriptLoad,
    /// A `PEXPIRE` keeping a wanted topic's history alive.
    Touch,
}

/// Why a message from Redis was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Garbage {
    /// Not one of our channels (outside the prefix, or not UTF-8).
    ForeignChannel,
    /// The payload does not start with `N<16 hex digits> `.
    BadTag,
    /// `data` is not UTF-8 JSON, nests too deeply, or is over the size limit.
    BadData,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Disconnected; the next attempt is due at `retry_at`.
    Down {
        retry_at: Millis,
    },
    /// Sockets opening, handshake replies awaited until `deadline`.
    Connecting {
        deadline: Millis,
    },
    Up,
}

/// What the shell must do after a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerAction {
    Nothing,
    /// Open both connections now (the core has queued their handshakes).
    Connect,
    /// The attempt timed out: close both connections.
    Disconnect,
}

pub struct RedisCore {
    settings: RedisSettings,
    state: State,
    links: [Link; 2],
    /// Replies to AUTH, SELECT (and PING on PUB) still awaited before the link is usable.
    handshake_left: [u32; 2],
    ready: [bool; 2],
    /// What each reply still awaited on the PUBLISH connection answers, oldest first, with
    /// when it was sent (`UNSTAMPED` until the end of its turn). At most [`MAX_IN_FLIGHT`].
    inflight: VecDeque<(Millis, Expect)>,
    /// Topic SUBSCRIBEs sent while up and not yet confirmed, oldest first, with when they were
    /// sent: the front one is what [`REPLY_DEADLINE`] watches on the subscribe connection.
    /// Bounded by the topics wanted (one SUBSCRIBE per topic becoming wanted).
    sub_sent: VecDeque<(Millis, Box<str>)>,
    wanted: HashSet<Box<str>>,
    /// SUBSCRIBEs sent by `topic_wanted` while up and not yet confirmed, per topic: the topic is
    /// confirmed when the last of them is (a quick unsubscribe and resubscribe waits for both).
    confirming: HashMap<Box<str>, u32>,
    /// The connection was lost while up since the hub last asked: the hub must answer what it
    /// waits for (see `take_went_down`).
    went_down: bool,
    /// Proposals made so far (each epoch proposal differs).
    proposals: u64,
    /// `EVALSHA` names of the two scripts.
    append_sha: [u8; 40],
    position_sha: [u8; 40],
    /// `--history-size` and the TTL in milliseconds, as command arguments.
    size_arg: Vec<u8>,
    ttl_arg: Vec<u8>,
    /// Staging for the three key names of a history command.
    keys: Vec<u8>,
    /// Redis answered NOSCRIPT: load the scripts again after this input.
    reload_scripts: bool,
    /// When the TTLs of wanted topics' history keys are next refreshed (NEVER without history).
    touch_at: Millis,
    /// Channel confirmations still awaited before the subscribe connection is ready (the
    /// broadcast channel and every topic wanted, resubscribed in batches).
    handshake_channels: usize,
    backoff: Millis,
    attempts: u64,
    /// `N<16 hex> `: the start of every payload this node sends.
    tag: [u8; 18],
    channel: Vec<u8>,
    payload: Vec<u8>,
    stats: BackplaneStats,
}

impl RedisCore {
    /// A core that connects at the first timer (due at `now`).
    pub fn new(settings: RedisSettings, now: Millis) -> RedisCore {
        let mut tag = [0u8; 18];
        tag[0] = b'N';
        write_hex(&mut tag[1..17], settings.node_id);
        tag[17] = b' ';
        // Subscribers receive whole messages; one over the data limit plus RESP framing and the
        // channel name is refused rather than buffered.
        let max_input = settings.max_data.saturating_add(64 * 1024);
        // A position reply carries up to the budget of entries, plus one entry's framing.
        let pub_input = match settings.history {
            Some(_) => max_input.saturating_add(POSITION_REPLY_BUDGET),
            None => max_input,
        };
        let links = [Link::new(usize::MAX, max_input), Link::new(settings.max_output, pub_input)];
        let (size_arg, ttl_arg) = match settings.history {
            Some(h) => (h.size.max(1).to_string().into_bytes(), h.ttl.max(1).to_string().into_bytes()),
            None => (Vec::new(), Vec::new()),
        };
        RedisCore {
            settings,
            state: State::Down { retry_at: now },
            links,
            handshake_left: [0; 2],
            ready: [false; 2],
            inflight: VecDeque::new(),
            sub_sent: VecDeque::new(),
            wanted: HashSet::new(),
            confirming: HashMap::new(),
            went_down: false,
            proposals: 0,
            append_sha: shared::script_sha(shared::APPEND_SCRIPT),
            position_sha: shared::script_sha(shared::POSITION_SCRIPT),
            size_arg,
            ttl_arg,
            keys: Vec::new(),
            reload_scripts: false,
            touch_at: NEVER,
            handshake_channels: 0,
            backoff: FIRST_BACKOFF,
            attempts: 0,
            tag,
            channel: Vec::new(),
            payload: Vec::new(),
            stats: BackplaneStats::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    pub fn stats(&self) -> BackplaneStats {
        BackplaneStats { up: self.is_up(), ..self.stats }
    }

    /// Topics whose channel this node wants (tests, diagnostics).
    pub fn wanted(&self) -> impl Iterator<Item = &str> {
        self.wanted.iter().map(|t| &**t)
    }

    pub fn next_deadline(&self) -> Millis {
        match self.state {
            State::Down { retry_at } => retry_at,
            State::Connecting { deadline } => deadline,
            State::Up => self.touch_at.min(self.reply_deadline()),
        }
    }

    /// When the oldest request awaiting a reply (on either connection) is overdue.
    fn reply_deadline(&self) -> Millis {
        let publish = self.inflight.front().map_or(NEVER, |(at, _)| *at);
        let subscribe = self.sub_sent.front().map_or(NEVER, |(at, _)| *at);
        publish.min(subscribe).saturating_add(REPLY_DEADLINE)
    }

    /// Gives the requests queued this turn their send time (the shell calls it at the end of
    /// each turn, when they are written). Unstamped entries are the newest: this stops at the
    /// first stamped one, so each entry is stamped once.
    pub fn stamp(&mut self, now: Millis) {
        for (at, _) in self.inflight.iter_mut().rev().take_while(|(at, _)| *at == UNSTAMPED) {
            *at = now;
        }
        for (at, _) in self.sub_sent.iter_mut().rev().take_while(|(at, _)| *at == UNSTAMPED) {
            *at = now;
        }
    }

    fn expect(&mut self, expect: Expect) {
        self.inflight.push_back((UNSTAMPED, expect));
    }

    /// Whether one more request may be sent on the PUBLISH connection.
    fn room(&self) -> bool {
        self.inflight.len() < MAX_IN_FLIGHT
    }

    /// How often the TTL of wanted topics' history keys is refreshed: a third of the TTL, so a
    /// topic with subscribers keeps its epoch however quiet it is (as in the in-memory store).
    fn touch_interval(&self) -> Option<Millis> {
        self.settings.history.map(|h| (h.ttl / 3).max(1_000))
    }

    /// Refreshes the TTL of every wanted topic's history keys (`PEXPIRE`), as far as the output
    /// bound allows (the rest waits for the next round).
    fn touch_wanted(&mut self) {
        let ttl = self.ttl_arg.clone();
        let topics: Vec<Box<str>> = self.wanted.iter().cloned().collect();
        'topics: for topic in topics {
            let [a, b, c] = self.history_keys(&topic);
            for range in [0..a, a..b, b..c] {
                if !self.room() || !self.links[PUB].command_bounded(&[b"PEXPIRE", &self.keys[range], &ttl]) {
                    break 'topics;
                }
                self.expect(Expect::Touch);
            }
        }
    }

    pub fn on_timer(&mut self, now: Millis) -> TimerAction {
        // What this turn sent so far was sent now (and must not look older than it is).
        self.stamp(now);
        let action = self.on_due(now);
        self.stamp(now);
        action
    }

    fn on_due(&mut self, now: Millis) -> TimerAction {
        match self.state {
            State::Down { retry_at } if now >= retry_at => {
                self.start_connecting(now);
                TimerAction::Connect
            }
            State::Connecting { deadline } if now >= deadline => {
                self.fail(now, "connect timeout");
                TimerAction::Disconnect
            }
            State::Up if now >= self.reply_deadline() => {
                self.stats.stalled += 1;
                self.fail(now, "Redis left a request unanswered too long");
                TimerAction::Disconnect
            }
            State::Up if now >= self.touch_at => {
                self.touch_wanted();
                self.touch_at = self.touch_interval().map_or(NEVER, |every| now + every);
                TimerAction::Nothing
            }
            _ => TimerAction::Nothing,
        }
    }

    /// Queues both handshakes; the shell opens the sockets.
    fn start_connecting(&mut self, now: Millis) {
        self.attempts += 1;
        if self.attempts > 1 {
            self.stats.reconnects += 1;
        }
        self.handshake_left = [0; 2];
        self.ready = [false; 2];
        self.inflight.clear();
        self.sub_sent.clear();
        self.confirming.clear();
        for which in [SUB, PUB] {
            self.links[which].reset();
            let url = &self.settings.url;
            if let Some(password) = &url.password {
                match &url.user {
                    Some(user) => self.links[which].command(&[b"AUTH", user.as_bytes(), password.as_bytes()]),
                    None => self.links[which].command(&[b"AUTH", password.as_bytes()]),
                }
                self.handshake_left[which] += 1;
            }
            if let Some(db) = url.db {
                self.links[which].command(&[b"SELECT", db.to_string().as_bytes()]);
                self.handshake_left[which] += 1;
            }
        }
        if self.settings.history.is_some() {
            // Loaded at each connection (a restarted Redis has forgotten them); the replies
            // must name the SHA we call them by.
            for script in [shared::APPEND_SCRIPT, shared::POSITION_SCRIPT] {
                self.links[PUB].command(&[b"SCRIPT", b"LOAD", script.as_bytes()]);
                self.handshake_left[PUB] += 1;
            }
        }
        self.links[PUB].command(&[b"PING"]);
        self.handshake_left[PUB] += 1;
        // The broadcast channel first: its confirmation is what makes SUB ready.
        let broadcast = [self.settings.prefix.as_bytes(), b"broadcast"].concat();
        let wanted: Vec<Vec<u8>> = self.wanted.iter().map(|t| self.topic_channel(t)).collect();
        self.handshake_channels = 1 + wanted.len();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE", &broadcast];
        for channel in &wanted {
            args.push(channel);
            if args.len() > SUBSCRIBE_BATCH {
                self.links[SUB].command(&args);
                args.truncate(1);
            }
        }
        if args.len() > 1 {
            self.links[SUB].command(&args);
        }
        self.state = State::Connecting { deadline: now + self.settings.connect_timeout };
    }

    /// The connection is lost or unusable: drop both links and retry after the backoff.
    pub fn fail(&mut self, now: Millis, why: &str) {
        if let State::Down { .. } = self.state {
            return;
        }
        let was_up = self.state == State::Up;
        // Publishes in flight may or may not have reached Redis: at most once, counted failed.
        let publishes =
            self.inflight.iter().filter(|(_, e)| matches!(e, Expect::Publish | Expect::Append { .. }));
        self.stats.publish_failed += publishes.count() as u64;
        let appends = self.inflight.iter().filter(|(_, e)| matches!(e, Expect::Append { .. }));
        self.stats.appends_failed += appends.count() as u64;
        self.inflight.clear();
        self.sub_sent.clear();
        self.confirming.clear();
        // The hub answers what it waits for (confirmations, positions, appends) at once.
        self.went_down |= was_up;
        for link in &mut self.links {
            link.reset();
        }
        self.ready = [false; 2];
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.state = State::Down { retry_at: now + retry_in };
        if was_up || self.attempts <= 1 {
            warn!("backplane {} down: {why}; retrying in {retry_in} ms", self.settings.url);
        } else {
            log::debug!("backplane {}: attempt failed: {why}; retrying in {retry_in} ms", self.settings.url);
        }
    }

    pub fn is_connecting_or_up(&self) -> bool {
        !matches!(self.state, State::Down { .. })
    }

    pub fn link(&mut self, which: usize) -> &mut Link {
        &mut self.links[which]
    }

    /// Decodes what `which` received: handshake replies, PUBLISH replies, subscription
    /// confirmations and messages. Each valid message from another node goes to `deliver`,
    /// which answers whether it was deliverable (a topic name the hub refuses is garbage too).
    pub fn on_input(
        &mut self,
        which: usize,
        now: Millis,
        mut deliver: impl FnMut(Inbound<'_>) -> bool,
    ) -> Result<(), LinkError> {
        self.stamp(now);
        let mut link = std::mem::replace(&mut self.links[which], Link::new(0, 0));
        let mut fatal: Option<String> = None;
        let result = link.decode(|reply| {
            if fatal.is_some() {
                return;
            }
            if let Err(why) = self.on_reply(which, reply, &mut deliver) {
                fatal = Some(why);
            }
        });
        self.links[which] = link;
        if std::mem::take(&mut self.reload_scripts) {
            for script in [shared::APPEND_SCRIPT, shared::POSITION_SCRIPT] {
                self.links[PUB].command(&[b"SCRIPT", b"LOAD", script.as_bytes()]);
                self.expect(Expect::ScriptLoad);
            }
        }
        self.stamp(now);
        match (result, fatal) {
            (Err(e), _) => {
                self.fail(now, &e.to_string());
                Err(e)
            }
            (Ok(()), Some(why)) => {
                self.fail(now, &why);
                Err(LinkError::NotResp)
            }
            (Ok(()), None) => {
                if self.ready == [true; 2] && matches!(self.state, State::Connecting { .. }) {
                    self.state = State::Up;
                    self.touch_at = self.touch_interval().map_or(NEVER, |every| now + every);
                    self.backoff = FIRST_BACKOFF;
                    info!("backplane {} up ({} topics subscribed)", self.settings.url, self.wanted.len());
                }
                Ok(())
            }
        }
    }

    fn on_reply(
        &mut self,
        which: usize,
        reply: Reply<'_>,
        deliver: &mut impl FnMut(Inbound<'_>) -> bool,
    ) -> Result<(), String> {
        if self.handshake_left[which] > 0 {
            if let Some(error) = reply.error() {
                // Redis's own words (e.g. WRONGPASS); they never contain the password.
                return Err(format!("handshake refused: {}", String::from_utf8_lossy(error)));
            }
            if let Some(sha) = reply.bulk() {
                if sha != self.append_sha && sha != self.position_sha {
                    return Err("SCRIPT LOAD answered an unexpected SHA".into());
                }
            }
            self.handshake_left[which] -= 1;
            if which == PUB && self.handshake_left[PUB] == 0 {
                self.ready[PUB] = true;
            }
            return Ok(());
        }
        if which == PUB {
            return self.on_pub_reply(reply, deliver);
        }
        if let Some(error) = reply.error() {
            warn!("backplane: Redis error on the subscribe connection: {}", String::from_utf8_lossy(error));
            return Ok(());
        }
        let kind = reply.item(0).and_then(|r| r.bulk()).unwrap_or(b"");
        match kind {
            b"message" => {
                let channel = reply.item(1).and_then(|r| r.bulk());
                let payload = reply.item(2).and_then(|r| r.bulk());
                let (Some(channel), Some(payload)) = (channel, payload) else {
                    return Err("malformed pub/sub message".into());
                };
                if shared::is_numbered(payload) {
                    self.on_numbered(channel, payload, deliver);
                    return Ok(());
                }
                // `None`: our own message, already delivered locally.
                if let Some(inbound) = self.check(channel, payload).transpose() {
                    self.hand_over(inbound, deliver);
                }
            }
            b"subscribe" => {
                let channel = reply.item(1).and_then(|r| r.bulk()).unwrap_or(b"");
                if !self.ready[SUB] {
                    // Up only once every channel of the handshake is confirmed: a subscriber
                    // answered after that cannot miss a message on any of them.
                    self.handshake_channels = self.handshake_channels.saturating_sub(1);
                    self.ready[SUB] = self.handshake_channels == 0;
                } else if let Some(topic) = self.topic_of(channel) {
                    // Confirmations come in order: this one answers the oldest SUBSCRIBE sent
                    // while up, unless it answers one sent before (not watched).
                    if self.sub_sent.front().is_some_and(|(_, t)| **t == *topic) {
                        self.sub_sent.pop_front();
                    }
                    self.on_confirmed(topic, deliver);
                }
            }
            _ => {} // unsubscribe confirmations, pongs
        }
        Ok(())
    }

    /// A message from Redis, checked. `Ok(None)`: this node's own message.
    pub fn check<'a>(&self, channel: &'a [u8], payload: &'a [u8]) -> Result<Option<Inbound<'a>>, Garbage> {
        let name = channel.strip_prefix(self.settings.prefix.as_bytes()).ok_or(Garbage::ForeignChannel)?;
        let topic = match name {
            b"broadcast" => None,
            _ => {
                let topic = name.strip_prefix(b"topic:").ok_or(Garbage::ForeignChannel)?;
                Some(std::str::from_utf8(topic).map_err(|_| Garbage::ForeignChannel)?)
            }
        };
        if payload.len() < self.tag.len()
            || payload[0] != b'N'
            || payload[17] != b' '
            || !payload[1..17].iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Garbage::BadTag);
        }
        if payload[..18] == self.tag {
            return Ok(None);
        }
        let data = &payload[18..];
        if data.len() > self.settings.max_data {
            return Err(Garbage::BadData);
        }
        let data = std::str::from_utf8(data).map_err(|_| Garbage::BadData)?;
        if crate::hub::scan(data).is_err() {
            return Err(Garbage::BadData);
        }
        let data: &RawValue = serde_json::from_str(data).map_err(|_| Garbage::BadData)?;
        Ok(Some(match topic {
            Some(topic) => Inbound::Publish { topic, data },
            None => Inbound::Broadcast { data },
        }))
    }

    /// The topic a channel of ours names, if it is a topic channel.
    fn topic_of<'a>(&self, channel: &'a [u8]) -> Option<&'a str> {
        let name = channel.strip_prefix(self.settings.prefix.as_bytes())?;
        std::str::from_utf8(name.strip_prefix(b"topic:")?).ok()
    }

    /// A SUBSCRIBE of a topic channel was confirmed: once the last one `topic_wanted` sent is,
    /// and the topic is still wanted, the hub hears it.
    fn on_confirmed(&mut self, topic: &str, deliver: &mut impl FnMut(Inbound<'_>) -> bool) {
        let Some(count) = self.confirming.get_mut(topic) else { return };
        *count -= 1;
        if *count == 0 {
            self.confirming.remove(topic);
            if self.wanted.contains(topic) {
                deliver(Inbound::Confirmed { topic });
            }
        }
    }

    /// A history message from a topic channel (every node's, this one's included).
    fn on_numbered(&mut self, channel: &[u8], payload: &[u8], deliver: &mut impl FnMut(Inbound<'_>) -> bool) {
        let Some(topic) = self.topic_of(channel) else {
            self.stats.garbage += 1;
            return;
        };
        let inbound = shared::parse_numbered(payload, self.settings.max_data)
            .map(|message| Inbound::Numbered { topic, message });
        self.hand_over(inbound, deliver);
    }

    /// Gives a decoded message to `deliver` and counts it: received when delivered, garbage
    /// when it did not decode or `deliver` refused it.
    fn hand_over<E: std::fmt::Debug>(
        &mut self,
        inbound: Result<Inbound<'_>, E>,
        deliver: &mut impl FnMut(Inbound<'_>) -> bool,
    ) {
        match inbound.map(deliver) {
            Ok(true) => self.stats.received += 1,
            Ok(false) => self.stats.garbage += 1,
            Err(why) => {
                self.stats.garbage += 1;
                log::debug!("backplane: dropped a message from Redis: {why:?}");
            }
        }
    }

    /// A reply on the PUBLISH connection: it answers the oldest command still in flight.
    fn on_pub_reply(
        &mut self,
        reply: Reply<'_>,
        deliver: &mut impl FnMut(Inbound<'_>) -> bool,
    ) -> Result<(), String> {
        let Some((_, expect)) = self.inflight.pop_front() else {
            return Err("a reply to no command".into());
        };
        if let Some(error) = reply.error() {
            if error.starts_with(b"NOSCRIPT") {
                // Someone flushed the scripts (a restart drops the connection instead): load
                // them again for the next calls (once the link is back from decoding); this
                // one fails. Retrying it would mean keeping a copy of every call in flight.
                self.reload_scripts = true;
            }
            warn!("backplane: Redis refused a command: {}", String::from_utf8_lossy(error));
        }
        let failed = reply.error().is_some();
        match expect {
            Expect::Publish => {
                if failed {
                    self.stats.publish_failed += 1;
                }
            }
            Expect::ScriptLoad | Expect::Touch => {}
            Expect::Append { ticket } => {
                let result = if failed { None } else { shared::parse_appended(&reply).ok() };
                if result.is_none() {
                    self.stats.publish_failed += 1;
                    self.stats.appends_failed += 1;
                }
                if let Some(ticket) = ticket {
                    deliver(Inbound::Appended { ticket, result });
                }
            }
            Expect::Position { ticket, topic, since } => {
                let since = since.as_ref().map(|(offset, epoch)| Since { offset: *offset, epoch });
                let ttl = self.settings.history.map_or(0, |h| h.ttl);
                let fetched = if failed {
                    None
                } else {
                    shared::decide(&reply, since, ttl, self.settings.max_data).ok()
                };
                deliver(Inbound::Position { ticket, topic: &topic, fetched });
            }
        }
        Ok(())
    }

    /// Whether the connection was lost while up since the last call: the hub then answers, at
    /// once, everything it was waiting on Redis for.
    pub fn take_went_down(&mut self) -> bool {
        std::mem::take(&mut self.went_down)
    }

    /// Whether history is kept in Redis.
    pub fn keeps_history(&self) -> bool {
        self.settings.history.is_some()
    }

    /// The three key names of `topic`'s history in `self.keys`; returns where each ends.
    fn history_keys(&mut self, topic: &str) -> [usize; 3] {
        self.keys.clear();
        let mut ends = [0; 3];
        for (end, kind) in ends.iter_mut().zip([&b"epoch:"[..], b"offset:", b"history:"]) {
            self.keys.extend_from_slice(self.settings.prefix.as_bytes());
            self.keys.extend_from_slice(kind);
            self.keys.extend_from_slice(topic.as_bytes());
            *end = self.keys.len();
        }
        ends
    }

    /// A fresh epoch proposal (used by Redis only when the topic has none).
    fn propose_epoch(&mut self) -> [u8; shared::EPOCH_LEN] {
        self.proposals += 1;
        let mut x = self.settings.node_id ^ self.proposals.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        shared::epoch_hex(x ^ (x >> 31))
    }

    /// A publish on a history topic: one script call gives it its offset, keeps it and
    /// publishes it to the channel (see [`shared`]). Its completion is an
    /// [`Inbound::Appended`] (only when `ticket` is given). `Failed`: Redis is down, its output
    /// full, or history is not kept in Redis; nothing was sent.
    pub fn append(&mut self, topic: &str, data: &RawValue, ticket: Option<Ticket>) -> Relay {
        if self.state != State::Up || self.settings.history.is_none() {
            self.stats.publish_failed += 1;
            return Relay::Failed;
        }
        let epoch = self.propose_epoch();
        let [a, b, c] = self.history_keys(topic);
        self.channel.clear();
        self.channel.extend_from_slice(self.settings.prefix.as_bytes());
        self.channel.extend_from_slice(b"topic:");
        self.channel.extend_from_slice(topic.as_bytes());
        let keys = &self.keys;
        let args: [&[u8]; 11] = [
            b"EVALSHA",
            &self.append_sha,
            b"4",
            &keys[..a],
            &keys[a..b],
            &keys[b..c],
            &self.channel,
            data.get().as_bytes(),
            &epoch,
            &self.size_arg,
            &self.ttl_arg,
        ];
        if self.room() && self.links[PUB].command_bounded(&args) {
            self.expect(Expect::Append { ticket });
            self.stats.published += 1;
            Relay::Sent
        } else {
            self.stats.publish_failed += 1;
            Relay::Failed
        }
    }

    /// Asks Redis for `topic`'s position (and, with `since`, what a recovery needs); the answer
    /// is an [`Inbound::Position`]. False when it cannot be asked (down, output full).
    pub fn fetch_position(&mut self, topic: &str, since: Option<Since<'_>>, ticket: Ticket) -> bool {
        if self.state != State::Up || self.settings.history.is_none() || !self.room() {
            return false;
        }
        let epoch = self.propose_epoch();
        let [a, b, c] = self.history_keys(topic);
        let since = since.map(|s| {
            let epoch = if s.epoch.len() == shared::EPOCH_LEN { s.epoch } else { "" };
            (s.offset, Box::<str>::from(epoch))
        });
        let since_offset = match &since {
            Some((offset, _)) => offset.to_string(),
            None => "-1".to_string(),
        };
        let since_epoch = since.as_ref().map_or("", |(_, e)| &**e);
        let budget = POSITION_REPLY_BUDGET.to_string();
        let keys = &self.keys;
        let args: [&[u8]; 11] = [
            b"EVALSHA",
            &self.position_sha,
            b"3",
            &keys[..a],
            &keys[a..b],
            &keys[b..c],
            &epoch,
            &self.ttl_arg,
            since_offset.as_bytes(),
            since_epoch.as_bytes(),
            budget.as_bytes(),
        ];
        if !self.links[PUB].command_bounded(&args) {
            return false;
        }
        self.expect(Expect::Position { ticket, topic: topic.into(), since });
        true
    }

    fn topic_channel(&self, topic: &str) -> Vec<u8> {
        [self.settings.prefix.as_bytes(), b"topic:", topic.as_bytes()].concat()
    }

    fn relay(&mut self, topic: Option<&str>, data: &RawValue) -> Relay {
        if self.state != State::Up {
            self.stats.publish_failed += 1;
            return Relay::Failed;
        }
        self.channel.clear();
        self.channel.extend_from_slice(self.settings.prefix.as_bytes());
        match topic {
            Some(topic) => {
                self.channel.extend_from_slice(b"topic:");
                self.channel.extend_from_slice(topic.as_bytes());
            }
            None => self.channel.extend_from_slice(b"broadcast"),
        }
        self.payload.clear();
        self.payload.extend_from_slice(&self.tag);
        self.payload.extend_from_slice(data.get().as_bytes());
        if self.room() && self.links[PUB].command_bounded(&[b"PUBLISH", &self.channel, &self.payload]) {
            self.expect(Expect::Publish);
            self.stats.published += 1;
            Relay::Sent
        } else {
            self.stats.publish_failed += 1;
            Relay::Failed
        }
    }
}

impl Backplane for RedisCore {
    fn keeps_history(&self) -> bool {
        self.settings.history.is_some()
    }

    fn append(&mut self, topic: &str, data: &RawValue, ticket: Option<Ticket>) -> Relay {
        RedisCore::append(self, topic, data, ticket)
    }

    fn fetch_position(&mut self, topic: &str, since: Option<Since<'_>>, ticket: Ticket) -> bool {
        RedisCore::fetch_position(self, topic, since, ticket)
    }

    fn publish(&mut self, topic: &str, data: &RawValue) -> Relay {
        self.relay(Some(topic), data)
    }

    fn broadcast(&mut self, data: &RawValue) -> Relay {
        self.relay(None, data)
    }

    fn topic_wanted(&mut self, topic: &str) -> bool {
        if !self.wanted.insert(topic.into()) || !self.is_connecting_or_up() {
            return false;
        }
        let channel = self.topic_channel(topic);
        self.links[SUB].command(&[b"SUBSCRIBE", &channel]);
        if self.state != State::Up {
            // Confirmed with the handshake's (and awaited with them); the hub answers at once,
            // as while down.
            self.handshake_channels += 1;
            return false;
        }
        *self.confirming.entry(topic.into()).or_insert(0) += 1;
        self.sub_sent.push_back((UNSTAMPED, topic.into()));
        true
    }

    fn topic_unwanted(&mut self, topic: &str) {
        if self.wanted.remove(topic) && self.is_connecting_or_up() {
            let channel = self.topic_channel(topic);
            self.links[SUB].command(&[b"UNSUBSCRIBE", &channel]);
        }
    }
}

fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in out.iter_mut().enumerate().take(16) {
        *slot = DIGITS[((value >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// The reactor's side: the two sockets, registered under the reactor's reserved tokens.
pub struct RedisBackplane {
    core: RedisCore,
    tokens: [Token; 2],
    sockets: [Option<TcpStream>; 2],
    /// Whether each socket finished connecting (writes wait for it).
    connected: [bool; 2],
    /// A connection stopped reading at its per-event budget with input maybe left: read it
    /// again next turn (no new readiness edge will come for it).
    reread: [bool; 2],
    /// The deadline this backplane has in the reactor's queue (see `server::timers`).
    pub timer_armed: Millis,
}

impl RedisBackplane {
    pub fn new(settings: RedisSettings, tokens: [Token; 2], now: Millis) -> RedisBackplane {
        info!("backplane: Redis at {} (prefix {:?})", settings.url, settings.prefix);
        RedisBackplane {
            core: RedisCore::new(settings, now),
            tokens,
            sockets: [None, None],
            connected: [false; 2],
            reread: [false; 2],
            timer_armed: NEVER,
        }
    }

    pub fn core(&self) -> &RedisCore {
        &self.core
    }

    /// See [`RedisCore::take_went_down`].
    pub fn take_went_down(&mut self) -> bool {
        self.core.take_went_down()
    }

    pub fn is_up(&self) -> bool {
        self.core.is_up()
    }

    pub fn stats(&self) -> BackplaneStats {
        self.core.stats()
    }

    pub fn next_deadline(&self) -> Millis {
        self.core.next_deadline()
    }

    /// Whether a connection has input left from its last read budget.
    pub fn wants_reread(&self) -> bool {
        self.reread != [false; 2]
    }

    /// The connections to read again this turn (and forgets them).
    pub fn take_reread(&mut self) -> [bool; 2] {
        std::mem::take(&mut self.reread)
    }

    /// Which link `token` is, if it is one of ours.
    pub fn link_of(&self, token: Token) -> Option<usize> {
        self.tokens.iter().position(|&t| t == token)
    }

    pub fn on_timer(&mut self, registry: &Registry, now: Millis) {
        match self.core.on_timer(now) {
            TimerAction::Nothing => {
                // A refresh of history TTLs may have been queued: nothing else writes it soon.
                if let Err(why) = self.write(PUB) {
                    self.core.fail(now, &why);
                    self.close(registry);
                }
            }
            TimerAction::Disconnect => self.close(registry),
            TimerAction::Connect => {
                if let Err(e) = self.open(registry) {
                    self.core.fail(now, &format!("connect: {e}"));
                    self.close(registry);
                }
            }
        }
    }

    fn open(&mut self, registry: &Registry) -> io::Result<()> {
        self.close(registry);
        // Resolved at each attempt so a Redis that moved is found again. An IP address (the
        // usual case) resolves without a lookup; a host name goes through the system
        // resolver, which may block this thread briefly, once per attempt.
        let url = &self.core.settings.url;
        let addr: SocketAddr = (url.host.as_str(), url.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host has no address"))?;
        for which in [SUB, PUB] {
            let mut socket = TcpStream::connect(addr)?;
            registry.register(&mut socket, self.tokens[which], Interest::READABLE | Interest::WRITABLE)?;
            self.sockets[which] = Some(socket);
        }
        Ok(())
    }

    fn close(&mut self, registry: &Registry) {
        self.reread = [false; 2];
        for which in [SUB, PUB] {
            if let Some(mut socket) = self.sockets[which].take() {
                let _ = registry.deregister(&mut socket);
            }
            self.connected[which] = false;
        }
    }

    /// Readiness on one of our sockets. Messages from other nodes go to `deliver`.
    pub fn on_event(
        &mut self,
        which: usize,
        registry: &Registry,
        now: Millis,
        deliver: impl FnMut(Inbound<'_>) -> bool,
    ) {
        if let Err(why) = self.service(which, now, deliver) {
            self.core.fail(now, &why);
            self.close(registry);
        }
    }

    fn service(
        &mut self,
        which: usize,
        now: Millis,
        mut deliver: impl FnMut(Inbound<'_>) -> bool,
    ) -> Result<(), String> {
        let Some(socket) = self.sockets[which].as_mut() else { return Ok(()) };
        if !self.connected[which] {
            if let Some(e) = socket.take_error().map_err(|e| e.to_string())? {
                return Err(format!("connect: {e}"));
            }
            match socket.peer_addr() {
                Ok(_) => {
                    self.connected[which] = true;
                    let _ = socket.set_nodelay(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        let mut reads = 0;
        loop {
            if reads == READS_PER_EVENT {
                self.reread[which] = true;
                break;
            }
            reads += 1;
            match self.core.link(which).read_from(socket) {
                Ok(0) => return Err("connection closed by Redis".into()),
                Ok(_) => {
                    if let Err(e) = self.core.on_input(which, now, &mut deliver) {
                        // The core has failed already (and logged why); close the sockets.
                        return Err(e.to_string());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            }
        }
        self.write(which)
    }

    fn write(&mut self, which: usize) -> Result<(), String> {
        let Some(socket) = self.sockets[which].as_mut() else { return Ok(()) };
        if !self.connected[which] {
            return Ok(());
        }
        let link = self.core.link(which);
        while !link.output().is_empty() {
            match socket.write(link.output()) {
                Ok(0) => return Err("write: zero bytes".into()),
                Ok(n) => link.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        Ok(())
    }

    /// Writes what this turn queued (publishes, subscription changes).
    pub fn flush(&mut self, registry: &Registry, now: Millis) {
        self.core.stamp(now);
        for which in [SUB, PUB] {
            if let Err(why) = self.write(which) {
                self.core.fail(now, &why);
                self.close(registry);
                return;
            }
        }
        if !self.core.is_connecting_or_up() && self.sockets.iter().any(Option::is_some) {
            // The core gave up during input handling: let the sockets go too.
            self.close(registry);
        }
    }
}

impl Backplane for RedisBackplane {
    fn publish(&mut self, topic: &str, data: &RawValue) -> Relay {
        self.core.publish(topic, data)
    }

    fn broadcast(&mut self, data: &RawValue) -> Relay {
        self.core.broadcast(data)
    }

    fn topic_wanted(&mut self, topic: &str) -> bool {
        self.core.topic_wanted(topic)
    }

    fn keeps_history(&self) -> bool {
        self.core.keeps_history()
    }

    fn append(&mut self, topic: &str, data: &RawValue, ticket: Option<Ticket>) -> Relay {
        self.core.append(topic, data, ticket)
    }

    fn fetch_position(&mut self, topic: &str, since: Option<Since<'_>>, ticket: Ticket) -> bool {
        self.core.fetch_position(topic, since, ticket)
    }

    fn topic_unwanted(&mut self, topic: &str) {
        self.core.topic_unwanted(topic);
    }
}

#[cfg(test)]
mod tests;
