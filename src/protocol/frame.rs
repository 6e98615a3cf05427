//! Frame headers (RFC 6455 section 5.2): parsing client frames and writing server frames.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! ```
//!
//! Parsing looks at a borrowed slice and never allocates; writing appends to a caller's buffer
//! or fills a fixed array, so a frame can be built once and shared by many connections.

use std::fmt;

/// The largest header a frame can have: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// The largest header a server (unmasked) frame can have.
pub const MAX_SERVER_HEADER_LEN: usize = 10;
/// The RSV1 bit in a frame's first byte: "this message is compressed" under permessage-deflate.
pub const RSV1: u8 = 0x40;
/// RSV1 as it appears in [`FrameHeader::rsv`] (RSV1..RSV3 as the low three bits).
pub const RSV1_BIT: u8 = 0b100;
/// Control frames carry at most 125 bytes (section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; `None` for the reserved values 3-7 and 11-15.
    pub fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header itself took on the wire.
    pub header_len: usize,
}

/// Why a header is not acceptable. Each maps to close code 1002 (protocol error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Opcode 3-7 or 11-15.
    ReservedOpcode(u8),
    /// RSV bits set with no extension negotiated.
    ReservedBits(u8),
    /// A 64-bit length with the most significant bit set.
    LengthOverflow,
    /// A 16- or 64-bit length that would have fitted a shorter encoding.
    NonMinimalLength,
    /// A control frame with FIN clear.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    ControlTooLong(u64),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            HeaderError::ReservedBits(bits) => write!(f, "reserved bits {bits:#05b} set"),
            HeaderError::LengthOverflow => f.write_str("64-bit length with the top bit set"),
            HeaderError::NonMinimalLength => f.write_str("payload length not minimally encoded"),
            HeaderError::FragmentedControl => f.write_str("fragmented control frame"),
            HeaderError::ControlTooLong(n) => write!(f, "control frame of {n} bytes"),
        }
    }
}

/// Parses one frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold the whole header yet (need more bytes),
/// whatever the chunking: a header can arrive one byte at a time. Rules checked here are the
/// ones a header alone can break; masking and size limits are the session's business.
///
/// Non-minimal length encodings (e.g. 5 encoded in 16 bits) are rejected: RFC 6455 section 5.2
/// says "the minimal number of bytes MUST be used to encode the length", and a strict reading
/// closes a door to length-smuggling tricks between intermediaries.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, HeaderError> {
    parse_header_with(buf, 0)
}

