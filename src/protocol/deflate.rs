//! permessage-deflate (RFC 7692): negotiation, the receive-side inflate, and the shared
//! compressor for what the server sends. Sans-IO like the rest of `protocol/`: header values in,
//! a decision out; compressed bytes in, bounded plain bytes out.
//!
//! **No context takeover, both ways, always.** The 101 response always carries
//! `server_no_context_takeover` and `client_no_context_takeover` (section 7.1.1 lets the server
//! add both), so every message is compressed and decompressed on its own. That is what keeps the
//! memory model flat:
//!
//! * an idle connection holds no zlib state at all: a [`Session`](super::Session) that negotiated
//!   the extension stores one byte (the agreed server window);
//! * a connection in the middle of receiving a compressed message borrows an [`Inflater`] from a
//!   per-thread pool (the reactor is one thread, so the pool is reactor-wide) and gives it back as
//!   soon as the message ends, or when the connection is dropped mid-message;
//! * one [`Deflater`] (one zlib stream per window size in use, at most seven) compresses for the
//!   whole reactor, and a message fanned out to many subscribers is compressed once per window
//!   size into a frame they all share ([`SharedMessage`]).
//!
//! Receiving, in the session: RSV1 marks the first frame of a compressed message; its payload,
//! and its continuations', go through [`Inflater::inflate`] into the message buffer, never past
//! `max_message_size + 1` bytes (one byte past the limit is how we learn the message is too big:
//! a zip bomb costs the limit, no more). At the end of the message the `00 00 ff ff` tail the
//! sender stripped is fed back (section 7.2.2).
//!
//! Counting, for `/metrics`: the [`Deflater`] keeps its own [`DeflateStats`] (messages
//! compressed, bytes before and after, compressed frames queued), and inflaters count into a
//! per-thread [`InflateStats`] next to the pool they come from (the session that uses them has
//! no metrics to write to). Plain additions, once per message or frame, never per byte.
//!
//! Backend: `flate2` on `zlib-rs` (a Rust port of zlib, no C toolchain, zlib's speed), chosen
//! over the default miniz_oxide because it exposes the window size (`new_with_window_bits`),
//! which honouring `server_max_window_bits` needs. Like zlib, it cannot produce raw deflate with
//! an 8-bit (256-byte) window (it rounds up to 9). A client that offers
//! `server_max_window_bits=8` is accepted with 8, and the server never compresses what it sends
//! that client: RFC 7692 section 6 lets any message go uncompressed, and we never claim a window
//! we cannot produce. We still inflate what that client sends.

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::frame::{OpCode, ServerHeader, MAX_SERVER_HEADER_LEN};

/// The extension's registered name.
pub const EXTENSION_NAME: &str = "permessage-deflate";
/// What a sender strips from the end of a compressed message and a receiver adds back
/// (an empty stored block after a sync flush; section 7.2.1).
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The largest LZ77 window, in bits (32 KiB); also the window we inflate with, which reads
/// anything a client may produce.
pub const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window RFC 7692 allows a peer to ask for.
pub const MIN_WINDOW_BITS: u8 = 8;
/// The smallest window our backend can compress with (see the module docs for 8).
pub const MIN_DEFLATE_WINDOW_BITS: u8 = 9;
/// Idle inflaters the pool keeps for reuse; more are freed when given back.
const POOL_KEEP: usize = 8;

// ---------------------------------------------------------------------------------------------
// Negotiation (sections 5 and 7.1)

/// What was agreed with a client: everything else is fixed (no context takeover both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The window we may compress with, 8..=15: the client's `server_max_window_bits`, or 15.
    pub server_max_window_bits: u8,
    /// The client asked for a limit on our window: echo it in the response (section 7.1.2.1).
    pub server_window_requested: bool,
}

impl Agreed {
    /// The window the server compresses with for this client; `None` when it sends every
    /// message uncompressed (an 8-bit window, which the backend cannot produce).
    pub fn send_window(&self) -> Option<u8> {
        (self.server_max_window_bits >= MIN_DEFLATE_WINDOW_BITS).then_some(self.server_max_window_bits)
    }

