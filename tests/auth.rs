//! Connection tokens, permissions, expiry, refresh and rate limits over real sockets, against
//! the real binary. Keys are generated here: HMAC secrets, RSA (the `rsa` crate), EC P-256,
//! P-384 and Ed25519 (`rcgen`).

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use wshub::protocol::OpCode;

const SECRET: &str = "integration test secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs(claims: &Value) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

/// A file in the test's temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("wshub-auth-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Upgrades with `?token=` (query) or an Authorization header; returns the response head and
/// the stream.
fn upgrade(addr: SocketAddr, token: Option<&str>, via_header: bool) -> (String, TcpStream) {
    let mut s = connect(addr);
    let (path, extra) = match (token, via_header) {
        (Some(t), true) => ("/ws".to_string(), format!("Authorization: Bearer {t}\r\n")),
        (Some(t), false) => (format!("/ws?token={t}"), String::new()),
        (None, _) => ("/ws".to_string(), String::new()),
    };
    s.write_all(upgrade_request(&path, &extra).as_bytes()).unwrap();
    (read_head(&mut s), s)
}

fn open(addr: SocketAddr, token: &str) -> TcpStream {
    let (head, s) = upgrade(addr, Some(token), false);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut s = connect(addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let text = read_to_close(&mut s);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

/// Claims granting `news.*` and `user.{sub}` and publishing to `chat`, valid for an hour.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 3600,
           "wshub": {"subscribe": ["news.*", "user.{sub}"], "publish": ["chat"]}})
}

fn assert_subscribes(s: &mut TcpStream, topic: &str) {
    send_json(s, &json!({"type":"subscribe","payload":{"topic":topic},"id":1}));
    assert_eq!(recv_json(s), json!({"type":"subscribed","payload":{"topic":topic},"id":1}));
}

#[test]
fn every_key_family_verifies() {
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    // HMAC: all three digests against one secret, query and header.
    let server = ServerProc::start(&["--jwt-secret", SECRET]);
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let token =
            encode(&Header::new(alg), &claims("7"), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        for via_header in [false, true] {
            let (head, mut s) = upgrade(server.addr, Some(&token), via_header);
            assert!(head.starts_with("HTTP/1.1 101"), "{alg:?}: {head}");
            assert_subscribes(&mut s, "user.7");
        }
    }
    drop(server);

    // Public keys: (PEM public key, PEM private key, algorithms).
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let rsa_private = rsa_key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let rsa_public = rsa::RsaPublicKey::from(&rsa_key).to_public_key_pem(LineEnding::LF).unwrap();
    let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let families: Vec<(String, String, Vec<Algorithm>)> = vec![
        (
            rsa_public,
            rsa_private,
            vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256],
        ),
        (p256.public_key_pem(), p256.serialize_pem(), vec![Algorithm::ES256]),
        (p384.public_key_pem(), p384.serialize_pem(), vec![Algorithm::ES384]),
        (ed.public_key_pem(), ed.serialize_pem(), vec![Algorithm::EdDSA]),
    ];
    for (i, (public, private, algs)) in families.iter().enumerate() {
        let key_file = TempFile::new(&format!("key{i}.pem"), public);
        let server = ServerProc::start(&["--jwt-public-key", key_file.path()]);
        for &alg in algs {
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(private.as_bytes()),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
                _ => EncodingKey::from_rsa_pem(private.as_bytes()),
            }
            .unwrap();
            let token = encode(&Header::new(alg), &claims("9"), &key).unwrap();
            let mut s = open(server.addr, &token);
            assert_subscribes(&mut s, "news.sport");
        }
        // The HMAC family is not configured here: refused before any crypto.
        let (head, _) = upgrade(server.addr, Some(&hs(&claims("9"))), false);
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert_eq!(metric(server.addr, "wshub_auth_refused_total{cause=\"alg_not_allowed\"}"), 1);
    }
}

