//! Server counters and their Prometheus text rendering.
//!
//! The reactor is single-threaded, so counters are plain `u64`s in one struct passed by `&mut`:
//! no atomics, no registry, no allocation to count. Counters saturate instead of wrapping (and
//! never panic on overflow); at realistic rates none gets near `u64::MAX`.
//!
//! Who counts what: the hub counts publishes, broadcasts, deliveries and error replies; the
//! reactor counts connections, handshake rejections, messages and bytes on the wire, slow
//! consumers, close frames sent and HTTP responses.

use std::fmt::{self, Write as _};

use crate::backplane::redis::BackplaneStats;
use crate::protocol::deflate::{DeflateStats, InflateStats};

/// Statuses a refused upgrade request can get; anything else is counted as "other".
pub const HANDSHAKE_REJECT_STATUSES: [u16; 8] = [400, 401, 403, 404, 426, 429, 431, 503];
/// Close codes counted on their own; anything else is counted as "other".
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 4001];
/// Statuses of plain HTTP responses counted on their own; anything else is "other".
pub const HTTP_STATUSES: [u16; 13] = [200, 400, 401, 403, 404, 405, 408, 411, 413, 415, 429, 431, 503];

/// Why a TLS handshake did not finish, in the order of `Metrics::tls_failures`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// Bytes that are not TLS (plain HTTP on the TLS port, garbage) or a handshake rustls refused.
    Error,
    /// Not finished within the handshake timeout (a truncated ClientHello, a silent client).
    Timeout,
    /// The client closed the connection before finishing.
    Closed,
}

const TLS_FAILURE_LABELS: [&str; 3] = ["error", "timeout", "closed"];

/// Values sampled at render time rather than counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Open connections (WebSocket and HTTP).
    pub connections: usize,
    /// Topics with at least one subscriber.
    pub topics: usize,
    pub uptime_seconds: u64,
    /// What the topic history keeps (all zero with history off).
    pub history: crate::hub::history::HistoryStats,
    /// The backplane's counters, kept by the backplane itself; `None` without `--redis`.
    pub backplane: Option<BackplaneStats>,
    /// permessage-deflate: the reactor's compressor's counters, and its inflaters'.
    pub deflate: DeflateStats,
    pub inflate: InflateStats,
}

/// Every counter of the server. Fields are readable; count through the methods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub connections_accepted: u64,
    /// Connections upgraded to WebSocket.
    pub connections_opened: u64,
    /// Connections closed, for any reason (HTTP ones included).
    pub connections_closed: u64,
    /// Connections upgraded with permessage-deflate negotiated.
    pub connections_deflate: u64,
    /// Indexed like `HANDSHAKE_REJECT_STATUSES`, then "other".
    handshakes_rejected: [u64; HANDSHAKE_REJECT_STATUSES.len() + 1],
    /// Whole WebSocket data messages received from clients.
    pub messages_received: u64,
    /// Whole WebSocket data messages queued to clients by the reactor (echoes, replies).
    /// Hub fan-out copies are counted in `deliveries`.
    pub messages_sent: u64,
    /// Bytes read from sockets.
    pub bytes_received: u64,
    /// Bytes written to sockets.
    pub bytes_sent: u64,
    /// Publishes accepted (WebSocket and HTTP).
    pub publishes: u64,
    /// Broadcasts sent (WebSocket and HTTP).
    pub broadcasts: u64,
    /// Copies of published or broadcast messages taken by a client's send queue.
    pub deliveries: u64,
    pub slow_consumers_dropped: u64,
    /// Connections ended by a socket error on read or write (reset by the peer, broken pipe),
    /// in a fan-out or anywhere else. Never counted as slow consumers.
    pub connection_resets: u64,
    /// Protocol error replies sent to clients (the connection stays open).
    pub error_replies: u64,
    /// Subscriptions to a new topic refused because the server held `--max-topics`.
    pub topic_limit_refusals: u64,
    /// Publishes on history kept in Redis refused at once because Redis could not number them
    /// (down, its output full, too many waiting for their offset). Those that failed after
    /// they were sent are counted by the backplane (`BackplaneStats::appends_failed`); the
    /// exported `history_unavailable_total` is the sum.
    pub history_unavailable: u64,
    /// Indexed like `CLOSE_CODES`, then "other".
    close_codes_sent: [u64; CLOSE_CODES.len() + 1],
    /// Indexed like `HTTP_STATUSES`, then "other".
    http_responses: [u64; HTTP_STATUSES.len() + 1],
    /// Token refusals, permission denials, expiries, refreshes, rate-limit closes.
    pub auth: crate::auth::AuthMetrics,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes that did not complete, indexed like `TlsFailure`.
    tls_failures: [u64; 3],
    /// Certificate reloads (SIGHUP) that took effect, and that failed (the old pair stays).
    pub tls_reloads: u64,
    pub tls_reloads_failed: u64,
}

