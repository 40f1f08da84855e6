//! Single sign-on: identity providers (OIDC and LDAP directories) over the REST API, the OIDC login
//! (`/auth/oidc/{id}/login` sends the browser to the provider, `/auth/oidc/callback` brings it back with a
//! login session), the mapping of a provider's groups to Portico groups and roles at every login, and
//! the setting that restricts local (password) accounts to admins.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::ApiJson;
use crate::auth::{Admin, Overseer, ROLE_ADMIN, ROLE_AUDITOR, ROLE_USER, cookie_value};
use crate::db::{ExternalIdentity, IdentityProvider, OidcLogin, User};
use crate::error::ApiError;
use crate::events::{Event, EventType};
use crate::oidc::{self, OidcConfig, OidcError};
use crate::{AppState, crypto, now_unix};

pub const KIND_OIDC: &str = "oidc";
pub const KIND_LDAP: &str = "ldap";
/// Setting: `true` when only admins may log in with a local (Portico) password.
pub const LOCAL_LOGIN_ADMINS_ONLY: &str = "local_login_admins_only";
/// The cookie that binds an OIDC login to the browser that started it (login CSRF).
const BINDING_COOKIE: &str = "portico_oidc";
const CALLBACK_PATH: &str = "/api/v1/auth/oidc/callback";
/// Seconds a user may take at the provider.
const LOGIN_TTL: i64 = 600;
/// OIDC logins under way at once, at most (unauthenticated requests create them).
const MAX_PENDING_LOGINS: i64 = 10_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/identity-providers", get(list).post(create))
        .route("/api/v1/identity-providers/{id}", get(read).put(update).delete(remove))
        .route("/api/v1/auth/providers", get(public_list))
        .route("/api/v1/auth/oidc/{id}/login", get(oidc_login))
        .route(CALLBACK_PATH, get(oidc_callback))
}

/// How a provider's groups become Portico groups and roles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Provider group → Portico group name. Empty: a provider group joins the Portico group of the same
    /// name, if there is one.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    /// Provider group → role (`admin` or `auditor`); the strongest wins, `user` otherwise.
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
}

impl Mapping {
    fn validate(&self) -> Result<(), ApiError> {
        if let Some(r) = self
            .roles
            .values()
            .find(|r| ![ROLE_ADMIN, ROLE_AUDITOR, ROLE_USER].contains(&r.as_str()))
        {
            return Err(ApiError::bad_request(format!("unknown role {r:?}")));
        }
        Ok(())
    }

    /// The role and the Portico group names for a user in `groups` at the provider.
    pub fn apply(&self, groups: &[String]) -> (String, Vec<String>) {
        let rank = |r: &str| match r {
            ROLE_ADMIN => 2,
            ROLE_AUDITOR => 1,
            _ => 0,
        };
        let role = groups
            .iter()
            .filter_map(|g| self.roles.get(g))
            .max_by_key(|r| rank(r))
            .map_or(ROLE_USER, String::as_str)
            .to_owned();
        let mut names: Vec<String> = if self.groups.is_empty() {
            groups.to_vec()
        } else {
            groups.iter().filter_map(|g| self.groups.get(g).cloned()).collect()
        };
        names.sort();
        names.dedup();
        (role, names)
    }
}

/// What is stored in `identity_providers.config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ldap: Option<crate::ldap::LdapConfig>,
    #[serde(default)]
    pub mapping: Mapping,
}

