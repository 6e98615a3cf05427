//! The per-connection WebSocket state machine after the upgrade (RFC 6455 sections 5-7).
//!
//! Sans-IO in the quinn-proto manner: the caller hands in the bytes it read and the current time;
//! the session hands back events and appends the frames it must send (pongs, closes, pings) to
//! the caller's output buffer. It never touches a socket or reads a clock, so every rule,
//! heartbeats included, is tested without sleeping.
//!
//! Zero-copy on the hot path: a whole unfragmented frame that is already in the caller's buffer is
//! unmasked in place and handed out as a borrowed slice. Only messages that are fragmented or split
//! across reads are copied into the session's assembly buffer, and that buffer grows with bytes
//! actually received (never with a length the peer merely announces).
//!
//! Driving it:
//! ```text
//! loop {
//!     let step = session.advance(&mut buf[pos..end], &config, &mut out, now)?;
//!     pos += step.consumed;
//!     match step.event { Some(ev) => handle(ev), None => break /* keep buf[pos..end] */ }
//! }
//! ```
//! When `advance` returns no event, the unconsumed bytes are an unfinished frame header or an
//! unfinished control frame: at most [`MAX_UNCONSUMED`] bytes that the caller keeps and presents
//! again, followed by the next bytes it reads.

use std::fmt;

use super::close::{self, code};
use super::deflate::{Agreed, InflateError, Inflater};
use super::frame::{self, HeaderError, OpCode, MAX_CONTROL_PAYLOAD, RSV1_BIT};
use super::mask::{apply_mask, unmask_is_ascii};
use super::utf8::Utf8Validator;

/// The most bytes `advance` can leave unconsumed without an event: a complete control frame
/// minus one byte (14-byte header bound + 125 payload bytes).
pub const MAX_UNCONSUMED: usize = frame::MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

/// Milliseconds on the caller's monotonic clock. The session only compares and adds them.
pub type Millis = u64;

/// Limits and timers, shared by every session of a server (passed by reference, not stored, so
/// a session stays small).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest message accepted, after reassembly. Bigger: close 1009.
    pub max_message_size: usize,
    /// Send a ping this often (None: never).
    pub ping_interval: Option<Millis>,
    /// Close a connection from which no whole frame arrived for this long (None: never).
    pub pong_wait: Option<Millis>,
    /// After we send a close, wait this long for the peer's close before giving up.
    pub close_timeout: Millis,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_message_size: 1 << 20,
            ping_interval: Some(54_000),
            pong_wait: Some(60_000),
            close_timeout: 5_000,
        }
    }
}

/// Why the peer's bytes were refused. The session has already written the matching close frame
/// and is [`Session::is_closed`]: the caller flushes its output and closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    Header(HeaderError),
    /// Client frames must be masked (section 5.1).
    UnmaskedFrame,
    /// A continuation frame with no message started.
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is still open.
    ExpectedContinuation,
    /// The message would exceed the configured maximum.
    MessageTooBig {
        at_least: u64,
        max: usize,
    },
    /// A text message (or close reason) that is not UTF-8.
    InvalidUtf8,
    /// A close frame with a one-byte payload.
    CloseTooShort,
    /// A close code that may not be sent on the wire.
    InvalidCloseCode(u16),
    /// RSV1 on a control frame (RFC 7692 section 6.1: only data messages are compressed).
    CompressedControl,
    /// RSV1 on a continuation frame (RFC 7692 section 6.1: it marks a message's first frame).
    CompressedContinuation,
    /// A compressed message that is not a valid DEFLATE stream (RFC 7692 section 8: 1007).
    CorruptCompression,
}

