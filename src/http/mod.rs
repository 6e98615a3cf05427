//! Plain HTTP/1.1 requests on the WebSocket port (not upgrades), sans-IO.
//!
//! The reactor parses the request head, turns it into an [`HttpRequest`] with
//! [`request_from_head`] (the framing rules: one `Host`, one exact `Content-Length`, never
//! chunked), asks [`body_plan`](crate::http::body_plan) whether to read a body and how much, reads it, then writes what [`respond`](crate::http::respond)
//! returns and closes the connection. Nothing here touches a socket.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /healthz` | 200 `{"status":"ok","uptime_seconds":12,"connections":3}` |
//! | `GET /metrics` | 200 Prometheus text (`text/plain; version=0.0.4`) |
//! | `POST /publish` `{"topic":"news","data":{...}}` | 200 `{"delivered":2}` |
//! | `POST /broadcast` `{"data":{...}}` | 200 `{"delivered":40}` |
//! | `GET /wshub.js` | 200 the browser client (`text/javascript`), always |
//! | `GET /` | 200 the demo page, only with `--demo` (404 otherwise) |
//!
//! The two POST routes need `Authorization: Bearer <key>` when the server has an API key (401
//! otherwise); without a key they only accept loopback peers (403 otherwise). Because a web page
//! can make a browser send a POST anywhere, they also refuse what only a browser would send on a
//! page's behalf: an `Origin` that the upgrade's origin policy would refuse (403), a body type
//! other than `Content-Type: application/json` (415; a cross-site page can send `text/plain`
//! or a form without a preflight, never `application/json`), and, without an API key, a `Host`
//! that is not a loopback name or address (403: a DNS-rebinding page's requests name the
//! attacker's host). Other answers:
//! 400 for a body that is not the JSON above (with a JSON `{"error":..}` body), 411 without
//! `Content-Length`, 413 for a body over the limit, 405 for a wrong method on a known path,
//! 404 for any other path. Every response carries `Connection: close`. `HEAD` is answered on the
//! GET routes like `GET`, headers and `Content-Length` included, without the body.
//!
//! With a backplane, both POST answers add `"backplane":true|false` (handed to Redis or not).
//! With history kept in Redis (`--redis` with `--history-size`), the message is numbered there
//! and every node delivers it from there, so a publish cannot be answered within the call:
//! [`respond`] returns `None` and the reactor holds the connection until the hub hands the
//! offset to [`numbered`] (200 `{"offset":8,"epoch":"9f2c41d07be3a815","backplane":true}`, the
//! fields of the WebSocket `ack`) or the failure (503 `{"error":"unavailable",..}`: Redis down,
//! refused, lost or stalled past its reply deadline, or too many publishes waiting).

use std::borrow::Cow;

use crate::backplane::redis::BackplaneStats;
use crate::hub::history::Offset;
use crate::hub::{self, ClientId, Hub, HubError, Outbox};
use crate::metrics::{Gauges, Metrics};
use crate::protocol::deflate::DeflateStats;
use crate::protocol::handshake::{status_text, OriginPolicy};

mod request;
pub use request::{request_from_head, wants_continue};

const CONTENT_TYPE_JSON: &str = "application/json";
const CONTENT_TYPE_JS: &str = "text/javascript";
const CONTENT_TYPE_HTML: &str = "text/html; charset=utf-8";

/// The browser client, served at `/wshub.js` (its source lives in `clients/js/`).
pub const CLIENT_JS: &str = include_str!("../../clients/js/wshub.js");
/// The demo page, served at `/` with `--demo`.
pub const DEMO_HTML: &str = include_str!("../../clients/js/demo.html");
/// The Prometheus text exposition format.
const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Settings of the HTTP API. `Debug` masks the API key.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Bearer token required by the POST routes. `None` (or an empty key, which would be
    /// trivially guessable) means loopback peers only.
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Which `Origin`s may POST: the same policy as WebSocket upgrades (`--allowed-origin`).
    pub origins: OriginPolicy,
    /// Serve the demo page at `/`.
    pub demo: bool,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("origins", &self.origins)
            .field("demo", &self.demo)
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { api_key: None, max_body_bytes: 64 * 1024, origins: OriginPolicy::SameHost, demo: false }
    }
}

/// What the reactor read from the request head.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// The request target; a query string, if any, is ignored.
    pub path: &'a str,
    /// The raw `Authorization` header value.
    pub authorization: Option<&'a [u8]>,
    pub content_length: Option<u64>,
    pub peer_is_loopback: bool,
    /// The raw `Content-Type`, `Origin` and `Host` header values.
    pub content_type: Option<&'a [u8]>,
    pub origin: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
}

