//! Topic history kept in Redis, shared by every node: the two Lua scripts, the key names, and
//! the sans-IO decoding of what comes back (script replies and numbered channel messages).
//!
//! The contract with [`redis`](super::redis), which owns the connections:
//! * A publish on a history topic is one `EVALSHA` of [`APPEND_SCRIPT`]: in one atomic step Redis
//!   gives the message the topic's next offset (`INCR`), creates the epoch if there is none (the
//!   node proposes a random one; `SET` only when missing, and a missing epoch wipes the offset and
//!   list so a new epoch always starts at 1), appends `"<offset> <ms> <data>"` to the topic's list
//!   trimmed to the last N (`RPUSH` + `LTRIM`), refreshes the TTL of the three keys (`PEXPIRE`)
//!   and `PUBLISH`es `E<epoch> <offset> <data>` to the topic's channel. Because all of it is one
//!   script, the channel's order is the offsets' order on every node.
//! * A subscribe asks for the topic's position with [`POSITION_SCRIPT`] (after Redis confirmed
//!   the channel's SUBSCRIBE, so nothing published after the answer can be missed): the epoch
//!   (created if missing, like a publish would), the last offset, Redis's clock, and when the
//!   client gave a `since` in the current epoch, the kept entries after it, at most
//!   `max_reply` bytes of them. [`decide`] then says whether that is a whole recovery.
//! * Nothing here reads a clock: the entries carry Redis's own time and the script reports
//!   Redis's "now", so the TTL is judged on one clock whatever the nodes' clocks say.
//!
//! # Keys (per topic, all expiring `--history-ttl` after the topic's last publish or subscribe)
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<prefix>epoch:<topic>` | string | the epoch (16 hex digits) |
//! | `<prefix>offset:<topic>` | string | the last offset given |
//! | `<prefix>history:<topic>` | list | the last `--history-size` entries, `"<offset> <ms> <data>"` |
//!
//! Memory in Redis is therefore about `topics x (3 keys + N x (data + ~40 bytes))`, bounded per
//! topic by `--history-size` and in time by `--history-ttl`; `--history-max-bytes` bounds only
//! the in-memory store (Redis's own `maxmemory` is the knob there).

use serde_json::value::RawValue;

use super::link::Reply;
use crate::hub::history::{Offset, Since};
use crate::protocol::session::Millis;

/// KEYS: epoch, offset, list, channel. ARGV: data, proposed epoch, history size, TTL (ms).
/// Returns `{epoch, offset}`.
pub const APPEND_SCRIPT: &str = "\
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[2]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('SET', KEYS[1], epoch)
end
local offset = redis.call('INCR', KEYS[2])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[3], offset .. ' ' .. string.format('%d', ms) .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[3]), -1)
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
redis.call('PUBLISH', KEYS[4], 'E' .. epoch .. ' ' .. offset .. ' ' .. ARGV[1])
return {epoch, offset}
";

/// KEYS: epoch, offset, list. ARGV: proposed epoch, TTL (ms), since offset (-1: none), since
/// epoch, most bytes of entries to return. Returns `{epoch, offset, now_ms, entries...}`;
/// entries only when `since` is in the current epoch and behind, and an empty entry list with
/// offset > since means "more than max bytes" (not recoverable).
pub const POSITION_SCRIPT: &str = "\
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('SET', KEYS[1], epoch, 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local offset = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = redis.call('TIME')
local reply = {epoch, offset, tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
local since = tonumber(ARGV[3])
if since >= 0 and ARGV[4] == epoch and since < offset then
  local entries = redis.call('LRANGE', KEYS[3], since - offset, -1)
  local budget = tonumber(ARGV[5])
  for i = 1, #entries do
    budget = budget - #entries[i]
    if budget < 0 then return {epoch, offset, reply[3]} end
    reply[#reply + 1] = entries[i]
  end
end
return reply
";

/// Lowercase hex SHA-1 of a script: what `EVALSHA` names it by.
pub fn script_sha(script: &str) -> [u8; 40] {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(script.as_bytes());
    let mut hex = [0u8; 40];
    for (i, byte) in digest.iter().enumerate() {
        hex[2 * i] = HEX[(byte >> 4) as usize];
        hex[2 * i + 1] = HEX[(byte & 0xf) as usize];
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Epochs are 16 lowercase hex digits (64 random bits); anything else matches no epoch.
pub const EPOCH_LEN: usize = 16;

/// 16 hex digits of `bits`: an epoch proposal.
pub fn epoch_hex(bits: u64) -> [u8; EPOCH_LEN] {
    let mut out = [0u8; EPOCH_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((bits >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

fn is_epoch(bytes: &[u8]) -> bool {
    bytes.len() == EPOCH_LEN && bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why something from Redis about history was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadHistory {
    /// A numbered channel message not shaped `E<16 hex> <offset> <data>`.
    BadTag,
    /// An offset that is not a decimal integer of at most 19 digits.
    BadOffset,
    /// `data` not UTF-8 JSON, too deep or too large.
    BadData,
    /// A script reply of the wrong shape.
    BadReply,
}

/// `<digits>` as an offset: 1 to 19 digits (fits u64, no sign, no spaces).
fn parse_offset(bytes: &[u8]) -> Result<Offset, BadHistory> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(BadHistory::BadOffset);
    }
    Ok(bytes.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `data` as JSON checked like client input.
fn parse_data(bytes: &[u8], max_data: usize) -> Result<&RawValue, BadHistory> {
    if bytes.len() > max_data {
        return Err(BadHistory::BadData);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| BadHistory::BadData)?;
    if crate::hub::scan(text).is_err() {
        return Err(BadHistory::BadData);
    }
    serde_json::from_str(text).map_err(|_| BadHistory::BadData)
}

/// Splits `bytes` at its first space.
fn split_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b' ')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// A history message from a topic channel.
#[derive(Clone, Copy, Debug)]
pub struct Numbered<'a> {
    pub epoch: &'a str,
    pub offset: Offset,
    pub data: &'a RawValue,
}

/// Whether a channel payload is a numbered (history) message: it starts with `E`.
pub fn is_numbered(payload: &[u8]) -> bool {
    payload.first() == Some(&b'E')
}

/// `E<16 hex> <offset> <data>`, checked.
pub fn parse_numbered(payload: &[u8], max_data: usize) -> Result<Numbered<'_>, BadHistory> {
    let rest = payload.strip_prefix(b"E").ok_or(BadHistory::BadTag)?;
    let (epoch, rest) = split_space(rest).ok_or(BadHistory::BadTag)?;
    if !is_epoch(epoch) {
        return Err(BadHistory::BadTag);
    }
    let (offset, data) = split_space(rest).ok_or(BadHistory::BadTag)?;
    let offset = parse_offset(offset)?;
    let data = parse_data(data, max_data)?;
    let epoch = std::str::from_utf8(epoch).map_err(|_| BadHistory::BadTag)?;
    Ok(Numbered { epoch, offset, data })
}

/// The append script's reply: `{epoch, offset}`.
pub fn parse_appended<'a>(reply: &Reply<'a>) -> Result<(&'a str, Offset), BadHistory> {
    let epoch = reply.item(0).and_then(|r| r.bulk()).filter(|e| is_epoch(e)).ok_or(BadHistory::BadReply)?;
    let offset = reply.item(1).and_then(|r| r.integer()).ok_or(BadHistory::BadReply)?;
    let epoch = std::str::from_utf8(epoch).map_err(|_| BadHistory::BadReply)?;
    Ok((epoch, u64::try_from(offset).map_err(|_| BadHistory::BadReply)?))
}

/// A topic's position as Redis reported it, and what a subscribe with `since` recovers.
#[derive(Debug)]
pub struct Fetched<'a> {
    pub epoch: &'a str,
    /// The last offset published (0: none in this epoch).
    pub offset: Offset,
    /// `Some` when the request had a `since`: whether `replay` is every message after it.
    pub recovered: Option<bool>,
    /// The messages after `since` (only when recovered), in offset order.
    pub replay: Vec<(Offset, &'a RawValue)>,
}

/// Decodes the position script's reply and decides the recovery: `since` is recovered when its
/// epoch is the topic's, it is not ahead of the topic, and the entries returned are exactly the
/// offsets after it up to the last one, none older than `ttl` on Redis's clock. Anything else
/// (a gap the list no longer holds, an expired message, an entry that does not parse, a reply
/// over the byte budget) is `recovered: false` with nothing to replay.
pub fn decide<'a>(
    reply: &Reply<'a>,
    since: Option<Since<'_>>,
    ttl: Millis,
    max_data: usize,
) -> Result<Fetched<'a>, BadHistory> {
    let epoch = reply.item(0).and_then(|r| r.bulk()).filter(|e| is_epoch(e)).ok_or(BadHistory::BadReply)?;
    let epoch = std::str::from_utf8(epoch).map_err(|_| BadHistory::BadReply)?;
    let offset = reply.item(1).and_then(|r| r.integer()).ok_or(BadHistory::BadReply)?;
    let offset = u64::try_from(offset).map_err(|_| BadHistory::BadReply)?;
    let now = reply.item(2).and_then(|r| r.integer()).ok_or(BadHistory::BadReply)?;
    let now = u64::try_from(now).map_err(|_| BadHistory::BadReply)?;
    let mut fetched = Fetched { epoch, offset, recovered: None, replay: Vec::new() };
    let Some(since) = since else { return Ok(fetched) };
    let whole = (|| {
        if since.epoch != epoch || since.offset > offset {
            return false;
        }
        let want = offset - since.offset;
        if reply.len() as u64 != 3 + want {
            return false;
        }
        let oldest = now.saturating_sub(ttl);
        for i in 0..want as usize {
            let Some(entry) = reply.item(3 + i).and_then(|r| r.bulk()) else { return false };
            let parsed = split_space(entry).and_then(|(o, rest)| {
                let (ms, data) = split_space(rest)?;
                Some((parse_offset(o).ok()?, parse_offset(ms).ok()?, parse_data(data, max_data).ok()?))
            });
            match parsed {
                Some((o, ms, data)) if o == since.offset + 1 + i as u64 && ms >= oldest => {
                    fetched.replay.push((o, data));
                }
                _ => return false,
            }
        }
        true
    })();
    if !whole {
        fetched.replay.clear();
    }
    fetched.recovered = Some(whole);
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backplane::link::Link;

    const EPOCH: &str = "0123456789abcdef";

    /// Encodes `items` (ints as `:n`, strings as bulk) as one array reply and decides it.
    fn decided(
        items: &[Item],
        since: Option<(u64, &str)>,
        ttl: Millis,
    ) -> Result<(u64, Option<bool>, Vec<String>), BadHistory> {
        let mut bytes = format!("*{}\r\n", items.len()).into_bytes();
        for item in items {
            match item {
                Item::Int(n) => bytes.extend_from_slice(format!(":{n}\r\n").as_bytes()),
                Item::Bulk(s) => bytes.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes()),
            }
        }
        let mut link = Link::new(1 << 20, 1 << 20);
        link.feed(&bytes);
        let mut out = None;
        link.decode(|reply| {
            let since = since.map(|(offset, epoch)| Since { offset, epoch });
            out = Some(decide(&reply, since, ttl, 1 << 20).map(|f| {
                (f.offset, f.recovered, f.replay.iter().map(|(o, d)| format!("{o}:{}", d.get())).collect())
            }));
        })
        .unwrap();
        out.unwrap()
    }

    enum Item {
        Int(i64),
        Bulk(String),
    }

    fn entry(offset: u64, ms: u64, data: &str) -> Item {
        Item::Bulk(format!("{offset} {ms} {data}"))
    }

    fn head(offset: i64, now: i64) -> Vec<Item> {
        vec![Item::Bulk(EPOCH.into()), Item::Int(offset), Item::Int(now)]
    }

    #[test]
    fn a_plain_subscribe_gets_the_position() {
        assert_eq!(decided(&head(7, 1000), None, 60_000), Ok((7, None, vec![])));
    }

    #[test]
    fn recovers_exactly_the_offsets_after_since() {
        let mut items = head(5, 10_000);
        items.extend([entry(4, 9_000, "\"d\""), entry(5, 9_500, "{\"e\":5}")]);
        assert_eq!(
            decided(&items, Some((3, EPOCH)), 60_000),
            Ok((5, Some(true), vec!["4:\"d\"".into(), "5:{\"e\":5}".into()]))
        );
        assert_eq!(
            decided(&head(5, 10_000), Some((5, EPOCH)), 60_000),
            Ok((5, Some(true), vec![])),
            "up to date"
        );
    }

    #[test]
    fn a_gap_an_expired_entry_a_wrong_epoch_or_the_future_is_not_recovered() {
        // Only 5 is kept but the client needs 4 and 5 (trimmed by the size bound).
        let mut items = head(5, 10_000);
        items.push(entry(5, 9_500, "1"));
        assert_eq!(decided(&items, Some((3, EPOCH)), 60_000), Ok((5, Some(false), vec![])));
        // 4 is older than the TTL on Redis's clock.
        let mut items = head(5, 100_000);
        items.extend([entry(4, 30_000, "1"), entry(5, 99_000, "2")]);
        assert_eq!(decided(&items, Some((3, EPOCH)), 60_000), Ok((5, Some(false), vec![])));
        assert_eq!(decided(&head(5, 0), Some((3, "ffffffffffffffff")), 60_000), Ok((5, Some(false), vec![])));
        assert_eq!(decided(&head(5, 0), Some((6, EPOCH)), 60_000), Ok((5, Some(false), vec![])));
        // Offsets out of sequence, or data that is not JSON: refused, not replayed.
        let mut items = head(5, 10_000);
        items.extend([entry(5, 9_000, "1"), entry(4, 9_500, "2")]);
        assert_eq!(decided(&items, Some((3, EPOCH)), 60_000), Ok((5, Some(false), vec![])));
        let mut items = head(4, 10_000);
        items.push(entry(4, 9_000, "{nope"));
        assert_eq!(decided(&items, Some((3, EPOCH)), 60_000), Ok((4, Some(false), vec![])));
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(decided(&[Item::Int(1)], None, 1), Err(BadHistory::BadReply));
        let items = vec![Item::Bulk("not-an-epoch".into()), Item::Int(1), Item::Int(1)];
        assert_eq!(decided(&items, None, 1), Err(BadHistory::BadReply));
        let items = vec![Item::Bulk(EPOCH.into()), Item::Int(-1), Item::Int(1)];
        assert_eq!(decided(&items, None, 1), Err(BadHistory::BadReply));
    }

    #[test]
    fn numbered_messages_parse_strictly() {
        let ok = parse_numbered(b"E0123456789abcdef 42 {\"a\":1}", 100).unwrap();
        assert_eq!((ok.epoch, ok.offset, ok.data.get()), (EPOCH, 42, "{\"a\":1}"));
        for bad in [
            &b"E0123456789abcde 42 1"[..],
            b"E0123456789ABCDEF 42 1",
            b"E0123456789abcdef 42",
            b"E0123456789abcdef -1 1",
            b"E0123456789abcdef 99999999999999999999 1",
            b"E0123456789abcdef 1 {",
            b"N0123456789abcdef 1 1",
        ] {
            assert!(parse_numbered(bad, 100).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_numbered(b"E0123456789abcdef 1 \"0123456789\"", 5).err(), Some(BadHistory::BadData));
    }

    #[test]
    fn shas_are_those_redis_computes() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this.
        assert_eq!(&script_sha("return 1"), b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        assert_eq!(&epoch_hex(0x0123_4567_89ab_cdef), EPOCH.as_bytes());
    }
}
