//! The public REST API under `/api/v1` (contract in `docs/` and `/api/openapi.json`).

use std::net::SocketAddr;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use portico_proto::codes::CloseCode;
use portico_proto::control::ConnectionSettings;
use portico_proto::token::{MAX_LIFETIME_SECS, Protocol, SessionClaims};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::{API_KEY_PREFIX, Admin, COOKIE_NAME, CurrentUser, KeyScope, cookie_value};
use crate::db::{Connection, SessionRow, User, state};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::{AppState, crypto, login, now_unix};

/// JSON body extractor whose rejections are `{"error": ...}` like every other API error.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid request body: {}",
                e.body_text().to_lowercase()
            ))),
        }
    }
}

/// The client's address when the server recorded it (`ConnectInfo`), for per-address rate limiting.
pub struct ClientAddr(pub Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
        ))
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/__healthcheck", get(healthcheck))
        .route("/api/__livez", get(livez))
        .route("/api/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/workspace-images", get(workspace_images))
        .route("/api/v1/agents/{id}", delete(delete_agent))
        .route("/api/v1/agents/{id}/drain", post(drain_agent).delete(undrain_agent))
        .route("/api/v1/bridges", get(list_bridges))
        .route("/api/v1/bridges/{id}", delete(revoke_bridge))
        .route("/api/v1/bridges/{id}/drain", post(drain_bridge))
        .route("/api/v1/api-keys", get(list_api_keys).post(create_api_key))
        .route("/api/v1/api-keys/{id}", delete(delete_api_key))
        .route("/api/v1/connections", get(list_connections).post(create_connection))
        .route(
            "/api/v1/connections/{id}",
            get(get_connection).put(update_connection).delete(delete_connection),
        )
        .route("/api/v1/sessions", get(list_sessions).post(create_session))
        .route("/api/v1/sessions/{id}", get(get_session).delete(end_session))
        .merge(crate::access::routes())
        .merge(crate::mfa::routes())
        .merge(crate::identity::routes())
        .merge(crate::events::routes())
}

/// Readiness for load balancers: 200 after a real database round trip; 503 at once while draining, and
/// within [`HEALTH_BUDGET`] when the database is unreachable or slow (its own bound, not the pool's
/// acquire timeout, so a checker with a 1 s timeout always gets an answer).
async fn healthcheck(State(st): State<AppState>) -> Response {
    let unavailable = |error: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ok": false, "error": error })),
        )
            .into_response()
    };
    if st.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return unavailable("shutting down");
    }
    let started = std::time::Instant::now();
    let pinged = tokio::time::timeout(HEALTH_BUDGET, st.db.ping()).await;
    let result = match &pinged {
        Ok(Ok(())) => "ok",
        Ok(Err(_)) => "error",
        Err(_) => "timeout",
    };
    st.metrics
        .health_db_seconds
        .with(&[result])
        .observe_duration(started.elapsed());
    match pinged {
        Ok(Ok(())) => Json(json!({ "ok": true })).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Healthcheck: database unavailable");
            unavailable("database unavailable")
        }
        Err(_) => {
            tracing::warn!(budget = ?HEALTH_BUDGET, "Healthcheck: database did not answer in time");
            unavailable("database timeout")
        }
    }
}

/// The time the health check gives the database.
const HEALTH_BUDGET: std::time::Duration = std::time::Duration::from_millis(800);

/// Liveness for process supervisors: the process serves requests (no database involved).
async fn livez() -> Json<Value> {
    Json(json!({ "ok": true }))
}

// ---- auth

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct MeResponse {
    user: User,
    csrf_token: Option<String>,
    /// The login may only enrol a second factor until it confirms one (its role requires it).
    mfa_enrolment_required: bool,
}

async fn login(
    State(st): State<AppState>,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let client = peer.map(|a| a.ip());
    let user = login::check_password(&st, &body.username, body.password, client, &headers).await?;
    let method = crate::events::password_method(&user);
    if !crate::identity::local_login_allowed(&st, &user).await? {
        tracing::info!(user_id = %user.id, client = ?client, "Local login refused: local accounts are for admins only");
        st.events.emit(
            Event::new(EventType::LoginRefused)
                .client(client)
                .user(&user.id)
                .detail("username", &user.username)
                .detail("method", method)
                .detail("reason", "local accounts are for admins only"),
        );
        return Err(ApiError::Forbidden(
            "local accounts are disabled: sign in with your organisation's account".into(),
        ));
    }
    if user.mfa_enabled {
        // No cookie yet: the second step (`/auth/login/mfa`) gives it for a right code.
        tracing::info!(user_id = %user.id, client = ?client, "Password right; second factor asked");
        st.events.emit(
            Event::new(EventType::MfaRequired)
                .client(client)
                .user(&user.id)
                .detail("username", &user.username)
                .detail("method", method),
        );
        return Ok(Json(crate::mfa::challenge(&st, &user.id).await?).into_response());
    }
    let pending = crate::mfa::required_roles(&st).await?.contains(&user.role);
    st.events
        .emit(Event::login(EventType::LoginSucceeded, &user, client, method).detail("mfa_enrolment_required", pending));
    start_login(&st, user, pending).await
}

