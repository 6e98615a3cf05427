//! Invariant checks for plain HTTP requests (publish API, `/healthz`, `/metrics`), shared by the
//! `http_request` fuzz target and the stable replay test (which includes this file and
//! `checks.rs` with `#[path]`).
//!
//! Input: a policy byte (API key or not, loopback peer or not, history or not, demo page,
//! origin policy), a byte for the body limit and the head limit, chunk sizes, then the request
//! bytes. The driver does what the reactor does (`server::accept::on_request`,
//! `server::http_route::on_http`): parse the head as bytes arrive, leave upgrades and the
//! WebSocket path to the handshake target, turn the head into a request
//! ([`http::request_from_head`]), plan the body ([`http::body_plan`]), answer
//! `Expect: 100-continue` once while the body is short, and answer with [`http::respond`] on a
//! real [`Hub`] whose subscribers record what they get.
//!
//! Checks: nothing panics; the head's answer is the same whether the bytes came whole or in
//! pieces; every response is a valid HTTP/1.1 response (status line parses, status documented,
//! one `Content-Length` equal to the body length, no body for a HEAD, `Connection: close`);
//! a 200 publish or broadcast delivered exactly the body's `data` (byte for byte) to exactly
//! the topic's subscribers (everyone for a broadcast) and said how many; anything else
//! delivered nothing; and before the body has arrived no allocation is larger than
//! [`PRE_BODY_ALLOCATION`], whatever `Content-Length` claims (measured by [`CountingAlloc`]
//! when the binary installs it: the fuzz target and the replay test do).

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use wshub::http::{self, HttpConfig, HttpContext, HttpRequest, Response};
use wshub::hub::history::{HistoryConfig, MemoryHistory};
use wshub::hub::{ClientId, Hub, HubConfig, Outbox};
use wshub::metrics::Metrics;
use wshub::protocol::deflate::{DeflateStats, SharedMessage};
use wshub::protocol::frame::OpCode;
use wshub::protocol::handshake::{self, OriginPolicy, Rejection};

use super::checks::{chunks, parse_server_frames, Reader};

/// The WebSocket path: requests for it go to the handshake, not here.
const WS_PATH: &str = "/ws";
/// Subscribers of the hub, and the topics each is subscribed to.
const SUBSCRIPTIONS: &[&[&str]] = &[&["news"], &["news", "sport"], &[], &["a\"b", "日本"]];
const CLIENTS: usize = SUBSCRIPTIONS.len();
/// The HTTP connection asking (not a hub client).
const CALLER: ClientId = 1000;
const API_KEY: &str = "fuzz-key";
/// The largest allocation allowed while the body has not arrived: the head is already in the
/// buffer, so anything larger is sized by what the client claims.
pub const PRE_BODY_ALLOCATION: usize = 4096;
/// The statuses a plain HTTP request may get (`http` module header, `request_from_head`,
/// `parse_head`).
const DOCUMENTED: &[u16] = &[200, 400, 401, 403, 404, 405, 411, 413, 415, 431, 503];

// ---------------------------------------------------------------------------------------------
// The largest allocation, per thread, while armed
// ---------------------------------------------------------------------------------------------

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, noting the largest allocation this thread asks for while armed
/// ([`largest_allocation`]). Thread-local, so parallel tests do not see each other's.
pub struct CountingAlloc;

fn note(size: usize) {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; `note` neither allocates nor panics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Runs `f` and returns the largest allocation it made, or `None` when [`CountingAlloc`] is not
/// the global allocator (then nothing can be measured).
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let probe = std::hint::black_box(Vec::<u8>::with_capacity(1));
    let installed = LARGEST.with(Cell::get) > 0;
    drop(probe);
    LARGEST.with(|l| l.set(0));
    let result = f();
    ARMED.with(|a| a.set(false));
    (result, installed.then(|| LARGEST.with(Cell::get)))
}

// ---------------------------------------------------------------------------------------------
// The hub side
// ---------------------------------------------------------------------------------------------

/// Every frame each subscriber got, and how many broadcasts went to everyone.
#[derive(Default, Debug, PartialEq, Eq)]
struct Recorder {
    frames: Vec<(ClientId, Vec<u8>)>,
}

impl Outbox for Recorder {
    fn deliver(&mut self, client: ClientId, message: &SharedMessage) -> bool {
        assert!(client < CLIENTS, "delivery to unknown client {client}");
        self.frames.push((client, message.plain().to_vec()));
        true
    }