#[test]
fn each_refusal_is_a_401_with_its_cause_and_nothing_of_the_token() {
    let server =
        ServerProc::start(&["--jwt-secret", SECRET, "--jwt-audience", "wshub", "--jwt-issuer", "backend"]);
    let good = json!({"sub": "1", "exp": now() + 600, "aud": "wshub", "iss": "backend"});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs(&c)
    };
    let b64 = |v: Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let forged = encode(&Header::default(), &good, &EncodingKey::from_secret(b"wrong")).unwrap();
    let alg_none = format!("{}.{}.", b64(json!({"alg":"none","typ":"JWT"})), b64(good.clone()));
    #[rustfmt::skip]
    let cases: Vec<(Option<String>, &str, &str)> = vec![
        (None, "missing", "missing token"),
        (Some("not-a-jwt".into()), "malformed", "malformed token"),
        (Some(forged), "bad_signature", "bad token signature"),
        (Some(with(json!({"aud": "other"}))), "wrong_audience", "wrong token audience"),
        (Some(with(json!({"iss": "evil"}))), "wrong_issuer", "wrong token issuer"),
        (Some(with(json!({"nbf": now() + 600}))), "not_yet_valid", "token not yet valid"),
        (Some(with(json!({"exp": now() - 120}))), "expired", "token expired"),
        (Some(alg_none), "alg_not_allowed", "token algorithm not allowed"),
    ];
    for (token, label, reason) in &cases {
        let (head, mut s) = upgrade(server.addr, token.as_deref(), false);
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{label}: {head}");
        assert!(head.contains("\r\nWWW-Authenticate: Bearer"), "{label}: {head}");
        let body = read_to_close(&mut s);
        assert_eq!(body, format!("{reason}\n"), "{label}");
        if let Some(token) = token {
            let signature = token.rsplit('.').next().unwrap();
            assert!(signature.is_empty() || !head.contains(signature) && !body.contains(signature));
        }
        assert_eq!(
            metric(server.addr, &format!("wshub_auth_refused_total{{cause=\"{label}\"}}")),
            1,
            "{label}"
        );
    }
    assert_eq!(metric(server.addr, "wshub_handshakes_rejected_total{status=\"401\"}"), cases.len() as u64);
    // The good token passes, in the query percent-encoded too.
    let mut s = open(server.addr, &hs(&good).replace('.', "%2E"));
    send_json(&mut s, &json!({"type":"ping","id":1}));
    assert_eq!(recv_json(&mut s), json!({"type":"pong","id":1}));
    // A bad upgrade gets its own status first (426: no version): the token is checked last.
    let mut raw = connect(server.addr);
    raw.write_all(
        b"GET /ws?token=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    assert_eq!(status_of(&read_to_close(&mut raw)), 426);
}

#[test]
fn permissions_deny_and_keep_the_connection() {
    let server = ServerProc::start(&["--jwt-secret", SECRET, "--allow-client-broadcast"]);
    let mut alice = open(server.addr, &hs(&claims("alice")));
    let mut bob = open(server.addr, &hs(&claims("bob")));
    assert_subscribes(&mut alice, "user.alice");
    assert_subscribes(&mut alice, "news.sport");
    assert_subscribes(&mut bob, "news.sport");
    let denied = |id: u64| json!({"type":"error","payload":{"message":"Permission denied"},"id":id});
    for (i, msg) in [
        json!({"type":"subscribe","payload":{"topic":"user.alice"}}), // another user's topic
        json!({"type":"subscribe","payload":{"topic":"news"}}),       // not under the prefix
        json!({"type":"publish","payload":{"topic":"news.sport","data":1}}),
        json!({"type":"broadcast","payload":{"data":1}}), // the claim decides, not the switch
    ]
    .into_iter()
    .enumerate()
    {
        let id = i as u64 + 10;
        let mut msg = msg;
        msg["id"] = json!(id);
        send_json(&mut bob, &msg);
        assert_eq!(recv_json(&mut bob), denied(id), "{msg}");
    }
    // Still connected, and what is granted works.
    send_json(&mut bob, &json!({"type":"publish","payload":{"topic":"chat","data":"hi"},"id":20}));
    assert_eq!(recv_json(&mut bob), json!({"type":"ack","payload":{"topic":"chat","delivered":0},"id":20}));
    // Nothing bob was denied reached alice: her next message is a ping reply.
    send_json(&mut alice, &json!({"type":"ping","id":1}));
    assert_eq!(recv_json(&mut alice), json!({"type":"pong","id":1}));
    assert_eq!(metric(server.addr, "wshub_permission_denied_total"), 4);
}

