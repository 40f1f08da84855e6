//! How the bridge talks to the control plane: the [`ControlPlane`] trait, and its HTTPS implementation
//! for split deployments (the all-in-one binary plugs in an in-process implementation instead).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use portico_proto::Secret;
use portico_proto::control::{
    BridgeRegisterRequest, BridgeRegistered, ClaimRequest, ControlError, EndRequest, HostKeyReport, SyncRequest,
    SyncResponse, Target, TokenKeys, ViewerClaimRequest, ViewerGrant, ViewerLeft, WorkspaceEndpoint,
};
use portico_proto::files::TransferReport;

#[async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    async fn token_keys(&self) -> Result<TokenKeys, ControlError>;
    async fn claim(&self, session_id: &str, req: &ClaimRequest) -> Result<Target, ControlError>;
    async fn record_host_key(&self, session_id: &str, report: &HostKeyReport) -> Result<(), ControlError>;
    /// A file transfer of the session ended (an audit event).
    async fn record_transfer(&self, session_id: &str, report: &TransferReport) -> Result<(), ControlError>;
    async fn end_session(&self, session_id: &str, req: &EndRequest) -> Result<(), ControlError>;
    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, ControlError>;
    /// Where the session's workspace container is once ready; `None` while it is still starting (the call
    /// waits a few seconds first; ask again).
    async fn workspace(&self, session_id: &str) -> Result<Option<WorkspaceEndpoint>, ControlError>;
    /// Claim a viewer's token (once, fleet-wide) for a session this bridge holds; the viewer's current mode.
    async fn claim_viewer(&self, session_id: &str, req: &ViewerClaimRequest) -> Result<ViewerGrant, ControlError>;
    /// A viewer of a session this bridge holds went.
    async fn viewer_left(&self, session_id: &str, viewer_id: &str, req: &ViewerLeft) -> Result<(), ControlError>;
}

/// Decode the published token keys.
pub fn verifying_keys(keys: &TokenKeys) -> Result<Vec<VerifyingKey>, ControlError> {
    keys.keys
        .iter()
        .map(|k| {
            let raw: [u8; 32] = base64::engine::general_purpose::STANDARD
                .decode(&k.public_key)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| ControlError::Unavailable("malformed token key".into()))?;
            VerifyingKey::from_bytes(&raw).map_err(|_| ControlError::Unavailable("invalid token key".into()))
        })
        .collect()
}

/// The webapp's internal API over HTTPS, authenticated with the node credential.
pub struct HttpControlPlane {
    base: String,
    /// Used only to register; every other call carries this bridge's own credential.
    node_secret: Secret<String>,
    name: String,
    route: Option<String>,
    credential: tokio::sync::Mutex<Option<Secret<String>>>,
    http: reqwest::Client,
}

/// Trusts exactly one certificate (by SHA-256 of its DER), for self-signed webapp certificates.
#[derive(Debug)]
struct PinnedCert {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest as _;
        if sha2::Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "webapp certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl HttpControlPlane {
    /// `cert_sha256`: hex SHA-256 of the webapp's certificate (pinning), or `None` to use `ca_pem` roots.
    pub fn new(
        base: String,
        node_secret: Secret<String>,
        name: &str,
        route: Option<String>,
        cert_sha256: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> anyhow::Result<Self> {
        let http = http_client(cert_sha256, ca_pem)?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            node_secret,
            name: name.to_owned(),
            route,
            credential: tokio::sync::Mutex::new(None),
            http,
        })
    }

    /// This bridge's credential: registered (with the node secret) on first use and after the webapp
    /// stopped knowing the previous one.
    async fn credential(&self) -> Result<Secret<String>, ControlError> {
        let mut held = self.credential.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let req = BridgeRegisterRequest {
            name: self.name.clone(),
            route: self.route.clone(),
        };
        let registered: BridgeRegistered = required(
            self.send(
                reqwest::Method::POST,
                "/internal/v1/bridges/register",
                Some(&req),
                &self.node_secret,
            )
            .await?,
        )?;
        tracing::info!(bridge_id = %registered.bridge_id, "Registered with the control plane");
        *held = Some(registered.credential.clone());
        Ok(registered.credential)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<Option<T>, ControlError> {
        let credential = self.credential().await?;
        let res = self.send(method, path, body, &credential).await;
        if matches!(res, Err(ControlError::Unauthorized)) {
            // Revoked, or a webapp tier that no longer knows it: register again at the next call (a revoked
            // bridge's name is refused then).
            *self.credential.lock().await = None;
        }
        res
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
        bearer: &Secret<String>,
    ) -> Result<Option<T>, ControlError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(bearer.expose());
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .map_err(|e| ControlError::Unavailable(format!("{e}")))?;
        let status = res.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return res
                .json()
                .await
                .map(Some)
                .map_err(|e| ControlError::Unavailable(format!("bad response: {e}")));
        }
        let text = res.text().await.unwrap_or_default();
        Err(match status.as_u16() {
            401 => ControlError::Unauthorized,
            403 => ControlError::Refused(
                serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text),
            ),
            404 => ControlError::NotFound,
            409 if text.contains("ended") => ControlError::Ended,
            409 => ControlError::AlreadyUsed,
            _ => ControlError::Unavailable(format!("http {status}: {text}")),
        })
    }
}

