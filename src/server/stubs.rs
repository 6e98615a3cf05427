//! Temporary stand-ins for the hub, HTTP side and metrics while those land in parallel:
//! until then hub mode echoes (as the server issue allows) and counters are kept but not served.
//! Removed when `crate::hub`, `crate::http` and `crate::metrics` are wired in.
#![allow(dead_code, unused_variables)]

pub mod metrics {
    #[derive(Default)]
    pub struct Metrics {
        pub bytes_in: u64,
        pub bytes_out: u64,
    }
    impl Metrics {
        pub fn bytes_in(&mut self, n: u64) {
            self.bytes_in += n
        }
        pub fn bytes_out(&mut self, n: u64) {
            self.bytes_out += n
        }
        pub fn message_in(&mut self) {}
        pub fn message_out(&mut self) {}
        pub fn connection_accepted(&mut self) {}
        pub fn connection_opened(&mut self) {}
        pub fn connection_closed(&mut self) {}
        pub fn handshake_rejected(&mut self, _status: u16) {}
        pub fn close_code_sent(&mut self, _code: u16) {}
        pub fn slow_consumer_dropped(&mut self) {}
    }
}

pub mod hub {
    use super::metrics::Metrics;
    use crate::protocol::frame::write_frame;
    use crate::protocol::OpCode;
    use std::rc::Rc;

    pub type ClientId = usize;
    pub trait Outbox {
        fn deliver(&mut self, client: ClientId, frame: &Rc<[u8]>) -> bool;
        fn deliver_all(&mut self, frame: &Rc<[u8]>) -> usize;
    }
    pub struct HubConfig {
        pub max_topic_length: usize,
        pub max_subscriptions: usize,
        pub allow_client_broadcast: bool,
    }
    pub struct Hub;
    impl Hub {
        pub fn new(_config: HubConfig) -> Hub {
            Hub
        }
        pub fn handle_text(
            &mut self,
            from: ClientId,
            text: &str,
            reply: &mut Vec<u8>,
            _o: &mut impl Outbox,
            _m: &mut Metrics,
        ) {
            write_frame(reply, OpCode::Text, text.as_bytes());
        }
        pub fn handle_binary(&mut self, _from: ClientId, _reply: &mut Vec<u8>, _m: &mut Metrics) {}
        pub fn remove_client(&mut self, _client: ClientId) {}
    }
}

pub mod http {
    use super::hub::{Hub, Outbox};
    use super::metrics::Metrics;

    pub struct HttpConfig {
        pub api_key: Option<String>,
        pub max_body_bytes: usize,
    }
    pub struct HttpRequest<'a> {
        pub method: &'a str,
        pub path: &'a str,
        pub authorization: Option<&'a [u8]>,
        pub content_length: Option<u64>,
        pub peer_is_loopback: bool,
    }
    pub struct HttpContext<'a, O: Outbox> {
        pub hub: &'a mut Hub,
        pub outbox: &'a mut O,
        pub metrics: &'a mut Metrics,
        pub uptime_seconds: u64,
        pub connections: usize,
    }
    pub struct Response {
        pub status: u16,
    }
    impl Response {
        pub fn write_to(&self, out: &mut Vec<u8>) {
            crate::protocol::handshake::write_plain_response(out, self.status, "not found", false)
        }
    }
    pub fn body_plan(_req: &HttpRequest, _c: &HttpConfig) -> Result<usize, Response> {
        Err(Response { status: 404 })
    }
    pub fn respond<O: Outbox>(
        _r: &HttpRequest,
        _b: &[u8],
        _c: &HttpConfig,
        _x: &mut HttpContext<'_, O>,
    ) -> Response {
        Response { status: 404 }
    }
}