    /// Appends the `Sec-WebSocket-Extensions` response header line.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        if self.server_window_requested {
            out.extend_from_slice(b"; server_max_window_bits=");
            if self.server_max_window_bits >= 10 {
                out.push(b'1');
            }
            out.push(b'0' + self.server_max_window_bits % 10);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Why one offer was declined (the next one is then tried).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferError {
    /// Another extension (or not a token).
    NotDeflate,
    /// A parameter RFC 7692 does not define.
    UnknownParameter,
    /// The same parameter twice (section 7: MUST decline).
    DuplicateParameter,
    /// A value where none is allowed, none where one is required, or not 8..=15 without
    /// leading zeros.
    InvalidValue,
    /// Not `name *(; param[=value])`: a stray character, an unterminated quoted string.
    Syntax,
}

/// Chooses the first `permessage-deflate` offer the server can honour, from every
/// `Sec-WebSocket-Extensions` header value in order. `None`: run without the extension (never a
/// failed handshake).
pub fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    header_values.into_iter().flat_map(split_offers).find_map(|offer| parse_offer(offer).ok())
}

/// Splits a header value into offers at commas outside quoted strings.
pub fn split_offers(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let v = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, &b) in v.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == b',' && !quoted {
                rest = Some(&v[i + 1..]);
                return Some(&v[..i]);
            }
        }
        rest = None;
        Some(v)
    })
    .filter(|offer| !trim(offer).is_empty())
}

/// Parses one offer (`permessage-deflate; param; param=value`) and decides whether we accept it.
pub fn parse_offer(offer: &[u8]) -> Result<Agreed, OfferError> {
    let mut parts = offer.split(|&b| b == b';').map(trim);
    let name = parts.next().unwrap_or(b"");
    if !name.eq_ignore_ascii_case(EXTENSION_NAME.as_bytes()) {
        return Err(OfferError::NotDeflate);
    }
    let mut seen = [false; 4];
    let mut server_bits: Option<u8> = None;
    for param in parts {
        let (key, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (trim(&param[..i]), Some(unquote(trim(&param[i + 1..]))?)),
            None => (param, None),
        };
        if key.is_empty() || !key.iter().all(|&b| is_tchar(b)) {
            return Err(OfferError::Syntax);
        }
        let index = match key {
            b"server_no_context_takeover" => 0,
            b"client_no_context_takeover" => 1,
            b"server_max_window_bits" => 2,
            b"client_max_window_bits" => 3,
            _ => return Err(OfferError::UnknownParameter),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(OfferError::DuplicateParameter);
        }
        match (index, value) {
            // The two takeover flags take no value.
            (0 | 1, Some(_)) => return Err(OfferError::InvalidValue),
            (0 | 1, None) => {}
            (2, v) => server_bits = Some(window_bits(v.ok_or(OfferError::InvalidValue)?)?),
            // client_max_window_bits: with or without a value; we inflate with 15, which reads
            // any window the client picks, so we never answer it.
            (_, Some(v)) => {
                window_bits(v)?;
            }
            (_, None) => {}
        }
    }
    Ok(Agreed {
        server_max_window_bits: server_bits.unwrap_or(MAX_WINDOW_BITS),
        server_window_requested: server_bits.is_some(),
    })
}

/// `8`..=`15`, decimal, no leading zeros (section 7.1.2.1).
fn window_bits(value: Value<'_>) -> Result<u8, OfferError> {
    // Unescape into two bytes at most: a longer value is invalid whatever it holds.
    let mut digits = [0u8; 2];
    let mut n = 0;
    let mut it = value.bytes.iter();
    while let Some(&b) = it.next() {
        let b = if value.escaped && b == b'\\' { *it.next().unwrap_or(&b) } else { b };
        if n == digits.len() {
            return Err(OfferError::InvalidValue);
        }
        digits[n] = b;
        n += 1;
    }
    match &digits[..n] {
        [d @ b'8'..=b'9'] => Ok(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Ok(10 + (d - b'0')),
        _ => Err(OfferError::InvalidValue),
    }
}

/// A parameter value: a token, or the inside of a quoted string.
#[derive(Clone, Copy)]
struct Value<'a> {
    bytes: &'a [u8],
    /// A quoted string with backslash escapes still in `bytes`.
    escaped: bool,
}