impl ProtocolError {
    /// The close code this error is answered with (section 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            ProtocolError::MessageTooBig { .. } => code::TOO_BIG,
            ProtocolError::InvalidUtf8 | ProtocolError::CorruptCompression => code::INVALID_PAYLOAD,
            _ => code::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame; never echoes peer data.
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::Header(HeaderError::ReservedOpcode(_)) => "reserved opcode",
            ProtocolError::Header(HeaderError::ReservedBits(_)) => "reserved bits set",
            ProtocolError::Header(HeaderError::LengthOverflow) => "invalid length",
            ProtocolError::Header(HeaderError::NonMinimalLength) => "non-minimal length",
            ProtocolError::Header(HeaderError::FragmentedControl) => "fragmented control frame",
            ProtocolError::Header(HeaderError::ControlTooLong(_)) => "control frame too long",
            ProtocolError::UnmaskedFrame => "unmasked frame",
            ProtocolError::UnexpectedContinuation => "unexpected continuation",
            ProtocolError::ExpectedContinuation => "expected continuation",
            ProtocolError::MessageTooBig { .. } => "message too big",
            ProtocolError::InvalidUtf8 => "invalid UTF-8",
            ProtocolError::CloseTooShort => "invalid close payload",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::CompressedControl => "compressed control frame",
            ProtocolError::CompressedContinuation => "RSV1 on a continuation frame",
            ProtocolError::CorruptCompression => "invalid compressed data",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Header(e) => write!(f, "{e}"),
            ProtocolError::MessageTooBig { at_least, max } => {
                write!(f, "message of at least {at_least} bytes exceeds {max}")
            }
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What a peer's bytes amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, validated.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping; the pong is already in the output.
    Ping(&'a [u8]),
    /// A pong (solicited or not; nothing to do but note the peer is alive).
    Pong(&'a [u8]),
    /// The peer closed. If we had not sent a close yet, the echo is in the output. The session
    /// is closed: flush the output, then close the connection.
    Closed { code: Option<u16>, reason: &'a str },
}

/// The result of one [`Session::advance`] call.
#[derive(Debug)]
pub struct Step<'a> {
    /// Input bytes used up; the caller drops them.
    pub consumed: usize,
    /// `None`: the rest of the input is an unfinished frame; present it again with more bytes.
    pub event: Option<Event<'a>>,
    /// The session's send path as it stood after this step. The event borrows the session, so
    /// an answer to it (an echo) is sent through this rather than [`Session::send`].
    pub sender: Sender,
}

/// Permission to send data frames, taken from a session ([`Session::sender`]). The one place
/// the rule "no data frame after a close" is applied on the way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    open: bool,
}

impl Sender {
    /// Data frames may still be sent (no close sent or received).
    #[inline]
    pub fn can_send(self) -> bool {
        self.open
    }

    /// Appends a whole data frame to `out` if the session was open; false after a close.
    #[inline]
    pub fn send(self, out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) -> bool {
        if self.open {
            frame::write_frame(out, opcode, payload);
        }
        self.open
    }
}

/// What a timer expiry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerOutcome {
    /// Nothing due, or a ping was written to the output.
    Alive,
    /// The peer stayed silent past `pong_wait`, or never answered our close: drop the connection.
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close and wait for the peer's, until `Session::timer`.
    CloseSent,
    /// Done: nothing more is read or written.
    Closed,
}

/// A data frame whose header has been read but whose payload has not all arrived.
#[derive(Clone, Copy, Debug)]
struct PartialFrame {
    fin: bool,
    key: [u8; 4],
    remaining: u64,
    /// Payload bytes of this frame already unmasked (the mask key's phase).
    offset: u64,
}

/// The message being assembled in `buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageKind {
    Text,
    Binary,
}

/// Per-connection protocol state. Small on purpose (an idle connection costs this plus the I/O
/// layer's bookkeeping, 32 bytes here): everything a message in flight needs lives in a boxed
/// [`Assembly`] that exists only while a message is fragmented or split across reads.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// The assembled message was handed out as an event: drop it on the next call.
    delivered: bool,
    /// When the peer last completed a frame. Parts of a frame do not count: a peer trickling
    /// one byte at a time must not hold the connection past `pong_wait`.
    last_heard: Millis,
    /// Open: when the next heartbeat ping is due. CloseSent: when we stop waiting for the
    /// peer's close.
    timer: Millis,
    /// permessage-deflate: 0 when not negotiated, else the agreed server window (8..=15). One
    /// byte, in what was padding: compression costs an idle connection nothing.
    deflate: u8,
    assembly: Option<Box<Assembly>>,
}

/// A data message that did not arrive as one whole frame in one read.
#[derive(Debug)]
struct Assembly {
    kind: MessageKind,
    utf8: Utf8Validator,
    /// The frame whose payload is still arriving, if any.
    frame: Option<PartialFrame>,
    /// Payload of the message so far (empty after our close: data is then only validated).
    /// Inflated bytes for a compressed message.
    buffer: Vec<u8>,
    /// A compressed message: the inflater lent by the pool until the message ends.
    inflater: Option<Inflater>,
    /// Compressed bytes received for this message (they count against the limit as well).
    wire_len: u64,
}

