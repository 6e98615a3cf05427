//! Test support: start the real `wshub` binary on an ephemeral loopback port, and speak raw
//! WebSocket bytes to it (so tests can send what no well-behaved client library would).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use wshub::protocol::frame::{self, OpCode};

pub mod redis;

pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProc {
    /// Starts `wshub --listen 127.0.0.1:0 ARGS` and waits for its "listening on" line.
    pub fn start(args: &[&str]) -> ServerProc {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wshub"));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        ServerProc::spawn(command)
    }

    /// Runs `command` (which must end up exec'ing wshub) and waits for its "listening on" line.
    pub fn spawn(mut command: Command) -> ServerProc {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wshub");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines.next().expect("wshub exited before listening").expect("read stderr");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().expect("address").parse().expect("socket address");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        ServerProc { child, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends SIGTERM and waits for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe_kill(self.child.id(), "TERM");
        self.child.wait().ok().and_then(|s| s.code())
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head (up to the blank line) byte by byte, so no frame bytes are eaten.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Reads a whole HTTP response until the server closes.
pub fn read_to_close(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

pub fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Connects and completes a WebSocket handshake by hand.
pub fn ws_connect(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "handshake failed: {head}");
    s
}

pub fn masked(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_masked_frame(&mut out, fin, opcode, [0x11, 0x22, 0x33, 0x44], payload);
    out
}

/// A frame as the server sent it.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits (RSV1 = 0b100: a permessage-deflate frame).
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Reads one server frame; `None` on EOF or reset.
pub fn read_frame(s: &mut TcpStream) -> Option<ServerFrame> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).ok()?;
    Some(ServerFrame { fin: h[0] & 0x80 != 0, rsv: (h[0] >> 4) & 0x7, opcode: h[0] & 0x0f, payload })
}

/// Reads frames until a close frame; returns its code (None if the connection ended first).
pub fn expect_close(s: &mut TcpStream) -> Option<u16> {
    while let Some(f) = read_frame(s) {
        if f.opcode == 0x8 {
            return f.close_code().or(Some(1005));
        }
    }
    None
}

/// Closes `s` with a reset (SO_LINGER 0: close sends RST), as a peer that vanishes does.
pub fn reset(s: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    use std::os::fd::AsRawFd;
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(s);
}

/// True when the server closes the TCP connection within the read timeout.
pub fn sees_eof(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

// ----- the hub's JSON protocol and the HTTP side -----

/// Sends `v` as one masked text frame.
pub fn send_json(s: &mut TcpStream, v: &Value) {
    s.write_all(&masked(OpCode::Text, true, v.to_string().as_bytes())).unwrap();
}

/// The next text message as JSON (skipping pings).
pub fn recv_json(s: &mut TcpStream) -> Value {
    loop {
        let f = read_frame(s).expect("connection open");
        match f.opcode {
            0x1 => return serde_json::from_slice(&f.payload).expect("server sends JSON"),
            0x9 => continue,
            other => panic!("unexpected opcode {other}: {:?}", String::from_utf8_lossy(&f.payload)),
        }
    }
}

/// Subscribes `s` to `topic` and checks the confirmation.
pub fn subscribe(s: &mut TcpStream, topic: &str) {
    send_json(s, &json!({"type":"subscribe","payload":{"topic":topic}}));
    assert_eq!(recv_json(s), json!({"type":"subscribed","payload":{"topic":topic}}));
}

/// Subscribes `s` to `topic` (with the history position `since` if given), checks the
/// `subscribed` reply and returns its payload (offset, epoch, recovered).
pub fn subscribe_since(s: &mut TcpStream, topic: &str, since: Option<Value>) -> Value {
    let mut payload = json!({"topic": topic});
    if let Some(since) = since {
        payload["since"] = since;
    }
    send_json(s, &json!({"type":"subscribe","payload":payload,"id":"sub"}));
    let reply = recv_json(s);
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["id"], "sub");
    reply["payload"].clone()
}

/// One HTTP/1.1 request on its own connection (`headers`: whole lines, each ending in CRLF);
/// returns the status and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = connect(addr);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}{}Content-Length: {}\r\n\r\n{body}",
        // The API takes JSON bodies only (415 otherwise).
        if method == "POST" { "Content-Type: application/json\r\n" } else { "" },
        body.len()
    );
    s.write_all(request.as_bytes()).unwrap();
    let response = read_to_close(&mut s);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status_of(&response), body)
}

/// A sample from /metrics (`name` includes any labels).
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, text) = http(addr, "GET", "/metrics", "", "");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

// ----- the server process, seen from /proc -----

/// A `kB` line of `/proc/<pid>/status` (`field` with its colon, e.g. `"VmRSS:"`), in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// CPU time (user + system, in clock ticks) a process has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process exists");
    // After the command name (in parentheses): utime is the 12th field, stime the 13th.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..].split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