/// A token, or a quoted-string (RFC 7230 section 3.2.6) whose content is then the value.
fn unquote(raw: &[u8]) -> Result<Value<'_>, OfferError> {
    match raw {
        [b'"', inner @ .., b'"'] => {
            let mut escaped = false;
            let mut any_escape = false;
            for &b in inner {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                    any_escape = true;
                } else if b == b'"' {
                    return Err(OfferError::Syntax);
                }
            }
            if escaped {
                return Err(OfferError::Syntax);
            }
            Ok(Value { bytes: inner, escaped: any_escape })
        }
        _ if !raw.is_empty() && raw.iter().all(|&b| is_tchar(b)) => Ok(Value { bytes: raw, escaped: false }),
        _ => Err(OfferError::Syntax),
    }
}

/// RFC 7230 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &bytes[start..end]
}

// ---------------------------------------------------------------------------------------------
// Receiving: a pooled, bounded inflater

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InflateError {
    /// Not a valid DEFLATE stream (close 1007).
    Corrupt,
    /// It inflates to more than the limit (close 1009); inflation stopped one byte past it.
    TooBig,
}

thread_local! {
    /// Idle inflaters, reset, ready for the next compressed message on this thread.
    static POOL: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
    /// Inflaters lent out right now (for tests and the memory model).
    static LENT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// What this thread's inflaters did, for `/metrics`.
    static INFLATED: std::cell::Cell<InflateStats> = const { std::cell::Cell::new(InflateStats::ZERO) };
}

/// What the inflaters of this thread (the reactor) have done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflateStats {
    /// Compressed messages received whole and inflated.
    pub messages: u64,
    /// Their compressed bytes (without the tail the sender stripped) and inflated bytes.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Messages refused as corrupt DEFLATE streams (closed with 1007).
    pub corrupt: u64,
    /// Messages refused for inflating past the size limit (closed with 1009): zip bombs,
    /// stopped one byte past the limit.
    pub too_big: u64,
}

impl InflateStats {
    const ZERO: InflateStats =
        InflateStats { messages: 0, bytes_in: 0, bytes_out: 0, corrupt: 0, too_big: 0 };
}

/// What this thread's inflaters have done so far.
pub fn inflate_stats() -> InflateStats {
    INFLATED.with(|s| s.get())
}

fn count_inflate(f: impl FnOnce(&mut InflateStats)) {
    INFLATED.with(|s| {
        let mut stats = s.get();
        f(&mut stats);
        s.set(stats);
    });
}

/// How many inflaters this thread has lent out (messages being received compressed right now).
pub fn inflaters_in_use() -> usize {
    LENT.with(|l| l.get())
}

/// A raw-DEFLATE decompressor borrowed from the pool for one message; returned on drop.
pub struct Inflater {
    inner: Option<Decompress>,
    /// The stream's final block has been read: any further data is an error.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl Inflater {
    /// Borrows an inflater (a fresh one when the pool is empty).
    pub fn borrow() -> Inflater {
        let inner = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
        LENT.with(|l| l.set(l.get() + 1));
        Inflater { inner: Some(inner), ended: false }
    }