/// A login session for `user` (cookie, CSRF token, device cookie); `mfa_pending`: it may only enrol a
/// second factor (its role requires one and it has none).
pub async fn start_login(st: &AppState, user: User, mfa_pending: bool) -> Result<Response, ApiError> {
    let (cookies, csrf) = login_cookies(st, &user, mfa_pending).await?;
    let mut res = Json(MeResponse {
        user,
        csrf_token: Some(csrf),
        mfa_enrolment_required: mfa_pending,
    })
    .into_response();
    for c in cookies {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(res)
}

/// Record a login session for `user`; returns its `Set-Cookie` headers (the session cookie and the device
/// cookie) and its CSRF token.
pub async fn login_cookies(
    st: &AppState,
    user: &User,
    mfa_pending: bool,
) -> Result<(Vec<HeaderValue>, String), ApiError> {
    let now = now_unix();
    let cookie = crypto::random_token();
    let csrf = crypto::random_token();
    let ttl = st.config.login_ttl.as_secs() as i64;
    st.db
        .insert_login_session(
            &crypto::sha256_hex(&cookie),
            &user.id,
            &csrf,
            now,
            now + ttl,
            mfa_pending,
        )
        .await?;
    tracing::info!(user_id = %user.id, username = ?user.username, mfa_pending, "Login");
    let secure = if st.config.secure_cookies { "; Secure" } else { "" };
    let set_cookie = format!("{COOKIE_NAME}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={ttl}{secure}");
    // The device cookie gives this browser its own login throttle for this user (see `login`).
    let device = st.keys.device_cookie(&user.id)?;
    let set_device = format!(
        "{}={device}; Path=/api/v1/auth; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        login::DEVICE_COOKIE,
        login::DEVICE_COOKIE_MAX_AGE
    );
    let cookies = [set_cookie, set_device]
        .into_iter()
        .map(|c| HeaderValue::from_str(&c).map_err(|e| ApiError::Internal(e.into())))
        .collect::<Result<_, _>>()?;
    Ok((cookies, csrf))
}

async fn logout(State(st): State<AppState>, me: CurrentUser, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(cookie) = cookie_value(&headers, COOKIE_NAME) {
        st.db.delete_login_session(&crypto::sha256_hex(cookie)).await?;
    }
    // Logging out ends the user's workspaces (their containers are destroyed), as Kasm does; remote
    // SSH/VNC/RDP sessions stay until closed, as they may be open elsewhere (embedded, API).
    let now = now_unix();
    for sid in st.db.live_workspace_sessions(&me.user.id).await? {
        if st
            .db
            .end_session(&sid, CloseCode::Ended, "ended: the user logged out", now)
            .await?
        {
            st.events.emit(
                Event::new(EventType::SessionEnded)
                    .by(&me)
                    .user(&me.user.id)
                    .session(&sid)
                    .detail("reason", "ended: the user logged out"),
            );
        }
        tracing::info!(session_id = %sid, user_id = %me.user.id, "Workspace ended by logout");
    }
    tracing::info!(user_id = %me.user.id, "Logout");
    st.events.emit(Event::new(EventType::Logout).by(&me).user(&me.user.id));
    let mut res = Json(json!({ "ok": true })).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("portico_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(res)
}

async fn me(me: CurrentUser) -> Json<MeResponse> {
    Json(MeResponse {
        user: me.user,
        csrf_token: me.csrf_token,
        mfa_enrolment_required: me.mfa_pending,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    current_password: String,
    new_password: String,
}

/// Change the caller's password: the current one is checked under the login throttle, and every other
/// login session of the user ends (the caller's own stays).
async fn change_password(
    State(st): State<AppState>,
    me: CurrentUser,
    ClientAddr(peer): ClientAddr,
    headers: HeaderMap,
    ApiJson(b): ApiJson<PasswordBody>,
) -> Result<Json<Value>, ApiError> {
    if me.user.provider_id.is_some() {
        return Err(ApiError::Forbidden(
            "your password is managed by your identity provider".into(),
        ));
    }
    validate_password(&b.new_password)?;
    let client = peer.map(|a| a.ip());
    match login::check_password(&st, &me.user.username, b.current_password, client, &headers).await {
        Err(ApiError::Unauthorized(_)) => return Err(ApiError::Forbidden("current password is wrong".into())),
        other => other?,
    };
    let hash = st.passwords.hash(b.new_password).await?;
    st.db.set_password(&me.user.id, &hash).await?;
    let keep = cookie_value(&headers, COOKIE_NAME).map(crypto::sha256_hex);
    let ended = st.db.delete_other_login_sessions(&me.user.id, keep.as_deref()).await?;
    tracing::info!(user_id = %me.user.id, other_logins_ended = ended, "Password changed");
    st.events.emit(
        Event::new(EventType::PasswordChanged)
            .by(&me)
            .user(&me.user.id)
            .detail("other_logins_ended", ended),
    );
    Ok(Json(json!({ "ok": true, "other_logins_ended": ended })))
}

pub(crate) fn validate_password(p: &str) -> Result<(), ApiError> {
    if p.chars().count() < 8 || p.len() > 1024 {
        return Err(ApiError::bad_request("password must have 8 to 1024 characters"));
    }
    Ok(())
}

// ---- users

/// Docker agents with their state: `healthy` or `down` (three heartbeats missed), their declared networks,
/// and the latest refused registration under their name (`refused`: a wrong token, or another identity
/// trying to take the name). Names that only ever had refused registrations follow as `failed` entries
/// (`id` null, `last_error` says why). Refusals never change an agent.
async fn list_agents(State(st): State<AppState>, _: Admin) -> Result<Json<Vec<Value>>, ApiError> {
    let now = now_unix();
    let alive_since = st.agents_alive_since(now);
    let agents = st.db.list_agents().await?;
    let mut refusals = st.db.agent_refusals().await?;
    let spares = st.db.live_spares().await?;
    let mut out: Vec<Value> = agents
        .into_iter()
        .map(|a| {
            let down = a.last_heartbeat_at.is_none_or(|t| t < alive_since);
            let state = match (down, a.draining_at.is_some()) {
                (true, _) => "down",
                (false, true) => "draining",
                (false, false) => "healthy",
            };
            let refused = refusals
                .iter()
                .position(|r| r.name == a.name)
                .map(|i| refusals.swap_remove(i));
            let mut v = serde_json::to_value(&a).unwrap_or(Value::Null);
            v["state"] = json!(state);
            v["networks"] = serde_json::from_str(&a.networks).unwrap_or_else(|_| json!([]));
            v["refused"] = serde_json::to_value(refused).unwrap_or(Value::Null);
            let mine = spares.iter().filter(|c| c.agent_id == a.id);
            v["spares"] = json!({
                "ready": mine.clone().filter(|c| c.state == crate::db::container_state::READY).count(),
                "starting": mine.filter(|c| c.state == crate::db::container_state::STARTING).count(),
            });
            v
        })
        .collect();
    refusals.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(refusals.into_iter().map(|r| {
        json!({
            "id": null, "name": r.name, "state": "failed", "last_error": r.reason, "remote_addr": r.remote_addr,
            "docker_version": "", "cores": 0, "memory_mb": 0, "running": 0, "created_at": r.first_at,
            "registered_at": null, "last_heartbeat_at": null, "networks": [],
            "refused": r,
        })
    }));
    Ok(Json(out))
}

/// The image catalog: every image a healthy agent's engine holds, with the agents that hold it (what the
/// connection editor offers; a launch is placed only on an agent holding its image).
async fn workspace_images(State(st): State<AppState>, _: Admin) -> Result<Json<Vec<Value>>, ApiError> {
    let alive_since = st.agents_alive_since(now_unix());
    let mut by_name: std::collections::BTreeMap<String, (portico_proto::control::AgentImage, Vec<String>)> =
        std::collections::BTreeMap::new();
    for (agent, heartbeat, json) in st.db.agent_images().await? {
        if heartbeat.is_none_or(|t| t < alive_since) {
            continue;
        }
        let images: Vec<portico_proto::control::AgentImage> = serde_json::from_str(&json).unwrap_or_default();
        for i in images {
            by_name
                .entry(i.name.clone())
                .or_insert_with(|| (i, Vec::new()))
                .1
                .push(agent.clone());
        }
    }
    Ok(Json(
        by_name
            .into_values()
            .map(|(i, agents)| json!({ "name": i.name, "size_mb": i.size_mb, "labels": i.labels, "agents": agents }))
            .collect(),
    ))
}

/// Remove an agent: its live workspaces fail and their sessions end, and its name is free for the next
/// identity that registers it (the same agent re-registers by itself if it still runs).
async fn delete_agent(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match st.db.delete_agent(&id, now_unix()).await? {
        Some(name) => {
            tracing::info!(agent = ?name, agent_id = ?id, by = %me.user.id, "Agent removed");
            st.events.emit(
                Event::new(EventType::AgentRemoved)
                    .by(&me)
                    .detail("agent_id", &id)
                    .detail("agent", &name),
            );
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::NotFound("agent")),
    }
}

/// Drain an agent: no new workspaces are placed on it; its live ones run to their end.
async fn drain_agent(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_agent_drain(&st, &me, &id, true).await
}

/// Take a drained agent back: it gets new workspaces again.
async fn undrain_agent(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    set_agent_drain(&st, &me, &id, false).await
}

async fn set_agent_drain(st: &AppState, me: &CurrentUser, id: &str, on: bool) -> Result<StatusCode, ApiError> {
    let name = st
        .db
        .drain_agent(id, on, now_unix())
        .await?
        .ok_or(ApiError::NotFound("agent"))?;
    tracing::info!(agent = ?name, agent_id = %id, drained = on, admin = %me.user.id, "Agent drain changed");
    st.events.emit(
        Event::new(EventType::AgentDrained)
            .by(me)
            .detail("agent_id", id)
            .detail("agent", &name)
            .detail("stage", if on { "draining" } else { "taken back" }),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// A bridge as admins see it: its row and its state ([`crate::bridge_states`]).
#[derive(Serialize)]
struct BridgeView {
    #[serde(flatten)]
    row: crate::db::BridgeRow,
    state: &'static str,
}

/// Registered bridges (each registration is an identity), with their state and live sessions.
async fn list_bridges(State(st): State<AppState>, _: Admin) -> Result<Json<Vec<BridgeView>>, ApiError> {
    let alive_since = st.bridges_alive_since(now_unix());
    let rows = st.db.list_bridges().await?;
    let states = crate::bridge_states(&rows, alive_since);
    Ok(Json(
        rows.into_iter()
            .zip(states)
            .map(|(row, state)| BridgeView { row, state })
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// Seconds the live sessions may still run (then they end); absent: until their own end.
    #[serde(default)]
    deadline_secs: Option<u32>,
}

/// Drain a bridge: it takes no new sessions (the webapp stops assigning it any, and it refuses new
/// tokens), its live sessions run to their end or the deadline, then it stops.
async fn drain_bridge(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    // The body is optional: none drains without a deadline.
    let body: DrainBody = if body.iter().all(u8::is_ascii_whitespace) {
        DrainBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("invalid drain body: {e}")))?
    };
    let now = now_unix();
    let deadline = body.deadline_secs.map(|d| now + i64::from(d));
    let name = st
        .db
        .drain_bridge(&id, deadline, now)
        .await?
        .ok_or(ApiError::NotFound("bridge"))?;
    tracing::info!(bridge = ?name, bridge_id = %id, ?deadline, admin = %me.user.id, "Bridge drain ordered");
    st.events.emit(
        Event::new(EventType::BridgeDrained)
            .by(&me)
            .detail("bridge_id", &id)
            .detail("bridge", &name)
            .detail("stage", "draining")
            .detail("by", "administrator")
            .detail("deadline_secs", body.deadline_secs),
    );
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct RevokeQuery {
    #[serde(default)]
    forget: bool,
}

/// Revoke a bridge: its credential stops working and its sessions end; `?forget=true` on a revoked bridge
/// removes it, so its name may register again.
async fn revoke_bridge(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RevokeQuery>,
) -> Result<StatusCode, ApiError> {
    if st.db.revoke_bridge(&id, q.forget, now_unix()).await? {
        tracing::warn!(bridge_id = %id, forget = q.forget, admin = %me.user.id, "Bridge revoked");
        st.events.emit(
            Event::new(EventType::BridgeRevoked)
                .by(&me)
                .detail("bridge_id", &id)
                .detail("forget", q.forget),
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("bridge"))
    }
}

// ---- API keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    name: String,
    /// `read`, `sessions` (default) or `admin`.
    #[serde(default)]
    scope: Option<String>,
    /// Lifetime in days, 1 to 3650 (default 90).
    #[serde(default)]
    expires_in_days: Option<i64>,
}

pub const API_KEY_DEFAULT_DAYS: i64 = 90;

async fn list_api_keys(State(st): State<AppState>, me: CurrentUser) -> Result<Json<Vec<crate::db::ApiKey>>, ApiError> {
    Ok(Json(st.db.list_api_keys(&me.user.id).await?))
}

async fn create_api_key(
    State(st): State<AppState>,
    me: CurrentUser,
    ApiJson(b): ApiJson<ApiKeyBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = b.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::bad_request("name must have 1 to 100 characters"));
    }
    let scope = match b.scope.as_deref() {
        None => KeyScope::Sessions,
        Some(s) => KeyScope::parse(s).ok_or_else(|| ApiError::bad_request("scope must be read, sessions or admin"))?,
    };
    let days = b.expires_in_days.unwrap_or(API_KEY_DEFAULT_DAYS);
    if !(1..=3650).contains(&days) {
        return Err(ApiError::bad_request("expires_in_days must be 1 to 3650"));
    }
    let now = now_unix();
    let k = crate::db::ApiKey {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: me.user.id.clone(),
        name: name.to_owned(),
        created_at: now,
        last_used_at: None,
        scope: scope.as_str().to_owned(),
        expires_at: Some(now + days * 86_400),
    };
    let key = format!("{API_KEY_PREFIX}{}", crypto::random_token());
    st.db.insert_api_key(&k, &crypto::sha256_hex(&key)).await?;
    st.events.emit(
        Event::new(EventType::ApiKeyCreated)
            .by(&me)
            .user(&me.user.id)
            .detail("api_key_id", &k.id)
            .detail("name", &k.name)
            .detail("scope", &k.scope)
            .detail("expires_at", k.expires_at),
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": k.id, "name": k.name, "key": key, "scope": k.scope, "expires_at": k.expires_at })),
    ))
}

async fn delete_api_key(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if st.db.delete_api_key(&id, &me.user.id).await? {
        st.events.emit(
            Event::new(EventType::ApiKeyDeleted)
                .by(&me)
                .user(&me.user.id)
                .detail("api_key_id", &id),
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("api key"))
    }
}

// ---- connections

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionBody {
    #[serde(default)]
    name: Option<String>,
    protocol: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: Option<u32>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    /// Omitted: unchanged (update) or none (create); `null` or empty: cleared (trust on first use).
    #[serde(default, deserialize_with = "present")]
    host_key_fingerprint: Option<Option<String>>,
    #[serde(default)]
    clear_password: bool,
    #[serde(default)]
    clear_private_key: bool,
    /// Protocol settings; omitted = keep (update) or defaults (create).
    #[serde(default)]
    settings: Option<ConnectionSettings>,
    /// The folder; omitted = unchanged (update) or the top level (create); `null` = the top level.
    #[serde(default, deserialize_with = "present")]
    folder_id: Option<Option<String>>,
}

#[derive(Serialize)]
pub struct ConnectionView {
    id: String,
    name: String,
    protocol: String,
    host: String,
    port: i64,
    username: String,
    has_password: bool,
    has_private_key: bool,
    host_key_fingerprint: Option<String>,
    settings: ConnectionSettings,
    folder_id: Option<String>,
    /// "Site A / Floor 1": the folders above it, top first.
    folder_path: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<Connection> for ConnectionView {
    fn from(c: Connection) -> Self {
        ConnectionView {
            has_password: c.password_enc.is_some(),
            has_private_key: c.private_key_enc.is_some(),
            id: c.id,
            name: c.name,
            protocol: c.protocol,
            host: c.host,
            port: c.port,
            username: c.username,
            host_key_fingerprint: c.host_key_fingerprint,
            settings: serde_json::from_str(&c.settings).unwrap_or_default(),
            folder_id: c.folder_id,
            folder_path: c.folder_path,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// What events record of a connection: its view without times (never a credential, only whether it has
/// one).
pub fn connection_snapshot(c: &Connection) -> Value {
    let mut v = serde_json::to_value(ConnectionView::from(c.clone())).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.remove("created_at");
        m.remove("updated_at");
        m.remove("id");
    }
    v
}

/// Normalize an OpenSSH-style `SHA256:<base64>` fingerprint; `None` for empty input (trust on first use).
fn validate_settings(s: &ConnectionSettings) -> Result<(), ApiError> {
    if s.domain
        .as_ref()
        .is_some_and(|d| d.len() > 256 || d.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request("settings.domain is not a domain name"));
    }
    match (s.width, s.height) {
        (None, None) => {}
        (Some(200..=8192), Some(200..=8192)) => {}
        _ => {
            return Err(ApiError::bad_request(
                "settings.width and settings.height go together, each between 200 and 8192",
            ));
        }
    }
    if ![16, 24, 32].contains(&s.color_depth) {
        return Err(ApiError::bad_request("settings.color_depth must be 16, 24 or 32"));
    }
    if !(1..=1024 * 1024).contains(&s.files_max_mb) {
        return Err(ApiError::bad_request(
            "settings.files_max_mb must be between 1 and 1048576",
        ));
    }
    if s.locale
        .as_deref()
        .is_some_and(|l| !portico_proto::control::valid_locale(l))
    {
        return Err(ApiError::bad_request(
            "settings.locale must be a locale name such as de_DE.UTF-8 (letters, digits, _ . @ -)",
        ));
    }
    Ok(())
}

/// A SHA-256 fingerprint as `SHA256:<base64>` (OpenSSH's notation), from that notation or from hex with or
/// without colons (as `openssl x509 -fingerprint -sha256` prints a certificate's).
pub fn normalize_fingerprint(fp: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(fp) = fp.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let hex_digits: String = fp
        .strip_prefix("sha256 Fingerprint=")
        .unwrap_or(fp)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if let Ok(raw) = hex::decode(&hex_digits)
        && raw.len() == 32
    {
        use base64::Engine as _;
        return Ok(Some(format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
        )));
    }
    let b64 = fp
        .strip_prefix("SHA256:")
        .ok_or_else(|| ApiError::bad_request("host_key_fingerprint must look like SHA256:<base64> or 64 hex digits"))?;
    let b64 = b64.trim_end_matches('=');
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64) {
        Ok(raw) if raw.len() == 32 => Ok(Some(format!("SHA256:{b64}"))),
        _ => Err(ApiError::bad_request(
            "host_key_fingerprint is not a SHA-256 fingerprint",
        )),
    }
}

/// `host:port` of a target for events (`None` for a workspace, whose container is not known yet).
pub fn target_of(host: &str, port: i64) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    Some(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The protocol the bridge speaks for a connection protocol (workspace containers serve VNC).
pub fn bridge_protocol(connection_protocol: &str) -> Option<Protocol> {
    if connection_protocol == crate::workspaces::PROTOCOL {
        return Some(Protocol::Vnc);
    }
    Protocol::parse(connection_protocol)
}

/// A field that was present in the body (`Some`, holding `None` for `null`); omitted fields default to
/// `None` through `#[serde(default)]`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn apply_connection_body(st: &AppState, c: &mut Connection, mut b: ConnectionBody) -> Result<(), ApiError> {
    if let Some(folder) = b.folder_id.take() {
        c.folder_id = folder.filter(|f| !f.is_empty());
    }
    if b.protocol == crate::workspaces::PROTOCOL {
        return apply_workspace_body(c, b);
    }
    let protocol = Protocol::parse(&b.protocol)
        .ok_or_else(|| ApiError::bad_request("protocol must be ssh, vnc, rdp or container"))?;
    let host = b.host.trim();
    if host.is_empty()
        || host.len() > 253
        || host
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control() || "/?#@".contains(ch))
    {
        return Err(ApiError::bad_request("host must be a host name or ip address"));
    }
    let port = match b.port {
        None => match protocol {
            Protocol::Ssh => 22,
            Protocol::Vnc => 5900,
            Protocol::Rdp => 3389,
        },
        Some(p @ 1..=65535) => p,
        Some(_) => return Err(ApiError::bad_request("port must be between 1 and 65535")),
    };
    if b.username.len() > 256 {
        return Err(ApiError::bad_request("username is too long"));
    }
    c.name = connection_name(b.name, || format!("{}@{host}", b.username))?;
    c.protocol = protocol.as_str().into();
    c.host = host.into();
    c.port = port.into();
    c.username = b.username;
    if let Some(fp) = b.host_key_fingerprint {
        c.host_key_fingerprint = normalize_fingerprint(fp.as_deref())?;
    }
    if let Some(settings) = b.settings {
        validate_settings(&settings)?;
        c.settings = serde_json::to_string(&settings).map_err(|e| ApiError::Internal(e.into()))?;
    }
    if b.clear_password {
        c.password_enc = None;
    }
    if let Some(p) = b.password.filter(|p| !p.is_empty()) {
        if p.len() > 4096 {
            return Err(ApiError::bad_request("password is too long"));
        }
        c.password_enc = Some(st.keys.seal(&p, &format!("connection:{}:password", c.id))?);
    }
    if b.clear_private_key {
        c.private_key_enc = None;
    }
    if let Some(k) = b.private_key.filter(|k| !k.trim().is_empty()) {
        if k.len() > 64 * 1024 || !k.contains("PRIVATE KEY-----") {
            return Err(ApiError::bad_request(
                "private_key must be a PEM or OpenSSH private key",
            ));
        }
        c.private_key_enc = Some(st.keys.seal(&k, &format!("connection:{}:private_key", c.id))?);
    }
    Ok(())
}

/// The connection's name as given (trimmed), or `default` when empty; at most 200 bytes.
fn connection_name(given: Option<String>, default: impl FnOnce() -> String) -> Result<String, ApiError> {
    let name = given
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(default);
    if name.len() > 200 {
        return Err(ApiError::bad_request("name is too long"));
    }
    Ok(name)
}

/// A workspace: no host, port or credentials (each session gets its own container and one-time password),
/// only `settings.workspace`.
fn apply_workspace_body(c: &mut Connection, b: ConnectionBody) -> Result<(), ApiError> {
    if !b.host.trim().is_empty() || b.port.is_some() || b.password.is_some() || b.private_key.is_some() {
        return Err(ApiError::bad_request(
            "a container workspace has no host, port or credentials: set settings.workspace",
        ));
    }
    let settings = match b.settings {
        Some(s) => s,
        None => serde_json::from_str(&c.settings).unwrap_or_default(),
    };
    let spec = settings
        .workspace
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("a container workspace needs settings.workspace with an image"))?;
    crate::workspaces::validate_spec(spec)?;
    c.name = connection_name(b.name, || spec.image.clone())?;
    c.protocol = crate::workspaces::PROTOCOL.into();
    c.host = String::new();
    c.port = i64::from(spec.vnc_port);
    c.username = String::new();
    c.password_enc = None;
    c.private_key_enc = None;
    c.host_key_fingerprint = None;
    c.settings = serde_json::to_string(&settings).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(())
}

/// Search and paging of a list: `?q=` (a substring, case-insensitive), `limit` (1 to 1000, default 100),
/// `offset`; for connections also `folder_id` (that folder and its subfolders), `sort` (`name`, the
/// default: by folder then name; `recent`: the caller's favourites first, then the ones they used most
/// recently, then by folder and name; `last_used`: the ones the caller used most recently first),
/// `favourite=true` (only the caller's favourites) and `used=true` (only the ones the caller has started a
/// session on). The total that matched is in the `X-Total-Count` header.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    folder_id: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    favourite: bool,
    #[serde(default)]
    used: bool,
}

