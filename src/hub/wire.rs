//! The JSON side of the protocol: reading client messages and writing server messages.
//!
//! Reading borrows from the client's text: `data` and `id` stay [`RawValue`]s (their text is
//! validated once by the parser, never rebuilt), and strings are only copied when they carry
//! escapes. Writing appends compact JSON to a caller's buffer; the only value re-encoded is
//! a topic name, escaped by serde_json. A fan-out message is written into a [`Sink`] twice: once
//! to count its bytes, once into its exact-size shared frame, so it is never staged and copied.

use std::borrow::Cow;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::HubError;
use crate::backplane::Relay;
use crate::protocol::frame::ServerHeader;
use crate::protocol::OpCode;

/// A scratch buffer larger than this is released after use, so one big publish does not pin
/// its size in memory for the life of the server.
const SCRATCH_KEEP_CAPACITY: usize = 64 * 1024;

/// The envelope with every field optional and untyped, so that `id` can be echoed even when
/// `type` or `payload` turn out to be wrong.
#[derive(Deserialize)]
struct LooseEnvelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct JsonStr<'a>(#[serde(borrow)] Cow<'a, str>);

/// The message types a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Subscribe,
    Unsubscribe,
    Publish,
    Broadcast,
    /// A new connection token (only meaningful when tokens are required).
    Refresh,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "ping" => Kind::Ping,
            "subscribe" => Kind::Subscribe,
            "unsubscribe" => Kind::Unsubscribe,
            "publish" => Kind::Publish,
            "broadcast" => Kind::Broadcast,
            "refresh" => Kind::Refresh,
            _ => return None,
        })
    }
}

/// A client message whose envelope is well-formed; the payload is checked per type.
pub struct Envelope<'a> {
    pub kind: Kind,
    pub payload: Option<&'a RawValue>,
    pub id: Option<&'a RawValue>,
}

/// The envelope parsed as far as it could be: `id` is set whenever the text was a JSON object
/// carrying one, so errors about the rest can still be matched to the request.
pub struct Parsed<'a> {
    pub id: Option<&'a RawValue>,
    pub envelope: Result<Envelope<'a>, HubError>,
}

/// Payload of `subscribe` and `unsubscribe`.
#[derive(Deserialize)]
pub struct TopicPayload<'a> {
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
}

/// Payload of `subscribe`: a topic, and where the client stopped if it is recovering.
#[derive(Deserialize)]
pub struct SubscribePayload<'a> {
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    /// Kept raw and read by [`SubscribePayload::since`], which refuses arrays.
    #[serde(borrow, default)]
    since: Option<&'a RawValue>,
}

impl<'a> SubscribePayload<'a> {
    /// The `since` object, if any (`null` is none).
    pub fn since(&self, detail: &'static str) -> Result<Option<SincePayload<'a>>, HubError> {
        self.since.map(|raw| parse_object(raw.get(), detail)).transpose()
    }
}

/// `{"offset": O, "epoch": E}` in a `subscribe`.
#[derive(Deserialize)]
pub struct SincePayload<'a> {
    pub offset: u64,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

/// Payload of `publish` (and body of `POST /publish`).
#[derive(Deserialize)]
pub struct PublishPayload<'a> {
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// Payload of `broadcast` (and body of `POST /broadcast`).
#[derive(Deserialize)]
pub struct BroadcastPayload<'a> {
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// Payload of `refresh`.
#[derive(Deserialize)]
pub struct RefreshPayload<'a> {
    #[serde(borrow)]
    pub token: Cow<'a, str>,
}

/// Whether `text` (after JSON whitespace) is an object. serde's derived structs also accept
/// arrays (`["ping"]` would read as `{"type":"ping"}`), which the protocol does not.
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{')
}

/// Parses an object into `T`; any failure is "Invalid message format" with `detail` for logs.
pub fn parse_object<'a, T: Deserialize<'a>>(text: &'a str, detail: &'static str) -> Result<T, HubError> {
    if !is_object(text) {
        return Err(HubError::InvalidFormat { detail });
    }
    serde_json::from_str(text).map_err(|_| HubError::InvalidFormat { detail })
}

