//! Verifying a connection token: signature by `jsonwebtoken` (over `ring`), claims by us.
//!
//! The order is the one that trusts nothing unverified: the header's `alg` picks a configured
//! key (or the token is refused: `none`, unknown algorithms, algorithms without a key and
//! critical extensions (`crit`) never reach the crypto), `jsonwebtoken` checks the signature and then `aud`/`iss`, and only then
//! are the claims read. `exp` and `nbf` are checked here, against the `now` the caller passes
//! (the crate would read the system clock itself), with the configured leeway.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::permissions::Grant;
use super::Refusal;

/// What the operator configured: `--jwt-secret`, `--jwt-public-key`, `--jwt-audience`,
/// `--jwt-issuer`, `--jwt-leeway`.
#[derive(Clone, Default)]
pub struct VerifierConfig {
    /// HMAC secret (HS256, HS384, HS512).
    pub secret: Option<Vec<u8>>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519 `PUBLIC KEY`).
    pub public_key_pem: Option<Vec<u8>>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway_secs: u64,
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_pem", &self.public_key_pem.as_ref().map(|_| "<set>"))
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

/// Why a configuration cannot verify anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifierError {
    /// Neither a secret nor a public key.
    NoKey,
    /// An empty secret would let anyone sign tokens.
    EmptySecret,
    /// The file is not a PEM `PUBLIC KEY` of a supported kind.
    UnsupportedPublicKey,
}

impl fmt::Display for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifierError::NoKey => "JWT options need --jwt-secret or --jwt-public-key",
            VerifierError::EmptySecret => "the JWT secret is empty",
            VerifierError::UnsupportedPublicKey => {
                "--jwt-public-key must be a PEM public key (RSA, EC P-256/P-384 or Ed25519)"
            }
        })
    }
}

impl std::error::Error for VerifierError {}

/// One accepted algorithm: its key and its prepared validation rules.
struct Rule {
    alg: Algorithm,
    key: usize,
    validation: Validation,
}

/// Checks tokens; built once at start, shared by every connection.
pub struct Verifier {
    keys: Vec<DecodingKey>,
    rules: Vec<Rule>,
    leeway_ms: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys never appear: only what they allow.
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms())
            .field("leeway_ms", &self.leeway_ms)
            .finish_non_exhaustive()
    }
}

/// The claims we read. Unknown claims are ignored; `exp` is required (a connection token that
/// never expires is a credential that can never be revoked).
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: f64,
    #[serde(default)]
    nbf: Option<f64>,
    /// Read as a map first: serde's derived structs would also accept an array.
    #[serde(default)]
    wshub: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize, Default)]
struct WshubClaim {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    broadcast: bool,
}

/// What the header must say before anything is verified: the algorithm, and no `crit`.
#[derive(Deserialize)]
struct AlgOnly<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    /// RFC 7515 section 4.1.11: a token whose `crit` lists an extension the recipient does
    /// not understand is invalid. We understand none (and `jsonwebtoken` ignores the field),
    /// so any `crit` refuses the token.
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A NumericDate (seconds, maybe fractional) in milliseconds; negative is the epoch.
fn numeric_date_ms(secs: f64) -> u64 {
    (secs * 1000.0) as u64
}

