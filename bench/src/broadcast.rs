//! `broadcast`: N clients subscribe to one topic of the JSON hub protocol; each round the first
//! P of them publish one message each, and the round ends when every client has received all P.
//! Each message carries its send time, so every delivery gives one latency sample.
//!
//! With `--messages N` the run is a fixed amount of work instead of a timed one: every publisher
//! sends exactly N messages (N rounds) and stops, and the run ends once every client has
//! received all of them (N x publishers x clients deliveries), or fails after `--stall` seconds
//! without a delivery. A server under `valgrind --tool=callgrind` then does the same work
//! whatever the machine's speed: `bench/run.sh instr` counts instructions per delivery with it.

use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::net::{self, Conn, Fill, Target};
use crate::stats::{Histogram, Meter};
use crate::ws;
use crate::Timing;

pub struct Broadcast {
    pub clients: usize,
    pub publishers: usize,
    /// Bytes of filler in each message's `data`, on top of the timestamp and sequence.
    pub size: usize,
    pub topic: String,
    /// Filler of realistic JSON text instead of repeated letters.
    pub json: bool,
    /// Inflate one compressed delivery in this many (at least 1); count the others by frame.
    pub inflate_one_in: u64,
    /// Fixed-work mode: messages each publisher sends (rounds) before the run ends.
    pub messages: Option<u64>,
}

pub struct BroadcastResult {
    pub deliveries_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Latency of deliveries whose publisher is connected to another node (several targets
    /// only; 0 otherwise): what crossing the backplane costs.
    pub cross_p50_us: f64,
    pub cross_p99_us: f64,
    pub rounds: u64,
    pub samples: u64,
    pub windows: Vec<f64>,
    /// Deliveries in all, warm-up included (for per-delivery costs measured over the run; N x
    /// publishers x clients in `--messages` mode).
    pub delivered: u64,
    /// Of which compressed (RSV1).
    pub compressed: u64,
    /// Bytes on the wire per delivery (frame header and payload).
    pub wire_bytes_per_msg: f64,
}

/// Marker that starts `data`: `"data":"t` then the send time in nanoseconds.
const DATA_MARK: &[u8] = b"\"data\":\"t";

fn publish_frame(out: &mut Vec<u8>, topic: &str, t_ns: u64, seq: u64, client: usize, filler: &[u8]) {
    const HEAD: &[u8] = b"{\"type\":\"publish\",\"payload\":{\"topic\":\"";
    const MID: &[u8] = b"\",\"data\":\"t";
    const TAIL: &[u8] = b"\"}}";
    // Fixed-width numbers make the length known before writing: t15 s10 c5 '-'.
    let len = HEAD.len() + topic.len() + MID.len() + 15 + 1 + 10 + 1 + 5 + 1 + filler.len() + TAIL.len();
    ws::push_header(out, ws::OP_TEXT, len);
    let start = out.len();
    out.extend_from_slice(HEAD);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(MID);
    push_padded(out, t_ns, 15);
    out.push(b's');
    push_padded(out, seq, 10);
    out.push(b'c');
    push_padded(out, client as u64, 5);
    out.push(b'-');
    out.extend_from_slice(filler);
    out.extend_from_slice(TAIL);
    debug_assert_eq!(out.len() - start, len);
    ws::apply_mask(&mut out[start..], 0);
}

fn push_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = v;
    let mut i = 20;
    loop {
        i -= 1;
        digits[i] += (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let used = 20 - i;
    for _ in used..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[i..]);
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut any = false;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
        any = true;
    }
    any.then_some(v)
}

/// The send time carried by a `message` frame's payload, if it is one of ours.
fn sent_at(payload: &[u8]) -> Option<u64> {
    let at = ws::find(payload, DATA_MARK)?;
    parse_u64(&payload[at + DATA_MARK.len()..])
}

/// The index of the client that published a `message` (after `t<15>s<10>c`).
fn publisher_of(payload: &[u8]) -> Option<usize> {
    let at = ws::find(payload, DATA_MARK)? + DATA_MARK.len() + 15 + 1 + 10 + 1;
    parse_u64(payload.get(at..)?).map(|c| c as usize)
}

