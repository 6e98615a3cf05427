//! Echo peer over TLS: the echo peer behind tokio-rustls (ring, TLS 1.3 and 1.2, ALPN
//! http/1.1), with the same certificate and key files wshub is given.
//!
//! Usage: echo_tls ADDR CERT.pem KEY.pem

use std::sync::Arc;

use futures_util::{future, StreamExt, TryStreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9002".to_string());
    let cert = args.next().expect("certificate chain PEM");
    let key = args.next().expect("private key PEM");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert).expect("read cert").map(|c| c.expect("cert")).collect();
    let key = PrivateKeyDer::from_pem_file(&key).expect("read key");
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("cert and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("tokio-tungstenite echo (TLS) listening on {addr}");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(acceptor.clone(), stream));
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

async fn serve(acceptor: TlsAcceptor, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(tls) = acceptor.accept(stream).await else { return };
    let Ok(ws) = tokio_tungstenite::accept_async(tls).await else { return };
    let (sink, source) = ws.split();
    let _ = source.try_filter(|m| future::ready(m.is_text() || m.is_binary())).forward(sink).await;
}
