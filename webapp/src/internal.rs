//! The internal API for bridges: registration, token keys, one-time token claims with target credentials,
//! host-key pinning, session end and liveness sync. A bridge registers with the node secret and gets its own
//! credential ([`CallerBridge`]); every other call is made with that credential and may act only on the
//! sessions that bridge claimed.
//!
//! [`Internal`] holds the logic; the HTTPS routes below and the in-process adapter of the all-in-one binary
//! both call it, so the two topologies behave the same.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use portico_proto::Secret;
use portico_proto::codes::CloseCode;
use portico_proto::control::{
    AgentRegisterRequest, AgentRegistered, AgentSync, AgentSyncResponse, BridgeRegisterRequest, BridgeRegistered,
    ClaimRequest, ControlError, EndRequest, HostKeyReport, SyncRequest, SyncResponse, Target, TokenKey, TokenKeys,
    ViewerClaimRequest, ViewerGrant, WorkspaceEndpoint,
};
use portico_proto::files::{TransferDirection, TransferReport};
use portico_proto::token::key_id;
use subtle::ConstantTimeEq as _;

use crate::api::ApiJson;
use crate::db::{AgentRegisterOutcome, state};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::{AppState, now_unix};

#[derive(Clone)]
pub struct Internal {
    st: AppState,
}

/// A bridge authenticated by its own credential; the only one that may act on the sessions it claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerBridge {
    pub id: String,
}

/// Refused bridge registrations allowed per client address in [`crate::login::WINDOW_SECS`].
pub const BRIDGE_REGISTRATION_LIMIT: i64 = 30;

fn db_err(e: sqlx::Error) -> ControlError {
    tracing::error!(error = %e, "Internal API database error");
    ControlError::Unavailable("database error".into())
}

impl Internal {
    pub fn new(st: AppState) -> Self {
        Internal { st }
    }

    pub fn token_keys(&self) -> TokenKeys {
        let vk = self.st.signer.verifying_key();
        TokenKeys {
            keys: vec![TokenKey {
                kid: key_id(&vk),
                public_key: base64::engine::general_purpose::STANDARD.encode(vk.as_bytes()),
            }],
        }
    }

