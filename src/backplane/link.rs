//! One RESP2 connection to Redis, sans-IO: commands in, bytes out; bytes in, replies out.
//!
//! The link owns both buffers. The caller moves bytes between them and a socket:
//!
//! ```text
//! link.command(&[b"PUBLISH", channel, payload]);   // encoded at the end of `output`
//! socket.write(link.output()) -> n; link.consume_output(n);
//! link.read_from(&mut socket)?;                      // or link.feed(bytes) in tests
//! link.decode(|reply| ...)?;                         // every whole reply, borrowed in place
//! ```
//!
//! Decoding is `redis_protocol::resp2::decode::decode_range`, a push parser over the buffer:
//! it answers "a whole frame of n bytes" or "not yet", like `httparse`, and the frame is a
//! set of ranges into our bytes, so a message's payload is never copied out of the read buffer.
//! Decoded bytes are dropped with one `drain` per call, not one per frame.
//!
//! Both buffers are bounded by the caller's limits: commands that would take `output` past
//! `max_output` are refused ([`Link::command_bounded`]), and input that holds no whole reply
//! within `max_input` bytes is an error (Redis sends nothing that large to a subscriber unless
//! someone publishes a message far bigger than any client may send).

use std::io::{self, Read};

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

/// Why a link must be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// The bytes from Redis are not RESP2.
    NotResp,
    /// More than `max_input` bytes without a whole reply.
    ReplyTooLarge,
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkError::NotResp => "Redis sent bytes that are not RESP2",
            LinkError::ReplyTooLarge => "Redis sent a reply over the input bound",
        })
    }
}

/// A decoded reply, borrowing the link's input buffer.
#[derive(Clone, Copy)]
pub struct Reply<'a> {
    frame: &'a RangeFrame,
    buf: &'a [u8],
}

impl<'a> Reply<'a> {
    /// `+OK`, `+PONG`, ...
    pub fn status(&self) -> Option<&'a [u8]> {
        match self.frame {
            RangeFrame::SimpleString((a, b)) => self.buf.get(*a..*b),
            _ => None,
        }
    }

    /// `-ERR ...`
    pub fn error(&self) -> Option<&'a [u8]> {
        match self.frame {
            RangeFrame::Error((a, b)) => self.buf.get(*a..*b),
            _ => None,
        }
    }

    pub fn integer(&self) -> Option<i64> {
        match self.frame {
            RangeFrame::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn bulk(&self) -> Option<&'a [u8]> {
        match self.frame {
            RangeFrame::BulkString((a, b)) => self.buf.get(*a..*b),
            _ => None,
        }
    }

    /// The `i`th element of an array reply.
    pub fn item(&self, i: usize) -> Option<Reply<'a>> {
        match self.frame {
            RangeFrame::Array(items) => items.get(i).map(|frame| Reply { frame, buf: self.buf }),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        match self.frame {
            RangeFrame::Array(items) => items.len(),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Reply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.frame)
    }
}

/// Most arguments a command is encoded with without allocating (PUBLISH has 3, the history
/// scripts' EVALSHA 11).
const INLINE_ARGS: usize = 12;
/// Least free space offered to a read.
const READ_CHUNK: usize = 64 * 1024;

pub struct Link {
    output: Vec<u8>,
    input: Vec<u8>,
    max_output: usize,
    max_input: usize,
}

impl Link {
    pub fn new(max_output: usize, max_input: usize) -> Link {
        Link { output: Vec::new(), input: Vec::new(), max_output, max_input }
    }

    /// Forgets both directions (the connection is gone) and gives their memory back.
    pub fn reset(&mut self) {
        self.output = Vec::new();
        self.input = Vec::new();
    }