impl StoredConfig {
    pub fn of(p: &IdentityProvider) -> Result<StoredConfig, ApiError> {
        serde_json::from_str(&p.config)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("provider {} settings: {e}", p.id)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderBody {
    name: String,
    kind: String,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    oidc: Option<OidcConfig>,
    /// Write-only; omitted on update: kept.
    #[serde(default)]
    client_secret: Option<String>,
    #[serde(default)]
    ldap: Option<crate::ldap::LdapConfig>,
    #[serde(default)]
    mapping: Option<Mapping>,
}

#[derive(Serialize)]
struct ProviderView {
    id: String,
    kind: String,
    name: String,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    oidc: Option<OidcConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ldap: Option<crate::ldap::LdapConfig>,
    mapping: Mapping,
    has_client_secret: bool,
    /// For OIDC: the redirect URI to register at the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_uri: Option<String>,
    users: i64,
    created_at: i64,
}

fn redirect_uri(st: &AppState) -> String {
    format!("{}{CALLBACK_PATH}", st.config.public_url.trim_end_matches('/'))
}

async fn view(st: &AppState, p: IdentityProvider) -> Result<ProviderView, ApiError> {
    let c = StoredConfig::of(&p)?;
    Ok(ProviderView {
        redirect_uri: (p.kind == KIND_OIDC).then(|| redirect_uri(st)),
        users: st.db.count_provider_users(&p.id).await?,
        id: p.id,
        kind: p.kind,
        name: p.name,
        enabled: p.enabled,
        oidc: c.oidc,
        ldap: c.ldap,
        mapping: c.mapping,
        has_client_secret: p.secret_enc.is_some(),
        created_at: p.created_at,
    })
}

async fn list(State(st): State<AppState>, _: Overseer) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let mut out = Vec::new();
    for p in st.db.list_providers().await? {
        out.push(view(&st, p).await?);
    }
    Ok(Json(out))
}

async fn read(State(st): State<AppState>, _: Overseer, Path(id): Path<String>) -> Result<Json<ProviderView>, ApiError> {
    let p = st
        .db
        .provider(&id)
        .await?
        .ok_or(ApiError::NotFound("identity provider"))?;
    Ok(Json(view(&st, p).await?))
}

/// Check a body and build the stored row (`existing`: the row it replaces, whose secret it may keep).
fn provider_from(
    st: &AppState,
    id: String,
    b: ProviderBody,
    existing: Option<&IdentityProvider>,
) -> Result<IdentityProvider, ApiError> {
    let name = b.name.trim();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_alphanumeric() || "._- ".contains(c)) {
        return Err(ApiError::bad_request(
            "provider name must be 1 to 64 letters, digits, spaces or ._-",
        ));
    }
    if existing.is_some_and(|e| e.kind != b.kind) {
        return Err(ApiError::bad_request("the kind of a provider cannot change"));
    }
    let mapping = b.mapping.unwrap_or_default();
    mapping.validate()?;
    let (config, secret_enc) = match (b.kind.as_str(), b.oidc, b.ldap) {
        (KIND_OIDC, Some(o), None) => {
            o.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
            let secret_enc = match b.client_secret.filter(|s| !s.is_empty()) {
                Some(s) if s.len() > 1024 => return Err(ApiError::bad_request("client secret too long")),
                Some(s) => Some(st.keys.seal(&s, &format!("idp:{id}"))?),
                None => existing.and_then(|e| e.secret_enc.clone()),
            };
            let c = StoredConfig {
                oidc: Some(o),
                ldap: None,
                mapping,
            };
            (c, secret_enc)
        }
        (KIND_LDAP, None, Some(l)) => {
            if b.client_secret.is_some() {
                return Err(ApiError::bad_request("an ldap provider has no client secret"));
            }
            l.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
            let c = StoredConfig {
                oidc: None,
                ldap: Some(l),
                mapping,
            };
            (c, None)
        }
        (KIND_OIDC | KIND_LDAP, _, _) => {
            return Err(ApiError::bad_request(format!(
                "a provider of kind {} needs the {} settings and no others",
                b.kind, b.kind
            )));
        }
        (k, _, _) => {
            return Err(ApiError::bad_request(format!(
                "unknown provider kind {k:?} (expected oidc or ldap)"
            )));
        }
    };
    Ok(IdentityProvider {
        id,
        kind: b.kind,
        name: name.to_owned(),
        config: serde_json::to_string(&config).map_err(|e| ApiError::Internal(e.into()))?,
        secret_enc,
        enabled: b.enabled.unwrap_or(true),
        created_at: existing.map_or_else(now_unix, |e| e.created_at),
    })
}

