//! `loadgen soak`: a bounded soak of the hub with churn, checking exactly-once in-order delivery.
//!
//! Blocking sockets and one thread per actor: the soak measures correctness and resource drift
//! over minutes, not throughput, and threads keep each actor's story readable.
//!
//! - **Stable subscribers** subscribe to every soak topic before anything is published and stay.
//!   Each message's data is `{"p":PUBLISHER,"s":SEQ}`; per (publisher, topic) SEQ must be exactly
//!   the next one. A stable subscriber that is cut off or sees a gap, a repeat or a stranger is a
//!   failure.
//! - **Publishers**: WebSocket publishers (steady rate, never disconnect) and one HTTP publisher
//!   (`POST /publish`, a new connection per message, so the accept path churns too).
//! - **Churners** connect, subscribe (soak topics included, so fan-out reaches them), publish
//!   unnumbered data, and vanish in every way: clean close, reset (SO_LINGER 0), half-open
//!   (FIN without a close frame, then silence), mid-frame, mid-handshake, plain drop.
//! - **Slow consumers** subscribe to a flooded topic, never read, and must be cut off.
//! - A **sampler** reads the server's RSS and open descriptors from /proc/PID and fits a slope.
//!
//! When the time is up churn stops, publishers stop, the subscribers drain and compare what they
//! received with what was sent. The run fails on any loss, duplicate or reorder, on a stable
//! client cut off, on an HTTP publish that did not get 200, or if the server's descriptors do not
//! come back to their pre-churn level.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::ws::{self, Parse};

pub struct Soak {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub pid: u32,
    pub duration: Duration,
    pub stable: usize,
    pub publishers: usize,
    pub topics: usize,
    /// Messages per second per WebSocket publisher (spread over the topics).
    pub rate: u32,
    pub churners: usize,
    pub slow: usize,
    pub sample: Duration,
}

#[derive(Default, Debug)]
pub struct Report {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub stable_cut: u64,
    pub http_published: u64,
    pub http_errors: u64,
    pub churn_cycles: u64,
    pub churn_refused: u64,
    pub churn_errors: u64,
    pub vanish: [u64; VANISH.len()],
    pub slow_cut: u64,
    pub slow_fed: u64,
    /// The server's own counters at the end (`/metrics`).
    pub server_slow_cut: u64,
    pub server_resets: u64,
    pub samples: usize,
    pub rss_first_kib: u64,
    pub rss_last_kib: u64,
    pub rss_max_kib: u64,
    pub rss_slope_kib_per_min: f64,
    pub fd_first: u64,
    pub fd_last: u64,
    pub fd_max: u64,
    pub fd_slope_per_min: f64,
    pub fd_before_churn: u64,
    pub fd_after_churn: u64,
}

/// The ways a churner leaves.
pub const VANISH: [&str; 6] = ["close", "reset", "halfopen", "midframe", "midhandshake", "drop"];

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn topic(t: usize) -> String {
    format!("soak-{t}")
}

const FLOOD_TOPIC: &str = "soak-flood";

struct Shared {
    /// Set when churners, slow consumers and publishers must stop.
    stop: AtomicBool,
    /// Messages sent per (publisher, topic): publisher * topics + topic.
    sent: Vec<AtomicU64>,
    errors: Mutex<Vec<String>>,
    churn_cycles: AtomicU64,
    churn_refused: AtomicU64,
    churn_errors: AtomicU64,
    vanish: [AtomicU64; VANISH.len()],
    slow_cut: AtomicU64,
    slow_fed: AtomicU64,
    http_published: AtomicU64,
    http_errors: AtomicU64,
}

impl Shared {
    fn fail(&self, e: String) {
        eprintln!("soak: {e}");
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 100 {
            errors.push(e);
        }
    }
}

/// A tiny xorshift generator: the soak needs variety, not statistics.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A blocking WebSocket client connection with its read buffer.
struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    out: Vec<u8>,
}

enum Got {
    Text(Vec<u8>),
    /// A close frame, with its status code (0 when absent).
    Close(u16),
}

