use std::rc::Rc;

use serde_json::{json, Value};

use super::*;
use crate::hub::tests::FakeOutbox;
use crate::hub::HubConfig;

const KEY: &str = "s3cret-key";

struct Server {
    hub: Hub,
    outbox: FakeOutbox,
    metrics: Metrics,
}

impl Server {
    fn new() -> Server {
        Server {
            hub: Hub::new(HubConfig::default()),
            outbox: FakeOutbox::with_clients([1, 2, 3]),
            metrics: Metrics::default(),
        }
    }

    /// Runs the request the way the reactor does: plan (counting a refusal, as `respond`
    /// counts its own responses), then respond with the body.
    fn call(&mut self, req: &HttpRequest<'_>, body: &[u8], cfg: &HttpConfig) -> Response {
        if let Err(refusal) = body_plan(req, cfg) {
            self.metrics.http_response(refusal.status);
            return refusal;
        }
        let mut ctx = HttpContext {
            caller: 9,
            hub: &mut self.hub,
            outbox: &mut self.outbox,
            metrics: &mut self.metrics,
            uptime_seconds: 42,
            connections: 3,
            backplane: None,
            deflate: Default::default(),
        };
        respond(req, body, cfg, &mut ctx).expect("answered at once without a backplane")
    }

    fn subscribe(&mut self, client: usize, topic: &str) {
        let mut reply = Vec::new();
        let text = json!({"type":"subscribe","payload":{"topic":topic}}).to_string();
        self.hub.handle_text(client, &text, &mut reply, &mut self.outbox, &mut self.metrics);
    }
}

fn get(path: &str) -> HttpRequest<'_> {
    HttpRequest {
        method: "GET",
        path,
        authorization: None,
        content_length: None,
        peer_is_loopback: false,
        content_type: None,
        origin: None,
        host: Some(b"localhost"),
    }
}

fn post<'a>(path: &'a str, body: &[u8], authorization: Option<&'a [u8]>, loopback: bool) -> HttpRequest<'a> {
    HttpRequest {
        method: "POST",
        path,
        authorization,
        content_length: Some(body.len() as u64),
        peer_is_loopback: loopback,
        content_type: Some(b"application/json"),
        origin: None,
        host: Some(b"localhost:8080"),
    }
}

fn keyed() -> HttpConfig {
    HttpConfig { api_key: Some(KEY.to_string()), ..HttpConfig::default() }
}

fn json_body(r: &Response) -> Value {
    assert_eq!(r.content_type(), "application/json");
    serde_json::from_slice(r.body()).expect("JSON body")
}

#[test]
fn healthz() {
    let mut s = Server::new();
    let r = s.call(&get("/healthz"), b"", &HttpConfig::default());
    assert_eq!(r.status, 200);
    assert_eq!(json_body(&r), json!({"status":"ok","uptime_seconds":42,"connections":3}));
    // A query string does not change the route.
    assert_eq!(s.call(&get("/healthz?probe=1"), b"", &HttpConfig::default()).status, 200);
    assert_eq!(s.metrics.http_responses(200), 2);
}

#[test]
fn metrics_route_serves_prometheus_text_with_live_gauges() {
    let mut s = Server::new();
    s.subscribe(1, "a");
    s.subscribe(2, "b");
    let r = s.call(&get("/metrics"), b"", &HttpConfig::default());
    assert_eq!(r.status, 200);
    assert!(r.content_type().starts_with("text/plain; version=0.0.4"));
    let text = std::str::from_utf8(r.body()).unwrap();
    assert!(text.contains("# TYPE wshub_topics gauge\nwshub_topics 2\n"), "{text}");
    assert!(text.contains("wshub_connections 3\n"));
    assert!(text.contains("wshub_uptime_seconds 42\n"));
}