    /// Claim the token `jti` of `session_id` for `bridge_id`: succeeds once, fleet-wide, and returns the target.
    pub async fn claim(
        &self,
        caller: &CallerBridge,
        session_id: &str,
        req: &ClaimRequest,
    ) -> Result<Target, ControlError> {
        let now = now_unix();
        let db = &self.st.db;
        if !db
            .claim_session(session_id, &req.jti, &caller.id, now)
            .await
            .map_err(db_err)?
        {
            let s = db
                .session(session_id)
                .await
                .map_err(db_err)?
                .ok_or(ControlError::NotFound)?;
            tracing::warn!(%session_id, bridge_id = %caller.id, bridge = ?req.bridge_id, state = %s.state, "Refused token claim");
            let refusal = match s.state.as_str() {
                state::PENDING if s.bridge_id.as_deref().is_some_and(|b| b != caller.id) => {
                    // The load balancer sent it to the wrong bridge (or someone replays it elsewhere).
                    ControlError::Refused("this session is assigned to another bridge".into())
                }
                state::ENDED if s.claimed_at.is_none() => ControlError::Ended,
                state::PENDING if s.token_expires_at < now - portico_proto::token::LEEWAY_SECS => {
                    ControlError::Refused("token expired".into())
                }
                _ => ControlError::AlreadyUsed,
            };
            self.st.events.emit(
                Event::new(EventType::TokenRefused)
                    .user(&s.user_id)
                    .connection(&s.connection_id)
                    .session(session_id)
                    .detail("reason", refusal.to_string())
                    .detail("bridge_id", &caller.id)
                    .detail("bridge", &req.bridge_id),
            );
            return Err(refusal);
        }
        let s = db
            .session(session_id)
            .await
            .map_err(db_err)?
            .ok_or(ControlError::NotFound)?;
        let Some(c) = db.connection(&s.connection_id).await.map_err(db_err)? else {
            if db
                .end_session(session_id, CloseCode::Ended, "connection deleted", now)
                .await
                .map_err(db_err)?
            {
                self.st.events.emit(
                    Event::new(EventType::SessionEnded)
                        .user(&s.user_id)
                        .connection(&s.connection_id)
                        .session(session_id)
                        .detail("reason", "connection deleted"),
                );
            }
            return Err(ControlError::NotFound);
        };
        let keys = &self.st.keys;
        let open = |field: &str, v: &Option<String>| -> Result<Option<Secret<String>>, ControlError> {
            v.as_ref()
                .map(|sealed| {
                    keys.open(sealed, &format!("connection:{}:{field}", c.id)).map(Secret::new).map_err(|e| {
                        tracing::error!(error = format!("{e:#}"), connection_id = %c.id, "Cannot decrypt a credential");
                        ControlError::Unavailable("cannot decrypt the stored credential".into())
                    })
                })
                .transpose()
        };
        tracing::info!(%session_id, bridge_id = %caller.id, bridge = ?req.bridge_id, connection_id = %c.id, "Token claimed");
        self.st.events.emit(
            Event::new(EventType::SessionClaimed)
                .user(&s.user_id)
                .connection(&c.id)
                .session(session_id)
                .detail("bridge_id", &caller.id)
                .detail("bridge", &req.bridge_id)
                .detail("protocol", &c.protocol)
                .detail("target", crate::api::target_of(&c.host, c.port))
                .detail("wait_secs", (now - s.created_at).max(0)),
        );
        let mut settings: portico_proto::control::ConnectionSettings = serde_json::from_str(&c.settings)
            .map_err(|e| ControlError::Unavailable(format!("bad connection settings: {e}")))?;
        // The warm pool is the control plane's business: the bridge gets the spec without it (a bridge of
        // the previous version refuses fields it does not know).
        if let Some(w) = settings.workspace.as_mut() {
            w.warm = 0;
        }
        let owner = db.user(&s.user_id).await.map_err(db_err)?;
        if let Some(u) = &owner {
            // A group of the owner may record more than the connection does: the stricter policy applies.
            let groups = db.limits(u).await.map_err(db_err)?.recording;
            settings.recording = settings.recording.max(groups);
        }
        if settings.recording.records() {
            // Listed before the first byte is written: a recording cut short by a bridge's death is found.
            let username = owner.map(|u| u.username).unwrap_or_default();
            let row = crate::db::RecordingRow {
                id: session_id.to_owned(),
                user_id: s.user_id.clone(),
                username,
                connection_id: c.id.clone(),
                connection_name: c.name.clone(),
                protocol: c.protocol.clone(),
                input: settings.recording.input(),
                owner_access: settings.recording_owner_access,
                bridge_id: caller.id.clone(),
                created_at: now,
                ended_at: None,
                completed_at: None,
            };
            db.insert_recording(&row).await.map_err(db_err)?;
            self.st.events.emit(
                Event::new(EventType::RecordingStarted)
                    .user(&s.user_id)
                    .connection(&c.id)
                    .session(session_id)
                    .detail("input", row.input)
                    .detail("bridge_id", &caller.id),
            );
        }
        let workspace = c.protocol == crate::workspaces::PROTOCOL;
        Ok(Target {
            protocol: crate::api::bridge_protocol(&c.protocol)
                .ok_or_else(|| ControlError::Unavailable("bad protocol".into()))?,
            workspace_pending: workspace,
            host: c.host.clone(),
            port: u16::try_from(c.port).map_err(|_| ControlError::Unavailable("bad port".into()))?,
            username: c.username.clone(),
            password: open("password", &c.password_enc)?,
            private_key: open("private_key", &c.private_key_enc)?,
            host_key_fingerprint: c.host_key_fingerprint.clone(),
            settings,
            connection_id: c.id.clone(),
        })
    }

