//! Token buckets for the per-connection rate limit, sans-IO: time comes in as `now`.
//!
//! A bucket holds up to `burst` tokens and refills at `rate` tokens per second; each frame
//! takes one. Levels are kept in thousandths of a token so refills at any rate are exact per
//! millisecond. A bucket is 8 bytes (its level and the low 32 bits of the last refill time):
//! every connection carries two when the limit is on, and they are never allocated.

use crate::protocol::session::Millis;

/// Thousandths of a token per token.
const MILLI: u64 = 1000;

/// `--rate-limit` and `--rate-burst`, shared by every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens per second (at least 1).
    pub per_second: u32,
    /// Bucket size (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// `rate` per second with bursts of `burst` (a burst below 1 or above one million is
    /// clamped; the default burst is the rate itself).
    pub fn new(per_second: u32, burst: Option<u32>) -> Option<RateLimit> {
        if per_second == 0 {
            return None;
        }
        let burst = burst.unwrap_or(per_second).clamp(1, 1_000_000);
        Some(RateLimit { per_second, burst })
    }

    fn capacity(&self) -> u64 {
        u64::from(self.burst) * MILLI
    }
}

/// One connection's bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Thousandths of a token.
    level: u32,
    /// Low 32 bits of the time of the last refill. The elapsed time is computed with wrapping
    /// arithmetic, exact for gaps under 49 days; a longer idle gap at worst refills less (and a
    /// bucket idle that long is full anyway unless it was drained at the very end).
    last: u32,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(limit: &RateLimit, now: Millis) -> Bucket {
        Bucket { level: limit.capacity() as u32, last: now as u32 }
    }

    /// Takes one token at `now`; false when the bucket is empty (the frame is over the rate).
    pub fn take(&mut self, limit: &RateLimit, now: Millis) -> bool {
        let now32 = now as u32;
        let elapsed = u64::from(now32.wrapping_sub(self.last));
        // `rate` tokens per second is `rate` thousandths per millisecond.
        let refill = elapsed.saturating_mul(u64::from(limit.per_second));
        let level = (u64::from(self.level) + refill).min(limit.capacity());
        self.last = now32;
        if level >= MILLI {
            self.level = (level - MILLI) as u32;
            true
        } else {
            self.level = level as u32;
            false
        }
    }
}

/// The two buckets of a connection: data messages and control frames are limited separately,
/// at the same rate, so a ping flood cannot starve a client's messages nor the reverse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    pub data: Bucket,
    pub control: Bucket,
}

impl Buckets {
    pub fn full(limit: &RateLimit, now: Millis) -> Buckets {
        Buckets { data: Bucket::full(limit, now), control: Bucket::full(limit, now) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_means_no_limit() {
        assert_eq!(RateLimit::new(0, Some(5)), None);
        assert_eq!(RateLimit::new(10, None), Some(RateLimit { per_second: 10, burst: 10 }));
        assert_eq!(RateLimit::new(10, Some(0)), Some(RateLimit { per_second: 10, burst: 1 }));
    }

    #[test]
    fn burst_then_the_rate() {
        let limit = RateLimit::new(10, Some(3)).unwrap();
        let mut b = Bucket::full(&limit, 1_000);
        // The burst goes at once, then nothing until a token has refilled (100 ms at 10/s).
        assert!(b.take(&limit, 1_000));
        assert!(b.take(&limit, 1_000));
        assert!(b.take(&limit, 1_000));
        assert!(!b.take(&limit, 1_000));
        assert!(!b.take(&limit, 1_099));
        assert!(b.take(&limit, 1_100));
        assert!(!b.take(&limit, 1_150));
        assert!(b.take(&limit, 1_200));
        // A long pause refills to the burst, never beyond.
        let t = 60_000;
        assert!(b.take(&limit, t) && b.take(&limit, t) && b.take(&limit, t));
        assert!(!b.take(&limit, t));
    }

    #[test]
    fn steady_sender_at_the_rate_is_never_refused() {
        let limit = RateLimit::new(50, Some(1)).unwrap();
        let mut b = Bucket::full(&limit, 0);
        for i in 0..10_000u64 {
            assert!(b.take(&limit, i * 20), "message {i} at exactly 50/s");
        }
        // Twice the rate: about half refused.
        let mut b = Bucket::full(&limit, 0);
        let taken = (0..1000u64).filter(|i| b.take(&limit, i * 10)).count();
        assert!((499..=501).contains(&taken), "{taken}");
    }

    #[test]
    fn fractional_refills_accumulate() {
        // 3 per second: one token every 333.3 ms; thousandths keep the remainder.
        // (A burst of 2 so the cap never cuts the remainder off.)
        let limit = RateLimit::new(3, Some(2)).unwrap();
        let mut b = Bucket::full(&limit, 0);
        assert!(b.take(&limit, 0) && b.take(&limit, 0));
        assert!(!b.take(&limit, 333));
        assert!(b.take(&limit, 334));
        let taken = (1..=3000u64).filter(|ms| b.take(&limit, 334 + ms)).count();
        assert_eq!(taken, 9, "3 s at 3/s");
    }

    #[test]
    fn clock_wrap_of_the_low_bits_is_harmless() {
        let limit = RateLimit::new(1, Some(1)).unwrap();
        let start = u64::from(u32::MAX) - 500;
        let mut b = Bucket::full(&limit, start);
        assert!(b.take(&limit, start));
        assert!(!b.take(&limit, start + 999));
        assert!(b.take(&limit, start + 1_000), "refills across the 2^32 ms boundary");
    }

    #[test]
    fn huge_rates_do_not_overflow() {
        let limit = RateLimit::new(u32::MAX, Some(u32::MAX)).unwrap();
        let mut b = Bucket::full(&limit, 0);
        assert!(b.take(&limit, u64::MAX));
        assert_eq!(std::mem::size_of::<Buckets>(), 16);
    }
}
