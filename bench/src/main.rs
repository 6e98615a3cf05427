//! `loadgen`: a single-threaded WebSocket load generator for wshub and its peers.
//!
//! Every scenario runs a warm-up window and then `--windows` timed windows over `--duration`
//! seconds, reports the median window, and stops by itself: a watchdog ends the process if a
//! run outlives its budget. Each result is one `RESULT key=value ...` line on stdout.

mod broadcast;
mod ceiling;
mod chart;
mod connrate;
mod echo;
mod idle;
mod net;
mod soak;
mod stats;
mod ws;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};

/// Longest measured duration any run may ask for, in seconds.
const MAX_DURATION: f64 = 600.0;
/// Most connections one run may open (the open-file limit here is 20,000).
const MAX_CONNS: usize = 19_000;

#[derive(Parser)]
#[command(name = "loadgen", about = "WebSocket load generator (echo, broadcast, idle, connrate)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Server URL (a literal IP and port; ws:// or wss://). `broadcast` takes several,
    /// comma-separated: the nodes of one hub joined by a backplane, clients spread over them
    /// round-robin.
    #[arg(long, default_value = "ws://127.0.0.1:9001/ws")]
    url: String,
    /// PEM CA a wss:// server's certificate must chain to (its name must be localhost).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Server name for the RESULT line.
    #[arg(long, default_value = "unknown")]
    server: String,
    /// Measured seconds, split into --windows windows (capped at 600).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Number of timed windows; the median is reported.
    #[arg(long, default_value_t = 5)]
    windows: usize,
    /// Warm-up seconds before the first window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds without progress after which the run fails.
    #[arg(long, default_value_t = 5.0)]
    stall: f64,
    /// Seconds allowed for connecting and subscribing every client (a server under valgrind
    /// needs more than the default for 10,000 handshakes).
    #[arg(long, default_value_t = 60.0)]
    setup: f64,
    /// Busy-poll (zero epoll timeout) instead of blocking in epoll_wait. Measured on the
    /// 2-vCPU bench machine it costs throughput (0.28M vs 0.80M msgs/s echo), so it is off.
    #[arg(long)]
    spin: bool,
    /// Offer permessage-deflate in every handshake. Echo then sends compressed frames;
    /// broadcast publishes plain and inflates every compressed delivery (a cost on this side).
    #[arg(long)]
    deflate: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// C connections each write DEPTH binary frames of SIZE bytes per write and await the echoes.
    Echo {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 16)]
        size: usize,
        #[arg(long, default_value_t = 16)]
        depth: u32,
        /// Send text frames (the server validates UTF-8) instead of binary ones.
        #[arg(long)]
        text: bool,
        /// Fixed work instead of timed windows: stop once this many echoes came back.
        #[arg(long)]
        messages: Option<u64>,
        /// Send realistic JSON text (order-book updates) instead of letters as binary.
        #[arg(long)]
        json: bool,
    },
    /// N subscribers of one topic; per round P of them publish and all must receive all P.
    Broadcast {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// Publishers per round [default: every client].
        #[arg(long)]
        publishers: Option<usize>,
        /// Filler bytes in each message's data (plus 33 bytes of timestamp and sequence).
        #[arg(long, default_value_t = 20)]
        size: usize,
        #[arg(long, default_value = "bench")]
        topic: String,
        /// Filler of realistic JSON text (order-book updates, `"` written as `'` to stay one
        /// JSON string) instead of repeated letters, which compress far better than real data.
        #[arg(long)]
        json: bool,
        /// With --deflate: inflate (check, and take a latency sample from) one compressed
        /// delivery in N and count the others by their frame, so the generator's inflate cost
        /// does not cap what it can receive. 1: inflate every one.
        #[arg(long, default_value_t = 1)]
        inflate_one_in: u64,
        /// Fixed work instead of timed windows: each publisher sends exactly this many messages,
        /// and the run ends when every client has them all (or after --stall without a
        /// delivery). --duration then only bounds the run (the watchdog).
        #[arg(long)]
        messages: Option<u64>,
    },
    /// N idle connections; server RSS growth per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        /// Server process id (its /proc/PID/status is read).
        #[arg(long)]
        pid: u32,
        /// Seconds to hold the connections open.
        #[arg(long, default_value_t = 3.0)]
        hold: f64,
    },
    /// Handshake + close cycles per second with CONCURRENCY in flight.
    Connrate {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Holds CONNS connections to a server started with `--max-connections CONNS`, idle and
    /// subscribed with fan-outs to all; one more client must get 503, and after RELEASE leave a
    /// new one must be upgraded. `bench/ceiling` runs it at 19,000.
    Ceiling {
        #[arg(long, default_value = "ws://127.0.0.1:9001/ws")]
        url: String,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 19_000)]
        conns: usize,
        #[arg(long, default_value_t = 3)]
        fanouts: usize,
        #[arg(long, default_value_t = 1_000)]
        release: usize,
    },
    /// A bounded soak with churn: stable subscribers check exactly-once in-order delivery while
    /// churners, HTTP publishers and slow consumers come and go; samples the server's RSS and
    /// descriptors. Exits non-zero on any loss, duplicate or reorder. `bench/soak` runs it.
    Soak {
        #[arg(long, default_value = "ws://127.0.0.1:9001/ws")]
        url: String,
        /// Server process id (its /proc/PID/status and /proc/PID/fd are read).
        #[arg(long)]
        pid: u32,
        /// Seconds of churn (at most 4 hours).
        #[arg(long, default_value_t = 1800.0)]
        duration: f64,
        #[arg(long, default_value_t = 8)]
        stable: usize,
        /// WebSocket publishers (one HTTP publisher runs besides them).
        #[arg(long, default_value_t = 2)]
        publishers: usize,
        #[arg(long, default_value_t = 4)]
        topics: usize,
        /// Messages per second per WebSocket publisher.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        #[arg(long, default_value_t = 8)]
        churners: usize,
        #[arg(long, default_value_t = 2)]
        slow: usize,
        /// Seconds between RSS/descriptor samples.
        #[arg(long, default_value_t = 5.0)]
        sample: f64,
    },
    /// Prints a results CSV (metric,unit,server,value) as a Markdown table with ratios, and
    /// optionally renders it as an SVG bar chart.
    Report {
        #[arg(long)]
        csv: std::path::PathBuf,
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
        #[arg(long, default_value = "wshub")]
        baseline: String,
    },
}