/// Clients are spread over `targets` round-robin (client `i` on `targets[i % n]`).
pub fn run(targets: &[Target], p: &Broadcast, timing: &Timing) -> Result<BroadcastResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let rbuf = if p.clients <= 2000 { 64 * 1024 } else { 8 * 1024 };
    let deadline = Instant::now() + timing.setup_limit;
    let mut conns = net::open_all(&mut poll, targets, p.clients, 256, rbuf, deadline)?;
    let mut events = Events::with_capacity(4096);

    // Subscribe everyone and wait for every `subscribed`.
    let sub = format!("{{\"type\":\"subscribe\",\"payload\":{{\"topic\":\"{}\"}}}}", p.topic);
    for (i, c) in conns.iter_mut().enumerate() {
        c.send_with(|out| ws::push_frame(out, ws::OP_TEXT, sub.as_bytes()))
            .map_err(|e| format!("subscribe #{i}: {e}"))?;
    }
    let mut subscribed = 0;
    while subscribed < conns.len() {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("only {subscribed} of {} subscribed in time", conns.len()));
        }
        poll.poll(&mut events, Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && !c.flushed() {
                c.flush().map_err(|e| format!("subscribe #{i}: {e}"))?;
            }
            read_all(c, i, |f, payload| {
                if f.opcode == ws::OP_TEXT && ws::find(payload, b"\"subscribed\"").is_some() {
                    return Ok(true);
                }
                Ok(false)
            })
            .map(|n| subscribed += n)?;
        }
    }

    // Rounds.
    let t0 = Instant::now();
    let filler: Vec<u8> = if p.json {
        crate::echo::json_payload(p.size).into_iter().map(|b| if b == b'"' { b'\'' } else { b }).collect()
    } else {
        (0..p.size).map(|i| b'a' + (i % 26) as u8).collect()
    };
    let mut compressed: u64 = 0;
    let mut wire_bytes: u64 = 0;
    let publishers = p.publishers.min(conns.len());
    let want = publishers as u32;
    let mut hist = Histogram::new();
    let mut cross = Histogram::new();
    let nodes = targets.len();
    let mut delivered: u64 = 0;
    let mut finished = 0usize;
    let mut round: u64 = 0;
    let mut meter = Meter::new(timing.warmup, timing.window, timing.windows);
    let start_round = |conns: &mut [Conn], round: u64| -> Result<(), String> {
        for c in conns.iter_mut() {
            c.got = 0;
            c.done = false;
        }
        for (i, c) in conns.iter_mut().take(publishers).enumerate() {
            let t_ns = t0.elapsed().as_nanos() as u64;
            c.send_with(|out| publish_frame(out, &p.topic, t_ns, round, i, &filler))
                .map_err(|e| format!("publish #{i}: {e}"))?;
        }
        Ok(())
    };
    start_round(&mut conns, round)?;
    let started = Instant::now();
    let mut last_progress = (started, 0u64);
    loop {
        let now = Instant::now();
        match p.messages {
            // Every round is counted complete below; the last one ends the run.
            Some(n) if round >= n => break,
            Some(_) => {}
            None if meter.observe(now, delivered) => break,
            None => {}
        }
        if delivered != last_progress.1 {
            last_progress = (now, delivered);
        } else if now.duration_since(last_progress.0) > timing.stall {
            let behind = conns.iter().filter(|c| !c.done).count();
            return Err(format!(
                "stalled in round {round}: {behind} clients still waiting after {:?}",
                timing.stall
            ));
        }
        let timeout = timing.poll_timeout(p.messages.is_some(), &meter, now);
        poll.poll(&mut events, Some(timeout)).map_err(|e| e.to_string())?;
        // Fixed work has no warm-up: every delivery is a sample.
        let measuring = p.messages.is_some() || meter.measuring();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && !c.flushed() {
                c.flush().map_err(|e| format!("publish #{i}: {e}"))?;
            }
            let mut got = c.got;
            let n = read_all(c, i, |f, payload| {
                if f.opcode != ws::OP_TEXT {
                    return Ok(false);
                }
                // A compressed delivery (--deflate): inflate it to read its send time. This
                // costs the load generator an allocation and an inflate per delivery, so with
                // --inflate-one-in N only one in N is inflated; the others are counted by their
                // frame (during rounds a compressed text frame can only be a delivery: replies
                // are below any compression threshold), without a latency sample.
                let inflated;
                let payload = if f.rsv1 {
                    compressed += 1;
                    if !compressed.is_multiple_of(p.inflate_one_in) {
                        wire_bytes += f.total() as u64;
                        got += 1;
                        return Ok(true);
                    }
                    inflated = ws::inflate(payload, 1 << 20)?;
                    &inflated[..]
                } else {
                    payload
                };
                let Some(sent) = sent_at(payload) else { return Ok(false) };
                if measuring {
                    let now_ns = t0.elapsed().as_nanos() as u64;
                    hist.record(now_ns.saturating_sub(sent));
                    if nodes > 1 && publisher_of(payload).is_some_and(|from| from % nodes != i % nodes) {
                        cross.record(now_ns.saturating_sub(sent));
                    }
                }
                wire_bytes += f.total() as u64;
                got += 1;
                Ok(true)
            })?;
            c.got = got;
            delivered += n as u64;
            if c.got > want {
                return Err(format!("#{i}: {} messages in round {round}, expected {want}", c.got));
            }
            if c.got == want && !c.done {
                c.done = true;
                finished += 1;
            }
        }
        if finished == conns.len() {
            finished = 0;
            round += 1;
            if p.messages.is_none_or(|n| round < n) {
                start_round(&mut conns, round)?;
            }
        }
    }
    let deliveries_per_s = match p.messages {
        Some(_) => delivered as f64 / started.elapsed().as_secs_f64(),
        None => meter.median(),
    };
    drop(conns);
    std::thread::sleep(Duration::from_millis(50));
    Ok(BroadcastResult {
        deliveries_per_s,
        p50_us: hist.quantile(0.5) as f64 / 1000.0,
        p99_us: hist.quantile(0.99) as f64 / 1000.0,
        cross_p50_us: if cross.count() > 0 { cross.quantile(0.5) as f64 / 1000.0 } else { 0.0 },
        cross_p99_us: if cross.count() > 0 { cross.quantile(0.99) as f64 / 1000.0 } else { 0.0 },
        rounds: round,
        samples: hist.count(),
        windows: meter.rates,
        delivered,
        compressed,
        wire_bytes_per_msg: wire_bytes as f64 / delivered.max(1) as f64,
    })
}