/// Deepest nesting of arrays and objects accepted in a message, as serde_json's own recursion
/// limit. serde_json does not apply that limit to values it only skips or keeps raw (`data`,
/// `id`, unknown fields), so without this check a 100 000-deep `[[[...]]]` is accepted and
/// forwarded to every subscriber, whose parsers may not survive it.
pub const MAX_NESTING: usize = 128;

/// What [`scan`] found wrong with a message's text before any parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFault {
    /// Arrays or objects nested deeper than [`MAX_NESTING`].
    TooDeep,
    /// A `\uD800`-`\uDFFF` escape that is not half of a high-low pair: not a character, so
    /// not valid I-JSON (RFC 7493 section 2.1). Strict parsers (serde_json decoding a string,
    /// JavaScript's `TextDecoder` after `JSON.parse`...) differ on it, so it is never forwarded.
    LoneSurrogate,
}

impl TextFault {
    pub fn into_error(self) -> HubError {
        HubError::InvalidFormat {
            detail: match self {
                TextFault::TooDeep => "nested too deeply",
                TextFault::LoneSurrogate => "lone surrogate escape in a string",
            },
        }
    }
}

/// The four hex digits of a `\u` escape starting at `bytes[at]` (the backslash), if there.
fn unicode_escape(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 6)?;
    if &digits[..2] != b"\\u" {
        return None;
    }
    let digits = std::str::from_utf8(&digits[2..]).ok()?;
    u16::from_str_radix(digits, 16).ok()
}

/// One pass over a message's bytes, skipping string contents except escapes, checking what the
/// parser does not: nesting depth (serde_json does not limit depth of values it only skips or
/// keeps raw: `data`, `id`, unknown fields) and lone surrogate escapes (which serde_json refuses
/// only when it decodes a string, so a raw `data` or `id` would carry them through). Anything
/// else malformed is left to the parser. Costs no allocation.
pub fn scan(text: &str) -> Result<(), TextFault> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'"' => in_string = false,
                b'\\' => {
                    match unicode_escape(bytes, i) {
                        Some(0xD800..=0xDBFF) => match unicode_escape(bytes, i + 6) {
                            Some(0xDC00..=0xDFFF) => i += 6,
                            _ => return Err(TextFault::LoneSurrogate),
                        },
                        Some(0xDC00..=0xDFFF) => return Err(TextFault::LoneSurrogate),
                        _ => {}
                    }
                    // Skip the escaped byte (for `\u`, the rest is hex digits: harmless).
                    i += 1;
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(TextFault::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Whether a topic name is acceptable text: no control characters (C0, DEL, C1). They can only
/// arrive escaped (`\u0000`), are never meant, and would end up in logs and metrics labels.
pub fn topic_has_control_char(topic: &str) -> bool {
    topic.chars().any(char::is_control)
}

/// Reads the envelope of one client message.
pub fn parse_envelope(text: &str) -> Parsed<'_> {
    if let Err(fault) = scan(text) {
        return Parsed { id: None, envelope: Err(fault.into_error()) };
    }
    let loose: LooseEnvelope<'_> = match parse_object(text, "not a JSON object") {
        Ok(loose) => loose,
        Err(e) => return Parsed { id: None, envelope: Err(e) },
    };
    let envelope = match loose.kind {
        None => Err(HubError::InvalidFormat { detail: "`type` is missing" }),
        Some(raw) => match serde_json::from_str::<JsonStr<'_>>(raw.get()) {
            Err(_) => Err(HubError::InvalidFormat { detail: "`type` is not a string" }),
            Ok(JsonStr(name)) => match Kind::from_name(&name) {
                None => Err(HubError::UnknownType),
                Some(kind) => Ok(Envelope { kind, payload: loose.payload, id: loose.id }),
            },
        },
    };
    Parsed { id: loose.id, envelope }
}