    /// Claim a viewer's token for the session `caller` holds: once, fleet-wide, while its share lets it in.
    pub async fn claim_viewer(
        &self,
        caller: &CallerBridge,
        session_id: &str,
        req: &ViewerClaimRequest,
    ) -> Result<ViewerGrant, ControlError> {
        let now = now_unix();
        let s = self.own_session(caller, session_id).await?;
        match self
            .st
            .db
            .claim_viewer(&req.viewer_id, session_id, &req.jti, &caller.id, now)
            .await
            .map_err(db_err)?
        {
            crate::db::ViewerClaim::Claimed(mode) => {
                self.st.events.emit(
                    Event::new(EventType::ViewerClaimed)
                        .user(&s.user_id)
                        .connection(&s.connection_id)
                        .session(session_id)
                        .detail("viewer_id", &req.viewer_id)
                        .detail("bridge_id", &caller.id),
                );
                let mode = portico_proto::token::ShareMode::parse(&mode)
                    .ok_or_else(|| ControlError::Unavailable("bad share mode".into()))?;
                Ok(ViewerGrant { mode })
            }
            crate::db::ViewerClaim::Refused(why) => {
                tracing::warn!(%session_id, viewer_id = %req.viewer_id, bridge_id = %caller.id, why, "Refused viewer claim");
                self.st.events.emit(
                    Event::new(EventType::TokenRefused)
                        .user(&s.user_id)
                        .connection(&s.connection_id)
                        .session(session_id)
                        .detail("reason", why)
                        .detail("viewer_id", &req.viewer_id)
                        .detail("bridge_id", &caller.id),
                );
                Err(ControlError::Refused(why.into()))
            }
        }
    }

    /// A viewer of a session `caller` holds went (`reason`: why, for the events).
    pub async fn viewer_left(
        &self,
        caller: &CallerBridge,
        session_id: &str,
        viewer_id: &str,
        reason: &str,
    ) -> Result<(), ControlError> {
        let s = self.own_session(caller, session_id).await?;
        if self
            .st
            .db
            .viewer_left(viewer_id, &caller.id, now_unix())
            .await
            .map_err(db_err)?
        {
            let reason: String = reason.chars().take(200).collect();
            self.st.events.emit(
                Event::new(EventType::ViewerLeft)
                    .user(&s.user_id)
                    .connection(&s.connection_id)
                    .session(session_id)
                    .detail("viewer_id", viewer_id)
                    .detail("reason", reason),
            );
        }
        Ok(())
    }

    /// The session `session_id` if `caller` claimed it (else `NotFound`: another bridge's sessions do not
    /// exist for it).
    async fn own_session(
        &self,
        caller: &CallerBridge,
        session_id: &str,
    ) -> Result<crate::db::SessionRow, ControlError> {
        self.st
            .db
            .session(session_id)
            .await
            .map_err(db_err)?
            .filter(|s| s.bridge_id.as_deref() == Some(caller.id.as_str()))
            .ok_or(ControlError::NotFound)
    }

    /// Trust on first use: pin the host key of the session's connection if none is pinned yet.
    pub async fn record_host_key(
        &self,
        caller: &CallerBridge,
        session_id: &str,
        report: &HostKeyReport,
    ) -> Result<(), ControlError> {
        let s = self.own_session(caller, session_id).await?;
        let fp = crate::api::normalize_fingerprint(Some(&report.fingerprint))
            .map_err(|_| ControlError::Unavailable("bad fingerprint".into()))?
            .ok_or(ControlError::NotFound)?;
        if self
            .st
            .db
            .pin_host_key_if_unset(&s.connection_id, &fp, now_unix())
            .await
            .map_err(db_err)?
        {
            tracing::info!(connection_id = %s.connection_id, fingerprint = %fp, "Host key pinned on first use");
            self.st.events.emit(
                Event::new(EventType::HostKeyPinned)
                    .user(&s.user_id)
                    .connection(&s.connection_id)
                    .session(session_id)
                    .detail("fingerprint", &fp)
                    .detail("bridge_id", &caller.id),
            );
        }
        Ok(())
    }