/// How long each phase of a run may take.
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
    pub windows: usize,
    pub stall: Duration,
    /// Budget for connecting and subscribing.
    pub setup_limit: Duration,
    /// Busy-poll (zero epoll timeout) while measuring.
    pub spin: bool,
}

impl Timing {
    /// How long an event loop may block in `poll`: not at all when spinning; 100 ms in a
    /// fixed-work run (no windows to close, only the stall check); otherwise until the
    /// meter's next window boundary.
    pub fn poll_timeout(&self, fixed_work: bool, meter: &stats::Meter, now: Instant) -> Duration {
        if self.spin {
            Duration::ZERO
        } else if fixed_work {
            Duration::from_millis(100)
        } else {
            meter.timeout(now)
        }
    }
}

fn secs(v: f64, name: &str) -> Result<Duration, String> {
    if !v.is_finite() || !(0.0..=MAX_DURATION).contains(&v) {
        return Err(format!("--{name} {v}: must be between 0 and {MAX_DURATION} seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Common {
    fn timing(&self) -> Result<Timing, String> {
        let windows = self.windows.clamp(1, 1000);
        let duration = secs(self.duration, "duration")?;
        let timing = Timing {
            warmup: secs(self.warmup, "warmup")?,
            window: duration / windows as u32,
            windows,
            stall: secs(self.stall.max(0.5), "stall")?,
            setup_limit: secs(self.setup.max(1.0), "setup")?,
            spin: self.spin,
        };
        // Hard cap: whatever happens, the process ends after its budget plus a margin.
        let budget = timing.setup_limit * 2 + timing.warmup + duration + Duration::from_secs(30);
        std::thread::spawn(move || {
            std::thread::sleep(budget);
            eprintln!("loadgen: watchdog: run exceeded {budget:?}, exiting");
            std::process::exit(3);
        });
        Ok(timing)
    }
}

fn check_conns(n: usize) -> Result<usize, String> {
    if n == 0 || n > MAX_CONNS {
        return Err(format!("{n} connections: must be 1..={MAX_CONNS}"));
    }
    Ok(n)
}

fn run(cli: Cli) -> Result<(), String> {
    let nofile = stats::raise_nofile();
    match cli.cmd {
        Cmd::Echo { common, conns, size, depth, json, text, messages } => {
            let mut target = net::Target::parse(&common.url, common.ca.as_deref())?;
            target.offer_deflate = common.deflate;
            let timing = common.timing()?;
            let conns = check_conns(conns)?;
            let depth = depth.clamp(1, 100_000);
            let p = echo::Echo { conns, size, depth, json, deflate: common.deflate, text, messages };
            let r = echo::run(&target, &p, &timing)?;
            println!(
                "RESULT scenario=echo server={} size={size} depth={depth} conns={conns} json={json} \
                 text={text} deflate={} msgs_per_s={:.0} mb_per_s={:.2} received={} wire_bytes_per_msg={:.1} \
                 windows={}",
                common.server,
                common.deflate,
                r.msgs_per_s,
                r.mb_per_s,
                r.received,
                r.wire_bytes_per_msg,
                join(&r.windows)
            );
        }
        Cmd::Broadcast { common, clients, publishers, size, topic, json, inflate_one_in, messages } => {
            // Several comma-separated URLs: the nodes of one hub, clients spread over them.
            let mut targets = common
                .url
                .split(',')
                .map(|url| net::Target::parse(url, common.ca.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            for target in &mut targets {
                target.offer_deflate = common.deflate;
            }
            let timing = common.timing()?;
            let clients = check_conns(clients)?;
            let publishers = publishers.unwrap_or(clients).clamp(1, clients);
            if messages == Some(0) {
                return Err("--messages 0: nothing to measure".into());
            }
            let inflate_one_in = inflate_one_in.max(1);
            let p = broadcast::Broadcast { clients, publishers, size, topic, json, inflate_one_in, messages };
            let r = broadcast::run(&targets, &p, &timing)?;
            let cross = if targets.len() > 1 {
                format!(
                    " nodes={} cross_p50_us={:.1} cross_p99_us={:.1}",
                    targets.len(),
                    r.cross_p50_us,
                    r.cross_p99_us
                )
            } else {
                String::new()
            };
            println!(
                "RESULT scenario=broadcast server={} clients={clients} publishers={publishers} size={size} \
                 json={json} deflate={} inflate_one_in={inflate_one_in} deliveries_per_s={:.0} p50_us={:.1} \
                 p99_us={:.1}{cross} rounds={} samples={} delivered={} compressed={} wire_bytes_per_msg={:.1} \
                 windows={}",
                common.server,
                common.deflate,
                r.deliveries_per_s,
                r.p50_us,
                r.p99_us,
                r.rounds,
                r.samples,
                r.delivered,
                r.compressed,
                r.wire_bytes_per_msg,
                join(&r.windows)
            );
        }
        Cmd::Idle { common, conns, pid, hold } => {
            let mut target = net::Target::parse(&common.url, common.ca.as_deref())?;
            target.offer_deflate = common.deflate;
            let timing = common.timing()?;
            let conns = check_conns(conns)?;
            if conns as u64 + 64 > nofile {
                return Err(format!("{conns} connections need more than the open-file limit {nofile}"));
            }
            let hold = secs(hold, "hold")?;
            let r = idle::run(&target, &idle::Idle { conns, pid, hold }, &timing)?;
            println!(
                "RESULT scenario=idle server={} conns={conns} rss_before_kib={} rss_after_kib={} \
                 rss_end_kib={} kib_per_conn={:.2} open_s={:.2} dropped={}",
                common.server,
                r.rss_before_kib,
                r.rss_after_kib,
                r.rss_end_kib,
                r.kib_per_conn,
                r.open_secs,
                r.dropped
            );
        }
        Cmd::Connrate { common, concurrency } => {
            let mut target = net::Target::parse(&common.url, common.ca.as_deref())?;
            target.offer_deflate = common.deflate;
            let timing = common.timing()?;
            let concurrency = check_conns(concurrency)?;
            let r = connrate::run(&target, &connrate::ConnRate { concurrency }, &timing)?;
            println!(
                "RESULT scenario=connrate server={} concurrency={concurrency} cycles_per_s={:.0} \
                 failures={} windows={}",
                common.server,
                r.cycles_per_s,
                r.failures,
                join(&r.windows)
            );
        }
        Cmd::Ceiling { url, pid, conns, fanouts, release } => {
            let target = net::Target::parse(&url, None)?;
            let conns = check_conns(conns)?;
            if conns as u64 + 16 > nofile {
                return Err(format!("{conns} connections need more than the open-file limit {nofile}"));
            }
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_secs(900));
                eprintln!("loadgen: watchdog: ceiling run exceeded 15 minutes, exiting");
                std::process::exit(3);
            });
            let p = ceiling::Ceiling {
                conns,
                pid,
                fanouts: fanouts.clamp(1, 100),
                release: release.clamp(1, conns),
            };
            let r = ceiling::run(&target, &p)?;
            println!(
                "RESULT scenario=ceiling conns={conns} open_s={:.1} rss_before_kib={} rss_idle_kib={} \
                 rss_subscribed_kib={} rss_fanout_kib={} fd_at_ceiling={} fanout_ms={} over_limit={:?} \
                 after_release={:?}",
                r.open_secs,
                r.rss_before_kib,
                r.rss_idle_kib,
                r.rss_subscribed_kib,
                r.rss_fanout_kib,
                r.fd_at_ceiling,
                join(&r.fanout_ms),
                r.over_limit_status,
                r.after_release_status
            );
            if !r.over_limit_status.starts_with("HTTP/1.1 503") {
                return Err(format!("the client over the limit got {:?}, not 503", r.over_limit_status));
            }
            if !r.after_release_status.starts_with("HTTP/1.1 101") {
                return Err(format!(
                    "after {release} left, a new client got {:?}, not 101",
                    r.after_release_status
                ));
            }
        }
        Cmd::Soak { url, pid, duration, stable, publishers, topics, rate, churners, slow, sample } => {
            let target = net::Target::parse(&url, None)?;
            if !duration.is_finite() || !(1.0..=4.0 * 3600.0).contains(&duration) {
                return Err(format!("--duration {duration}: must be 1 s to 4 h"));
            }
            let duration = Duration::from_secs_f64(duration);
            let budget = duration + Duration::from_secs(180);
            std::thread::spawn(move || {
                std::thread::sleep(budget);
                eprintln!("loadgen: watchdog: soak exceeded {budget:?}, exiting");
                std::process::exit(3);
            });
            let s = soak::Soak {
                addr: target.addr,
                host: target.host.clone(),
                path: target.path.clone(),
                pid,
                duration,
                stable: stable.clamp(1, 1000),
                publishers: publishers.clamp(1, 100),
                topics: topics.clamp(1, 100),
                rate: rate.clamp(1, 100_000),
                churners: churners.min(1000),
                slow: slow.min(100),
                sample: Duration::from_secs_f64(sample.clamp(0.1, 600.0)),
            };
            let (r, failures) = soak::run(&s)?;
            let vanish: Vec<String> =
                soak::VANISH.iter().zip(r.vanish).map(|(n, v)| format!("{n}:{v}")).collect();
            println!(
                "RESULT scenario=soak secs={:.0} stable={stable} sent={} received={} lost={} duplicated={} \
                 reordered={} stable_cut={} http_published={} http_errors={} churn_cycles={} churn_refused={} \
                 churn_errors={} vanish={} slow_cut={} slow_fed={} server_slow_cut={} server_resets={} samples={} rss_first_kib={} rss_last_kib={} \
                 rss_max_kib={} rss_slope_kib_per_min={:.1} fd_first={} fd_last={} fd_max={} fd_slope_per_min={:.2} \
                 fd_before_churn={} fd_after_churn={}",
                duration.as_secs_f64(),
                r.sent,
                r.received,
                r.lost,
                r.duplicated,
                r.reordered,
                r.stable_cut,
                r.http_published,
                r.http_errors,
                r.churn_cycles,
                r.churn_refused,
                r.churn_errors,
                vanish.join(","),
                r.slow_cut,
                r.slow_fed,
                r.server_slow_cut,
                r.server_resets,
                r.samples,
                r.rss_first_kib,
                r.rss_last_kib,
                r.rss_max_kib,
                r.rss_slope_kib_per_min,
                r.fd_first,
                r.fd_last,
                r.fd_max,
                r.fd_slope_per_min,
                r.fd_before_churn,
                r.fd_after_churn
            );
            if !failures.is_empty() {
                return Err(format!("soak failed: {}", failures.join("; ")));
            }
        }
        Cmd::Report { csv, svg, baseline } => {
            print!("{}", chart::table(&csv, &baseline)?);
            if let Some(svg) = svg {
                chart::render(&csv, &svg, &baseline)?;
            }
        }
    }
    Ok(())
}

fn join(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(",")
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