/// Reads everything available on `c` and passes each whole text or binary frame to `f`;
/// returns how many frames `f` accepted.
fn read_all(
    c: &mut Conn,
    i: usize,
    mut f: impl FnMut(ws::Frame, &[u8]) -> Result<bool, String>,
) -> Result<usize, String> {
    let mut accepted = 0;
    loop {
        match c.fill().map_err(|e| format!("read #{i}: {e}"))? {
            Fill::Data => {
                c.frames(|frame, payload| {
                    match frame.opcode {
                        ws::OP_CLOSE => return Err("server sent close".into()),
                        ws::OP_PING | ws::OP_PONG => return Ok(()),
                        _ => {}
                    }
                    if !frame.fin || frame.opcode == ws::OP_CONT {
                        return Err("fragmented message (not expected from a hub)".into());
                    }
                    if f(frame, payload)? {
                        accepted += 1;
                    }
                    Ok(())
                })
                .map_err(|e| format!("#{i}: {e}"))?;
            }
            Fill::Empty => return Ok(accepted),
            Fill::Eof => return Err(format!("#{i}: server closed the connection")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_frame_round_trips() {
        let mut out = Vec::new();
        publish_frame(&mut out, "bench", 123_456_789, 42, 7, b"xxxxxxxxxxxxxxxxxxxx");
        // Unmask it as a server would.
        assert_eq!(out[0], 0x81);
        let len = (out[1] & 0x7f) as usize;
        assert!(len < 126);
        let mut payload = out[6..].to_vec();
        assert_eq!(payload.len(), len);
        ws::apply_mask(&mut payload, 0);
        let text = String::from_utf8(payload.clone()).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"publish\",\"payload\":{\"topic\":\"bench\",\"data\":\
             \"t000000123456789s0000000042c00007-xxxxxxxxxxxxxxxxxxxx\"}}"
        );
        assert_eq!(sent_at(&payload), Some(123_456_789));
        assert_eq!(publisher_of(&payload), Some(7));
    }
}