/// What events record of a provider: its view without counts and times (it holds no secret, only whether
/// one is set).
fn provider_value(v: &ProviderView) -> Value {
    let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in ["users", "created_at", "redirect_uri", "id"] {
            m.remove(k);
        }
    }
    v
}

async fn create(
    State(st): State<AppState>,
    Admin(me): Admin,
    ApiJson(b): ApiJson<ProviderBody>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let p = provider_from(&st, uuid::Uuid::new_v4().to_string(), b, None)?;
    if !st.db.save_provider(&p).await? {
        return Err(ApiError::Conflict("provider name already exists".into()));
    }
    tracing::info!(provider_id = %p.id, kind = %p.kind, name = %p.name, admin = %me.user.id, "Identity provider created");
    let v = view(&st, p).await?;
    st.events.emit(
        Event::new(EventType::IdentityProviderCreated)
            .by(&me)
            .detail("provider_id", &v.id)
            .detail("after", provider_value(&v)),
    );
    Ok((StatusCode::CREATED, Json(v)))
}

async fn update(
    State(st): State<AppState>,
    Admin(me): Admin,
    Path(id): Path<String>,
    ApiJson(b): ApiJson<ProviderBody>,
) -> Result<Json<ProviderView>, ApiError> {
    let existing = st
        .db
        .provider(&id)
        .await?
        .ok_or(ApiError::NotFound("identity provider"))?;
    let p = provider_from(&st, id, b, Some(&existing))?;
    let secret_changed = p.secret_enc != existing.secret_enc;
    let before = provider_value(&view(&st, existing).await?);
    if !st.db.save_provider(&p).await? {
        return Err(ApiError::Conflict("provider name already exists".into()));
    }
    st.oidc.forget(&p.id);
    tracing::info!(provider_id = %p.id, admin = %me.user.id, enabled = p.enabled, "Identity provider changed");
    let v = view(&st, p).await?;
    st.events.emit(
        Event::new(EventType::IdentityProviderUpdated)
            .by(&me)
            .detail("provider_id", &v.id)
            .change(&before, &provider_value(&v))
            .detail("client_secret_changed", secret_changed),
    );
    Ok(Json(v))
}

async fn remove(State(st): State<AppState>, Admin(me): Admin, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let before = match st.db.provider(&id).await? {
        Some(p) => Some(provider_value(&view(&st, p).await?)),
        None => None,
    };
    if !st.db.delete_provider(&id, now_unix()).await? {
        return Err(ApiError::NotFound("identity provider"));
    }
    st.oidc.forget(&id);
    tracing::warn!(provider_id = %id, admin = %me.user.id, "Identity provider deleted with its users");
    st.events.emit(
        Event::new(EventType::IdentityProviderDeleted)
            .by(&me)
            .detail("provider_id", &id)
            .detail("before", before),
    );
    Ok(StatusCode::NO_CONTENT)
}

/// What the login page needs: the enabled OIDC providers (a button each) and whether directory (LDAP)
/// accounts may use the password form.
async fn public_list(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let providers = st.db.list_providers().await?;
    let sso: Vec<Value> = providers
        .iter()
        .filter(|p| p.enabled && p.kind == KIND_OIDC)
        .map(|p| serde_json::json!({ "id": p.id, "name": p.name, "login_url": format!("/api/v1/auth/oidc/{}/login", p.id) }))
        .collect();
    let directory = providers.iter().any(|p| p.enabled && p.kind == KIND_LDAP);
    Ok(Json(serde_json::json!({ "oidc": sso, "ldap": directory })))
}

/// Whether a user that just proved their password may log in with it: local accounts may be restricted to
/// admins (break-glass), directory accounts always may.
pub async fn local_login_allowed(st: &AppState, user: &User) -> Result<bool, ApiError> {
    if user.provider_id.is_some() || user.role == ROLE_ADMIN {
        return Ok(true);
    }
    Ok(!local_login_admins_only(st).await?)
}

