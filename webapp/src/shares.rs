//! Live session sharing over the REST API (docs/security.md, "Sharing"): the owner of a live session (or
//! an administrator) shares it with a user, a group, or as a link, view-only or in control, until an
//! expiry; switches a share's mode; revokes one share or all. Someone a share names (anyone logged in, for
//! a link) joins: the answer is a viewer token for the bridge that holds the session, claimed once like a
//! session's. An administrator may join without an invitation where the connection's policy allows it
//! (shadowing), and its owner is told. The connection's policy (`sharing`, `shadowing`) bounds every mode.
//! Every step is an event. The bridge enforces the mode (view-only input is dropped there) and disconnects
//! a revoked viewer at its next heartbeat.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use portico_proto::control::{ConnectionSettings, ShareLimit};
use portico_proto::token::{MAX_LIFETIME_SECS, SessionClaims, ShareMode, ViewerClaim};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::api::{ApiJson, bridge_protocol};
use crate::auth::CurrentUser;
use crate::crypto;
use crate::db::{SessionRow, ShareRow, SharedSession, ViewerRow, share_closed, share_kind, state};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::now_unix;

/// Most viewers of one session at once (attached, or let in with a token not yet used).
pub const MAX_VIEWERS: i64 = 16;
/// How long a share lasts unless it says otherwise, and at most.
pub const DEFAULT_SHARE_SECS: i64 = 3600;
pub const MAX_SHARE_SECS: i64 = 7 * 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/sessions/{id}/shares",
            get(list).post(create).delete(revoke_all),
        )
        .route(
            "/api/v1/sessions/{id}/shares/{share_id}",
            patch(change).delete(revoke_one),
        )
        .route("/api/v1/shared", get(shared_with_me))
        .route("/api/v1/join", post(join))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareBody {
    pub mode: ShareMode,
    /// Share with this user (by id, or by user name)…
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// …or with the members of this group…
    #[serde(default)]
    pub group_id: Option<String>,
    /// …or as a link (anyone logged in who has it).
    #[serde(default)]
    pub link: bool,
    /// Seconds until the share expires (default one hour, at most a week; never past the session).
    #[serde(default)]
    pub expires_in_secs: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct ShareView {
    #[serde(flatten)]
    pub share: ShareRow,
    /// Only in the answer that created a link share: the link to hand over (its secret is not stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_url: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SharesView {
    pub shares: Vec<ShareRow>,
    pub viewers: Vec<ViewerRow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeBody {
    pub mode: ShareMode,
}

/// How a viewer joins: by a share that names them (or their group), by a link's secret, or (an
/// administrator, where the policy allows) by the session itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    #[serde(default)]
    pub share_id: Option<String>,
    #[serde(default)]
    pub link: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Shadowing: the mode asked for (default view-only).
    #[serde(default)]
    pub mode: Option<ShareMode>,
}

#[derive(Debug, Serialize)]
pub struct JoinResponse {
    pub session_id: String,
    pub viewer_id: String,
    pub mode: ShareMode,
    pub protocol: String,
    pub owner: String,
    /// The viewer token (valid 60 s, used once) and the WebSocket of the bridge that holds the session.
    pub token: String,
    pub ws_url: String,
    pub expires_at: i64,
}

/// A live session the caller may share: their own, or any for an administrator (others' are "not found").
async fn own_live_session(st: &AppState, me: &CurrentUser, id: &str) -> Result<SessionRow, ApiError> {
    let s = st
        .db
        .session(id)
        .await?
        .filter(|s| s.user_id == me.user.id || me.sees_all())
        .ok_or(ApiError::NotFound("session"))?;
    if s.user_id != me.user.id && !me.is_admin() {
        return Err(ApiError::Forbidden(
            "only the session's owner or an administrator may share it".into(),
        ));
    }
    if s.state == state::ENDED {
        return Err(ApiError::Conflict("the session has ended".into()));
    }
    Ok(s)
}

async fn settings_of(st: &AppState, s: &SessionRow) -> Result<ConnectionSettings, ApiError> {
    let c = st
        .db
        .connection(&s.connection_id)
        .await?
        .ok_or(ApiError::NotFound("connection"))?;
    serde_json::from_str(&c.settings).map_err(|e| ApiError::Internal(e.into()))
}

fn refuse_mode(limit: ShareLimit, mode: ShareMode, what: &str) -> Result<(), ApiError> {
    if limit.allows(mode) {
        return Ok(());
    }
    Err(ApiError::Forbidden(match limit {
        ShareLimit::Off => format!("this connection's policy does not allow {what}"),
        _ => format!("this connection's policy allows {what} view-only"),
    }))
}

async fn list(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<SharesView>, ApiError> {
    let s = st
        .db
        .session(&id)
        .await?
        .filter(|s| s.user_id == me.user.id || me.sees_all())
        .ok_or(ApiError::NotFound("session"))?;
    Ok(Json(SharesView {
        shares: st.db.shares_of(&s.id).await?,
        viewers: st.db.live_viewers(&s.id, now_unix()).await?,
    }))
}

async fn create(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ShareBody>,
) -> Result<(StatusCode, Json<ShareView>), ApiError> {
    let s = own_live_session(&st, &me, &id).await?;
    refuse_mode(settings_of(&st, &s).await?.sharing, b.mode, "sharing")?;
    let now = now_unix();
    let secs = b.expires_in_secs.unwrap_or(DEFAULT_SHARE_SECS);
    if !(60..=MAX_SHARE_SECS).contains(&secs) {
        return Err(ApiError::bad_request(format!(
            "expires_in_secs must be between 60 and {MAX_SHARE_SECS}"
        )));
    }
    let named = match (&b.user_id, &b.username) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("name a user by id or by name, not both")),
        (Some(u), None) => Some(st.db.user(u).await?.ok_or(ApiError::NotFound("user"))?),
        (None, Some(name)) => Some(
            st.db
                .user_with_hash(name)
                .await?
                .map(|(u, _)| u)
                .ok_or(ApiError::NotFound("user"))?,
        ),
        (None, None) => None,
    };
    let (kind, subject, secret) = match (named, &b.group_id, b.link) {
        (Some(user), None, false) => {
            if user.id == s.user_id {
                return Err(ApiError::bad_request("the session's owner needs no share"));
            }
            (share_kind::USER, Some(user.id), None)
        }
        (None, Some(g), false) => {
            st.db.group(g).await?.ok_or(ApiError::NotFound("group"))?;
            (share_kind::GROUP, Some(g.clone()), None)
        }
        (None, None, true) => (share_kind::LINK, None, Some(crypto::random_token())),
        _ => {
            return Err(ApiError::bad_request(
                "name exactly one of user_id (or username), group_id or link: true",
            ));
        }
    };
    let share = ShareRow {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: s.id.clone(),
        created_by: me.user.id.clone(),
        kind: kind.into(),
        subject_id: subject,
        link_hash: secret.as_deref().map(crypto::sha256_hex),
        mode: b.mode.as_str().into(),
        created_at: now,
        expires_at: now + secs,
        revoked_at: None,
    };
    st.db.insert_share(&share).await?;
    st.events.emit(
        Event::new(EventType::ShareCreated)
            .by(&me)
            .user(&s.user_id)
            .connection(&s.connection_id)
            .session(&s.id)
            .detail("share_id", &share.id)
            .detail("kind", &share.kind)
            .detail("mode", &share.mode)
            .detail("subject", &share.subject_id)
            .detail("expires_at", share.expires_at),
    );
    tracing::info!(session_id = %s.id, share_id = %share.id, kind, mode = %share.mode, "Session shared");
    let link_url = secret.map(|secret| format!("{}/#join={secret}", st.config.public_url.trim_end_matches('/')));
    Ok((StatusCode::CREATED, Json(ShareView { share, link_url })))
}