/// What a response may need from the rest of the server.
pub struct HttpContext<'a, O: Outbox> {
    /// The connection asking: a publish whose answer waits on the backplane is answered to it
    /// later, through [`Outbox::numbered`].
    pub caller: ClientId,
    pub hub: &'a mut Hub,
    pub outbox: &'a mut O,
    pub metrics: &'a mut Metrics,
    pub uptime_seconds: u64,
    /// Open connections, this one included.
    pub connections: usize,
    /// The backplane's state and counters; `None` without `--redis`.
    pub backplane: Option<BackplaneStats>,
    /// The reactor's compressor's counters (permessage-deflate).
    pub deflate: DeflateStats,
}

/// A complete response, written once before the connection closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    content_type: &'static str,
    /// One extra header some statuses require (`Allow` on 405, `WWW-Authenticate` on 401).
    extra_header: Option<(&'static str, &'static str)>,
    body: Vec<u8>,
    /// The answer to a HEAD: every header of the GET answer (`Content-Length` included), no
    /// body (RFC 9110 section 9.3.2).
    head_only: bool,
}

impl Response {
    fn json(status: u16, body: Vec<u8>) -> Response {
        Response { status, content_type: CONTENT_TYPE_JSON, extra_header: None, body, head_only: false }
    }

    fn ok(content_type: &'static str, body: Vec<u8>) -> Response {
        Response { status: 200, content_type, extra_header: None, body, head_only: false }
    }

    /// `{"error": message}`, plus `"detail"` when there is more to say.
    fn error(status: u16, message: &str, detail: Option<&str>) -> Response {
        let mut body = Vec::with_capacity(message.len() + 32);
        body.extend_from_slice(b"{\"error\":");
        hub::push_json_str(&mut body, message);
        if let Some(detail) = detail {
            body.extend_from_slice(b",\"detail\":");
            hub::push_json_str(&mut body, detail);
        }
        body.push(b'}');
        Response::json(status, body)
    }

    /// This response as the answer to `req`: without its body if `req` is a HEAD.
    fn answering(mut self, req: &HttpRequest<'_>) -> Response {
        self.head_only = req.method == "HEAD";
        self
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Response {
        self.extra_header = Some((name, value));
        self
    }

    /// The body as the client receives it: none for a HEAD.
    pub fn body(&self) -> &[u8] {
        if self.head_only {
            &[]
        } else {
            &self.body
        }
    }

    pub fn content_type(&self) -> &'static str {
        self.content_type
    }

