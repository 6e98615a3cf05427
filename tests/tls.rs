//! wss:// and https:// against the real binary, with an independent client (tungstenite over a
//! rustls client), and the hostile cases: plain HTTP on the TLS port, half a ClientHello, a flood
//! of handshakes, SIGHUP reloads under load, bad startup files. Certificates are made here with
//! rcgen (a CA and a leaf for localhost and 127.0.0.1); nothing secret is committed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use wshub::protocol::OpCode;

type Tls = StreamOwned<ClientConnection, TcpStream>;
type Ws = WebSocket<Tls>;

// ----- certificates -----

/// A CA and a leaf it signed, written as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wshub-tls-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Pki::issue(&dir);
        Pki { dir, ca }
    }

    /// Makes a new CA and leaf in `dir` (cert.pem with the leaf then the CA, key.pem, ca.pem);
    /// returns the CA certificate.
    fn issue(dir: &Path) -> CertificateDer<'static> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "wshub test CA");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        write_atomically(&dir.join("cert.pem"), &format!("{}{}", leaf.pem(), ca.pem()));
        write_atomically(&dir.join("key.pem"), &leaf_key.serialize_pem());
        write_atomically(&dir.join("ca.pem"), &ca.pem());
        ca.der().clone()
    }

    fn cert(&self) -> String {
        self.dir.join("cert.pem").to_string_lossy().into_owned()
    }

    fn key(&self) -> String {
        self.dir.join("key.pem").to_string_lossy().into_owned()
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca)
    }

    fn start(&self, extra: &[&str]) -> ServerProc {
        let cert = self.cert();
        let key = self.key();
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        ServerProc::start(&args)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Replaces a file in one step, so a reload never reads half of it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

// ----- clients -----

/// A TLS connection with the handshake completed (or its error).
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let socket = connect(addr);
    let conn = ClientConnection::new(Arc::clone(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, socket);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

fn wss_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Ws {
    let tls = tls_connect(addr, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (ws, response) = tungstenite::client(url.as_str(), tls).expect("WebSocket upgrade over TLS");
    assert_eq!(response.status(), 101);
    ws
}

/// An HTTPS request; returns the status and body, and whether the server ended with close_notify.
fn https(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, bool) {
    let mut tls = tls_connect(addr, config).expect("TLS handshake");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{}Content-Length: {}\r\n\r\n{body}",
        // The API takes JSON bodies only (415 otherwise).
        if method == "POST" { "Content-Type: application/json\r\n" } else { "" },
        body.len()
    );
    tls.write_all(request.as_bytes()).unwrap();
    let mut all = Vec::new();
    // rustls reports a TCP end without close_notify as UnexpectedEof.
    let clean = tls.read_to_end(&mut all).is_ok();
    let text = String::from_utf8_lossy(&all).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status_of(&text), body, clean)
}

fn metric(addr: SocketAddr, config: &Arc<ClientConfig>, series: &str) -> f64 {
    let (status, text, _) = https(addr, config, "GET", "/metrics", "");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == series).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("metric {series} missing in:\n{text}"))
}

/// The next text message as JSON (pings answered by tungstenite).
fn recv_json(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("message") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string())).unwrap();
}

/// Reads until the server's close frame; returns its code.
fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// Raw frames over TLS, for what tungstenite will not send.
fn raw_upgrade(addr: SocketAddr, config: &Arc<ClientConfig>) -> Tls {
    let mut tls = tls_connect(addr, config).expect("TLS handshake");
    tls.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tls
}