/// The table slot of `key`: its position in `keys`, or the extra "other" slot after them.
fn slot(keys: &[u16], key: u16) -> usize {
    keys.iter().position(|&k| k == key).unwrap_or(keys.len())
}

fn bump(counter: &mut u64, by: u64) {
    *counter = counter.saturating_add(by);
}

impl Metrics {
    pub fn connection_accepted(&mut self) {
        bump(&mut self.connections_accepted, 1);
    }

    /// An upgrade request refused with `status` (400, 403, 404, 426, 431, 503; others count as
    /// "other").
    /// A connection completed the WebSocket upgrade.
    pub fn connection_opened(&mut self) {
        bump(&mut self.connections_opened, 1);
    }

    /// The connection just opened negotiated permessage-deflate.
    pub fn deflate_negotiated(&mut self) {
        bump(&mut self.connections_deflate, 1);
    }

    /// A connection (WebSocket or HTTP) was closed.
    pub fn connection_closed(&mut self) {
        bump(&mut self.connections_closed, 1);
    }

    pub fn handshake_rejected(&mut self, status: u16) {
        bump(&mut self.handshakes_rejected[slot(&HANDSHAKE_REJECT_STATUSES, status)], 1);
    }

    pub fn message_in(&mut self) {
        bump(&mut self.messages_received, 1);
    }

    pub fn message_out(&mut self) {
        bump(&mut self.messages_sent, 1);
    }

    /// `n` messages received at once (echo counts a whole read's worth).
    pub fn messages_in(&mut self, n: u64) {
        bump(&mut self.messages_received, n);
    }

    /// `n` messages sent at once.
    pub fn messages_out(&mut self, n: u64) {
        bump(&mut self.messages_sent, n);
    }

    /// `n` bytes read from a socket.
    pub fn bytes_in(&mut self, n: u64) {
        bump(&mut self.bytes_received, n);
    }

    /// `n` bytes written to a socket.
    pub fn bytes_out(&mut self, n: u64) {
        bump(&mut self.bytes_sent, n);
    }

    /// One publish that reached `delivered` subscribers.
    pub fn record_publish(&mut self, delivered: usize) {
        bump(&mut self.publishes, 1);
        bump(&mut self.deliveries, delivered as u64);
    }

    /// One broadcast that reached `delivered` clients.
    pub fn record_broadcast(&mut self, delivered: usize) {
        bump(&mut self.broadcasts, 1);
        bump(&mut self.deliveries, delivered as u64);
    }

    pub fn record_error_reply(&mut self) {
        bump(&mut self.error_replies, 1);
    }

    pub fn record_topic_limit_refusal(&mut self) {
        bump(&mut self.topic_limit_refusals, 1);
    }

    pub fn record_history_unavailable(&mut self) {
        bump(&mut self.history_unavailable, 1);
    }

    pub fn slow_consumer_dropped(&mut self) {
        bump(&mut self.slow_consumers_dropped, 1);
    }

    pub fn connection_reset(&mut self) {
        bump(&mut self.connection_resets, 1);
    }

    /// A close frame sent with `code`.
    pub fn close_code_sent(&mut self, code: u16) {
        bump(&mut self.close_codes_sent[slot(&CLOSE_CODES, code)], 1);
    }

    /// A plain HTTP response written (including ones from `http::body_plan`).
    pub fn http_response(&mut self, status: u16) {
        bump(&mut self.http_responses[slot(&HTTP_STATUSES, status)], 1);
    }

    pub fn tls_handshake_completed(&mut self) {
        bump(&mut self.tls_handshakes, 1);
    }

    pub fn tls_handshake_failed(&mut self, why: TlsFailure) {
        bump(&mut self.tls_failures[why as usize], 1);
    }