    /// The extra header, if `name` (case-insensitive) is it.
    pub fn header(&self, name: &str) -> Option<&'static str> {
        self.extra_header.filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Appends the whole response: status line, headers, body.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(160 + self.body.len());
        out.extend_from_slice(b"HTTP/1.1 ");
        hub::push_decimal(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(status_text(self.status).as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        hub::push_decimal(out, self.body.len() as u64);
        if let Some((name, value)) = self.extra_header {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
        }
        // Health and metrics are live values: no cache may answer for us.
        out.extend_from_slice(b"\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n");
        out.extend_from_slice(self.body());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Healthz,
    Metrics,
    Publish,
    Broadcast,
    ClientJs,
    Demo,
}

impl Route {
    fn find(path: &str, cfg: &HttpConfig) -> Option<Route> {
        Some(match path {
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/publish" => Route::Publish,
            "/broadcast" => Route::Broadcast,
            "/wshub.js" => Route::ClientJs,
            "/" if cfg.demo => Route::Demo,
            _ => return None,
        })
    }

    fn takes_body(self) -> bool {
        matches!(self, Route::Publish | Route::Broadcast)
    }

    /// Whether `method` may be used on this route: POST for the publish API; GET, and HEAD
    /// with it, for the rest (RFC 9110 section 9.1: a server that does GET does HEAD).
    fn allows(self, method: &str) -> bool {
        match self.takes_body() {
            true => method == "POST",
            false => method == "GET" || method == "HEAD",
        }
    }

    /// The `Allow` header of a 405 on this route.
    fn allow_header(self) -> &'static str {
        if self.takes_body() {
            "POST"
        } else {
            "GET, HEAD"
        }
    }
}

/// The route, or the 404/405 that answers instead.
fn route(req: &HttpRequest<'_>, cfg: &HttpConfig) -> Result<Route, Response> {
    let path = req.path.split_once('?').map_or(req.path, |(path, _query)| path);
    let route = Route::find(path, cfg).ok_or_else(|| Response::error(404, "Not found", None))?;
    if !route.allows(req.method) {
        return Err(
            Response::error(405, "Method not allowed", None).with_header("Allow", route.allow_header())
        );
    }
    Ok(route)
}

/// The API key rule for the POST routes.
fn authorize(req: &HttpRequest<'_>, cfg: &HttpConfig) -> Result<(), Response> {
    match cfg.api_key.as_deref().filter(|key| !key.is_empty()) {
        Some(key) => match req.authorization.and_then(bearer_token) {
            Some(token) if constant_time_eq(token, key.as_bytes()) => Ok(()),
            _ => Err(Response::error(401, "Missing or invalid API key", None)
                .with_header("WWW-Authenticate", "Bearer")),
        },
        None if req.peer_is_loopback => Ok(()),
        None => Err(Response::error(
            403,
            "Publishing is only allowed from loopback when no API key is configured",
            None,
        )),
    }
}

/// The browser rules for the POST routes (see the module header): Origin, then Host in
/// loopback mode, then the body type. Checked before the API key: they hold for everyone.
fn same_site(req: &HttpRequest<'_>, cfg: &HttpConfig) -> Result<(), Response> {
    if !cfg.origins.allows(req.origin, req.host) {
        return Err(Response::error(403, "Origin not allowed", None));
    }
    let loopback_mode = cfg.api_key.as_deref().is_none_or(str::is_empty);
    if loopback_mode && !req.host.is_some_and(is_loopback_host) {
        return Err(Response::error(
            403,
            "Host must be a loopback name or address when no API key is configured",
            None,
        ));
    }
    if !req.content_type.is_some_and(is_json_media_type) {
        return Err(Response::error(415, "Content-Type must be application/json", None));
    }
    Ok(())
}

/// `application/json`, any case, with or without parameters (`; charset=utf-8`).
fn is_json_media_type(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or(value).trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
}

/// Whether a `Host` value (`name[:port]`, `v4[:port]`, `[v6][:port]`) names this machine only:
/// `localhost`, an address in 127.0.0.0/8, or `::1`. A rebinding attack needs a name the
/// attacker's DNS answers for, which is none of these.
pub fn is_loopback_host(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value.trim_ascii()) else {
        return false;
    };
    let name = if let Some(rest) = value.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => v6,
            _ => return false,
        }
    } else {
        match value.split_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => value,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The port after a host's `:`: digits only (an empty port is allowed by RFC 3986).
fn is_port(port: &str) -> bool {
    port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110 section 11.1).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return None;
    }
    let token = rest.trim_ascii_start();
    (!token.is_empty()).then_some(token)
}

/// Compares a client's token with the key in time that depends only on the key's length, so
/// response timing does not reveal how much of a guess was right.
fn constant_time_eq(candidate: &[u8], key: &[u8]) -> bool {
    let mut difference = candidate.len() ^ key.len();
    for (i, &k) in key.iter().enumerate() {
        let c = candidate.get(i).copied().unwrap_or(0);
        difference |= usize::from(c ^ k);
        // Keep the optimizer from turning the fold into an early exit.
        difference = std::hint::black_box(difference);
    }
    difference == 0
}

/// How many body bytes a POST route will read, or why not.
fn body_length(req: &HttpRequest<'_>, cfg: &HttpConfig) -> Result<usize, Response> {
    let Some(length) = req.content_length else {
        return Err(Response::error(411, "Content-Length required", None));
    };
    match usize::try_from(length) {
        Ok(n) if n <= cfg.max_body_bytes => Ok(n),
        _ => Err(too_large(cfg)),
    }
}

fn too_large(cfg: &HttpConfig) -> Response {
    Response::error(413, &format!("Body too large (max {} bytes)", cfg.max_body_bytes), None)
}

/// Before the body is read: whether a body is acceptable and how many bytes to read (0 for
/// GET). Routing and authorization are decided here, so refused requests cost no body read.
/// A refusal is the response to send.
pub fn body_plan(req: &HttpRequest<'_>, cfg: &HttpConfig) -> Result<usize, Response> {
    let route = route(req, cfg).map_err(|refusal| refusal.answering(req))?;
    if !route.takes_body() {
        return Ok(0);
    }
    same_site(req, cfg)?;
    authorize(req, cfg)?;
    body_length(req, cfg)
}

/// With the whole body: the response to write before closing the connection. Checks again
/// everything `body_plan` checked, so it is safe to call on its own. Counts the response in
/// `ctx.metrics`. `None`: a publish waits for its offset from the backplane (see the module
/// header); the answer is [`numbered`]'s, once the hub hands the result to
/// [`Outbox::numbered`] for `ctx.caller`.
pub fn respond<O: Outbox>(
    req: &HttpRequest<'_>,
    body: &[u8],
    cfg: &HttpConfig,
    ctx: &mut HttpContext<'_, O>,
) -> Option<Response> {
    let response = match route(req, cfg) {
        Ok(route) => answer(route, req, body, cfg, ctx)?,
        Err(refusal) => refusal,
    }
    .answering(req);
    ctx.metrics.http_response(response.status);
    Some(response)
}

