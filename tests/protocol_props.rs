//! Property tests of the sans-IO core: messages survive encoding, fragmentation and masking;
//! a byte stream means the same whatever the read boundaries; masking is an involution.

mod protocol_driver;

use proptest::prelude::*;
use proptest::sample::Index;
use protocol_driver::*;
use wshub::protocol::frame::{self, OpCode, ServerHeader};
use wshub::protocol::handshake::{accept_key, is_valid_key};
use wshub::protocol::mask::apply_mask;
use wshub::protocol::SessionConfig;

fn config() -> SessionConfig {
    SessionConfig { max_message_size: 1 << 20, ping_interval: None, pong_wait: None, close_timeout: 1_000 }
}

/// A data message as the application sees it.
#[derive(Clone, Debug)]
enum Message {
    Text(String),
    Binary(Vec<u8>),
}

impl Message {
    fn bytes(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }

    fn opcode(&self) -> OpCode {
        match self {
            Message::Text(_) => OpCode::Text,
            Message::Binary(_) => OpCode::Binary,
        }
    }

    fn event(&self) -> Ev {
        match self {
            Message::Text(s) => Ev::Text(s.clone()),
            Message::Binary(b) => Ev::Binary(b.clone()),
        }
    }
}

/// Mostly small, sometimes up to ~70 KiB (past the 16-bit length encoding).
fn message() -> impl Strategy<Value = Message> {
    let small_text =
        prop::collection::vec(any::<char>(), 0..64).prop_map(|c| Message::Text(c.into_iter().collect()));
    let big_text =
        prop::collection::vec(any::<char>(), 0..18_000).prop_map(|c| Message::Text(c.into_iter().collect()));
    let small_bin = prop::collection::vec(any::<u8>(), 0..200).prop_map(Message::Binary);
    let big_bin = prop::collection::vec(any::<u8>(), 60_000..72_000).prop_map(Message::Binary);
    prop_oneof![4 => small_text, 1 => big_text, 4 => small_bin, 1 => big_bin]
}

/// A control frame the client may slip in between fragments.
#[derive(Clone, Debug)]
struct Control {
    ping: bool,
    payload: Vec<u8>,
    key: [u8; 4],
}

fn control() -> impl Strategy<Value = Control> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..=125), any::<[u8; 4]>())
        .prop_map(|(ping, payload, key)| Control { ping, payload, key })
}

/// One message, how it is cut into frames, the mask key of each frame and the control frames
/// that come before each frame.
#[derive(Clone, Debug)]
struct Fragmented {
    message: Message,
    cuts: Vec<Index>,
    keys: Vec<[u8; 4]>,
    controls: Vec<(Index, Control)>,
}

fn fragmented() -> impl Strategy<Value = Fragmented> {
    (
        message(),
        prop::collection::vec(any::<Index>(), 0..6),
        prop::collection::vec(any::<[u8; 4]>(), 1..8),
        prop::collection::vec((any::<Index>(), control()), 0..4),
    )
        .prop_map(|(message, cuts, keys, controls)| Fragmented { message, cuts, keys, controls })
}

impl Fragmented {
    /// The client's bytes, the events they must produce and the server's expected answer.
    fn encode(&self, wire: &mut Vec<u8>, events: &mut Vec<Ev>, out: &mut Vec<u8>) {
        let payload = self.message.bytes();
        let mut cuts: Vec<usize> = self.cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
        cuts.push(0);
        cuts.push(payload.len());
        cuts.sort_unstable();
        // Empty fragments (repeated cuts) are legal; keep them.
        let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
        let pieces = if pieces.is_empty() { vec![payload] } else { pieces };
        for (i, piece) in pieces.iter().enumerate() {
            // Controls go before a frame (between messages or between fragments), never inside one.
            for (at, c) in &self.controls {
                if at.index(pieces.len()) == i {
                    let opcode = if c.ping { OpCode::Ping } else { OpCode::Pong };
                    wire.extend(client_keyed(true, opcode, c.key, &c.payload));
                    if c.ping {
                        events.push(Ev::Ping(c.payload.clone()));
                        frame::write_frame(out, OpCode::Pong, &c.payload);
                    } else {
                        events.push(Ev::Pong(c.payload.clone()));
                    }
                }
            }
            let opcode = if i == 0 { self.message.opcode() } else { OpCode::Continuation };
            let fin = i == pieces.len() - 1;
            let key = self.keys[i % self.keys.len()];
            wire.extend(client_keyed(fin, opcode, key, piece));
        }
        events.push(self.message.event());
    }
}

