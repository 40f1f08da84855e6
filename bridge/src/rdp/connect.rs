//! The RDP connection sequence (IronRDP): TCP → X.224 negotiation → TLS (server certificate checked by the
//! connection's policy) → CredSSP/NLA when the server selected it → MCS, capabilities, licensing, finalization.
//!
//! CredSSP runs here rather than inside `connect_finalize`, so that a failure during NLA is known to be one:
//! FreeRDP answers a wrong password by closing the socket, which otherwise reads as "not enough bytes".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use ironrdp_connector::credssp::CredsspSequence;
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::{
    BitmapConfig, ClientConnector, ClientConnectorState, ConnectionOutcome, ConnectionResult, ConnectorErrorKind,
    ConnectorResult, Credentials, DesktopSize, ServerName,
};
use ironrdp_core::WriteBuf;
use ironrdp_pdu::gcc;
use ironrdp_pdu::rdp::capability_sets::{BitmapCodecs, MajorPlatformType, RailSupportLevel};
use ironrdp_pdu::rdp::client_info::{PerformanceFlags, TimezoneInfo};
use ironrdp_tokio::TokioFramed;
use portico_proto::codes::CloseCode;
use portico_proto::control::{ConnectionSettings, RdpSecurity};
use sha2::Digest as _;
use tokio::net::TcpStream;

/// The framed TLS stream the active session runs on.
pub type TlsFramed = TokioFramed<ironrdp_tls::TlsStream<TcpStream>>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection failed, with the wire error code it maps to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdpConnectError {
    #[error("cannot reach {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error("the server's certificate ({seen}) does not match the pinned fingerprint ({pinned})")]
    CertificateMismatch { seen: String, pinned: String },
    #[error("the rdp server refused the credentials{}", detail(.0))]
    AuthFailed(String),
    #[error("security negotiation failed: {0}")]
    Negotiation(String),
    #[error("tls handshake with the rdp server failed: {0}")]
    Tls(String),
    #[error("rdp connection failed: {0}")]
    Other(String),
}

fn detail(s: &str) -> String {
    if s.is_empty() { String::new() } else { format!(" ({s})") }
}

impl RdpConnectError {
    pub fn code(&self) -> CloseCode {
        match self {
            RdpConnectError::Unreachable { .. } => CloseCode::Unreachable,
            RdpConnectError::CertificateMismatch { .. } => CloseCode::HostKeyMismatch,
            RdpConnectError::AuthFailed(_) => CloseCode::AuthFailed,
            _ => CloseCode::TargetError,
        }
    }
}

/// What one connection attempt uses.
pub struct ConnectParams<'a> {
    pub host: &'a str,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub domain: Option<String>,
    pub width: u16,
    pub height: u16,
    pub settings: &'a ConnectionSettings,
    /// `SHA256:<base64>` of the pinned certificate; `None` = trust on first use.
    pub pinned: Option<&'a str>,
    /// Ask for the graphics pipeline (its channel is registered by the caller).
    pub gfx: bool,
}

pub struct Connected {
    pub framed: TlsFramed,
    pub result: ConnectionResult,
    /// `SHA256:<base64>` of the server's certificate.
    pub cert_fingerprint: String,
}

/// `SHA256:<base64>` (OpenSSH's notation, as stored for SSH host keys) of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(der))
    )
}