/// Where the message writers put bytes: a growing `Vec` (replies), a [`ByteCount`] (to size a
/// shared frame before it exists), or the shared frame itself (filled from the front).
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Counts what would be written.
#[derive(Debug, Default)]
pub struct ByteCount(pub usize);

impl Sink for ByteCount {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Fills a buffer sized by a [`ByteCount`] pass of the same writer. Bytes past its end (a
/// writer that wrote differently twice: a bug) are counted, not written, and never panic.
struct Fill<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Sink for Fill<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

/// serde_json writes through `io::Write`; a [`Sink`] never fails.
struct SinkWriter<'a, S: ?Sized>(&'a mut S);

impl<S: Sink + ?Sized> std::io::Write for SinkWriter<'_, S> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.put(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends `s` as a JSON string literal, escaped by serde_json.
pub fn push_json_str<S: Sink + ?Sized>(out: &mut S, s: &str) {
    // Not expected to fail: the sink cannot, and every str serializes. serde_json checks
    // nothing before writing, so even then the same input writes the same bytes every time.
    if let Err(e) = serde_json::to_writer(SinkWriter(out), s) {
        log::error!("escaping a JSON string failed: {e}");
    }
}

/// Appends `n` in decimal, without going through `fmt` (and its `Result`).
pub fn push_decimal<S: Sink + ?Sized>(out: &mut S, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put(&digits[start..]);
}

/// Appends `,"id":<raw>` when the client sent an id.
fn push_id<S: Sink + ?Sized>(out: &mut S, id: Option<&RawValue>) {
    if let Some(id) = id {
        out.put(b",\"id\":");
        out.put(id.get().as_bytes());
    }
}

/// `{"type":"pong"}`, with the id.
pub fn write_pong(out: &mut Vec<u8>, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"type\":\"pong\"");
    push_id(out, id);
    out.push(b'}');
}

/// `{"type":"subscribed"|"unsubscribed","payload":{"topic":T}}`, with the id.
pub fn write_topic_reply(out: &mut Vec<u8>, kind: &str, topic: &str, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"payload\":{\"topic\":");
    push_json_str(out, topic);
    out.push(b'}');
    push_id(out, id);
    out.push(b'}');
}

/// `{"type":"subscribed","payload":{"topic":T,"offset":O,"epoch":E,"recovered":R}}`, with the
/// id: `offset` and `epoch` when the topic has history, `recovered` when the client sent `since`.
pub fn write_subscribed<S: Sink + ?Sized>(
    out: &mut S,
    topic: &str,
    position: Option<(u64, &str)>,
    recovered: Option<bool>,
    id: Option<&RawValue>,
) {
    out.put(b"{\"type\":\"subscribed\",\"payload\":{\"topic\":");
    push_json_str(out, topic);
    if let Some((offset, epoch)) = position {
        out.put(b",\"offset\":");
        push_decimal(out, offset);
        out.put(b",\"epoch\":");
        push_json_str(out, epoch);
    }
    if let Some(recovered) = recovered {
        out.put(if recovered { b",\"recovered\":true" } else { b",\"recovered\":false" });
    }
    out.put(b"}");
    push_id(out, id);
    out.put(b"}");
}

/// `{"type":"ack","payload":{"topic":T,"delivered":n},"id":..}`; `topic` is absent for a
/// broadcast. With a backplane, `"backplane":true|false` says whether the message was handed
/// to it for the other nodes.
pub fn write_ack(out: &mut Vec<u8>, topic: Option<&str>, delivered: usize, relay: Relay, id: &RawValue) {
    out.extend_from_slice(b"{\"type\":\"ack\",\"payload\":{");
    if let Some(topic) = topic {
        out.extend_from_slice(b"\"topic\":");
        push_json_str(out, topic);
        out.push(b',');
    }
    out.extend_from_slice(b"\"delivered\":");
    push_decimal(out, delivered as u64);
    push_relay(out, relay);
    out.push(b'}');
    push_id(out, Some(id));
    out.push(b'}');
}

