//! The internal API for bridges: token keys, one-time token claims with target credentials, host-key pinning,
//! session end and liveness sync. Callers authenticate with the node credential (`Bearer`).
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
use portico_proto::control::{
    AgentRegisterRequest, AgentRegistered, AgentSync, AgentSyncResponse, ClaimRequest, ControlError, EndRequest,
    HostKeyReport, SyncRequest, SyncResponse, Target, TokenKey, TokenKeys, WorkspaceEndpoint,
};
use portico_proto::token::key_id;
use subtle::ConstantTimeEq as _;

use crate::api::ApiJson;
use crate::db::state;
use crate::error::ApiError;
use crate::{AppState, now_unix};

#[derive(Clone)]
pub struct Internal {
    st: AppState,
}

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
    pub async fn claim(&self, session_id: &str, req: &ClaimRequest) -> Result<Target, ControlError> {
        let now = now_unix();
        let db = &self.st.db;
        if !db
            .claim_session(session_id, &req.jti, &req.bridge_id, now)
            .await
            .map_err(db_err)?
        {
            let s = db
                .session(session_id)
                .await
                .map_err(db_err)?
                .ok_or(ControlError::NotFound)?;
            tracing::warn!(%session_id, bridge_id = %req.bridge_id, state = %s.state, "Refused token claim");
            return Err(match s.state.as_str() {
                state::ENDED if s.claimed_at.is_none() => ControlError::Ended,
                _ => ControlError::AlreadyUsed,
            });
        }
        let s = db
            .session(session_id)
            .await
            .map_err(db_err)?
            .ok_or(ControlError::NotFound)?;
        let Some(c) = db.connection(&s.connection_id).await.map_err(db_err)? else {
            db.end_session(session_id, "connection deleted", now)
                .await
                .map_err(db_err)?;
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
        tracing::info!(%session_id, bridge_id = %req.bridge_id, connection_id = %c.id, "Token claimed");
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
            settings: serde_json::from_str(&c.settings)
                .map_err(|e| ControlError::Unavailable(format!("bad connection settings: {e}")))?,
            connection_id: c.id.clone(),
        })
    }

    /// Trust on first use: pin the host key of the session's connection if none is pinned yet.
    pub async fn record_host_key(&self, session_id: &str, report: &HostKeyReport) -> Result<(), ControlError> {
        let s = self
            .st
            .db
            .session(session_id)
            .await
            .map_err(db_err)?
            .ok_or(ControlError::NotFound)?;
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
        }
        Ok(())
    }

    pub async fn end_session(&self, session_id: &str, req: &EndRequest) -> Result<(), ControlError> {
        self.st
            .db
            .end_session(session_id, &req.reason, now_unix())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, ControlError> {
        self.st.sweep_lost(now_unix()).await.map_err(db_err)?;
        let ended = self.st.db.ended_among(&req.sessions).await.map_err(db_err)?;
        let reasons = ended
            .iter()
            .filter_map(|(id, reason)| Some((id.clone(), reason.clone()?)))
            .collect();
        Ok(SyncResponse {
            ended: ended.into_iter().map(|(id, _)| id).collect(),
            reasons,
        })
    }
}

fn check_node(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = st.config.node_secret.expose();
    if expected.is_empty() || !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(ApiError::Unauthorized("invalid node credential".into()));
    }
    Ok(())
}

fn control_err(e: ControlError) -> ApiError {
    match e {
        ControlError::AlreadyUsed => ApiError::Conflict(e.to_string()),
        ControlError::NotFound => ApiError::NotFound("session"),
        ControlError::Ended => ApiError::Conflict(e.to_string()),
        ControlError::Unauthorized => ApiError::Unauthorized(e.to_string()),
        ControlError::Unavailable(m) => ApiError::Unavailable(anyhow::anyhow!(m)),
        ControlError::Refused(m) => ApiError::Forbidden(m),
        other => ApiError::Internal(anyhow::anyhow!(other)),
    }
}