    fn deliver_all(&mut self, message: &SharedMessage) -> usize {
        (0..CLIENTS).filter(|&c| self.deliver(c, message)).count()
    }
}

struct Setup {
    cfg: HttpConfig,
    loopback: bool,
    history: bool,
    max_head: usize,
}

fn setup_from(policy: u8, limits: u8) -> Setup {
    let origins = match (policy >> 4) & 3 {
        0 => OriginPolicy::SameHost,
        1 => OriginPolicy::Any,
        _ => OriginPolicy::AllowList(vec!["http://localhost:8080".into(), "https://app.example.com".into()]),
    };
    let api_key = match policy & 1 {
        0 => None,
        // An empty key counts as none (a trivially guessable key).
        _ if policy & 0x40 != 0 => Some(String::new()),
        _ => Some(API_KEY.into()),
    };
    let max_body_bytes = [0, 16, 300, 64 * 1024, 1 << 20][usize::from(limits & 7) % 5];
    let max_head = [handshake::DEFAULT_MAX_HEAD_LEN, 512, 128, 1024][usize::from((limits >> 3) & 3)];
    Setup {
        cfg: HttpConfig { api_key, max_body_bytes, origins, demo: policy & 8 != 0 },
        loopback: policy & 2 != 0,
        history: policy & 4 != 0,
        max_head,
    }
}

fn new_hub(history: bool) -> (Hub, Metrics) {
    let mut hub = Hub::new(HubConfig::default());
    if history {
        let config = HistoryConfig { size: 4, ttl: 60_000, max_bytes: 1 << 16, max_topics: 16 };
        hub = hub.with_history(Box::new(MemoryHistory::new(config, 7)));
    }
    let mut metrics = Metrics::default();
    let mut reply = Vec::new();
    let mut outbox = Recorder::default();
    for (client, topics) in SUBSCRIPTIONS.iter().enumerate() {
        for topic in *topics {
            let mut text = String::from(r#"{"type":"subscribe","payload":{"topic":"#);
            text.push_str(&serde_json::to_string(topic).unwrap());
            text.push_str("}}");
            reply.clear();
            hub.handle_text(client, &text, &mut reply, &mut outbox, &mut metrics);
            let frames = parse_server_frames(&reply);
            assert!(
                frames.len() == 1 && frames[0].payload.starts_with(br#"{"type":"subscribed""#),
                "{client} subscribing to {topic:?}: {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
    }
    assert!(outbox.frames.is_empty(), "subscribing delivered messages");
    (hub, metrics)
}

// ---------------------------------------------------------------------------------------------
// Driving a request
// ---------------------------------------------------------------------------------------------

/// How a request ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Not all of the head or body came.
    Incomplete,
    /// An upgrade or the WebSocket path: the handshake's business.
    NotHttp,
    /// Refused by the head parser or the framing rules (`Rejection`).
    Rejected(u16),
    /// Refused by `body_plan` before the body.
    Refused(u16),
    /// Answered by `respond`.
    Answered(u16),
}

struct Outcome {
    end: End,
    /// The final response's bytes (a `100 Continue` is not in them).
    response: Vec<u8>,
    /// `100 Continue`s written.
    continues: usize,
    recorder: Recorder,
}

/// Reads `pieces` as the reactor would and answers the request.
fn drive(setup: &Setup, pieces: &mut dyn Iterator<Item = &[u8]>) -> Outcome {
    let (mut hub, mut metrics) = new_hub(setup.history);
    let mut recorder = Recorder::default();
    let mut response = Vec::new();
    let mut continues = 0;
    let mut awaiting_body = false;
    let mut buf: Vec<u8> = Vec::new();
    let mut end = End::Incomplete;
    for piece in pieces {
        buf.extend_from_slice(piece);
        let head = match handshake::parse_head(&buf, setup.max_head) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert!(buf.len() < setup.max_head, "incomplete head of {} bytes not refused", buf.len());
                continue;
            }
            Err(rejection) => {
                assert!(matches!(rejection.status, 400 | 431), "parse_head refused with {rejection:?}");
                rejection.write_response(&mut response);
                check_response(&response, false, rejection.status);
                end = End::Rejected(rejection.status);
                break;
            }
        };
        if head.is_upgrade() || head.path() == WS_PATH {
            end = End::NotHttp;
            break;
        }
        let is_head = head.method == "HEAD";
        // Before the body: the head's request, the plan and the 100-continue decision, with no
        // allocation sized by the claimed length.
        let (plan, largest) = largest_allocation(|| {
            let request = http::request_from_head(&head, setup.loopback)?;
            let planned = http::body_plan(&request, &setup.cfg);
            Ok::<_, Rejection>((request, planned, http::wants_continue(&head)))
        });
        if let Some(largest) = largest {
            assert!(
                largest <= PRE_BODY_ALLOCATION,
                "an allocation of {largest} bytes before the body (Content-Length {:?})",
                head.content_length()
            );
        }
        let (request, planned, go_ahead) = match plan {
            Ok(plan) => plan,
            Err(rejection) => {
                assert!(matches!(rejection.status, 400 | 411), "framing refused with {rejection:?}");
                rejection.write_response(&mut response);
                check_response(&response, is_head, rejection.status);
                end = End::Rejected(rejection.status);
                break;
            }
        };
        check_request(&request, &head);
        let body_len = match planned {
            Ok(n) => n,
            Err(refusal) => {
                assert_ne!(refusal.status, 200, "body_plan refused with 200");
                refusal.write_to(&mut response);
                check_response(&response, is_head, refusal.status);
                end = End::Refused(refusal.status);
                break;
            }
        };
        assert!(body_len <= setup.cfg.max_body_bytes, "a body of {body_len} planned");
        assert_eq!(body_len == 0, !request_takes_body(&request) || request.content_length == Some(0));
        let have = buf.len() - head.head_len;
        if have < body_len {
            if go_ahead && !std::mem::replace(&mut awaiting_body, true) {
                continues += 1;
            }
            awaiting_body = true;
            continue;
        }
        let body = &buf[head.head_len..head.head_len + body_len];
        let answer = http::respond(
            &request,
            body,
            &setup.cfg,
            &mut HttpContext {
                caller: CALLER,
                hub: &mut hub,
                outbox: &mut recorder,
                metrics: &mut metrics,
                uptime_seconds: 12,
                connections: 3,
                backplane: None,
                deflate: DeflateStats::default(),
            },
        )
        .expect("only history kept in Redis holds an answer");
        answer.write_to(&mut response);
        let body_out = check_response(&response, is_head, answer.status);
        check_delivery(&request, body, &answer, body_out, &recorder);
        end = End::Answered(answer.status);
        break;
    }
    if !matches!(end, End::Answered(200)) {
        assert!(recorder.frames.is_empty(), "{end:?} delivered {} frame(s)", recorder.frames.len());
    }
    Outcome { end, response, continues, recorder }
}

fn request_takes_body(req: &HttpRequest<'_>) -> bool {
    req.method == "POST" && matches!(route_path(req), "/publish" | "/broadcast")
}

fn route_path<'a>(req: &HttpRequest<'a>) -> &'a str {
    req.path.split_once('?').map_or(req.path, |(path, _)| path)
}