impl PageQuery {
    pub fn list_query(self) -> Result<crate::db::ListQuery, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request("limit must be between 1 and 1000"));
        }
        let offset = self.offset.unwrap_or(0);
        if offset < 0 {
            return Err(ApiError::bad_request("offset must not be negative"));
        }
        if self.q.as_ref().is_some_and(|q| q.len() > 200) {
            return Err(ApiError::bad_request("q is too long"));
        }
        let (favourites_first, recent_first) = match self.sort.as_deref() {
            None | Some("name") => (false, false),
            Some("recent") => (true, true),
            Some("last_used") => (false, true),
            Some(_) => return Err(ApiError::bad_request("sort must be name, recent or last_used")),
        };
        Ok(crate::db::ListQuery {
            q: self.q,
            folder_id: self.folder_id,
            limit,
            offset,
            favourites_first,
            recent_first,
            only_favourites: self.favourite,
            only_used: self.used,
        })
    }
}

/// A page of a list, with the number of all matches in `X-Total-Count`.
pub fn page<T: Serialize>(items: Vec<T>, total: i64) -> Response {
    let mut res = Json(items).into_response();
    if let Ok(v) = HeaderValue::from_str(&total.to_string()) {
        res.headers_mut().insert("x-total-count", v);
    }
    res
}