    /// Inflates `input` (a piece of the message's compressed payload) onto the end of `out`,
    /// never letting `out` grow past `limit + 1` bytes. Returns the number of bytes appended.
    pub fn inflate(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<usize, InflateError> {
        self.run(input, out, limit, FlushDecompress::None)
    }

    /// Ends the message: feeds the stripped tail (section 7.2.2). Returns the bytes appended.
    pub fn finish(&mut self, out: &mut Vec<u8>, limit: usize) -> Result<usize, InflateError> {
        // A final block may already have ended the stream; the tail would then be extra.
        let tail = !self.ended;
        let appended = if tail { self.run(&TAIL, out, limit, FlushDecompress::Sync)? } else { 0 };
        let d = self.inner.as_ref().expect("present until drop");
        let bytes_in = d.total_in().saturating_sub(if tail { TAIL.len() as u64 } else { 0 });
        let bytes_out = d.total_out();
        count_inflate(|s| {
            s.messages = s.messages.saturating_add(1);
            s.bytes_in = s.bytes_in.saturating_add(bytes_in);
            s.bytes_out = s.bytes_out.saturating_add(bytes_out);
        });
        Ok(appended)
    }

    fn run(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        flush: FlushDecompress,
    ) -> Result<usize, InflateError> {
        let result = self.run_uncounted(input, out, limit, flush);
        if let Err(e) = result {
            count_inflate(|s| match e {
                InflateError::Corrupt => s.corrupt = s.corrupt.saturating_add(1),
                InflateError::TooBig => s.too_big = s.too_big.saturating_add(1),
            });
        }
        result
    }

    fn run_uncounted(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
        flush: FlushDecompress,
    ) -> Result<usize, InflateError> {
        let d = self.inner.as_mut().expect("present until drop");
        let start = out.len();
        loop {
            if self.ended {
                // Bytes after a final block are not part of the stream: ignored, as zlib leaves
                // them unused (RFC 7692's own BFINAL example, 7.2.3.4, has one). They still
                // count against the message size on the wire.
                return Ok(out.len() - start);
            }
            // Room for this call: enough to make progress, never past limit + 1, and never a
            // large zeroed area ahead of what the input can plausibly fill.
            let hard = (limit + 1).saturating_sub(out.len());
            if hard == 0 {
                return Err(InflateError::TooBig);
            }
            let room = hard.min(input.len().saturating_mul(4).clamp(4096, 64 * 1024));
            let old = out.len();
            out.resize(old + room, 0);
            let (in_before, out_before) = (d.total_in(), d.total_out());
            let status = d.decompress(input, &mut out[old..], flush);
            let consumed = (d.total_in() - in_before) as usize;
            let produced = (d.total_out() - out_before) as usize;
            out.truncate(old + produced);
            let status = status.map_err(|_| InflateError::Corrupt)?;
            input = &input[consumed..];
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            match status {
                Status::StreamEnd => self.ended = true,
                // The output space was filled: there may be more to come even with no input.
                _ if produced == room => {}
                _ if input.is_empty() => return Ok(out.len() - start),
                // Input left, room left, no progress: cannot happen with a sound stream.
                _ if consumed == 0 && produced == 0 => return Err(InflateError::Corrupt),
                _ => {}
            }
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        LENT.with(|l| l.set(l.get().saturating_sub(1)));
        if let Some(mut d) = self.inner.take() {
            POOL.with(|p| {
                let mut pool = p.borrow_mut();
                if pool.len() < POOL_KEEP {
                    d.reset(false);
                    pool.push(d);
                }
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sending: one compressor per window size, shared by the reactor

/// Compression settings of the server (from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Messages shorter than this go out uncompressed.
    pub threshold: usize,
    /// zlib level, 1 (fast) ..= 9 (small).
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig { threshold: 128, level: 1 }
    }
}

/// What the reactor's [`Deflater`] has done since it started, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeflateStats {
    /// Messages compressed: each distinct message once per window size (a fan-out to many
    /// subscribers counts one), each echo or reply once.
    pub messages_compressed: u64,
    /// Messages at or over the threshold sent plain because compressing did not shrink them.
    pub not_smaller: u64,
    /// Payload bytes of the compressed messages before compression, and after (tail stripped).
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Compressed frames queued to clients: a fan-out of one compressed message to N
    /// subscribers counts N.
    pub frames_sent: u64,
}

/// The reactor's compressors: one raw-DEFLATE stream per window size actually in use, created
/// on first need and reset before every message (no context takeover).
pub struct Deflater {
    config: DeflateConfig,
    /// Index `bits - 9`.
    streams: [Option<Box<Compress>>; 7],
    stats: DeflateStats,
}

impl Deflater {
    pub fn new(config: DeflateConfig) -> Deflater {
        Deflater { config, streams: Default::default(), stats: DeflateStats::default() }
    }

    pub fn config(&self) -> &DeflateConfig {
        &self.config
    }

    /// What this compressor has done so far.
    pub fn stats(&self) -> DeflateStats {
        self.stats
    }

    /// Compresses one whole message with a window of `window_bits` (9..=15) and appends the
    /// DEFLATE bytes, tail stripped, to `out`. Returns false (and leaves `out` as it was) when
    /// compressing does not make the message smaller: it then goes out plain.
    pub fn compress(&mut self, payload: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let paid = self.compress_uncounted(payload, window_bits, out);
        let st = &mut self.stats;
        if paid {
            st.messages_compressed = st.messages_compressed.saturating_add(1);
            st.bytes_in = st.bytes_in.saturating_add(payload.len() as u64);
            st.bytes_out = st.bytes_out.saturating_add((out.len() - start) as u64);
        } else {
            st.not_smaller = st.not_smaller.saturating_add(1);
        }
        paid
    }

    fn compress_uncounted(&mut self, payload: &[u8], window_bits: u8, out: &mut Vec<u8>) -> bool {
        debug_assert!((MIN_DEFLATE_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&window_bits));
        let level = Compression::new(self.config.level);
        let slot = &mut self.streams[usize::from(window_bits - MIN_DEFLATE_WINDOW_BITS)];
        let c =
            slot.get_or_insert_with(|| Box::new(Compress::new_with_window_bits(level, false, window_bits)));
        c.reset();
        let start = out.len();
        // Room for the worst case up front (static Huffman codes take up to 9 bits a byte, plus
        // block overhead): zlib-rs 0.6.8's level-1 path panics if the output fills up mid-call
        // on incompressible data. compress_vec writes into spare capacity: nothing is zeroed.
        out.reserve(payload.len() + payload.len() / 4 + 128);
        let mut input = payload;
        loop {
            let in_before = c.total_in();
            let status = c.compress_vec(input, out, FlushCompress::Sync);
            input = &input[(c.total_in() - in_before) as usize..];
            match status {
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => out.reserve(out.capacity().max(4096)),
                Err(_) => {
                    out.truncate(start);
                    return false;
                }
            }
        }
        // A sync flush ends with an empty stored block, 00 00 ff ff: strip it (section 7.2.1).
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() - start >= payload.len() {
            out.truncate(start);
            return false;
        }
        true
    }

    /// Appends one whole server frame for `payload`: compressed (RSV1 set) when `window` is
    /// `Some`, the payload reaches the threshold and compression pays; plain otherwise.
    /// Inline so the plain case (no extension, or a small message) costs the caller one
    /// comparison on the echo hot path; compression lives out of line.
    #[inline]
    pub fn write_frame(&mut self, out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], window: Option<u8>) {
        match window {
            Some(bits) if payload.len() >= self.config.threshold => {
                if self.write_compressed_frame(out, opcode, payload, bits) {
                    self.count_frame_sent();
                } else {
                    super::frame::write_frame(out, opcode, payload);
                }
            }
            _ => super::frame::write_frame(out, opcode, payload),
        }
    }

    #[inline]
    fn count_frame_sent(&mut self) {
        self.stats.frames_sent = self.stats.frames_sent.saturating_add(1);
    }

    /// The compressed half of [`Deflater::write_frame`]; false (and nothing written) when
    /// compression does not pay.
    fn write_compressed_frame(
        &mut self,
        out: &mut Vec<u8>,
        opcode: OpCode,
        payload: &[u8],
        bits: u8,
    ) -> bool {
        // Compress right after a maximal header gap, then write the real header in front.
        let start = out.len();
        out.resize(start + MAX_SERVER_HEADER_LEN, 0);
        if self.compress(payload, bits, out) {
            let len = out.len() - start - MAX_SERVER_HEADER_LEN;
            let header = ServerHeader::new_compressed(opcode, len);
            let h = header.as_bytes();
            let gap = MAX_SERVER_HEADER_LEN - h.len();
            out[start + gap..start + MAX_SERVER_HEADER_LEN].copy_from_slice(h);
            out.drain(start..start + gap);
            return true;
        }
        out.truncate(start);
        false
    }

    /// Appends whole plain server frames (as the hub writes its replies) to `out`, each data
    /// frame compressed as [`Deflater::write_frame`] would; control frames are copied.
    pub fn rewrite_frames(&mut self, out: &mut Vec<u8>, mut frames: &[u8], window: u8) {
        while let Ok(Some(h)) = super::frame::parse_header(frames) {
            let end = (h.header_len as u64 + h.payload_len).min(frames.len() as u64) as usize;
            let payload = &frames[h.header_len..end];
            if h.fin && !h.opcode.is_control() && h.opcode != OpCode::Continuation {
                self.write_frame(out, h.opcode, payload, Some(window));
            } else {
                out.extend_from_slice(&frames[..end]);
            }
            frames = &frames[end..];
        }
        out.extend_from_slice(frames);
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out: one message, each wire variant built once, on demand

/// A message framed once for many connections: the plain frame, and a compressed frame per
/// window size, each built the first time a subscriber needs it and then shared by every
/// subscriber that needs the same one.
pub struct SharedMessage {
    plain: Rc<[u8]>,
    /// Payload offset inside `plain` (its header length).
    payload_at: usize,
    opcode: OpCode,
    /// Index `bits - 9`; `Some(None)`: tried, compression did not pay, use `plain`.
    compressed: [OnceCell<Option<Rc<[u8]>>>; 7],
}

impl SharedMessage {
    /// Frames `payload` once (a whole, plain, FIN frame).
    pub fn new(opcode: OpCode, payload: &[u8]) -> SharedMessage {
        let plain: Rc<[u8]> = super::frame::build_frame(opcode, payload).into();
        SharedMessage::from_frame(opcode, plain)
    }

    /// Wraps an already built plain frame (FIN set, unmasked, as from `frame::build_frame`).
    pub fn from_frame(opcode: OpCode, plain: Rc<[u8]>) -> SharedMessage {
        let payload_at =
            super::frame::parse_header(&plain).ok().flatten().map_or(plain.len(), |h| h.header_len);
        SharedMessage { plain, payload_at, opcode, compressed: Default::default() }
    }

    /// The plain frame.
    pub fn plain(&self) -> &Rc<[u8]> {
        &self.plain
    }

    /// The message's payload.
    pub fn payload(&self) -> &[u8] {
        &self.plain[self.payload_at..]
    }

    /// The frame for a connection that compresses with `window` (`None`: plain). Compresses at
    /// most once per window size per message.
    pub fn frame_for(&self, window: Option<u8>, deflater: &mut Deflater) -> &Rc<[u8]> {
        let Some(bits) = window.filter(|_| self.payload().len() >= deflater.config.threshold) else {
            return &self.plain;
        };
        let cell = &self.compressed[usize::from(bits - MIN_DEFLATE_WINDOW_BITS)];
        let built = cell.get_or_init(|| {
            let mut out = Vec::with_capacity(MAX_SERVER_HEADER_LEN + self.payload().len() / 2);
            // When compression does not pay, every subscriber shares `plain`.
            deflater.write_compressed_frame(&mut out, self.opcode, self.payload(), bits).then(|| out.into())
        });
        match built {
            Some(frame) => {
                deflater.count_frame_sent();
                frame
            }
            None => &self.plain,
        }
    }

    /// Variants built so far (compressed ones), for tests and metrics.
    pub fn compressed_variants(&self) -> usize {
        self.compressed.iter().filter(|c| matches!(c.get(), Some(Some(_)))).count()
    }
}

#[cfg(test)]
mod tests;
