//! `idle`: open N connections that then say nothing, and measure how much the server's resident
//! memory grew per connection (VmRSS of the given pid before the first connect and after the
//! last upgrade, then again at the end of the hold).

use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::net::{self, Fill, Target};
use crate::stats::vm_rss_kib;
use crate::Timing;

pub struct Idle {
    pub conns: usize,
    pub pid: u32,
    pub hold: Duration,
}

pub struct IdleResult {
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_end_kib: u64,
    pub kib_per_conn: f64,
    pub open_secs: f64,
    pub dropped: usize,
}

pub fn run(target: &Target, p: &Idle, timing: &Timing) -> Result<IdleResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let rss_before = vm_rss_kib(p.pid)?;
    let started = Instant::now();
    let deadline = started + timing.setup_limit;
    let mut conns = net::open_all(&mut poll, std::slice::from_ref(target), p.conns, 256, 1024, deadline)?;
    let open_secs = started.elapsed().as_secs_f64();

    // Let the server settle (deferred frees, lazily grown buffers), then measure.
    let mut events = Events::with_capacity(1024);
    let mut dropped = 0;
    let mut hold = |until: Instant, conns: &mut Vec<net::Conn>| -> Result<(), String> {
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            poll.poll(&mut events, Some((until - now).min(Duration::from_millis(100))))
                .map_err(|e| e.to_string())?;
            for ev in events.iter() {
                let c = &mut conns[ev.token().0];
                if c.done {
                    continue;
                }
                loop {
                    match c.fill() {
                        Ok(Fill::Data) => {
                            // Pings or anything else: drop what was read, stay idle.
                            let _ = c.frames(|_, _| Ok(()));
                        }
                        Ok(Fill::Empty) => break,
                        Ok(Fill::Eof) | Err(_) => {
                            c.done = true;
                            dropped += 1;
                            break;
                        }
                    }
                }
            }
        }
    };
    let settle = Duration::from_secs(1).min(p.hold);
    hold(Instant::now() + settle, &mut conns)?;
    let rss_after = vm_rss_kib(p.pid)?;
    hold(Instant::now() + p.hold.saturating_sub(settle), &mut conns)?;
    let rss_end = vm_rss_kib(p.pid)?;
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    let grown = rss_after.max(rss_end).saturating_sub(rss_before);
    Ok(IdleResult {
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_end_kib: rss_end,
        kib_per_conn: grown as f64 / p.conns as f64,
        open_secs,
        dropped,
    })
}