pub async fn local_login_admins_only(st: &AppState) -> Result<bool, ApiError> {
    Ok(st.db.setting(LOCAL_LOGIN_ADMINS_ONLY).await?.as_deref() == Some("true"))
}

/// Create or update a provider's user from what the provider says now (groups and role mapped).
pub async fn sync_user(
    st: &AppState,
    p: &IdentityProvider,
    mapping: &Mapping,
    external_id: &str,
    username: &str,
    groups: &[String],
) -> Result<User, ApiError> {
    let (role, names) = mapping.apply(groups);
    let who = ExternalIdentity {
        external_id: external_id.to_owned(),
        username: clean_username(username),
        role,
        groups: names,
    };
    let user = st.db.sync_external_user(p, &who, now_unix()).await?;
    tracing::info!(user_id = %user.id, provider_id = %p.id, role = %user.role, groups = ?who.groups, "Directory user synced");
    Ok(user)
}

/// Check a user name and password with an LDAP directory; on success the user is synced (created on first
/// login, groups and role mapped). `Ok(None)`: wrong name or password. An unreachable or misbehaving
/// directory is an error (no failure is counted against the user).
pub async fn directory_login(
    st: &AppState,
    p: &IdentityProvider,
    username: &str,
    password: &str,
) -> Result<Option<User>, ApiError> {
    let c = StoredConfig::of(p)?;
    let Some(cfg) = c.ldap else {
        return Err(ApiError::Internal(anyhow::anyhow!("ldap provider without settings")));
    };
    match crate::ldap::authenticate(&cfg, username, password, DIRECTORY_TIMEOUT).await {
        Ok(Some(who)) => {
            let user = sync_user(st, p, &c.mapping, &who.dn.to_lowercase(), &who.username, &who.groups).await?;
            Ok(Some(user))
        }
        Ok(None) => Ok(None),
        Err(e @ (crate::ldap::LdapError::AmbiguousUser | crate::ldap::LdapError::WrongEntry { .. })) => {
            // Several entries answer to this name, or the entry found is not the one that bound: nobody is
            // logged in, and the answer is the one for a wrong password.
            tracing::warn!(provider_id = %p.id, username, error = %e, "Directory login refused");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(provider_id = %p.id, error = %e, "Directory login failed");
            Err(ApiError::NoCapacity(format!("directory {} unavailable: {e}", p.name)))
        }
    }
}

/// Time a directory may take for a whole login (connect, TLS, bind, searches).
const DIRECTORY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A Portico user name from a provider's: letters, digits and `._-@`, 1 to 64 bytes.
pub fn clean_username(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || "._-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.len() > 64 {
        out.pop();
    }
    if out.is_empty() { "user".into() } else { out }
}

// ---- the OIDC login

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

/// A path on this site to land on after login (no scheme, host or `//`).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.len() <= 512
                && !n.chars().any(char::is_control) =>
        {
            n.to_owned()
        }
        _ => "/".into(),
    }
}

async fn enabled_oidc(st: &AppState, id: &str) -> Result<(IdentityProvider, OidcConfig), ApiError> {
    let p = st
        .db
        .provider(id)
        .await?
        .filter(|p| p.enabled && p.kind == KIND_OIDC)
        .ok_or(ApiError::NotFound("identity provider"))?;
    let cfg = StoredConfig::of(&p)?
        .oidc
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("oidc provider without settings")))?;
    Ok((p, cfg))
}

