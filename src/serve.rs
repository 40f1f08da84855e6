//! HTTPS serving for every tier: TLS material (given, or self-signed on first start) and one accept loop
//! that hands each connection to hyper with WebSocket upgrades enabled.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::config::{Settings, write_private};

pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Hex SHA-256 of the leaf certificate (what a bridge pins with --webapp-cert-sha256).
    pub fingerprint: String,
}

/// Load the configured certificate, or generate (once) a self-signed one in the data directory.
pub fn tls(settings: &Settings) -> anyhow::Result<Tls> {
    let (cert_path, key_path) = match (&settings.tls_cert, &settings.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let dir = settings.data_dir().join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                generate_self_signed(&dir, &c, &k)?;
            }
            (c, k)
        }
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("read certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parse certificate {}", cert_path.display()))?;
    let leaf = certs
        .first()
        .with_context(|| format!("no certificate in {}", cert_path.display()))?;
    let fingerprint = hex::encode(sha2::Sha256::digest(leaf.as_ref()));
    let key =
        PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("read private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    // HTTP/1.1 only: browsers then carry WebSockets over plain upgrades.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    })
}

fn generate_self_signed(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).context("generate a self-signed certificate")?;
    std::fs::write(cert, ck.cert.pem()).with_context(|| format!("write {}", cert.display()))?;
    write_private(key, ck.signing_key.serialize_pem().as_bytes())?;
    tracing::info!(path = %cert.display(), "Generated a self-signed certificate");
    Ok(())
}

/// Accept TLS connections forever and serve `app` on each.
pub async fn serve(listener: TcpListener, tls: tokio_rustls::TlsAcceptor, app: Router) -> anyhow::Result<()> {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "Accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                app.clone().oneshot(req)
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, error = %e, "Connection ended with an error");
            }
        });
    }
}
