//! Checks for the Redis backplane's input side: the RESP decoder (`Link`), the payload checks of
//! `RedisCore::on_input`, and the `redis://` URL parser. Bytes from Redis are input like any
//! client's: whatever arrives, nothing panics, nothing buffers past the bound, and only checked
//! messages (our channels, a well-formed tag from another node, JSON data within `max_data`)
//! are delivered.
//!
//! Input layout: one settings byte, a URL blob, then chunks `[which+len byte][bytes]`, each fed
//! to the subscribe (even) or publish (odd) connection at a clock that moves on; some chunk
//! bytes ask for a timer or a local publish/subscription instead; with history kept in Redis
//! (settings bit 3), two more ask for a history append and a position, so the script replies
//! (`shared::decide`) and numbered channel messages are decoded too. (The input bound is the
//! decoder's own error, `ReplyTooLarge`; it is not observable from outside, so not checked here.)

use wshub::backplane::redis::{Inbound, RedisCore, RedisSettings, SharedHistory, TimerAction, PUB, SUB};
use wshub::backplane::url::RedisUrl;
use wshub::backplane::Backplane;
use wshub::hub::history::Since;

use crate::checks::Reader;

const NODE: u64 = 0x1234_5678_9abc_def0;

pub fn check_backplane(data: &[u8]) {
    run_backplane(data);
}

/// Runs the checks; returns how many messages were delivered locally.
pub fn run_backplane(data: &[u8]) -> u64 {
    let mut total = 0;
    let mut r = Reader::new(data);
    let settings_byte = r.u8();
    let url_text = String::from_utf8_lossy(r.blob(64)).into_owned();
    // The URL parser: never panics; what it accepts has a host (the first tries seed the corpus).
    if let Ok(url) = RedisUrl::parse(&url_text) {
        let _ = format!("{url:?}");
    }
    let max_data = [16usize, 64, 1024, 1 << 20][usize::from(settings_byte & 3)];
    let prefix = if settings_byte & 4 == 0 { "wshub:" } else { "" };
    let settings = RedisSettings {
        url: RedisUrl::parse("redis://127.0.0.1:6379").expect("a plain URL parses"),
        prefix: prefix.into(),
        node_id: NODE,
        // Room for a history script call (eleven arguments) when history is on.
        max_output: if settings_byte & 8 != 0 { 4096 } else { 256 },
        max_data,
        connect_timeout: 3_000,
        history: (settings_byte & 8 != 0).then_some(SharedHistory { size: 4, ttl: 60_000 }),
    };
    let history = settings_byte & 8 != 0;
    let mut tickets = 0u64;
    let mut core = RedisCore::new(settings, 0);
    let mut now = 0u64;
    assert_eq!(core.on_timer(now), TimerAction::Connect, "the first attempt is due at once");
    while !r.is_empty() {
        let op = r.u8();
        now += u64::from(op >> 4) * 50;
        match op & 0x0f {
            0 => {
                let _ = core.on_timer(now);
            }
            1 => {
                let topic = String::from_utf8_lossy(r.blob(8)).into_owned();
                core.topic_wanted(&topic);
            }
            2 => {
                let topic = String::from_utf8_lossy(r.blob(8)).into_owned();
                core.topic_unwanted(&topic);
            }
            3 => {
                let _ = core
                    .publish("t", serde_json::value::RawValue::from_string("[1]".into()).unwrap().as_ref());
            }
            4 | 5 if history => {
                tickets += 1;
                let since = r.u8();
                let epoch = String::from_utf8_lossy(r.blob(16)).into_owned();
                if op & 0x0f == 4 {
                    let data = serde_json::value::RawValue::from_string("[1]".into()).unwrap();
                    let _ = core.append("t", data.as_ref(), (since & 1 == 0).then_some(tickets));
                } else {
                    let since =
                        (since & 1 == 0).then_some(Since { offset: u64::from(since >> 1), epoch: &epoch });
                    let _ = core.fetch_position("t", since, tickets);
                }
            }
            op => {
                let which = if op & 1 == 0 { SUB } else { PUB };
                let bytes = r.blob(1024);
                // The output side: drain what the core wrote, as the shell would.
                let link = core.link(which);
                link.consume_output(usize::MAX);
                link.feed(bytes);
                let garbage_before = core.stats().garbage;
                let mut delivered = 0u64;
                let result = core.on_input(which, now, |m| {
                    let data = match m {
                        Inbound::Publish { data, .. } | Inbound::Broadcast { data } => data,
                        Inbound::Numbered { message, .. } => message.data,
                        Inbound::Confirmed { .. } | Inbound::Appended { .. } => return true,
                        Inbound::Position { fetched, .. } => {
                            // A replay is whole and in order, or there is none.
                            if let Some(fetched) = fetched {
                                assert!(fetched.recovered == Some(true) || fetched.replay.is_empty());
                                for (i, (offset, data)) in fetched.replay.iter().enumerate() {
                                    assert_eq!(
                                        *offset,
                                        fetched.offset + 1 + i as u64 - fetched.replay.len() as u64
                                    );
                                    assert!(data.get().len() <= max_data, "replayed data over max_data");
                                }
                            }
                            return true;
                        }
                    };
                    assert!(data.get().len() <= max_data, "data over max_data delivered");
                    // JSON syntax only: numbers beyond f64 (`6.6E66114344`) are valid JSON and are
                    // forwarded as written, as a client's publish is; `Value` would refuse them.
                    serde_json::from_str::<serde::de::IgnoredAny>(data.get())
                        .expect("delivered data is JSON");
                    delivered += 1;
                    true
                });
                let stats = core.stats();
                assert!(stats.garbage >= garbage_before);
                if result.is_err() {
                    assert!(!core.is_up(), "a connection that failed to decode is not up");
                }
                total += delivered;
                assert_eq!(stats.received, total, "every delivery is counted once");
            }
        }
    }
    total
}