    /// A file transfer of a session ended: an audit event.
    pub async fn record_transfer(
        &self,
        caller: &CallerBridge,
        session_id: &str,
        report: &TransferReport,
    ) -> Result<(), ControlError> {
        let s = self.own_session(caller, session_id).await?;
        let (event, direction) = match report.direction {
            TransferDirection::Upload => (EventType::FileTransferred, "upload"),
            TransferDirection::Download => (EventType::FileTransferred, "download"),
            TransferDirection::Mkdir => (EventType::FileChanged, "mkdir"),
            TransferDirection::Remove => (EventType::FileChanged, "remove"),
        };
        let path: String = report.path.chars().take(4096).collect();
        let outcome: String = report.outcome.chars().take(32).collect();
        tracing::info!(session_id, direction, path = %path, bytes = report.bytes, outcome = %outcome, "File transferred");
        self.st.events.emit(
            Event::new(event)
                .user(&s.user_id)
                .connection(&s.connection_id)
                .session(session_id)
                .detail("direction", direction)
                .detail("path", &path)
                .detail("bytes", report.bytes)
                .detail("outcome", &outcome)
                .detail("bridge_id", &caller.id),
        );
        Ok(())
    }

    pub async fn end_session(
        &self,
        caller: &CallerBridge,
        session_id: &str,
        req: &EndRequest,
    ) -> Result<(), ControlError> {
        let s = self.own_session(caller, session_id).await?;
        let reason: String = req.reason.chars().take(500).collect();
        let now = now_unix();
        let recorded = self
            .st
            .db
            .end_session(session_id, req.code, &reason, now)
            .await
            .map_err(db_err)?;
        // The bridge finished the recording before it reported the end.
        self.st.db.complete_recording(session_id, now).await.map_err(db_err)?;
        let event = |event_type| {
            Event::new(event_type)
                .user(&s.user_id)
                .connection(&s.connection_id)
                .session(session_id)
                .detail("reason", &reason)
                .detail("bridge_id", &caller.id)
        };
        if recorded {
            self.st.events.emit(event(EventType::SessionEnded));
        }
        self.st.events.emit(
            event(EventType::SessionClosed)
                .detail("bytes_to_browser", req.bytes_to_browser)
                .detail("bytes_from_browser", req.bytes_from_browser)
                .detail("duration_secs", req.duration_ms / 1000)
                .detail("recorded_reason", if recorded { None } else { s.end_reason.as_deref() }),
        );
        Ok(())
    }

    /// A bridge's heartbeat (it syncs several times a second, with or without sessions): which of its
    /// sessions ended, and whether an administrator drains it. A bridge that drains by itself (a signal)
    /// or stops says so.
    pub async fn sync(&self, caller: &CallerBridge, req: &SyncRequest) -> Result<SyncResponse, ControlError> {
        let now = now_unix();
        let db = &self.st.db;
        // The heartbeat itself (the HTTPS route's extractor marks it too; the all-in-one bridge calls in
        // process and has only this).
        db.bridge_seen(&caller.id, now).await.map_err(db_err)?;
        if req.stopping {
            db.mark_bridge_stopped(&caller.id, now).await.map_err(db_err)?;
            tracing::info!(bridge_id = %caller.id, "Bridge stopped");
            self.st.events.emit(
                Event::new(EventType::BridgeDrained)
                    .detail("bridge_id", &caller.id)
                    .detail("stage", "stopped")
                    .detail("sessions_left", req.sessions.len()),
            );
        } else if req.draining && db.mark_bridge_draining(&caller.id, now).await.map_err(db_err)? {
            tracing::info!(bridge_id = %caller.id, "Bridge draining (signal)");
            self.st.events.emit(
                Event::new(EventType::BridgeDrained)
                    .detail("bridge_id", &caller.id)
                    .detail("stage", "draining")
                    .detail("by", "signal"),
            );
        }
        let drain = db
            .bridge_drain(&caller.id)
            .await
            .map_err(db_err)?
            .map(|deadline_unix| portico_proto::control::DrainOrder { deadline_unix });
        self.st.sweep_lost(now).await.map_err(db_err)?;
        let ended = self
            .st
            .db
            .ended_among(&req.sessions, &caller.id)
            .await
            .map_err(db_err)?;
        let reasons = ended
            .iter()
            .filter_map(|(id, reason, _)| Some((id.clone(), reason.clone()?)))
            .collect();
        let codes = ended
            .iter()
            .filter_map(|(id, _, code)| Some((id.clone(), (*code)?)))
            .collect();
        let mut viewer_modes = std::collections::BTreeMap::new();
        let mut viewers_revoked = std::collections::BTreeMap::new();
        for (id, st) in db.viewer_states(&req.viewers, &caller.id, now).await.map_err(db_err)? {
            match st {
                crate::db::ViewerState::Allowed(mode) => match portico_proto::token::ShareMode::parse(&mode) {
                    Some(m) => {
                        viewer_modes.insert(id, m);
                    }
                    None => {
                        viewers_revoked.insert(id, "bad share mode".into());
                    }
                },
                crate::db::ViewerState::Revoked(why) => {
                    viewers_revoked.insert(id, why);
                }
            }
        }
        Ok(SyncResponse {
            ended: ended.into_iter().map(|(id, ..)| id).collect(),
            reasons,
            codes,
            drain,
            viewer_modes,
            viewers_revoked,
        })
    }

