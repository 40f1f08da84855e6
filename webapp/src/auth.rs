//! Who is calling: a login-session cookie (with CSRF header on state changes) or an API key (`Bearer pk_...`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use subtle::ConstantTimeEq as _;

use crate::db::User;
use crate::error::ApiError;
use crate::{AppState, crypto, now_unix};

pub const ROLE_ADMIN: &str = "admin";
/// Reads everything (users, connections without credentials, every session); changes nothing and starts
/// no session. Enforced once, in the [`CurrentUser`] extractor.
pub const ROLE_AUDITOR: &str = "auditor";
pub const ROLE_USER: &str = "user";
pub const ROLES: [&str; 3] = [ROLE_ADMIN, ROLE_AUDITOR, ROLE_USER];
pub const COOKIE_NAME: &str = "portico_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const API_KEY_PREFIX: &str = "pk_";

/// What an API key may do, within its user's role. Enforced once, in the [`CurrentUser`] extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyScope {
    /// Reads only (`GET`).
    Read,
    /// Reads, and starting and ending sessions (`/api/v1/sessions`).
    Sessions,
    /// Everything the user may do, including minting keys.
    Admin,
}

impl KeyScope {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyScope::Read => "read",
            KeyScope::Sessions => "sessions",
            KeyScope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<KeyScope> {
        [KeyScope::Read, KeyScope::Sessions, KeyScope::Admin]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// Whether a key of this scope may make a request with `method` on `path`.
    pub fn allows(self, method: &Method, path: &str) -> bool {
        let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        match self {
            KeyScope::Read => safe,
            KeyScope::Sessions => safe || path == "/api/v1/sessions" || path.starts_with("/api/v1/sessions/"),
            KeyScope::Admin => true,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: User,
    /// The CSRF token of the login session; `None` for API-key callers.
    pub csrf_token: Option<String>,
    /// The scope of the API key; `None` for a login session (everything the role allows).
    pub key_scope: Option<KeyScope>,
    /// A login that may only enrol a second factor (its role requires one; see [`mfa_pending_allows`]).
    pub mfa_pending: bool,
    /// The client address of the request (for events).
    pub client: Option<std::net::IpAddr>,
}

impl CurrentUser {
    pub fn is_admin(&self) -> bool {
        self.user.role == ROLE_ADMIN
    }

    /// Admins and auditors see every connection and session; a user only what is granted to them.
    pub fn sees_all(&self) -> bool {
        self.is_admin() || self.user.role == ROLE_AUDITOR
    }

    /// Whose grants limit what the caller sees: `None` for those who see everything.
    pub fn viewer(&self) -> Option<&str> {
        (!self.sees_all()).then_some(self.user.id.as_str())
    }
}

/// A caller with the admin role (everything else: 403).
pub struct Admin(pub CurrentUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let me = CurrentUser::from_request_parts(parts, state).await?;
        if me.is_admin() {
            Ok(Admin(me))
        } else {
            Err(ApiError::Forbidden("admin role required".into()))
        }
    }
}

/// A caller who may read everything: an admin or an auditor (everything else: 403).
pub struct Overseer(pub CurrentUser);

impl FromRequestParts<AppState> for Overseer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let me = CurrentUser::from_request_parts(parts, state).await?;
        if me.sees_all() {
            Ok(Overseer(me))
        } else {
            Err(ApiError::Forbidden("admin or auditor role required".into()))
        }
    }
}

/// What a login that must enrol a second factor may do before it has: see who it is, enrol, log out.
fn mfa_pending_allows(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/auth/me" | "/api/v1/auth/logout" | "/api/v1/auth/mfa/enrol" | "/api/v1/auth/mfa/confirm"
    )
}

/// An auditor changes nothing but their own login (password, logout).
fn auditor_allows(role: &str, method: &Method, path: &str) -> bool {
    role != ROLE_AUDITOR || KeyScope::Read.allows(method, path) || path.starts_with("/api/v1/auth/")
}

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The client's address as the listener recorded it (the real client behind a trusted proxy).
fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let now = now_unix();
        if let Some(key) = bearer(&parts.headers) {
            if !key.starts_with(API_KEY_PREFIX) {
                return Err(ApiError::Unauthorized("invalid api key".into()));
            }
            let (user, scope) = state
                .db
                .user_by_api_key(&crypto::sha256_hex(key), now)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("invalid or expired api key".into()))?;
            let scope = KeyScope::parse(&scope).unwrap_or(KeyScope::Read);
            if !scope.allows(&parts.method, parts.uri.path()) {
                return Err(ApiError::Forbidden(format!(
                    "this api key's scope ({}) does not allow this request",
                    scope.as_str()
                )));
            }
            if !auditor_allows(&user.role, &parts.method, parts.uri.path()) {
                return Err(ApiError::Forbidden("the auditor role is read-only".into()));
            }
            return Ok(CurrentUser {
                user,
                csrf_token: None,
                key_scope: Some(scope),
                mfa_pending: false,
                client: client_ip(parts),
            });
        }
        let cookie = cookie_value(&parts.headers, COOKIE_NAME).ok_or(ApiError::Unauthenticated)?;
        let (user, csrf, mfa_pending) = state
            .db
            .login_session(&crypto::sha256_hex(cookie), now)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !bool::from(sent.as_bytes().ct_eq(csrf.as_bytes())) {
                return Err(ApiError::Forbidden("missing or invalid csrf token".into()));
            }
        }
        if !auditor_allows(&user.role, &parts.method, parts.uri.path()) {
            return Err(ApiError::Forbidden("the auditor role is read-only".into()));
        }
        if mfa_pending && !mfa_pending_allows(parts.uri.path()) {
            return Err(ApiError::Forbidden(
                "your role requires two-factor authentication: set it up first".into(),
            ));
        }
        Ok(CurrentUser {
            user,
            csrf_token: Some(csrf),
            key_scope: None,
            mfa_pending,
            client: client_ip(parts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        assert!(KeyScope::Read.allows(&get, "/api/v1/connections"));
        assert!(!KeyScope::Read.allows(&post, "/api/v1/sessions"));
        assert!(KeyScope::Sessions.allows(&post, "/api/v1/sessions"));
        assert!(KeyScope::Sessions.allows(&delete, "/api/v1/sessions/abc"));
        assert!(!KeyScope::Sessions.allows(&post, "/api/v1/api-keys"));
        assert!(!KeyScope::Sessions.allows(&post, "/api/v1/sessionsx"));
        assert!(KeyScope::Admin.allows(&post, "/api/v1/api-keys"));
        assert_eq!(KeyScope::parse("sessions"), Some(KeyScope::Sessions));
        assert_eq!(KeyScope::parse("root"), None);
    }

    #[test]
    fn auditors_read_and_manage_only_their_own_login() {
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        assert!(auditor_allows(ROLE_AUDITOR, &get, "/api/v1/sessions"));
        assert!(!auditor_allows(ROLE_AUDITOR, &post, "/api/v1/sessions"));
        assert!(!auditor_allows(ROLE_AUDITOR, &delete, "/api/v1/sessions/x"));
        assert!(auditor_allows(ROLE_AUDITOR, &post, "/api/v1/auth/password"));
        assert!(auditor_allows(ROLE_USER, &post, "/api/v1/sessions"));
    }
}