    /// Appends a command (an array of bulk strings), whatever the output bound: for the few
    /// small commands of the connection's own upkeep (AUTH, SELECT, SUBSCRIBE).
    pub fn command(&mut self, args: &[&[u8]]) {
        if args.len() <= INLINE_ARGS {
            let mut frames: [BorrowedFrame<'_>; INLINE_ARGS] = std::array::from_fn(|_| BorrowedFrame::Null);
            for (frame, arg) in frames.iter_mut().zip(args) {
                *frame = BorrowedFrame::BulkString(arg);
            }
            self.encode(&BorrowedFrame::Array(&frames[..args.len()]));
        } else {
            let frames: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
            self.encode(&BorrowedFrame::Array(&frames));
        }
    }

    /// Appends a command unless it would take the output past its bound; false when refused.
    pub fn command_bounded(&mut self, args: &[&[u8]]) -> bool {
        // The encoded size: `*N\r\n`, then `$len\r\n` + arg + `\r\n` each; digits bounded by 20.
        let estimate: usize = 4 + 20 + args.iter().map(|a| a.len() + 27).sum::<usize>();
        if self.output.len() + estimate > self.max_output {
            return false;
        }
        self.command(args);
        true
    }

    fn encode(&mut self, frame: &BorrowedFrame<'_>) {
        let len = frame.encode_len(false);
        let start = self.output.len();
        self.output.resize(start + len, 0);
        if let Err(e) = encode_borrowed(&mut self.output[start..], frame, false) {
            // Cannot happen: the buffer was sized by the encoder's own count.
            log::error!("RESP encoding failed: {e:?}");
            self.output.truncate(start);
        }
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
        if self.output.is_empty() && self.output.capacity() > 4 * READ_CHUNK {
            self.output = Vec::new();
        }
    }

    /// Bytes received (tests and callers that already hold them).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// One read from `source` into the input buffer; `Ok(0)` is end of stream.
    pub fn read_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK, 0);
        let result = source.read(&mut self.input[start..]);
        self.input.truncate(start + *result.as_ref().unwrap_or(&0));
        result
    }

    /// Hands every whole reply received so far to `on_reply`, in order, then drops their bytes.
    pub fn decode(&mut self, mut on_reply: impl FnMut(Reply<'_>)) -> Result<(), LinkError> {
        let mut pos = 0;
        let result = loop {
            match decode_range(&self.input[pos..]) {
                Ok(Some((frame, n))) => {
                    on_reply(Reply { frame: &frame, buf: &self.input[pos..pos + n] });
                    pos += n;
                }
                Ok(None) => {
                    break if self.input.len() - pos > self.max_input {
                        Err(LinkError::ReplyTooLarge)
                    } else {
                        Ok(())
                    };
                }
                Err(_) => break Err(LinkError::NotResp),
            }
        };
        self.input.drain(..pos);
        if self.input.is_empty() && self.input.capacity() > 4 * READ_CHUNK {
            self.input = Vec::new();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut link = Link::new(1 << 20, 1 << 20);
        link.command(&[b"PUBLISH", b"wshub:topic:news", b"N0 {}"]);
        link.command(&[b"SUBSCRIBE", b"a", b"b", b"c", b"d", b"e"]);
        assert_eq!(
            link.output(),
            &b"*3\r\n$7\r\nPUBLISH\r\n$16\r\nwshub:topic:news\r\n$5\r\nN0 {}\r\n\
               *6\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n"[..]
        );
        link.consume_output(4);
        assert!(link.output().starts_with(b"$7\r\nPUBLISH"));
    }

    #[test]
    fn bounded_commands_stop_at_the_bound() {
        let mut link = Link::new(200, 1 << 20);
        let payload = [b'x'; 60];
        let mut taken = 0;
        while link.command_bounded(&[b"PUBLISH", b"c", &payload]) {
            taken += 1;
            assert!(taken < 10);
        }
        assert!(taken >= 1);
        assert!(link.output().len() <= 200);
        link.consume_output(usize::MAX);
        assert!(link.command_bounded(&[b"PUBLISH", b"c", &payload]), "room again once written");
    }

    fn replies(link: &mut Link) -> Result<Vec<String>, LinkError> {
        let mut seen = Vec::new();
        link.decode(|r| seen.push(format!("{r:?}")))?;
        Ok(seen)
    }

    #[test]
    fn replies_split_anywhere_decode_once_whole() {
        let bytes = b"+OK\r\n:3\r\n*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhello\r\n-ERR no\r\n";
        for split in 0..bytes.len() {
            let mut link = Link::new(1 << 20, 1 << 20);
            let mut kinds = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                link.feed(part);
                link.decode(|r| {
                    kinds.push(if let Some(s) = r.status() {
                        format!("status {}", String::from_utf8_lossy(s))
                    } else if let Some(i) = r.integer() {
                        format!("int {i}")
                    } else if let Some(e) = r.error() {
                        format!("error {}", String::from_utf8_lossy(e))
                    } else {
                        let parts: Vec<_> = (0..r.len())
                            .map(|i| String::from_utf8_lossy(r.item(i).unwrap().bulk().unwrap()).into_owned())
                            .collect();
                        format!("array {}", parts.join(","))
                    })
                })
                .unwrap();
            }
            assert_eq!(
                kinds,
                ["status OK", "int 3", "array message,chan,hello", "error ERR no"],
                "split at {split}"
            );
        }
    }

    #[test]
    fn not_resp_is_an_error() {
        let mut link = Link::new(1 << 20, 1 << 20);
        link.feed(b"HTTP/1.1 400 Bad Request\r\n");
        assert_eq!(replies(&mut link), Err(LinkError::NotResp));
    }

    #[test]
    fn a_reply_over_the_input_bound_is_an_error_not_a_buffer() {
        let mut link = Link::new(1 << 20, 100);
        link.feed(b"$1000\r\n");
        link.feed(&[b'x'; 50]);
        assert_eq!(replies(&mut link), Ok(vec![]), "incomplete and under the bound: wait");
        link.feed(&[b'x'; 60]);
        assert_eq!(replies(&mut link), Err(LinkError::ReplyTooLarge));
    }

    #[test]
    fn reads_append_to_the_input() {
        let mut link = Link::new(1 << 20, 1 << 20);
        let mut source: &[u8] = b":1\r\n:2";
        assert_eq!(link.read_from(&mut source).unwrap(), 6);
        assert_eq!(replies(&mut link).unwrap().len(), 1);
        let mut source: &[u8] = b"\r\n";
        link.read_from(&mut source).unwrap();
        assert_eq!(replies(&mut link).unwrap(), ["Integer(2)"]);
    }
}