    /// Where the session's workspace container is, once it is ready (`None`: still starting, ask again).
    pub async fn workspace(
        &self,
        caller: &CallerBridge,
        session_id: &str,
    ) -> Result<Option<WorkspaceEndpoint>, ControlError> {
        self.own_session(caller, session_id).await?;
        crate::workspaces::wait_ready(&self.st, session_id).await
    }

    /// Register a bridge: the node secret (compared in constant time, each attempt counted first, so
    /// guessing is throttled per address) buys a new identity with its own credential.
    pub async fn register_bridge(
        &self,
        node_secret: &str,
        req: &BridgeRegisterRequest,
        addr: &str,
    ) -> Result<BridgeRegistered, ControlError> {
        let now = now_unix();
        let attempt = uuid::Uuid::new_v4().to_string();
        let subjects = [(format!("bridge-register:{addr}"), BRIDGE_REGISTRATION_LIMIT)];
        if self
            .st
            .db
            .begin_login_attempt(&attempt, &subjects, now, crate::login::WINDOW_SECS)
            .await
            .map_err(db_err)?
            .is_some()
        {
            tracing::warn!(remote_addr = %addr, "Bridge registration throttled");
            self.st.events.emit(
                Event::new(EventType::BridgeRegistrationRefused)
                    .detail("bridge", &req.name)
                    .detail("remote_addr", addr)
                    .detail("reason", "too many attempts"),
            );
            return Err(ControlError::Refused("too many attempts, try again later".into()));
        }
        let expected = self.st.config.node_secret.expose();
        if expected.is_empty() || !bool::from(node_secret.as_bytes().ct_eq(expected.as_bytes())) {
            tracing::warn!(remote_addr = %addr, bridge = ?req.name, "Bridge registration refused: wrong node secret");
            self.st.events.emit(
                Event::new(EventType::BridgeRegistrationRefused)
                    .detail("bridge", &req.name)
                    .detail("remote_addr", addr)
                    .detail("reason", "wrong node secret"),
            );
            return Err(ControlError::Unauthorized);
        }
        self.st.db.end_login_attempt(&attempt).await.map_err(db_err)?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ControlError::Refused(
                "bridge name must be 1..=128 printable characters".into(),
            ));
        }
        if let Some(route) = &req.route
            && !portico_proto::control::valid_route(route)
        {
            return Err(ControlError::Refused(
                "bridge route must be 1..=63 of a-z, 0-9 and '-', not starting with '-'".into(),
            ));
        }
        let credential = crate::crypto::random_token();
        let row = crate::db::BridgeRow {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            remote_addr: addr.to_owned(),
            registered_at: now,
            last_seen_at: now,
            revoked_at: None,
            route: req.route.clone(),
            draining_at: None,
            drain_deadline_at: None,
            live_sessions: 0,
        };
        if !self
            .st
            .db
            .register_bridge(&row, &crate::crypto::sha256_hex(&credential))
            .await
            .map_err(db_err)?
        {
            tracing::warn!(bridge = ?name, remote_addr = %addr, "Bridge registration refused: revoked");
            self.st.events.emit(
                Event::new(EventType::BridgeRegistrationRefused)
                    .detail("bridge", name)
                    .detail("remote_addr", addr)
                    .detail("reason", "revoked by an administrator"),
            );
            return Err(ControlError::Refused(format!(
                "bridge {name:?} was revoked by an administrator"
            )));
        }
        tracing::info!(bridge = ?name, bridge_id = %row.id, remote_addr = %addr, "Bridge registered");
        self.st.events.emit(
            Event::new(EventType::BridgeRegistered)
                .detail("bridge", name)
                .detail("bridge_id", &row.id)
                .detail("remote_addr", addr),
        );
        Ok(BridgeRegistered {
            bridge_id: row.id,
            credential: Secret::new(credential),
        })
    }

    /// The bridge a credential belongs to (`Unauthorized` if unknown or revoked).
    pub async fn bridge(&self, credential: &str) -> Result<CallerBridge, ControlError> {
        self.st
            .db
            .bridge_by_credential(&crate::crypto::sha256_hex(credential), now_unix())
            .await
            .map_err(db_err)?
            .map(|id| CallerBridge { id })
            .ok_or(ControlError::Unauthorized)
    }
}

