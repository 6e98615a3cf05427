//! Client connections on one mio poll: connect, upgrade, buffered writes, frame reads.
//!
//! Each connection owns one read buffer and one write buffer for its whole life; nothing is
//! allocated per message. Sockets are edge-triggered, so every read loops until `WouldBlock`.
//!
//! `wss://` targets run the same code over a rustls client (sans-IO: plaintext in and out of
//! the same buffers, records read and written on the socket), trusting the CA given with `--ca`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::ws::{self, Frame, HandshakeReply, Parse};

/// Where to connect and what to ask for.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path: String,
    /// Offer permessage-deflate in the upgrade request (`--deflate`).
    pub offer_deflate: bool,
    /// TLS client settings for a `wss://` URL.
    pub tls: Option<Arc<ClientConfig>>,
}

impl Target {
    /// Parses `ws://IP:PORT/path` or `wss://IP:PORT/path` (a literal address; the bench runs on
    /// loopback). `ca`: the PEM CA a `wss://` server's certificate must chain to (its name is
    /// checked against `localhost`).
    pub fn parse(url: &str, ca: Option<&std::path::Path>) -> Result<Target, String> {
        let (rest, tls) = if let Some(rest) = url.strip_prefix("wss://") {
            let ca = ca.ok_or_else(|| format!("{url}: a wss:// URL needs --ca"))?;
            (rest, Some(client_config(ca)?))
        } else {
            (url.strip_prefix("ws://").ok_or_else(|| format!("{url}: only ws:// and wss:// URLs"))?, None)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let authority = if authority.starts_with("localhost:") {
            authority.replacen("localhost", "127.0.0.1", 1)
        } else {
            authority.to_string()
        };
        let addr: SocketAddr = authority.parse().map_err(|e| format!("{url}: host must be IP:PORT ({e})"))?;
        Ok(Target { addr, host: authority, path: path.to_string(), offer_deflate: false, tls })
    }
}

fn client_config(ca: &std::path::Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Handshaking,
    Open,
    /// We sent a close frame and wait for the server's.
    Closing,
    /// The close handshake is done; we wait for the server to close TCP.
    AwaitEof,
    Closed,
}

pub struct Conn {
    pub sock: TcpStream,
    /// The TLS client for a `wss://` target.
    tls: Option<Box<ClientConnection>>,
    pub state: State,
    rbuf: Vec<u8>,
    rlen: usize,
    pub wbuf: Vec<u8>,
    pub wpos: usize,
    pub since: Instant,
    /// Scenario counters.
    pub got: u32,
    pub done: bool,
}

/// What reading found.
pub enum Fill {
    /// Bytes were read; there may be more.
    Data,
    /// Nothing more for now.
    Empty,
    /// The server closed the connection.
    Eof,
}

impl Conn {
    /// Starts a non-blocking connect and registers the socket as `token`.
    pub fn connect(poll: &Poll, target: &Target, token: Token, rbuf_size: usize) -> io::Result<Conn> {
        let mut sock = TcpStream::connect(target.addr)?;
        poll.registry().register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        let tls = match &target.tls {
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("a valid name");
                Some(Box::new(ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?))
            }
            None => None,
        };
        Ok(Conn {
            sock,
            tls,
            state: State::Connecting,
            rbuf: vec![0; rbuf_size.max(512)],
            rlen: 0,
            wbuf: Vec::new(),
            wpos: 0,
            since: Instant::now(),
            got: 0,
            done: false,
        })
    }