async fn change(
    State(st): State<AppState>,
    me: CurrentUser,
    Path((id, share_id)): Path<(String, String)>,
    ApiJson(b): ApiJson<ModeBody>,
) -> Result<Json<ShareRow>, ApiError> {
    let s = own_live_session(&st, &me, &id).await?;
    let before = st
        .db
        .share(&share_id)
        .await?
        .filter(|sh| sh.session_id == s.id)
        .ok_or(ApiError::NotFound("share"))?;
    let limit = match before.kind.as_str() {
        share_kind::SHADOW => settings_of(&st, &s).await?.shadowing,
        _ => settings_of(&st, &s).await?.sharing,
    };
    refuse_mode(limit, b.mode, "sharing")?;
    if !st.db.set_share_mode(&s.id, &share_id, b.mode.as_str()).await? {
        return Err(ApiError::Conflict("the share was revoked".into()));
    }
    st.events.emit(
        Event::new(EventType::ShareChanged)
            .by(&me)
            .user(&s.user_id)
            .connection(&s.connection_id)
            .session(&s.id)
            .detail("share_id", &share_id)
            .detail("before", &before.mode)
            .detail("after", b.mode.as_str()),
    );
    let after = st.db.share(&share_id).await?.ok_or(ApiError::NotFound("share"))?;
    Ok(Json(after))
}