/// Start a login at the provider: save state, nonce and PKCE verifier (bound to this browser by a
/// cookie) and send the browser to the authorization endpoint.
async fn oidc_login(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let (p, cfg) = enabled_oidc(&st, &id).await?;
    let d = match st.oidc.discovery(&p.id, &cfg).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(provider_id = %p.id, error = %e, "OIDC login cannot start");
            return Ok(login_error(&st, &e.to_string()));
        }
    };
    let now = now_unix();
    if st.db.count_oidc_logins(now).await? >= MAX_PENDING_LOGINS {
        return Err(ApiError::Busy);
    }
    let state = crypto::random_token();
    let nonce = crypto::random_token();
    let binding = crypto::random_token();
    let (verifier, challenge) = oidc::pkce_pair();
    let url = oidc::authorization_url(&d, &cfg, &redirect_uri(&st), &state, &nonce, &challenge)
        .map_err(|e| ApiError::Internal(e.into()))?;
    st.db
        .insert_oidc_login(
            &crypto::sha256_hex(&state),
            &OidcLogin {
                provider_id: p.id.clone(),
                nonce,
                verifier,
                binding_hash: crypto::sha256_hex(&binding),
                next_path: local_path(q.next.as_deref()),
                expires_at: now + LOGIN_TTL,
            },
            now,
        )
        .await?;
    tracing::info!(provider_id = %p.id, "OIDC login started");
    let mut res = Redirect::to(&url).into_response();
    // Lax: the provider's redirect back is a cross-site top-level navigation.
    let secure = if st.config.secure_cookies { "; Secure" } else { "" };
    let c = format!(
        "{BINDING_COOKIE}={binding}; Path=/api/v1/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={LOGIN_TTL}{secure}"
    );
    res.headers_mut().append(
        header::SET_COOKIE,
        HeaderValue::from_str(&c).map_err(|e| ApiError::Internal(e.into()))?,
    );
    Ok(res)
}

#[derive(Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    /// RFC 9207: the issuer of the authorization response.
    #[serde(default)]
    iss: Option<String>,
}

/// Back from the provider: the state must be one this browser started (once, in time), the code is
/// exchanged with the verifier, the ID token checked; then the user is synced and logged in.
async fn oidc_callback(
    State(st): State<AppState>,
    crate::api::ClientAddr(peer): crate::api::ClientAddr,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let client = peer.map(|a| a.ip());
    match finish_oidc(&st, &headers, q, client).await {
        Ok(res) => res,
        Err(msg) => {
            tracing::warn!(reason = %msg, "OIDC login refused");
            st.events.emit(
                Event::new(EventType::LoginFailed)
                    .client(client)
                    .detail("method", "oidc")
                    .detail("reason", &msg),
            );
            login_error(&st, &msg)
        }
    }
}