/// The request says what the head says.
fn check_request(req: &HttpRequest<'_>, head: &handshake::RequestHead<'_>) {
    assert_eq!(req.method, head.method);
    assert_eq!(req.content_length, head.content_length().expect("accepted, so well-formed"));
    assert!(!head.has_transfer_encoding(), "a Transfer-Encoding accepted");
    assert_eq!(req.host, head.host().expect("accepted, so one Host"));
    assert_eq!(req.authorization, head.header("authorization"));
}

/// A complete, valid HTTP/1.1 response with `status`: returns its body.
fn check_response(bytes: &[u8], is_head: bool, status: u16) -> &[u8] {
    assert!(DOCUMENTED.contains(&status), "undocumented status {status}");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("response does not parse ({other:?}): {:?}", String::from_utf8_lossy(bytes)),
    };
    assert_eq!(parsed.version, Some(1), "not HTTP/1.1");
    assert_eq!(parsed.code, Some(status));
    assert_eq!(parsed.reason, Some(handshake::status_text(status)));
    let lengths: Vec<&[u8]> = parsed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    assert_eq!(lengths.len(), 1, "{} Content-Length headers", lengths.len());
    let length: usize = std::str::from_utf8(lengths[0]).unwrap().parse().expect("a decimal Content-Length");
    assert!(
        parsed.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection")
            && h.value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))),
        "no Connection: close"
    );
    let body = &bytes[head_len..];
    if is_head {
        assert!(body.is_empty(), "a HEAD answered with {} body bytes", body.len());
    } else {
        assert_eq!(body.len(), length, "Content-Length {length}, body {}", body.len());
    }
    body
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Delivered {
    delivered: usize,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    payload: Payload<'a>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[allow(dead_code)]
    offset: Option<u64>,
}

