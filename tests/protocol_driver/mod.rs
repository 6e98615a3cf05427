//! A sans-IO test driver for `Session`: feeds bytes the way the reactor does (keeping the
//! unconsumed tail between reads), records owned copies of the events, and decodes what the
//! session wrote so tests can check frames and close codes.
#![allow(dead_code)]

use wshub::protocol::frame::{self, OpCode};
use wshub::protocol::session::{ProtocolError, MAX_UNCONSUMED};
use wshub::protocol::{Event, Session, SessionConfig};

/// An owned copy of a session event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Closed { code: Option<u16>, reason: String },
}

impl Ev {
    fn from_event(ev: Event<'_>) -> Ev {
        match ev {
            Event::Text(s) => Ev::Text(s.to_owned()),
            Event::Binary(b) => Ev::Binary(b.to_vec()),
            Event::Ping(b) => Ev::Ping(b.to_vec()),
            Event::Pong(b) => Ev::Pong(b.to_vec()),
            Event::Closed { code, reason } => Ev::Closed { code, reason: reason.to_owned() },
        }
    }
}

/// One session plus the caller's side of it: read buffer, output buffer, clock.
pub struct Driver {
    pub session: Session,
    pub config: SessionConfig,
    /// Bytes read but not yet consumed (an unfinished header or control frame).
    pub pending: Vec<u8>,
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

    /// Presents one read's worth of bytes. Returns the events this read produced, or the error.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Ev>, ProtocolError> {
        assert!(self.error.is_none(), "feeding a session that already failed");
        self.pending.extend_from_slice(bytes);
        let Driver { session, config, pending, out, now, .. } = self;
        let mut new_events = Vec::new();
        let mut pos = 0;
        let result = loop {
            match session.advance(&mut pending[pos..], config, out, *now) {
                Ok(step) => {
                    pos += step.consumed;
                    match step.event {
                        Some(ev) => new_events.push(Ev::from_event(ev)),
                        None => break Ok(()),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) => {
                pending.drain(..pos);
                assert!(
                    pending.len() <= MAX_UNCONSUMED,
                    "{} bytes left unconsumed (bound {MAX_UNCONSUMED})",
                    pending.len()
                );
                self.events.extend(new_events.iter().cloned());
                Ok(new_events)
            }
            Err(e) => {
                pending.clear();
                self.events.extend(new_events);
                self.error = Some(e);
                Err(e)
            }
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

/// Splits server output into frames; panics on anything that is not whole, unmasked frames.
pub fn parse_server_frames(mut bytes: &[u8]) -> Vec<OutFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let h = frame::parse_header(bytes).expect("server frame header is valid").expect("whole header");
        assert_eq!(h.mask, None, "server frames are never masked");
        let end = h.header_len + h.payload_len as usize;
        assert!(bytes.len() >= end, "truncated server frame");
        frames.push(OutFrame { fin: h.fin, opcode: h.opcode, payload: bytes[h.header_len..end].to_vec() });
        bytes = &bytes[end..];
    }
    frames
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