/// Turns random indices into chunk sizes that cover `len` bytes.
fn chunk_sizes(len: usize, splits: &[Index]) -> Vec<usize> {
    let mut points: Vec<usize> = splits.iter().map(|i| i.index(len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Feeds `bytes` split exactly at the chunk sizes given.
fn feed_exact(
    d: &mut Driver,
    bytes: &[u8],
    sizes: &[usize],
) -> Result<(), wshub::protocol::session::ProtocolError> {
    let mut start = 0;
    for &size in sizes {
        d.feed(&bytes[start..start + size])?;
        start += size;
    }
    assert_eq!(start, bytes.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// (1) Any message, fragmented anyhow with any mask keys, comes back whole.
    #[test]
    fn message_round_trips_through_fragmentation_and_masking(
        msg in fragmented(),
        splits in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut wire = Vec::new();
        let mut events = Vec::new();
        let mut out = Vec::new();
        msg.encode(&mut wire, &mut events, &mut out);

        let mut d = Driver::new(config());
        d.feed(&wire).unwrap();
        prop_assert_eq!(&d.events, &events);
        prop_assert_eq!(&d.out, &out);

        let mut d = Driver::new(config());
        feed_exact(&mut d, &wire, &chunk_sizes(wire.len(), &splits)).unwrap();
        prop_assert_eq!(&d.events, &events);
        prop_assert_eq!(&d.out, &out);
        prop_assert_eq!(d.session.buffered(), 0);
        prop_assert!(d.pending.is_empty());
    }

    /// (1b) A server frame parses back to its header and payload.
    #[test]
    fn server_frames_round_trip(payload in prop::collection::vec(any::<u8>(), 0..70_000), binary in any::<bool>()) {
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        let built = frame::build_frame(opcode, &payload);
        let h = frame::parse_header(&built).unwrap().unwrap();
        prop_assert_eq!(h.opcode, opcode);
        prop_assert!(h.fin);
        prop_assert_eq!(h.mask, None);
        prop_assert_eq!(h.payload_len, payload.len() as u64);
        prop_assert_eq!(h.header_len, ServerHeader::new(true, opcode, payload.len()).as_bytes().len());
        prop_assert_eq!(&built[h.header_len..], &payload[..]);
    }

    /// (2) A stream of messages with interleaved pings and pongs gives the same events and the
    /// same output bytes in any chunking, 1-byte chunks included.
    #[test]
    fn any_chunking_gives_the_same_events_and_output(
        msgs in prop::collection::vec(fragmented(), 1..5),
        splits in prop::collection::vec(any::<Index>(), 0..40),
        close in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        let mut events = Vec::new();
        let mut out = Vec::new();
        for m in &msgs {
            m.encode(&mut wire, &mut events, &mut out);
        }
        if close {
            wire.extend(client_close(1000, b"done"));
            events.push(Ev::Closed { code: Some(1000), reason: "done".into() });
            frame::write_close(&mut out, 1000, "");
        }

        let mut whole = Driver::new(config());
        whole.feed(&wire).unwrap();
        prop_assert_eq!(&whole.events, &events);
        prop_assert_eq!(&whole.out, &out);
        prop_assert_eq!(whole.session.is_closed(), close);

        let mut chunked = Driver::new(config());
        feed_exact(&mut chunked, &wire, &chunk_sizes(wire.len(), &splits)).unwrap();
        prop_assert_eq!(&chunked.events, &events);
        prop_assert_eq!(&chunked.out, &out);

        if wire.len() < 40_000 {
            let mut bytewise = Driver::new(config());
            bytewise.feed_bytewise(&wire).unwrap();
            prop_assert_eq!(&bytewise.events, &events);
            prop_assert_eq!(&bytewise.out, &out);
        }
    }

    /// (2b) Even a corrupted stream means the same in any chunking: same events, same error,
    /// same output, same unconsumed tail.
    #[test]
    fn corrupted_streams_fail_the_same_in_any_chunking(
        msgs in prop::collection::vec(fragmented(), 1..4),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        splits in prop::collection::vec(any::<Index>(), 0..40),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            m.encode(&mut wire, &mut Vec::new(), &mut Vec::new());
        }
        for (at, x) in &flips {
            let i = at.index(wire.len());
            wire[i] ^= x;
        }
        let cfg = SessionConfig { max_message_size: 100_000, ..config() };
        let mut whole = Driver::new(cfg.clone());
        let whole_result = whole.feed(&wire).map(|_| ());
        let mut chunked = Driver::new(cfg);
        let chunked_result = feed_exact(&mut chunked, &wire, &chunk_sizes(wire.len(), &splits));
        prop_assert_eq!(whole_result, chunked_result);
        prop_assert_eq!(&whole.events, &chunked.events);
        prop_assert_eq!(&whole.out, &chunked.out);
        prop_assert_eq!(&whole.pending, &chunked.pending);
        prop_assert_eq!(whole.session.buffered(), chunked.session.buffered());
        if whole_result.is_err() {
            let frames = whole.out_frames();
            prop_assert_eq!(frames.iter().filter(|f| f.opcode == OpCode::Close).count(), 1);
            prop_assert_eq!(frames.last().map(|f| f.opcode), Some(OpCode::Close));
        }
    }

    /// (3) Masking twice is the identity for any key, offset and alignment; masking in pieces
    /// equals masking whole.
    #[test]
    fn masking_twice_is_identity(
        data in prop::collection::vec(any::<u8>(), 0..300),
        key in any::<[u8; 4]>(),
        offset in any::<usize>(),
        align in 0usize..8,
        split in any::<Index>(),
    ) {
        let mut buf = vec![0u8; align];
        buf.extend_from_slice(&data);
        let region = &mut buf[align..];
        apply_mask(region, key, offset);
        let masked = region.to_vec();
        for (i, (&m, &d)) in masked.iter().zip(&data).enumerate() {
            prop_assert_eq!(m, d ^ key[(offset.wrapping_add(i)) % 4]);
        }
        apply_mask(region, key, offset);
        prop_assert_eq!(&*region, &data[..]);

        let mut pieces = data.clone();
        let at = split.index(data.len() + 1);
        let (a, b) = pieces.split_at_mut(at);
        apply_mask(a, key, offset);
        apply_mask(b, key, offset.wrapping_add(at));
        prop_assert_eq!(pieces, masked);
    }

    /// A key is valid exactly when it is base64 of 16 bytes; its accept value is 28 base64
    /// characters that decode to a 20-byte SHA-1.
    #[test]
    fn keys_of_16_bytes_and_only_those_are_valid(raw in prop::collection::vec(any::<u8>(), 0..40)) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.encode(&raw);
        prop_assert_eq!(is_valid_key(key.as_bytes()), raw.len() == 16);
        let accept = accept_key(key.as_bytes());
        prop_assert_eq!(b64.decode(accept).map(|d| d.len()), Ok(20));
    }
}