#[test]
fn unknown_paths_and_wrong_methods() {
    let mut s = Server::new();
    let cfg = HttpConfig::default();
    for path in ["/", "/healthz/", "/HEALTHZ", "/publishx", "/ws"] {
        let r = s.call(&get(path), b"", &cfg);
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(json_body(&r), json!({"error":"Not found"}));
    }
    let r = s.call(&post("/healthz", b"", None, true), b"", &cfg);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = s.call(&get("/publish"), b"", &cfg);
    assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    let head = HttpRequest { method: "HEAD", ..get("/publish") };
    let r = s.call(&head, b"", &cfg);
    assert_eq!((r.status, r.header("Allow"), r.body()), (405, Some("POST"), &b""[..]));
    let options = HttpRequest { method: "OPTIONS", ..get("/metrics") };
    assert_eq!(s.call(&options, b"", &cfg).status, 405);
    assert_eq!(s.metrics.http_responses(404), 5);
    assert_eq!(s.metrics.http_responses(405), 4);
}

#[test]
fn head_is_get_without_the_body() {
    let mut s = Server::new();
    let cfg = HttpConfig::default();
    for path in ["/healthz", "/metrics", "/wshub.js"] {
        let full = s.call(&get(path), b"", &cfg);
        let head = s.call(&HttpRequest { method: "HEAD", ..get(path) }, b"", &cfg);
        assert_eq!((head.status, head.content_type()), (200, full.content_type()), "{path}");
        assert!(head.body().is_empty(), "{path}");
        let mut out = Vec::new();
        head.write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{path}: {text}");
        if path == "/wshub.js" {
            // The length of the body a GET gets (the other routes' bodies are live values).
            assert!(text.contains(&format!("\r\nContent-Length: {}\r\n", full.body().len())), "{text}");
        }
    }
    let missing = s.call(&HttpRequest { method: "HEAD", ..get("/nowhere") }, b"", &cfg);
    assert_eq!((missing.status, missing.body()), (404, &b""[..]));
}

#[test]
fn body_plan_sizes_and_refusals() {
    let cfg = HttpConfig { max_body_bytes: 10, ..HttpConfig::default() };
    assert_eq!(body_plan(&get("/healthz"), &cfg), Ok(0));
    let with_length = |n| HttpRequest { content_length: Some(n), ..post("/publish", b"", None, true) };
    assert_eq!(body_plan(&with_length(10), &cfg), Ok(10));
    assert_eq!(body_plan(&with_length(0), &cfg), Ok(0));
    assert_eq!(body_plan(&with_length(11), &cfg).unwrap_err().status, 413);
    assert_eq!(body_plan(&with_length(u64::MAX), &cfg).unwrap_err().status, 413);
    let no_length = HttpRequest { content_length: None, ..post("/broadcast", b"", None, true) };
    assert_eq!(body_plan(&no_length, &cfg).unwrap_err().status, 411);
    // Refused callers are refused before their body is read, even a huge one.
    let remote = HttpRequest { content_length: Some(u64::MAX), ..post("/publish", b"", None, false) };
    assert_eq!(body_plan(&remote, &cfg).unwrap_err().status, 403);
    assert_eq!(body_plan(&get("/nope"), &cfg).unwrap_err().status, 404);
}

#[test]
fn respond_rechecks_the_body_size() {
    let mut s = Server::new();
    let cfg = HttpConfig { max_body_bytes: 8, ..HttpConfig::default() };
    let body = br#"{"data":12345}"#;
    // The reactor lying about the length must not get a big body through.
    let req = HttpRequest { content_length: Some(1), ..post("/broadcast", body, None, true) };
    let mut ctx = HttpContext {
        caller: 9,
        hub: &mut s.hub,
        outbox: &mut s.outbox,
        metrics: &mut s.metrics,
        uptime_seconds: 0,
        connections: 0,
        backplane: None,
        deflate: Default::default(),
    };
    let r = respond(&req, body, &cfg, &mut ctx).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(json_body(&r), json!({"error":"Body too large (max 8 bytes)"}));
}