/// The connector configuration (IronRDP's `Config` has no `Default`: every field is set on purpose).
fn config(p: &ConnectParams<'_>) -> ironrdp_connector::Config {
    let s = p.settings;
    ironrdp_connector::Config {
        desktop_size: DesktopSize {
            width: p.width,
            height: p.height,
        },
        monitor_layout: None,
        desktop_scale_factor: 0,
        desktop_physical_size: None,
        desktop_orientation: None,
        device_scale_factor: None,
        monitor_extended_layout: None,
        relative_mouse_input: false,
        enable_tls: matches!(s.security, RdpSecurity::Auto | RdpSecurity::Tls),
        enable_credssp: matches!(s.security, RdpSecurity::Auto | RdpSecurity::Nla),
        enable_standard_rdp_security: false,
        credentials: Credentials::UsernamePassword {
            username: p.username.clone(),
            password: p.password.clone(),
        },
        domain: p.domain.clone(),
        // Above 419: xrdp treats older builds as clients that cannot resize and then resizes without the
        // deactivation-reactivation sequence.
        client_build: 22621,
        client_name: "portico".into(),
        keyboard_type: gcc::KeyboardType::IBM_ENHANCED,
        keyboard_subtype: 0,
        keyboard_functional_keys_count: 12,
        // The browser sends scancodes of the physical keys and Unicode for characters without one, so the
        // server's layout decides what a key types: US is the neutral choice.
        keyboard_layout: 0x409,
        connection_type: gcc::ConnectionType::Lan,
        ime_file_name: String::new(),
        // No codecs advertised: the servers send lossless planar/interleaved bitmaps, which the bridge
        // re-encodes (PNG for text, JPEG for photographic regions). RemoteFX is lossy and shows tile edges.
        bitmap: Some(BitmapConfig {
            lossy_compression: true,
            color_depth: u32::from(s.color_depth),
            codecs: BitmapCodecs(Vec::new()),
        }),
        dig_product_id: String::new(),
        client_dir: "C:\\Windows\\System32\\mstscax.dll".into(),
        alternate_shell: String::new(),
        work_dir: String::new(),
        remote_application_mode: false,
        rail_support_level: RailSupportLevel::empty(),
        platform: MajorPlatformType::UNIX,
        hardware_id: None,
        request_data: None,
        // Without INFO_AUTOLOGON xrdp (and Windows over TLS) ignore the password and show their own logon.
        autologon: !p.password.is_empty(),
        enable_audio_playback: false,
        enable_audio_capture: false,
        performance_flags: PerformanceFlags::default(),
        license_cache: None,
        timezone_info: TimezoneInfo::default(),
        compression_type: None,
        // The browser draws the pointer: shapes arrive as pointer outputs, not painted into the image.
        enable_server_pointer: true,
        pointer_software_rendering: false,
        multitransport_flags: None,
        support_dyn_vc_gfx_protocol: p.gfx,
    }
}

/// NTLM never needs the network; only Kerberos would (KDC traffic), which is not offered.
struct NoNetworkClient;

impl ironrdp_tokio::NetworkClient for NoNetworkClient {
    async fn send(&mut self, _request: &NetworkRequest) -> ConnectorResult<Vec<u8>> {
        Err(ironrdp_connector::general_err!(
            "kerberos is not supported (no kdc access)"
        ))
    }
}

fn report(e: &ironrdp_connector::ConnectorError) -> String {
    e.report().to_string().to_lowercase()
}