/// A 200 publish or broadcast delivered the body's `data` to exactly its recipients, and said
/// how many; nothing else delivered anything.
fn check_delivery(req: &HttpRequest<'_>, body: &[u8], answer: &Response, body_out: &[u8], rec: &Recorder) {
    if answer.status != 200 || !request_takes_body(req) {
        assert!(rec.frames.is_empty(), "{} {} answered {} delivered", req.method, req.path, answer.status);
        return;
    }
    let text = std::str::from_utf8(body).expect("a 200 publish has a UTF-8 body");
    let (topic, data) = if route_path(req) == "/publish" {
        let parsed: PublishBody<'_> = serde_json::from_str(text).expect("a 200 publish has a valid body");
        (Some(parsed.topic), parsed.data)
    } else {
        let parsed: BroadcastBody<'_> = serde_json::from_str(text).expect("a 200 broadcast has a valid body");
        (None, parsed.data)
    };
    let expected: BTreeSet<ClientId> = match &topic {
        Some(topic) => (0..CLIENTS).filter(|&c| SUBSCRIPTIONS[c].contains(&topic.as_ref())).collect(),
        None => (0..CLIENTS).collect(),
    };
    let got: Vec<ClientId> = rec.frames.iter().map(|(c, _)| *c).collect();
    let got_set: BTreeSet<ClientId> = got.iter().copied().collect();
    assert_eq!(got.len(), got_set.len(), "a subscriber got the message twice");
    assert_eq!(got_set, expected, "recipients of {topic:?}");
    let said: Delivered = serde_json::from_slice(body_out).expect("{\"delivered\":n}");
    assert_eq!(said.delivered, expected.len(), "delivered count");
    for (client, frame) in &rec.frames {
        let frames = parse_server_frames(frame);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].opcode, OpCode::Text);
        let text = std::str::from_utf8(&frames[0].payload).expect("a UTF-8 text frame");
        let message: Message<'_> = serde_json::from_str(text).expect("a JSON message");
        assert_eq!(message.kind, "message");
        assert_eq!(message.payload.topic.as_deref(), topic.as_deref(), "topic to {client}");
        assert_eq!(message.payload.data.get(), data.get(), "data to {client}");
    }
}

/// The `http_request` target.
pub fn check_http_request(data: &[u8]) {
    run_http_request(data);
}

/// Runs the checks and says how the request (in pieces) ended: the status it got (`None`:
/// incomplete or not plain HTTP), the frames delivered and the `100 Continue`s written. For
/// tests that a seed gets as far as it means to.
pub fn run_http_request(data: &[u8]) -> (Option<u16>, usize, usize) {
    let mut r = Reader::new(data);
    let setup = setup_from(r.u8(), r.u8());
    let n = usize::from(r.u8() % 16);
    let sizes = r.bytes(n).to_vec();
    let request = r.rest();
    let pieces = drive(&setup, &mut chunks(request, &sizes).into_iter());
    let whole = drive(&setup, &mut std::iter::once(request));
    // Whole or in pieces, the same answer and the same deliveries. A client waits for its body
    // in pieces whenever it does whole (and maybe more often), and is told to go on once.
    match (&pieces.end, &whole.end) {
        // A partial head that reaches the head limit is refused as too large (431) before the
        // byte that makes it malformed arrives; whole, that byte answers first (400). Both
        // refuse, and only the reactor's reads decide which refusal comes first.
        (End::Rejected(431), End::Rejected(_)) => return (Some(431), 0, 0),
        (a, b) => assert_eq!(a, b, "in pieces vs whole"),
    }
    assert_eq!(pieces.response, whole.response, "in pieces vs whole");
    assert_eq!(pieces.recorder, whole.recorder, "in pieces vs whole");
    assert!(
        whole.continues <= pieces.continues && pieces.continues <= 1,
        "{} then {}",
        whole.continues,
        pieces.continues
    );
    let status = match pieces.end {
        End::Rejected(s) | End::Refused(s) | End::Answered(s) => Some(s),
        End::Incomplete | End::NotHttp => None,
    };
    (status, pieces.recorder.frames.len(), pieces.continues)
}