/// The calling bridge, authenticated by its own credential: enforced once, as an extractor, for every
/// bridge route.
impl axum::extract::FromRequestParts<AppState> for CallerBridge {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, st: &AppState) -> Result<Self, ApiError> {
        let credential =
            bearer(&parts.headers).ok_or_else(|| ApiError::Unauthorized("bridge credential required".into()))?;
        Internal::new(st.clone()).bridge(credential).await.map_err(|e| match e {
            ControlError::Unauthorized => ApiError::Unauthorized("invalid bridge credential".into()),
            other => control_err(other),
        })
    }
}

fn control_err(e: ControlError) -> ApiError {
    match e {
        ControlError::AlreadyUsed => ApiError::Conflict(e.to_string()),
        ControlError::NotFound => ApiError::NotFound("session"),
        ControlError::Ended => ApiError::Conflict(e.to_string()),
        ControlError::Unauthorized => ApiError::Unauthorized(e.to_string()),
        ControlError::Unavailable(m) => ApiError::Unavailable(anyhow::anyhow!(m)),
        ControlError::Refused(m) => ApiError::Forbidden(m),
        ControlError::RateLimited(retry_after) => ApiError::RateLimited { retry_after },
        other => ApiError::Internal(anyhow::anyhow!(other)),
    }
}

/// Refused registrations one client address may make per [`REFUSED_WINDOW_SECS`].
pub const REFUSED_REGISTRATIONS: i64 = 10;
pub const REFUSED_WINDOW_SECS: i64 = 300;
/// Most networks an agent may declare.
pub const MAX_NETWORKS: usize = 16;