/// Run the whole connection sequence.
pub async fn connect(
    p: ConnectParams<'_>,
    channels: impl FnOnce(ClientConnector) -> ClientConnector,
) -> Result<Connected, RdpConnectError> {
    // ironrdp-tls builds its TLS config with the process default provider: make it ring, explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addr = format!("{}:{}", p.host, p.port);
    let unreachable = |why: String| RdpConnectError::Unreachable {
        addr: addr.clone(),
        why,
    };
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((p.host, p.port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e.to_string().to_lowercase())),
        Err(_) => return Err(unreachable("connection timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().map_err(|e| unreachable(e.to_string()))?;
    let mut connector = channels(ClientConnector::new(config(&p), local));

    let mut framed = TokioFramed::new(tcp);
    let should_upgrade = ironrdp_tokio::connect_begin(&mut framed, &mut connector)
        .await
        .map_err(|e| match e.kind() {
            ConnectorErrorKind::Negotiation(_) => RdpConnectError::Negotiation(report(&e)),
            _ => RdpConnectError::Other(format!("negotiation: {}", report(&e))),
        })?;

    // TLS. The callback runs only when ordinary validation fails (self-signed certificates): it accepts by
    // the connection's policy, and the leaf is checked again below for certificates that validate.
    let pinned = p.pinned.map(str::to_owned);
    let danger_any = p.settings.danger_accept_any_certificate;
    let seen: Arc<Mutex<Option<String>>> = Arc::default();
    let seen_cb = seen.clone();
    let pinned_cb = pinned.clone();
    let callback: ironrdp_tls::CertificateValidationCallback = Arc::new(move |leaf: &[u8], _endpoint, _error| {
        let fp = fingerprint(leaf);
        let ok = danger_any || pinned_cb.as_ref().is_none_or(|pin| *pin == fp);
        if let Ok(mut s) = seen_cb.lock() {
            *s = Some(fp);
        }
        ok
    });
    let (tcp, leftover) = framed.into_inner();
    let (tls, cert) = match ironrdp_tls::upgrade_with_certificate_validation_callback(tcp, p.host, callback).await {
        Ok(ok) => ok,
        Err(e) => {
            let seen = seen.lock().ok().and_then(|s| s.clone());
            return Err(match (seen, pinned) {
                (Some(seen), Some(pinned)) if seen != pinned && !danger_any => {
                    RdpConnectError::CertificateMismatch { seen, pinned }
                }
                _ => RdpConnectError::Tls(e.to_string().to_lowercase()),
            });
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| fingerprint(c.as_ref()))
        .ok_or_else(|| RdpConnectError::Tls("the server sent no certificate".into()))?;
    if let Some(pin) = p.pinned
        && pin != leaf
        && !danger_any
    {
        return Err(RdpConnectError::CertificateMismatch {
            seen: leaf,
            pinned: pin.into(),
        });
    }
    let upgraded = ironrdp_tokio::mark_as_upgraded(should_upgrade, &mut connector);
    let mut framed = TokioFramed::new_with_leftover(tls, leftover);
    let server_public_key = ironrdp_tls::extract_tls_server_public_key(&cert)
        .ok_or_else(|| RdpConnectError::Tls("cannot read the server's public key".into()))?
        .to_owned();

    let server_name = ServerName::new(p.host);
    if connector.should_perform_credssp() {
        let ClientConnectorState::Credssp { selected_protocol } = connector.state else {
            return Err(RdpConnectError::Other(
                "unexpected connector state before credssp".into(),
            ));
        };
        let nla = |e: ironrdp_connector::ConnectorError| {
            use ironrdp_connector::sspi::ErrorKind as K;
            match e.kind() {
                ConnectorErrorKind::Credssp(s)
                    if !matches!(
                        s.error_type,
                        K::LogonDenied | K::NoCredentials | K::UnknownCredentials | K::WrongPrincipalName
                    ) =>
                {
                    RdpConnectError::Other(format!("nla: {}", report(&e)))
                }
                // Windows answers with LogonDenied; FreeRDP closes the connection during NLA.
                _ => RdpConnectError::AuthFailed("nla".into()),
            }
        };
        let (sequence, ts_request) = CredsspSequence::init(
            connector.config.credentials.clone(),
            connector.config.domain.as_deref(),
            selected_protocol,
            server_name.clone(),
            server_public_key.clone(),
            None,
        )
        .map_err(nla)?;
        let mut buf = WriteBuf::new();
        ironrdp_tokio::perform_credssp(&mut framed, &mut NoNetworkClient, &mut buf, sequence, ts_request)
            .await
            .map_err(nla)?;
        connector.mark_credssp_as_done();
    }
    let outcome = ironrdp_tokio::connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetworkClient,
        server_name,
        server_public_key,
        None,
    )
    .await
    .map_err(|e| match e.kind() {
        ConnectorErrorKind::AccessDenied => RdpConnectError::AuthFailed("access denied".into()),
        _ => RdpConnectError::Other(report(&e)),
    })?;
    match outcome {
        ConnectionOutcome::Connected(result) => Ok(Connected {
            framed,
            result,
            cert_fingerprint: leaf,
        }),
        ConnectionOutcome::Redirected(_) => Err(RdpConnectError::Other(
            "the server redirected the connection to another host (session broker redirection is not supported)".into(),
        )),
    }
}