impl Session {
    /// A session that has just completed its handshake at `now`.
    pub fn new(config: &SessionConfig, now: Millis) -> Session {
        Session {
            state: State::Open,
            delivered: false,
            last_heard: now,
            timer: config.ping_interval.map_or(Millis::MAX, |i| now.saturating_add(i)),
            deflate: 0,
            assembly: None,
        }
    }

    /// Turns on permessage-deflate as agreed in the handshake (RSV1 becomes meaningful).
    pub fn with_deflate(mut self, agreed: Option<Agreed>) -> Session {
        self.deflate = agreed.map_or(0, |a| a.server_max_window_bits);
        self
    }

    /// permessage-deflate was negotiated.
    #[inline]
    pub fn deflate_negotiated(&self) -> bool {
        self.deflate != 0
    }

    /// The window to compress this peer's messages with; `None`: send them plain (not
    /// negotiated, or an 8-bit window the backend cannot produce).
    #[inline]
    pub fn send_window(&self) -> Option<u8> {
        (self.deflate >= super::deflate::MIN_DEFLATE_WINDOW_BITS).then_some(self.deflate)
    }

    /// A compressed message is being received (an inflater is borrowed).
    pub fn is_inflating(&self) -> bool {
        self.assembly.as_ref().is_some_and(|a| a.inflater.is_some())
    }

    /// Data frames may still be sent (no close sent or received).
    #[inline]
    pub fn can_send(&self) -> bool {
        self.state == State::Open
    }

    /// Nothing more will be read or written: flush the output and close the socket.
    #[inline]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Bytes held for a message in flight (for memory accounting and tests).
    pub fn buffered(&self) -> usize {
        self.assembly.as_ref().map_or(0, |a| a.buffer.len())
    }

    /// Appends a whole data frame to `out` if the session is open; false after a close.
    #[inline]
    pub fn send(&self, out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) -> bool {
        self.sender().send(out, opcode, payload)
    }

    /// The send path as it stands now, to keep while an event borrows the session.
    #[inline]
    pub fn sender(&self) -> Sender {
        Sender { open: self.can_send() }
    }

    /// Starts the closing handshake from our side: writes a close frame and waits for the
    /// peer's close, at most `close_timeout`. No data frame may follow. Returns false if a close
    /// was already sent or received.
    pub fn close(
        &mut self,
        config: &SessionConfig,
        out: &mut Vec<u8>,
        code: u16,
        reason: &str,
        now: Millis,
    ) -> bool {
        if self.state != State::Open {
            return false;
        }
        frame::write_close(out, code, reason);
        self.state = State::CloseSent;
        self.timer = now.saturating_add(config.close_timeout);
        true
    }

    /// When [`Session::handle_timeout`] next wants to run (None: no timer).
    pub fn next_timeout(&self, config: &SessionConfig) -> Option<Millis> {
        match self.state {
            State::Open => {
                let silence = config.pong_wait.map_or(Millis::MAX, |w| self.last_heard.saturating_add(w));
                let due = silence.min(self.timer);
                (due != Millis::MAX).then_some(due)
            }
            State::CloseSent => Some(self.timer),
            State::Closed => None,
        }
    }

    /// Runs the timers due at `now`: sends a heartbeat ping, or declares the peer gone.
    pub fn handle_timeout(&mut self, config: &SessionConfig, out: &mut Vec<u8>, now: Millis) -> TimerOutcome {
        match self.state {
            State::Open => {
                if let Some(wait) = config.pong_wait {
                    if now >= self.last_heard.saturating_add(wait) {
                        // Best effort: tell a live-but-silent peer why, then drop it.
                        frame::write_close(out, code::POLICY, "pong timeout");
                        self.state = State::Closed;
                        return TimerOutcome::Expired;
                    }
                }
                if now >= self.timer {
                    frame::write_frame(out, OpCode::Ping, b"");
                    let interval = config.ping_interval.unwrap_or(Millis::MAX);
                    self.timer = now.saturating_add(interval);
                }
                TimerOutcome::Alive
            }
            State::CloseSent if now >= self.timer => {
                self.state = State::Closed;
                TimerOutcome::Expired
            }
            State::CloseSent => TimerOutcome::Alive,
            State::Closed => TimerOutcome::Expired,
        }
    }