/// An HTTPS client for the webapp's internal API (bridges, agents): rustls with ring, the webapp's certificate
/// pinned or its CA trusted ([`client_tls_config`]), 10 s per request.
pub fn http_client(cert_sha256: Option<&str>, ca_pem: Option<&[u8]>) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context as _;
    reqwest::Client::builder()
        .use_preconfigured_tls(client_tls_config(cert_sha256, ca_pem)?)
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("build http client")
}

/// A rustls client configuration (ring provider) that trusts either exactly the certificate whose SHA-256
/// is `cert_sha256` (hex), or the CA certificates in `ca_pem`.
pub fn client_tls_config(cert_sha256: Option<&str>, ca_pem: Option<&[u8]>) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    Ok(if let Some(pin) = cert_sha256 {
        let sha256: [u8; 32] = hex::decode(pin.replace(':', ""))
            .ok()
            .and_then(|v| v.try_into().ok())
            .context("certificate pin must be 64 hex digits")?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert { sha256, provider }))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = ca_pem {
            for cert in rustls_pemfile_certs(pem)? {
                roots.add(cert).context("add ca certificate")?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    })
}

fn rustls_pemfile_certs(pem: &[u8]) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("read ca pem: {e}"))
}

fn required<T>(v: Option<T>) -> Result<T, ControlError> {
    v.ok_or_else(|| ControlError::Unavailable("empty response".into()))
}

#[async_trait]
impl ControlPlane for HttpControlPlane {
    async fn token_keys(&self) -> Result<TokenKeys, ControlError> {
        required(
            self.call(reqwest::Method::GET, "/internal/v1/token-keys", None::<&()>)
                .await?,
        )
    }

    async fn claim(&self, session_id: &str, req: &ClaimRequest) -> Result<Target, ControlError> {
        required(
            self.call(
                reqwest::Method::POST,
                &format!("/internal/v1/sessions/{session_id}/claim"),
                Some(req),
            )
            .await?,
        )
    }

    async fn record_host_key(&self, session_id: &str, report: &HostKeyReport) -> Result<(), ControlError> {
        self.call::<serde_json::Value>(
            reqwest::Method::POST,
            &format!("/internal/v1/sessions/{session_id}/host-key"),
            Some(report),
        )
        .await
        .map(|_| ())
    }

    async fn record_transfer(&self, session_id: &str, report: &TransferReport) -> Result<(), ControlError> {
        self.call::<serde_json::Value>(
            reqwest::Method::POST,
            &format!("/internal/v1/sessions/{session_id}/transfer"),
            Some(report),
        )
        .await
        .map(|_| ())
    }

    async fn end_session(&self, session_id: &str, req: &EndRequest) -> Result<(), ControlError> {
        self.call::<serde_json::Value>(
            reqwest::Method::POST,
            &format!("/internal/v1/sessions/{session_id}/end"),
            Some(req),
        )
        .await
        .map(|_| ())
    }

    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, ControlError> {
        required(
            self.call(reqwest::Method::POST, "/internal/v1/bridge/sync", Some(req))
                .await?,
        )
    }

    async fn workspace(&self, session_id: &str) -> Result<Option<WorkspaceEndpoint>, ControlError> {
        self.call(
            reqwest::Method::GET,
            &format!("/internal/v1/sessions/{session_id}/workspace"),
            None::<&()>,
        )
        .await
    }

    async fn claim_viewer(&self, session_id: &str, req: &ViewerClaimRequest) -> Result<ViewerGrant, ControlError> {
        required(
            self.call(
                reqwest::Method::POST,
                &format!("/internal/v1/sessions/{session_id}/viewers/claim"),
                Some(req),
            )
            .await?,
        )
    }

    async fn viewer_left(&self, session_id: &str, viewer_id: &str, req: &ViewerLeft) -> Result<(), ControlError> {
        self.call::<serde_json::Value>(
            reqwest::Method::POST,
            &format!("/internal/v1/sessions/{session_id}/viewers/{viewer_id}/left"),
            Some(req),
        )
        .await
        .map(|_| ())
    }
}