/// A connection in the caller's list, with what it is to them.
#[derive(Serialize)]
struct ListedConnection {
    #[serde(flatten)]
    connection: ConnectionView,
    /// One of the caller's favourites.
    favourite: bool,
    /// When the caller last started a session on it (unix seconds; `None`: never).
    last_used_at: Option<i64>,
}

/// The connections the caller may use (admins and auditors: all), one page at a time, each with whether
/// it is one of the caller's favourites and when they last used it.
async fn list_connections(
    State(st): State<AppState>,
    me: CurrentUser,
    axum::extract::Query(q): axum::extract::Query<PageQuery>,
) -> Result<Response, ApiError> {
    let (rows, total) = st
        .db
        .list_connections(&me.user.id, me.viewer(), &q.list_query()?)
        .await?;
    let items = rows
        .into_iter()
        .map(|(c, favourite, last_used_at)| ListedConnection {
            connection: c.into(),
            favourite,
            last_used_at,
        })
        .collect();
    Ok(page::<ListedConnection>(items, total))
}

/// A connection the caller may use; one that is not granted is "not found", like one that never existed.
async fn get_connection(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(
        st.db
            .connection_for(me.viewer(), &id)
            .await?
            .ok_or(ApiError::NotFound("connection"))?
            .into(),
    ))
}