    /// Writes as much of `wbuf[wpos..]` as the socket takes; true once all of it is written.
    pub fn flush(&mut self) -> io::Result<bool> {
        if let Some(tls) = self.tls.as_mut() {
            // Plaintext into records (buffered by rustls until the handshake is done), then the
            // records onto the socket.
            while self.wpos < self.wbuf.len() {
                match tls.writer().write(&self.wbuf[self.wpos..])? {
                    0 => break,
                    n => self.wpos += n,
                }
            }
            if !write_tls(tls, &mut self.sock)? {
                return Ok(false);
            }
            return Ok(self.wpos == self.wbuf.len());
        }
        while self.wpos < self.wbuf.len() {
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// True when every byte of `wbuf` has been written.
    pub fn flushed(&self) -> bool {
        self.wpos == self.wbuf.len() && !self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Replaces the output with `f`'s bytes and writes them.
    pub fn send_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<bool> {
        self.wbuf.clear();
        self.wpos = 0;
        f(&mut self.wbuf);
        self.flush()
    }

    /// One read into the free end of the read buffer.
    pub fn fill(&mut self) -> io::Result<Fill> {
        if self.rlen == self.rbuf.len() {
            let new_len = self.rbuf.len() * 2;
            self.rbuf.resize(new_len, 0);
        }
        if let Some(tls) = self.tls.as_mut() {
            return fill_tls(tls, &mut self.sock, &mut self.rbuf, &mut self.rlen);
        }
        loop {
            match self.sock.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.rlen += n;
                    return Ok(Fill::Data);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Fill::Empty),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Checks whether a pending connect finished: Ok(true) connected, Ok(false) not yet.
    pub fn connected(&mut self) -> io::Result<bool> {
        if let Some(e) = self.sock.take_error()? {
            return Err(e);
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                self.sock.set_nodelay(true)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Looks for the upgrade response in what was read; on success the head is dropped from
    /// the read buffer (anything after it stays) and the state becomes `Open`.
    pub fn check_handshake(&mut self, accept: &str) -> Result<bool, String> {
        match ws::check_reply(&self.rbuf[..self.rlen], accept) {
            HandshakeReply::Partial => Ok(false),
            HandshakeReply::Refused(why) => Err(format!("upgrade refused: {why}")),
            HandshakeReply::Accepted(n) => {
                self.consume(n);
                self.state = State::Open;
                Ok(true)
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.rbuf.copy_within(n..self.rlen, 0);
        self.rlen -= n;
    }

    /// Hands every complete frame in the read buffer to `f` (frame, payload), then keeps only
    /// the incomplete rest. Fragments and control frames are passed on as they are.
    pub fn frames(&mut self, mut f: impl FnMut(Frame, &[u8]) -> Result<(), String>) -> Result<(), String> {
        let mut pos = 0;
        loop {
            match ws::parse_frame(&self.rbuf[pos..self.rlen]) {
                Parse::Frame(frame) => {
                    let start = pos + frame.payload_at;
                    f(frame, &self.rbuf[start..start + frame.payload_len])?;
                    pos += frame.total();
                }
                Parse::Need(n) => {
                    if n > self.rbuf.len() {
                        // A frame bigger than the buffer: grow once to hold it whole.
                        self.rbuf.resize(n.next_power_of_two(), 0);
                    }
                    break;
                }
                Parse::Invalid(why) => return Err(why.to_string()),
            }
        }
        if pos > 0 {
            self.consume(pos);
        }
        Ok(())
    }
}

/// Writes TLS records until none are left (true) or the socket blocks (false).
fn write_tls(tls: &mut ClientConnection, sock: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// `Conn::fill` over TLS: plaintext already decrypted first, else one more read of records.
fn fill_tls(
    tls: &mut ClientConnection,
    sock: &mut TcpStream,
    rbuf: &mut [u8],
    rlen: &mut usize,
) -> io::Result<Fill> {
    loop {
        match tls.reader().read(&mut rbuf[*rlen..]) {
            Ok(0) => return Ok(Fill::Eof), // close_notify
            Ok(n) => {
                *rlen += n;
                return Ok(Fill::Data);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(Fill::Eof),
            Ok(_) => {
                tls.process_new_packets().map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                // Handshake flights, and plaintext queued before the handshake finished.
                write_tls(tls, sock)?;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Fill::Empty),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Opens `n` WebSocket connections, connection `i` to `targets[i % targets.len()]` (several
/// targets: the nodes of one hub joined by a backplane), at most `concurrency` handshakes in
/// flight, each registered with its index as token. Fails if any connection fails or `deadline`
/// passes.
pub fn open_all(
    poll: &mut Poll,
    targets: &[Target],
    n: usize,
    concurrency: usize,
    rbuf_size: usize,
    deadline: Instant,
) -> Result<Vec<Conn>, String> {
    let accept = ws::expected_accept();
    let requests: Vec<Vec<u8>> =
        targets.iter().map(|t| ws::upgrade_request(&t.host, &t.path, t.offer_deflate)).collect();
    let mut conns: Vec<Conn> = Vec::with_capacity(n);
    let mut events = Events::with_capacity(1024);
    let mut open = 0;
    while open < n {
        while conns.len() < n && conns.len() - open < concurrency {
            let token = Token(conns.len());
            let conn = Conn::connect(poll, &targets[conns.len() % targets.len()], token, rbuf_size)
                .map_err(|e| format!("connect #{}: {e}", conns.len()))?;
            conns.push(conn);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("only {open} of {n} connections open before the deadline"));
        }
        poll.poll(&mut events, Some((deadline - now).min(Duration::from_millis(100))))
            .map_err(|e| format!("poll: {e}"))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if c.state == State::Connecting {
                match c.connected() {
                    Ok(true) => {
                        c.state = State::Handshaking;
                        c.wbuf.clear();
                        c.wbuf.extend_from_slice(&requests[i % targets.len()]);
                        c.wpos = 0;
                    }
                    Ok(false) => continue,
                    Err(e) => return Err(format!("connect #{i}: {e}")),
                }
            }
            if c.state == State::Open {
                // Opening thousands of connections on a loaded machine can outlast the server's
                // ping interval: answer its pings (nothing else arrives before the caller speaks).
                answer_pings(c).map_err(|e| format!("#{i}: {e}"))?;
                continue;
            }
            if c.state == State::Handshaking {
                c.flush().map_err(|e| format!("send upgrade #{i}: {e}"))?;
                loop {
                    match c.fill().map_err(|e| format!("read upgrade #{i}: {e}"))? {
                        Fill::Data => {
                            if c.check_handshake(&accept).map_err(|e| format!("#{i}: {e}"))? {
                                c.wbuf.clear();
                                c.wpos = 0;
                                open += 1;
                                break;
                            }
                        }
                        Fill::Empty => break,
                        Fill::Eof => return Err(format!("#{i}: server closed during the upgrade")),
                    }
                }
            }
        }
    }
    Ok(conns)
}

/// Reads what an open connection received and answers every ping with a pong; other frames
/// are dropped.
pub fn answer_pings(c: &mut Conn) -> Result<(), String> {
    loop {
        match c.fill().map_err(|e| format!("read: {e}"))? {
            Fill::Data => {
                let mut pongs = Vec::new();
                c.frames(|f, p| {
                    if f.opcode == ws::OP_PING {
                        ws::push_frame(&mut pongs, ws::OP_PONG, p);
                    }
                    Ok(())
                })?;
                if !pongs.is_empty() {
                    if c.flushed() {
                        c.wbuf.clear();
                        c.wpos = 0;
                    }
                    c.wbuf.extend_from_slice(&pongs);
                    c.flush().map_err(|e| format!("pong: {e}"))?;
                }
            }
            Fill::Empty => return Ok(()),
            Fill::Eof => return Err("closed by the server".into()),
        }
    }
}