    pub fn tls_failures(&self, why: TlsFailure) -> u64 {
        self.tls_failures[why as usize]
    }

    /// A SIGHUP reload of the certificate and key: `ok` when the new pair took effect.
    pub fn tls_reload(&mut self, ok: bool) {
        bump(if ok { &mut self.tls_reloads } else { &mut self.tls_reloads_failed }, 1);
    }

    /// Handshakes rejected with `status` (a status not in the table reads the "other" count).
    pub fn handshakes_rejected(&self, status: u16) -> u64 {
        self.handshakes_rejected[slot(&HANDSHAKE_REJECT_STATUSES, status)]
    }

    pub fn close_codes_sent(&self, code: u16) -> u64 {
        self.close_codes_sent[slot(&CLOSE_CODES, code)]
    }

    pub fn http_responses(&self, status: u16) -> u64 {
        self.http_responses[slot(&HTTP_STATUSES, status)]
    }

    /// Appends the Prometheus text exposition format (version 0.0.4) of every counter and
    /// gauge to `out`.
    pub fn render_prometheus(&self, gauges: &Gauges, out: &mut String) {
        if let Err(e) = self.write_prometheus(gauges, out) {
            // Not expected: writing to a String cannot fail.
            log::error!("rendering metrics failed: {e}");
        }
    }