#[test]
fn api_key_rules() {
    let mut s = Server::new();
    let body = br#"{"topic":"t","data":1}"#;
    let cases: [(Option<&[u8]>, u16); 9] = [
        (Some(b"Bearer s3cret-key"), 200),
        (Some(b"bearer   s3cret-key  "), 200),
        (Some(b"BEARER s3cret-key"), 200),
        (Some(b"Bearer s3cret-kez"), 401),
        (Some(b"Bearer s3cret-key2"), 401),
        (Some(b"Bearer s3cret"), 401),
        (Some(b"Bearer "), 401),
        (Some(b"Basic s3cret-key"), 401),
        (None, 401),
    ];
    for (authorization, status) in cases {
        for loopback in [true, false] {
            let r = s.call(&post("/publish", body, authorization, loopback), body, &keyed());
            assert_eq!(
                r.status,
                status,
                "{:?} loopback {loopback}",
                authorization.map(String::from_utf8_lossy)
            );
            if status == 401 {
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
                assert_eq!(json_body(&r), json!({"error":"Missing or invalid API key"}));
            }
        }
    }
}

#[test]
fn without_a_key_only_loopback_may_post() {
    let mut s = Server::new();
    let body = br#"{"data":1}"#;
    for cfg in [HttpConfig::default(), HttpConfig { api_key: Some(String::new()), ..HttpConfig::default() }] {
        assert_eq!(s.call(&post("/broadcast", body, None, true), body, &cfg).status, 200);
        let r = s.call(&post("/broadcast", body, None, false), body, &cfg);
        assert_eq!(r.status, 403);
        // An Authorization header does not help when there is no key to check it against.
        let r2 = s.call(&post("/broadcast", body, Some(b"Bearer "), false), body, &cfg);
        assert_eq!(r2.status, 403);
        assert!(json_body(&r)["error"].as_str().unwrap().contains("loopback"));
    }
    // GET routes need neither.
    assert_eq!(s.call(&get("/metrics"), b"", &keyed()).status, 200);
}

#[test]
fn publish_reaches_subscribers_through_the_outbox() {
    let mut s = Server::new();
    s.subscribe(1, "news");
    s.subscribe(3, "news");
    s.subscribe(2, "sport");
    let body = br#"{"topic":"news","data":{"headline":"hi"}}"#;
    let r = s.call(&post("/publish", body, Some(b"Bearer s3cret-key"), false), body, &keyed());
    assert_eq!(r.status, 200);
    assert_eq!(json_body(&r), json!({"delivered":2}));
    let message = json!({"type":"message","payload":{"topic":"news","data":{"headline":"hi"}}});
    assert_eq!(s.outbox.received(1), vec![message.clone()]);
    assert_eq!(s.outbox.received(3), vec![message]);
    assert!(s.outbox.received(2).is_empty());
    assert!(Rc::ptr_eq(&s.outbox.queues[&1][0], &s.outbox.queues[&3][0]));
    assert_eq!((s.metrics.publishes, s.metrics.deliveries), (1, 2));

    let body = br#"{"topic":"nobody","data":null}"#;
    let r = s.call(&post("/publish", body, None, true), body, &HttpConfig::default());
    assert_eq!(json_body(&r), json!({"delivered":0}));
}

#[test]
fn broadcast_reaches_every_client() {
    let mut s = Server::new();
    let body = br#"{"data":"all"}"#;
    let r = s.call(&post("/broadcast", body, None, true), body, &HttpConfig::default());
    assert_eq!(json_body(&r), json!({"delivered":3}));
    for c in [1, 2, 3] {
        assert_eq!(s.outbox.received(c), vec![json!({"type":"message","payload":{"data":"all"}})]);
    }
    assert_eq!(s.metrics.broadcasts, 1);
}