#[test]
fn an_expired_token_closes_with_4001_at_exp() {
    let server = ServerProc::start(&["--jwt-secret", SECRET]);
    // Expired 5 s ago: within the 30 s leeway at connect, so the upgrade succeeds; the
    // connection must still not outlive `exp`, so the close comes at once (no waiting).
    let mut s = open(server.addr, &hs(&json!({"sub": "x", "exp": now() - 5})));
    let started = Instant::now();
    let close = loop {
        let f = read_frame(&mut s).expect("a close frame");
        if f.opcode == 0x8 {
            break f;
        }
    };
    assert_eq!(close.close_code(), Some(4001));
    assert_eq!(&close.payload[2..], b"token expired");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    s.write_all(&masked(OpCode::Close, true, &4001u16.to_be_bytes())).unwrap();
    assert!(sees_eof(&mut s));
    assert_eq!(metric(server.addr, "wshub_tokens_expired_total"), 1);
    // One close frame went out: the peer's answer to it is not a second one.
    assert_eq!(metric(server.addr, "wshub_close_frames_sent_total{code=\"4001\"}"), 1);
}

#[test]
fn refresh_extends_the_connection_and_narrows_permissions() {
    let server = ServerProc::start(&["--jwt-secret", SECRET, "--jwt-leeway", "0"]);
    let exp = now() + 2;
    let mut s =
        open(server.addr, &hs(&json!({"sub": "u", "exp": exp, "wshub": {"subscribe": ["a", "b.*"]}})));
    assert_subscribes(&mut s, "a");
    assert_subscribes(&mut s, "b.1");
    // Refused refreshes change nothing.
    let refresh = |t: String, id: u64| json!({"type":"refresh","payload":{"token":t},"id":id});
    send_json(&mut s, &refresh(hs(&json!({"sub": "other", "exp": exp + 600})), 1));
    assert_eq!(
        recv_json(&mut s),
        json!({"type":"error","payload":{"message":"Token refused: another subject"},"id":1})
    );
    send_json(&mut s, &refresh(hs(&json!({"sub": "u", "exp": now() - 10})), 2));
    assert_eq!(
        recv_json(&mut s),
        json!({"type":"error","payload":{"message":"Token refused: token expired"},"id":2})
    );
    // A good one for the same subject, narrower: b.1 is dropped and said so, then refreshed.
    let new_exp = now() + 600;
    send_json(&mut s, &refresh(hs(&json!({"sub": "u", "exp": new_exp, "wshub": {"subscribe": ["a"]}})), 3));
    assert_eq!(recv_json(&mut s), json!({"type":"unsubscribed","payload":{"topic":"b.1"}}));
    assert_eq!(recv_json(&mut s), json!({"type":"refreshed","payload":{"exp":new_exp},"id":3}));
    send_json(&mut s, &json!({"type":"subscribe","payload":{"topic":"b.2"},"id":4}));
    assert_eq!(recv_json(&mut s), json!({"type":"error","payload":{"message":"Permission denied"},"id":4}));
    // Past the first token's exp the connection is still open.
    while now() <= exp {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    send_json(&mut s, &json!({"type":"ping","id":5}));
    assert_eq!(recv_json(&mut s), json!({"type":"pong","id":5}));
    assert_eq!(metric(server.addr, "wshub_token_refreshes_total"), 1);
    assert_eq!(metric(server.addr, "wshub_token_refreshes_refused_total"), 2);
}

#[test]
fn rate_limit_closes_a_flooder_and_spares_a_polite_client() {
    data_flood_is_closed_at_the_rate(Mode::Hub);
}

#[test]
fn echo_mode_closes_a_flooder_at_the_rate_too() {
    data_flood_is_closed_at_the_rate(Mode::Echo);
}

#[test]
fn a_ping_flood_is_answered_at_the_rate_then_closed() {
    ping_flood_is_answered_at_the_rate_then_closed(Mode::Hub);
}

#[test]
fn echo_mode_answers_a_ping_flood_at_the_rate_then_closes_too() {
    ping_flood_is_answered_at_the_rate_then_closed(Mode::Echo);
}

/// The two server modes: their frame loops differ, their rate limit must not.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Hub,
    Echo,
}

