//! `connrate`: `concurrency` slots each run connect → upgrade → close frame → server's close
//! frame → server closes TCP, then start over. A cycle counts once the server has closed, so
//! the server side holds TIME_WAIT and the generator never runs out of ephemeral ports.

use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::net::{Conn, Fill, State, Target};
use crate::stats::Meter;
use crate::ws;
use crate::Timing;

pub struct ConnRate {
    pub concurrency: usize,
}

pub struct ConnRateResult {
    pub cycles_per_s: f64,
    pub failures: u64,
    pub windows: Vec<f64>,
}

/// A cycle slower than this is abandoned and counted as a failure.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(target: &Target, p: &ConnRate, timing: &Timing) -> Result<ConnRateResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let accept = ws::expected_accept();
    let request = ws::upgrade_request(&target.host, &target.path, target.offer_deflate);
    let mut close = Vec::new();
    ws::push_close(&mut close);

    let new_conn = |poll: &Poll, slot: usize| -> Result<Conn, String> {
        Conn::connect(poll, target, Token(slot), 1024).map_err(|e| format!("connect: {e}"))
    };
    let mut slots: Vec<Conn> = Vec::with_capacity(p.concurrency);
    for slot in 0..p.concurrency {
        slots.push(new_conn(&poll, slot)?);
    }
    let mut events = Events::with_capacity(1024);
    let mut cycles: u64 = 0;
    let mut failures: u64 = 0;
    let mut first_error: Option<String> = None;
    let mut meter = Meter::new(timing.warmup, timing.window, timing.windows);
    let mut last_sweep = Instant::now();
    loop {
        let now = Instant::now();
        if meter.observe(now, cycles) {
            break;
        }
        poll.poll(&mut events, Some(if timing.spin { Duration::ZERO } else { meter.timeout(now) }))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let slot = ev.token().0;
            let c = &mut slots[slot];
            match step(c, &request, &accept, &close) {
                Ok(false) => {}
                Ok(true) => {
                    cycles += 1;
                    c.state = State::Closed;
                }
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert(e);
                    c.state = State::Closed;
                }
            }
        }
        // Time out stuck cycles now and then.
        let now = Instant::now();
        if now.duration_since(last_sweep) > Duration::from_millis(200) {
            last_sweep = now;
            for c in slots.iter_mut() {
                if c.state != State::Closed && now.duration_since(c.since) > CYCLE_TIMEOUT {
                    failures += 1;
                    first_error.get_or_insert(format!("cycle timed out in state {:?}", c.state));
                    c.state = State::Closed;
                }
            }
        }
        for (slot, c) in slots.iter_mut().enumerate() {
            if c.state == State::Closed {
                let _ = poll.registry().deregister(&mut c.sock);
                *c = new_conn(&poll, slot)?;
            }
        }
        if failures > 0 && cycles == 0 && failures >= 100 {
            return Err(format!("no cycle completes: {}", first_error.unwrap_or_default()));
        }
    }
    if let Some(e) = &first_error {
        eprintln!("connrate: {failures} failed cycles; first: {e}");
    }
    Ok(ConnRateResult { cycles_per_s: meter.median(), failures, windows: meter.rates })
}

/// Advances one slot's cycle; Ok(true) when the cycle is complete.
fn step(c: &mut Conn, request: &[u8], accept: &str, close: &[u8]) -> Result<bool, String> {
    if c.state == State::Connecting {
        if !c.connected().map_err(|e| format!("connect: {e}"))? {
            return Ok(false);
        }
        c.state = State::Handshaking;
        c.wbuf.clear();
        c.wbuf.extend_from_slice(request);
        c.wpos = 0;
    }
    if !c.flushed() {
        c.flush().map_err(|e| format!("write: {e}"))?;
    }
    loop {
        let fill = c.fill().map_err(|e| format!("read: {e}"))?;
        if let Fill::Empty = fill {
            return Ok(false);
        }
        let eof = matches!(fill, Fill::Eof);
        if c.state == State::Handshaking {
            if c.check_handshake(accept)? {
                c.state = State::Closing;
                c.wbuf.clear();
                c.wbuf.extend_from_slice(close);
                c.wpos = 0;
                c.flush().map_err(|e| format!("write close: {e}"))?;
            } else if eof {
                return Err("server closed during the upgrade".into());
            }
        }
        if c.state == State::Closing {
            let mut closed = false;
            c.frames(|f, _| {
                if f.opcode == ws::OP_CLOSE {
                    closed = true;
                }
                Ok(())
            })?;
            if closed {
                c.state = State::AwaitEof;
            } else if eof {
                return Err("server closed TCP without a close frame".into());
            }
        }
        if c.state == State::AwaitEof && eof {
            return Ok(true);
        }
        if eof {
            return Err(format!("unexpected EOF in state {:?}", c.state));
        }
    }
}