#[test]
fn bad_bodies_are_400_with_a_json_error() {
    let mut s = Server::new();
    let cfg = HttpConfig::default();
    let cases: [(&str, &[u8], &str); 9] = [
        ("/publish", b"", "Invalid JSON body"),
        ("/publish", b"{", "Invalid JSON body"),
        ("/publish", b"[\"t\", 1]", "Invalid JSON body"),
        ("/publish", br#"{"topic":"t"}"#, "Invalid JSON body"),
        ("/publish", br#"{"data":1}"#, "Invalid JSON body"),
        ("/publish", br#"{"topic":1,"data":1}"#, "Invalid JSON body"),
        ("/publish", b"\xff\xfe", "Invalid JSON body"),
        ("/broadcast", br#"{"topic":"t"}"#, "Invalid JSON body"),
        ("/publish", br#"{"topic":"","data":1}"#, "Topic must not be empty"),
    ];
    for (path, body, error) in cases {
        let r = s.call(&post(path, body, None, true), body, &cfg);
        assert_eq!(r.status, 400, "{path} {body:?}");
        let json = json_body(&r);
        assert_eq!(json["error"], error, "{path} {body:?}");
    }
    let long = format!(r#"{{"topic":"{}","data":1}}"#, "x".repeat(300));
    let r = s.call(&post("/publish", long.as_bytes(), None, true), long.as_bytes(), &cfg);
    assert_eq!(json_body(&r)["error"], "Topic too long (300 bytes, max 256)");
    assert_eq!(s.metrics.publishes, 0);
    assert_eq!(s.metrics.http_responses(400), 10);
}

#[test]
fn write_to_produces_a_complete_response() {
    let mut out = b"prefix".to_vec();
    let r = Response::error(405, "Method not allowed", None).with_header("Allow", "GET");
    r.write_to(&mut out);
    let text = std::str::from_utf8(&out[6..]).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    assert_eq!(lines.next(), Some("HTTP/1.1 405 Method Not Allowed"));
    let headers: Vec<_> = lines.collect();
    assert!(headers.contains(&"Content-Type: application/json"));
    assert!(headers.contains(&format!("Content-Length: {}", body.len()).as_str()));
    assert!(headers.contains(&"Connection: close"));
    assert!(headers.contains(&"Allow: GET"));
    assert_eq!(body, r#"{"error":"Method not allowed"}"#);

    // And it parses as HTTP.
    let mut parsed_headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut parsed_headers);
    assert!(parsed.parse(&out[6..]).unwrap().is_complete());
    assert_eq!(parsed.code, Some(405));
}

#[test]
fn bearer_token_parsing() {
    assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"  bearer \t abc "), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"Bearerabc"), None);
    assert_eq!(bearer_token(b"Bearer"), None);
    assert_eq!(bearer_token(b"Bearer    "), None);
    assert_eq!(bearer_token(b"Token abc"), None);
    assert_eq!(bearer_token(b""), None);
}

#[test]
fn constant_time_compare() {
    assert!(constant_time_eq(b"key", b"key"));
    assert!(constant_time_eq(b"", b""));
    assert!(!constant_time_eq(b"kez", b"key"));
    assert!(!constant_time_eq(b"ke", b"key"));
    assert!(!constant_time_eq(b"keyy", b"key"));
    assert!(!constant_time_eq(b"", b"key"));
    assert!(!constant_time_eq(b"key", b""));
    // A candidate that is the key plus NULs must not pass the zero padding.
    assert!(!constant_time_eq(b"key\0", b"key"));
}

#[test]
fn loopback_hosts() {
    for host in
        ["localhost", "LocalHost:8080", "127.0.0.1", "127.1.2.3:80", "[::1]", "[::1]:9", " localhost "]
    {
        assert!(is_loopback_host(host.as_bytes()), "{host}");
    }
    for host in [
        "",
        "evil.example",
        "localhost.evil.example",
        "evil.localhost.example:80",
        "10.0.0.1",
        "[::2]:80",
        "::1",
        "localhost:80x",
        "localhost:",
        "127.0.0.1:80:80",
        "[::1]x",
        "0.0.0.0",
    ] {
        let want = host == "localhost:"; // an empty port is still localhost (RFC 3986)
        assert_eq!(is_loopback_host(host.as_bytes()), want, "{host}");
    }
}

#[test]
fn posts_need_json_a_local_host_and_an_allowed_origin() {
    let mut s = Server::new();
    let cfg = HttpConfig::default();
    let body = br#"{"data":1}"#;
    let ok = post("/broadcast", body, None, true);
    assert_eq!(s.call(&ok, body, &cfg).status, 200);
    let cases: &[(HttpRequest<'_>, u16)] = &[
        (HttpRequest { content_type: Some(b"text/plain"), ..ok }, 415),
        (HttpRequest { content_type: None, ..ok }, 415),
        (HttpRequest { content_type: Some(b"application/json ; charset=utf-8"), ..ok }, 200),
        (HttpRequest { content_type: Some(b"multipart/form-data; boundary=x"), ..ok }, 415),
        (HttpRequest { origin: Some(b"http://evil.example"), ..ok }, 403),
        (HttpRequest { origin: Some(b"null"), ..ok }, 403),
        (HttpRequest { origin: Some(b"http://localhost:8080"), ..ok }, 200),
        (HttpRequest { host: Some(b"evil.example:8080"), ..ok }, 403),
        (HttpRequest { host: None, ..ok }, 403),
    ];
    for (req, want) in cases {
        assert_eq!(s.call(req, body, &cfg).status, *want, "{req:?}");
        // `respond` alone (without the plan) applies the same rules.
        let mut ctx = HttpContext {
            caller: 9,
            hub: &mut s.hub,
            outbox: &mut s.outbox,
            metrics: &mut s.metrics,
            uptime_seconds: 0,
            connections: 1,
            backplane: None,
            deflate: Default::default(),
        };
        assert_eq!(respond(req, body, &cfg, &mut ctx).unwrap().status, *want, "{req:?}");
    }
    // With a key, Host is free (the key is the proof), but Origin and type still hold.
    let keyed = HttpConfig { api_key: Some(KEY.into()), ..HttpConfig::default() };
    let auth = format!("Bearer {KEY}");
    let remote = post("/broadcast", body, Some(auth.as_bytes()), false);
    assert_eq!(s.call(&HttpRequest { host: Some(b"api.example"), ..remote }, body, &keyed).status, 200);
    let foreign = HttpRequest { host: Some(b"api.example"), origin: Some(b"https://evil.example"), ..remote };
    assert_eq!(s.call(&foreign, body, &keyed).status, 403);
    let allow = HttpConfig {
        origins: crate::protocol::handshake::OriginPolicy::AllowList(vec!["https://app.example".into()]),
        ..keyed
    };
    let listed = HttpRequest { origin: Some(b"https://APP.example"), ..foreign };
    assert_eq!(s.call(&listed, body, &allow).status, 200);
    assert_eq!(
        s.call(&HttpRequest { content_type: Some(b"text/plain"), ..listed }, body, &allow).status,
        415
    );
    // GET routes are not affected.
    let health =
        HttpRequest { origin: Some(b"http://evil.example"), host: Some(b"evil.example"), ..get("/healthz") };
    assert_eq!(s.call(&health, b"", &cfg).status, 200);
    assert_eq!(s.metrics.http_responses(415), 7);
}

#[test]
fn the_browser_client_is_always_served_and_the_demo_only_when_asked() {
    let mut s = Server::new();
    let cfg = HttpConfig::default();
    let r = s.call(&get("/wshub.js"), b"", &cfg);
    assert_eq!((r.status, r.content_type()), (200, "text/javascript"));
    assert!(std::str::from_utf8(r.body()).unwrap().contains("export class WsHub"));
    assert_eq!(s.call(&get("/"), b"", &cfg).status, 404, "no demo unless --demo");
    let demo = HttpConfig { demo: true, ..HttpConfig::default() };
    let r = s.call(&get("/?room=1"), b"", &demo);
    assert_eq!((r.status, r.content_type()), (200, "text/html; charset=utf-8"));
    assert!(std::str::from_utf8(r.body()).unwrap().contains("/wshub.js"));
    let r = s.call(&post("/", b"", None, true), b"", &demo);
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD")));
}