async fn revoke(st: &AppState, me: &CurrentUser, id: &str, share_id: Option<&str>) -> Result<StatusCode, ApiError> {
    let s = own_live_session(st, me, id).await?;
    if let Some(share_id) = share_id {
        st.db
            .share(share_id)
            .await?
            .filter(|sh| sh.session_id == s.id)
            .ok_or(ApiError::NotFound("share"))?;
    }
    let n = st.db.revoke_shares(&s.id, share_id, now_unix()).await?;
    st.events.emit(
        Event::new(EventType::ShareRevoked)
            .by(me)
            .user(&s.user_id)
            .connection(&s.connection_id)
            .session(&s.id)
            .detail("share_id", share_id)
            .detail("count", n),
    );
    tracing::info!(session_id = %s.id, share_id = ?share_id, count = n, "Shares revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_one(
    State(st): State<AppState>,
    me: CurrentUser,
    Path((id, share_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    revoke(&st, &me, &id, Some(&share_id)).await
}

async fn revoke_all(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    revoke(&st, &me, &id, None).await
}

async fn shared_with_me(State(st): State<AppState>, me: CurrentUser) -> Result<Json<Vec<SharedSession>>, ApiError> {
    st.sweep_lost(now_unix()).await?;
    Ok(Json(st.db.shared_with(&me.user.id, now_unix()).await?))
}

/// Not found, alike for a share that does not exist and one that does not name the caller.
const NO_SHARE: ApiError = ApiError::NotFound("share");

async fn join(
    State(st): State<AppState>,
    me: CurrentUser,
    ApiJson(b): ApiJson<JoinBody>,
) -> Result<(StatusCode, Json<JoinResponse>), ApiError> {
    let now = now_unix();
    st.sweep_lost(now).await?;
    let share = match (&b.share_id, &b.link, &b.session_id) {
        (Some(id), None, None) => {
            let sh = st.db.share(id).await?.ok_or(NO_SHARE)?;
            let named = match sh.kind.as_str() {
                share_kind::USER => sh.subject_id.as_deref() == Some(me.user.id.as_str()),
                share_kind::GROUP => match &sh.subject_id {
                    Some(g) => st.db.is_member(g, &me.user.id).await?,
                    None => false,
                },
                _ => false,
            };
            if !named {
                return Err(NO_SHARE);
            }
            sh
        }
        (None, Some(link), None) => {
            if link.is_empty() || link.len() > 128 {
                return Err(NO_SHARE);
            }
            st.db.share_by_link(&crypto::sha256_hex(link)).await?.ok_or(NO_SHARE)?
        }
        (None, None, Some(session_id)) => shadow(&st, &me, session_id, b.mode.unwrap_or(ShareMode::View), now).await?,
        _ => {
            return Err(ApiError::bad_request(
                "name exactly one of share_id, link or session_id",
            ));
        }
    };
    let s = st.db.session(&share.session_id).await?.ok_or(NO_SHARE)?;
    if s.user_id == me.user.id {
        return Err(ApiError::bad_request("this is your own session"));
    }
    if let Some(why) = share_closed(&share, &s.state, now) {
        return Err(ApiError::Conflict(why.into()));
    }
    if s.claimed_at.is_none() || s.bridge_id.is_none() {
        return Err(ApiError::Conflict("the session is not connected yet".into()));
    }
    let settings = settings_of(&st, &s).await?;
    let mode = ShareMode::parse(&share.mode).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("bad share mode")))?;
    let limit = if share.kind == share_kind::SHADOW {
        settings.shadowing
    } else {
        settings.sharing
    };
    refuse_mode(limit, mode, "sharing")?;
    let c = st
        .db
        .connection(&s.connection_id)
        .await?
        .ok_or(ApiError::NotFound("connection"))?;
    let protocol =
        bridge_protocol(&c.protocol).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("bad protocol in db")))?;
    let owner = st.db.user(&s.user_id).await?.map(|u| u.username).unwrap_or_default();
    let viewer_id = uuid::Uuid::new_v4().to_string();
    let jti = crypto::random_token();
    let exp = now + MAX_LIFETIME_SECS;
    let viewer = ViewerRow {
        id: viewer_id.clone(),
        share_id: share.id.clone(),
        session_id: s.id.clone(),
        user_id: me.user.id.clone(),
        username: me.user.username.clone(),
        token_jti: jti.clone(),
        token_expires_at: exp,
        created_at: now,
        claimed_at: None,
        bridge_id: None,
        left_at: None,
    };
    if !st.db.insert_viewer(&viewer, MAX_VIEWERS, now).await? {
        return Err(ApiError::Conflict(format!(
            "the session already has {MAX_VIEWERS} viewers"
        )));
    }
    let cfg = &st.config;
    let claims = SessionClaims {
        iss: "portico-webapp".into(),
        aud: cfg.zone.clone(),
        sub: me.user.id.clone(),
        sid: s.id.clone(),
        jti,
        iat: now,
        nbf: now,
        exp,
        proto: protocol,
        dst_host: c.host.clone(),
        dst_port: u16::try_from(c.port).unwrap_or(0),
        idle_timeout: 0,
        max_duration: 0,
        grace: 0,
        viewer: Some(ViewerClaim {
            id: viewer_id.clone(),
            mode,
            name: me.user.username.clone(),
            shadow: share.kind == share_kind::SHADOW,
        }),
    };
    let token = st.signer.sign(&claims);
    // The bridge that holds the session: by its route when it has one (the load balancer sends that path
    // to it), else the session parameter the load balancer hashes on, as for the owner's reattaches.
    let route = match &s.bridge_id {
        Some(b) => st.db.bridge_route(b).await?,
        None => None,
    };
    let ws_url = match route {
        Some(route) => format!("{}/bridge/v1/at/{route}/ws?session={}", cfg.bridge_ws_base(), s.id),
        None => format!("{}/bridge/v1/ws?session={}", cfg.bridge_ws_base(), s.id),
    };
    st.events.emit(
        Event::new(EventType::ViewerJoined)
            .by(&me)
            .user(&s.user_id)
            .connection(&s.connection_id)
            .session(&s.id)
            .detail("share_id", &share.id)
            .detail("viewer_id", &viewer_id)
            .detail("mode", mode.as_str()),
    );
    tracing::info!(session_id = %s.id, %viewer_id, mode = mode.as_str(), "Viewer let in");
    Ok((
        StatusCode::CREATED,
        Json(JoinResponse {
            session_id: s.id,
            viewer_id,
            mode,
            protocol: protocol.as_str().into(),
            owner,
            token,
            ws_url,
            expires_at: exp,
        }),
    ))
}