async fn create_connection(
    State(st): State<AppState>,
    Admin(me): Admin,
    ApiJson(b): ApiJson<ConnectionBody>,
) -> Result<(StatusCode, Json<ConnectionView>), ApiError> {
    let now = now_unix();
    let mut c = Connection::new(uuid::Uuid::new_v4().to_string(), "", "", "", 0, now);
    apply_connection_body(&st, &mut c, b)?;
    if let Some(f) = &c.folder_id
        && st.db.folder(f).await?.is_none()
    {
        return Err(ApiError::bad_request(format!("no folder with id {f}")));
    }
    st.db.insert_connection(&c).await?;
    tracing::info!(connection_id = %c.id, protocol = %c.protocol, user_id = %me.user.id, "Connection created");
    let c = st.db.connection(&c.id).await?.ok_or(ApiError::NotFound("connection"))?;
    st.events.emit(
        Event::new(EventType::ConnectionCreated)
            .by(&me)
            .connection(&c.id)
            .detail("after", connection_snapshot(&c)),
    );
    Ok((StatusCode::CREATED, Json(c.into())))
}

async fn update_connection(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ConnectionBody>,
) -> Result<Json<ConnectionView>, ApiError> {
    let mut c = st.db.connection(&id).await?.ok_or(ApiError::NotFound("connection"))?;
    let before = c.clone();
    apply_connection_body(&st, &mut c, b)?;
    c.updated_at = now_unix();
    crate::access::changed(st.db.update_connection(&c, c.updated_at).await?, "connection")?;
    let c = st.db.connection(&id).await?.ok_or(ApiError::NotFound("connection"))?;
    // Sealed credentials are compared as sealed text: a new one is sealed with a fresh nonce. Only
    // whether they changed is recorded.
    st.events.emit(
        Event::new(EventType::ConnectionUpdated)
            .by(&me)
            .connection(&id)
            .change(&connection_snapshot(&before), &connection_snapshot(&c))
            .detail("password_changed", before.password_enc != c.password_enc)
            .detail("private_key_changed", before.private_key_enc != c.private_key_enc),
    );
    Ok(Json(c.into()))
}

