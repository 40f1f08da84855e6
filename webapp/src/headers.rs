//! Security headers every webapp response carries, set once as a layer over the whole router:
//! `Strict-Transport-Security` (Portico is always served over HTTPS), `X-Content-Type-Options: nosniff`, and
//! `Cache-Control: no-store` on the API (`/api/…`, `/internal/…`), whose answers carry CSRF tokens, API keys,
//! session tokens and credentials that no browser or proxy cache may keep.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;

/// One year; browsers then refuse plain HTTP to this host.
pub const HSTS: &str = "max-age=31536000";

/// Whether responses to `path` must never be stored by a cache.
fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/internal/")
}

async fn security_headers(req: Request, next: Next) -> Response {
    let no_store = is_api(req.uri().path());
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if no_store {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// Add the security headers to every response of `router` (routes and fallback).
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(middleware::from_fn(security_headers))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    async fn headers_of(path: &str) -> axum::http::HeaderMap {
        let app = layer(
            Router::new()
                .route("/api/v1/thing", get(|| async { "{}" }))
                .route("/", get(|| async { "page" }))
                .fallback(|| async { (StatusCode::NOT_FOUND, "not found") }),
        );
        let res = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        res.headers().clone()
    }

    #[tokio::test]
    async fn every_response_is_hsts_and_nosniff_and_only_the_api_is_no_store() {
        for path in ["/api/v1/thing", "/api/v1/missing", "/internal/v1/x", "/", "/app.js"] {
            let h = headers_of(path).await;
            assert_eq!(h[header::STRICT_TRANSPORT_SECURITY], HSTS, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            let no_store = h.get(header::CACHE_CONTROL).is_some_and(|v| v == "no-store");
            assert_eq!(no_store, is_api(path), "{path}");
        }
    }
}
