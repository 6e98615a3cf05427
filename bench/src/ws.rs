//! The client side of RFC 6455, just what a load generator needs: the upgrade request, a check
//! of the server's answer, masked frames written into reusable buffers, and a parser for the
//! server's (unmasked) frames that borrows from the read buffer.

use base64::Engine;
use sha1::{Digest, Sha1};

/// The key every connection sends; RFC 6455's own sample nonce. A fixed key is fine: the
/// server only has to echo its digest.
pub const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The fixed masking key of every client frame. Servers must unmask whatever key is used.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The `Sec-WebSocket-Accept` value a server must answer [`CLIENT_KEY`] with.
pub fn expected_accept() -> String {
    let mut sha = Sha1::new();
    sha.update(CLIENT_KEY.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The upgrade request for `host` (as `ip:port`) and `path`, offering permessage-deflate (as
/// browsers do: `client_max_window_bits`) when `deflate`.
pub fn upgrade_request(host: &str, path: &str, deflate: bool) -> Vec<u8> {
    let offer =
        if deflate { "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {CLIENT_KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// Outcome of looking at the first bytes a server sent after the upgrade request.
pub enum HandshakeReply {
    /// The head is not complete yet.
    Partial,
    /// `101` with the right accept value; the head was this many bytes long.
    Accepted(usize),
    /// Anything else, with the status line for the error message.
    Refused(String),
}

/// Checks a response head in `buf` against `accept` (see [`expected_accept`]).
pub fn check_reply(buf: &[u8], accept: &str) -> HandshakeReply {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return HandshakeReply::Refused("response head over 16 KiB".into());
        }
        return HandshakeReply::Partial;
    };
    let head = &buf[..end];
    let status = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let status_text = String::from_utf8_lossy(status).trim().to_string();
    if !status.starts_with(b"HTTP/1.1 101") {
        return HandshakeReply::Refused(status_text);
    }
    let mut ok = false;
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = line.split_at(colon);
        if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
            ok = value[1..].trim_ascii() == accept.as_bytes();
        }
    }
    if ok {
        HandshakeReply::Accepted(end + 4)
    } else {
        HandshakeReply::Refused(format!("{status_text} without the right Sec-WebSocket-Accept"))
    }
}

/// First position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// XORs `data` with [`MASK`] in place, eight bytes at a time; `offset` is the position of
/// `data[0]` within the payload (so a payload can be masked in pieces).
pub fn apply_mask(data: &mut [u8], offset: usize) {
    let mut key = [0u8; 4];
    for (i, k) in key.iter_mut().enumerate() {
        *k = MASK[(offset + i) % 4];
    }
    let word = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().unwrap()) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends a masked frame header for a final frame of `opcode` and `len` payload bytes.
pub fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
}

/// Appends a whole masked final frame.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    push_header(out, opcode, payload.len());
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], 0);
}

/// A masked frame with RSV1 set whose payload is `payload` compressed with permessage-deflate
/// (raw DEFLATE, sync flush, the 00 00 ff ff tail stripped; RFC 7692 section 7.2.1). Each call
/// compresses on its own: no context is carried between messages.
pub fn push_compressed_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let start = out.len();
    push_frame(out, opcode, &deflate(payload));
    out[start] |= 0x40;
}

/// `payload` compressed as one permessage-deflate message (level 6, 15-bit window).
pub fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::new(6), false);
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 4 + 128);
    loop {
        let consumed = c.total_in() as usize;
        c.compress_vec(&payload[consumed..], &mut out, flate2::FlushCompress::Sync).expect("deflate");
        if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    out
}

/// Inflates one permessage-deflate message (adds back the stripped tail).
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let mut d = flate2::Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(max + 1);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).map_err(|e| e.to_string())?;
    if out.len() > max {
        return Err(format!("inflates past {max} bytes"));
    }
    Ok(out)
}

/// A masked close frame with status 1000.
pub fn push_close(out: &mut Vec<u8>) {
    push_frame(out, OP_CLOSE, &1000u16.to_be_bytes());
}

/// One server frame found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a permessage-deflate compressed message.
    pub rsv1: bool,
    pub opcode: u8,
    /// Where the payload starts, relative to the start of the frame.
    pub payload_at: usize,
    pub payload_len: usize,
}

impl Frame {
    /// Bytes the whole frame takes.
    pub fn total(&self) -> usize {
        self.payload_at + self.payload_len
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Frame(Frame),
    /// At least this many bytes are needed in all before the frame is complete.
    Need(usize),
    Invalid(&'static str),
}

/// Parses one server frame at the start of `buf`; never allocates.
pub fn parse_frame(buf: &[u8]) -> Parse {
    if buf.len() < 2 {
        return Parse::Need(2);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b1 & 0x80 != 0 {
        return Parse::Invalid("server frame is masked");
    }
    let (payload_at, payload_len) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Parse::Need(4);
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return Parse::Need(10);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().unwrap());
            if len > (1 << 40) {
                return Parse::Invalid("frame length beyond 1 TiB");
            }
            (10, len as usize)
        }
        n => (2, n as usize),
    };
    let frame =
        Frame { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode: b0 & 0x0f, payload_at, payload_len };
    if buf.len() < frame.total() {
        return Parse::Need(frame.total());
    }
    Parse::Frame(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_example() {
        assert_eq!(expected_accept(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn mask_in_pieces_equals_mask_whole() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1037).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, 0);
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(13);
        apply_mask(a, 0);
        apply_mask(b, 13);
        assert_eq!(whole, pieces);
        for (i, (m, d)) in whole.iter().zip(&data).enumerate() {
            assert_eq!(*m, d ^ MASK[i % 4]);
        }
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else if payload.len() <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn parses_all_length_forms() {
        for len in [0usize, 125, 126, 65535, 65536, 70000] {
            let payload = vec![7u8; len];
            let buf = server_frame(OP_BINARY, &payload);
            match parse_frame(&buf) {
                Parse::Frame(f) => {
                    assert_eq!(f.payload_len, len);
                    assert_eq!(f.total(), buf.len());
                    assert_eq!(f.opcode, OP_BINARY);
                    assert!(f.fin);
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(parse_frame(&buf[..buf.len() - 1]), Parse::Need(_)) || len == 0);
        }
    }

    #[test]
    fn rejects_masked_server_frame() {
        let mut buf = Vec::new();
        push_frame(&mut buf, OP_TEXT, b"hi");
        assert_eq!(parse_frame(&buf), Parse::Invalid("server frame is masked"));
    }

    #[test]
    fn checks_reply() {
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\nXX",
            expected_accept()
        );
        match check_reply(ok.as_bytes(), &expected_accept()) {
            HandshakeReply::Accepted(n) => assert_eq!(n, ok.len() - 2),
            _ => panic!("not accepted"),
        }
        assert!(matches!(check_reply(b"HTTP/1.1 101 Swi", "x"), HandshakeReply::Partial));
        assert!(matches!(check_reply(b"HTTP/1.1 404 Not Found\r\n\r\n", "x"), HandshakeReply::Refused(_)));
    }

    #[test]
    fn finds() {
        assert_eq!(find(b"abc\"data\":\"x", b"\"data\":\""), Some(3));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"aab", b"ab"), Some(1));
    }
}
