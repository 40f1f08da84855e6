//! SSH upstream (russh): connect, verify the host key against the pinned fingerprint (or record it on first
//! use), authenticate with the stored password or private key, and open a PTY shell.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portico_proto::codes::CloseCode;
use portico_proto::control::Target;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const TERM: &str = "xterm-256color";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("host key changed: expected {expected}, server presented {got}; refusing to connect")]
    HostKeyMismatch { expected: String, got: String },
    #[error("authentication failed for user {user}: {detail}")]
    AuthFailed { user: String, detail: String },
    #[error("stored private key is unusable: {0}")]
    BadKey(String),
    #[error("ssh error: {0}")]
    Protocol(String),
}

impl SshError {
    /// The wire error code (docs/protocol.md).
    pub fn code(&self) -> CloseCode {
        match self {
            SshError::Unreachable { .. } => CloseCode::Unreachable,
            SshError::HostKeyMismatch { .. } => CloseCode::HostKeyMismatch,
            SshError::AuthFailed { .. } | SshError::BadKey(_) => CloseCode::AuthFailed,
            SshError::Protocol(_) => CloseCode::TargetError,
        }
    }
}

/// Host-key policy: compare with the pin, or accept and remember what was seen (trust on first use).
pub struct KeyCheck {
    expected: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for KeyCheck {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let public = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key().clone().into(),
        };
        let fp = public.fingerprint(HashAlg::Sha256).to_string();
        let ok = self.expected.as_deref().is_none_or(|want| want == fp);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp);
        }
        Ok(ok)
    }
}

pub struct SshShell {
    pub handle: Handle<KeyCheck>,
    pub channel: Channel<client::Msg>,
    /// The host key fingerprint the server presented (`SHA256:...`).
    pub host_key: String,
}

fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        // Smaller windows than the default keep per-session memory low; terminal traffic is light.
        window_size: 256 * 1024,
        channel_buffer_size: 32,
        nodelay: true,
        ..Default::default()
    })
}

pub async fn connect(target: &Target, cols: u16, rows: u16) -> Result<SshShell, SshError> {
    let addr = format!("{}:{}", target.host, target.port);
    let seen = Arc::new(Mutex::new(None));
    let handler = KeyCheck {
        expected: target.host_key_fingerprint.clone(),
        seen: seen.clone(),
    };
    let seen_fp = || seen.lock().ok().and_then(|s| s.clone());
    let connecting = client::connect(client_config(), (target.host.as_str(), target.port), handler);
    let mut handle = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => {
            return Err(SshError::Unreachable {
                addr,
                reason: "connection timed out".into(),
            });
        }
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return Err(match (e, seen_fp(), &target.host_key_fingerprint) {
                (russh::Error::UnknownKey, Some(got), Some(expected)) => SshError::HostKeyMismatch {
                    expected: expected.clone(),
                    got,
                },
                (russh::Error::IO(io), _, _) => SshError::Unreachable {
                    addr,
                    reason: io.to_string().to_lowercase(),
                },
                (russh::Error::Disconnect | russh::Error::HUP, None, _) => SshError::Unreachable {
                    addr,
                    reason: "connection closed before the ssh handshake".into(),
                },
                (e, _, _) => SshError::Protocol(e.to_string().to_lowercase()),
            });
        }
    };
    let host_key = seen_fp().unwrap_or_default();
    let user = target.username.clone();
    let mut authenticated = false;
    let mut detail = String::from("no credentials stored for this connection");
    if let Some(pem) = &target.private_key {
        let key = russh::keys::decode_secret_key(pem.expose(), None)
            .map_err(|e| SshError::BadKey(e.to_string().to_lowercase()))?;
        let hash = handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        let res = handle
            .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| SshError::Protocol(e.to_string().to_lowercase()))?;
        authenticated = res.success();
        detail = "the server rejected the private key".into();
    }
    if !authenticated && let Some(password) = &target.password {
        let res = handle
            .authenticate_password(&user, password.expose())
            .await
            .map_err(|e| SshError::Protocol(e.to_string().to_lowercase()))?;
        authenticated = res.success();
        detail = "wrong password or the server does not allow password login".into();
    }
    if !authenticated {
        let _ = handle
            .disconnect(russh::Disconnect::ByApplication, "authentication failed", "en")
            .await;
        return Err(SshError::AuthFailed { user, detail });
    }
    let proto = |e: russh::Error| SshError::Protocol(e.to_string().to_lowercase());
    let channel = handle.channel_open_session().await.map_err(proto)?;
    // The browser's terminal is UTF-8: ask for a locale that says so (a server that does not accept it
    // ignores it, as it does OpenSSH's `SendEnv LANG`).
    let locale = target
        .settings
        .locale
        .as_deref()
        .unwrap_or(portico_proto::control::DEFAULT_LOCALE);
    channel.set_env(false, "LANG", locale).await.map_err(proto)?;
    channel
        // The browser sends UTF-8: with IUTF8 the line discipline erases a whole character on backspace.
        .request_pty(false, TERM, cols.into(), rows.into(), 0, 0, &[(russh::Pty::IUTF8, 1)])
        .await
        .map_err(proto)?;
    channel.request_shell(false).await.map_err(proto)?;
    Ok(SshShell {
        handle,
        channel,
        host_key,
    })
}

/// What the session actor needs from a channel message.
pub enum Output {
    Data(Vec<u8>),
    Exited(Option<u32>),
    Closed,
    Other,
}

pub fn classify(msg: Option<ChannelMsg>) -> Output {
    match msg {
        Some(ChannelMsg::Data { data }) => Output::Data(data.to_vec()),
        Some(ChannelMsg::ExtendedData { data, .. }) => Output::Data(data.to_vec()),
        Some(ChannelMsg::ExitStatus { exit_status }) => Output::Exited(Some(exit_status)),
        // EOF comes before the exit status; only the channel close ends the session.
        Some(ChannelMsg::Close) | None => Output::Closed,
        Some(_) => Output::Other,
    }
}
