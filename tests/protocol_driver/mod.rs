//! The sans-IO test driver for `Session`, the one copy shared by the integration tests and the
//! fuzz targets (`fuzz/src/checks.rs` includes this file with `#[path]`, so it uses only what
//! the root package depends on).
//!
//! It feeds bytes the way the reactor does (keeping the unconsumed tail between reads), checks
//! the session's invariants at every step (progress, bounds, what may be written on which
//! event), records owned copies of the events, and decodes what the session wrote, panicking
//! on anything that is not whole, valid server frames.
#![allow(dead_code)]

use wshub::protocol::close;
use wshub::protocol::frame::{self, OpCode, MAX_CONTROL_PAYLOAD};
use wshub::protocol::session::{Event, ProtocolError, Session, SessionConfig, MAX_UNCONSUMED};

/// An [`Event`] with owned payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Closed { code: Option<u16>, reason: String },
}

impl Ev {
    fn from_event(event: &Event<'_>) -> Ev {
        match *event {
            Event::Text(s) => {
                // The session builds this &str with from_utf8_unchecked: check it for real.
                assert!(std::str::from_utf8(s.as_bytes()).is_ok(), "Event::Text is not UTF-8");
                Ev::Text(s.to_owned())
            }
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(p) => Ev::Ping(p.to_vec()),
            Event::Pong(p) => Ev::Pong(p.to_vec()),
            Event::Closed { code, reason } => Ev::Closed { code, reason: reason.to_owned() },
        }
    }
}

/// The documented caller loop around [`Session::advance`], checking every step.
pub struct Driver {
    pub session: Session,
    pub config: SessionConfig,
    /// Unconsumed bytes kept for the next read.
    pub pending: Vec<u8>,
    /// Everything the session wrote.
    pub out: Vec<u8>,
    pub events: Vec<Ev>,
    pub error: Option<ProtocolError>,
    pub now: u64,
}

impl Driver {
    pub fn new(config: SessionConfig) -> Driver {
        Driver::at(config, 0)
    }

    pub fn at(config: SessionConfig, now: u64) -> Driver {
        let session = Session::new(&config, now);
        Driver { session, config, pending: Vec::new(), out: Vec::new(), events: Vec::new(), error: None, now }
    }

