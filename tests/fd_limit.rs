//! The server under a small open-file limit (256) and 1,000 connection attempts: clients over the
//! limit get 503 or are refused at once (none waits in the backlog), the log stays short, and
//! when descriptors run out anyway (the limit lowered under a running server) it neither spins
//! nor floods its log, and accepts again once descriptors free up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{read_head, status_of, upgrade_request};

struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn cpu_ticks(&self) -> u64 {
        common::cpu_ticks(self.child.id())
    }

    /// Sets the server's soft open-file limit (the hard limit stays 256).
    fn set_nofile(&self, soft: u64) {
        let lim = libc::rlimit { rlim_cur: soft, rlim_max: 256 };
        // SAFETY: prlimit on our own child, with a stack struct we own.
        let rc = unsafe {
            libc::prlimit(self.child.id() as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut())
        };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

fn start_with_nofile(n: u64, args: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wshub"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(args).env("RUST_LOG", "info");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only an async-signal-safe syscall between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start wshub");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = loop {
        let line = lines.next().expect("wshub exited before listening").unwrap();
        let found =
            line.split("listening on ").nth(1).map(|r| r.split_whitespace().next().unwrap().parse().unwrap());
        log.lock().unwrap().push(line);
        if let Some(addr) = found {
            break addr;
        }
    };
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Server { child, addr, log }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    Upgraded,
    TooMany,
    Refused,
    Other(u16),
    NoAnswer,
}

/// Connects and sends an upgrade request; a refused connect is an outcome, not a failure.
fn attempt(addr: SocketAddr) -> Result<TcpStream, Outcome> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|_| Outcome::Refused)?;
    s.write_all(upgrade_request("/ws", "").as_bytes()).map_err(|_| Outcome::Refused)?;
    Ok(s)
}

fn answer(s: &mut TcpStream, wait: Duration) -> Outcome {
    s.set_read_timeout(Some(wait)).unwrap();
    let head = read_head(s);
    if head.is_empty() {
        // EOF or reset without a word: refused. A timeout: no answer.
        let mut b = [0u8; 1];
        return match s.read(&mut b) {
            Ok(_) => Outcome::Refused,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Outcome::NoAnswer
            }
            Err(_) => Outcome::Refused,
        };
    }
    match status_of(&head) {
        101 => Outcome::Upgraded,
        503 => Outcome::TooMany,
        other => Outcome::Other(other),
    }
}

fn tally(outcomes: &[Outcome]) -> std::collections::BTreeMap<Outcome, usize> {
    let mut t = std::collections::BTreeMap::new();
    for o in outcomes {
        *t.entry(*o).or_default() += 1;
    }
    t
}

#[test]
fn a_thousand_clients_under_256_descriptors() {
    let server = start_with_nofile(256, &["--echo", "--handshake-timeout", "60"]);
    // 256 descriptors: 32 reserved, 32 for 503 answers, 192 connections.
    let started = Instant::now();
    let mut held = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..1000 {
        match attempt(server.addr) {
            Ok(mut s) => {
                let o = answer(&mut s, Duration::from_secs(10));
                if o == Outcome::Upgraded {
                    held.push(s);
                }
                outcomes.push(o);
            }
            Err(o) => outcomes.push(o),
        }
    }
    let t = tally(&outcomes);
    let elapsed = started.elapsed();
    assert_eq!(t.get(&Outcome::Upgraded), Some(&192), "{t:?}");
    assert_eq!(t.get(&Outcome::NoAnswer), None, "nobody waits in the backlog: {t:?}");
    assert!(t.keys().all(|o| matches!(o, Outcome::Upgraded | Outcome::TooMany | Outcome::Refused)), "{t:?}");
    assert!(elapsed < Duration::from_secs(60), "1000 attempts took {elapsed:?}");
    let quiet = server.log_lines();
    assert!(quiet.len() <= 3, "a flood over the limit is not a flood in the log: {quiet:#?}");

    // Descriptors run out under the server's feet: its limit drops below what it holds.
    server.set_nofile(128);
    let cpu_before = server.cpu_ticks();
    let lines_before = server.log_lines().len();
    let pause_started = Instant::now();
    // Fewer than the listen backlog (128), so every connect completes and waits to be accepted.
    let mut waiting: Vec<TcpStream> = (0..100).filter_map(|_| attempt(server.addr).ok()).collect();
    assert_eq!(waiting.len(), 100);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(pause_started.elapsed()));
    let spent = server.cpu_ticks() - cpu_before;
    let lines: Vec<String> = server.log_lines()[lines_before..].to_vec();
    // 100 ticks a second: a spinning loop would use about 300 ticks in these 3 s.
    assert!(spent < 100, "the server spins while out of descriptors: {spent} ticks in 3 s");
    let failures = lines.iter().filter(|l| l.contains("accept failed")).count();
    assert!(
        (1..=2).contains(&failures),
        "accept failures logged {failures} times (once, then a summary): {lines:#?}"
    );
    assert!(lines.len() <= 3, "{lines:#?}");

    // Descriptors come back: the waiting clients are served, and new ones.
    server.set_nofile(256);
    drop(held);
    let mut served = Vec::new();
    for s in waiting.iter_mut().take(20) {
        served.push(answer(s, Duration::from_secs(10)));
    }
    let t = tally(&served);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.child.id())).unwrap().count();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let limits = limits.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default().to_owned();
    assert_eq!(t.get(&Outcome::NoAnswer), None, "{t:?} {fds} descriptors open, {limits}");
    assert!(t.get(&Outcome::Upgraded).is_some_and(|&n| n >= 1), "{t:?}");
    drop(waiting);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = attempt(server.addr).expect("connect");
        if answer(&mut s, Duration::from_secs(5)) == Outcome::Upgraded {
            break;
        }
        assert!(Instant::now() < deadline, "no upgrade after descriptors freed up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The flood's count is reported in one summary line, soon after its window ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_lines().iter().any(|l| l.contains("more accept failures")) {
        assert!(Instant::now() < deadline, "no summary line: {:#?}", server.log_lines());
        std::thread::sleep(Duration::from_millis(100));
    }
}