fn start_limited(mode: Mode, burst: &str) -> ServerProc {
    let mut args = vec!["--rate-limit", "20", "--rate-burst", burst];
    if mode == Mode::Echo {
        args.push("--echo");
    }
    ServerProc::start(&args)
}

fn data_flood_is_closed_at_the_rate(mode: Mode) {
    let server = start_limited(mode, "10");
    let mut polite = ws_connect(server.addr);
    let mut flooder = ws_connect(server.addr);
    let ping = masked(OpCode::Text, true, br#"{"type":"ping"}"#);
    let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 200).collect();
    flooder.write_all(&batch).unwrap();
    // Answers (hub pongs or echoes) to the messages within the burst, then the close.
    let mut answers = 0;
    let code = loop {
        let f = read_frame(&mut flooder).expect("close before EOF");
        match f.opcode {
            0x1 => answers += 1,
            0x8 => break f,
            _ => {}
        }
    };
    assert_eq!(code.close_code(), Some(1008));
    assert_eq!(&code.payload[2..], b"rate limit exceeded");
    assert!((10..=15).contains(&answers), "{answers} answered before the close (burst 10)");
    // The polite client, at 10/s, is never refused.
    for id in 0..8 {
        let message = json!({"type":"ping","id":id});
        send_json(&mut polite, &message);
        let answer = if mode == Mode::Echo { message } else { json!({"type":"pong","id":id}) };
        assert_eq!(recv_json(&mut polite), answer);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(server.addr, "wshub_rate_limited_total"), 1);
}

fn ping_flood_is_answered_at_the_rate_then_closed(mode: Mode) {
    let server = start_limited(mode, "5");
    let mut s = ws_connect(server.addr);
    let ping = masked(OpCode::Ping, true, b"p");
    let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 100).collect();
    s.write_all(&batch).unwrap();
    let mut pongs = 0;
    let close = loop {
        let f = read_frame(&mut s).expect("close before EOF");
        match f.opcode {
            0xA => pongs += 1,
            0x8 => break f,
            other => panic!("opcode {other}"),
        }
    };
    assert_eq!(close.close_code(), Some(1008));
    assert!((5..=8).contains(&pongs), "{pongs} pongs for a burst of 5");
    assert_eq!(metric(server.addr, "wshub_rate_limited_total"), 1);
}

#[test]
fn secrets_and_keys_can_come_from_files() {
    let secret = TempFile::new("secret", &format!("{SECRET}\n"));
    let api_key = TempFile::new("apikey", "file-key\n");
    let server = ServerProc::start(&["--jwt-secret-file", secret.path(), "--api-key-file", api_key.path()]);
    let mut s = open(server.addr, &hs(&claims("f")));
    assert_subscribes(&mut s, "user.f");
    let publish = |key: &str| {
        let mut c = connect(server.addr);
        let body = r#"{"topic":"user.f","data":1}"#;
        let req = format!(
            "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        status_of(&read_to_close(&mut c))
    };
    assert_eq!(publish("file-key"), 200);
    assert_eq!(publish("wrong"), 401);
    assert_eq!(recv_json(&mut s), json!({"type":"message","payload":{"topic":"user.f","data":1}}));
}

#[test]
fn a_bad_key_file_stops_the_server_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--listen", "127.0.0.1:0", "--jwt-public-key", "/nonexistent/key.pem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jwt-public-key"), "{err}");
}