async fn delete_connection(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let before = st.db.connection(&id).await?;
    if st.db.delete_connection(&id, now_unix()).await? {
        st.events.emit(
            Event::new(EventType::ConnectionDeleted)
                .by(&me)
                .connection(&id)
                .detail("before", before.as_ref().map(connection_snapshot)),
        );
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("connection"))
    }
}

// ---- sessions

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    connection_id: String,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
}

#[derive(Serialize)]
struct SessionCreated {
    session_id: String,
    token: String,
    ws_url: String,
    connect_url: String,
    expires_at: i64,
}

async fn create_session(
    State(st): State<AppState>,
    me: CurrentUser,
    ApiJson(b): ApiJson<SessionBody>,
) -> Result<(StatusCode, Json<SessionCreated>), ApiError> {
    let _ = (b.cols, b.rows); // The browser sends its size after attaching; accepted here for API clients.
    // Not granted is "not found", exactly like a connection that never existed.
    let conn = st
        .db
        .connection_for(me.viewer(), &b.connection_id)
        .await?
        .ok_or(ApiError::NotFound("connection"))?;
    let limits = st.db.limits(&me.user).await?;
    let refused = |reason: &str| {
        st.events.emit(
            Event::new(EventType::SessionRefused)
                .by(&me)
                .user(&me.user.id)
                .connection(&conn.id)
                .detail("protocol", &conn.protocol)
                .detail("reason", reason),
        );
    };
    if !limits.allows_protocol(&conn.protocol) {
        refused("protocol not allowed by a limit");
        return Err(ApiError::Forbidden(format!(
            "you may not start {} sessions (a limit of your account or your groups)",
            conn.protocol
        )));
    }
    let protocol =
        bridge_protocol(&conn.protocol).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("bad protocol in db")))?;
    let now = now_unix();
    let session_id = uuid::Uuid::new_v4().to_string();
    let workspace = if conn.protocol == crate::workspaces::PROTOCOL {
        let settings: ConnectionSettings =
            serde_json::from_str(&conn.settings).map_err(|e| ApiError::Internal(e.into()))?;
        Some(
            settings
                .workspace
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("container connection without a workspace")))?,
        )
    } else {
        None
    };
    let jti = crypto::random_token();
    let exp = now + MAX_LIFETIME_SECS;
    let cfg = &st.config;
    let assigned = assign_bridge(&st, now).await?;
    let claims = SessionClaims {
        iss: "portico-webapp".into(),
        aud: cfg.zone.clone(),
        sub: me.user.id.clone(),
        sid: session_id.clone(),
        jti: jti.clone(),
        iat: now,
        nbf: now,
        exp,
        proto: protocol,
        dst_host: conn.host.clone(),
        dst_port: u16::try_from(conn.port).unwrap_or(0),
        idle_timeout: cfg.session_idle_timeout.as_secs() as u32,
        max_duration: cfg.session_max_duration.as_secs() as u32,
        grace: cfg.session_grace.as_secs() as u32,
        viewer: None,
    };
    let started = st
        .db
        .start_session(
            &SessionRow {
                id: session_id.clone(),
                user_id: me.user.id.clone(),
                connection_id: conn.id.clone(),
                state: state::PENDING.into(),
                token_jti: jti,
                token_expires_at: exp,
                claimed_at: None,
                bridge_id: assigned.as_ref().map(|(id, _)| id.clone()),
                created_at: now,
                ended_at: None,
                end_reason: None,
            },
            limits.max_sessions,
            now,
        )
        .await?;
    if let crate::db::SessionStart::LimitReached(n) = started {
        refused(&format!("limit of {n} concurrent sessions reached"));
        return Err(ApiError::Forbidden(format!(
            "you have reached your limit of {n} concurrent sessions"
        )));
    }
    if let Some(spec) = &workspace
        && let Err(e) = crate::workspaces::schedule(&st, &session_id, &conn.id, spec).await
    {
        st.db
            .end_session(&session_id, CloseCode::Ended, &format!("not scheduled: {e}"), now)
            .await?;
        refused(&format!("not scheduled: {e}"));
        return Err(e);
    }
    let token = st.signer.sign(&claims);
    let (ws_url, route_param) = match &assigned {
        Some((_, route)) => (
            format!("{}/bridge/v1/at/{route}/ws?session={session_id}", cfg.bridge_ws_base()),
            format!("&bridge={route}"),
        ),
        None => (
            format!("{}/bridge/v1/ws?session={session_id}", cfg.bridge_ws_base()),
            String::new(),
        ),
    };
    // No bridge address in the link: the embed page connects only to the bridge origin this webapp names
    // (a route name only picks a bridge behind it).
    let connect_url = format!(
        "{}/connect#session={session_id}&token={token}{route_param}",
        cfg.public_url.trim_end_matches('/')
    );
    tracing::info!(%session_id, connection_id = %conn.id, user_id = %me.user.id, protocol = protocol.as_str(), "Session created");
    st.events.emit(
        Event::new(EventType::SessionCreated)
            .by(&me)
            .user(&me.user.id)
            .connection(&conn.id)
            .session(&session_id)
            .detail("protocol", &conn.protocol)
            .detail("connection_name", &conn.name)
            .detail("target", target_of(&conn.host, conn.port))
            .detail("bridge_id", assigned.as_ref().map(|(id, _)| id.as_str())),
    );
    Ok((
        StatusCode::CREATED,
        Json(SessionCreated {
            session_id,
            token,
            ws_url,
            connect_url,
            expires_at: exp,
        }),
    ))
}

