//! The reactor's hooks into [`crate::auth`]: token check at the upgrade, token expiry as one
//! more deadline, rate limits on incoming frames (one step, [`admits`], that both frame loops
//! take). The rules live in `auth`; this file only
//! connects them to a connection and the loop's clock.
//!
//! Clocks: the loop's `now` is monotonic milliseconds since start; tokens speak Unix time. The
//! wall clock is read once at start (`Settings::wall_start_ms`) and the loop's `now` added to
//! it, so a token's `exp` becomes a loop deadline once, at connect or refresh, and a step of the
//! system clock later neither shortens nor extends an open connection.
//!
//! Cost: a connection without tokens carries a null `Option<Box<Grant>>` (8 bytes) and two
//! 8-byte buckets that stay untouched unless `--rate-limit` is set.

use log::{debug, warn};

use super::connection::{Connection, Ending, Phase};
use super::lifecycle::linger;
use super::state::{Settings, Shared};
use super::timers::NEVER;
use crate::auth::extract::find_token;
use crate::auth::rate::{Bucket, Buckets, RateLimit};
use crate::auth::{self, Grant, Refusal, Verifier};
use crate::protocol::close::code;
use crate::protocol::handshake::RequestHead;
use crate::protocol::session::{Event, Millis, Session};

/// Wall-clock milliseconds since the Unix epoch at the loop's `now`.
#[inline]
pub(super) fn unix_ms(wall_start_ms: u64, now: Millis) -> u64 {
    wall_start_ms.saturating_add(now)
}

/// The loop deadline of a token expiring at `exp_ms` (Unix milliseconds); 0 (due at once) when
/// it is already past.
#[inline]
pub(super) fn expiry_deadline(wall_start_ms: u64, exp_ms: u64) -> Millis {
    exp_ms.saturating_sub(wall_start_ms)
}

/// Checks the token of an upgrade request that is otherwise valid. `Ok(None)`: no tokens on
/// this server. Each refusal is counted by cause.
pub(super) fn admit(head: &RequestHead<'_>, s: &mut Shared) -> Result<Option<Box<Grant>>, Refusal> {
    let Some(verifier) = &s.settings.verifier else {
        return Ok(None);
    };
    let now = unix_ms(s.settings.wall_start_ms, s.now);
    let result = check(verifier, head.target, head.header("authorization"), now);
    if let Err(refusal) = result {
        s.metrics.auth.refused(refusal);
    }
    result.map(|grant| Some(Box::new(grant)))
}

/// The sans-IO part of [`admit`]: extract, verify, compile.
pub fn check(
    verifier: &Verifier,
    target: &str,
    authorization: Option<&[u8]>,
    now_unix_ms: u64,
) -> Result<Grant, Refusal> {
    let token = find_token(target, authorization)?;
    verifier.verify(&token, now_unix_ms)
}

/// Refuses the upgrade with 401 and `WWW-Authenticate: Bearer`, then ends the connection.
pub(super) fn refuse(conn: &mut Connection, s: &mut Shared, key: usize, refusal: Refusal) {
    debug!(conn = key; "refused: 401 {refusal}");
    s.metrics.handshake_rejected(401);
    conn.out.append_with(&mut s.pool, |out| auth::write_unauthorized(out, refusal));
    linger(conn, s, key, Ending::Rejected);
}

/// Fresh buckets for a connection opening at `now` (full, so a client may start with a burst).
pub(super) fn buckets(settings: &Settings, now: Millis) -> Buckets {
    settings.rate_limit.map_or_else(Buckets::default, |limit| Buckets::full(&limit, now))
}

/// Which bucket a frame draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FrameClass {
    Data,
    Control,
}

/// Whether one more frame of `class` fits the connection's rate at `now` (always, without
/// `--rate-limit`).
#[inline]
pub(super) fn within_rate(
    rate: &mut Buckets,
    limit: Option<RateLimit>,
    class: FrameClass,
    now: Millis,
) -> bool {
    let Some(limit) = limit else { return true };
    let bucket: &mut Bucket = match class {
        FrameClass::Data => &mut rate.data,
        FrameClass::Control => &mut rate.control,
    };
    bucket.take(&limit, now)
}

/// The rate limit as one step of a frame loop, taken by both (hub and echo) after each
/// [`Session::advance`]: a message draws from the data bucket, a ping or pong from the control
/// bucket; a close or an unfinished frame draws nothing. False: over the rate, the caller drops
/// the frame (a ping's pong with it) and closes with [`rate_limited`]. Without `--rate-limit`,
/// one branch on a value the caller keeps in a register.
#[inline(always)]
pub(super) fn admits(
    rate: &mut Buckets,
    limit: Option<RateLimit>,
    event: Option<&Event<'_>>,
    now: Millis,
) -> bool {
    if limit.is_none() {
        return true;
    }
    let class = match event {
        Some(Event::Text(_) | Event::Binary(_)) => FrameClass::Data,
        Some(Event::Ping(_) | Event::Pong(_)) => FrameClass::Control,
        Some(Event::Closed { .. }) | None => return true,
    };
    within_rate(rate, limit, class, now)
}

