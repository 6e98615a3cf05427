//! Counters of the access rules, rendered with the server's other metrics.

use std::fmt::{self, Write as _};

use super::Refusal;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthMetrics {
    /// Upgrades refused with 401, indexed like [`Refusal::ALL`].
    refused: [u64; Refusal::ALL.len()],
    /// Subscribe, publish or broadcast refused by a token's permissions.
    pub permission_denied: u64,
    /// Connections closed with 4001 at their token's expiry.
    pub tokens_expired: u64,
    /// `refresh` messages accepted.
    pub refreshes: u64,
    /// `refresh` messages refused (invalid token or another subject).
    pub refreshes_refused: u64,
    /// Connections closed with 1008 for exceeding the message or control-frame rate.
    pub rate_limited: u64,
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

impl AuthMetrics {
    pub fn refused(&mut self, cause: Refusal) {
        bump(&mut self.refused[cause.index()]);
    }

    pub fn refusals(&self, cause: Refusal) -> u64 {
        self.refused[cause.index()]
    }

    pub fn permission_denied(&mut self) {
        bump(&mut self.permission_denied);
    }

    pub fn token_expired(&mut self) {
        bump(&mut self.tokens_expired);
    }

    pub fn refreshed(&mut self) {
        bump(&mut self.refreshes);
    }

    pub fn refresh_refused(&mut self) {
        bump(&mut self.refreshes_refused);
    }

    pub fn rate_limited(&mut self) {
        bump(&mut self.rate_limited);
    }

    /// Appends the Prometheus text of these counters (names prefixed `wshub_`).
    pub fn write_prometheus(&self, out: &mut String) -> fmt::Result {
        let name = "wshub_auth_refused_total";
        writeln!(out, "# HELP {name} Upgrades refused with 401, by cause.\n# TYPE {name} counter")?;
        for cause in Refusal::ALL {
            writeln!(out, "{name}{{cause=\"{}\"}} {}", cause.label(), self.refusals(cause))?;
        }
        for (name, help, value) in [
            ("permission_denied_total", "Actions refused by a token's permissions.", self.permission_denied),
            (
                "tokens_expired_total",
                "Connections closed with 4001 when their token expired.",
                self.tokens_expired,
            ),
            ("token_refreshes_total", "Token refreshes accepted.", self.refreshes),
            ("token_refreshes_refused_total", "Token refreshes refused.", self.refreshes_refused),
            (
                "rate_limited_total",
                "Connections closed with 1008 for exceeding the rate limit.",
                self.rate_limited,
            ),
        ] {
            writeln!(out, "# HELP wshub_{name} {help}\n# TYPE wshub_{name} counter\nwshub_{name} {value}")?;
        }
        Ok(())
    }
}