    /// Consumes bytes from `input` (unmasking them in place) until one event is ready or the
    /// input runs out. See the module docs for the calling loop.
    ///
    /// On error the session has written the close frame for it and is closed.
    pub fn advance<'a>(
        &'a mut self,
        input: &'a mut [u8],
        config: &SessionConfig,
        out: &mut Vec<u8>,
        now: Millis,
    ) -> Result<Step<'a>, ProtocolError> {
        if self.delivered {
            self.delivered = false;
            self.assembly = None;
        }
        if self.state == State::Closed {
            // Nothing after the end counts; swallow it.
            return Ok(Step { consumed: input.len(), event: None, sender: self.sender() });
        }
        let read = self.read(input, config, out, now);
        let sender = self.sender();
        match read {
            Ok((consumed, Some(Deliver::Input(range, kind)))) => {
                let payload = &input[range];
                Ok(Step { consumed, event: Some(data_event(kind, payload)), sender })
            }
            Ok((consumed, Some(Deliver::Buffer(kind)))) => {
                self.delivered = true;
                let buffer = self.assembly.as_ref().map_or(&[][..], |a| &a.buffer[..]);
                Ok(Step { consumed, event: Some(data_event(kind, buffer)), sender })
            }
            Ok((consumed, Some(Deliver::Control(range, opcode)))) => {
                let payload = &input[range];
                let event = match opcode {
                    OpCode::Ping => Event::Ping(payload),
                    OpCode::Pong => Event::Pong(payload),
                    _ => {
                        let (code, reason) = parse_close_payload(payload).expect("validated in read");
                        Event::Closed { code, reason }
                    }
                };
                Ok(Step { consumed, event: Some(event), sender })
            }
            Ok((consumed, None)) => Ok(Step { consumed, event: None, sender }),
            Err(e) => {
                self.fail(out, e);
                Err(e)
            }
        }
    }

    fn fail(&mut self, out: &mut Vec<u8>, e: ProtocolError) {
        if self.state == State::Open {
            frame::write_close(out, e.close_code(), e.reason());
        }
        self.state = State::Closed;
        self.assembly = None;
    }

    /// The parsing core: returns (consumed, what to deliver). Borrows nothing from `input`
    /// in its result, so `advance` can hand out slices of either buffer.
    fn read(
        &mut self,
        input: &mut [u8],
        config: &SessionConfig,
        out: &mut Vec<u8>,
        now: Millis,
    ) -> Result<(usize, Option<Deliver>), ProtocolError> {
        let mut pos = 0;
        loop {
            // 1. Finish the payload of a data frame in progress.
            if let Some(asm) = self.assembly.as_deref_mut() {
                if let Some(mut partial) = asm.frame {
                    let available = (input.len() - pos) as u64;
                    let take = partial.remaining.min(available) as usize;
                    let chunk = &mut input[pos..pos + take];
                    apply_mask(chunk, partial.key, partial.offset as usize);
                    if let Some(inflater) = asm.inflater.as_mut() {
                        // After our close, compressed data is dropped unread.
                        if self.state == State::Open {
                            let old = asm.buffer.len();
                            let limit = config.max_message_size;
                            inflater.inflate(chunk, &mut asm.buffer, limit).map_err(inflate_error(limit))?;
                            if asm.kind == MessageKind::Text {
                                asm.utf8.feed(&asm.buffer[old..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                            }
                        }
                        asm.wire_len += take as u64;
                    } else {
                        if asm.kind == MessageKind::Text {
                            asm.utf8.feed(chunk).map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                        if self.state == State::Open {
                            asm.buffer.extend_from_slice(chunk);
                        }
                    }
                    pos += take;
                    partial.remaining -= take as u64;
                    partial.offset += take as u64;
                    if partial.remaining > 0 {
                        asm.frame = Some(partial);
                        return Ok((pos, None));
                    }
                    asm.frame = None;
                    self.last_heard = now;
                    if partial.fin {
                        if let Some(kind) = self.finish_message(config)? {
                            return Ok((pos, Some(Deliver::Buffer(kind))));
                        }
                    }
                    continue;
                }
            }

            // 2a. The commonest frame, recognised from its first two bytes: a whole final text
            //     or binary frame, masked, shorter than 126 bytes, no RSV bits, no message in
            //     progress. It is exactly the case the general path below ends in its own fast
            //     path, minus building a `FrameHeader` (callgrind: ~40 instructions of a 16-byte
            //     echo). Both must agree on every input: the chunking proptests in
            //     tests/protocol_props.rs feed each stream whole (this path) and split into
            //     pieces (the general path) and compare events, output and errors.
            if self.assembly.is_none() {
                if let Some(&[b0, b1, k0, k1, k2, k3]) = input.get(pos..pos + 6) {
                    let len = usize::from(b1 & 0x7f);
                    let start = pos + 6;
                    if (b0 == 0x81 || b0 == 0x82)
                        && b1 & 0x80 != 0
                        && len < 126
                        && len <= config.max_message_size
                        && input.len() - start >= len
                    {
                        let payload = &mut input[start..start + len];
                        let ascii = unmask_is_ascii(payload, [k0, k1, k2, k3]);
                        let kind = if b0 == 0x81 { MessageKind::Text } else { MessageKind::Binary };
                        if kind == MessageKind::Text && !ascii && std::str::from_utf8(payload).is_err() {
                            return Err(ProtocolError::InvalidUtf8);
                        }
                        pos = start + len;
                        self.last_heard = now;
                        if self.state != State::Open {
                            continue; // after our close, data is read and dropped
                        }
                        return Ok((pos, Some(Deliver::Input(start..start + len, kind))));
                    }
                }
            }

            // 2. A new frame: its header must be complete.
            let rest = &input[pos..];
            let allowed_rsv = if self.deflate != 0 { RSV1_BIT } else { 0 };
            let Some(header) = frame::parse_header_with(rest, allowed_rsv).map_err(ProtocolError::Header)?
            else {
                return Ok((pos, None));
            };
            let key = header.mask.ok_or(ProtocolError::UnmaskedFrame)?;
            let rsv1 = header.rsv & RSV1_BIT != 0;

            if header.opcode.is_control() {
                if rsv1 {
                    return Err(ProtocolError::CompressedControl);
                }
                let len = header.payload_len as usize; // <= 125, checked by parse_header
                let total = header.header_len + len;
                if rest.len() < total {
                    return Ok((pos, None)); // wait for the whole (small) control frame
                }
                let start = pos + header.header_len;
                apply_mask(&mut input[start..start + len], key, 0);
                pos += total;
                self.last_heard = now;
                match self.control(header.opcode, start..start + len, input, config, out)? {
                    Some(deliver) => return Ok((pos, Some(deliver))),
                    None => continue,
                }
            }

            // A data frame: check sequencing and size before touching its payload.
            let open_kind = self.assembly.as_ref().map(|a| a.kind);
            let kind = match (header.opcode, open_kind) {
                (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Continuation, Some(_)) if rsv1 => return Err(ProtocolError::CompressedContinuation),
                (OpCode::Continuation, Some(kind)) => kind,
                (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
                (OpCode::Text, None) => MessageKind::Text,
                (_, None) => MessageKind::Binary,
            };
            // Plain bytes are buffered as they come; compressed bytes count as received on the
            // wire (their inflated size is bounded as it is produced, in step 1).
            let compressed = rsv1 || self.is_inflating();
            let so_far = match &self.assembly {
                Some(a) if compressed => a.wire_len,
                _ => self.buffered() as u64,
            };
            let at_least = so_far.saturating_add(header.payload_len);
            if at_least > config.max_message_size as u64 {
                return Err(ProtocolError::MessageTooBig { at_least, max: config.max_message_size });
            }
            let len = header.payload_len as usize; // fits: <= max_message_size
            let start = pos + header.header_len;

            // Fast path: a whole unfragmented message in the input. Unmask in place, lend it out.
            if header.fin && open_kind.is_none() && !compressed && rest.len() >= header.header_len + len {
                let payload = &mut input[start..start + len];
                // One pass unmasks and spots non-ASCII bytes; only text that has some pays for a
                // full UTF-8 validation.
                let ascii = unmask_is_ascii(payload, key);
                if kind == MessageKind::Text && !ascii && std::str::from_utf8(payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                pos = start + len;
                self.last_heard = now;
                if self.state != State::Open {
                    continue; // after our close, data is read and dropped
                }
                return Ok((pos, Some(Deliver::Input(start..start + len, kind))));
            }

            // Slow path: the payload goes through the assembly buffer.
            let asm = self.assembly.get_or_insert_with(|| {
                Box::new(Assembly {
                    kind,
                    utf8: Utf8Validator::new(),
                    frame: None,
                    buffer: Vec::new(),
                    // Borrowed for this message only: an idle connection holds no zlib state.
                    inflater: rsv1.then(Inflater::borrow),
                    wire_len: 0,
                })
            });
            pos = start;
            asm.frame = Some(PartialFrame { fin: header.fin, key, remaining: header.payload_len, offset: 0 });
            // Loop: step 1 takes what payload is here (possibly none, possibly the whole frame).
        }
    }

    /// Ends the open message after its final frame. `None` when it is not to be delivered
    /// (we are closing).
    fn finish_message(&mut self, config: &SessionConfig) -> Result<Option<MessageKind>, ProtocolError> {
        let asm = self.assembly.as_deref_mut().expect("a frame in progress belongs to a message");
        let kind = asm.kind;
        // A compressed message: add back the tail the sender stripped, then return the inflater
        // to the pool at once (the buffer is handed out, the zlib state is not needed).
        if let Some(mut inflater) = asm.inflater.take() {
            if self.state == State::Open {
                let old = asm.buffer.len();
                let limit = config.max_message_size;
                inflater.finish(&mut asm.buffer, limit).map_err(inflate_error(limit))?;
                if kind == MessageKind::Text {
                    asm.utf8.feed(&asm.buffer[old..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                }
            }
        }
        if kind == MessageKind::Text && !asm.utf8.is_complete() {
            return Err(ProtocolError::InvalidUtf8);
        }
        if self.state != State::Open {
            self.assembly = None;
            return Ok(None);
        }
        // Handed out from the buffer; `advance` drops it on the next call.
        Ok(Some(kind))
    }

    /// Handles a complete, unmasked control frame whose payload is `input[range]`.
    fn control(
        &mut self,
        opcode: OpCode,
        range: std::ops::Range<usize>,
        input: &[u8],
        _config: &SessionConfig,
        out: &mut Vec<u8>,
    ) -> Result<Option<Deliver>, ProtocolError> {
        let payload = &input[range.clone()];
        match opcode {
            OpCode::Ping => {
                if self.state != State::Open {
                    return Ok(None); // no frame may follow our close
                }
                frame::write_frame(out, OpCode::Pong, payload);
                Ok(Some(Deliver::Control(range, OpCode::Ping)))
            }
            OpCode::Pong => Ok(Some(Deliver::Control(range, OpCode::Pong))),
            _ => {
                let (code, _reason) = parse_close_payload(payload)?;
                if self.state == State::Open {
                    // Echo the peer's code (1000 when it gave none), without its reason.
                    frame::write_close(out, code.unwrap_or(code::NORMAL), "");
                }
                self.state = State::Closed;
                self.assembly = None;
                Ok(Some(Deliver::Control(range, OpCode::Close)))
            }
        }
    }
}

/// Maps an inflate failure to the rule it breaks.
fn inflate_error(limit: usize) -> impl Fn(InflateError) -> ProtocolError {
    move |e| match e {
        InflateError::Corrupt => ProtocolError::CorruptCompression,
        InflateError::TooBig => ProtocolError::MessageTooBig { at_least: limit as u64 + 1, max: limit },
    }
}

/// Where an event's payload lives.
enum Deliver {
    Input(std::ops::Range<usize>, MessageKind),
    Buffer(MessageKind),
    Control(std::ops::Range<usize>, OpCode),
}

fn data_event(kind: MessageKind, payload: &[u8]) -> Event<'_> {
    match kind {
        // SAFETY: every text payload was validated on the way in, on the fast path by the
        // unmasking pass (pure ASCII) or else `from_utf8`, on the slow path by the incremental validator (checked complete) on the slow path. Validating
        // again here would double the cost of UTF-8 checking on the hot path.
        MessageKind::Text => Event::Text(unsafe { std::str::from_utf8_unchecked(payload) }),
        MessageKind::Binary => Event::Binary(payload),
    }
}

/// Splits a close payload into code and reason, checking both (section 5.5.1, 7.4).
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, &str), ProtocolError> {
    match payload {
        [] => Ok((None, "")),
        [_] => Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close::is_valid_on_wire(code) {
                return Err(ProtocolError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}