/// The bridge for a new session: of the healthy bridges that have a route (alive, not draining, not
/// revoked), the one with the fewest sessions (ties at random); `None` when there is none, and the session
/// goes to whichever bridge the load balancer picks (all-in-one, or bridges without routes).
async fn assign_bridge(st: &AppState, now: i64) -> Result<Option<(String, String)>, ApiError> {
    let candidates = st.db.bridge_candidates(st.bridges_alive_since(now)).await?;
    let routed: Vec<(String, String, i64)> = candidates
        .into_iter()
        .filter_map(|b| Some((b.id, b.route?, b.live_sessions)))
        .collect();
    let Some(fewest) = routed.iter().map(|(_, _, n)| *n).min() else {
        return Ok(None);
    };
    let least: Vec<&(String, String, i64)> = routed.iter().filter(|(_, _, n)| *n == fewest).collect();
    let pick = least[(uuid::Uuid::new_v4().as_u128() % least.len() as u128) as usize];
    Ok(Some((pick.0.clone(), pick.1.clone())))
}

async fn list_sessions(State(st): State<AppState>, me: CurrentUser) -> Result<Json<Vec<SessionRow>>, ApiError> {
    st.sweep_lost(now_unix()).await?;
    let filter = if me.sees_all() { None } else { Some(me.user.id.as_str()) };
    Ok(Json(st.db.list_sessions(filter, false).await?))
}

