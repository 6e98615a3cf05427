//! Timed windows, a latency histogram, and the few system calls the generator needs.

use std::time::{Duration, Instant};

/// Splits a run into a warm-up and `windows` equal timed windows, and keeps each window's
/// rate of a monotonically growing counter.
pub struct Meter {
    next: Instant,
    window: Duration,
    left: usize,
    warming: bool,
    last_t: Instant,
    last_count: u64,
    pub rates: Vec<f64>,
    pub measured_count: u64,
    pub measured_secs: f64,
}

impl Meter {
    pub fn new(warmup: Duration, window: Duration, windows: usize) -> Meter {
        let now = Instant::now();
        Meter {
            next: now + warmup,
            window,
            left: windows,
            warming: true,
            last_t: now,
            last_count: 0,
            rates: Vec::with_capacity(windows),
            measured_count: 0,
            measured_secs: 0.0,
        }
    }

    /// Feeds the counter's value at `now`; true once every window is done.
    pub fn observe(&mut self, now: Instant, count: u64) -> bool {
        while self.left > 0 && now >= self.next {
            if self.warming {
                self.warming = false;
            } else {
                let secs = now.duration_since(self.last_t).as_secs_f64();
                let delta = count - self.last_count;
                self.rates.push(delta as f64 / secs);
                self.measured_count += delta;
                self.measured_secs += secs;
                self.left -= 1;
            }
            self.last_t = now;
            self.last_count = count;
            self.next = now + self.window;
        }
        self.left == 0
    }

    /// True after the warm-up, while windows are being timed.
    pub fn measuring(&self) -> bool {
        !self.warming && self.left > 0
    }

    /// How long the event loop may block before the next window boundary.
    pub fn timeout(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now).min(Duration::from_millis(50))
    }

    pub fn median(&self) -> f64 {
        median(&self.rates)
    }
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Log-linear histogram of nanosecond values: exact below 128, then 64 buckets per power of
/// two (under 1.6 % error). Fixed size, no allocation while recording.
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const SUB: u32 = 6;

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { buckets: vec![0; 128 + 64 * 64], count: 0, max: 0 }
    }

    fn index(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= 7
        let sub = (v >> (exp - SUB)) & 63;
        128 + (exp as usize - 7) * 64 + sub as usize
    }

    fn lower_bound(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let exp = (i - 128) / 64 + 7;
        let sub = ((i - 128) % 64) as u64;
        (64 + sub) << (exp as u32 - SUB)
    }

    pub fn record(&mut self, v: u64) {
        self.buckets[Self::index(v)] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), as the lower bound of its bucket.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::lower_bound(i).min(self.max);
            }
        }
        self.max
    }
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Resident set size of process `pid`, in KiB, from /proc/PID/status.
pub fn vm_rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib.parse().map_err(|e| format!("{path}: VmRSS {kib:?}: {e}"));
        }
    }
    Err(format!("{path}: no VmRSS line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_ordered_and_close() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(977) {
            let i = Histogram::index(v);
            assert!(i >= last);
            last = i;
            let lb = Histogram::lower_bound(i);
            assert!(lb <= v, "{v} {lb}");
            assert!((v - lb) as f64 <= v as f64 * 0.016 + 1.0);
        }
        assert!(Histogram::index(u64::MAX) < 128 + 64 * 64);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 500_000.0).abs() < 500_000.0 * 0.02, "{p50}");
        assert!((p99 - 990_000.0).abs() < 990_000.0 * 0.02, "{p99}");
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