    /// Presents one read's worth of bytes, checking every step. Returns the events this read
    /// produced, or the error it ended in (the session is then closed and swallows whatever is
    /// fed after it).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Ev>, ProtocolError> {
        self.pending.extend_from_slice(chunk);
        let first_new = self.events.len();
        let mut failed = None;
        let mut pos = 0;
        let mut steps = 0usize;
        loop {
            steps += 1;
            assert!(steps <= self.pending.len() + 2, "advance keeps returning events without progress");
            let was_open = self.session.can_send();
            let was_closed = self.session.is_closed();
            let available = self.pending.len() - pos;
            let out_before = self.out.len();
            let max = self.config.max_message_size;
            let result =
                self.session.advance(&mut self.pending[pos..], &self.config, &mut self.out, self.now);
            match result {
                Ok(step) => {
                    assert!(step.consumed <= available, "consumed more than was given");
                    if was_closed {
                        assert_eq!(step.consumed, available, "a closed session swallows everything");
                        assert!(step.event.is_none(), "event from a closed session");
                    }
                    let event = step.event.as_ref().map(Ev::from_event);
                    pos += step.consumed;
                    let Some(event) = event else {
                        assert_eq!(self.out.len(), out_before, "output without an event or error");
                        break;
                    };
                    self.check_event(&event, was_open, out_before, max);
                    self.events.push(event);
                }
                Err(e) => {
                    assert!(!was_closed, "error from a closed session");
                    assert!(self.session.is_closed(), "session not closed after {e}");
                    assert_eq!(self.session.buffered(), 0, "buffer kept after {e}");
                    let written = &self.out[out_before..];
                    if was_open {
                        let frames = parse_server_frames(written);
                        assert_eq!(frames.len(), 1, "one close frame after {e}");
                        assert_eq!(frames[0].opcode, OpCode::Close);
                        assert_eq!(frames[0].payload[..2], e.close_code().to_be_bytes());
                    } else {
                        assert!(written.is_empty(), "a second close after {e}");
                    }
                    self.error = Some(e);
                    failed = Some(e);
                    // The caller flushes and hangs up: nothing else is read.
                    pos = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..pos);
        assert!(
            self.pending.len() <= MAX_UNCONSUMED,
            "{} unconsumed bytes kept (max {MAX_UNCONSUMED})",
            self.pending.len()
        );
        assert!(
            self.session.buffered() <= self.config.max_message_size,
            "{} bytes buffered (max message {})",
            self.session.buffered(),
            self.config.max_message_size
        );
        match failed {
            Some(e) => Err(e),
            None => Ok(self.events[first_new..].to_vec()),
        }
    }

    /// Feeds `bytes` in the chunks given by `sizes` (cycled; a zero size counts as one),
    /// stopping at the first error.
    pub fn feed_chunked(&mut self, bytes: &[u8], sizes: &[usize]) -> Result<(), ProtocolError> {
        let mut start = 0;
        let mut i = 0;
        while start < bytes.len() {
            let size = sizes.get(i % sizes.len().max(1)).copied().unwrap_or(bytes.len()).max(1);
            let end = (start + size).min(bytes.len());
            self.feed(&bytes[start..end])?;
            start = end;
            i += 1;
        }
        Ok(())
    }

    /// Feeds `bytes` one byte per read.
    pub fn feed_bytewise(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.feed_chunked(bytes, &[1])
    }

    /// The frames the session wrote so far.
    pub fn out_frames(&self) -> Vec<OutFrame> {
        parse_server_frames(&self.out)
    }

    fn check_event(&self, event: &Ev, was_open: bool, out_before: usize, max: usize) {
        assert!(
            !self.events.iter().any(|e| matches!(e, Ev::Closed { .. })),
            "event {event:?} after the peer's close"
        );
        let written = &self.out[out_before..];
        match event {
            Ev::Text(_) | Ev::Binary(_) => {
                let len = match event {
                    Ev::Text(s) => s.len(),
                    Ev::Binary(b) => b.len(),
                    _ => unreachable!(),
                };
                assert!(len <= max, "message of {len} bytes delivered (max {max})");
                assert!(was_open, "data delivered after our close");
                assert!(written.is_empty(), "output on a data event");
            }
            Ev::Ping(p) => {
                assert!(p.len() <= MAX_CONTROL_PAYLOAD);
                assert!(was_open, "ping delivered after our close");
                let mut pong = Vec::new();
                frame::write_frame(&mut pong, OpCode::Pong, p);
                assert_eq!(written, &pong[..], "a ping is answered by exactly its pong");
            }
            Ev::Pong(p) => {
                assert!(p.len() <= MAX_CONTROL_PAYLOAD);
                assert!(written.is_empty(), "output on a pong");
            }
            Ev::Closed { code, reason } => {
                assert!(self.session.is_closed(), "session open after the peer's close");
                assert!(!self.session.can_send());
                if let Some(c) = code {
                    assert!(close::is_valid_on_wire(*c), "accepted close code {c}");
                    assert!(reason.len() <= MAX_CONTROL_PAYLOAD - 2);
                } else {
                    assert!(reason.is_empty(), "a reason without a code");
                }
                if was_open {
                    let mut echo = Vec::new();
                    frame::write_close(&mut echo, code.unwrap_or(1000), "");
                    assert_eq!(written, &echo[..], "the close is echoed with the peer's code");
                } else {
                    assert!(written.is_empty(), "a second close frame");
                }
            }
        }
    }
}

/// A frame the server wrote, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutFrame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl OutFrame {
    /// The close code of a close frame (None for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OpCode::Close, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses everything a server wrote after the handshake. Panics unless it is a sequence of
/// whole, valid server frames: unmasked, FIN set, RSV clear, minimal lengths, control frames of
/// at most 125 bytes, close payloads well formed, text valid UTF-8, nothing after a close.
pub fn parse_server_frames(mut bytes: &[u8]) -> Vec<OutFrame> {
    let mut frames: Vec<OutFrame> = Vec::new();
    while !bytes.is_empty() {
        if let Some(last) = frames.last() {
            assert_ne!(last.opcode, OpCode::Close, "server wrote bytes after its close frame");
        }
        let header = match frame::parse_header(bytes) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("server output ends in a truncated frame header: {bytes:x?}"),
            Err(e) => panic!("server wrote an invalid frame header ({e}): {bytes:x?}"),
        };
        assert!(header.mask.is_none(), "server frames must not be masked");
        assert!(header.fin, "server frames are never fragmented");
        assert_eq!(header.rsv, 0);
        let len = usize::try_from(header.payload_len).expect("length fits");
        if header.opcode.is_control() {
            assert!(len <= MAX_CONTROL_PAYLOAD, "control frame of {len} bytes");
        }
        let total = header.header_len + len;
        assert!(bytes.len() >= total, "server output ends in a truncated frame payload");
        let payload = bytes[header.header_len..total].to_vec();
        match header.opcode {
            OpCode::Text => {
                assert!(std::str::from_utf8(&payload).is_ok(), "server text frame is not UTF-8")
            }
            OpCode::Close => check_close_payload(&payload),
            OpCode::Continuation => panic!("server wrote a continuation frame"),
            _ => {}
        }
        frames.push(OutFrame { fin: header.fin, opcode: header.opcode, payload });
        bytes = &bytes[total..];
    }
    frames
}

fn check_close_payload(payload: &[u8]) {
    match payload {
        [] => {}
        [_] => panic!("close payload of one byte"),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            assert!(close::is_valid_on_wire(code), "server sent close code {code}");
            assert!(std::str::from_utf8(reason).is_ok(), "close reason is not UTF-8");
        }
    }
}

pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame.
pub fn client(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    client_keyed(fin, opcode, KEY, payload)
}

pub fn client_keyed(fin: bool, opcode: OpCode, key: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    frame::write_masked_frame(&mut v, fin, opcode, key, payload);
    v
}

/// A client close frame with `code` and `reason` bytes.
pub fn client_close(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client(true, OpCode::Close, &payload)
}

/// A raw frame header with an explicit length encoding: `len7` is the 7-bit field and `ext`
/// the extended length bytes, exactly as given (for non-minimal and overflow cases). Masked
/// with [`KEY`] when `masked`.
pub fn raw_header(b0: u8, masked: bool, len7: u8, ext: &[u8]) -> Vec<u8> {
    let mut v = vec![b0, (if masked { 0x80 } else { 0 }) | len7];
    v.extend_from_slice(ext);
    if masked {
        v.extend_from_slice(&KEY);
    }
    v
}

/// Concatenates frames.
pub fn cat(frames: &[Vec<u8>]) -> Vec<u8> {
    frames.concat()
}
