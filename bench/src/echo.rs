//! `echo`: every connection writes `depth` masked frames (binary, or text with `--text`) in one
//! write, waits for all of them to come back, and repeats. The batch is masked once per
//! connection and rewritten from the same buffer every round.
//!
//! With `--messages N` the run is a fixed amount of work instead of a timed one: connections stop
//! starting rounds once N echoes are on their way, and the run ends when every echo is back. A
//! server under `valgrind --tool=callgrind` then executes the same work whatever the machine's
//! speed, which is what `bench/run.sh instr` needs to count instructions per message.

use std::time::{Duration, Instant};

use mio::{Events, Poll};

use crate::net::{self, Fill, Target};
use crate::stats::Meter;
use crate::ws;
use crate::Timing;

pub struct Echo {
    pub conns: usize,
    pub size: usize,
    pub depth: u32,
    /// Send `size` bytes of realistic JSON as text frames (else letters as binary frames).
    pub json: bool,
    /// The connections negotiated permessage-deflate: send every frame compressed and accept
    /// compressed echoes (the first echo of each connection is inflated and checked).
    pub deflate: bool,
    /// Letters as text frames (the server validates UTF-8) instead of binary ones.
    pub text: bool,
    /// Fixed-work mode: stop after this many echoes in all.
    pub messages: Option<u64>,
}

/// `size` bytes of JSON-looking ASCII text: order-book updates, repeated and cut to length.
pub fn json_payload(size: usize) -> Vec<u8> {
    let mut text = String::new();
    let mut i = 0u32;
    while text.len() < size {
        text.push_str(&format!(
            r#"{{"type":"message","payload":{{"topic":"book.BTC-USD","data":{{"seq":{},"side":"{}","price":"{}.{:02}","size":"0.{:04}","orders":{}}}}}}}"#,
            184_467 + i,
            if i.is_multiple_of(2) { "bid" } else { "ask" },
            91_000 + (i * 7) % 40,
            (i * 37) % 100,
            1200 + (i * 91) % 8000,
            i % 5 + 1
        ));
        i += 1;
    }
    text.truncate(size);
    text.into_bytes()
}

pub struct EchoResult {
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub windows: Vec<f64>,
    /// Echoes received in all (the fixed count in `--messages` mode).
    pub received: u64,
    /// Bytes on the wire per echo received (frame header and payload, compressed or not): the
    /// server's compression ratio for this payload, next to the plain run's figure.
    pub wire_bytes_per_msg: f64,
}

pub fn run(target: &Target, p: &Echo, timing: &Timing) -> Result<EchoResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let batch_len = p.depth as usize * (p.size + 14);
    let rbuf = (2 * batch_len).max(64 * 1024);
    let deadline = Instant::now() + timing.setup_limit;
    let mut conns = net::open_all(&mut poll, std::slice::from_ref(target), p.conns, 256, rbuf, deadline)?;

    let (opcode, payload) = if p.json {
        (ws::OP_TEXT, json_payload(p.size))
    } else {
        let letters = (0..p.size).map(|i| b'a' + (i % 26) as u8).collect();
        (if p.text { ws::OP_TEXT } else { ws::OP_BINARY }, letters)
    };
    let mut batch = Vec::with_capacity(batch_len);
    for _ in 0..p.depth {
        if p.deflate {
            // Compressed once: with no context takeover every message compresses the same.
            ws::push_compressed_frame(&mut batch, opcode, &payload);
        } else {
            ws::push_frame(&mut batch, opcode, &payload);
        }
    }
    let mut checked = vec![false; conns.len()];

    let mut received: u64 = 0;
    let mut wire_bytes: u64 = 0;
    // Echoes asked for so far (fixed-work mode stops asking at `messages`).
    let mut requested: u64 = conns.len() as u64 * u64::from(p.depth);
    let started = Instant::now();
    let mut meter = Meter::new(timing.warmup, timing.window, timing.windows);
    for (i, c) in conns.iter_mut().enumerate() {
        c.wbuf.clone_from(&batch);
        c.wpos = 0;
        c.flush().map_err(|e| format!("write #{i}: {e}"))?;
    }
    let mut events = Events::with_capacity(4096);
    let mut last_progress = (Instant::now(), 0u64);
    let size = p.size;
    let depth = p.depth;
    let deflate = p.deflate;
    loop {
        let now = Instant::now();
        match p.messages {
            Some(n) if requested >= n && received == requested => break,
            Some(_) => {}
            None if meter.observe(now, received) => break,
            None => {}
        }
        if received != last_progress.1 {
            last_progress = (now, received);
        } else if now.duration_since(last_progress.0) > timing.stall {
            return Err(format!("stalled: no echo for {:?}", timing.stall));
        }
        let timeout = timing.poll_timeout(p.messages.is_some(), &meter, now);
        poll.poll(&mut events, Some(timeout)).map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if ev.is_writable() && !c.flushed() {
                c.flush().map_err(|e| format!("write #{i}: {e}"))?;
            }
            if ev.is_readable() || ev.is_read_closed() {
                loop {
                    match c.fill().map_err(|e| format!("read #{i}: {e}"))? {
                        Fill::Data => {
                            let mut got = c.got;
                            let check = &mut checked[i];
                            c.frames(|f, data| {
                                match f.opcode {
                                    op if op == opcode && f.fin && !f.rsv1 && f.payload_len == size => {
                                        got += 1;
                                        received += 1;
                                        wire_bytes += f.total() as u64;
                                    }
                                    op if op == opcode && f.fin && f.rsv1 && deflate => {
                                        if !*check {
                                            if ws::inflate(data, size)? != payload {
                                                return Err(
                                                    "compressed echo differs from what was sent".into()
                                                );
                                            }
                                            *check = true;
                                        }
                                        got += 1;
                                        received += 1;
                                        wire_bytes += f.total() as u64;
                                    }
                                    ws::OP_PING | ws::OP_PONG => {}
                                    ws::OP_CLOSE => return Err("server sent close".into()),
                                    op => {
                                        return Err(format!(
                                            "unexpected frame: opcode {op} fin {} len {}",
                                            f.fin, f.payload_len
                                        ))
                                    }
                                }
                                Ok(())
                            })
                            .map_err(|e| format!("#{i}: {e}"))?;
                            c.got = got;
                        }
                        Fill::Empty => break,
                        Fill::Eof => return Err(format!("#{i}: server closed the connection")),
                    }
                }
            }
            if c.got >= depth && c.flushed() {
                if c.got > depth {
                    return Err(format!("#{i}: more echoes than frames sent"));
                }
                c.got = 0;
                if p.messages.is_some_and(|n| requested >= n) {
                    continue;
                }
                requested += u64::from(depth);
                c.wpos = 0;
                c.flush().map_err(|e| format!("write #{i}: {e}"))?;
            }
        }
    }
    let msgs = match p.messages {
        Some(_) => received as f64 / started.elapsed().as_secs_f64(),
        None => meter.median(),
    };
    drop(conns);
    std::thread::sleep(Duration::from_millis(50));
    Ok(EchoResult {
        msgs_per_s: msgs,
        mb_per_s: msgs * p.size as f64 / 1e6,
        windows: meter.rates,
        received,
        wire_bytes_per_msg: wire_bytes as f64 / received.max(1) as f64,
    })
}
