//! TLS settings: a PEM certificate chain and private key made into a `rustls::ServerConfig`.
//!
//! The contract: [`TlsFiles::load`] reads both files, parses them ([`parse_cert_chain`] and
//! [`parse_private_key`] take bytes, so they are fuzzed without a file system), checks that the
//! key belongs to the first certificate, and returns a config shared by every connection that
//! starts its handshake while it is current. A reload (SIGHUP) is one more `load`: on success the
//! reactor swaps its `Arc` and connections already open keep the config they started with; on
//! failure it keeps the old one. Nothing here does socket I/O; the record layer lives in
//! `server::transport`.
//!
//! Crypto provider: rustls' `ring` backend. It builds with cargo and a C compiler alone (the
//! default `aws-lc-rs` needs cmake, which a fresh machine may not have), and it supports all
//! three key encodings (PKCS#8, PKCS#1/RSA, SEC1) and the TLS 1.2 and 1.3 suites browsers use.
//! Protocols: TLS 1.3 and 1.2 (rustls' safe defaults, no cipher configuration); ALPN `http/1.1`,
//! the protocol a WebSocket upgrade and our HTTP API speak.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Why a certificate or key could not be used. Each names the rule the input broke.
#[derive(Debug)]
pub enum TlsError {
    /// The file could not be read (missing, unreadable).
    Unreadable { path: PathBuf, source: io::Error },
    /// The file holds no PEM section of the kind wanted (not PEM, or e.g. a key where the
    /// certificate should be).
    NotPem { path: PathBuf, wanted: &'static str },
    /// A PEM section is damaged (bad base64, missing END line).
    BadPem { path: PathBuf, detail: String },
    /// rustls refused the pair: a key it cannot use, or one that does not match the certificate.
    Rejected { detail: String },
    /// The private key's public half is not the certificate's.
    KeyMismatch,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Unreadable { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            TlsError::NotPem { path, wanted } => {
                write!(f, "{} holds no PEM {wanted}", path.display())
            }
            TlsError::BadPem { path, detail } => write!(f, "{} is not valid PEM: {detail}", path.display()),
            TlsError::Rejected { detail } => write!(f, "certificate or key refused: {detail}"),
            TlsError::KeyMismatch => write!(f, "the private key does not match the certificate"),
        }
    }
}

impl std::error::Error for TlsError {}

/// What went wrong parsing PEM bytes (the file name is added by the caller).
#[derive(Debug, PartialEq, Eq)]
pub enum PemError {
    /// No section of the wanted kind.
    Missing,
    /// A damaged section.
    Malformed(String),
}

/// Every `CERTIFICATE` section, in order (end entity first). Other sections are skipped.
pub fn parse_cert_chain(pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem_bytes) {
        match item {
            Ok(cert) => chain.push(cert),
            Err(e) => return Err(pem_error(e)),
        }
    }
    if chain.is_empty() {
        return Err(PemError::Missing);
    }
    Ok(chain)
}

/// The first private key: `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or
/// `EC PRIVATE KEY` (SEC1).
pub fn parse_private_key(pem_bytes: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(pem_error)
}

fn pem_error(e: pem::Error) -> PemError {
    match e {
        pem::Error::NoItemsFound => PemError::Missing,
        other => PemError::Malformed(other.to_string()),
    }
}

/// The ServerConfig for a chain and key: TLS 1.3 and 1.2 with ring, ALPN http/1.1.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rejected { detail: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
            other => TlsError::Rejected { detail: other.to_string() },
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where the certificate chain and key live; loaded at start and again on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let cert_pem = read(&self.cert)?;
        let chain = parse_cert_chain(&cert_pem).map_err(|e| file_error(&self.cert, "CERTIFICATE", e))?;
        let key_pem = read(&self.key)?;
        let key = parse_private_key(&key_pem).map_err(|e| file_error(&self.key, "PRIVATE KEY", e))?;
        server_config(chain, key)
    }
}

/// The listener's TLS: the files (for SIGHUP) and the config new handshakes use.
pub struct TlsListener {
    pub files: TlsFiles,
    pub config: Arc<ServerConfig>,
}

impl TlsListener {
    pub fn load(files: TlsFiles) -> Result<TlsListener, TlsError> {
        let config = files.load()?;
        Ok(TlsListener { files, config })
    }

    /// Loads the files again. On success new handshakes use the new pair (connections already
    /// open keep the config they started with); on failure the current pair stays.
    pub fn reload(&mut self) -> Result<(), TlsError> {
        self.config = self.files.load()?;
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable { path: path.to_owned(), source })
}

fn file_error(path: &Path, wanted: &'static str, e: PemError) -> TlsError {
    match e {
        PemError::Missing => TlsError::NotPem { path: path.to_owned(), wanted },
        PemError::Malformed(detail) => TlsError::BadPem { path: path.to_owned(), detail },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wshub-tls-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_matching_pair_loads_with_alpn_http11() {
        let (cert, key) = pair();
        let config = files(&tmp("ok"), &cert, &key).load().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn each_bad_input_has_its_own_error() {
        let (cert, key) = pair();
        let (other_cert, _) = pair();
        let dir = tmp("bad");
        let missing = TlsFiles { cert: dir.join("nope.pem"), key: dir.join("nope-key.pem") };
        assert!(matches!(missing.load(), Err(TlsError::Unreadable { .. })));
        assert!(matches!(files(&dir, "hello, not pem", &key).load(), Err(TlsError::NotPem { .. })));
        // A key where the certificate should be: no CERTIFICATE section.
        assert!(matches!(files(&dir, &key, &key).load(), Err(TlsError::NotPem { .. })));
        assert!(matches!(files(&dir, &cert, &cert).load(), Err(TlsError::NotPem { .. })));
        assert!(matches!(files(&dir, &other_cert, &key).load(), Err(TlsError::KeyMismatch)));
        let truncated = &cert[..cert.len() / 2];
        assert!(matches!(files(&dir, truncated, &key).load(), Err(TlsError::BadPem { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn chain_order_is_kept_and_other_sections_skipped() {
        let (a, key) = pair();
        let (b, _) = pair();
        let both = format!("{key}{a}{b}");
        let chain = parse_cert_chain(both.as_bytes()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], parse_cert_chain(a.as_bytes()).unwrap()[0]);
    }

    #[test]
    fn key_encodings_pkcs8_and_sec1_parse() {
        let (_, key) = pair();
        assert!(matches!(parse_private_key(key.as_bytes()), Ok(PrivateKeyDer::Pkcs8(_))));
        // The same key's inner SEC1 encoding is what `openssl ec` writes; rcgen writes PKCS#8,
        // so check the SEC1 label is recognized with a damaged body instead.
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\n!!!!\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(parse_private_key(sec1.as_bytes()), Err(PemError::Malformed(_))));
        assert_eq!(parse_private_key(b"").unwrap_err(), PemError::Missing);
    }
}