    fn write_prometheus(&self, gauges: &Gauges, out: &mut String) -> fmt::Result {
        let counter = |out: &mut String, name: &str, help: &str, value: u64| -> fmt::Result {
            writeln!(out, "# HELP wshub_{name} {help}\n# TYPE wshub_{name} counter\nwshub_{name} {value}")
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| -> fmt::Result {
            writeln!(out, "# HELP wshub_{name} {help}\n# TYPE wshub_{name} gauge\nwshub_{name} {value}")
        };
        let table = |out: &mut String,
                     name: &str,
                     help: &str,
                     label: &str,
                     keys: &[u16],
                     values: &[u64]|
         -> fmt::Result {
            writeln!(out, "# HELP wshub_{name} {help}\n# TYPE wshub_{name} counter")?;
            for (key, value) in keys.iter().zip(values) {
                writeln!(out, "wshub_{name}{{{label}=\"{key}\"}} {value}")?;
            }
            let other = values.get(keys.len()).copied().unwrap_or(0);
            writeln!(out, "wshub_{name}{{{label}=\"other\"}} {other}")
        };

        counter(out, "connections_accepted_total", "TCP connections accepted.", self.connections_accepted)?;
        table(
            out,
            "handshakes_rejected_total",
            "Upgrade requests refused, by HTTP status.",
            "status",
            &HANDSHAKE_REJECT_STATUSES,
            &self.handshakes_rejected,
        )?;
        counter(
            out,
            "connections_opened_total",
            "Connections upgraded to WebSocket.",
            self.connections_opened,
        )?;
        counter(out, "connections_closed_total", "Connections closed.", self.connections_closed)?;
        counter(out, "messages_received_total", "WebSocket data messages received.", self.messages_received)?;
        counter(
            out,
            "messages_sent_total",
            "WebSocket messages queued by the reactor (fan-out copies are in deliveries).",
            self.messages_sent,
        )?;
        counter(out, "received_bytes_total", "Bytes read from sockets.", self.bytes_received)?;
        counter(out, "sent_bytes_total", "Bytes written to sockets.", self.bytes_sent)?;
        counter(out, "publishes_total", "Messages published to a topic.", self.publishes)?;
        counter(out, "broadcasts_total", "Messages broadcast to every client.", self.broadcasts)?;
        counter(
            out,
            "deliveries_total",
            "Published or broadcast messages queued to a client.",
            self.deliveries,
        )?;
        counter(
            out,
            "slow_consumers_dropped_total",
            "Clients disconnected for not reading fast enough.",
            self.slow_consumers_dropped,
        )?;
        counter(
            out,
            "connection_resets_total",
            "Connections ended by a socket error (reset by the peer, broken pipe).",
            self.connection_resets,
        )?;
        counter(out, "error_replies_total", "Protocol error replies sent to clients.", self.error_replies)?;
        counter(
            out,
            "topic_limit_refusals_total",
            "Subscriptions to a new topic refused at --max-topics.",
            self.topic_limit_refusals,
        )?;
        counter(
            out,
            "history_unavailable_total",
            "Publishes on history kept in Redis that got no offset: refused at once (Redis down, \
             output full, too many waiting) or failed after they were sent (an error reply, or \
             the connection lost or stalled before the reply).",
            self.history_unavailable.saturating_add(gauges.backplane.map_or(0, |b| b.appends_failed)),
        )?;
        table(
            out,
            "close_frames_sent_total",
            "Close frames sent, by close code.",
            "code",
            &CLOSE_CODES,
            &self.close_codes_sent,
        )?;
        table(
            out,
            "http_responses_total",
            "Plain HTTP responses sent, by status.",
            "status",
            &HTTP_STATUSES,
            &self.http_responses,
        )?;
        self.auth.write_prometheus(out)?;
        counter(out, "tls_handshakes_total", "TLS handshakes completed.", self.tls_handshakes)?;
        writeln!(
            out,
            "# HELP wshub_tls_handshake_failures_total TLS handshakes not completed, by reason.\n\
             # TYPE wshub_tls_handshake_failures_total counter"
        )?;
        for (label, value) in TLS_FAILURE_LABELS.iter().zip(self.tls_failures) {
            writeln!(out, "wshub_tls_handshake_failures_total{{reason=\"{label}\"}} {value}")?;
        }
        writeln!(
            out,
            "# HELP wshub_tls_reloads_total Certificate reloads on SIGHUP, by result.\n\
             # TYPE wshub_tls_reloads_total counter\n\
             wshub_tls_reloads_total{{result=\"ok\"}} {}\n\
             wshub_tls_reloads_total{{result=\"failed\"}} {}",
            self.tls_reloads, self.tls_reloads_failed
        )?;
        self.write_compression(gauges, out)?;
        gauge(out, "connections", "Open connections.", gauges.connections as u64)?;
        gauge(out, "topics", "Topics with at least one subscriber.", gauges.topics as u64)?;
        gauge(out, "uptime_seconds", "Seconds since the server started.", gauges.uptime_seconds)?;
        let history = &gauges.history;
        gauge(out, "history_topics", "Topics with history state.", history.topics as u64)?;
        gauge(out, "history_messages", "Messages kept for recovery.", history.messages as u64)?;
        gauge(
            out,
            "history_bytes",
            "Bytes the kept messages cost (bounded by --history-max-bytes).",
            history.bytes as u64,
        )?;
        if let Some(b) = &gauges.backplane {
            gauge(out, "backplane_up", "1 while the Redis backplane is connected.", u64::from(b.up))?;
            counter(
                out,
                "backplane_reconnects_total",
                "Connection attempts to Redis after the first.",
                b.reconnects,
            )?;
            counter(
                out,
                "backplane_stalled_total",
                "Connections to Redis dropped because a request went unanswered for 5 s.",
                b.stalled,
            )?;
            counter(
                out,
                "backplane_published_total",
                "Messages handed to Redis for the other nodes.",
                b.published,
            )?;
            counter(
                out,
                "backplane_publish_failed_total",
                "Messages not handed to Redis (down, buffer full, refused, or lost in flight).",
                b.publish_failed,
            )?;
            counter(
                out,
                "backplane_received_total",
                "Messages read from Redis channels and delivered here: other nodes' publishes and \
                 broadcasts, and every history message (this node's own included).",
                b.received,
            )?;
            counter(out, "backplane_garbage_total", "Messages from Redis dropped as malformed.", b.garbage)?;
        }
        Ok(())
    }

    /// The permessage-deflate series (all zero with `--compression` off).
    fn write_compression(&self, gauges: &Gauges, out: &mut String) -> fmt::Result {
        let counter = |out: &mut String, name: &str, help: &str, value: u64| -> fmt::Result {
            writeln!(out, "# HELP wshub_{name} {help}\n# TYPE wshub_{name} counter\nwshub_{name} {value}")
        };
        let (d, i) = (&gauges.deflate, &gauges.inflate);
        counter(
            out,
            "deflate_connections_total",
            "Connections upgraded with permessage-deflate negotiated.",
            self.connections_deflate,
        )?;
        counter(
            out,
            "deflate_messages_compressed_total",
            "Messages compressed (a fan-out compresses once per window size, not per subscriber).",
            d.messages_compressed,
        )?;
        counter(
            out,
            "deflate_messages_not_smaller_total",
            "Messages at or over the threshold sent plain because compressing did not shrink them.",
            d.not_smaller,
        )?;
        counter(
            out,
            "deflate_input_bytes_total",
            "Payload bytes of the compressed messages, before compression.",
            d.bytes_in,
        )?;
        counter(
            out,
            "deflate_output_bytes_total",
            "Payload bytes of the compressed messages, after compression.",
            d.bytes_out,
        )?;
        counter(
            out,
            "deflate_frames_sent_total",
            "Compressed frames queued to clients (a fan-out to N subscribers counts N).",
            d.frames_sent,
        )?;
        counter(out, "inflate_messages_total", "Compressed messages received and inflated.", i.messages)?;
        counter(
            out,
            "inflate_input_bytes_total",
            "Compressed payload bytes of the inflated messages.",
            i.bytes_in,
        )?;
        counter(out, "inflate_output_bytes_total", "Bytes the inflated messages inflated to.", i.bytes_out)?;
        writeln!(
            out,
            "# HELP wshub_inflate_refused_total Compressed messages refused: corrupt stream (1007), \
             inflating past --max-message-size (1009).\n\
             # TYPE wshub_inflate_refused_total counter\n\
             wshub_inflate_refused_total{{reason=\"corrupt\"}} {}\n\
             wshub_inflate_refused_total{{reason=\"too_big\"}} {}",
            i.corrupt, i.too_big
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics, g: &Gauges) -> String {
        let mut out = String::new();
        m.render_prometheus(g, &mut out);
        out
    }

    /// The value of the sample line `series` (name plus labels), if present.
    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn backplane_series_only_with_a_backplane() {
        let text = render(&Metrics::default(), &Gauges::default());
        assert!(!text.contains("backplane"));
        let stats =
            BackplaneStats { up: true, reconnects: 2, garbage: 5, stalled: 1, ..BackplaneStats::default() };
        let text = render(&Metrics::default(), &Gauges { backplane: Some(stats), ..Gauges::default() });
        assert_eq!(sample(&text, "wshub_backplane_up"), Some(1));
        assert_eq!(sample(&text, "wshub_backplane_reconnects_total"), Some(2));
        assert_eq!(sample(&text, "wshub_backplane_stalled_total"), Some(1));
        assert_eq!(sample(&text, "wshub_backplane_garbage_total"), Some(5));
        assert_eq!(sample(&text, "wshub_backplane_publish_failed_total"), Some(0));
    }

    #[test]
    fn history_unavailable_counts_refusals_and_late_failures() {
        let m = Metrics { history_unavailable: 3, ..Metrics::default() };
        assert_eq!(sample(&render(&m, &Gauges::default()), "wshub_history_unavailable_total"), Some(3));
        let stats = BackplaneStats { appends_failed: 4, ..BackplaneStats::default() };
        let text = render(&m, &Gauges { backplane: Some(stats), ..Gauges::default() });
        assert_eq!(sample(&text, "wshub_history_unavailable_total"), Some(7));
    }

    #[test]
    fn every_sample_has_help_and_type_and_the_prefix() {
        let text = render(&Metrics::default(), &Gauges::default());
        let mut names = Vec::new();
        for line in text.lines() {
            assert!(
                line.starts_with("wshub_")
                    || line.starts_with("# HELP wshub_")
                    || line.starts_with("# TYPE wshub_"),
                "{line}"
            );
            if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
                assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
                names.push(name.to_string());
            }
        }
        assert!(names.len() > 30);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn counters_move() {
        let mut m = Metrics::default();
        let before = render(&m, &Gauges::default());
        assert_eq!(sample(&before, "wshub_publishes_total"), Some(0));

        m.connection_accepted();
        m.connection_accepted();
        m.connection_opened();
        m.connection_closed();
        m.handshake_rejected(426);
        m.handshake_rejected(999);
        m.message_in();
        m.message_out();
        m.message_out();
        m.bytes_in(10);
        m.bytes_out(25);
        m.record_publish(3);
        m.record_broadcast(4);
        m.record_error_reply();
        m.slow_consumer_dropped();
        m.connection_reset();
        m.connection_reset();
        m.close_code_sent(1009);
        m.close_code_sent(4000);
        m.http_response(413);

        let text = render(
            &m,
            &Gauges { connections: 7, topics: 2, uptime_seconds: 99, backplane: None, ..Gauges::default() },
        );
        let expect = [
            ("wshub_connections_accepted_total", 2),
            ("wshub_connections_opened_total", 1),
            ("wshub_connections_closed_total", 1),
            ("wshub_handshakes_rejected_total{status=\"426\"}", 1),
            ("wshub_handshakes_rejected_total{status=\"400\"}", 0),
            ("wshub_handshakes_rejected_total{status=\"other\"}", 1),
            ("wshub_messages_received_total", 1),
            ("wshub_messages_sent_total", 2),
            ("wshub_received_bytes_total", 10),
            ("wshub_sent_bytes_total", 25),
            ("wshub_publishes_total", 1),
            ("wshub_broadcasts_total", 1),
            ("wshub_deliveries_total", 7),
            ("wshub_error_replies_total", 1),
            ("wshub_slow_consumers_dropped_total", 1),
            ("wshub_connection_resets_total", 2),
            ("wshub_close_frames_sent_total{code=\"1009\"}", 1),
            ("wshub_close_frames_sent_total{code=\"1000\"}", 0),
            ("wshub_close_frames_sent_total{code=\"other\"}", 1),
            ("wshub_http_responses_total{status=\"413\"}", 1),
            ("wshub_connections", 7),
            ("wshub_topics", 2),
            ("wshub_uptime_seconds", 99),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series}");
        }
        assert_eq!(m.handshakes_rejected(426), 1);
        assert_eq!(m.close_codes_sent(1009), 1);
        assert_eq!(m.http_responses(413), 1);
    }

    #[test]
    fn compression_series() {
        let mut m = Metrics::default();
        let text = render(&m, &Gauges::default());
        assert_eq!(sample(&text, "wshub_deflate_connections_total"), Some(0));
        assert_eq!(sample(&text, "wshub_inflate_refused_total{reason=\"too_big\"}"), Some(0));
        m.deflate_negotiated();
        m.deflate_negotiated();
        let deflate = DeflateStats {
            messages_compressed: 3,
            not_smaller: 1,
            bytes_in: 900,
            bytes_out: 300,
            frames_sent: 70,
        };
        let inflate = InflateStats { messages: 5, bytes_in: 50, bytes_out: 400, corrupt: 2, too_big: 1 };
        let text = render(&m, &Gauges { deflate, inflate, ..Gauges::default() });
        let expect = [
            ("wshub_deflate_connections_total", 2),
            ("wshub_deflate_messages_compressed_total", 3),
            ("wshub_deflate_messages_not_smaller_total", 1),
            ("wshub_deflate_input_bytes_total", 900),
            ("wshub_deflate_output_bytes_total", 300),
            ("wshub_deflate_frames_sent_total", 70),
            ("wshub_inflate_messages_total", 5),
            ("wshub_inflate_input_bytes_total", 50),
            ("wshub_inflate_output_bytes_total", 400),
            ("wshub_inflate_refused_total{reason=\"corrupt\"}", 2),
            ("wshub_inflate_refused_total{reason=\"too_big\"}", 1),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series}");
        }
    }

    #[test]
    fn counters_saturate_instead_of_overflowing() {
        let mut m = Metrics { bytes_received: u64::MAX - 1, ..Metrics::default() };
        m.bytes_in(10);
        assert_eq!(m.bytes_received, u64::MAX);
    }

    #[test]
    fn every_close_code_and_status_has_its_own_line() {
        let mut m = Metrics::default();
        for code in CLOSE_CODES {
            m.close_code_sent(code);
        }
        for status in HANDSHAKE_REJECT_STATUSES {
            m.handshake_rejected(status);
        }
        let text = render(&m, &Gauges::default());
        for code in CLOSE_CODES {
            assert_eq!(sample(&text, &format!("wshub_close_frames_sent_total{{code=\"{code}\"}}")), Some(1));
        }
        for status in HANDSHAKE_REJECT_STATUSES {
            assert_eq!(
                sample(&text, &format!("wshub_handshakes_rejected_total{{status=\"{status}\"}}")),
                Some(1)
            );
        }
        assert_eq!(sample(&text, "wshub_close_frames_sent_total{code=\"other\"}"), Some(0));
    }
}
