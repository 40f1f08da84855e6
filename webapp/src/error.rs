//! The one HTTP error type of the webapp: a status, a sanitized message, and the full chain in the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthenticated,
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    /// Throttled; the client may try again after `retry_after` seconds (sent as `Retry-After`).
    #[error("too many attempts, try again later")]
    RateLimited { retry_after: u64 },
    /// A bounded resource (password hashing) is saturated; try again in a second.
    #[error("server busy, try again later")]
    Busy,
    /// The database does not answer: what the user sees while it is away.
    #[error("{}", DATABASE_UNAVAILABLE)]
    Unavailable(#[source] anyhow::Error),
    /// A dependency other than the database cannot serve the request now (e.g. no agent has room).
    #[error("{0}")]
    NoCapacity(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The message of [`ApiError::Unavailable`] (the web client shows it as it is).
pub const DATABASE_UNAVAILABLE: &str =
    "portico's database is unavailable right now: sessions already open go on, try again in a moment";

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated | ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::NoCapacity(_) | ApiError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                ApiError::Unavailable(e.into())
            }
            _ => ApiError::Internal(anyhow::Error::new(e).context("database query")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(e) | ApiError::Unavailable(e) => {
                tracing::error!(error = format!("{e:#}"), %status, "Request failed");
            }
            _ => tracing::debug!(error = %self, %status, "Request refused"),
        }
        let retry_after = match &self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            ApiError::Busy => Some(1),
            _ => None,
        };
        let mut res = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if let Some(secs) = retry_after {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        res
    }
}
