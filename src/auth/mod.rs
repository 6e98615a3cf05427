//! Who may connect and what each connection may do: JWT connection tokens, topic permissions,
//! and the per-connection rate limit. Sans-IO: nothing here reads a clock or touches a socket.
//!
//! The contract, in the order a connection meets it:
//! * **Upgrade.** With any JWT flag set the reactor builds one [`Verifier`] at start. For each
//!   upgrade request it calls [`extract::find_token`] on the request target and the
//!   `Authorization` header, then [`Verifier::verify`] with the wall-clock time `now_unix_ms`.
//!   A [`Refusal`] becomes `401` with `WWW-Authenticate: Bearer` and [`Refusal::reason`] as the
//!   body (never any part of the token); a success is a [`Grant`]: the subject, the expiry and
//!   the topic patterns compiled once for this connection.
//! * **Messages.** The hub asks the grant before each subscribe, publish and broadcast
//!   ([`Grant::may_subscribe`] and friends); what it does not grant is denied. A `refresh`
//!   message is verified by the same [`Verifier`] and replaces the grant.
//! * **Expiry.** The reactor turns [`Grant::exp`] into one more deadline in its timer queue and,
//!   when it passes, closes with [`CLOSE_TOKEN_EXPIRED`] (4001). The leeway applies to the checks
//!   at connect and refresh only, so the clocks of the minting backend and this server may differ
//!   by `leeway` without refusing fresh tokens, yet a connection never outlives `exp`.
//! * **Rate.** [`rate::Bucket`]s (one for data messages, one for control frames) take `now`
//!   in the reactor's milliseconds and say whether a frame fits; over the limit the reactor
//!   closes with 1008.
//!
//! Secrets and tokens never reach a log line or a `Debug` rendering: [`Verifier`]'s `Debug`
//! names only the algorithms it accepts, and refusals carry a cause, not the token.
//!
//! Supported algorithms: HS256, HS384, HS512 with `--jwt-secret`; with `--jwt-public-key`, the
//! key's family: RS256, RS384, RS512, PS256, PS384, PS512 (RSA), ES256, ES384 (EC P-256, P-384),
//! EdDSA (Ed25519). `alg: none` and everything else is refused.

pub mod extract;
pub mod metrics;
pub mod permissions;
pub mod rate;
mod token;

use std::fmt;

pub use metrics::AuthMetrics;
pub use permissions::Grant;
pub use token::{Verifier, VerifierConfig, VerifierError};

/// Close code when a connection's token expires without a refresh (private-use range, RFC 6455
/// section 7.4.2).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close reason sent with [`CLOSE_TOKEN_EXPIRED`].
pub const TOKEN_EXPIRED_REASON: &str = "token expired";
/// Close reason sent with 1008 when a client exceeds its rate.
pub const RATE_LIMITED_REASON: &str = "rate limit exceeded";
/// Default clock leeway for `exp` and `nbf` at connect and refresh, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Why a token was refused. The reason text goes to the client in the 401 body (or the refresh
/// error); it says which rule failed and nothing about the token itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No `?token=` and no `Authorization: Bearer`.
    Missing,
    /// Not a JWT, bad base64 or JSON, a claim of the wrong type, `exp` missing, too long.
    Malformed,
    /// The signature does not verify with the configured secret or key.
    BadSignature,
    /// `--jwt-audience` is set and the token's `aud` does not name it.
    WrongAudience,
    /// `--jwt-issuer` is set and the token's `iss` is not it.
    WrongIssuer,
    /// `nbf` is later than now plus the leeway.
    NotYetValid,
    /// `exp` is earlier than now minus the leeway.
    Expired,
    /// `alg` is `none`, unknown, or has no configured key (an RS256 token with only a secret).
    AlgNotAllowed,
}

impl Refusal {
    /// Every cause, in metrics order.
    pub const ALL: [Refusal; 8] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::BadSignature,
        Refusal::WrongAudience,
        Refusal::WrongIssuer,
        Refusal::NotYetValid,
        Refusal::Expired,
        Refusal::AlgNotAllowed,
    ];

    /// The short reason sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing token",
            Refusal::Malformed => "malformed token",
            Refusal::BadSignature => "bad token signature",
            Refusal::WrongAudience => "wrong token audience",
            Refusal::WrongIssuer => "wrong token issuer",
            Refusal::NotYetValid => "token not yet valid",
            Refusal::Expired => "token expired",
            Refusal::AlgNotAllowed => "token algorithm not allowed",
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::WrongIssuer => "wrong_issuer",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Expired => "expired",
            Refusal::AlgNotAllowed => "alg_not_allowed",
        }
    }

    /// Position in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for Refusal {}

/// Writes the complete 401 for a refused upgrade: `WWW-Authenticate: Bearer` (RFC 6750 section
/// 3, with its `invalid_token` error when a token was sent) and the reason as the body.
pub fn write_unauthorized(out: &mut Vec<u8>, refusal: Refusal) {
    use std::io::Write as _;
    let reason = refusal.reason();
    let challenge = match refusal {
        Refusal::Missing => String::from("Bearer"),
        _ => format!("Bearer error=\"invalid_token\", error_description=\"{reason}\""),
    };
    let _ = write!(
        out,
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: {challenge}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_indexes_follow_all() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(!r.reason().is_empty() && !r.label().contains(' '));
        }
    }

    #[test]
    fn unauthorized_response_names_the_scheme_and_the_cause() {
        let mut out = Vec::new();
        write_unauthorized(&mut out, Refusal::Expired);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("\r\nWWW-Authenticate: Bearer error=\"invalid_token\""), "{text}");
        assert!(text.ends_with("\r\n\r\ntoken expired\n"), "{text}");
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        let mut out = Vec::new();
        write_unauthorized(&mut out, Refusal::Missing);
        assert!(String::from_utf8(out).unwrap().contains("\r\nWWW-Authenticate: Bearer\r\n"));
    }
}