async fn finish_oidc(
    st: &AppState,
    headers: &HeaderMap,
    q: CallbackQuery,
    client: Option<std::net::IpAddr>,
) -> Result<Response, String> {
    let state = q.state.ok_or("the provider sent no state")?;
    let login = st
        .db
        .take_oidc_login(&crypto::sha256_hex(&state))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("this login link was already used or is unknown; start again")?;
    let now = now_unix();
    if login.expires_at < now {
        return Err("the login took too long; start again".into());
    }
    let binding = cookie_value(headers, BINDING_COOKIE).map(crypto::sha256_hex);
    let bound = binding.is_some_and(|b| {
        bool::from(subtle::ConstantTimeEq::ct_eq(
            b.as_bytes(),
            login.binding_hash.as_bytes(),
        ))
    });
    if !bound {
        return Err("this login was started in another browser; start again".into());
    }
    if let Some(e) = q.error {
        let d = q.error_description.unwrap_or_default();
        return Err(oidc::truncate(&format!("the identity provider refused: {e} {d}"), 300)
            .trim()
            .to_owned());
    }
    let code = q.code.ok_or("the provider sent no code")?;
    let (p, cfg) = enabled_oidc(st, &login.provider_id).await.map_err(|e| e.to_string())?;
    let err = |e: OidcError| e.to_string();
    let d = st.oidc.discovery(&p.id, &cfg).await.map_err(err)?;
    if q.iss.as_deref().is_some_and(|iss| iss != d.issuer) {
        return Err("the authorization response comes from another issuer".into());
    }
    let secret = p
        .secret_enc
        .as_deref()
        .map(|s| st.keys.open(s, &format!("idp:{}", p.id)))
        .transpose()
        .map_err(|e| format!("client secret: {e}"))?;
    let tokens = oidc::exchange_code(&cfg, secret.as_deref(), &d, &code, &login.verifier, &redirect_uri(st))
        .await
        .map_err(err)?;
    let id_token = tokens.id_token.ok_or("the provider sent no id token")?;
    let want = oidc::Expected {
        issuer: &d.issuer,
        client_id: &cfg.client_id,
        nonce: &login.nonce,
        now,
    };
    let mut claims = st.oidc.verify(&p.id, &cfg, &d, &id_token, &want).await.map_err(err)?;
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(at) = tokens.access_token.as_deref() {
        let info: Map<String, Value> = oidc::userinfo(&cfg, &d, at, &sub).await.map_err(err)?;
        for (k, v) in info {
            claims.entry(k).or_insert(v);
        }
    }
    let username = [cfg.username_claim.as_str(), "preferred_username", "email"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(Value::as_str))
        .unwrap_or(&sub)
        .to_owned();
    let groups = oidc::claim_strings(&claims, &cfg.groups_claim);
    let mapping = StoredConfig::of(&p).map_err(|e| e.to_string())?.mapping;
    let user = sync_user(st, &p, &mapping, &sub, &username, &groups)
        .await
        .map_err(|e| e.to_string())?;
    let (cookies, _csrf) = crate::api::login_cookies(st, &user, false)
        .await
        .map_err(|e| e.to_string())?;
    st.events.emit(
        Event::login(EventType::LoginSucceeded, &user, client, "oidc")
            .detail("provider_id", &p.id)
            .detail("role", &user.role),
    );
    let mut res = Redirect::to(&login.next_path).into_response();
    for c in cookies {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    clear_binding(st, &mut res);
    Ok(res)
}

fn clear_binding(st: &AppState, res: &mut Response) {
    let secure = if st.config.secure_cookies { "; Secure" } else { "" };
    let c = format!("{BINDING_COOKIE}=; Path=/api/v1/auth/oidc; HttpOnly; SameSite=Lax; Max-Age=0{secure}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Back to the login page with the reason (the page shows it as text).
fn login_error(st: &AppState, msg: &str) -> Response {
    let enc: String = url::form_urlencoded::byte_serialize(msg.as_bytes()).collect();
    let mut res = Redirect::to(&format!("/?sso_error={enc}")).into_response();
    clear_binding(st, &mut res);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_roles_and_portico_groups() {
        let mut m = Mapping::default();
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(m.apply(&g(&["b", "a", "a"])), ("user".into(), g(&["a", "b"])));
        m.roles.insert("ops".into(), "auditor".into());
        m.roles.insert("root".into(), "admin".into());
        m.groups.insert("ext-helpdesk".into(), "helpdesk".into());
        assert_eq!(
            m.apply(&g(&["ops", "root", "ext-helpdesk", "x"])),
            ("admin".into(), g(&["helpdesk"]))
        );
        assert_eq!(m.apply(&g(&["ops"])).0, "auditor");
        m.roles.insert("x".into(), "superuser".into());
        assert!(m.validate().is_err());
    }

    #[test]
    fn only_local_paths_are_landed_on() {
        assert_eq!(local_path(Some("/connect?x=1")), "/connect?x=1");
        for bad in [
            None,
            Some("//evil.example"),
            Some("https://evil.example"),
            Some("/\\evil"),
            Some("x"),
        ] {
            assert_eq!(local_path(bad), "/", "{bad:?}");
        }
        assert_eq!(clean_username("Alice Smith/ü"), "Alice_Smith_ü");
        assert_eq!(clean_username(""), "user");
        assert_eq!(clean_username(&"a".repeat(100)).len(), 64);
    }
}
