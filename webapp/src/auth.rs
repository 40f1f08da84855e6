//! Who is calling: a login-session cookie (with CSRF header on state changes) or an API key (`Bearer pk_...`).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use subtle::ConstantTimeEq as _;

use crate::db::User;
use crate::error::ApiError;
use crate::{AppState, crypto, now_unix};

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_USER: &str = "user";
pub const COOKIE_NAME: &str = "portico_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const API_KEY_PREFIX: &str = "pk_";

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: User,
    /// The CSRF token of the login session; `None` for API-key callers.
    pub csrf_token: Option<String>,
}

impl CurrentUser {
    pub fn is_admin(&self) -> bool {
        self.user.role == ROLE_ADMIN
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("admin role required".into()))
        }
    }
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
            let user = state
                .db
                .user_by_api_key(&crypto::sha256_hex(key), now)
                .await?
                .ok_or_else(|| ApiError::Unauthorized("invalid api key".into()))?;
            return Ok(CurrentUser { user, csrf_token: None });
        }
        let cookie = cookie_value(&parts.headers, COOKIE_NAME).ok_or(ApiError::Unauthenticated)?;
        let (user, csrf) = state
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
        Ok(CurrentUser {
            user,
            csrf_token: Some(csrf),
        })
    }
}