/// Starts the close handshake with `close_code` and `reason` (the session waits for the peer's
/// close, bounded by the close timeout; data that arrives meanwhile is dropped unread).
pub(super) fn close_with(
    session: &mut Session,
    conn: &mut Connection,
    s: &mut Shared,
    close_code: u16,
    reason: &str,
) {
    s.control.clear();
    if session.close(&s.settings.session, &mut s.control, close_code, reason, s.now) {
        conn.out.push_bytes(&mut s.pool, &s.control);
        conn.close_code = close_code;
        s.metrics.close_code_sent(close_code);
    }
    s.control.clear();
}

/// Over the rate: close 1008.
pub(super) fn rate_limited(session: &mut Session, conn: &mut Connection, s: &mut Shared, key: usize) {
    // A flood of abusive clients is a flood of these: one line, then a count per interval.
    if s.logs.rate_limited.hit(s.now) {
        warn!(conn = key; "closed 1008: rate limit exceeded");
    }
    s.metrics.auth.rate_limited();
    close_with(session, conn, s, code::POLICY, auth::RATE_LIMITED_REASON);
}

/// The loop deadline of this connection's token, if it has one and may still be sent a close.
#[inline]
pub(super) fn deadline(conn: &Connection, settings: &Settings) -> Millis {
    match (&conn.grant, &conn.phase) {
        (Some(grant), Phase::Open(session)) if session.can_send() => {
            expiry_deadline(settings.wall_start_ms, grant.exp_ms)
        }
        _ => NEVER,
    }
}

/// A timer fired for an open connection: if its token has expired, close with 4001. True when
/// it did.
pub(super) fn on_expiry(conn: &mut Connection, s: &mut Shared, key: usize) -> bool {
    if deadline(conn, &s.settings) > s.now {
        return false;
    }
    let Phase::Open(mut session) = std::mem::replace(&mut conn.phase, Phase::Busy) else {
        return false;
    };
    debug!(conn = key; "token expired");
    s.metrics.auth.token_expired();
    close_with(&mut session, conn, s, auth::CLOSE_TOKEN_EXPIRED, auth::TOKEN_EXPIRED_REASON);
    conn.phase = Phase::Open(session);
    // From here the session refuses data both ways, so the client gets no more messages.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_and_loop_clock_meet_once() {
        let wall_start = 1_000_000;
        assert_eq!(unix_ms(wall_start, 500), 1_000_500);
        assert_eq!(expiry_deadline(wall_start, 1_060_000), 60_000);
        assert_eq!(expiry_deadline(wall_start, 999_000), 0, "already past: due at once");
    }

    #[test]
    fn without_a_limit_every_frame_fits() {
        let mut b = Buckets::default();
        for now in 0..1000 {
            assert!(within_rate(&mut b, None, FrameClass::Data, now));
        }
    }

    #[test]
    fn data_and_control_frames_draw_from_separate_buckets() {
        let limit = RateLimit::new(10, Some(2));
        let mut b = Buckets::full(&limit.unwrap(), 0);
        assert!(within_rate(&mut b, limit, FrameClass::Data, 0));
        assert!(within_rate(&mut b, limit, FrameClass::Data, 0));
        assert!(!within_rate(&mut b, limit, FrameClass::Data, 0));
        assert!(within_rate(&mut b, limit, FrameClass::Control, 0), "pings have their own bucket");
        assert!(within_rate(&mut b, limit, FrameClass::Control, 0));
        assert!(!within_rate(&mut b, limit, FrameClass::Control, 0));
        assert!(within_rate(&mut b, limit, FrameClass::Data, 100), "refilled after 100 ms at 10/s");
    }

    #[test]
    fn the_loop_step_draws_by_event_kind() {
        let limit = RateLimit::new(10, Some(1));
        let mut b = Buckets::full(&limit.unwrap(), 0);
        let close = Event::Closed { code: None, reason: "" };
        assert!(admits(&mut b, limit, Some(&Event::Text("a")), 0));
        assert!(!admits(&mut b, limit, Some(&Event::Binary(b"a")), 0), "one data bucket for both");
        assert!(admits(&mut b, limit, Some(&Event::Ping(b"")), 0));
        assert!(!admits(&mut b, limit, Some(&Event::Pong(b"")), 0), "one control bucket for both");
        for _ in 0..3 {
            assert!(admits(&mut b, limit, Some(&close), 0), "a close is never refused");
            assert!(admits(&mut b, limit, None, 0), "an unfinished frame draws nothing");
        }
        assert!(admits(&mut b, None, Some(&Event::Text("a")), 0), "no limit");
    }
}
