//! The `tls_pem` target: our certificate and key parsing (`wshub::tls`) on arbitrary bytes.
//!
//! What rustls does with a well-formed key is rustls' to fuzz; what we own is the way bytes
//! become a chain, a key and a `ServerConfig`, and the errors we give back. Invariants: no
//! panic; a parsed chain is never empty; the input, split at its first NUL byte, is tried as a
//! chain and as a key, and a pair that parses either yields a config or one of our errors.

use wshub::tls::{parse_cert_chain, parse_private_key, server_config, PemError};

pub fn check_tls_pem(data: &[u8]) {
    let (cert_part, key_part) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let chain = parse_cert_chain(cert_part);
    if let Ok(chain) = &chain {
        assert!(!chain.is_empty(), "an Ok chain has a certificate");
    }
    if let Err(PemError::Malformed(detail)) = &chain {
        assert!(!detail.is_empty(), "a malformed section says why");
    }
    let key = parse_private_key(key_part);
    if let (Ok(chain), Ok(key)) = (chain, key) {
        // Either a config or a TlsError (mismatch, unusable key); never a panic.
        let _ = server_config(chain, key);
    }
}
