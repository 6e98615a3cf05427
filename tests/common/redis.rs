//! A private `redis-server` for a test, and a tiny RESP client to look inside it.
//!
//! No mocks: the backplane tests run against the real server (Debian's `redis-server`, installed
//! by `tests/run-all.sh` when missing). Each test starts its own instance on a free loopback port,
//! without persistence, and kills it on drop. A missing `redis-server` fails the test loudly.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl RedisProc {
    pub fn start() -> RedisProc {
        let mut redis = RedisProc { child: None, port: free_port() };
        redis.restart();
        redis
    }

    /// A handle for a port where no Redis runs yet (start it later with [`RedisProc::restart`]).
    pub fn not_started() -> RedisProc {
        RedisProc { child: None, port: free_port() }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's process id (to stop and resume it: a Redis that keeps its connections but
    /// answers nothing).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// Kills the server (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): the backplane tests need it \
                     (tests/run-all.sh installs it: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(self.addr()).is_ok()
                && command(self.addr(), &["PING"]) == Resp::Simple("PONG".into())
            {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not come up", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The channels with at least one subscriber (`PUBSUB CHANNELS`), sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut names: Vec<String> = match command(self.addr(), &["PUBSUB", "CHANNELS"]) {
            Resp::Array(items) => items.into_iter().filter_map(Resp::into_text).collect(),
            other => panic!("PUBSUB CHANNELS answered {other:?}"),
        };
        names.sort();
        names
    }

    /// Subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn numsub(&self, channel: &str) -> i64 {
        match command(self.addr(), &["PUBSUB", "NUMSUB", channel]) {
            Resp::Array(items) => match items.get(1) {
                Some(Resp::Int(n)) => *n,
                other => panic!("PUBSUB NUMSUB answered {other:?}"),
            },
            other => panic!("PUBSUB NUMSUB answered {other:?}"),
        }
    }

    /// Waits until `channel` has exactly `n` subscribers.
    pub fn wait_numsub(&self, channel: &str, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.numsub(channel);
            if now == n {
                return;
            }
            assert!(Instant::now() < deadline, "{channel}: {now} subscribers after {within:?}, want {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Publishes raw bytes with `redis-cli`, as an outsider with access to Redis would.
    pub fn cli_publish(&self, channel: &str, payload: &str) {
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "PUBLISH", channel, payload])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli (Debian package redis-tools, installed with redis-server)");
        assert!(status.success(), "redis-cli PUBLISH failed");
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

impl Resp {
    fn into_text(self) -> Option<String> {
        match self {
            Resp::Bulk(Some(b)) => String::from_utf8(b).ok(),
            Resp::Simple(s) => Some(s),
            _ => None,
        }
    }
}

/// Sends one command on a fresh connection and reads its reply.
pub fn command(addr: SocketAddr, args: &[&str]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect to redis");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    s.write_all(&out).unwrap();
    read_resp(&mut BufReader::new(s))
}

fn read_resp(r: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    r.read_line(&mut line).expect("read RESP");
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => Resp::Simple(rest.into()),
        "-" => Resp::Error(rest.into()),
        ":" => Resp::Int(rest.parse().unwrap()),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                return Resp::Bulk(None);
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).unwrap();
            buf.truncate(n as usize);
            Resp::Bulk(Some(buf))
        }
        "*" => {
            let n: usize = rest.parse().unwrap();
            Resp::Array((0..n).map(|_| read_resp(r)).collect())
        }
        other => panic!("not RESP: {other}{rest}"),
    }
}