/// `{"type":"refreshed","payload":{"exp":E}}`, with the id.
pub fn write_refreshed(out: &mut Vec<u8>, exp: u64, id: Option<&RawValue>) {
    out.extend_from_slice(b"{\"type\":\"refreshed\",\"payload\":{\"exp\":");
    push_decimal(out, exp);
    out.push(b'}');
    push_id(out, id);
    out.push(b'}');
}

/// `,"backplane":true|false`, or nothing without a backplane.
pub fn push_relay(out: &mut Vec<u8>, relay: Relay) {
    match relay {
        Relay::Off => {}
        Relay::Sent => out.extend_from_slice(b",\"backplane\":true"),
        Relay::Failed => out.extend_from_slice(b",\"backplane\":false"),
    }
}

/// `{"type":"error","payload":{"message":M}}`, with the id.
pub fn write_error<S: Sink + ?Sized>(out: &mut S, message: &str, id: Option<&RawValue>) {
    out.put(b"{\"type\":\"error\",\"payload\":{\"message\":");
    push_json_str(out, message);
    out.put(b"}");
    push_id(out, id);
    out.put(b"}");
}

/// `{"type":"ack","payload":{"topic":T,"offset":O,"epoch":E,"backplane":true},"id":..}`: a
/// publish on history kept in Redis, numbered there (delivery to subscribers, this node's
/// included, comes from Redis, so there is no local count to report).
pub fn write_offset_ack<S: Sink + ?Sized>(out: &mut S, topic: &str, offset: u64, epoch: &str, id: &RawValue) {
    out.put(b"{\"type\":\"ack\",\"payload\":{\"topic\":");
    push_json_str(out, topic);
    out.put(b",\"offset\":");
    push_decimal(out, offset);
    out.put(b",\"epoch\":");
    push_json_str(out, epoch);
    out.put(b",\"backplane\":true}");
    push_id(out, Some(id));
    out.put(b"}");
}

/// `{"type":"message","payload":{"topic":T,"data":D}}`; without `topic` for a broadcast.
/// `data` is spliced as the client sent it.
pub fn write_message<S: Sink + ?Sized>(out: &mut S, topic: Option<&str>, data: &RawValue) {
    write_message_at(out, topic, data, None);
}

/// [`write_message`], with `,"offset":O` after `data` when the topic keeps history.
pub fn write_message_at<S: Sink + ?Sized>(
    out: &mut S,
    topic: Option<&str>,
    data: &RawValue,
    offset: Option<u64>,
) {
    out.put(b"{\"type\":\"message\",\"payload\":{");
    if let Some(topic) = topic {
        out.put(b"\"topic\":");
        push_json_str(out, topic);
        out.put(b",");
    }
    out.put(b"\"data\":");
    out.put(data.get().as_bytes());
    if let Some(offset) = offset {
        out.put(b",\"offset\":");
        push_decimal(out, offset);
    }
    out.put(b"}}");
}

/// Builds one whole server text frame straight into its shared buffer: `write_payload` runs once
/// into a [`ByteCount`] to size the frame, the exact-size `Rc<[u8]>` is allocated once, and the
/// header and a second run of `write_payload` fill it. No staging buffer and no copy of the
/// payload; the price is a zero-fill of the frame and a second pass over the (short) parts that
/// are encoded rather than spliced.
pub fn build_shared_text_frame(write_payload: impl Fn(&mut dyn Sink)) -> Rc<[u8]> {
    let mut count = ByteCount::default();
    write_payload(&mut count);
    let header = ServerHeader::new(true, OpCode::Text, count.0);
    let header = header.as_bytes();
    let len = header.len() + count.0;
    // An exact-size iterator (`TrustedLen`) is collected into one allocation of its length.
    let mut frame: Rc<[u8]> = std::iter::repeat_n(0u8, len).collect();
    if let Some(buf) = Rc::get_mut(&mut frame) {
        let mut fill = Fill { buf, pos: 0 };
        fill.put(header);
        write_payload(&mut fill);
        debug_assert_eq!(fill.pos, len, "the payload writer wrote differently twice");
        if fill.pos != len {
            log::error!("shared frame: sized {len} bytes, wrote {}", fill.pos);
        }
    }
    frame
}

