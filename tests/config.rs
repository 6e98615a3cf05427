//! Settings as an operator meets them: every validation rule through the real binary (exit code
//! 2, one line per problem naming where the value came from), the config file and its
//! precedence, `check-config`, `--version`, JSON logs, and the example file in the repository.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use wshub::config::validate::{RANGES, RULES};

fn wshub() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wshub"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("WSHUB_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info");
    c
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = cmd.stdin(Stdio::null()).output().expect("run wshub");
    (
        status.code().expect("exit code"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn check(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run(wshub().arg("check-config").args(args).envs(env.iter().copied()))
}

/// Limits the child's open files (soft and hard, so the server cannot raise it).
fn with_nofile(cmd: &mut Command, n: u64) -> &mut Command {
    // SAFETY: only an async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wshub-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// (rule, arguments, environment, the one error line expected, minus the `wshub: error: ` prefix)
type Row = (&'static str, &'static [&'static str], &'static [(&'static str, &'static str)], &'static str);

const ROWS: &[Row] = &[
    ("path", &["--path", "ws"], &[], "--path: \"ws\" must start with '/' (request paths always do"),
    ("path", &["--path", "/ws?x=1"], &[], "--path: \"/ws?x=1\" must be a plain path, without '?'"),
    ("path", &["--path", "/a b"], &[], "--path: \"/a b\" must be a plain path"),
    ("path", &[], &[("WSHUB_PATH", "ws")], "WSHUB_PATH: \"ws\" must start with '/'"),
    (
        "ping-interval",
        &["--ping-interval", "70", "--pong-wait", "60"],
        &[],
        "--ping-interval: 70 s must be below --pong-wait 60 s (or either 0)",
    ),
    ("ping-interval", &["--ping-interval", "60", "--pong-wait", "60"], &[], "--ping-interval: 60 s must be below"),
    ("ping-interval", &["--ping-interval", "61"], &[], "--ping-interval: 61 s must be below --pong-wait 60 s"),
    (
        "allowed-origin",
        &["--allowed-origin", "notaurl"],
        &[],
        "--allowed-origin: \"notaurl\" must be `*` or scheme://host[:port] as browsers send it: no scheme://",
    ),
    (
        "allowed-origin",
        &["--allowed-origin", "https://app.example.com/"],
        &[],
        "--allowed-origin: \"https://app.example.com/\" must be `*` or scheme://host[:port] as browsers send it: it has a path",
    ),
    ("allowed-origin", &["--allowed-origin", "https://h:0"], &[], "the port is not a number from 1 to 65535"),
    ("subprotocol", &["--subprotocol", "chat v2"], &[], "--subprotocol: \"chat v2\" must be an HTTP token"),
    ("api-key", &["--api-key="], &[], "--api-key: must be non-empty visible ASCII without spaces"),
    ("api-key", &["--api-key", "a b"], &[], "--api-key: must be non-empty visible ASCII without spaces"),
    ("send-queue", &[], &[("WSHUB_SEND_QUEUE", "0")], "WSHUB_SEND_QUEUE: 0 is out of range: must be from 1 to 1000000"),
    (
        "(any FilePath flag)",
        &["--tls-cert", "/nonexistent/cert.pem", "--tls-key", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")],
        &[],
        "--tls-cert: cannot read /nonexistent/cert.pem: No such file or directory",
    ),
    (
        "(any FilePath flag)",
        &["--tls-cert", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"), "--tls-key", "/"],
        &[],
        "--tls-key: cannot read /: not a regular file",
    ),
    ("redis-prefix", &["--redis-prefix", "my app:"], &[], "--redis-prefix: \"my app:\" must be at most 256 bytes"),
    (
        "redis",
        &["--echo", "--redis", "redis://127.0.0.1:6379"],
        &[],
        "--redis: cannot be used with --echo: echo mode has no hub",
    ),
];

/// Every non-range rule has rows, every row fails alone with exactly its line and exit code 2.
#[test]
fn every_rule_refuses_its_bad_values_with_exit_2_and_one_line() {
    for (rule, _) in RULES {
        assert!(ROWS.iter().any(|r| r.0 == *rule), "rule {rule} has no row");
    }
    for (rule, args, env, expected) in ROWS {
        let (code, stdout, stderr) = check(args, env);
        assert_eq!(code, 2, "{rule} {args:?}: stdout {stdout} stderr {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{rule} {args:?}: {stderr}");
        let line = lines[0].strip_prefix("wshub: error: ").unwrap_or_else(|| panic!("{}", lines[0]));
        assert!(line.contains(expected), "{rule} {args:?}:\n got  {line}\n want {expected}");
        assert!(stdout.is_empty(), "nothing printed when invalid: {stdout}");
    }
}

/// Each row of the range table: just below its minimum and above its maximum are refused,
/// naming the flag and the range; the bounds themselves are accepted.
#[test]
fn every_range_is_enforced_at_both_ends() {
    let cmd = wshub::config::command();
    for r in RANGES {
        assert!(
            cmd.get_arguments().any(|a| a.get_long() == Some(r.flag)),
            "RANGES names --{}, not a flag",
            r.flag
        );
        let flag = format!("--{}", r.flag);
        let fmt = |v: f64| if v.fract() == 0.0 { format!("{v:.0}") } else { v.to_string() };
        let mut bad = vec![fmt(r.max * 2.0 + 1.0)];
        if r.min > 0.0 {
            bad.push(if r.min >= 1.0 { fmt(r.min - 1.0) } else { "0".to_owned() });
        }
        // Companions so a cross rule does not fire instead.
        let companions: &[&str] = match r.flag {
            "max-message-size" => &["--max-queued-bytes", "1073741824"],
            "ping-interval" => &["--pong-wait", "0"],
            "pong-wait" => &["--ping-interval", "0"],
            _ => &[],
        };
        for value in bad {
            let (code, _, stderr) = check(&[&[flag.as_str(), value.as_str()], companions].concat(), &[]);
            assert_eq!(code, 2, "{flag} {value}: {stderr}");
            let want = format!("wshub: error: {flag}: {value} is out of range: must be from ");
            assert!(stderr.lines().any(|l| l.starts_with(&want)), "{flag} {value}:\n{stderr}\nwant {want}");
        }
        for value in [fmt(r.min), fmt(r.max)] {
            if r.flag == "max-connections" {
                continue; // the top is lowered to the open-file limit, tested below
            }
            let (code, _, stderr) = check(&[&[flag.as_str(), value.as_str()], companions].concat(), &[]);
            assert_eq!(code, 0, "{flag} {value}: {stderr}");
        }
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let (code, _, stderr) = check(
        &[
            "--path",
            "ws",
            "--ping-interval",
            "70",
            "--pong-wait",
            "60",
            "--send-queue",
            "0",
            "--max-message-size",
            "0",
            "--allowed-origin",
            "notaurl",
        ],
        &[],
    );
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    for flag in ["--path", "--ping-interval", "--send-queue", "--max-message-size", "--allowed-origin"] {
        assert!(lines.iter().any(|l| l.starts_with(&format!("wshub: error: {flag}: "))), "{flag}: {stderr}");
    }
}

#[test]
fn a_queue_bound_below_the_message_size_is_a_warning() {
    let (code, _, stderr) = check(&["--max-message-size", "5000000"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "--max-queued-bytes 4194304 is below --max-message-size 5000000: a receiver of a message"
        ),
        "{stderr}"
    );
}

#[test]
fn syntax_errors_stay_clap_errors_with_exit_2() {
    let (code, _, stderr) = check(&["--send-queue", "many"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("invalid value 'many' for '--send-queue"), "{stderr}");
}

#[test]
fn max_connections_over_the_open_file_limit_is_lowered_with_a_warning() {
    let (code, stdout, stderr) =
        run(with_nofile(wshub().args(["check-config", "--max-connections", "1000"]), 256));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("--max-connections 1000 lowered to 192 (by 808): the open-file limit is 256"),
        "{stderr}"
    );
    assert!(stdout.contains("max-connections = 192  # --max-connections, lowered to fit"), "{stdout}");
    // Without the flag the default is derived from the limit, silently.
    let (code, stdout, stderr) = run(with_nofile(wshub().arg("check-config"), 256));
    assert_eq!(code, 0);
    assert!(!stderr.contains("lowered"), "{stderr}");
    assert!(stdout.contains("max-connections = 192  # derived from the open-file limit 256"), "{stdout}");
    // A limit that leaves nothing for connections is an error.
    let (code, _, stderr) = run(with_nofile(wshub().arg("check-config"), 24));
    assert_eq!(code, 2);
    assert!(stderr.contains("the open-file limit (24) leaves no descriptor for connections"), "{stderr}");
}

#[test]
fn file_values_are_overridden_by_env_then_flags_and_problems_name_the_key() {
    let path = temp_file(
        "precedence.toml",
        "send-queue = 7\nmax-topic-length = 9\nmax-subscriptions = 11\npath = \"/f\"\n\
         allowed-origin = [\"https://a.example\"]\n[max]\nbody-size = 1000\n",
    );
    let path = path.to_str().unwrap();
    let (code, stdout, stderr) = check(
        &["--config", path, "--send-queue", "3"],
        &[("WSHUB_SEND_QUEUE", "5"), ("WSHUB_MAX_TOPIC_LENGTH", "4")],
    );
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "send-queue = 3  # --send-queue".to_owned(),
        "max-topic-length = 4  # WSHUB_MAX_TOPIC_LENGTH".to_owned(),
        format!("max-subscriptions = 11  # {path}: key `max-subscriptions`"),
        format!("max-body-size = 1000  # {path}: key `max.body-size`"),
        format!("path = \"/f\"  # {path}: key `path`"),
        format!("allowed-origin = [\"https://a.example\"]  # {path}: key `allowed-origin`"),
        "max-message-size = 1048576  # --max-message-size (default)".to_owned(),
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in\n{stdout}");
    }
    // A bad file value is blamed on its key.
    let bad = temp_file(
        "bad.toml",
        "path = \"ws\"\nsend-queue = 0\n[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/\"\n",
    );
    let (code, _, stderr) = check(&["--config", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    let b = bad.display();
    assert!(
        stderr.contains(&format!("wshub: error: {b}: key `path`: \"ws\" must start with '/'")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("wshub: error: {b}: key `send-queue`: 0 is out of range")), "{stderr}");
    assert!(
        stderr.contains(&format!("wshub: error: {b}: key `tls.cert`: cannot read /nonexistent/c.pem")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("wshub: error: {b}: key `tls.key`: cannot read /: not a regular file")),
        "{stderr}"
    );
    // ... unless a flag overrides it.
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let overrides = ["--path", "/ok", "--send-queue", "1", "--tls-cert", manifest, "--tls-key", manifest];
    let (code, _, stderr) = check(&[&["--config", bad.to_str().unwrap()][..], &overrides].concat(), &[]);
    // Every file problem is gone; what is left is check-config loading the (non-PEM) pair.
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("Cargo.toml holds no PEM CERTIFICATE"), "{stderr}");
}

#[test]
fn unknown_keys_and_unreadable_files_are_errors() {
    let path = temp_file("typo.toml", "max_message_size = 10\nmax-mesage-size = 10\n[tls]\ncertt = \"x\"\n");
    let p = path.display();
    let (code, _, stderr) = check(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert_eq!(
        lines[0],
        format!("wshub: error: {p}: unknown key `max_message_size` (did you mean `max-message-size`?)")
    );
    assert!(lines[1].starts_with(&format!("wshub: error: {p}: unknown key `max-mesage-size`")), "{stderr}");
    assert!(lines[2].starts_with(&format!("wshub: error: {p}: unknown key `tls.certt`")), "{stderr}");
    // The server refuses it too, before binding.
    let (code, _, _) = run(wshub().args(["--listen", "127.0.0.1:0", "--config", path.to_str().unwrap()]));
    assert_eq!(code, 2);

    let (code, _, stderr) = check(&["--config", "/nonexistent/wshub.toml"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/wshub.toml: cannot read config file"), "{stderr}");
    let syntax = temp_file("syntax.toml", "path = \"/ws\"\nsend-queue = = 1\n");
    let (code, _, stderr) = check(&["--config", syntax.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains(&format!("{}:2: not valid TOML", syntax.display())), "{stderr}");
}

#[test]
fn check_config_masks_secrets_and_binds_nothing() {
    // The port is taken: check-config must still succeed because it binds nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stdout, stderr) = check(&["--listen", &addr, "--api-key", "hunter2hunter2"], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("api-key = \"********\"  # --api-key"), "{stdout}");
    assert!(stdout.contains(&format!("listen = \"{addr}\"")), "{stdout}");
    // The output is itself a config file that passes.
    let saved = temp_file("saved.toml", &stdout);
    let (code, _, stderr) = check(&["--config", saved.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn debug_output_shows_no_secret() {
    // Every secret, from the command line and from a file: the API key, the JWT secret and a
    // Redis password (in the file, so the file's own records are checked too).
    let file = temp_file(
        "secrets.toml",
        "api-key = \"hunter2key\"\nredis = \"redis://u:hunter2pw@127.0.0.1:6379\"\n",
    );
    let args = ["wshub", "--config", file.to_str().unwrap(), "--jwt-secret", "hunter2jwt"];
    let loaded = wshub::config::load(args, 1024).expect("valid settings");
    assert_eq!(loaded.config.effective_api_key().unwrap().as_deref(), Some("hunter2key"));
    let shown = format!(
        "{:?} {:?} {:?} {:#?}",
        loaded.config,
        loaded.config.http(),
        loaded.file,
        loaded.config.redis
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    // Still useful: what is set shows, and where.
    assert!(shown.contains("u:***@127.0.0.1:6379"), "{shown}");
    assert!(shown.contains("--api-key=********"), "{shown}");
}

#[test]
fn check_config_loads_the_tls_pair_as_the_server_would() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let (code, stdout, stderr) = check(&["--tls-cert", manifest, "--tls-key", manifest], &[]);
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.starts_with("wshub: error: ") && stderr.contains("Cargo.toml"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn version_lists_capabilities() {
    let (code, stdout, _) = run(wshub().arg("--version"));
    assert_eq!(code, 0);
    assert!(stdout.starts_with(&format!("wshub {}\ncapabilities:\n", env!("CARGO_PKG_VERSION"))), "{stdout}");
    for c in wshub::capabilities::CAPABILITIES {
        let state = if c.enabled { "yes" } else { "no" };
        assert!(
            stdout.lines().any(|l| l.split_whitespace().take(2).eq([c.name, state])),
            "{} {state} missing:\n{stdout}",
            c.name
        );
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_connection() {
    let mut child = with_nofile(wshub().args(["--listen", "127.0.0.1:0", "--log-format", "json"]), 1024)
        .args(["--max-connections", "10000"])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut next = || {
        let line = lines.next().expect("a log line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(v[field].is_string(), "{field} in {line}");
        }
        v
    };
    let warning = next();
    assert_eq!(warning["level"], "WARN");
    assert!(warning["message"].as_str().unwrap().starts_with("--max-connections 10000 lowered to 864 "));
    let listening = next();
    assert_eq!(listening["level"], "INFO");
    let message = listening["message"].as_str().unwrap();
    let addr: std::net::SocketAddr =
        message.split("listening on ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let mut s = connect(addr);
    let local = s.local_addr().unwrap().to_string();
    s.write_all(upgrade_request("/ws", "").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut s)), 101);
    drop(s);
    // accepted (conn, peer), upgraded (conn), closed (conn, peer)
    let accepted = next();
    assert_eq!(accepted["message"], "accepted", "{accepted}");
    assert!(accepted["conn"].is_u64(), "{accepted}");
    assert_eq!(accepted["peer"], local.as_str());
    let id = accepted["conn"].clone();
    let upgraded = next();
    assert_eq!((&upgraded["message"], &upgraded["conn"]), (&"upgraded".into(), &id), "{upgraded}");
    let closed = next();
    assert!(closed["message"].as_str().unwrap().starts_with("closed: "), "{closed}");
    assert_eq!((&closed["conn"], &closed["peer"]), (&id, &local.as_str().into()), "{closed}");
    let _ = child.kill();
    let _ = child.wait();
}

/// The example file documents the defaults truthfully, and a server started from it (with a
/// few values changed in place) behaves as the same flags would.
#[test]
fn example_file_matches_the_defaults_and_drives_a_server_like_flags() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("wshub.example.toml");
    let values = |args: &[&str]| -> Vec<String> {
        let (code, stdout, stderr) = check(args, &[]);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split("  #").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values(&["--config", example.to_str().unwrap()]), values(&[]));

    let mut text = std::fs::read_to_string(&example).unwrap();
    for (from, to) in [
        ("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\""),
        ("path = \"/ws\"", "path = \"/hub\""),
        ("max-message-size = 1048576", "max-message-size = 1000"),
        ("max-topic-length = 256", "max-topic-length = 8"),
        ("allow-client-broadcast = false", "allow-client-broadcast = true"),
    ] {
        assert!(text.contains(from), "the example lost {from}");
        text = text.replacen(from, to, 1);
    }
    let edited = temp_file("example-edited.toml", &text);
    let mut from_file = wshub();
    from_file.args(["--config", edited.to_str().unwrap()]);
    let from_file = ServerProc::spawn(from_file);
    let from_flags = ServerProc::start(&[
        "--path",
        "/hub",
        "--max-message-size",
        "1000",
        "--max-topic-length",
        "8",
        "--allow-client-broadcast",
    ]);
    let a = behaviour(from_file.addr);
    assert_eq!(a, behaviour(from_flags.addr));
    assert_eq!(
        a,
        [
            "/ws: 404".to_owned(),
            "/hub: 101".to_owned(),
            r#"long topic: {"type":"error","payload":{"message":"Topic too long (9 bytes, max 8)"}}"#
                .to_owned(),
            r#"broadcast: {"type":"message","payload":{"data":1}}"#.to_owned(),
            "1001-byte message: close 1009".to_owned(),
        ]
    );
}

/// Every flag is in the example file, set or commented out (`# key = value`), so the file stays
/// the complete reference as flags are added.
#[test]
fn example_file_mentions_every_flag() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("wshub.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '-')) =>
            {
                rest
            }
            _ => l,
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    let cmd = wshub::config::command();
    let first = cmd.clone().try_get_matches_from(["wshub"]).unwrap();
    let applied = wshub::config::file::parse(&example, &uncommented)
        .expect("the example with its commented keys is valid TOML")
        .apply(&cmd, &first)
        .unwrap_or_else(|e| panic!("{e:?}"));
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "config") {
            continue;
        }
        let long = arg.get_long().unwrap_or(id);
        assert!(
            applied.used.iter().any(|(used, _)| used == id),
            "wshub.example.toml does not mention --{long}: add it with its default (commented out if it has none)"
        );
    }
}

/// What a client sees of the settings the example file changes.
fn behaviour(addr: std::net::SocketAddr) -> Vec<String> {
    use wshub::protocol::frame::OpCode;
    let mut seen = Vec::new();
    for path in ["/ws", "/hub"] {
        let mut s = connect(addr);
        s.write_all(upgrade_request(path, "").as_bytes()).unwrap();
        seen.push(format!("{path}: {}", status_of(&read_head(&mut s))));
    }
    let mut s = connect(addr);
    s.write_all(upgrade_request("/hub", "").as_bytes()).unwrap();
    read_head(&mut s);
    let text = |s: &mut std::net::TcpStream, m: &str| {
        s.write_all(&masked(OpCode::Text, true, m.as_bytes())).unwrap();
        String::from_utf8(read_frame(s).expect("a reply").payload).unwrap()
    };
    seen.push(format!(
        "long topic: {}",
        text(&mut s, r#"{"type":"subscribe","payload":{"topic":"123456789"}}"#)
    ));
    seen.push(format!("broadcast: {}", text(&mut s, r#"{"type":"broadcast","payload":{"data":1}}"#)));
    s.write_all(&masked(OpCode::Text, true, &[b'a'; 1001])).unwrap();
    seen.push(format!("1001-byte message: close {}", expect_close(&mut s).unwrap_or(0)));
    seen
}
