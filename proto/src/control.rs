//! Messages of the internal control API between the bridge (or agent) and the webapp.
//!
//! The same types serve the HTTPS API (split tiers) and the in-process calls of the all-in-one binary.

use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::token::Protocol;

/// A public key that signs session tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKey {
    pub kid: String,
    /// Raw 32-byte Ed25519 public key, standard base64.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenKeys {
    pub keys: Vec<TokenKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub jti: String,
    pub bridge_id: String,
}

/// What the bridge needs to reach a target; returned once, when the token is claimed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub connection_id: String,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Option<Secret<String>>,
    pub private_key: Option<Secret<String>>,
    /// Pinned host key (SSH: `SHA256:...` as OpenSSH prints it); `None` = trust on first use.
    pub host_key_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostKeyReport {
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndRequest {
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    pub bridge_id: String,
    /// Sessions live on this bridge.
    pub sessions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Sessions of the request that the webapp considers ended: the bridge closes them.
    pub ended: Vec<String>,
}

/// Why a control call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("token already used")]
    AlreadyUsed,
    #[error("session not found")]
    NotFound,
    #[error("session already ended")]
    Ended,
    #[error("control plane refused the node credential")]
    Unauthorized,
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
}