/// Agent registration and heartbeats: agents join with the registration token and get their own credential.
impl Internal {
    /// Register an agent (a refused one is recorded by name, so it shows as failed in the admin API).
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
            tracing::warn!(agent = %name, remote_addr = %addr, reason, "Agent registration refused");
            self.st
                .db
                .agent_registration_failed(name, reason, addr, now)
                .await
                .map_err(db_err)?;
            return Err(ControlError::Refused(reason.into()));
        }
        let credential = crate::crypto::random_token();
        let c = &req.capacity;
        let id = self
            .st
            .db
            .register_agent(
                name,
                &crate::crypto::sha256_hex(&credential),
                &req.docker_version,
                i64::from(c.cores),
                i64::try_from(c.memory_mb).unwrap_or(i64::MAX),
                i64::from(c.running),
                addr,
                now,
            )
            .await
            .map_err(db_err)?;
        tracing::info!(agent = %name, agent_id = %id, remote_addr = %addr, "Agent registered");
        Ok(AgentRegistered {
            agent_id: id,
            credential: Secret::new(credential),
            heartbeat_secs: self.st.agent_heartbeat_secs(),
        })
    }

    /// Where the session's workspace container is, once it is ready (`None`: still starting, ask again).
    pub async fn workspace(&self, session_id: &str) -> Result<Option<WorkspaceEndpoint>, ControlError> {
        crate::workspaces::wait_ready(&self.st, session_id).await
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
                 axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
                 ApiJson(b): ApiJson<AgentRegisterRequest>| async move {
                    Internal::new(st)
                        .register_agent(&b, &peer.ip().to_string())
                        .await
                        .map(Json)
                        .map_err(control_err)
                },
            ),
        )
        .route(
            "/internal/v1/agents/sync",
            post(|State(st): State<AppState>, h: HeaderMap, ApiJson(b): ApiJson<AgentSync>| async move {
                let cred = bearer(&h).ok_or_else(|| ApiError::Unauthorized("agent credential required".into()))?;
                Internal::new(st).agent_sync(cred, &b).await.map(Json).map_err(control_err)
            }),
        )
        .route(
            "/internal/v1/sessions/{id}/workspace",
            get(|State(st): State<AppState>, h: HeaderMap, Path(id): Path<String>| async move {
                check_node(&st, &h)?;
                match Internal::new(st).workspace(&id).await.map_err(control_err)? {
                    Some(e) => Ok::<_, ApiError>(Json(e).into_response()),
                    None => Ok(StatusCode::NO_CONTENT.into_response()),
                }
            }),
        )
        .route(
            "/internal/v1/token-keys",
            get(|State(st): State<AppState>, h: HeaderMap| async move {
                check_node(&st, &h)?;
                Ok::<_, ApiError>(Json(Internal::new(st).token_keys()))
            }),
        )
        .route(
            "/internal/v1/sessions/{id}/claim",
            post(|State(st): State<AppState>, h: HeaderMap, Path(id): Path<String>, ApiJson(b): ApiJson<ClaimRequest>| async move {
                check_node(&st, &h)?;
                Internal::new(st).claim(&id, &b).await.map(Json).map_err(control_err)
            }),
        )
        .route(
            "/internal/v1/sessions/{id}/host-key",
            post(|State(st): State<AppState>, h: HeaderMap, Path(id): Path<String>, ApiJson(b): ApiJson<HostKeyReport>| async move {
                check_node(&st, &h)?;
                Internal::new(st).record_host_key(&id, &b).await.map_err(control_err)?;
                Ok::<_, ApiError>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/internal/v1/sessions/{id}/end",
            post(|State(st): State<AppState>, h: HeaderMap, Path(id): Path<String>, ApiJson(b): ApiJson<EndRequest>| async move {
                check_node(&st, &h)?;
                Internal::new(st).end_session(&id, &b).await.map_err(control_err)?;
                Ok::<_, ApiError>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/internal/v1/bridge/sync",
            post(|State(st): State<AppState>, h: HeaderMap, ApiJson(b): ApiJson<SyncRequest>| async move {
                check_node(&st, &h)?;
                Internal::new(st).sync(&b).await.map(Json).map_err(control_err)
            }),
        )
}