/// The close code of the first close frame the server sends on a raw connection.
fn raw_close_code(tls: &mut Tls) -> Option<u16> {
    loop {
        let mut h = [0u8; 2];
        tls.read_exact(&mut h).ok()?;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                tls.read_exact(&mut b).ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => panic!("unexpectedly large frame"),
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).ok()?;
        if h[0] & 0x0f == 0x8 {
            return Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

// ----- wss and https -----

#[test]
fn echo_over_wss_text_and_binary_then_close_with_close_notify() {
    let pki = Pki::new("echo");
    let server = pki.start(&["--echo"]);
    let config = pki.client_config();
    let mut ws = wss_connect(server.addr, &config);
    assert_eq!(ws.get_ref().conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    ws.send(Message::text("hello over TLS")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello over TLS"));
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    // Sixteen in flight at once come back in order.
    for i in 0..16 {
        ws.write(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..16 {
        assert_eq!(ws.read().unwrap(), Message::text(format!("m{i}")));
    }
    ws.close(None).unwrap();
    assert_eq!(close_code(&mut ws), Some(CloseCode::Normal));
    // After the close handshake the TLS stream ends cleanly: close_notify, then FIN.
    let tls = ws.get_mut();
    let mut rest = Vec::new();
    assert!(tls.read_to_end(&mut rest).is_ok(), "the server sent close_notify before closing");
}

#[test]
fn hub_over_wss_publish_reaches_subscribers_and_https_publish_too() {
    let pki = Pki::new("hub");
    let server = pki.start(&[]);
    let config = pki.client_config();
    let mut sub = wss_connect(server.addr, &config);
    let mut publisher = wss_connect(server.addr, &config);
    send_json(&mut sub, &json!({"type":"subscribe","payload":{"topic":"news"},"id":1}));
    assert_eq!(recv_json(&mut sub), json!({"type":"subscribed","payload":{"topic":"news"},"id":1}));
    send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"news","data":{"n":1}},"id":2}));
    assert_eq!(
        recv_json(&mut publisher),
        json!({"type":"ack","payload":{"topic":"news","delivered":1},"id":2})
    );
    assert_eq!(recv_json(&mut sub), json!({"type":"message","payload":{"topic":"news","data":{"n":1}}}));
    let (status, body, clean) =
        https(server.addr, &config, "POST", "/publish", r#"{"topic":"news","data":"via https"}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"delivered":1}"#));
    assert!(clean, "an HTTPS response ends with close_notify");
    assert_eq!(recv_json(&mut sub), json!({"type":"message","payload":{"topic":"news","data":"via https"}}));
}

#[test]
fn https_healthz_and_metrics() {
    let pki = Pki::new("healthz");
    let server = pki.start(&[]);
    let config = pki.client_config();
    let (status, body, clean) = https(server.addr, &config, "GET", "/healthz", "");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ok");
    assert!(clean);
    assert!(metric(server.addr, &config, "wshub_tls_handshakes_total") >= 1.0);
}

#[test]
fn close_codes_over_wss_bad_utf8_protocol_error_and_oversized() {
    let pki = Pki::new("codes");
    let server = pki.start(&["--echo", "--max-message-size", "1024"]);
    let config = pki.client_config();

    let mut tls = raw_upgrade(server.addr, &config);
    tls.write_all(&masked(OpCode::Text, true, &[0xC3, 0x28])).unwrap();
    assert_eq!(raw_close_code(&mut tls), Some(1007));

    let mut tls = raw_upgrade(server.addr, &config);
    // An unmasked client frame.
    tls.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(raw_close_code(&mut tls), Some(1002));

    let mut ws = wss_connect(server.addr, &config);
    ws.send(Message::text("x".repeat(2000))).unwrap();
    assert_eq!(close_code(&mut ws), Some(CloseCode::Size));

    let mut ws = wss_connect(server.addr, &config);
    ws.close(Some(tungstenite::protocol::CloseFrame { code: CloseCode::Away, reason: "bye".into() }))
        .unwrap();
    assert_eq!(close_code(&mut ws), Some(CloseCode::Away));
}

#[test]
fn a_tls_subscriber_that_does_not_read_is_cut_off_and_others_are_served() {
    let pki = Pki::new("slow");
    let server = pki.start(&["--max-queued-bytes", "262144", "--send-queue", "64"]);
    let config = pki.client_config();
    let mut slow = wss_connect(server.addr, &config);
    send_json(&mut slow, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    assert_eq!(recv_json(&mut slow)["type"], "subscribed");
    let mut fast = wss_connect(server.addr, &config);
    send_json(&mut fast, &json!({"type":"subscribe","payload":{"topic":"t"}}));
    assert_eq!(recv_json(&mut fast)["type"], "subscribed");
    let mut publisher = wss_connect(server.addr, &config);
    let data = "y".repeat(8 * 1024);
    // The slow one never reads; 2000 x 8 KiB is far over its bounds (socket buffers included).
    let started = Instant::now();
    for i in 0..2000 {
        send_json(&mut publisher, &json!({"type":"publish","payload":{"topic":"t","data":data}}));
        // The fast subscriber keeps up.
        let m = recv_json(&mut fast);
        assert_eq!(m["payload"]["data"], data.as_str(), "message {i}");
        if i % 100 == 99 && metric(server.addr, &config, "wshub_slow_consumers_dropped_total") >= 1.0 {
            break;
        }
    }
    assert!(metric(server.addr, &config, "wshub_slow_consumers_dropped_total") >= 1.0);
    assert!(started.elapsed() < Duration::from_secs(60));
    // The fast one is still served.
    send_json(&mut fast, &json!({"type":"ping","id":9}));
    assert_eq!(recv_json(&mut fast), json!({"type":"pong","id":9}));
}

// ----- hostile -----

#[test]
fn a_client_that_ends_with_close_notify_mid_frame_or_mid_head_gets_close_notify_back() {
    // RFC 8446 section 6.1: each side sends close_notify before closing its write side. A
    // client that gives up half-way through a frame (or its request head) and says so with
    // close_notify must see a clean end, not a truncated stream.
    let pki = Pki::new("notify");
    let server = pki.start(&["--echo"]);
    let config = pki.client_config();
    let mut mid_frame = raw_upgrade(server.addr, &config);
    let frame = masked(OpCode::Text, true, b"half of this never comes");
    mid_frame.write_all(&frame[..8]).unwrap();
    let mut mid_head = tls_connect(server.addr, &config).expect("TLS handshake");
    mid_head.write_all(b"GET /ws HTTP/1.1\r\nHost: loc").unwrap();
    for (tls, what) in [(&mut mid_frame, "mid-frame"), (&mut mid_head, "mid-head")] {
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        tls.sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        let end = tls.read_to_end(&mut rest);
        assert!(end.is_ok(), "{what}: the server ended without close_notify: {end:?}");
    }
    let mut ws = wss_connect(server.addr, &config);
    ws.send(Message::text("still serving")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still serving"));
}

#[test]
fn plain_http_to_the_tls_port_is_refused_at_once_and_counted() {
    let pki = Pki::new("plain");
    let server = pki.start(&[]);
    let config = pki.client_config();
    let mut s = connect(server.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut s);
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once, not after a timeout");
    assert!(!answer.contains("200"), "no plaintext service on the TLS port: {answer:?}");
    // A plain WebSocket upgrade is refused the same way.
    let mut s = connect(server.addr);
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    assert!(!read_to_close(&mut s).contains("101"));
    assert!(metric(server.addr, &config, "wshub_tls_handshake_failures_total{reason=\"error\"}") >= 2.0);
    let mut ws = wss_connect(server.addr, &config);
    ws.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(recv_json(&mut ws), json!({"type":"pong"}));
}

#[test]
fn half_a_client_hello_then_silence_costs_one_slot_until_the_timeout() {
    let pki = Pki::new("half");
    let server = pki.start(&["--handshake-timeout", "1"]);
    let config = pki.client_config();
    let mut silent = Vec::new();
    for _ in 0..20 {
        let mut s = connect(server.addr);
        // A handshake record announcing 512 bytes, and 20 of them.
        let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00];
        hello.extend_from_slice(&[0x01; 20]);
        s.write_all(&hello).unwrap();
        silent.push(s);
    }
    // Meanwhile everyone else is served.
    let mut ws = wss_connect(server.addr, &config);
    ws.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    assert_eq!(recv_json(&mut ws), json!({"type":"pong"}));
    let started = Instant::now();
    for s in &mut silent {
        assert!(sees_eof(s), "a silent handshake is closed");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after the 1 s timeout, took {:?}",
        started.elapsed()
    );
    assert!(metric(server.addr, &config, "wshub_tls_handshake_failures_total{reason=\"timeout\"}") >= 20.0);
    // A client that does nothing at all is timed out the same way.
    let mut idle = connect(server.addr);
    assert!(sees_eof(&mut idle));
}

#[test]
fn a_flood_of_handshakes_is_absorbed() {
    let pki = Pki::new("flood");
    let server = pki.start(&["--echo"]);
    let config = pki.client_config();
    let addr = server.addr;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let mut done = 0;
                for _ in 0..40 {
                    // Half finish the handshake and leave, half send garbage after the TCP connect.
                    if let Ok(mut tls) = tls_connect(addr, &config) {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        done += 1;
                    }
                    let mut s = connect(addr);
                    let _ = s.write_all(&[0x16, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8]);
                }
                done
            })
        })
        .collect();
    let completed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(completed, 320);
    let mut ws = wss_connect(addr, &config);
    ws.send(Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("still here"));
    assert!(metric(addr, &config, "wshub_tls_handshakes_total") >= 320.0);
}

