//! `ceiling`: the descriptor ceiling. Holds N connections (19,000 under a 20,000 open-file
//! limit) to a server started with `--max-connections N`, idle and then subscribed to one topic
//! with fan-outs to all of them; shows that one client more gets `503` and that after some
//! connections leave a new client is upgraded again. Reads the server's RSS at each step.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::net::{self, Fill, Target};
use crate::stats::vm_rss_kib;
use crate::ws;

pub struct Ceiling {
    pub conns: usize,
    pub pid: u32,
    pub fanouts: usize,
    /// Connections closed to show recovery.
    pub release: usize,
}

pub struct CeilingResult {
    pub open_secs: f64,
    pub rss_before_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_subscribed_kib: u64,
    pub rss_fanout_kib: u64,
    pub fd_at_ceiling: u64,
    /// Milliseconds from each publish to the last of the N deliveries.
    pub fanout_ms: Vec<f64>,
    pub over_limit_status: String,
    pub after_release_status: String,
}

const IO: Duration = Duration::from_secs(30);

/// Sends a request on a fresh connection and returns the response head (and body, if the
/// server closes after it).
fn http(target: &Target, request: &[u8]) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&target.addr, IO).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(IO)).map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    // A 101 keeps the connection open: read until the head is complete.
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.starts_with(b"HTTP/1.1 101") && ws::find(&out, b"\r\n\r\n").is_some() {
                    break;
                }
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status_line(resp: &str) -> String {
    resp.lines().next().unwrap_or("").trim().to_string()
}

/// Reads every connection's input until `done(conn)` holds for all of them or `limit` passes.
fn pump(
    poll: &mut Poll,
    conns: &mut [net::Conn],
    limit: Instant,
    mut on_frame: impl FnMut(&mut net::Conn, ws::Frame, &[u8]),
    done: impl Fn(&net::Conn) -> bool,
) -> Result<(), String> {
    let mut events = Events::with_capacity(4096);
    let mut left = conns.iter().filter(|c| !done(c)).count();
    while left > 0 {
        let now = Instant::now();
        if now >= limit {
            return Err(format!("{left} of {} connections did not finish in time", conns.len()));
        }
        poll.poll(&mut events, Some((limit - now).min(Duration::from_millis(100))))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns.get_mut(i) else { continue };
            let before = done(c);
            let _ = c.flush();
            loop {
                match c.fill() {
                    Ok(Fill::Data) => {
                        let mut frames = Vec::new();
                        c.frames(|f, p| {
                            frames.push((f, p.to_vec()));
                            Ok(())
                        })?;
                        for (f, p) in frames {
                            if f.opcode == ws::OP_PING {
                                // The server pings every 54 s and drops who does not answer.
                                if c.flushed() {
                                    c.wbuf.clear();
                                    c.wpos = 0;
                                }
                                ws::push_frame(&mut c.wbuf, ws::OP_PONG, &p);
                                let _ = c.flush();
                                continue;
                            }
                            on_frame(c, f, &p);
                        }
                    }
                    Ok(Fill::Empty) => break,
                    Ok(Fill::Eof) | Err(_) => return Err(format!("connection {i} closed by the server")),
                }
            }
            if !before && done(c) {
                left -= 1;
            }
        }
    }
    Ok(())
}

pub fn run(target: &Target, p: &Ceiling) -> Result<CeilingResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let rss_before = vm_rss_kib(p.pid)?;
    let started = Instant::now();
    // At most an eighth of the limit in flight: the server keeps a quarter of it for request heads
    // in progress (--max-pending-handshakes) and answers 503 past that.
    let in_flight = (p.conns / 8).clamp(1, 256);
    let mut conns = net::open_all(
        &mut poll,
        std::slice::from_ref(target),
        p.conns,
        in_flight,
        512,
        started + Duration::from_secs(300),
    )?;
    let open_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = vm_rss_kib(p.pid)?;
    let fd_at_ceiling =
        std::fs::read_dir(format!("/proc/{}/fd", p.pid)).map_err(|e| e.to_string())?.count() as u64;

    // Everyone subscribes to one topic.
    for c in conns.iter_mut() {
        c.got = 0;
        c.send_with(|out| {
            ws::push_frame(out, ws::OP_TEXT, br#"{"type":"subscribe","payload":{"topic":"all"},"id":1}"#)
        })
        .map_err(|e| format!("subscribe: {e}"))?;
    }
    let limit = Instant::now() + Duration::from_secs(120);
    pump(
        &mut poll,
        &mut conns,
        limit,
        |c, _, p| c.got += u32::from(p.starts_with(br#"{"type":"subscribed""#)),
        |c| c.got >= 1 && c.flushed(),
    )?;
    let rss_subscribed = vm_rss_kib(p.pid)?;

    // Fan-outs: one HTTP publish reaches every connection.
    let mut fanout_ms = Vec::new();
    for round in 1..=p.fanouts as u32 {
        // Over WebSocket from the first connection: at the limit a plain HTTP request is a
        // connection over it too, and gets 503 like any other.
        let msg = format!(
            r#"{{"type":"publish","payload":{{"topic":"all","data":{{"round":{round}}}}},"id":{round}}}"#
        );
        let t0 = Instant::now();
        conns[0]
            .send_with(|out| ws::push_frame(out, ws::OP_TEXT, msg.as_bytes()))
            .map_err(|e| format!("publish: {e}"))?;
        let want = format!(r#""delivered":{}"#, p.conns);
        let acked = std::cell::Cell::new(false);
        let limit = Instant::now() + Duration::from_secs(120);
        pump(
            &mut poll,
            &mut conns,
            limit,
            |c, _, p| {
                if p.starts_with(br#"{"type":"message""#) {
                    c.got += 1;
                } else if p.starts_with(br#"{"type":"ack""#) {
                    acked.set(ws::find(p, want.as_bytes()).is_some());
                }
            },
            |c| c.got > round,
        )?;
        fanout_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if !acked.get() {
            // The ack follows the publisher's own copy; wait for it if it has not come yet.
            let limit = Instant::now() + Duration::from_secs(30);
            pump(
                &mut poll,
                &mut conns[..1],
                limit,
                |_, _, p| acked.set(acked.get() || ws::find(p, want.as_bytes()).is_some()),
                |_| acked.get(),
            )
            .map_err(|e| format!("round {round}: no ack with {want}: {e}"))?;
        }
    }
    let rss_fanout = vm_rss_kib(p.pid)?;

    // One more client than the limit: refused before the upgrade, the others unharmed.
    let upgrade = ws::upgrade_request(&target.host, &target.path, false);
    let over = status_line(&http(target, &upgrade)?);

    // Some leave; a new client is upgraded again.
    for _ in 0..p.release.min(conns.len()) {
        drop(conns.pop());
    }
    let mut after = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        after = status_line(&http(target, &upgrade)?);
        if after.starts_with("HTTP/1.1 101") {
            break;
        }
    }
    Ok(CeilingResult {
        open_secs,
        rss_before_kib: rss_before,
        rss_idle_kib: rss_idle,
        rss_subscribed_kib: rss_subscribed,
        rss_fanout_kib: rss_fanout,
        fd_at_ceiling,
        fanout_ms,
        over_limit_status: over,
        after_release_status: after,
    })
}