impl Verifier {
    pub fn new(config: &VerifierConfig) -> Result<Verifier, VerifierError> {
        let mut keys = Vec::new();
        let mut algs: Vec<(Algorithm, usize)> = Vec::new();
        if let Some(secret) = &config.secret {
            if secret.is_empty() {
                return Err(VerifierError::EmptySecret);
            }
            keys.push(DecodingKey::from_secret(secret));
            let k = keys.len() - 1;
            algs.extend([Algorithm::HS256, Algorithm::HS384, Algorithm::HS512].map(|a| (a, k)));
        }
        if let Some(pem) = &config.public_key_pem {
            let (key, family) = public_key(pem)?;
            keys.push(key);
            let k = keys.len() - 1;
            algs.extend(family.iter().map(|&a| (a, k)));
        }
        if keys.is_empty() {
            return Err(VerifierError::NoKey);
        }
        let rules = algs
            .into_iter()
            .map(|(alg, key)| {
                let mut v = Validation::new(alg);
                // Time is ours to check (with the caller's clock); the crate's checks are off.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.required_spec_claims.clear();
                v.validate_aud = false;
                if let Some(aud) = &config.audience {
                    v.validate_aud = true;
                    v.set_audience(&[aud]);
                    v.required_spec_claims.insert("aud".into());
                }
                if let Some(iss) = &config.issuer {
                    v.set_issuer(&[iss]);
                    v.required_spec_claims.insert("iss".into());
                }
                Rule { alg, key, validation: v }
            })
            .collect();
        Ok(Verifier { keys, rules, leeway_ms: config.leeway_secs.saturating_mul(1000) })
    }

    /// The algorithms this verifier accepts, for the start-up log.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.rules.iter().map(|r| r.alg).collect()
    }

    /// Verifies `token` at `now_unix_ms` (wall clock, milliseconds since the Unix epoch) and
    /// compiles its permissions.
    pub fn verify(&self, token: &str, now_unix_ms: u64) -> Result<Grant, Refusal> {
        if token.len() > super::extract::MAX_TOKEN_LEN {
            return Err(Refusal::Malformed);
        }
        let rule = self.rule_for(token)?;
        let key = self.keys.get(rule.key).ok_or(Refusal::AlgNotAllowed)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &rule.validation).map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let exp_ms = numeric_date_ms(claims.exp);
        if exp_ms.saturating_add(self.leeway_ms) <= now_unix_ms {
            return Err(Refusal::Expired);
        }
        if let Some(nbf) = claims.nbf {
            if numeric_date_ms(nbf) > now_unix_ms.saturating_add(self.leeway_ms) {
                return Err(Refusal::NotYetValid);
            }
        }
        let wshub: WshubClaim = match claims.wshub {
            None => WshubClaim::default(),
            Some(map) => {
                serde_json::from_value(serde_json::Value::Object(map)).map_err(|_| Refusal::Malformed)?
            }
        };
        Grant::new(&claims.sub, &wshub.subscribe, &wshub.publish, wshub.broadcast, exp_ms)
            .ok_or(Refusal::Malformed)
    }

    /// The rule for the token's `alg`, read from its header before anything is verified.
    fn rule_for(&self, token: &str) -> Result<&Rule, Refusal> {
        let header = token.split('.').next().ok_or(Refusal::Malformed)?;
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| Refusal::Malformed)?;
        let AlgOnly { alg, crit } = serde_json::from_slice(&header).map_err(|_| Refusal::Malformed)?;
        if crit.is_some() {
            return Err(Refusal::Malformed);
        }
        let alg = Algorithm::from_str(&alg).map_err(|_| Refusal::AlgNotAllowed)?;
        self.rules.iter().find(|r| r.alg == alg).ok_or(Refusal::AlgNotAllowed)
    }
}

/// The key in a PEM file and the algorithms of its family.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, &'static [Algorithm]), VerifierError> {
    // Only public keys: a private key given by mistake is refused rather than half-used.
    let text = std::str::from_utf8(pem).map_err(|_| VerifierError::UnsupportedPublicKey)?;
    if !text.contains("-----BEGIN PUBLIC KEY-----") && !text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        return Err(VerifierError::UnsupportedPublicKey);
    }
    const RSA: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
    const ED: &[Algorithm] = &[Algorithm::EdDSA];
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, RSA));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, EC));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, ED));
    }
    Err(VerifierError::UnsupportedPublicKey)
}

/// The cause of a `jsonwebtoken` error.
fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::Crypto(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Refusal::BadSignature,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Refusal::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Refusal::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
            Refusal::AlgNotAllowed
        }
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        _ => Refusal::Malformed,
    }
}

#[cfg(test)]
mod tests;