#[test]
fn sighup_reloads_the_pair_under_load_and_a_bad_pair_keeps_the_old_one() {
    let pki = Pki::new("reload");
    let server = pki.start(&["--echo"]);
    let old_config = pki.client_config();
    let addr = server.addr;
    // Load: clients echoing through the reloads.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let config = Arc::clone(&old_config);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut ws = wss_connect(addr, &config);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = format!("client {i} message {n}");
                    ws.send(Message::text(text.clone())).unwrap();
                    assert_eq!(ws.read().unwrap(), Message::text(text));
                    n += 1;
                }
                ws.close(None).unwrap();
                assert_eq!(close_code(&mut ws), Some(CloseCode::Normal));
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));

    // A new pair from a new CA.
    let new_ca = Pki::issue(&pki.dir);
    let new_config = client_config(&new_ca);
    hup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tls_connect(addr, &new_config).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(tls_connect(addr, &old_config).is_err(), "new handshakes use the new pair");
    assert_eq!(metric(addr, &new_config, "wshub_tls_reloads_total{result=\"ok\"}"), 1.0);

    // A key that does not match: the reload fails and the current pair stays.
    let other = Pki::new("reload-other");
    std::fs::copy(other.dir.join("key.pem"), pki.dir.join("key.pem")).unwrap();
    hup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(addr, &new_config, "wshub_tls_reloads_total{result=\"failed\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the failed reload was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ws = wss_connect(addr, &new_config);
    ws.send(Message::text("after a failed reload")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("after a failed reload"));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        assert!(t.join().expect("open connections are untouched by reloads") > 0);
    }
}

fn hup(server: &ServerProc) {
    let ok = Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

// ----- startup -----

/// Runs the binary with TLS files that must be refused; returns its exit code and stderr.
fn refused(cert: &str, key: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_certificate_or_key_files_exit_1_with_a_clear_line() {
    let pki = Pki::new("startup");
    let other = Pki::new("startup-other");
    // A missing file is caught with the other settings, before anything is bound: exit 2.
    let missing = pki.dir.join("missing.pem").to_string_lossy().into_owned();
    let (code, err) = refused(&missing, &pki.key());
    assert_eq!(code, Some(2));
    assert!(err.contains("--tls-cert: cannot read") && err.contains("missing.pem"), "{err}");

    let not_pem = pki.dir.join("not.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let (code, err) = refused(&not_pem.to_string_lossy(), &pki.key());
    assert_eq!(code, Some(1));
    assert!(err.contains("no PEM CERTIFICATE"), "{err}");

    let (code, err) = refused(&pki.cert(), &other.key());
    assert_eq!(code, Some(1));
    assert!(err.contains("does not match"), "{err}");
}