/// Appends one whole server text frame whose payload `write_payload` produces, staging the
/// payload in `scratch` (replies are small; the copy is cheaper than computing lengths twice).
pub fn append_text_frame(out: &mut Vec<u8>, scratch: &mut Vec<u8>, write_payload: impl FnOnce(&mut Vec<u8>)) {
    scratch.clear();
    write_payload(scratch);
    crate::protocol::frame::write_frame(out, OpCode::Text, scratch);
    release_if_large(scratch);
}

fn release_if_large(scratch: &mut Vec<u8>) {
    if scratch.capacity() > SCRATCH_KEEP_CAPACITY {
        *scratch = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::parse_header;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn envelope_reads_type_payload_and_id() {
        let parsed = parse_envelope(r#" {"id": "a\"b", "payload": {"topic":"t"}, "type": "subscribe"} "#);
        assert_eq!(parsed.id.map(RawValue::get), Some(r#""a\"b""#));
        let env = parsed.envelope.unwrap();
        assert_eq!(env.kind, Kind::Subscribe);
        assert_eq!(env.payload.map(RawValue::get), Some(r#"{"topic":"t"}"#));
    }

    #[test]
    fn escaped_type_names_are_decoded() {
        let parsed = parse_envelope(r#"{"type":"p\u0069ng"}"#);
        assert_eq!(parsed.envelope.unwrap().kind, Kind::Ping);
    }

    #[test]
    fn envelope_errors_keep_the_id_when_it_was_readable() {
        let parsed = parse_envelope(r#"{"type":5,"id":7}"#);
        assert_eq!(parsed.id.map(RawValue::get), Some("7"));
        assert!(matches!(parsed.envelope, Err(HubError::InvalidFormat { .. })));

        let parsed = parse_envelope(r#"{"type":"nope","id":[1]}"#);
        assert_eq!(parsed.id.map(RawValue::get), Some("[1]"));
        assert!(matches!(parsed.envelope, Err(HubError::UnknownType)));

        let parsed = parse_envelope(r#"{"id":1,"type":"ping""#);
        assert!(parsed.id.is_none());
        assert!(matches!(parsed.envelope, Err(HubError::InvalidFormat { .. })));
    }

    #[test]
    fn non_objects_are_invalid() {
        for text in
            ["", " ", "null", "[\"ping\"]", "\"ping\"", "1", "{", "{\"type\":\"ping\",\"type\":\"ping\"}"]
        {
            let parsed = parse_envelope(text);
            assert!(matches!(parsed.envelope, Err(HubError::InvalidFormat { .. })), "{text:?}");
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_invalid() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let msg = |data: &str| format!(r#"{{"type":"publish","payload":{{"topic":"t","data":{data}}}}}"#);
        // The envelope and payload objects count: data may nest 126 deep here.
        assert!(parse_envelope(&msg(&nest(MAX_NESTING - 2))).envelope.is_ok());
        let deep = msg(&nest(MAX_NESTING - 1));
        assert!(matches!(parse_envelope(&deep).envelope, Err(HubError::InvalidFormat { .. })));
        // Brackets inside strings (escaped quotes included) are text, not nesting.
        let text = format!(r#"{{"type":"ping","id":"\"{}"}}"#, "[{".repeat(1000));
        assert!(parse_envelope(&text).envelope.is_ok());
    }

    #[test]
    fn null_id_means_no_id() {
        let parsed = parse_envelope(r#"{"type":"ping","id":null}"#);
        assert!(parsed.id.is_none());
    }

    #[test]
    fn payload_arrays_are_not_objects() {
        let r: Result<TopicPayload<'_>, _> = parse_object(r#"["t"]"#, "x");
        assert!(r.is_err());
        let r: TopicPayload<'_> = parse_object(r#"{"topic":"t","extra":1}"#, "x").unwrap();
        assert_eq!(r.topic, "t");
    }

    #[test]
    fn publish_payload_requires_data_but_data_may_be_null() {
        assert!(parse_object::<PublishPayload<'_>>(r#"{"topic":"t"}"#, "x").is_err());
        let p: PublishPayload<'_> = parse_object(r#"{"topic":"t","data":null}"#, "x").unwrap();
        assert_eq!(p.data.get(), "null");
    }

    #[test]
    fn decimal_edges() {
        for n in [0u64, 9, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[test]
    fn message_splices_data_and_escapes_topic() {
        let mut out = Vec::new();
        write_message(&mut out, Some("a\"b\n"), raw(r#"{"x": [1, 2]}"#));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"type":"message","payload":{"topic":"a\"b\n","data":{"x": [1, 2]}}}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["payload"]["topic"], "a\"b\n");
    }

    #[test]
    fn subscribed_and_message_carry_history_fields() {
        let mut out = Vec::new();
        write_subscribed(&mut out, "t", Some((7, "ab")), Some(true), Some(raw("1")));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"type":"subscribed","payload":{"topic":"t","offset":7,"epoch":"ab","recovered":true},"id":1}"#
        );
        out.clear();
        write_subscribed(&mut out, "t", None, Some(false), None);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"type":"subscribed","payload":{"topic":"t","recovered":false}}"#
        );
        out.clear();
        write_message_at(&mut out, Some("t"), raw("[1]"), Some(12));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"type":"message","payload":{"topic":"t","data":[1],"offset":12}}"#
        );
    }

    #[test]
    fn since_must_have_an_offset_and_an_epoch() {
        let p: SubscribePayload<'_> =
            parse_object(r#"{"topic":"t","since":{"offset":3,"epoch":"e"}}"#, "x").unwrap();
        let since = p.since("x").unwrap().unwrap();
        assert_eq!((since.offset, &*since.epoch), (3, "e"));
        for bad in [
            r#"{"topic":"t","since":{"offset":-1,"epoch":"e"}}"#,
            r#"{"topic":"t","since":{"offset":1}}"#,
            r#"{"topic":"t","since":{"epoch":"e"}}"#,
            r#"{"topic":"t","since":{"offset":1.5,"epoch":"e"}}"#,
            r#"{"topic":"t","since":[1,"e"]}"#,
        ] {
            let p = parse_object::<SubscribePayload<'_>>(bad, "x");
            assert!(p.is_err() || p.unwrap().since("x").is_err(), "{bad}");
        }
        let p: SubscribePayload<'_> = parse_object(r#"{"topic":"t","since":null}"#, "x").unwrap();
        assert!(p.since("x").unwrap().is_none(), "null since is no since");
    }

    #[test]
    fn shared_frame_has_the_minimal_header() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let frame = build_shared_text_frame(|out| out.put(&payload));
            let h = parse_header(&frame).unwrap().unwrap();
            assert_eq!(h.opcode, OpCode::Text);
            assert!(h.fin);
            assert_eq!(h.payload_len, len as u64);
            assert_eq!(frame.len(), h.header_len + len, "exact size");
            assert_eq!(&frame[h.header_len..], &payload[..]);
        }
    }

    /// Built in place, the shared frame holds exactly what the appending writers produce, for
    /// topics whose escaping changes their length (quotes, controls, non-ASCII) and for every
    /// header size.
    #[test]
    fn shared_message_frame_matches_the_appended_one() {
        let medium = format!("\"{}\"", "x".repeat(200));
        let big = format!("[{}1]", "1,".repeat(40_000));
        for topic in [None, Some(""), Some("t"), Some("a\"b\\c\n\u{1}\u{7f}"), Some("é😀")] {
            for data in ["null", r#"{"x": [1, 2]}"#, &medium, &big] {
                let data = raw(data);
                let mut payload = Vec::new();
                write_message(&mut payload, topic, data);
                let mut expected = Vec::new();
                crate::protocol::frame::write_frame(&mut expected, OpCode::Text, &payload);
                let frame = build_shared_text_frame(|out| write_message(out, topic, data));
                assert_eq!(&frame[..], &expected[..], "topic {topic:?}");
            }
        }
    }
}
