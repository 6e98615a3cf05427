//! The TLS transport against a real rustls client over loopback: the server side is driven by
//! hand (non-blocking, polled), the client is blocking in a thread.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::*;
use crate::tls;

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pki() -> Pki {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let chain = tls::parse_cert_chain(cert.cert.pem().as_bytes()).unwrap();
    let key = tls::parse_private_key(cert.signing_key.serialize_pem().as_bytes()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(chain[0].clone()).unwrap();
    let client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki { server: tls::server_config(chain, key).unwrap(), client: Arc::new(client) }
}

type Client = StreamOwned<ClientConnection, std::net::TcpStream>;

/// A listener, a connected blocking client socket and the accepted server transport.
fn pair(pki: &Pki) -> (std::net::TcpStream, Transport) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (client, Transport::tls(TcpStream::from_std(server), &pki.server).unwrap())
}

fn tls_client(pki: &Pki, socket: std::net::TcpStream) -> Client {
    let conn =
        ClientConnection::new(Arc::clone(&pki.client), ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, socket)
}

/// Server loop: echo every plaintext byte until the peer ends or `limit` passes. Returns the
/// bytes echoed and how the read side ended.
fn echo_until_end(t: &mut Transport, limit: Duration) -> (usize, io::Result<()>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut pool = BufferPool::default();
    let mut out = OutQueue::default();
    let mut total = 0;
    let start = Instant::now();
    while start.elapsed() < limit {
        match t.read(&mut buf, &mut scratch) {
            Ok(Received { n: 0, .. }) => {
                t.flush(&mut out, &mut pool).unwrap();
                return (total, Ok(()));
            }
            Ok(r) => {
                out.push_bytes(&mut pool, &buf[..r.n]);
                total += r.n;
                if r.more {
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return (total, Err(e)),
        }
        if let Err(e) = t.flush(&mut out, &mut pool) {
            return (total, Err(e));
        }
        thread::sleep(Duration::from_micros(200));
    }
    (total, Err(io::ErrorKind::TimedOut.into()))
}

#[test]
fn handshake_then_echo_both_ways_with_a_large_payload() {
    let pki = pki();
    let (socket, mut server) = pair(&pki);
    let mut client = tls_client(&pki, socket);
    let payload: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sent = payload.clone();
    let reader = thread::spawn(move || {
        client.write_all(b"hello").unwrap();
        let mut got = vec![0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        // Write and read at once so neither side's buffers fill up.
        let mut back = vec![0u8; sent.len()];
        for chunk in sent.chunks(100_000) {
            client.write_all(chunk).unwrap();
            client.flush().unwrap();
        }
        client.read_exact(&mut back).unwrap();
        assert!(back == sent, "echo differs");
        client.conn.send_close_notify();
        client.flush().unwrap();
    });
    let (echoed, end) = echo_until_end(&mut server, Duration::from_secs(60));
    reader.join().unwrap();
    end.unwrap();
    assert_eq!(echoed, 5 + payload.len());
    assert!(!server.handshaking());
    assert!(server.handshake_completed());
    assert!(!server.handshake_completed(), "reported once");
}

#[test]
fn plain_http_on_the_tls_port_is_an_error_not_a_hang() {
    let pki = pki();
    let (mut socket, mut server) = pair(&pki);
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (echoed, end) = echo_until_end(&mut server, Duration::from_secs(20));
    assert_eq!(echoed, 0);
    assert_eq!(end.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(server.handshaking());
}

#[test]
fn half_a_client_hello_waits_without_output() {
    let pki = pki();
    let (mut socket, mut server) = pair(&pki);
    // A TLS handshake record header announcing 512 bytes, and only 20 of them.
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    hello.extend_from_slice(&[0x01; 20]);
    socket.write_all(&hello).unwrap();
    thread::sleep(Duration::from_millis(50));
    let mut buf = vec![0u8; 256 * 1024];
    let mut scratch = vec![0u8; 64 * 1024];
    let err = server.read(&mut buf, &mut scratch).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(server.handshaking());
    assert!(!server.has_pending());
}

#[test]
fn finish_sends_close_notify_before_fin() {
    let pki = pki();
    let (socket, mut server) = pair(&pki);
    let mut client = tls_client(&pki, socket);
    let talker = thread::spawn(move || {
        client.write_all(b"ping").unwrap();
        let mut all = Vec::new();
        // A clean end (Ok) needs close_notify; a bare FIN is an UnexpectedEof error.
        client.read_to_end(&mut all).map(|_| all)
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut scratch = vec![0u8; 64 * 1024];
    let mut pool = BufferPool::default();
    let mut out = OutQueue::default();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(20), "no plaintext arrived");
        match server.read(&mut buf, &mut scratch) {
            Ok(r) if r.n > 0 => {
                out.push_bytes(&mut pool, &buf[..r.n]);
                break;
            }
            Ok(_) => panic!("unexpected end"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e}"),
        }
    }
    server.flush(&mut out, &mut pool).unwrap();
    assert!(out.is_empty());
    assert!(server.finish().unwrap());
    let all = talker.join().unwrap().expect("the client saw close_notify");
    assert_eq!(all, b"ping");
}

#[test]
fn output_the_peer_does_not_read_is_bounded_inside_rustls() {
    let pki = pki();
    let (socket, mut server) = pair(&pki);
    let mut client = tls_client(&pki, socket);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stalled = thread::spawn(move || {
        client.write_all(b"x").unwrap();
        // Read nothing more until told to.
        rx.recv().unwrap();
        let mut total = 0;
        let mut buf = vec![0u8; 65536];
        while total < 8 << 20 {
            total += client.read(&mut buf).unwrap();
        }
        total
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut scratch = vec![0u8; 64 * 1024];
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(20), "the first byte never arrived");
        match server.read(&mut buf, &mut scratch) {
            Ok(r) if r.n > 0 => break,
            _ => thread::sleep(Duration::from_millis(1)),
        }
    }
    let mut pool = BufferPool::default();
    let mut out = OutQueue::default();
    let frame: Rc<[u8]> = vec![7u8; 64 * 1024].into();
    for _ in 0..128 {
        out.push_shared(&frame);
    }
    let f = server.flush(&mut out, &mut pool).unwrap();
    assert!(f.blocked, "8 MiB do not fit in the socket buffers");
    // What rustls holds is bounded by its buffer limit; the rest waits, unencrypted, as shared
    // frames in the queue.
    assert!(server.has_pending());
    assert!(server.pending_bytes() <= 64 * 1024 + 1024, "{}", server.pending_bytes());
    assert!(out.queued_bytes() > 4 << 20);
    tx.send(()).unwrap();
    let start = Instant::now();
    while !out.is_empty() || server.has_pending() {
        assert!(start.elapsed() < Duration::from_secs(30), "output never drained");
        server.flush(&mut out, &mut pool).unwrap();
        thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(server.pending_bytes(), 0);
    assert_eq!(stalled.join().unwrap(), 8 << 20);
}