impl Client {
    /// Connects and upgrades; `Ok(None)` when the server answered with another status (503).
    fn connect(s: &Soak) -> io::Result<Option<Client>> {
        let sock = TcpStream::connect_timeout(&s.addr, IO_TIMEOUT)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        sock.set_nodelay(true)?;
        let mut c = Client { sock, buf: Vec::with_capacity(4096), out: Vec::with_capacity(256) };
        c.sock.write_all(&ws::upgrade_request(&s.host, &s.path, false))?;
        let accept = ws::expected_accept();
        loop {
            match ws::check_reply(&c.buf, &accept) {
                ws::HandshakeReply::Accepted(n) => {
                    c.buf.drain(..n);
                    return Ok(Some(c));
                }
                ws::HandshakeReply::Refused(_) => return Ok(None),
                ws::HandshakeReply::Partial => {
                    if c.fill()? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during handshake"));
                    }
                }
            }
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        let len = self.buf.len();
        self.buf.resize(len + 16 * 1024, 0);
        let r = self.sock.read(&mut self.buf[len..]);
        self.buf.truncate(len + *r.as_ref().unwrap_or(&0));
        r
    }

    fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.out.clear();
        ws::push_frame(&mut self.out, ws::OP_TEXT, text.as_bytes());
        self.sock.write_all(&self.out)
    }

    /// The next text or close frame. Pings are answered (the server pings every 54 s and drops
    /// a client that does not answer), pongs ignored.
    fn next(&mut self) -> io::Result<Got> {
        loop {
            match ws::parse_frame(&self.buf) {
                Parse::Frame(f) => {
                    let payload = self.buf[f.payload_at..f.total()].to_vec();
                    self.buf.drain(..f.total());
                    match f.opcode {
                        ws::OP_PING => {
                            self.out.clear();
                            ws::push_frame(&mut self.out, ws::OP_PONG, &payload);
                            self.sock.write_all(&self.out)?;
                        }
                        ws::OP_PONG => {}
                        ws::OP_CLOSE => {
                            let code = if payload.len() >= 2 {
                                u16::from_be_bytes([payload[0], payload[1]])
                            } else {
                                0
                            };
                            return Ok(Got::Close(code));
                        }
                        ws::OP_TEXT if f.fin => return Ok(Got::Text(payload)),
                        op => {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("unexpected opcode {op}"),
                            ))
                        }
                    }
                }
                Parse::Need(_) => {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
                    }
                }
                Parse::Invalid(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    /// Subscribes to `t` and waits for `subscribed` (messages already flowing are not expected
    /// here: callers subscribe before publishers start, or do not care).
    fn subscribe(&mut self, t: &str, wait: bool) -> io::Result<()> {
        self.send_text(&format!(r#"{{"type":"subscribe","payload":{{"topic":"{t}"}},"id":"s"}}"#))?;
        if !wait {
            return Ok(());
        }
        loop {
            match self.next()? {
                Got::Text(m) if m.starts_with(br#"{"type":"subscribed""#) => return Ok(()),
                Got::Text(_) => {}
                Got::Close(c) => return Err(io::Error::other(format!("closed {c} while subscribing"))),
            }
        }
    }
}

fn set_linger_zero(sock: &TcpStream) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads `l` for the given length; the descriptor is open.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn set_rcvbuf(sock: &TcpStream, bytes: i32) {
    // SAFETY: as above, for an int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// Finds the number after `key` (such as `"s":`) in `m`.
fn number_after(m: &[u8], key: &[u8]) -> Option<u64> {
    let at = ws::find(m, key)? + key.len();
    let digits = m[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&m[at..at + digits]).ok()?.parse().ok()
}

/// What one stable subscriber saw.
#[derive(Default)]
struct Seen {
    received: u64,
    duplicated: u64,
    reordered: u64,
    cut: bool,
    /// Next expected sequence number per (publisher, topic).
    next: Vec<u64>,
}

fn stable(s: &Soak, sh: &Shared, mut c: Client, all_pubs: usize, drain: &AtomicBool) -> Seen {
    let mut seen = Seen { next: vec![0; all_pubs * s.topics], ..Seen::default() };
    c.sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let mut quiet_since: Option<Instant> = None;
    loop {
        match c.next() {
            Ok(Got::Text(m)) => {
                quiet_since = None;
                if !m.starts_with(br#"{"type":"message""#) {
                    continue;
                }
                // Churners publish unnumbered data to the same topics; only numbered data counts.
                let (Some(p), Some(seq)) = (number_after(&m, br#""p":"#), number_after(&m, br#""s":"#))
                else {
                    continue;
                };
                let t = number_after(&m, br#""topic":"soak-"#);
                let Some(t) = t.filter(|&t| (t as usize) < s.topics && (p as usize) < all_pubs) else {
                    sh.fail(format!(
                        "stable subscriber: a message from nowhere: {}",
                        String::from_utf8_lossy(&m)
                    ));
                    continue;
                };
                let slot = &mut seen.next[p as usize * s.topics + t as usize];
                if seq == *slot {
                    seen.received += 1;
                    *slot += 1;
                } else if seq < *slot {
                    seen.duplicated += 1;
                } else {
                    seen.reordered += 1;
                    seen.received += 1;
                    *slot = seq + 1;
                }
            }
            Ok(Got::Close(code)) => {
                sh.fail(format!("stable subscriber cut off with close {code}"));
                seen.cut = true;
                return seen;
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                // Once the publishers are done, two quiet seconds mean everything has arrived.
                if drain.load(Relaxed) {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(2) {
                        break;
                    }
                }
            }
            Err(e) => {
                sh.fail(format!("stable subscriber lost its connection: {e}"));
                seen.cut = true;
                return seen;
            }
        }
    }
    let mut out = Vec::new();
    ws::push_close(&mut out);
    let _ = c.sock.write_all(&out);
    seen
}

fn ws_publisher(s: &Soak, sh: &Shared, id: usize, mut c: Client) {
    let every = Duration::from_secs_f64(1.0 / f64::from(s.rate.max(1)));
    let mut due = Instant::now();
    let mut t = 0;
    while !sh.stop.load(Relaxed) {
        let slot = &sh.sent[id * s.topics + t];
        let seq = slot.load(Relaxed);
        let msg = format!(
            r#"{{"type":"publish","payload":{{"topic":"{}","data":{{"p":{id},"s":{seq}}}}}}}"#,
            topic(t)
        );
        if let Err(e) = c.send_text(&msg) {
            sh.fail(format!("publisher {id}: {e}"));
            return;
        }
        slot.store(seq + 1, Relaxed);
        t = (t + 1) % s.topics;
        due += every;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else if now - due > Duration::from_secs(1) {
            due = now; // a loaded machine: do not burst to catch up
        }
    }
}

/// POSTs one request and returns the status code.
fn http_post(s: &Soak, path: &str, body: &str) -> io::Result<u16> {
    let mut sock = TcpStream::connect_timeout(&s.addr, IO_TIMEOUT)?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.host,
        body.len()
    );
    sock.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    sock.read_to_end(&mut resp)?;
    let line = resp.split(|&b| b == b'\r').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status line"))
}

fn http_publisher(s: &Soak, sh: &Shared, id: usize) {
    let mut t = 0;
    while !sh.stop.load(Relaxed) {
        let slot = &sh.sent[id * s.topics + t];
        let seq = slot.load(Relaxed);
        let body = format!(r#"{{"topic":"{}","data":{{"p":{id},"s":{seq}}}}}"#, topic(t));
        match http_post(s, "/publish", &body) {
            Ok(200) => {
                slot.store(seq + 1, Relaxed);
                sh.http_published.fetch_add(1, Relaxed);
                t = (t + 1) % s.topics;
            }
            Ok(code) => {
                sh.http_errors.fetch_add(1, Relaxed);
                sh.fail(format!("HTTP publish: status {code}"));
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                // The request may or may not have been published: the sequence check cannot
                // say, so this ends the HTTP publisher rather than muddle the counts.
                sh.http_errors.fetch_add(1, Relaxed);
                sh.fail(format!("HTTP publish: {e}"));
                return;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn churner(s: &Soak, sh: &Shared, seed: u64) {
    let mut rng = Rng(seed | 1);
    while !sh.stop.load(Relaxed) {
        if let Err(e) = churn_once(s, sh, &mut rng) {
            // A churner's own connection failing while it misbehaves is expected only in ways it
            // chose; anything else is counted and reported.
            sh.churn_errors.fetch_add(1, Relaxed);
            if sh.churn_errors.load(Relaxed) <= 5 {
                eprintln!("soak: churner: {e}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn churn_once(s: &Soak, sh: &Shared, rng: &mut Rng) -> io::Result<()> {
    let how = rng.below(VANISH.len() as u64) as usize;
    sh.churn_cycles.fetch_add(1, Relaxed);
    if VANISH[how] == "midhandshake" {
        let mut sock = TcpStream::connect_timeout(&s.addr, IO_TIMEOUT)?;
        let req = ws::upgrade_request(&s.host, &s.path, false);
        let cut = 1 + rng.below(req.len() as u64 - 1) as usize;
        sock.write_all(&req[..cut])?;
        if rng.below(2) == 0 {
            set_linger_zero(&sock);
        }
        sh.vanish[how].fetch_add(1, Relaxed);
        return Ok(());
    }
    let Some(mut c) = Client::connect(s)? else {
        sh.churn_refused.fetch_add(1, Relaxed);
        thread::sleep(Duration::from_millis(100));
        return Ok(());
    };
    for _ in 0..1 + rng.below(3) {
        let t =
            if rng.below(4) == 0 { "churn".to_string() } else { topic(rng.below(s.topics as u64) as usize) };
        c.subscribe(&t, rng.below(2) == 0)?;
    }
    for i in 0..rng.below(5) {
        let t =
            if rng.below(2) == 0 { "churn".to_string() } else { topic(rng.below(s.topics as u64) as usize) };
        c.send_text(&format!(
            r#"{{"type":"publish","payload":{{"topic":"{t}","data":{{"c":{i}}}}},"id":{i}}}"#
        ))?;
    }
    // Stay a little while, reading some of what arrives.
    let stay = Instant::now() + Duration::from_millis(rng.below(300));
    c.sock.set_read_timeout(Some(Duration::from_millis(20)))?;
    while Instant::now() < stay {
        match c.next() {
            Ok(Got::Text(_)) => {}
            Ok(Got::Close(code)) => {
                return Err(io::Error::other(format!("churner closed by the server: {code}")))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    match VANISH[how] {
        "close" => {
            c.out.clear();
            ws::push_close(&mut c.out);
            c.sock.write_all(&c.out)?;
            c.sock.set_read_timeout(Some(IO_TIMEOUT))?;
            loop {
                match c.next() {
                    Ok(Got::Close(_)) => break,
                    Ok(Got::Text(_)) => {}
                    Err(e) => return Err(io::Error::other(format!("no close reply: {e}"))),
                }
            }
        }
        "reset" => set_linger_zero(&c.sock),
        "halfopen" => {
            // FIN without a close frame, then silence: the server must notice and let go.
            c.sock.shutdown(Shutdown::Write)?;
            thread::sleep(Duration::from_millis(rng.below(200)));
        }
        "midframe" => {
            c.out.clear();
            ws::push_frame(
                &mut c.out,
                ws::OP_TEXT,
                br#"{"type":"publish","payload":{"topic":"churn","data":1}}"#,
            );
            let cut = 1 + rng.below(c.out.len() as u64 - 1) as usize;
            c.sock.write_all(&c.out[..cut])?;
            if rng.below(2) == 0 {
                set_linger_zero(&c.sock);
            }
        }
        _ => {} // "drop": FIN, no close frame
    }
    sh.vanish[how].fetch_add(1, Relaxed);
    Ok(())
}

/// Publishes big messages to the flood topic so slow consumers fill their queues quickly.
fn flooder(sh: &Shared, mut c: Client) {
    let filler = "x".repeat(32 * 1024);
    let msg = format!(r#"{{"type":"publish","payload":{{"topic":"{FLOOD_TOPIC}","data":"{filler}"}}}}"#);
    while !sh.stop.load(Relaxed) {
        if let Err(e) = c.send_text(&msg) {
            sh.fail(format!("flooder: {e}"));
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn slow_consumer(s: &Soak, sh: &Shared) {
    while !sh.stop.load(Relaxed) {
        let c = match Client::connect(s) {
            Ok(Some(c)) => c,
            Ok(None) | Err(_) => {
                thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let mut c = c;
        set_rcvbuf(&c.sock, 4096);
        if c.subscribe(FLOOD_TOPIC, true).and_then(|_| c.subscribe(&topic(0), false)).is_err() {
            continue;
        }
        // Never read for a while, then read what is left: the server must have given up on us.
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && !sh.stop.load(Relaxed) {
            thread::sleep(Duration::from_millis(100));
        }
        c.sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Reading alone cannot tell: the server's socket, closed with data for our zero window,
        // lives on in the kernel and only probes the window with a growing back-off (seconds
        // apart by now), so a read can wait longer than its timeout without a byte, EOF or reset.
        // A ping makes it tell: a closed socket answers data with a reset, an open one reads it.
        let mut ping = Vec::new();
        ws::push_frame(&mut ping, ws::OP_PING, b"cut?");
        let cut = c.sock.write_all(&ping).is_err()
            || loop {
                if Instant::now() > deadline {
                    break false;
                }
                match c.next() {
                    Ok(Got::Text(_)) => {}
                    Ok(Got::Close(_)) => break true,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        break false
                    }
                    Err(_) => break true, // EOF or reset after being cut off
                }
            };
        if cut {
            sh.slow_cut.fetch_add(1, Relaxed);
        } else {
            sh.slow_fed.fetch_add(1, Relaxed);
        }
    }
}

/// A counter from the server's `/metrics`.
fn metric(s: &Soak, name: &str) -> Option<u64> {
    let mut sock = TcpStream::connect_timeout(&s.addr, IO_TIMEOUT).ok()?;
    sock.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    sock.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", s.host).as_bytes()).ok()?;
    let mut text = String::new();
    sock.read_to_string(&mut text).ok()?;
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?;
    line[name.len()..].trim().parse::<f64>().ok().map(|v| v as u64)
}

fn fd_count(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/fd");
    Ok(std::fs::read_dir(&path).map_err(|e| format!("{path}: {e}"))?.count() as u64)
}

/// Least-squares slope of `ys` over `xs`, per unit of x.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

pub fn run(s: &Soak) -> Result<(Report, Vec<String>), String> {
    let all_pubs = s.publishers + 1; // the last id is the HTTP publisher
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        sent: (0..all_pubs * s.topics).map(|_| AtomicU64::new(0)).collect(),
        errors: Mutex::new(Vec::new()),
        churn_cycles: AtomicU64::new(0),
        churn_refused: AtomicU64::new(0),
        churn_errors: AtomicU64::new(0),
        vanish: Default::default(),
        slow_cut: AtomicU64::new(0),
        slow_fed: AtomicU64::new(0),
        http_published: AtomicU64::new(0),
        http_errors: AtomicU64::new(0),
    });
    let connect = |what: &str| -> Result<Client, String> {
        match Client::connect(s) {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(format!("{what}: upgrade refused")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    };
    // Stable subscribers first, fully subscribed before any numbered message is published.
    let mut subs = Vec::new();
    for i in 0..s.stable {
        let mut c = connect("stable subscriber")?;
        for t in 0..s.topics {
            c.subscribe(&topic(t), true).map_err(|e| format!("stable subscriber {i}: {e}"))?;
        }
        subs.push(c);
    }
    let pubs: Vec<Client> = (0..s.publishers).map(|_| connect("publisher")).collect::<Result<_, _>>()?;
    let flood = connect("flooder")?;
    let fd_before_churn = fd_count(s.pid)?;
    let start = Instant::now();
    let drain = Arc::new(AtomicBool::new(false));
    thread::scope(|scope| -> Result<(Report, Vec<String>), String> {
        let sub_handles: Vec<_> =
            subs.into_iter().map(|c| scope.spawn(|| stable(s, &sh, c, all_pubs, &drain))).collect();
        let mut workers = Vec::new();
        for (id, c) in pubs.into_iter().enumerate() {
            let sh = &sh;
            workers.push(scope.spawn(move || ws_publisher(s, sh, id, c)));
        }
        workers.push(scope.spawn(|| http_publisher(s, &sh, s.publishers)));
        workers.push(scope.spawn(|| flooder(&sh, flood)));
        for i in 0..s.churners {
            let sh = &sh;
            workers
                .push(scope.spawn(move || churner(s, sh, 0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 7919))));
        }
        for _ in 0..s.slow {
            workers.push(scope.spawn(|| slow_consumer(s, &sh)));
        }

        // Sample until the time is up.
        let mut samples: Vec<(f64, u64, u64)> = Vec::new();
        let end = start + s.duration;
        loop {
            let now = Instant::now();
            let rss = crate::stats::vm_rss_kib(s.pid)?;
            let fds = fd_count(s.pid)?;
            samples.push(((now - start).as_secs_f64() / 60.0, rss, fds));
            if now >= end {
                break;
            }
            thread::sleep(s.sample.min(end - now));
        }
        sh.stop.store(true, Relaxed);
        for w in workers {
            let _ = w.join();
        }
        drain.store(true, Relaxed);
        let seen: Vec<Seen> = sub_handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();

        // Descriptors must come back to where they were before the churn (minus the publishers
        // and the flooder, which have closed: allow for them), within a generous settle time.
        let settle = Instant::now() + Duration::from_secs(20);
        let mut fd_after = fd_count(s.pid)?;
        while fd_after > fd_before_churn && Instant::now() < settle {
            thread::sleep(Duration::from_millis(250));
            fd_after = fd_count(s.pid)?;
        }

        let mut r = Report {
            churn_cycles: sh.churn_cycles.load(Relaxed),
            churn_refused: sh.churn_refused.load(Relaxed),
            churn_errors: sh.churn_errors.load(Relaxed),
            slow_cut: sh.slow_cut.load(Relaxed),
            slow_fed: sh.slow_fed.load(Relaxed),
            server_slow_cut: metric(s, "wshub_slow_consumers_dropped_total").unwrap_or(u64::MAX),
            server_resets: metric(s, "wshub_connection_resets_total").unwrap_or(u64::MAX),
            http_published: sh.http_published.load(Relaxed),
            http_errors: sh.http_errors.load(Relaxed),
            fd_before_churn,
            fd_after_churn: fd_after,
            samples: samples.len(),
            ..Report::default()
        };
        for (i, v) in sh.vanish.iter().enumerate() {
            r.vanish[i] = v.load(Relaxed);
        }
        let sent: Vec<u64> = sh.sent.iter().map(|a| a.load(Relaxed)).collect();
        let sent_total: u64 = sent.iter().sum();
        for sub in &seen {
            r.sent += sent_total;
            r.received += sub.received;
            r.duplicated += sub.duplicated;
            r.reordered += sub.reordered;
            r.stable_cut += u64::from(sub.cut);
            if !sub.cut {
                for (got, want) in sub.next.iter().zip(&sent) {
                    if got > want {
                        sh.fail(format!("received sequence {got} beyond the {want} sent"));
                    }
                }
            }
        }
        r.lost = r.sent.saturating_sub(r.received);
        // The slopes ignore the first fifth of the run: buffers and pools warm up there.
        let skip = samples.len() / 5;
        let tail = &samples[skip..];
        r.rss_slope_kib_per_min = slope(&tail.iter().map(|&(x, rss, _)| (x, rss as f64)).collect::<Vec<_>>());
        r.fd_slope_per_min = slope(&tail.iter().map(|&(x, _, fd)| (x, fd as f64)).collect::<Vec<_>>());
        r.rss_first_kib = samples.first().map_or(0, |s| s.1);
        r.rss_last_kib = samples.last().map_or(0, |s| s.1);
        r.rss_max_kib = samples.iter().map(|s| s.1).max().unwrap_or(0);
        r.fd_first = samples.first().map_or(0, |s| s.2);
        r.fd_last = samples.last().map_or(0, |s| s.2);
        r.fd_max = samples.iter().map(|s| s.2).max().unwrap_or(0);

        let mut failures = std::mem::take(&mut *sh.errors.lock().unwrap());
        if r.lost + r.duplicated + r.reordered > 0 {
            failures.push(format!("lost {} duplicated {} reordered {}", r.lost, r.duplicated, r.reordered));
        }
        if r.fd_after_churn > r.fd_before_churn {
            failures.push(format!(
                "descriptors did not come back: {} before the churn, {} after",
                r.fd_before_churn, r.fd_after_churn
            ));
        }
        Ok((r, failures))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_after_their_key() {
        let m = br#"{"type":"message","payload":{"topic":"soak-3","data":{"p":1,"s":42}}}"#;
        assert_eq!(number_after(m, br#""topic":"soak-"#), Some(3));
        assert_eq!(number_after(m, br#""p":"#), Some(1));
        assert_eq!(number_after(m, br#""s":"#), Some(42));
        assert_eq!(number_after(br#"{"c":1}"#, br#""s":"#), None);
    }

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 7.0)).collect();
        assert!((slope(&pts) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
    }
}