/// Agent registration and heartbeats: agents join with the registration token and get their own credential.
impl Internal {
    /// Register an agent. The registration token lets it in; its persistent identity binds its name: an
    /// existing name is taken only by the identity that registered it. A refusal writes nothing an agent
    /// has: it is recorded apart (by name, for admins) and counted per client address, and beyond
    /// [`REFUSED_REGISTRATIONS`] in [`REFUSED_WINDOW_SECS`] the address is only told to wait.
    pub async fn register_agent(
        &self,
        req: &AgentRegisterRequest,
        addr: &str,
    ) -> Result<AgentRegistered, ControlError> {
        let now = now_unix();
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ControlError::Refused(
                "agent name must be 1..=128 printable characters".into(),
            ));
        }
        let identity = req.identity.expose();
        if !(16..=256).contains(&identity.len()) || identity.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ControlError::Refused(
                "agent identity must be 16..=256 printable characters".into(),
            ));
        }
        if req.networks.len() > MAX_NETWORKS {
            return Err(ControlError::Refused(format!(
                "an agent may declare at most {MAX_NETWORKS} networks"
            )));
        }
        let ok = self
            .st
            .config
            .agent_registration_token
            .as_ref()
            .is_some_and(|t| bool::from(t.expose().as_bytes().ct_eq(req.registration_token.expose().as_bytes())));
        if !ok {
            let reason = if self.st.config.agent_registration_token.is_none() {
                "agent registration is disabled on this webapp (no registration token configured)"
            } else {
                "wrong registration token"
            };
            return Err(self.refuse_registration(name, reason, addr, now).await);
        }
        let credential = crate::crypto::random_token();
        let c = &req.capacity;
        let networks = serde_json::to_string(&req.networks).unwrap_or_else(|_| "[]".into());
        let outcome = self
            .st
            .db
            .register_agent(&crate::db::AgentRegistration {
                name,
                identity_hash: &crate::crypto::sha256_hex(identity),
                credential_hash: &crate::crypto::sha256_hex(&credential),
                docker_version: &req.docker_version,
                cores: i64::from(c.cores),
                memory_mb: i64::try_from(c.memory_mb).unwrap_or(i64::MAX),
                running: i64::from(c.running),
                networks: &networks,
                addr,
                now,
            })
            .await
            .map_err(db_err)?;
        let id = match outcome {
            AgentRegisterOutcome::New(id) | AgentRegisterOutcome::Again(id) => id,
            AgentRegisterOutcome::NameTaken(id) => {
                let reason = format!(
                    "agent name {name} is registered to another agent identity (id {id}); an admin must remove \
                     that agent (DELETE /api/v1/agents/{id}) before another agent can take the name"
                );
                return Err(self.refuse_registration(name, &reason, addr, now).await);
            }
        };
        tracing::info!(agent = ?name, agent_id = %id, remote_addr = %addr, "Agent registered");
        self.st.events.emit(
            Event::new(EventType::AgentRegistered)
                .detail("agent", name)
                .detail("agent_id", &id)
                .detail("remote_addr", addr)
                .detail("docker_version", &req.docker_version)
                .detail("cores", c.cores)
                .detail("memory_mb", c.memory_mb),
        );
        Ok(AgentRegistered {
            agent_id: id,
            credential: Secret::new(credential),
            heartbeat_secs: self.st.agent_heartbeat_secs(),
        })
    }

    /// A refused registration: counted against the client address first (the k-th concurrent refusal sees
    /// at least k rows, so at most the limit get through), then recorded under the name for admins.
    async fn refuse_registration(&self, name: &str, reason: &str, addr: &str, now: i64) -> ControlError {
        let db = &self.st.db;
        let attempt = uuid::Uuid::new_v4().to_string();
        let subject = [(format!("agent-register:{addr}"), REFUSED_REGISTRATIONS)];
        match db
            .begin_login_attempt(&attempt, &subject, now, REFUSED_WINDOW_SECS)
            .await
        {
            Ok(Some(retry_after)) => {
                tracing::info!(agent = ?name, remote_addr = %addr, retry_after, "Agent registration refused and rate-limited");
                return ControlError::RateLimited(u64::try_from(retry_after).unwrap_or(1));
            }
            Ok(None) => {}
            Err(e) => return db_err(e),
        }
        tracing::warn!(agent = ?name, remote_addr = %addr, reason, "Agent registration refused");
        self.st.events.emit(
            Event::new(EventType::AgentRegistrationRefused)
                .detail("agent", name)
                .detail("remote_addr", addr)
                .detail("reason", reason),
        );
        match db.record_agent_refusal(name, reason, addr, now).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(agent = ?name, "Too many refused agent names recorded; this one is only logged")
            }
            Err(e) => return db_err(e),
        }
        ControlError::Refused(reason.into())
    }

    /// An agent's heartbeat with its containers; answers with the containers it should run.
    pub async fn agent_sync(&self, credential: &str, req: &AgentSync) -> Result<AgentSyncResponse, ControlError> {
        let agent = self
            .st
            .db
            .agent_by_credential(&crate::crypto::sha256_hex(credential))
            .await
            .map_err(db_err)?
            .ok_or(ControlError::Unauthorized)?;
        crate::workspaces::agent_sync(&self.st, &agent, req).await
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/internal/v1/agents/register",
            post(
                |State(st): State<AppState>,
                 crate::api::ClientAddr(peer): crate::api::ClientAddr,
                 ApiJson(b): ApiJson<AgentRegisterRequest>| async move {
                    let addr = peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string());
                    Internal::new(st)
                        .register_agent(&b, &addr)
                        .await
                        .map(Json)
                        .map_err(control_err)
                },
            ),
        )
        .route(
            "/internal/v1/agents/sync",
            post(
                |State(st): State<AppState>, h: HeaderMap, ApiJson(b): ApiJson<AgentSync>| async move {
                    let cred = bearer(&h).ok_or_else(|| ApiError::Unauthorized("agent credential required".into()))?;
                    Internal::new(st)
                        .agent_sync(cred, &b)
                        .await
                        .map(Json)
                        .map_err(control_err)
                },
            ),
        )
        .route(
            "/internal/v1/bridges/register",
            post(
                |State(st): State<AppState>,
                 h: HeaderMap,
                 axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
                 ApiJson(b): ApiJson<BridgeRegisterRequest>| async move {
                    let secret = bearer(&h).unwrap_or("");
                    Internal::new(st)
                        .register_bridge(secret, &b, &peer.ip().to_string())
                        .await
                        .map(Json)
                        .map_err(control_err)
                },
            ),
        )
        .route(
            "/internal/v1/sessions/{id}/workspace",
            get(
                |State(st): State<AppState>, caller: CallerBridge, Path(id): Path<String>| async move {
                    match Internal::new(st).workspace(&caller, &id).await.map_err(control_err)? {
                        Some(e) => Ok::<_, ApiError>(Json(e).into_response()),
                        None => Ok(StatusCode::NO_CONTENT.into_response()),
                    }
                },
            ),
        )
        .route(
            "/internal/v1/token-keys",
            get(|State(st): State<AppState>, _caller: CallerBridge| async move {
                Ok::<_, ApiError>(Json(Internal::new(st).token_keys()))
            }),
        )
        .route(
            "/internal/v1/sessions/{id}/claim",
            post(
                |State(st): State<AppState>,
                 caller: CallerBridge,
                 Path(id): Path<String>,
                 ApiJson(b): ApiJson<ClaimRequest>| async move {
                    Internal::new(st)
                        .claim(&caller, &id, &b)
                        .await
                        .map(Json)
                        .map_err(control_err)
                },
            ),
        )
        .route(
            "/internal/v1/sessions/{id}/viewers/claim",
            post(
                |State(st): State<AppState>,
                 caller: CallerBridge,
                 Path(id): Path<String>,
                 ApiJson(b): ApiJson<ViewerClaimRequest>| async move {
                    Internal::new(st)
                        .claim_viewer(&caller, &id, &b)
                        .await
                        .map(Json)
                        .map_err(control_err)
                },
            ),
        )
        .route(
            "/internal/v1/sessions/{id}/viewers/{viewer}/left",
            post(
                |State(st): State<AppState>,
                 caller: CallerBridge,
                 Path((id, viewer)): Path<(String, String)>,
                 ApiJson(b): ApiJson<portico_proto::control::ViewerLeft>| async move {
                    Internal::new(st)
                        .viewer_left(&caller, &id, &viewer, &b.reason)
                        .await
                        .map_err(control_err)?;
                    Ok::<_, ApiError>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .route(
            "/internal/v1/sessions/{id}/host-key",
            post(
                |State(st): State<AppState>,
                 caller: CallerBridge,
                 Path(id): Path<String>,
                 ApiJson(b): ApiJson<HostKeyReport>| async move {
                    Internal::new(st)
                        .record_host_key(&caller, &id, &b)
                        .await
                        .map_err(control_err)?;
                    Ok::<_, ApiError>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .route(
            "/internal/v1/sessions/{id}/transfer",
            post(
                |State(st): State<AppState>,
                 caller: CallerBridge,
                 Path(id): Path<String>,
                 ApiJson(b): ApiJson<TransferReport>| async move {
                    Internal::new(st)
                        .record_transfer(&caller, &id, &b)
                        .await
                        .map_err(control_err)?;
                    Ok::<_, ApiError>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .route(
            "/internal/v1/sessions/{id}/end",
            post(
                |State(st): State<AppState>,
                 caller: CallerBridge,
                 Path(id): Path<String>,
                 ApiJson(b): ApiJson<EndRequest>| async move {
                    Internal::new(st)
                        .end_session(&caller, &id, &b)
                        .await
                        .map_err(control_err)?;
                    Ok::<_, ApiError>(StatusCode::NO_CONTENT)
                },
            ),
        )
        .route(
            "/internal/v1/bridge/sync",
            post(
                |State(st): State<AppState>, caller: CallerBridge, ApiJson(b): ApiJson<SyncRequest>| async move {
                    Internal::new(st).sync(&caller, &b).await.map(Json).map_err(control_err)
                },
            ),
        )
}