/// [`parse_header`] for a connection that negotiated extensions: RSV bits in `allowed_rsv`
/// (bit 2 = RSV1, as in [`FrameHeader::rsv`]) are returned for the session to judge instead of
/// being refused here. Which frames may carry them is the extension's rule, not the header's.
/// Inlined into the session's read loop: built as a separate call, the `FrameHeader` goes
/// through memory on every frame (callgrind: 20 instructions of a 16 B echo).
#[inline]
pub fn parse_header_with(buf: &[u8], allowed_rsv: u8) -> Result<Option<FrameHeader>, HeaderError> {
    let Some(&[b0, b1]) = buf.get(..2).map(|s| <&[u8; 2]>::try_from(s).expect("two bytes")) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(HeaderError::ReservedOpcode(b0 & 0x0f))?;
    if rsv & !allowed_rsv != 0 {
        return Err(HeaderError::ReservedBits(rsv));
    }
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(HeaderError::FragmentedControl);
        }
        if len7 > MAX_CONTROL_PAYLOAD as u8 {
            // 126/127 here announce a long control frame; say so before reading the length.
            return Err(HeaderError::ControlTooLong(u64::from(len7)));
        }
    }
    let (payload_len, mut pos) = match len7 {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            let n = u16::from_be_bytes([ext[0], ext[1]]);
            if n < 126 {
                return Err(HeaderError::NonMinimalLength);
            }
            (u64::from(n), 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let n = u64::from_be_bytes(ext.try_into().expect("eight bytes"));
            if n >> 63 != 0 {
                return Err(HeaderError::LengthOverflow);
            }
            if n <= u64::from(u16::MAX) {
                return Err(HeaderError::NonMinimalLength);
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        let Some(key) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    Ok(Some(FrameHeader { fin, rsv, opcode, mask, payload_len, header_len: pos }))
}

/// A server frame header, encoded into a fixed array: no allocation, no length checks at use.
#[derive(Clone, Copy)]
pub struct ServerHeader {
    bytes: [u8; MAX_SERVER_HEADER_LEN],
    len: u8,
}

impl ServerHeader {
    /// Encodes an unmasked header with the minimal length encoding.
    #[inline]
    pub fn new(fin: bool, opcode: OpCode, payload_len: usize) -> ServerHeader {
        let mut bytes = [0u8; MAX_SERVER_HEADER_LEN];
        bytes[0] = (if fin { 0x80 } else { 0 }) | opcode.bits();
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if payload_len <= usize::from(u16::MAX) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        ServerHeader { bytes, len }
    }

    /// A whole (FIN) frame header with RSV1 set: the first and only frame of a message
    /// compressed with permessage-deflate (RFC 7692 section 6).
    #[inline]
    pub fn new_compressed(opcode: OpCode, payload_len: usize) -> ServerHeader {
        let mut header = ServerHeader::new(true, opcode, payload_len);
        header.bytes[0] |= RSV1;
        header
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Appends one whole unmasked server frame (FIN set) to `out`.
#[inline]
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    // Written here rather than through `ServerHeader`: one reservation, then fixed-size header
    // stores the compiler can inline, instead of a variable-length copy of a staged header
    // (the echo of a small message is mostly this function).
    let len = payload.len();
    out.reserve(MAX_SERVER_HEADER_LEN + len);
    let b0 = 0x80 | opcode.bits();
    if len < 126 {
        out.extend_from_slice(&[b0, len as u8]);
    } else if len <= usize::from(u16::MAX) {
        let [hi, lo] = (len as u16).to_be_bytes();
        out.extend_from_slice(&[b0, 126, hi, lo]);
    } else {
        out.extend_from_slice(&[b0, 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// Builds one whole frame in its own buffer, to be encoded once and shared by many connections
/// (the hub wraps it in an `Rc`).
pub fn build_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_SERVER_HEADER_LEN + payload.len());
    write_frame(&mut out, opcode, payload);
    out
}

/// Appends a close frame with `code` and a `reason` (cut to fit 125 bytes at a char boundary).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let header = ServerHeader::new(true, OpCode::Close, 2 + reason.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends a client-style (masked) frame with RSV1 set (a compressed message's first frame
/// under permessage-deflate): for tests, fuzzers and the load generator.
pub fn write_masked_frame_rsv1(out: &mut Vec<u8>, fin: bool, opcode: OpCode, key: [u8; 4], payload: &[u8]) {
    let start = out.len();
    write_masked_frame(out, fin, opcode, key, payload);
    out[start] |= RSV1;
}

/// Appends a client-style (masked) frame: for tests, fuzzers and the load generator.
pub fn write_masked_frame(out: &mut Vec<u8>, fin: bool, opcode: OpCode, key: [u8; 4], payload: &[u8]) {
    write_masked_header(out, fin, opcode, key, payload.len());
    let start = out.len();
    out.extend_from_slice(payload);
    super::mask::apply_mask(&mut out[start..], key, 0);
}

/// Appends a client-style (masked) frame header announcing `payload_len` bytes, minimal length
/// encoding, without the payload: for tests that send a payload in pieces or claim a length
/// they never send.
pub fn write_masked_header(out: &mut Vec<u8>, fin: bool, opcode: OpCode, key: [u8; 4], payload_len: usize) {
    let header = ServerHeader::new(fin, opcode, payload_len);
    let h = header.as_bytes();
    out.push(h[0]);
    out.push(h[1] | 0x80);
    out.extend_from_slice(&h[2..]);
    out.extend_from_slice(&key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked_header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if len < 126 {
            v.push(0x80 | len as u8);
        } else if len <= 0xffff {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            v.push(0x80 | 127);
            v.extend_from_slice(&len.to_be_bytes());
        }
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn length_encoding_edges_round_trip() {
        // (length, header bytes on the wire for a masked client frame)
        let table: &[(u64, usize)] =
            &[(0, 6), (1, 6), (125, 6), (126, 8), (127, 8), (65535, 8), (65536, 14), ((1 << 63) - 1, 14)];
        for &(len, header_len) in table {
            let bytes = masked_header(0x2, true, len);
            let h = parse_header(&bytes).unwrap().unwrap();
            assert_eq!(h.payload_len, len, "len {len}");
            assert_eq!(h.header_len, header_len, "len {len}");
            assert_eq!(h.mask, Some([1, 2, 3, 4]));
            // Every proper prefix is "need more", never an error.
            for cut in 0..bytes.len() {
                assert_eq!(parse_header(&bytes[..cut]), Ok(None), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn server_header_lengths() {
        for &(len, header_len) in &[(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let h = ServerHeader::new(true, OpCode::Binary, len);
            assert_eq!(h.as_bytes().len(), header_len, "len {len}");
            let mut unmasked = h.as_bytes().to_vec();
            unmasked.extend(std::iter::repeat_n(0u8, 0));
            let parsed = parse_header(&unmasked).unwrap().unwrap();
            assert_eq!(parsed.payload_len, len as u64);
            assert_eq!(parsed.mask, None);
        }
    }

    #[test]
    fn top_bit_of_64_bit_length_is_an_error() {
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse_header(&bytes), Err(HeaderError::LengthOverflow));
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&bytes), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn non_minimal_lengths_are_errors() {
        assert_eq!(parse_header(&[0x82, 0x80 | 126, 0, 125]), Err(HeaderError::NonMinimalLength));
        assert_eq!(parse_header(&[0x82, 0x80 | 126, 0, 0]), Err(HeaderError::NonMinimalLength));
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&65535u64.to_be_bytes());
        assert_eq!(parse_header(&bytes), Err(HeaderError::NonMinimalLength));
        let mut bytes = vec![0x82, 0x80 | 127];
        bytes.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(parse_header(&bytes), Err(HeaderError::NonMinimalLength));
    }

    #[test]
    fn reserved_opcodes_are_errors() {
        for op in (3..=7).chain(11..=15) {
            assert_eq!(parse_header(&[0x80 | op, 0x80]), Err(HeaderError::ReservedOpcode(op)), "op {op}");
        }
        for op in [0, 1, 2, 8, 9, 10] {
            assert!(parse_header(&[0x80 | op, 0x80, 0, 0, 0, 0]).unwrap().is_some(), "op {op}");
        }
    }

    #[test]
    fn reserved_bits_are_errors() {
        for rsv in 1..8u8 {
            assert_eq!(parse_header(&[0x81 | (rsv << 4), 0x80]), Err(HeaderError::ReservedBits(rsv)));
        }
    }

    #[test]
    fn control_frame_rules() {
        assert_eq!(parse_header(&[0x09, 0x80]), Err(HeaderError::FragmentedControl));
        assert_eq!(parse_header(&[0x89, 0x80 | 126]), Err(HeaderError::ControlTooLong(126)));
        assert_eq!(parse_header(&[0x88, 0x80 | 127]), Err(HeaderError::ControlTooLong(127)));
        let h = parse_header(&[0x8A, 0x80 | 125, 0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(h.payload_len, 125);
    }

    #[test]
    fn write_close_cuts_reason_on_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        write_close(&mut out, 1000, &reason);
        let h = parse_header(&out).unwrap().unwrap();
        assert!(h.payload_len <= 125);
        let payload = &out[h.header_len..];
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
        assert_eq!(&payload[..2], &1000u16.to_be_bytes());
    }
}