/// A session the caller may see: their own, or any for admins and auditors (others' are "not found", not
/// "forbidden"). Auditors cannot end one: the role is read-only.
async fn visible_session(st: &AppState, me: &CurrentUser, id: &str) -> Result<SessionRow, ApiError> {
    st.db
        .session(id)
        .await?
        .filter(|s| me.sees_all() || s.user_id == me.user.id)
        .ok_or(ApiError::NotFound("session"))
}

/// A session; for a workspace also its container (agent, state, error; never the password).
async fn get_session(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    st.sweep_lost(now_unix()).await?;
    let s = visible_session(&st, &me, &id).await?;
    let mut v = serde_json::to_value(&s).map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(c) = st.db.container(&id).await? {
        v["workspace"] = serde_json::to_value(&c).map_err(|e| ApiError::Internal(e.into()))?;
    }
    Ok(Json(v))
}

async fn end_session(
    State(st): State<AppState>,
    me: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let s = visible_session(&st, &me, &id).await?;
    let reason = if s.user_id == me.user.id {
        "ended by the user"
    } else {
        "ended by an administrator"
    };
    if st.db.end_session(&id, CloseCode::Ended, reason, now_unix()).await? {
        st.events.emit(
            Event::new(EventType::SessionEnded)
                .by(&me)
                .user(&s.user_id)
                .connection(&s.connection_id)
                .session(&id)
                .detail("reason", reason),
        );
    }
    tracing::info!(session_id = %id, user_id = %me.user.id, "Session end requested");
    Ok(StatusCode::NO_CONTENT)
}