/// The answer to a publish that waited for its offset (not counted: the caller counts what it
/// writes): 200 with the epoch and offset Redis gave it, or 503 when it got none.
pub fn numbered(result: Option<(&str, Offset)>) -> Response {
    let Some((epoch, offset)) = result else { return unavailable() };
    let mut json = Vec::with_capacity(64);
    json.extend_from_slice(b"{\"offset\":");
    hub::push_decimal(&mut json, offset);
    json.extend_from_slice(b",\"epoch\":");
    hub::push_json_str(&mut json, epoch);
    json.extend_from_slice(b",\"backplane\":true}");
    Response::json(200, json)
}

/// 503 for a publish on history kept in Redis that cannot be numbered.
pub fn unavailable() -> Response {
    Response::error(503, "unavailable", Some("history is kept in Redis, which cannot number the message now"))
}

/// The response, or `None` when it waits on the backplane.
fn answer<O: Outbox>(
    route: Route,
    req: &HttpRequest<'_>,
    body: &[u8],
    cfg: &HttpConfig,
    ctx: &mut HttpContext<'_, O>,
) -> Option<Response> {
    Some(match route {
        Route::Healthz => {
            // With a backplane that is down the node still serves its own clients, but a load
            // balancer should prefer the nodes that reach the others: 503, "degraded".
            let up = ctx.backplane.map(|b| b.up);
            let mut json = Vec::with_capacity(96);
            json.extend_from_slice(match up {
                Some(false) => b"{\"status\":\"degraded\",\"backplane\":\"down\"".as_slice(),
                Some(true) => b"{\"status\":\"ok\",\"backplane\":\"up\"",
                None => b"{\"status\":\"ok\"",
            });
            json.extend_from_slice(b",\"uptime_seconds\":");
            hub::push_decimal(&mut json, ctx.uptime_seconds);
            json.extend_from_slice(b",\"connections\":");
            hub::push_decimal(&mut json, ctx.connections as u64);
            json.push(b'}');
            Response::json(if up == Some(false) { 503 } else { 200 }, json)
        }
        Route::Metrics => {
            let gauges = Gauges {
                connections: ctx.connections,
                topics: ctx.hub.topic_count(),
                uptime_seconds: ctx.uptime_seconds,
                history: ctx.hub.history_stats(),
                backplane: ctx.backplane,
                deflate: ctx.deflate,
                // The inflaters count per thread: this one, the reactor's.
                inflate: crate::protocol::deflate::inflate_stats(),
            };
            let mut text = String::with_capacity(4096);
            ctx.metrics.render_prometheus(&gauges, &mut text);
            Response::ok(CONTENT_TYPE_PROMETHEUS, text.into_bytes())
        }
        Route::ClientJs => Response::ok(CONTENT_TYPE_JS, CLIENT_JS.as_bytes().to_vec()),
        Route::Demo => Response::ok(CONTENT_TYPE_HTML, DEMO_HTML.as_bytes().to_vec()),
        Route::Publish | Route::Broadcast => {
            if let Err(refusal) =
                same_site(req, cfg).and_then(|()| authorize(req, cfg)).and_then(|()| body_length(req, cfg))
            {
                return Some(refusal);
            }
            if body.len() > cfg.max_body_bytes {
                return Some(too_large(cfg));
            }
            let Ok(text) = std::str::from_utf8(body) else {
                return Some(Response::error(400, "Invalid JSON body", Some("not UTF-8")));
            };
            let delivered = if route == Route::Publish {
                hub::parse_publish_body(text).and_then(|(topic, data): (Cow<'_, str>, _)| {
                    ctx.hub.publish_as(ctx.caller, &topic, data, ctx.outbox, ctx.metrics)
                })
            } else {
                hub::parse_broadcast_body(text)
                    .map(|data| Some(ctx.hub.broadcast(data, ctx.outbox, ctx.metrics)))
            };
            match delivered {
                Ok(None) => return None,
                Ok(Some(n)) => {
                    let mut json = Vec::with_capacity(24);
                    json.extend_from_slice(b"{\"delivered\":");
                    hub::push_decimal(&mut json, n as u64);
                    hub::push_relay(&mut json, ctx.hub.last_relay());
                    json.push(b'}');
                    Response::json(200, json)
                }
                Err(HubError::InvalidFormat { detail }) => {
                    Response::error(400, "Invalid JSON body", Some(detail))
                }
                Err(HubError::Unavailable) => unavailable(),
                Err(other) => Response::error(400, &other.to_string(), None),
            }
        }
    })
}

#[cfg(test)]
mod tests;