/// An administrator joins a session without an invitation, as the connection's policy allows: a share of
/// kind `shadow` naming them (so the owner can see and revoke it), and an event.
async fn shadow(
    st: &AppState,
    me: &CurrentUser,
    session_id: &str,
    mode: ShareMode,
    now: i64,
) -> Result<ShareRow, ApiError> {
    if !me.is_admin() {
        return Err(NO_SHARE);
    }
    let s = st.db.session(session_id).await?.ok_or(ApiError::NotFound("session"))?;
    if s.state == state::ENDED {
        return Err(ApiError::Conflict("the session has ended".into()));
    }
    refuse_mode(settings_of(st, &s).await?.shadowing, mode, "shadowing")?;
    let share = ShareRow {
        id: uuid::Uuid::new_v4().to_string(),
        session_id: s.id.clone(),
        created_by: me.user.id.clone(),
        kind: share_kind::SHADOW.into(),
        subject_id: Some(me.user.id.clone()),
        link_hash: None,
        mode: mode.as_str().into(),
        created_at: now,
        expires_at: now + DEFAULT_SHARE_SECS,
        revoked_at: None,
    };
    st.db.insert_share(&share).await?;
    st.events.emit(
        Event::new(EventType::SessionShadowed)
            .by(me)
            .user(&s.user_id)
            .connection(&s.connection_id)
            .session(&s.id)
            .detail("share_id", &share.id)
            .detail("mode", mode.as_str()),
    );
    Ok(share)
}
